"""Archives other tar writers produce (tests/writers.py), each read as GNU tar and bsdtar read it.

Go's archive/tar (as docker's pkg/archive writes layers, and in each format Go has), busybox,
MirBSD pax, GNU cpio, 7-Zip, CPython's tarfile and node-tar each archive one tree of edge cases; every
archive goes through test_tar_corpora's harness (lamina's tree against the references', every
path, nothing written outside) and through a compact store's bit-exact rebuild; the layer
compressors those tools use (Go's compress/gzip, busybox, 7-Zip, pigz, gzip, CPython, zstd)
over Go's moby-style tar.
"""
from __future__ import annotations

import os
from dataclasses import replace

import pytest

import writers
from layerkit import apply, write
from tarvectors import extract_with
from test_tar_corpora import GNU, REFS, _check, _is_refused, assert_compact_rebuild, refused
from treecmp import Snapshot, assert_same, snapshot

EXPECT = {k: REFS for k in writers.KEYS}
# Go writes a name that is no UTF-8 into a PAX path record as it is, without hdrcharset=BINARY
# (CPython's tarfile adds it, and bsdtar reads its archives): bsdtar cannot convert the name to
# this locale.  GNU tar, and lamina, take the bytes
EXPECT.update({f"go/{m}-not-utf8": GNU for m in ("moby", "default", "pax")})
# a type 'A' entry (Go writes any type as asked; docker and containerd refuse it): a Solaris ACL
# header to libarchive and lamina, which refuses one named otherwise than the entry after it
# (CONFORMANCE.md); GNU tar extracts it as a file, bsdtar as the next entry's ACL ("Malformed
# Solaris ACL attribute")
EXPECT["go/crafted-type-A"] = refused("InvalidArchiveError", "entry 'f': follows a Solaris ACL header of 'type-A'")
# Go writes a GNU 'S' header as asked, without a sparse map or a real size: GNU tar makes a file
# of 0 bytes (the map's), bsdtar one of the 5 stored; Go's reader refuses it ("sparse file
# contains unreferenced data"), and so does lamina (CONFORMANCE.md, the sparse map's row)
EXPECT["go/crafted-sparse"] = refused("InvalidArchiveError",
                                     "entry 'sparse-gnu': sparse map names 0 bytes but the entry stores 5")

_LONG = {b"e/long-symlink", b"e/" + b"x" * 120 + b"\nz"}  # a link target over 100 bytes, a name of 123
_TIMES = {b"e/after-2242", b"e/before-1970"}  # no octal field of 11 digits holds them
_V7 = _LONG | {b"d/" + b"l" * 60 + b"/" + b"n" * 70, b"e/" + b"t" * 90 + b"/" + b"f" * 30,
               b"e/" + b"t" * 90 + b"/" + b"s" * 40, b"x/" + b"n" * 100,  # names over 99 bytes
               b"x/" + b"p" * 153, b"x/" + b"p" * 153 + b"/" + b"q" * 100,
               b"x/fifo", b"x/null", b"x/loop7", b"x/hard-fifo", b"x/hard-null"}  # v7 has no type for them
_NODES = {b"x/fifo", b"x/null", b"x/loop7", b"x/hard-fifo", b"x/hard-null"}
# What each writer leaves out of the tree (it refuses the entry, or says so and goes on):
# the entries no reader can see.  A writer that cuts a value instead (busybox and pax write a
# time before 1970 as 0; 7-Zip without -snoi stores every owner as 0) is read the same by all.
_LEFT_OUT = {
    "go/ustar": _LONG | _TIMES | {b"u/caf\xe9", b"u/ln\xff", "u/\u00e4\u00f6 \u65e5\u672c".encode()},
    "pax/ustar": _LONG | {b"e/after-2242", b"e/hardlink-to-a-long-name"},  # pax: "Link name too long"
    "pax/tar": _V7 | {b"e/after-2242", b"e/hardlink-to-a-long-name"},
    # cpio writes a hardlink's target cut to 100 bytes (writers.py leaves that link out), and refuses
    # a time before 1970 ("value mtime 18446744072709551616 out of allowed range")
    "cpio/ustar": _LONG | _TIMES | {b"e/hardlink-to-a-long-name"},
    "cpio/tar": _V7 | _TIMES | {b"e/hardlink-to-a-long-name"},
    # 7-Zip reads a fifo or a device as a file's data (writers.py leaves them out)
    "7zip/tar": _NODES, "7zip/pax": _NODES,
    "python/ustar": _LONG | _TIMES,
    "python/gnu-ascii-strict": {b"u/caf\xe9", b"u/ln\xff", "u/\u00e4\u00f6 \u65e5\u672c".encode()},
    # node-tar leaves out fifos and devices, and the hardlinks to them, without a word
    "nodetar/default": _NODES, "nodetar/portable": _NODES,
}
# pax keeps the "./" of its operand: the path of 256 bytes and its directory are 2 bytes over
# what ustar holds; cpio takes it off
_LEFT_OUT["pax/dot-ustar"] = _LEFT_OUT["pax/ustar"] | {b"x/" + b"p" * 153, b"x/" + b"p" * 153 + b"/" + b"q" * 100}
_LEFT_OUT["cpio/dot-ustar"] = _LEFT_OUT["cpio/ustar"]
# the socket: no tar type holds one; GNU cpio's ustar writes an empty file of type '\0'
MISSING = {k: _LEFT_OUT.get(k, set()) | ({b"x/sock"} if k not in ("cpio/ustar", "cpio/dot-ustar") else set())
           for k in writers.KEYS}


