"""Hostile and awkward layer stacks through every path to a rootfs (see everypath.py).

Each test runs the image through dir unpack, overlay unpack + kernel mount,
store snapshots + flatten (copy and --link) and the store's mount, requires
the same tree everywhere, and checks that nothing outside the work directory
changed (layerkit.Guard: mode, owner, times, content, new entries).
"""
from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import require_root
from everypath import assert_agree, describe, made_now, run_paths, umoci_tree, write_image
from layerkit import run_as_nobody
from storekit import LAMINA, seeded_bytes
from tarbuild import Tar, tarfile_bytes, ti
from tarvectors import archive, data_map, sparse_old_gnu, sparse_pax_10


def agree(g, tars, *, umoci=True):
    raws = [t if isinstance(t, bytes) else t.bytes() for t in tars]
    results = run_paths(g.dest, raws)
    if umoci:
        results["umoci"] = umoci_tree(g.dest, raws)
        if isinstance(results["umoci"], Exception):
            del results["umoci"]  # umoci refuses some layers lamina accepts; compare the others
    tree = assert_agree(results, context=describe(raws))
    g.check()
    return tree


# --- defect 1: a symlinked ancestor must not carry metadata out of the root ---

def _host_dirs(tar, path):
    parts = os.fspath(path).strip("/").split("/")
    for i in range(1, len(parts) + 1):
        tar.dir("/".join(parts[:i]))
    return tar


def test_implicit_dir_metadata_never_lands_on_the_host(g):
    """Layer 0: a/ and a/sub/ (0777, uid 4321).  Layer 1: the dirs of the host's
    sentinel path, a -> /<sentinel> (absolute), a/sub/f.  Copying a/sub's
    metadata by lexical path used to chmod/chown the host's sentinel/sub."""
    base = Tar().dir("a").dir("a/sub", mode=0o777, uid=4321, gid=4321)
    top = _host_dirs(Tar(), g.sentinel).symlink("a", str(g.sentinel)).file("a/sub/f", b"x")
    tree = agree(g, [base, top])
    inside = str(g.sentinel).strip("/") + "/sub"
    assert tree.entries[inside].mode == 0o755 and tree.entries[inside].uid == 0, \
        "the dir made through the link is a new one, not a/sub's metadata"
    assert tree.entries[inside + "/f"].type == "file"


def test_implicit_dir_through_lower_symlink_resolves_like_the_mount(g):
    """A lower layer's symlink is followed by an upper layer's entries in every format."""
    base = Tar().dir("real", mode=0o750, uid=7).symlink("link", "real")
    top = Tar().file("link/new", b"n")
    tree = agree(g, [base, top])
    assert tree.entries["link"].type == "symlink"
    assert tree.entries["real/new"].type == "file"
    assert tree.entries["real"].mode == 0o750 and tree.entries["real"].uid == 7


def test_implicit_dirs_keep_lower_metadata(g):
    base = Tar().dir("etc", mode=0o711, uid=12, gid=34).file("etc/old", b"o")
    top = Tar().file("etc/new", b"n")
    tree = agree(g, [base, top])
    e = tree.entries["etc"]
    assert (e.mode, e.uid, e.gid) == (0o711, 12, 34)


def _xattr(t, value, key="user.k"):
    return t.pax({f"SCHILY.xattr.{key}": value})


ROOT_STACKS = {
    # the root named below only: the upper layers leave it as it is
    "named-below": [_xattr(Tar(), "r").dir("./", mode=0o700, uid=1000, gid=1001, mtime=1234567).file("a", b"1"),
                    Tar().file("b", b"2"), Tar().file("c", b"3")],
    "named-in-the-middle": [Tar().file("a", b"1"),
                            Tar().dir("./", mode=0o750, uid=7, gid=8, mtime=7654321).file("b", b"2"),
                            Tar().file("c", b"3")],
    "named-on-top": [Tar().dir("./", mode=0o700, mtime=1234567).file("a", b"1"),
                     Tar().dir("./", mode=0o751, uid=5, gid=6, mtime=7654321).file("b", b"2")],
    # the xattrs (a label too) a layer gave the root are not the top layer's: the dir format kept them
    "xattrs-below-named-on-top": [Tar().pax({"SCHILY.xattr.security.selinux": "x", "SCHILY.xattr.user.k": "r"})
                                  .dir("./", mode=0o700, mtime=1234567),
                                  _xattr(Tar(), "o", "user.o").dir("./", mode=0o751, mtime=7654321).file("b", b"2")],
    "xattrs-named-twice-in-one-layer": [_xattr(Tar(), "r").dir("./", mode=0o700, mtime=1234567)
                                        .dir("./", mode=0o751, mtime=7654321).file("b", b"2")],
}


@pytest.mark.parametrize("case", sorted(ROOT_STACKS))
def test_the_roots_metadata_is_the_last_layer_naming_it(g, case):
    """The root's mode, owner, xattrs and mtime, when the upper layers do not name "./":
    the dir format and the copies keep what the layer below gave it; on e77a40d the
    overlay mounts (overlay unpack, store mount) showed the top layer's own root dir
    instead (0755 root, the time it was made).  When a later entry names it, its xattrs
    are that entry's only, as for any directory named again: on b6ed108 the dir format
    kept the earlier entry's too (and every path did within one layer), where the
    overlay mount and umoci show the last entry's."""
    raws = [t.bytes() for t in ROOT_STACKS[case]]
    results = run_paths(g.dest, raws, dir_mtime=True, root=True)
    results["umoci"] = umoci_tree(g.dest, raws, dir_mtime=True, root=True)
    tree = assert_agree(results, context=describe(raws))
    g.check()
    assert tree.entries["."].mtime in (1234567, 7654321), tree.entries["."]
    if case == "named-below":
        assert (tree.entries["."].mode, tree.entries["."].uid) == (0o700, 1000), tree.entries["."]
        assert dict(tree.entries["."].xattrs).get("user.k") in ("r", b"r"), tree.entries["."]
    if case.startswith("xattrs-"):
        assert dict(tree.entries["."].xattrs) == ({"user.o": b"o"} if case == "xattrs-below-named-on-top" else {})


@pytest.mark.parametrize("marked", ["a", "a/a"])
def test_an_opaque_marker_through_a_symlink_to_the_root_keeps_the_roots_time(g, marked):
    """The fuzzer's finding (seed 20316): a marker in ``a`` (a -> .) clears the root, the
    symlink ``a`` with it, in a layer that does not name the root, so the root keeps the
    lower layer's time.  The dir format kept the time under the name ``a``, as the place
    the root "really is" was b"" and read as "unknown": ``a`` was gone by the end of the
    layer and the root kept the time of the run, where the overlay mount and the store
    kept 1234567."""
    low = Tar().dir("./", mtime=1234567).symlink("a", ".")
    if marked == "a/a":
        low.symlink("b", ".")  # a -> . reached through b -> . too
        marked = "b/a"
    raws = [low.bytes(), Tar().opaque(marked).bytes()]
    tree = assert_agree(run_paths(g.dest, raws, dir_mtime=True, root=True), context=describe(raws))
    g.check()
    assert tree.entries["."].mtime == 1234567, tree.entries["."]
    assert "a" not in tree.entries, tree.entries


REDECLARED_DIRS = {
    # the umoci fuzzer's finding (seed 8383): the later entry's xattrs are the dir's
    "same-layer": [_xattr(Tar().dir("a"), "1").dir("a/a").dir("a/a")],
    "lower-layer": [_xattr(Tar(), "1").dir("a").file("a/f", b"f"), Tar().dir("a")],
    "lower-layer-other-key": [_xattr(Tar(), "1").dir("a"), _xattr(Tar(), "3", "user.other").dir("a")],
    "lower-layer-same-key": [_xattr(Tar(), "1").dir("a"), _xattr(Tar(), "2").dir("a")],
    # an opaque marker between the two entries: the dir must stay opaque
    "opaque-between": [Tar().dir("a").file("a/x", b"x"),
                       _xattr(Tar(), "1").dir("a").opaque("a").dir("a").file("a/y", b"y")],
    "only-implied": [_xattr(Tar(), "1").dir("a"), Tar().file("a/b", b"b")],
    # a label the image set (not the host's): the dir format kept every security.selinux
    "lower-layer-selinux": [_xattr(Tar(), "system_u:object_r:etc_t:s0", "security.selinux").dir("a"),
                            Tar().dir("a")],
}


