"""More hostile and awkward layers through every path to a rootfs (see everypath.py).

What test_security.py and test_every_path.py do not cover: things a layer can
carry that mean something to overlayfs or the kernel besides the tar entry
itself (0/0 character devices, overlay xattrs, security.capability, setgid
directories), names a whiteout or an opaque marker could be read from, and a
store left behind by a refused layer.  Every case runs the image through every
path (and umoci where it accepts it), requires one tree or one kind of error
everywhere, and checks that nothing outside the work directory changed.
"""
from __future__ import annotations

import json
import os

import pytest

from conftest import require_root
from everypath import assert_agree, describe, run_paths, umoci_tree, write_image
from layerkit import Guard
from storekit import lamina
from tarbuild import B256, Tar

# security.capability, VFS_CAP_REVISION_2, cap_net_bind_service permitted
CAP = bytes.fromhex("01000002" "00040000" "00000000" "00000000" "00000000")


@pytest.fixture
def g(tmp_path):
    require_root()
    guard = Guard(tmp_path)
    yield guard
    guard.check()


def agree(g, tars, *, umoci=True):
    raws = [t if isinstance(t, bytes) else t.bytes() for t in tars]
    results = run_paths(g.dest, raws)
    oracle = umoci_tree(g.dest, raws) if umoci else None
    tree = assert_agree(results, context=describe(raws))
    g.check()
    return tree, oracle


def refused_everywhere(g, tars, error, *names):
    """Every path refuses the image with ``error`` naming one of ``names``."""
    from lamina import errors
    raws = [t.bytes() for t in tars]
    results = run_paths(g.dest, raws)
    for path, r in results.items():
        assert isinstance(r, getattr(errors, error)), f"{path}: {r!r}\n{describe(raws)}"
        assert any(n in str(r) for n in names), f"{path}: the error does not name the entry: {r}"
    g.check()


# --- security.capability: chown removes it, so it must be set after the owner ---

@pytest.mark.parametrize("size,uid,mode", [(5000, 0, 0o755), (5000, 1000, 0o750), (400_000, 5, 0o4755)],
                         ids=["root-owned", "other-owner", "big-setuid"])
def test_file_capabilities_survive_every_path(g, size, uid, mode):
    """The store's copy (flatten) set a file's xattrs and then its owner; chown(2) drops
    security.capability, so store-copy and store-relink lost the file's capabilities
    that dir, overlay and --link kept."""
    t = Tar().pax([("SCHILY.xattr.security.capability", CAP)]).file("bin/ping", b"x" * size, uid=uid,
                                                                      gid=uid, mode=mode)
    tree, oracle = agree(g, [t, Tar().hardlink("bin/ping6", "bin/ping")])
    for n in ("bin/ping", "bin/ping6"):
        e = tree.entries[n]
        assert dict(e.xattrs).get("security.capability") == CAP, f"{n}: {e.xattrs}"
        assert (e.uid, e.mode) == (uid, mode)
    if not isinstance(oracle, Exception):
        assert dict(oracle.entries["bin/ping"].xattrs).get("security.capability") == CAP


# --- setgid directories: an implied directory is the extractor's on every path ---

@pytest.mark.parametrize("layers", [
    [Tar().dir("d", mode=0o2775, gid=42), Tar().file("d/i/j/k", b"y")],
    [Tar().dir("d", mode=0o2775, gid=42).file("d/x", b"1"), Tar().symlink("d/s", "x").file("d/z/q", b"3")],
    [Tar().dir("d", mode=0o2775, gid=42), Tar().dir("d/e", mode=0o755).fifo("d/p").file("d/f", b"f")
     .symlink("d/s", "f").file("d/n/f", b"n")],
], ids=["implied-chain", "implied-beside-others", "explicit-and-implied"])
def test_nothing_inherits_a_lower_setgid_dir(g, layers):
    """The dir format made an implied directory under a lower layer's setgid directory
    with mkdir(2), which gave it that directory's group and setgid bit; the overlay
    formats make it in a layer of its own (0755, the extractor's group), as the dir
    format does in the setgid directory's own layer."""
    tree, _ = agree(g, layers)
    assert tree.entries["d"].mode == 0o2775 and tree.entries["d"].gid == 42
    for p, e in tree.entries.items():
        if p != "d" and e.type != "symlink":
            assert e.mode & 0o2000 == 0 and e.gid == 0, f"{p} inherited from d: {e.describe()}"