def _names(root):
    out = set()
    for dirpath, dirnames, filenames in os.walk(os.fsencode(root)):
        out.update(os.path.relpath(os.path.join(dirpath, n), os.fsencode(root)) for n in dirnames + filenames)
    return out


@pytest.mark.parametrize("key", writers.KEYS)
def test_other_writers_archive(g, key):
    """The writer's archive read as GNU tar (and bsdtar) read it, on every path; and it holds
    every entry of the tree but those the writer cannot store (MISSING), so the tree's edge cases
    are really in it."""
    data = writers.archive(key)
    _check(g, key, data, data, EXPECT[key])
    if key.startswith("go/crafted"):
        return
    want = {n for n in writers.TREE if n.split(b"/")[0].decode() in writers.COVERS[key]} - MISSING.get(key, set())
    got = _names(g.dest / "lamina")
    assert got == want, (f"{key}: missing {sorted(want - got)}, extra {sorted(got - want)}; "
                         f"the writer said: {writers.SKIPPED[key]}")


@pytest.mark.parametrize("key", [k for k in writers.KEYS if not _is_refused(EXPECT[k])])
def test_a_compact_store_rebuilds_it_bit_exact(tmp_path, key):
    assert_compact_rebuild(tmp_path, key, writers.archive(key))


@pytest.mark.parametrize("key", writers.COMPRESSED_KEYS)
def test_other_writers_compression(g, key):
    """Go's moby-style tar as the layer compressors write it (go/moby's test runs the same tar
    through every path): lamina's tree from the compressed layer is GNU tar's from the tar."""
    apply(write(g.dest / "layer", writers.compressed(key)), g.dest / "lamina")
    extract_with("gnu", write(g.dest / "plain.tar", writers.archive("go/moby")), g.dest / "gnu")
    assert_same(snapshot(g.dest / "gnu"), snapshot(g.dest / "lamina"), labels=("gnu-tar", "lamina"), context=key)


# (go/crafted-types has a PAX global header: umoci refuses it, "unknown typeflag 'g'", where docker
# and containerd skip it, and lamina with them)
@pytest.mark.parametrize("key", ["go/moby", "go/default", "go/gnu", "go/pax", "go/ustar", "go/crafted"])
def test_go_layers_as_umoci_unpacks_them(g, key):
    """What Go writes, unpacked by a Go unpacker (umoci) and by lamina: the same tree, but where
    umoci does otherwise: an empty xattr value it leaves out (it reads Header.Xattrs, which drops
    them; CONFORMANCE.md), and the tree's time after 2242 (2446 on this machine's file system),
    which umoci sets to -2^31."""
    from everypath import _tree, umoci_tree
    data = writers.archive(key)
    want = umoci_tree(g.dest, [data])
    assert not isinstance(want, Exception), f"umoci failed: {want.stderr}"
    apply(write(g.dest / "layer", data), g.dest / "lamina")
    got = _tree(g.dest / "lamina")
    late = {p for p, e in got.entries.items() if e.mtime is not None and e.mtime >= 2 ** 31}
    got = Snapshot(got.root, {p: replace(e, mtime=None) if p in late else
                              replace(e, xattrs=tuple((n, v) for n, v in e.xattrs if v))
                              for p, e in got.entries.items()}, got.links)
    want = Snapshot(want.root, {p: replace(e, mtime=None) if p in late else e for p, e in want.entries.items()},
                    want.links)
    assert_same(want, got, labels=("umoci", "lamina"), context=key)