@pytest.mark.parametrize("case", sorted(REDECLARED_DIRS))
def test_a_redeclared_directory_has_the_entrys_xattrs_only(g, case):
    """A dir entry over a dir that exists gives it the entry's xattrs and no others, as it
    gives its owner and mode: the overlay formats show the upper layer's dir, umoci clears
    before it sets.  The dir format kept a lower layer's (and an earlier entry's) xattrs."""
    tree = agree(g, REDECLARED_DIRS[case])
    want = {"same-layer": ("a/a", ()), "lower-layer": ("a", ()),
            "lower-layer-other-key": ("a", (("user.other", b"3"),)),
            "lower-layer-same-key": ("a", (("user.k", b"2"),)),
            "opaque-between": ("a", ()), "only-implied": ("a", (("user.k", b"1"),)),
            "lower-layer-selinux": ("a", ())}[case]
    got = tuple(x for x in tree.entries[want[0]].xattrs if not x[0].startswith("trusted.overlay."))
    assert got == want[1], tree.entries[want[0]]
    if case == "opaque-between":
        assert "a/x" not in tree.entries and "a/y" in tree.entries


def test_a_hardlink_to_a_lower_file_keeps_its_xattrs(g):
    """The overlay format copies the lower file up before linking to it: the copy carries
    the lower file's xattrs (user.* and trusted.*, not its overlay markers), as both names
    of the one inode show them on every other path."""
    lower = Tar().pax({"SCHILY.xattr.user.k": "u", "SCHILY.xattr.trusted.t": "t"}).file("d/f", b"data")
    tree = agree(g, [lower, Tar().hardlink("d/g", "d/f")])
    for name in ("d/f", "d/g"):
        assert dict(tree.entries[name].xattrs) == {"user.k": b"u", "trusted.t": b"t"}, tree.entries[name]


LOWER_SPECIALS = {
    "symlink": lambda t: t.symlink("d/s", "target"),
    "fifo": lambda t: t.fifo("d/s"),
    "chardev": lambda t: t.chardev("d/s", 1, 3),
}


@pytest.mark.parametrize("kind", sorted(LOWER_SPECIALS))
def test_a_hardlink_to_a_lower_symlink_or_node_keeps_its_xattrs(g, kind):
    """The same for a symlink, fifo or device a lower layer made with a trusted.* xattr
    (user.* ones are not allowed on them): the overlay format's copy-up made the symlink
    or node anew without its xattrs, so in the overlay mount and the store both names had
    none while the dir format showed the xattr on both."""
    lower = LOWER_SPECIALS[kind](Tar().pax({"SCHILY.xattr.trusted.t": "t"}))
    tree = agree(g, [lower, Tar().hardlink("d/h", "d/s")])
    for name in ("d/s", "d/h"):
        assert dict(tree.entries[name].xattrs) == {"trusted.t": b"t"}, tree.entries[name]
    assert frozenset({"d/s", "d/h"}) in tree.links


# --- defect 2 and 3: top-down skipping with hardlinks ---

def _big_base(*extra):
    """A base layer large enough (incompressible) that small upper layers are read ahead."""
    t = Tar().file("docker-entrypoint.sh", b"#!/bin/sh\n", mode=0o755).file("big", seeded_bytes("b", 1 << 18))
    for name, data in extra:
        t.file(name, data)
    return t


def test_fallback_with_a_top_level_file_and_hardlink_pattern(g):
    """go-containerregistry #2002: echo 123>t2; ln t2 t1; ln t2 t3; echo 456>t1, over a
    base with a top-level file: the fallback used to crash emptying the root."""
    middle = Tar().file("t2", b"123\n").hardlink("t1", "t2").hardlink("t3", "t2")
    top = Tar().file("t1", b"456\n")
    tree = agree(g, [_big_base(), middle, top])
    assert tree.entries["t1"].sha256 != tree.entries["t2"].sha256
    assert frozenset({"t2", "t3"}) in tree.links


def test_chained_hardlink_to_a_skipped_hardlink(g):
    """h2 links to h1, itself a link skipped as hidden: h2 must get f's content, not the base's h1."""
    base = _big_base(("h1", b"old h1\n"))
    middle = Tar().file("f", b"new\n").hardlink("h1", "f").hardlink("h2", "h1")
    top = Tar().whiteout("h1")
    tree = agree(g, [base, middle, top])
    assert "h1" not in tree.entries
    assert frozenset({"f", "h2"}) in tree.links


def test_whiteout_of_a_hardlink_target_in_a_small_upper_layer(g):
    middle = Tar().file("data", b"d\n").hardlink("alias", "data")
    top = Tar().whiteout("data")
    tree = agree(g, [_big_base(), middle, top])
    assert tree.entries["alias"].type == "file" and "data" not in tree.entries


# --- defect 4: overlay format = dir format ---

def test_whiteout_then_entries_below_it_in_one_layer(g):
    base = Tar().dir("d").file("d/old", b"o")
    top = Tar().whiteout("d").file("d/new", b"n")
    tree = agree(g, [base, top])
    assert "d/old" not in tree.entries and "d/new" in tree.entries


def test_whiteout_then_dir_is_opaque(g):
    base = Tar().dir("d").file("d/old", b"o").dir("d/sub").file("d/sub/x", b"x")
    top = Tar().whiteout("d").dir("d", mode=0o700).file("d/new", b"n")
    tree = agree(g, [base, top])
    assert sorted(p for p in tree.entries if p.startswith("d/")) == ["d/new"]
    assert tree.entries["d"].mode == 0o700


def test_hardlink_to_a_lower_layer_file(g):
    base = Tar().dir("bin").file("bin/busybox", b"bb", mode=0o755, uid=3)
    top = Tar().hardlink("bin/sh", "bin/busybox")
    tree = agree(g, [base, top])
    assert frozenset({"bin/busybox", "bin/sh"}) in tree.links
    assert tree.entries["bin/sh"].uid == 3 and tree.entries["bin/sh"].mode == 0o755


@pytest.mark.parametrize("upper", [
    Tar().hardlink("b", "c"),                                   # the link's target has a lower sibling
    Tar().hardlink("b", "a/a"),                                 # ... linked by its other name
    Tar().file("a/a", b"new").hardlink("b", "c"),               # the sibling replaced first: not grouped
    Tar().whiteout("a/a").hardlink("b", "c"),                   # the sibling whited out first
    Tar().opaque("a").hardlink("b", "c"),                       # ... or hidden by an opaque dir
    Tar().hardlink("b", "c").file("a/a", b"new"),               # the sibling replaced afterwards
    Tar().hardlink("b", "c").whiteout("a/a"),                   # ... or whited out afterwards
    Tar().hardlink("b", "c").whiteout("c"),                     # the target itself whited out afterwards
    Tar().hardlink("b", "c").symlink("s", ".").whiteout("s/b"),  # the link is the layer's, whatever the path
], ids=["target", "other-name", "replaced-first", "whited-out-first", "opaque-first", "replaced-after",
        "whited-out-after", "target-whited-out-after", "own-link-through-symlink"])
def test_hardlink_to_a_lower_file_keeps_its_lower_hardlinks(g, upper):
    """Layer 0: c and a/a are one inode.  A flat unpack (and umoci) links the upper
    layer's b to that inode, so c, a/a and b stay one group; the overlay formats
    must copy up the whole group the merged view still shows (found by the fuzzer)."""
    base = Tar().dir("a", mode=0o750, uid=7).file("c", b"shared", mode=0o640, uid=5).hardlink("a/a", "c")
    tree = agree(g, [base, upper])
    group = next((x for x in tree.links if "b" in x), {"b"})
    assert ("c" in group) == ("c" in tree.entries)
    assert "b" in tree.entries
    from treecmp import content_digest
    shared = content_digest(b"shared")
    sibling_kept = "a/a" in tree.entries and tree.entries["a/a"].sha256 == shared
    assert ("a/a" in group) == sibling_kept
    if "a" in tree.entries:
        assert tree.entries["a"].mode == 0o750 and tree.entries["a"].uid == 7  # copied up with its lower metadata


def test_hardlink_to_a_deduplicated_lower_file_groups_only_the_image_hardlinks(tmp_path):
    """In the store, files with the same content and metadata share one inode
    (file dedup).  A hardlink in an upper layer to one of them must not pull the
    others into its hardlink group: they are not hardlinks of the image."""
    require_root()
    from lamina.store import Store
    from lamina.store.materialize import materialize
    from verbkit import load_layout
    base = Tar().file("x", b"same", mtime=1).file("y", b"same", mtime=1).file("z", b"same", mtime=1)
    store = Store(tmp_path / "store")
    load_layout(store, write_image(tmp_path / "base", [base.bytes()]), "img", "base:1")  # deduplicated now
    assert os.stat(next((tmp_path / "store").rglob("snapshots/*/fs/y"))).st_nlink > 1, "no file dedup?"
    load_layout(store, write_image(tmp_path / "top", [base.bytes(), Tar().hardlink("b", "x").bytes()]),
                "img", "top:1")
    out = tmp_path / "out"
    materialize(store, "top:1", out)
    ino = {n: os.stat(out / n).st_ino for n in "bxyz"}
    assert ino["b"] == ino["x"]
    assert len({ino["x"], ino["y"], ino["z"]}) == 3, ino


def test_hardlink_to_a_lower_file_through_a_lower_symlinked_dir(g):
    base = Tar().dir("usr").dir("usr/bin").file("usr/bin/tool", b"t").symlink("bin", "usr/bin")
    top = Tar().hardlink("usr/bin/alias", "bin/tool")
    tree = agree(g, [base, top])
    assert frozenset({"usr/bin/tool", "usr/bin/alias"}) in tree.links


def test_hardlink_to_a_whited_out_lower_file_fails_everywhere(g):
    base = Tar().file("f", b"x")
    top = Tar().whiteout("f").hardlink("g", "f")
    raws = [base.bytes(), top.bytes()]
    results = run_paths(g.dest, raws)
    assert all(isinstance(v, Exception) for v in results.values()), results


def test_opaque_marker_for_a_missing_dir_is_ignored_everywhere(g):
    base = Tar().file("keep", b"k")
    top = Tar().opaque("nothere").file("other", b"o")
    tree = agree(g, [base, top])
    assert "nothere" not in tree.entries


# --- defect 5 and 6: deep trees ---

def test_deep_image_flattens_without_recursion_limit(g):
    depth = 450
    path = "/".join(["d"] * depth)
    base = tarfile_bytes([(ti(path + "/f"), b"deep")])
    top = Tar().file("/".join(["d"] * 10) + "/g", b"g")
    tree = agree(g, [base, top], umoci=False)
    assert tree.entries[path + "/f"].type == "file"


def test_remove_tree_deep_with_few_fds(tmp_path):
    """The native tree removal holds two fds whatever the depth."""
    root = tmp_path / "deep"
    p = root
    p.mkdir()
    for _ in range(600):
        p = p / "x"
        p.mkdir()
        (p / "f").write_bytes(b"")
    os.chmod(root / "x" / "x", 0o555)
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_NOFILE, (24, 24));"
            "from lamina.tree import remove_tree; remove_tree(sys.argv[1])")
    subprocess.run([sys.executable, "-c", code, str(root)], check=True, cwd="/")
    assert not root.exists()


def test_remove_tree_and_clear_dir_of_more_subdirectories_than_one_scan_returns(tmp_path):
    """A scan returns at most 1,024 subdirectories (and unlinks files as it lists them, so a
    listing is never held whole): a directory of 2,500 subdirectories, some read-only and
    holding only directories, others with files, is emptied by clear_dir and removed by
    remove_tree, through the scans after the first."""
    from lamina.tree import clear_dir, remove_tree
    for fn in (clear_dir, remove_tree):
        root = tmp_path / fn.__name__
        root.mkdir()
        for i in range(2500):
            d = root / f"d{i:05d}"
            d.mkdir()
            if i % 3 == 0:
                (d / "f").write_bytes(b"x")
            elif i % 3 == 1:
                (d / "sub").mkdir()
                os.chmod(d, 0o555)
            (root / f"file{i}").symlink_to("/etc/passwd")
        fn(str(root))
        if fn is clear_dir:
            assert os.listdir(root) == []
        else:
            assert not root.exists()
    assert os.path.exists("/etc/passwd")


# --- defect 7: rootless through read-only lower dirs ---

def test_rootless_dir_unpack_through_read_only_lower_dir(tmp_path):
    from layerkit import rmtree, world_tmpdir
    work = world_tmpdir()   # (under /tmp, not pytest's: removed here)
    try:
        base = Tar().dir("usr", mode=0o555).file("usr/a", b"a").dir("usr/lib", mode=0o555).file("usr/lib/x", b"x")
        top = Tar().file("usr/b", b"b").whiteout("usr/lib/x").file("usr/lib/y", b"y")
        layout = write_image(os.path.join(work, "layout"), [base.bytes(), top.bytes()])
        os.system(f"chmod -R a+rX {work}")
        os.chmod(work, 0o777)
        dest = os.path.join(work, "out")
        r = run_as_nobody("lamina.unpack(sys.argv[1], sys.argv[2])\n", f"oci:{layout}:img", dest,
                          preload=("isal.igzip", "lamina.unpacker", "lamina.layer", "lamina.oci"))
        assert r.returncode == 0, r.stderr
        assert sorted(os.listdir(os.path.join(dest, "usr"))) == ["a", "b", "lib"]
        assert os.listdir(os.path.join(dest, "usr/lib")) == ["y"]
        assert os.stat(os.path.join(dest, "usr")).st_mode & 0o7777 == 0o555, "mode restored after the layer"
        assert os.stat(os.path.join(dest, "usr/lib")).st_mode & 0o7777 == 0o555
    finally:
        rmtree(work)


# --- defect 8: Ctrl-C ---

def _slow_image(work):
    """Many small files: seconds of extraction on any disk."""
    t = Tar()
    for i in range(60000):
        t.file(f"d{i % 100}/f{i}", b"x" * 16)
    return write_image(os.path.join(work, "slow"), [t.bytes()])


@pytest.mark.parametrize("verb", ["unpack", "store-unpack", "flatten"])
def test_ctrl_c_stops_quickly_and_leaves_nothing_complete(tmp_path, verb):
    require_root()
    layout = _slow_image(tmp_path)
    dest = tmp_path / "dest"
    store = tmp_path / "store"
    if verb == "unpack":
        cmd = [*LAMINA, "unpack", f"oci:{layout}:img", str(dest)]
    elif verb == "flatten":  # the snapshots exist: only the native merge into DEST runs
        subprocess.run([*LAMINA, "--root", str(store), "copy", f"oci:{layout}:img", "slow:1"], check=True,
                       capture_output=True)
        cmd = [*LAMINA, "--root", str(store), "unpack", "slow:1", str(dest)]
    else:
        cmd = [*LAMINA, "--root", str(store), "copy", f"oci:{layout}:img", "slow:1"]
    # SIGINT as a terminal delivers it, even when the suite runs as a background job (which
    # inherits SIGINT ignored, and so would lamina)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    time.sleep(1.5)
    assert proc.poll() is None, "the image is meant to take longer than this to extract"
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    took = time.monotonic() - sent
    assert proc.returncode == 130, err
    assert took < 2.0, f"Ctrl-C took {took:.2f}s to take effect"
    assert "Traceback" not in err
    if verb in ("unpack", "flatten"):
        assert not dest.exists()
        assert not [n for n in os.listdir(tmp_path) if "lamina-tmp" in n], "staging dir left under its name"
        for _ in range(600):  # the half-made tree is removed in the background
            if not [n for n in os.listdir(tmp_path) if "lamina-trash" in n]:
                break
            time.sleep(0.1)
        else:
            raise AssertionError(f"the interrupted tree was not removed: {os.listdir(tmp_path)}")
    else:
        snaps = store / "snapshots"
        done = [n for n in os.listdir(snaps) if not n.startswith(".")] if snaps.exists() else []
        assert done == [], f"a snapshot looks complete after Ctrl-C: {done}"
        again = subprocess.run([*LAMINA, "--root", str(store), "copy", f"oci:{layout}:img", "slow:1"],
                               capture_output=True, text=True, timeout=600)
        assert again.returncode == 0, again.stderr


# --- a directory reached under several names keeps one mode and time ---

_T, _LOW = 1_600_000_000, 1_500_000_000
ALIAS_CASES = {  # layers, t's time after them
    # t listed, then written into through l -> t: t keeps the entry's time
    "listed-then-written-through-a-symlink": (
        [Tar().dir("t", mtime=_T).symlink("l", "t").file("l/f").file("t/g").file("l/h")], _T),
    # a lower t, written into under both names, unlisted: it keeps the lower layer's time
    "lower-written-through-both-names": (
        [Tar().dir("t", mtime=_LOW).symlink("l", "t"), Tar().file("t/y").file("l/x").file("t/z")], _LOW),
    "lower-written-through-the-symlink-first": (
        [Tar().dir("t", mtime=_LOW).symlink("l", "t"), Tar().file("l/x").file("t/y")], _LOW),
    # ... and the upper layer's listing wins, before or after the writes
    "lower-listed-again-after-the-writes": (
        [Tar().dir("t", mtime=_LOW).symlink("l", "t"), Tar().file("l/x").file("t/y").dir("t", mtime=_T)], _T),
    "lower-listed-again-before-the-writes": (
        [Tar().dir("t", mtime=_LOW).symlink("l", "t"), Tar().dir("t", mtime=_T).file("l/x").file("t/y")], _T),
    # a dir made through the symlink, written into under its real name too
    "made-through-the-symlink": (
        [Tar().dir("t", mtime=_LOW).symlink("l", "t").dir("l/d", mtime=_T).file("l/d/f").file("t/d/g")], _LOW),
}


@pytest.mark.parametrize("case", sorted(ALIAS_CASES))
def test_a_directory_named_through_a_symlink_keeps_its_listed_time(g, case):
    """Each name a layer reaches a directory by (t, and l/ with l -> t) used to keep its own
    record of the time to restore; the one applied last won, and t ended with the time of the
    extraction on some paths (CI on 2026-12-04).  Directory times compare on every path
    and with umoci; every directory here is listed by some layer."""
    layers, want = ALIAS_CASES[case]
    raws = [t.bytes() for t in layers]
    results = run_paths(g.dest, raws, dir_mtime=True)
    results["umoci"] = umoci_tree(g.dest, raws, dir_mtime=True)
    tree = assert_agree(results, context=describe(raws))
    assert tree is not None
    assert tree.entries["t"].mtime == want, tree.entries["t"]
    g.check()


def test_duplicate_files_leave_their_directory_its_time(g):
    """The store's dedup pass swaps a duplicate file for a link to its object with a rename
    into the directory, which moved the directory's time to now in every store path
    (snapshots, copy, --link, mount) while dir unpack and the overlay format kept the
    layer's.  Two identical files in a listed directory, and one matching a lower file."""
    layers = [Tar().dir("d", mtime=_T).file("d/a", b"same").file("d/b", b"same").dir("e", mtime=_LOW)
              .file("e/x", b"lower"),
              Tar().dir("e", mtime=_T + 1).file("e/y", b"lower").file("e/z", b"same")]
    raws = [t.bytes() for t in layers]
    results = run_paths(g.dest, raws, dir_mtime=True)
    results["umoci"] = umoci_tree(g.dest, raws, dir_mtime=True)
    tree = assert_agree(results, context=describe(raws))
    assert (tree.entries["d"].mtime, tree.entries["e"].mtime) == (_T, _T + 1)
    g.check()


def test_a_single_layer_through_a_symlinked_parent_matches_gnu_tar(tmp_path):
    """The same in one layer against GNU tar, which extracts it with every time set."""
    from layerkit import gnu_tar_extract
    from treecmp import assert_same, snapshot
    tar = (Tar().dir("t", mtime=_T).symlink("l", "t").file("l/f", b"1").dir("t/d", mtime=_LOW)
           .file("l/d/f", b"2").file("t/d/g", b"3").dir("l/e", mtime=_T + 5).file("t/e/x", b"4"))
    blob = tmp_path / "layer.tar"
    blob.write_bytes(tar.bytes())
    want = gnu_tar_extract(str(blob), str(tmp_path / "tar"))
    results = run_paths(tmp_path / "work", [tar.bytes()], dir_mtime=True)
    for name, got in results.items():
        assert not isinstance(got, Exception), (name, got)
        assert_same(snapshot(want, dir_mtime=True), got, labels=("GNU tar", name))


@pytest.mark.parametrize("layers", [
    # a/b goes with a when a becomes a symlink to c; a/b/a then makes c/b
    [Tar().dir("c").dir("a/b", mode=0o700).symlink("a", "c").file("a/b/a")],
    # a/b goes with a when a becomes a file; a/b/x then makes a new a/b under a new a
    [Tar().dir("a/b", mode=0o700).file("a").dir("a").file("a/b/x")],
    [Tar().dir("a/b", mode=0o700, mtime=_LOW).dir("a/b/c", mode=0o711).file("a").dir("a").file("a/b/c/x")],
], ids=["through-a-new-symlink", "under-a-new-dir", "deeper"])
def test_a_removed_directory_leaves_no_mode_for_what_its_name_reaches_later(g, layers):
    """The directory made later is one of its own and gets the default mode.  The dir
    format used to give it the removed one's 0700 (found by the fuzzer, seed 9494): the
    removed directory's fixup still stood, and its inode check passed whenever the
    filesystem had reused the inode for the new directory."""
    raws = [t.bytes() for t in layers]
    results = run_paths(g.dest, raws)
    results["umoci"] = umoci_tree(g.dest, raws)
    tree = assert_agree(results, context=describe(raws))
    made = [p for p in ("c/b", "a/b", "a/b/c") if p in tree.entries]
    assert made and all(tree.entries[p].mode == 0o755 for p in made), {p: tree.entries[p] for p in made}
    g.check()


def test_a_listed_directory_keeps_its_time_when_an_entry_implies_a_directory_in_it(g):
    """b/, then b/a/a (b/a made implied): b keeps its entry's time on every path, as bsdtar
    does; GNU tar and umoci leave it the time of the run (CONFORMANCE.md)."""
    from conftest import require_tool, run
    from treecmp import snapshot
    require_tool("bsdtar")
    tar = Tar().dir("b", mtime=_LOW).file("a").file("b/a/a", b"x").dir("c", mtime=_T).dir("c/d/e", mtime=_LOW)
    blob = os.path.join(g.dest, "layer.tar")
    with open(blob, "wb") as f:
        f.write(tar.bytes())
    ref = os.path.join(g.dest, "bsdtar")
    os.mkdir(ref)
    run("bsdtar", "-xpf", blob, "-C", ref)
    want = snapshot(ref, dir_mtime=True)
    since = int(time.time()) - 1
    # b/a and c/d are made now: compared as MADE_NOW, so paths a second apart still agree
    tree = assert_agree({p: made_now(t, since) for p, t in run_paths(g.dest, [tar.bytes()], dir_mtime=True).items()})
    for d in ("b", "c", "c/d/e"):
        assert tree[d].mtime == want[d].mtime, (d, tree[d], want[d])
    assert (tree["b"].mtime, tree["c"].mtime) == (_LOW, _T)
    g.check()


@pytest.mark.parametrize("entry,refused", [(Tar().file(".wh..wh.aufs"), False), (Tar().dir(".wh..wh.plnk"), False),
                                           (Tar().dir(".wh..wh.plnk").file(".wh..wh.plnk/1234.56", b"x"), True)],
                         ids=["aufs-file", "plnk-dir", "file-under-plnk"])
def test_aufs_bookkeeping_is_ignored_and_what_it_holds_refused(g, entry, refused):
    """AUFS-backed docker wrote .wh..wh.aufs and .wh..wh.plnk/ (hardlink targets) into
    layers.  The names themselves are ignored on every path; an entry under .wh..wh.plnk/
    is refused, naming it: a .wh. name is never a path component (CONFORMANCE.md)."""
    layers = [Tar().file("a", b"a"), entry]
    results = run_paths(g.dest, [t.bytes() for t in layers])
    if refused:
        assert all(isinstance(v, Exception) and "1234.56" in str(v) for v in results.values()), results
    else:
        tree = assert_agree(results)
        assert sorted(tree.entries) == ["a"], sorted(tree.entries)
    g.check()


# --- found by the differential fuzzer (test_fuzz_paths.py) ---

@pytest.mark.parametrize("layers", [
    # a whiteout inside a dir copies it up; a whiteout of that dir must still hide it
    [Tar().dir("a").symlink("a/c", "a"), Tar().whiteout("a/c").whiteout("a")],
    # a dir replacing a file of the same layer hides what was below (opaque in overlay)
    [Tar().file("a").file("b/a"), Tar().file("b").dir("b")],
    # an opaque marker reached through a symlink spares what the layer wrote
    [Tar().file("a").file("b/a").symlink("a", ".").opaque("a")],
    # a whiteout under a dir implied in the same layer: nothing below, no whiteout node
    [Tar().symlink("a/b", ".").whiteout("a/a")],
    # a whiteout through a symlink of the same layer spares the symlink
    [Tar().symlink("a", ".").symlink("b", ".").whiteout("a/a")],
    # a hardlink to a directory, skipped as hidden or not, fails everywhere
    [Tar().dir("a"), Tar().hardlink("b", "a"), Tar().whiteout("b")],
    # an entry under a file skipped as hidden fails as if written
    [Tar().file("a").file("a/a"), Tar().file("x"), Tar().file("y"), Tar().file("a")],
    # an opaque marker alone does not make a dir the layer's: a whiteout of it removes it (umoci)
    [Tar().dir("a").file("a/x"), Tar().opaque("a").whiteout("a")],
    [Tar().file("a"), Tar().opaque("a").whiteout("a")],
    # a dir replaced by a symlink later in its layer: its mode must not land on the link's target
    [Tar().dir("c").dir("a/b/a", mode=0o700).symlink("a/b/a", "/c")],
    # ... nor the mode of a dir under it
    [Tar().dir("a/b", mode=0o700).dir("b/b", mode=0o755).symlink("a", "b")],
    # a whiteout, then an opaque marker for its dir: the whiteout must not show in the mount
    [Tar().file("a/a").dir("a"), Tar().whiteout("a/a").opaque("a")],
    [Tar().file("a/b/c").file("a/d"), Tar().whiteout("a/b/c").hardlink("e", "a/d").opaque("a")],
    # a whiteout of a dir the layer wrote into hides only what is below (umoci; the spec)
    [Tar().file("b/a"), Tar().file("a").file("b/b").whiteout("b")],
    [Tar().file("b/a").file("b/c/d"), Tar().dir("b").file("b/b").whiteout("b").file("b/e")],
    # a dir made through a symlink the layer replaces later keeps its mode (where it really is)
    [Tar().file("a").symlink("c", "a").dir("a").dir("c/a").dir("c")],
    [Tar().file("a").symlink("a", ".").hardlink("b", "a").dir("a/a")],
    # an opaque marker reached through a symlink to the root hides every lower entry there
    [Tar().dir("b"), Tar().dir("a").symlink("a", ".").opaque("a")],
    [Tar().dir("b").file("c").file("d"), Tar().whiteout("c"), Tar().file("e").symlink("a", ".").opaque("a")],
    # ... and a dir the layer wrote there before or after the marker shows nothing from below
    [Tar().file("a").file("b/a"), Tar().file("a").symlink("a", ".").file("b/b").opaque("a")],
    [Tar().file("b/a").dir("c/d"), Tar().symlink("a", ".").opaque("a").file("b/c").dir("c")],
    # ... and a whiteout of a symlink the layer wrote does not follow it (here into a loop)
    [Tar().symlink("a/a/a", "a").whiteout("a/a/a")],
    # ... and a whiteout of a dir the layer wrote, under a symlink loop the layer made of its parent
    [Tar().dir("c/a").symlink("c", "c").whiteout("c/a")],
    # entries skipped top-down (hidden by an opaque marker above) still imply their visible parents
    [Tar().file("a/a/a", b"1"), Tar().dir("a/a/a").dir("b").file("a/a").opaque("a/a/a"),
     Tar().whiteout("b").dir("b").file("b", b"1", mode=0o600), Tar().opaque("a")],
    [Tar().fifo("a").fifo("a").whiteout("a").whiteout("./a"), Tar().fifo("a").fifo("b/a").file("b/b/a"),
     Tar().file("b/a").dir("a").file("a").dir("a", mode=0o700), Tar().opaque("b")],
    # a skipped hardlink to itself names what is there (here a directory: an error everywhere)
    [Tar().file("a/a").file("a").symlink("b", "a/a/a").dir("a").whiteout("a/a").hardlink("a", "a"),
     Tar().file("a"), Tar().file("a"), Tar().file("a")],
    # an entry through a symlink to a file the layer wrote but skipped fails as if written
    [Tar().file("a"), Tar().file("a").dir("a"),
     Tar().dir("a").symlink("a/a", "a").file("a").file("a").symlink("c", "a").file("c/a"), Tar().file("a")],
    # a whiteout of a lower symlink the layer wrote through removes the symlink (the layer
    # did not write the name itself, only through it)
    [Tar().file("a").symlink("a", "b").dir("b"), Tar().file("a/a").whiteout("a")],
    [Tar().symlink("a", "c").file("c/a").file("b/a/a").fifo("a/a").whiteout("a").whiteout("a").dir("b"),
     Tar().fifo("a/c/a").dir("c").file("a/a").file("a/b", mode=0o600).dir("c").whiteout("a").fifo("a/b/c/.")],
    # ... nor does an opaque marker keep it
    [Tar().dir("D").symlink("D/c", "/e").dir("e"), Tar().file("D/c/z").opaque("D")],
    # a whiteout of the lower symlink a later entry's parent went through: that entry no longer goes through it
    [Tar().file("a").fifo("a").file("a").symlink("b", "."), Tar().whiteout("b/b").dir("b/a")],
    # an entry replacing the symlink the cached parent went through (b/b is b itself, through b -> .):
    # the next entry's b is the new one, in the same layer and over a lower layer's symlink
    [Tar().symlink("b", ".").file("a").fifo("a").dir("b/b").dir("b/a")],
    [Tar().symlink("b", "."), Tar().dir("b/b").dir("b/a")],
    [Tar().symlink("b", ".").dir("c"), Tar().symlink("b/b", "c").file("b/a")],
    [Tar().symlink("b", ".").dir("c").symlink("b/b", "c").file("b/a")],
    # a skipped hardlink to a skipped file whose directory a later entry replaced fails as if written
    [Tar().fifo("a/a/a").file("a"), Tar().hardlink("a", "a/a/a"), Tar().file("a")],
    [Tar().fifo("a/a/a").symlink("a", "b"), Tar().hardlink("c", "a/a/a"), Tar().file("c").file("a")],
    # ... and one to a skipped file inside the directory it would replace
    [Tar().fifo("a/a").dir("a").hardlink("a", "a/a"), Tar().file("a")],
    # ... and one to a skipped lower file that a whiteout or an opaque marker removed since
    [Tar().file("a"), Tar().whiteout("a").hardlink("c", "a"), Tar().file("a").file("c")],
    [Tar().file("a"), Tar().whiteout("a"), Tar().hardlink("c", "a"), Tar().file("a").file("c")],
    [Tar().file("d/a"), Tar().whiteout("d").hardlink("c", "d/a"), Tar().file("d/a").file("c")],
    [Tar().file("d/a"), Tar().opaque("d").hardlink("c", "d/a"), Tar().file("d/a").file("c")],
    # (a whiteout spares its own layer's file: the link to it is good)
    [Tar().file("a"), Tar().file("a").whiteout("a").hardlink("c", "a"), Tar().file("a").file("c")],
], ids=["copied-up-dir-whited-out", "dir-replaces-file", "opaque-through-symlink", "whiteout-nothing-below",
        "whiteout-through-own-symlink", "hardlink-to-dir", "entry-under-skipped-file", "opaque-then-whiteout",
        "opaque-on-file-then-whiteout", "dir-replaced-by-symlink-keeps-target-mode",
        "parent-replaced-by-symlink-keeps-target-mode", "whiteout-then-opaque", "copy-ups-then-opaque",
        "whiteout-of-own-dir", "whiteout-of-own-listed-dir", "dir-through-replaced-symlink",
        "dir-through-symlink-to-root", "opaque-root", "opaque-root-over-whiteouts",
        "opaque-root-own-dir-before", "opaque-root-own-dir-after",
        "whiteout-of-own-symlink-loop", "whiteout-of-own-dir-under-symlink-loop", "skipped-entries-imply-visible-parent",
        "skipped-entries-imply-visible-parent-2", "skipped-self-hardlink-to-dir",
        "entry-through-symlink-to-skipped-file", "whiteout-of-lower-symlink-written-through",
        "whiteout-of-lower-symlink-written-through-2", "opaque-over-lower-symlink-written-through",
        "whiteout-of-the-symlink-the-cached-parent-went-through",
        "dir-replaces-the-symlink-the-cached-parent-went-through",
        "dir-over-the-lower-symlink-the-cached-parent-went-through",
        "symlink-over-the-lower-symlink-the-cached-parent-went-through",
        "symlink-replaces-the-symlink-the-cached-parent-went-through",
        "skipped-link-to-skipped-file-under-skipped-file", "skipped-link-to-skipped-file-under-symlink",
        "skipped-link-to-skipped-file-inside-it", "skipped-link-to-whited-out-lower-file",
        "skipped-link-to-whited-out-lower-file-2", "skipped-link-into-whited-out-lower-dir",
        "skipped-link-into-opaque-lower-dir", "skipped-link-to-own-file-beside-its-whiteout"])
def test_fuzzer_findings(g, layers):
    agree(g, layers)


@pytest.mark.parametrize("layers", [
    [Tar().symlink("b", ".").file("b/b").file("b/a")],
    [Tar().symlink("b", "."), Tar().file("b/b").file("b/a")],
], ids=["same-layer", "over-a-lower-layer"])
def test_a_file_replacing_the_symlink_the_parent_went_through_fails_everywhere(g, layers):
    """b/b is b itself (through b -> .): once it is a file, b/a has no directory to go into,
    on every path, as umoci says too (the cached parent used to put a at the root)."""
    results = run_paths(g.dest, [t.bytes() for t in layers])
    assert all(isinstance(v, Exception) and "not a directory" in str(v) for v in results.values()), results
    g.check()


def test_entry_under_a_file_skipped_in_a_lower_layer_fails_everywhere(g):
    """Layer 0's file a is skipped (layer 3 replaces a); layer 1's a/a/a would have failed
    on it, unskipped: so it fails on every path (found by the fuzzer)."""
    layers = [Tar().file("a"), Tar().file("a/a/a"),
              Tar().file("a/a/a").symlink("a/b", "a/a/a").dir("a/a").file("a"), Tar().file("a")]
    results = run_paths(g.dest, [t.bytes() for t in layers])
    assert all(isinstance(v, Exception) for v in results.values()), results


def test_symlink_under_a_file_skipped_in_a_lower_layer_fails_everywhere(g):
    """Symlinks are never skipped; one under a file skipped below still fails as unskipped."""
    layers = [Tar().file("b").file("a"), Tar().file("a"), Tar().symlink("a/a", "."), Tar().file("a")]
    results = run_paths(g.dest, [t.bytes() for t in layers])
    assert all(isinstance(v, Exception) for v in results.values()), results


@pytest.mark.parametrize("umask", [0o077, 0o000, 0o027])
def test_modes_are_the_images_whatever_the_umask(g, umask):
    """Files are created with their final permissions and chmod-ed only where the
    umask (or a setuid/setgid/sticky bit) is in the way: the modes must still be
    exactly the image's, on every path."""
    t = Tar()
    for i, mode in enumerate([0o644, 0o755, 0o666, 0o600, 0o444, 0o000, 0o4755, 0o2750, 0o1777, 0o777]):
        t.file(f"f{i}", b"x", mode=mode, uid=i, gid=i)
    old = os.umask(umask)
    try:
        tree = agree(g, [t, Tar().file("top", b"y", mode=0o664)])
    finally:
        os.umask(old)
    assert tree.entries["f2"].mode == 0o666 and tree.entries["f5"].mode == 0o000
    assert tree.entries["f6"].mode == 0o4755 and tree.entries["f8"].mode == 0o1777
    assert tree.entries["top"].mode == 0o664


# --- sparse files: a terabyte of holes stays a few blocks on every path ---

BIG = 64 << 30  # 256 times the work's tmpfs; a regression that hashes the holes reads it in seconds


def _lastlog(build=sparse_pax_10):
    # useradd's lastlog for a high uid: gigabytes (up to terabytes) of holes around two blocks of data
    return build("var/log/lastlog", BIG, [(0, b"head" * 1024), (BIG - 4096, b"tail" * 1024)])


@pytest.mark.parametrize("upper", [None, "hardlink", "hardlink-twice"])
@pytest.mark.parametrize("build", [sparse_pax_10, sparse_old_gnu], ids=["pax-1.0", "oldgnu-S"])
def test_a_huge_sparse_file_keeps_its_holes_on_every_path(small_fs, build, upper):
    """Copies of a file (store snapshot to flat tree, copy-up of a lower file an upper layer
    hardlinks) walk its data regions; the dedup pass does not hash the holes.  Each path's
    tree must fit in 256 MiB, with the same data map as the archive's."""
    layers = [archive(Tar().dir("var").dir("var/log").bytes(end=False), _lastlog(build))]
    if upper:
        t = Tar().hardlink("var/log/lastlog.link", "var/log/lastlog")
        if upper == "hardlink-twice":
            t.hardlink("lastlog", "var/log/lastlog")
        layers.append(t.bytes())
    results = run_paths(small_fs, layers)
    tree = assert_agree(results, context=f"sparse {build.__name__} {upper}")
    assert tree is not None, results
    assert tree.entries["var/log/lastlog"].size == BIG
    maps = {}
    for path in ("dir", "store-copy", "store-relink"):
        maps[path] = data_map(os.path.join(small_fs, path, "var/log/lastlog"))
    assert all(m == [(0, 4096), (BIG - 4096, BIG)] for m in maps.values()), maps


@pytest.mark.parametrize("upper", ["write", "whiteout", "opaque", "both-names", "listed"])
def test_a_lower_dirs_time_is_kept_when_a_layer_writes_through_a_symlink_to_it(g, upper):
    """The next layer writes in a lower directory through a symlink to it (ln/g with
    ln -> real).  Its time is the lower layer's on every path: the overlay formats copy it
    up with it, and the dir format puts it back at the end of the layer.  On 2dfdebc the
    dir format looked for it under the name it was reached by, met the symlink and left
    the time of the write.  ``both-names``: written by its name first, then through the
    symlink (whose record is taken after that write); ``listed``: the layer lists it with a
    new time, then writes through the symlink.  On e77a40d the dir format gave both the
    time of the write: each name's record was applied, the symlink's last."""
    low = Tar().dir("real", mtime=1_500_000_000).file("real/f", b"f\n").dir("real/sub").symlink("ln", "real")
    up = {"write": Tar().file("ln/g", b"g\n"), "whiteout": Tar().whiteout("ln/f"),
          "opaque": Tar().opaque("ln/sub").file("ln/sub/n", b"n\n"),
          "both-names": Tar().file("real/a", b"a\n").file("ln/g", b"g\n"),
          "listed": Tar().dir("real", mtime=1_600_000_000).file("ln/g", b"g\n")}[upper]
    raws = [low.bytes(), up.bytes()]
    tree = assert_agree(run_paths(g.dest, raws, dir_mtime=True), context=describe(raws))
    g.check()
    assert tree["real"].mtime == (1_600_000_000 if upper == "listed" else 1_500_000_000)


# A whiteout or an opaque marker reached through a symlink, then the symlink removed in the same
# layer: the directory must keep its lower time (with_umoci False: umoci gives the time of the run)
_THROUGH_THEN_GONE = {
    "whiteout": ([Tar().dir("b", mtime=_LOW).file("b/f").symlink("a", "b"), Tar().whiteout("a/f").whiteout("a")],
                 "b", True),
    "whiteout-then-write": ([Tar().dir("b", mtime=_LOW).file("b/f").symlink("a", "b"),
                             Tar().whiteout("a/f").file("a/g").whiteout("a")], "b", True),
    "opaque-in-empty-dir": ([Tar().dir("b", mtime=_LOW).symlink("a", "b"), Tar().opaque("a").file("a/x").whiteout("a")],
                            "b", True),
    # test_fuzz_paths.py, seed 44250 (LAMINA_FUZZ_HELD=1): the marker in a/d (a/d -> .) clears a,
    # the symlink with it
    "opaque-clears-the-link": ([Tar().dir("a", mtime=_LOW).file("a/y").file("a/s").symlink("a/d", "."),
                                Tar().whiteout("a/d/y").opaque("a/d")], "a", False),
}


@pytest.mark.parametrize("case", sorted(_THROUGH_THEN_GONE))
def test_a_directory_a_marker_reaches_through_a_symlink_the_layer_removes_keeps_its_time(g, case):
    """A whiteout (or an opaque marker in an empty directory) reached through ``a -> b``, then
    ``a`` removed in the same layer.  The dir format's quick whiteout and marker recorded b's time
    under the name ``a`` (where _keep_times records it where the directory really is), and the
    record then stood in for b's own: gone with ``a`` by the end of the layer, b kept the time of
    the extraction where the overlay mounts, the store's paths and umoci keep b's."""
    layers, d, with_umoci = _THROUGH_THEN_GONE[case]
    raws = [t.bytes() for t in layers]
    since = int(time.time()) - 1
    results = run_paths(g.dest, raws, dir_mtime=True)
    if with_umoci:
        results["umoci"] = umoci_tree(g.dest, raws, dir_mtime=True)
    tree = assert_agree({p: made_now(t, since) for p, t in results.items()}, context=describe(raws))
    assert tree.entries[d].mtime == _LOW, tree.entries
    g.check()


# A whiteout after entries of its own layer under the name it hides: the layer's directory
# stays (a whiteout hides lower layers only), it merely shows nothing from below.
_LISTED_LOW = dict(mode=0o750, uid=5, gid=6, mtime=_LOW)
WHITEOUT_AFTER_CASES = {
    "implied-dir": ([Tar().dir("a", **_LISTED_LOW).file("a/x"), Tar().dir("a/a").whiteout("a")], "a"),
    "implied-by-a-file": ([Tar().dir("a", **_LISTED_LOW).file("a/x"), Tar().file("a/y").whiteout("a")], "a"),
    "implied-two-deep": ([Tar().dir("a", **_LISTED_LOW).file("a/x"), Tar().file("a/b/c").whiteout("a")], "a",
                         "a/b"),
    "in-a-subdir": ([Tar().dir("a").dir("a/b", **_LISTED_LOW).file("a/b/x"), Tar().file("a/b/c").whiteout("a/b")],
                    "a/b"),
}


@pytest.mark.parametrize("case", sorted(WHITEOUT_AFTER_CASES))
def test_a_whiteout_after_its_own_layers_entries_keeps_the_lower_directory_top_down(g, case):
    """The top-down scan took the whiteout as hiding the directory itself, so the unpack skipped
    the lower layer's directory entry, and the upper layer's entries made the directory anew:
    it lost its owner, mode and time there (found by test_fuzz_paths, seed 2929), while every
    other path keeps the lower directory, as the overlay mount shows it."""
    layers, d, *implied = WHITEOUT_AFTER_CASES[case]
    raws = [t.bytes() for t in layers]
    results = run_paths(g.dest, raws, dir_mtime=True)
    for r in results.values():   # an implied directory's time is its path's time of extraction
        for p in implied if not isinstance(r, Exception) else ():
            r.entries[p] = dataclasses.replace(r.entries[p], mtime=None)
    tree = assert_agree(results, context=describe(raws))
    e = tree.entries[d]
    assert (e.mode & 0o7777, e.uid, e.gid, e.mtime) == (0o750, 5, 6, _LOW), e
    assert f"{d}/x" not in tree.entries
    g.check()


def test_a_directory_written_through_a_symlink_the_layer_then_removes_keeps_its_time(g):
    """b/y written through a -> b, then .wh.a in the same layer: the dir format recorded b's
    time to restore under the name a, which was gone by the end of the layer, so b kept the
    time of the extraction while the overlay formats, the store's paths and umoci keep b's."""
    layers = [Tar().dir("b", mtime=_LOW).symlink("a", "b"), Tar().file("a/y").whiteout("a")]
    raws = [t.bytes() for t in layers]
    results = run_paths(g.dest, raws, dir_mtime=True)
    results["umoci"] = umoci_tree(g.dest, raws, dir_mtime=True)
    tree = assert_agree(results, context=describe(raws))
    assert tree.entries["b"].mtime == _LOW and "a" not in tree.entries, tree.entries
    g.check()


def test_a_directory_a_whiteout_of_its_parent_empties_below_keeps_its_time(g):
    """``.wh.a`` in a layer that wrote under a/b/b keeps what the layer wrote and removes what
    the layers below put there, a/b/c too.  The dir format kept a's time, but not a/b's: the
    directories below the one whited out lost their lower entries without their time being
    recorded first, so a/b had the extraction's time where every other path keeps its own."""
    layers = [Tar().dir("a/b", mtime=_LOW).dir("a/b/c", mtime=_LOW + 1), Tar().file("a/b/b/x", b"x"),
              Tar().dir("a/b/b/c", mtime=_LOW + 2).whiteout("a")]
    raws = [t.bytes() for t in layers]
    since = int(time.time()) - 1
    results = {p: made_now(t, since) for p, t in run_paths(g.dest, raws, dir_mtime=True).items()}
    tree = assert_agree(results, context=describe(raws))
    assert tree.entries["a/b"].mtime == _LOW and "a/b/c" not in tree.entries, tree.entries
    g.check()


@pytest.mark.parametrize("target", ["/c", "/x"], ids=["into-the-whited-out-dir", "elsewhere"])
def test_a_whiteout_spares_no_directory_the_layer_only_wrote_through(g, target):
    """c/c/a -> TARGET below, then c/c/a/b and .wh.c in one layer: b lands where the link
    leads (c/b, or x/b), so the layer wrote nothing into c/c, nor into c at all when the
    link leads to x.  The dir format took the directories the entry's name passes through
    for the layer's own: the whiteout kept c/c (and c) where overlayfs, the store's paths
    and umoci remove them (found by test_fuzz_paths.py)."""
    layers = [Tar().dir("x").symlink("c/c/a", target), Tar().file("c/c/a/b", b"b").whiteout("c")]
    raws = [t.bytes() for t in layers]
    results = run_paths(g.dest, raws)
    results["umoci"] = umoci_tree(g.dest, raws)
    tree = assert_agree(results, context=describe(raws))
    assert sorted(tree.entries) == (["c", "c/b", "x"] if target == "/c" else ["x", "x/b"]), tree.entries
    g.check()


def _acl(*entries):
    """An ACL xattr value: (tag, perm, id) entries (acl_ea.h, version 2)."""
    import struct
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", t, p, i) for t, p, i in entries)


# user::rwx user:4321:rwx group::r-x mask::rwx other::r-x: a host user's rights
HOST_DEFAULT_ACL = _acl((1, 7, 0xFFFFFFFF), (2, 7, 4321), (4, 5, 0xFFFFFFFF), (0x10, 7, 0xFFFFFFFF),
                        (0x20, 5, 0xFFFFFFFF))


def test_a_default_acl_above_the_destination_reaches_no_entry_on_any_path(g):
    """The directory DEST is made in has a default ACL (rwx for host user 4321).  The
    staging directory inherits it, and so did every entry the store's flatten made in it
    (unpack REF DEST, --link's directories, a bundle's rootfs), down every directory made
    there: the dir unpack, which undoes the inheritance entry by entry, gave none.  No entry
    of the image gets it on any path; the root keeps what it inherited, as the dir unpack's."""
    from lamina.store import Store
    from lamina.store.bundles import make_bundle
    from treecmp import snapshot
    work = g.dest / "acl"
    work.mkdir()
    os.setxattr(work, "system.posix_acl_default", HOST_DEFAULT_ACL)
    layers = [Tar().file("f", b"x").dir("d").file("d/g", b"y").fifo("p").symlink("s", "f").file("k", b"k"),
              Tar().file("d/h", b"z").dir("e", mode=0o700).file("e/i", b"i").whiteout("k")]
    raws = [t.bytes() for t in layers]
    tree = assert_agree(run_paths(work, raws), context=describe(raws))
    bundle = work / "bundle"
    make_bundle(Store(work / "store"), "img:1", bundle)
    rootfs = snapshot(bundle / "rootfs")
    assert sorted(rootfs.entries) == sorted(tree.entries)
    for where, t in (("every path", tree), ("bundle rootfs", rootfs)):
        for name, e in t.entries.items():
            assert not [k for k, _ in e.xattrs if k.startswith("system.posix_acl")], f"{where}: {name}: {e.xattrs}"
    for root in (work / "dir", work / "store-copy", bundle / "rootfs"):
        assert os.getxattr(root, "system.posix_acl_default") == HOST_DEFAULT_ACL, root
    g.check()


@pytest.mark.parametrize("marker", [b"0", b"5", b"2"], ids=["as-a-file", "as-a-dir", "as-a-symlink"])
@pytest.mark.parametrize("below", ["lower-dir", "lower-file", "nothing"])
def test_an_opaque_marker_under_a_file_of_its_own_layer_leaves_the_file(g, marker, below):
    """``a/a/a`` (a file), then ``a/a/a/.wh..wh..opq`` later in the same layer: the marker is
    under a file, so there is no directory for it to make opaque.  GNU tar and bsdtar fail on it
    ("Not a directory") and leave the file, umoci leaves the file, docker's overlay2 sets
    ``trusted.overlay.opaque`` on the file, which overlayfs ignores on anything but a directory.
    lamina: the file, on every path, with no opaque marking anywhere (the overlay format's layer
    neither), and nothing of the directory it replaced (CONFORMANCE.md)."""
    from tarvectors import extract_with
    lower = {"lower-dir": Tar().dir("a/a/a").file("a/a/a/x", b"x"), "lower-file": Tar().file("a/a/a", b"old"),
             "nothing": None}[below]
    top = Tar().file("a/a/a", b"f").entry("a/a/a/.wh..wh..opq", b"", type=marker,
                                         linkname="a/a/a" if marker == b"2" else "")
    layers = [t for t in (lower, top) if t is not None]
    tree = agree(g, layers)
    assert tree.entries["a/a/a"].type == "file" and tree.entries["a/a/a"].xattrs == (), tree.entries["a/a/a"]
    assert sorted(tree.entries) == ["a", "a/a", "a/a/a"], sorted(tree.entries)
    assert not isinstance(umoci_tree(g.dest / "u", [t.bytes() for t in layers]), Exception), "umoci takes it"
    # the overlay format's layer holds the file as it is: no opaque xattr for a mount to read
    raws = [t.bytes() for t in layers]
    import lamina
    stats = lamina.unpack(f"oci:{write_image(g.dest / 'ovl-layout', raws)}:img", os.fspath(g.dest / "ovl-alone"),
                          format="overlay")
    top_file = os.path.join(stats.layer_dirs[-1], "a", "a", "a")
    assert os.path.isfile(top_file) and not os.path.islink(top_file)
    assert [x for x in os.listxattr(top_file, follow_symlinks=False) if "overlay" in x] == []
    # GNU tar and bsdtar, extracting the layer alone: the marker fails, the file stays
    (g.dest / "top.tar").write_bytes(top.bytes())
    for tool in ("gnu", "bsd"):
        rc, err = extract_with(tool, g.dest / "top.tar", g.dest / tool, check=False)
        assert rc != 0 and "Not a directory" in err, (tool, rc, err)
        assert os.path.isfile(g.dest / tool / "a" / "a" / "a")
    g.check()


@pytest.mark.parametrize("layers", [
    [Tar().symlink("a", "d").file("a", b"1"), Tar().file("a", b"1", mode=0o600), Tar().hardlink("a", "a")],
    [Tar().file("a", b"old"), Tar().symlink("a", "d").file("a", b"old"), Tar().file("a", b"new", mode=0o600),
     Tar().hardlink("a", "a")],
], ids=["over-the-layer-below", "two-layers-below"])
def test_a_hardlink_to_itself_names_the_file_the_top_down_unpack_skipped(g, layers):
    """``a => a`` in the top layer names the file ``a`` just below it (0600).  The top-down dir
    unpack skipped that file as hidden by the link, but an older ``a`` (0644, written because it
    replaced the layer's own symlink ``a``) was there: the link, finding its own name no longer
    among the skipped files, linked that one, 0644 where every other path gives 0600 (found by
    link_stacks, seed 20804)."""
    tree = agree(g, layers, umoci=False)  # (umoci refuses a link to itself: "link: no such file")
    assert tree.entries["a"].mode == 0o600 and tree.entries["a"].type == "file", tree.entries["a"]
    assert tree.entries["a"].size == len(b"1" if len(layers) == 3 else b"new")


# --- a whiteout or opaque marker under a symlink ---

def _under_link(target, marker, same_layer):
    """``l -> target`` (in the layer below, or in the marker's own layer), then ``l/.wh..wh..opq``
    or ``l/.wh.x``; the layer below holds ``d/x`` and the file ``F``."""
    lower = Tar().dir("d").file("d/x", b"1").file("F", b"f")
    upper = Tar()
    (upper if same_layer else lower).symlink("l", target)
    return [lower, upper.opaque("l") if marker == "opaque" else upper.whiteout("l/x")]


@pytest.mark.parametrize("same_layer", [False, True], ids=["link-below", "link-same-layer"])
@pytest.mark.parametrize("marker", ["opaque", "whiteout"])
@pytest.mark.parametrize("target", ["d", "nothing", "F"], ids=["to-dir", "dangling", "to-file"])
def test_a_marker_under_a_symlink_acts_where_the_link_leads_and_hides_nothing_past_it(g, target, marker, same_layer):
    """``l/.wh..wh..opq`` or ``l/.wh.x`` under a symlink ``l``: through a link to a directory
    the marker acts there (``d/x`` gone), as a file ``l/f`` lands there; through a link to
    nothing or to a file there is no directory to act on, and the marker hides nothing and
    makes nothing (no ``nothing/``), as a marker in an absent directory or under a file does:
    where a file ``l/f`` is refused (it would have to be made somewhere), the marker has
    nothing to make.  umoci reads it so (containerd refuses an opaque marker under a dangling
    link, its walk of the directory failing): the choice is CONFORMANCE.md's."""
    tree = agree(g, _under_link(target, marker, same_layer))
    want = sorted(["F", "d", "l"] + ([] if target == "d" else ["d/x"]))
    assert sorted(tree.entries) == want, sorted(tree.entries)
    assert tree["l"].type == "symlink" and tree["l"].target == target


# --- a hardlink whose target is under a symlink to nothing ---

@pytest.mark.parametrize("same_layer", [False, True], ids=["link-below", "link-same-layer"])
@pytest.mark.parametrize("target,why", [("nothing", "'l' goes through a dangling symlink"),
                                        ("F", "a component of 'l' is not a directory")],
                         ids=["dangling", "to-file"])
def test_a_hardlink_through_a_symlink_to_nothing_is_refused_in_one_wording(g, target, why, same_layer):
    """A hardlink ``h`` to ``l/f``, ``l`` a symlink to nothing or to a file.  The dir format
    (and ``unpack docker://``) said "hardlink target 'l/f' not found in the layer or below"
    (InvalidArchiveError), the overlay format and the store "entry 'h': 'l' goes through a
    dangling symlink" (ExtractError), the path in it seemingly the entry's own.  Now every path
    gives the same ExtractError, naming the entry, its target and what is in the way; a
    target whose directory is absent is still "not found"."""
    from lamina.errors import ExtractError, InvalidArchiveError
    lower, upper = Tar().file("F", b"f"), Tar()
    (upper if same_layer else lower).symlink("l", target)
    results = run_paths(g.dest, [lower.bytes(), upper.hardlink("h", "l/f").bytes()])
    for path, r in results.items():
        assert type(r) is ExtractError, (path, r)
        assert str(r).endswith(f": entry 'h': hardlink target 'l/f': {why}"), (path, str(r))
    os.mkdir(g.dest / "absent")
    results = run_paths(g.dest / "absent", [Tar().file("F", b"f").bytes(), Tar().hardlink("h", "z/f").bytes()],
                        paths=("dir", "overlay-mount"))
    for path, r in results.items():
        assert type(r) is InvalidArchiveError, (path, r)
        assert str(r).endswith(": entry 'h': hardlink target 'z/f' not found in the layer or below"), (path, str(r))
    g.check()


# --- an entry under a symlink to nothing whose target no directory could be named ---

@pytest.mark.parametrize("same_layer", [False, True], ids=["link-below", "link-same-layer"])
@pytest.mark.parametrize("target", ["nowhere", "x" * 300, "d/" + "x" * 300 + "/y", "/" + "x" * 256],
                         ids=["short", "past-name-max", "past-name-max-inside", "absolute-past-name-max"])
def test_an_entry_under_a_symlink_to_a_name_past_name_max_is_under_a_dangling_one(g, target, same_layer):
    """``s -> nowhere`` then ``s/f``: "'s' goes through a dangling symlink" on every path.  With a
    target component of more than 255 bytes, which can name nothing, the dir format said
    "cannot open 's': File name too long": what it tried, not what is wrong with the layer."""
    from lamina.errors import ExtractError
    lower, upper = Tar().dir("d"), Tar()
    (upper if same_layer else lower).pax({"linkpath": target}).symlink("s", "")
    results = run_paths(g.dest, [lower.bytes(), upper.file("s/f", b"x").bytes()])
    wrong = {path: repr(r) for path, r in results.items()
             if type(r) is not ExtractError or not str(r).endswith(": entry 's/f': 's' goes through a dangling symlink")}
    assert not wrong, wrong
    g.check()
