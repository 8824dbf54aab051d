"""More hostile and awkward layers through every path to a rootfs (see everypath.py).

What test_security.py and test_every_path.py do not cover: things a layer can
carry that mean something to overlayfs or the kernel besides the tar entry
itself (0/0 character devices, overlay xattrs, security.capability, setgid
directories, sparse files), names a whiteout or an opaque marker could be read
from, a store left behind by a refused layer, the compact store's own tar reader,
fsck on trees deeper than PATH_MAX from the store, and markers repeated to make
the work quadratic.  Every case runs the image through every path (and umoci
where it accepts it), requires one tree or one kind of error everywhere, and
checks that nothing outside the work directory changed.
"""
from __future__ import annotations

import json
import stat
import os
import subprocess

import pytest

from conftest import require_root
from everypath import assert_agree, describe, run_paths, umoci_tree, write_image
from layerkit import overlay_layers
from storekit import lamina
from tarbuild import B256, Tar

# security.capability, VFS_CAP_REVISION_2, cap_net_bind_service permitted
CAP = bytes.fromhex("01000002" "00040000" "00000000" "00000000" "00000000")


def agree(g, tars, *, umoci=True):
    raws = [t if isinstance(t, bytes) else t.bytes() for t in tars]
    results = run_paths(g.dest, raws)
    oracle = umoci_tree(g.dest, raws) if umoci else None
    tree = assert_agree(results, context=describe(raws))
    g.check()
    return tree, oracle


def refused_everywhere(g, tars, error, *names, work=None):
    """Every path refuses the image with ``error`` naming one of ``names`` (the work in
    ``work``, by default ``g.dest``)."""
    from lamina import errors
    raws = [t.bytes() for t in tars]
    results = run_paths(g.dest if work is None else work, raws)
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


# --- a hardlink that would replace a directory holding its own target ---

@pytest.mark.parametrize("layers", [
    [Tar().dir("d").file("d/a", b"a").hardlink("d", "d/a")],
    [Tar().dir("d").dir("d/e").file("d/e/a", b"a"), Tar().hardlink("./d/", "d/e/a")],
], ids=["same-layer", "lower-layer"])
def test_a_hardlink_replacing_the_directory_of_its_target_is_refused_saying_so(g, layers):
    """Replacing d removed d/a with it, and the error then said the target was "not found"
    (GNU tar refuses too: d is not empty; umoci removes d, then fails the same way)."""
    refused_everywhere(g, layers, "InvalidArchiveError", "which is inside it")


def test_a_hardlink_replacing_a_symlink_it_reaches_its_target_through_is_made(g):
    """d -> real, then a hardlink d to d/a: the target is real/a, which replacing the symlink
    d leaves in place, so this one is made (d becomes a second name of real/a)."""
    tree, _ = agree(g, [Tar().dir("real").file("real/a", b"a").symlink("d", "real"), Tar().hardlink("d", "d/a")])
    assert tree.entries["d"].type == "file" and frozenset({"d", "real/a"}) in tree.links


# --- a 0/0 character device is overlayfs's whiteout ---

@pytest.mark.parametrize("layers,victim", [
    ([Tar().file("x", b"lower"), Tar().chardev("x", 0, 0)], "x"),
    ([Tar().dir("d").chardev("d/y", 0, 0)], "d/y"),
    ([Tar().dir("d").file("d/a", b"a"), Tar().pax({"path": "d/a"}).chardev("ignored", 0, 0, mode=0o600)], "d/a"),
], ids=["over-a-lower-file", "new", "pax-named"])
def test_a_whiteout_device_in_a_layer_is_refused_everywhere(g, layers, victim):
    """The dir format made the node; in the overlay formats (and the store's snapshots)
    it is a whiteout, so the lower x vanished there, and a new one was listed by readdir
    but could not be looked up.  Every path refuses it now."""
    refused_everywhere(g, layers, "UnsupportedEntryError", f"'{victim}'")


@pytest.mark.parametrize("major,minor", [(4096, 0), (0, 1 << 20), (5000, 1), (1, 2_000_000)])
def test_device_numbers_that_would_wrap_to_0_0_are_refused_everywhere(g, major, minor):
    """dev_t is 32 bits to mknod(2): numbers past 12/20 bits must not wrap to a whiteout, and
    the error says why (glibc's mknod said only "Invalid argument")."""
    refused_everywhere(g, [Tar().file("x", b"lower"), Tar().chardev("x", major, minor)], "UnsupportedEntryError",
                       f"'x': device number {major}:{minor} does not fit Linux's")


def test_block_device_0_0_and_char_device_0_1_are_plain_nodes(g):
    tree, _ = agree(g, [Tar().file("x", b"x"), Tar().blockdev("x", 0, 0).chardev("c", 0, 1)])
    assert tree.entries["x"].type == "blk" and tree.entries["x"].rdev == (0, 0)
    assert tree.entries["c"].type == "chr" and tree.entries["c"].rdev == (0, 1)


# --- names overlayfs or a whiteout reader could take for markers ---

OPAQUE = ["d", "d/new"]
GONE = ["d", "d/keep"]


@pytest.mark.parametrize("upper,listing", [
    (Tar().dir("d/.wh..wh..opq").file("d/new", b"n"), OPAQUE),          # an opaque marker as a dir
    (Tar().symlink("d/.wh..wh..opq", "/").file("d/new", b"n"), OPAQUE),  # ... as a symlink
    (Tar().dir("d/.wh.old"), GONE),                                      # a whiteout as a dir
    (Tar().symlink("d/.wh.old", "../../.."), GONE),                     # ... as a symlink
    (Tar().file("t", b"t").hardlink("d/.wh.old", "t"), GONE + ["t"]),    # ... as a hardlink
    (Tar().fifo("d/.wh.old"), GONE),                                     # ... as a fifo
    (Tar().file("d/.wh.old", b"a whiteout with data"), GONE),           # ... with data
    (Tar().chardev("d/.wh.old", 1, 3), GONE),                            # ... as a device
], ids=["opaque-dir", "opaque-symlink", "whiteout-dir", "whiteout-symlink", "whiteout-hardlink",
        "whiteout-fifo", "whiteout-with-data", "whiteout-chardev"])
def test_whiteout_names_of_any_type_agree(g, upper, listing):
    """A .wh. name is a whiteout (and .wh..wh..opq an opaque marker) whatever its entry
    type says, on every path, as umoci reads it: never a node of that name."""
    base = Tar().dir("d").file("d/old", b"o").file("d/keep", b"k")
    tree, oracle = agree(g, [base, upper])
    assert sorted(tree.entries) == sorted(listing)
    if not isinstance(oracle, Exception):
        assert sorted(oracle.entries) == sorted(listing)


@pytest.mark.parametrize("key,value", [
    ("SCHILY.xattr.trusted.overlay.opaque", b"y"),
    ("SCHILY.xattr.user.overlay.opaque", b"y"),
    ("LIBARCHIVE.xattr.trusted%2Eoverlay%2Eopaque", b"eQ=="),
    ("SCHILY.xattr.trusted.overlay.redirect", b"/e"),
    ("SCHILY.xattr.trusted.overlay.opaque", b"x"),
    # escaped (Linux 6.7: a lower's trusted.overlay.overlay.X shows as trusted.overlay.X in a mount)
    ("SCHILY.xattr.trusted.overlay.overlay.opaque", b"y"),
    ("SCHILY.xattr.user.overlay.redirect", b"/e"),
    ("SCHILY.xattr.trusted.overlay.metacopy", b""),
    ("SCHILY.xattr.trusted.overlay.origin", b"\x00\xfb\x01"),
    ("SCHILY.xattr.trusted.overlay.upper", b"x"),
])
def test_overlay_xattrs_from_a_layer_mean_nothing(g, key, value):
    """A layer cannot make a directory opaque or redirected for the overlay formats
    by carrying overlayfs's own xattrs."""
    base = Tar().dir("d").file("d/old", b"o").dir("e").file("e/x", b"x")
    top = Tar().pax([(key, value)]).dir("d").file("d/new", b"n")
    top.pax([("SCHILY.xattr.trusted.overlay.whiteout", b"")]).file("d/gone", b"")
    tree, _ = agree(g, [base, top])
    assert {"d/old", "d/new", "d/gone", "e/x"} <= set(tree.entries)
    assert not any("overlay" in k for e in tree.entries.values() for k, _ in e.xattrs)


@pytest.mark.parametrize("key", ["SCHILY.xattr.user.lamina.staging", "LIBARCHIVE.xattr.user%2Elamina%2Estaging"])
def test_lamina_s_own_staging_mark_from_a_layer_is_set_on_no_path(g, key):
    """``user.lamina.staging`` is the mark unpack puts on its staging dirs (unpacker._MARK);
    what carries it, with the value lamina would write, is what the sweep of killed unpacks
    looks for.  A layer's entry carrying it (the root's own ``./`` entry too, which lands on the
    staging dir itself) is no staging dir: every path drops it, as it drops overlayfs's own
    xattrs, and says so.  Other ``user.lamina.*`` names are the layer's own (the sample image
    carries ``user.lamina.note``): kept.  On 9283a86 every path set the mark from the layer."""
    value = b"2 0123abcd" if "LIBARCHIVE" not in key else b"MiAwMTIzYWJjZA=="
    top = Tar().pax([(key, value)]).dir("./").pax([(key, value)]).dir(".lamina-tmp-0123abcd") \
        .pax([(key, value), ("SCHILY.xattr.user.lamina.note", b"1")]).file("f", b"f\n")
    tree, _ = agree(g, [Tar().dir("d"), top])
    assert {".lamina-tmp-0123abcd", "f", "d"} <= set(tree.entries)
    assert not any(k == "user.lamina.staging" for e in tree.entries.values() for k, _ in e.xattrs), tree.entries
    assert ("user.lamina.note", b"1") in tree.entries["f"].xattrs


# --- more xattr names than listxattr(2) returns (XATTR_LIST_MAX) ---

def test_an_entry_with_more_xattr_names_than_a_listing_holds_is_refused(g, small_fs):
    """70 KB of xattr names on one file: tmpfs (xfs, btrfs) sets them all, then listxattr(2)
    fails with E2BIG, so no tool (tar, getfattr, a flat copy) could read them back.  The dir
    paths wrote the file, the store's dedup pass died on it with an OSError traceback, and a
    flat copy would have dropped them in silence.  Refused by name on every path, the
    store left clean."""
    names = [(f"SCHILY.xattr.user.{i:04d}" + "k" * 90, b"v") for i in range(700)]
    refused_everywhere(g, [Tar().file("a", b"a"), Tar().pax(names).file("etc/many", b"x")],
                       "LimitExceededError", "etc/many", work=small_fs)
    report = json.loads(lamina(small_fs / "store", "fsck", "--json", check=False).stdout)
    assert report["findings"] == [], report


# --- a directory's default ACL: what the kernel gives the entries made in it ---

def _acl(*entries):
    """A POSIX ACL xattr value: (tag, perm, id) entries."""
    import struct
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)


ANY = 0xFFFFFFFF
# u::rwx, u:1234:rwx, g::r-x, m::rwx, o::---
DEFAULT_ACL = _acl((1, 7, ANY), (2, 7, 1234), (4, 5, ANY), (0x10, 7, ANY), (0x20, 0, ANY))


def _with_default_acl(t):
    return t.pax({"SCHILY.xattr.system.posix_acl_default": DEFAULT_ACL})


DEFAULT_ACL_STACKS = {
    "same-layer": [_with_default_acl(Tar()).dir("d").file("d/f", b"1", mode=0o644).dir("d/sub", mode=0o755)
                   .fifo("d/p", mode=0o644).file("d/x/y/g", b"2")],
    "lower-layer": [_with_default_acl(Tar()).dir("d").file("d/t", b"t"),
                    Tar().file("d/f", b"1", mode=0o644).dir("d/sub", mode=0o755).fifo("d/p", mode=0o644)
                    .file("d/x/y/g", b"2").hardlink("d/h", "d/t")],
    "root": [_with_default_acl(Tar()).dir("./").file("t", b"t"),
             Tar().file("f", b"1", mode=0o644).dir("sub", mode=0o755).file("x/y/g", b"2").hardlink("h", "t")],
    # the directory's entry after the first of its children: the next one is made under the ACL
    "set-after-children": [_with_default_acl(Tar().file("d/f", b"1", mode=0o644)).dir("d").file("d/g", b"2")],
}


@pytest.mark.parametrize("case", sorted(DEFAULT_ACL_STACKS))
def test_a_default_acl_gives_nothing_to_the_entries_made_under_it(g, case):
    """A directory carrying system.posix_acl_default (docker writes it where the build's
    directory had one): every inode made in it took an access ACL the image does not hold
    (u:1234:rwx on the next layer's files) and a mode masked by it (0640 for 0644, 0750
    for the directories it implies), and the dir format and overlay mount then disagreed
    where the root held it.  An entry's xattrs and mode are its own on every path, as
    umoci has them; the directory keeps its default ACL."""
    import dataclasses
    tree, oracle = agree(g, DEFAULT_ACL_STACKS[case])
    holder = "." if case == "root" else "d"
    under = "" if case == "root" else "d/"
    # the directories no entry names are lamina's own (0755, no xattrs: CONFORMANCE.md);
    # umoci makes them with MkdirAll and leaves them what the ACL gives
    implied = {under + "x", under + "x/y"}
    assert_agree({"lamina": tree, "umoci": dataclasses.replace(
        oracle, entries={p: (tree.entries[p] if p in implied else e) for p, e in oracle.entries.items()})},
        context=case)
    for path, e in tree.entries.items():
        keys = {k for k, _ in e.xattrs}
        if path == holder:
            continue
        assert not keys & {"system.posix_acl_access", "system.posix_acl_default"}, (path, e)
    assert tree.entries[under + "f"].mode == 0o644, tree.entries[under + "f"]
    assert tree.entries[under + ("g" if case == "set-after-children" else "x/y/g")].mode == 0o644
    if holder == "d":
        assert dict(tree.entries["d"].xattrs)["system.posix_acl_default"] == DEFAULT_ACL
    if case != "set-after-children":
        assert tree.entries[under + "x"].mode == 0o755, tree.entries[under + "x"]


# --- owners at the edge of uid_t: (uid_t)-1 means "leave it" to chown(2) ---

def test_largest_owners(g):
    t = Tar().file("f", b"x", uid=B256(4294967294), gid=B256(4294967294)).dir("d", uid=B256(4294967294))
    tree, _ = agree(g, [t])
    assert tree.entries["f"].uid == 4294967294 and tree.entries["d"].uid == 4294967294


# --- a refused layer leaves the store as it was ---

def test_refused_layer_leaves_the_store_clean_and_reusable(g):
    """Two images share a base; the second's top layer is refused.  The store must
    fsck clean, keep serving the first, refuse the second again the same way, and
    accept the second once its bad layer is fixed."""
    tmp_path = g.dest
    base = Tar().dir("etc").file("etc/os-release", b"ID=x\n").dir("bin").file("bin/sh", b"sh", mode=0o755)
    good = write_image(tmp_path / "good", [base.bytes(), Tar().file("app", b"app").bytes()])
    bad = write_image(tmp_path / "bad", [base.bytes(), Tar().file("ok", b"ok").chardev("etc/os-release", 0, 0)
                                         .file("after", b"a").bytes()])
    fixed = write_image(tmp_path / "fixed", [base.bytes(), Tar().file("ok", b"ok").whiteout("etc/os-release")
                                             .file("after", b"a").bytes()])
    root = tmp_path / "store"
    lamina(root, "copy", f"oci:{good}:img", "good:1")
    for _ in range(2):
        r = lamina(root, "copy", f"oci:{bad}:img", "bad:1", check=False)
        assert r.returncode != 0 and "etc/os-release" in r.stderr and "Traceback" not in r.stderr, r.stderr
        report = json.loads(lamina(root, "fsck", "--json", check=False).stdout)
        assert report["findings"] == [], report
    lamina(root, "unpack", "good:1", tmp_path / "out-good")
    assert sorted(os.listdir(tmp_path / "out-good")) == ["app", "bin", "etc"]
    lamina(root, "copy", f"oci:{fixed}:img", "bad:1")
    lamina(root, "unpack", "bad:1", tmp_path / "out-fixed")
    assert sorted(os.listdir(tmp_path / "out-fixed")) == ["after", "bin", "etc", "ok"]
    assert os.listdir(tmp_path / "out-fixed" / "etc") == []
    assert json.loads(lamina(root, "fsck", "--json", check=False).stdout)["findings"] == []


# --- a compact store rebuilds every layer the extractor accepts ---

def _sized(typ, name, size, **kw):
    """A header-only entry whose size field claims a payload (Go's archive/tar, and the
    extractor, read none)."""
    from tarbuild import header
    return header(name, type=typ, size=size, **kw)


def _compact_cases():
    t = lambda: Tar().file("a", b"A" * 700)  # noqa: E731
    tail = lambda x: x.file("b", b"B" * 2000).file("c", b"C" * 100).bytes()  # noqa: E731
    return {
        "symlink-with-size": tail(t().raw(_sized(b"2", "s", 1024, linkname=b"a", mode=0o777))),
        "hardlink-with-size": tail(t().raw(_sized(b"1", "h", 600, linkname=b"a"))),
        "dir-with-size": tail(t().raw(_sized(b"5", "d", 513, mode=0o755))),
        "fifo-with-size": tail(t().raw(_sized(b"6", "p", 5000))),
        "file-slash-with-size": tail(t().raw(_sized(b"0", "e/", 1000, mode=0o755))),
        "pax-size-on-symlink": tail(t().pax({"size": "100"}).symlink("s", "a")),
        "pax-empty-size": tail(t().pax({"size": ""}).file("z", b"Z" * 600)),
        "global-pax-size-and-path": tail(t().pax({"size": "5000", "path": "zz"}, type=b"g")),
        "solaris-X-path": tail(t().pax({"path": "renamed", "size": "600"}, type=b"X").file("orig", b"R" * 600)),
    }


@pytest.mark.parametrize("case", list(_compact_cases()))
def test_compact_store_keeps_layers_the_extractor_accepts(g, case):
    """The sidecar's tar reader read a payload after header-only entries (a symlink with
    a size field), applied global PAX records and failed on an empty PAX size: copy into a
    compact store died with a ValueError traceback (or a SidecarError) on layers that every
    other path accepts, leaving unused objects behind."""
    import hashlib
    import tarfile
    raw = _compact_cases()[case]
    layout = write_image(g.dest / "layout", [raw])
    root = g.dest / "store"
    lamina(root, "config", "set", "keep-blobs", "false")
    r = lamina(root, "copy", f"oci:{layout}:img", "x:1", check=False)
    assert r.returncode == 0, r.stderr
    report = json.loads(lamina(root, "fsck", "--json", check=False).stdout)
    assert report["findings"] == [] and report["checked"]["sidecars"] == 1, report
    archive = g.dest / "x.tar"
    lamina(root, "save", "x:1", "-o", archive)
    with tarfile.open(archive) as t:
        manifest = json.load(t.extractfile("manifest.json"))[0]
        (layer,) = manifest["Layers"]
        rebuilt = t.extractfile(layer).read()
    assert hashlib.sha256(rebuilt).digest() == hashlib.sha256(raw).digest(), "the layer is not bit-exact"
    lamina(root, "unpack", "x:1", g.dest / "out")
    assert (g.dest / "out" / "c").read_bytes() == b"C" * 100


# --- resources: repeating a marker costs no more than the entry itself ---

APPLY_SCRIPT = ("import sys, lamina; lamina.apply_layer(sys.argv[1], sys.argv[2], format=sys.argv[3], "
                "lower_dirs=sys.argv[4:] or None)")


@pytest.mark.parametrize("fmt", ["dir", "overlay"])
@pytest.mark.parametrize("marker", ["opaque", "whiteout-of-own-dir"])
def test_a_repeated_marker_does_not_list_the_directory_again(tmp_path, fmt, marker):
    """Every opaque marker (and every whiteout of a directory the layer wrote into)
    listed and walked the whole directory again, to remove what was not the layer's:
    a layer alternating d/gN and d/.wh..wh..opq took time quadratic in its size
    (4000 pairs: ~40 s a path; 50k pairs: over an hour).  Counted in directory reads
    (getdents64) rather than seconds: once the directory is cleared, all it holds is
    the layer's, and clearing it again changes nothing."""
    import subprocess
    import sys
    from conftest import require_tool
    from layerkit import apply
    require_root()
    strace = require_tool("strace")
    n = 1500
    base = Tar().dir("d")
    for i in range(50):
        base.file(f"d/old{i}", b"o")
    top = Tar()
    for i in range(n):
        top.file(f"d/g{i}", b"x")
        top.opaque("d") if marker == "opaque" else top.whiteout("d")
    base_p, top_p = tmp_path / "base.tar", tmp_path / "top.tar"
    base_p.write_bytes(base.bytes())
    top_p.write_bytes(top.bytes())
    if fmt == "dir":
        dest, lowers = tmp_path / "dest", []
        apply(base_p, dest)
    else:
        dest, lowers = tmp_path / "layer", [tmp_path / "lower"]
        apply(base_p, lowers[0], format="overlay")
        dest.mkdir()
    trace = tmp_path / "trace"
    subprocess.run([strace, "-f", "-qq", "-e", "trace=getdents64", "-o", trace, sys.executable, "-c", APPLY_SCRIPT,
                    top_p, dest, fmt, *lowers], check=True, cwd="/")
    reads = sum(1 for line in open(trace) if "getdents64(" in line)
    assert reads < n // 4, f"{reads} directory reads for {n} markers"  # each one listed d: > 2 n
    names = os.listdir(dest / "d")
    assert len([x for x in names if x.startswith("g")]) == n
    assert not [x for x in names if x.startswith("old") or x.startswith(".wh.")], names
    if fmt == "overlay":
        assert os.getxattr(dest / "d", "trusted.overlay.opaque") == b"y"



def _opens_and_stats(tmp_path, top, lowers):
    """Extract ``top`` (overlay format) over ``lowers`` in a child under strace: (its dir, the
    openat, openat2 and newfstatat calls it made)."""
    import subprocess
    import sys
    from conftest import require_tool
    strace = require_tool("strace")
    top_p, dest, trace = tmp_path / "top.tar", tmp_path / "top", tmp_path / "trace"
    top_p.write_bytes(top.bytes())
    dest.mkdir()
    subprocess.run([strace, "-f", "-qq", "-e", "trace=openat,newfstatat,openat2", "-o", trace, sys.executable, "-c",
                    APPLY_SCRIPT, top_p, dest, "overlay", *lowers], check=True, cwd="/")
    return dest, sum(1 for line in open(trace) if "(" in line)


def test_a_run_of_whiteouts_over_many_layers_costs_no_walk_per_layer(tmp_path):
    """In the overlay format a whiteout is made only if a layer below shows its name, and
    each one walked its directory through every layer below and looked the name up in each:
    50k whiteouts in one directory over 100 layers took 28 s (a pull of such an image, 40 s).
    Counted in syscalls rather than seconds; and the nodes made are exactly the visible names
    (one lower name is hidden by a whiteout further down, one by an opaque directory)."""
    require_root()
    nlayers, n = 30, 1500
    tars = [Tar().dir("d").file(f"d/L{k}", b"%d" % k) for k in range(nlayers)]
    tars[25].whiteout("d/L22")
    tars[20] = Tar().dir("d").opaque("d").file("d/L20", b"20")  # hides L0..L19 below
    lowers = overlay_layers(tmp_path, tars)
    top = Tar().dir("d")
    for k in range(nlayers):
        top.whiteout(f"d/L{k}")
    for i in range(n):
        top.whiteout(f"d/none{i}")
    dest, calls = _opens_and_stats(tmp_path, top, lowers)
    assert calls < 4 * n, f"{calls} opens and stats for {n + nlayers} whiteouts over {nlayers} layers"  # was 34k
    made = sorted(x for x in os.listdir(dest / "d")
                  if stat.S_ISCHR(os.lstat(dest / "d" / x).st_mode) and os.lstat(dest / "d" / x).st_rdev == 0)
    assert made == sorted(f"L{k}" for k in range(20, nlayers) if k != 22), made


def test_whiteouts_in_many_directories_over_many_layers_cost_no_walk_per_layer(tmp_path):
    """Whiteouts each in a directory of its own, and directories the layer implies, which no
    layer below has: each walked its directory through every layer below (5k whiteouts over
    400 layers: 8 s, 5k implied directories: 14 s).  Counted in syscalls."""
    require_root()
    nlayers, n = 20, 800
    lowers = overlay_layers(tmp_path, [Tar().dir("a").file(f"a/x{k}", b"%d" % k) for k in range(nlayers)])
    top = Tar().dir("a")
    for i in range(n):
        top.dir(f"a/q{i}").whiteout(f"a/q{i}/z")
        top.file(f"a/r{i}/f", b"f")  # a/r{i} implied: it too walked every layer (5k over 400: 14 s)
    dest, calls = _opens_and_stats(tmp_path, top, lowers)
    assert calls < 20 * n, f"{calls} opens and stats for {n} whiteouts and implied dirs over {nlayers} layers"  # was 81k
    assert all(os.listdir(dest / "a" / f"q{i}") == [] for i in range(n))
    assert all(os.listdir(dest / "a" / f"r{i}") == ["f"] and os.stat(dest / "a" / f"r{i}").st_mode == 0o40755
               for i in range(n))


def test_whiteouts_over_many_layers_are_made_exactly_where_a_name_shows_below(g):
    """From 8 layers below, a whiteout first asks the names the layers below have in its
    directory's ancestors (each listed once) and skips the walk where none has the directory:
    every path and umoci still agree on whiteouts of visible names, of names and directories
    nothing below has, through a lower symlink, past a lower file on the way, in a lower
    opaque directory, and where this layer replaced a lower directory by a symlink."""
    from treecmp import compare
    layers = [Tar().dir("a").file("a/f", b"f").dir("a/sub").file("a/sub/g", b"g").dir("o").file("o/old", b"o")
              .dir("m", mode=0o750, uid=1234, gid=5678),
              Tar().symlink("s", "a").file("file", b"x").dir("r").file("r/in", b"r"),
              Tar().dir("o").opaque("o").file("o/new", b"n")]
    layers += [Tar().dir(f"p{k}").file(f"p{k}/y", b"%d" % k) for k in range(8)]
    top = Tar().dir("a").whiteout("a/f").dir("a/sub").whiteout("a/sub/g").whiteout("a/nothere")
    for i in range(40):
        top.dir(f"q{i}").whiteout(f"q{i}/z")           # directories nothing below has
        top.whiteout(f"p{i % 8}/y" if i < 8 else f"p{i % 8}/none{i}")
    top.whiteout("s/f")                                 # through the lower symlink s -> a
    top.dir("o").whiteout("o/old").whiteout("o/new")    # old is hidden below by the opaque o
    top.symlink("r", "a").whiteout("r/sub")             # r is now a symlink to a: a/sub shows
    top.file("a/new/deep/f", b"n")                      # implied directories nothing below has
    top.file("m/x", b"m")                               # implied, copied up from below with its metadata
    top.file("a/sub/h", b"h").file("p3/z/w", b"w")
    tree, oracle = agree(g, layers + [top])
    if not isinstance(oracle, Exception):
        assert not compare(tree, oracle, labels=("lamina", "umoci"))


@pytest.mark.parametrize("layers", [
    [Tar().dir("d/sub").file("d/sub/x", b"x"),
     Tar().opaque("d").dir("d/sub").opaque("d").file("d/sub/y", b"y").opaque("d/sub")],
    [Tar().dir("d").file("d/x", b"x"), Tar().opaque("d").whiteout("d").dir("d").opaque("d").file("d/y", b"y")],
    [Tar().dir("a").file("a/x", b"1").dir("b").file("b/y", b"2").symlink("l", "a"),
     Tar().opaque("l").symlink("l", "b").opaque("l").file("l/z", b"3")],
    [Tar().dir("b").file("b/x", b"1").file("c", b"c"), Tar().symlink("r", ".").opaque("r").dir("b").opaque("r")],
], ids=["again-after-own-entries", "again-after-whiteout-and-new-dir", "again-through-a-swapped-symlink",
        "again-at-the-root"])
def test_a_repeated_marker_still_hides_what_it_must(g, layers):
    """Markers repeated around the changes that could make a directory another one (or
    bring lower content back): every path and umoci agree."""
    from treecmp import compare
    tree, oracle = agree(g, layers)
    if not isinstance(oracle, Exception):
        assert not compare(tree, oracle, labels=("lamina", "umoci"))


# --- a deep image: the store's own path in front of it goes past PATH_MAX ---

def _open_deep(root, parts, flags=os.O_RDONLY):
    """An fd of root/parts... walked one directory at a time (the path is too long for one call)."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for p in parts[:-1]:
            nfd = os.open(p, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = nfd
        return os.open(parts[-1], flags | os.O_NOFOLLOW, dir_fd=fd)
    finally:
        os.close(fd)


def test_fsck_of_an_image_deeper_than_path_max_from_the_store(g):
    """A layer path of ~4 KB is within the limits, but the snapshot's path in front of it
    is past PATH_MAX: fsck compared the trees by path strings and died with an
    ENAMETOOLONG traceback.  It must find the store clean, and find damage deep down."""
    parts = ["d" * 250] * 16
    deep = "/".join(parts)
    t = Tar().pax({"path": deep + "/f"}).file("x", b"deep" * 1000)
    t.pax({"path": deep + "/s", "linkpath": "t" * 4000}).symlink("x", "y")
    t.pax({"path": deep + "/x", "SCHILY.xattr.user.k": "v"}).file("x", b"x")
    layout = write_image(g.dest / "layout", [t.bytes(), Tar().pax({"path": deep + "/h"}).file("x", b"h").bytes()])
    root = g.dest / "store"
    lamina(root, "copy", f"oci:{layout}:img", "x:1")
    r = lamina(root, "fsck", "--json", check=False)
    assert r.returncode == 0 and json.loads(r.stdout)["findings"] == [], r.stdout + r.stderr
    snaps = [p for p in (root / "snapshots").iterdir() if not p.name.startswith(".")]
    bottom = next(p for p in snaps if json.load(open(p / "meta.json")).get("parent") is None)
    fd = _open_deep(bottom / "fs", parts + ["x"], os.O_RDONLY)
    try:
        os.setxattr(fd, "user.k", b"changed")
    finally:
        os.close(fd)
    r = lamina(root, "fsck", "--json", check=False)
    findings = json.loads(r.stdout)["findings"]
    bad = [f for f in findings if f["kind"] == "bad-snapshot"]  # (and the file's object: bad-object)
    assert len(bad) == 1 and "Traceback" not in r.stderr, r.stdout + r.stderr
    assert "xattrs differ" in bad[0]["message"] and deep + "/x" in bad[0]["message"]


# --- a sparse file's holes are never written out ---

def test_sparse_file_stays_sparse_on_every_path(g):
    """A layer's sparse file claims a size it does not store (up to Limits.max_sparse_size,
    4 TiB).  The store's copy (materialize) and the overlay format's copy-up of a lower file
    (ahead of a hardlink to it) copied it with copy_file_range from start to end, writing
    every hole out as zeros: a 4 KiB layer made them write 256 MiB here, and terabytes at
    the limit."""
    real = 256 << 20
    big = Tar().pax({"GNU.sparse.major": "0", "GNU.sparse.minor": "1", "GNU.sparse.size": str(real),
                     "GNU.sparse.map": f"{1 << 20},4096,{real - 4096},4096", "GNU.sparse.name": "big"})
    big.file("big.sparse", b"Z" * 8192)
    tree, oracle = agree(g, [big, Tar().hardlink("alias", "big")])
    assert tree.entries["big"].size == real
    if not isinstance(oracle, Exception):
        assert oracle.entries["big"].sha256 == tree.entries["big"].sha256
    allocated = {}
    for dirpath, dirnames, filenames in os.walk(g.dest):
        for n in filenames:
            st = os.lstat(os.path.join(dirpath, n))
            if st.st_size == real:
                allocated[os.path.relpath(os.path.join(dirpath, n), g.dest)] = st.st_blocks * 512
    assert len(allocated) >= 6, allocated
    dense = {p: b for p, b in allocated.items() if b > 4 << 20}
    assert not dense, f"holes written out: {dense}"


# --- round 3: stacks that held on every path, kept as guards ---

def test_a_third_layer_writes_beneath_a_directory_an_upper_layer_replaced_by_a_symlink(g):
    """a/ of layer 0 is a symlink to b in layer 1: layer 2's a/g lands in b (as the mount and
    umoci show), and a/f of layer 0 is gone with the directory."""
    tree, oracle = agree(g, [Tar().dir("a").file("a/f", b"f").dir("b"), Tar().symlink("a", "b"),
                             Tar().file("a/g", b"g")])
    assert sorted(tree.entries) == ["a", "b", "b/g"] and tree.entries["a"].type == "symlink"
    if not isinstance(oracle, Exception):
        assert sorted(oracle.entries) == ["a", "b", "b/g"]


@pytest.mark.parametrize("target", ["/proc/self/root", "/proc/self/cwd/..", "/proc/1/root", "/dev/shm"])
def test_a_symlink_to_a_magic_link_or_host_dir_is_a_dangling_link_inside_the_root(g, target):
    """A lower symlink to /proc/self/root (the host's root to a follower of magic links) is
    a link to nothing inside the image: the upper layer's a/pwned-lamina-test is refused by
    name on every path, never written at /pwned-lamina-test (or in /dev/shm)."""
    refused_everywhere(g, [Tar().symlink("a", target), Tar().file("a/pwned-lamina-test", b"x")],
                       "ExtractError", "'a/pwned-lamina-test'")
    assert not os.path.lexists("/dev/shm/pwned-lamina-test")


def test_an_opaque_marker_with_a_payload_is_an_opaque_marker(g):
    tree, oracle = agree(g, [Tar().dir("d").file("d/a", b"a"),
                             Tar().file("d/.wh..wh..opq", b"a payload no marker has").file("d/b", b"b")])
    assert sorted(tree.entries) == ["d", "d/b"]
    if not isinstance(oracle, Exception):
        assert sorted(oracle.entries) == ["d", "d/b"]


def test_trusted_xattrs_on_symlinks_fifos_and_devices_agree(g):
    """trusted.* may sit on any inode (user.* only on files and directories): every path
    keeps it on the node, and on what a later hardlink to each makes of it."""
    x = [("SCHILY.xattr.trusted.lamina", b"1")]
    base = Tar().pax(x).symlink("s", "t").pax(x).fifo("p").pax(x).chardev("c", 1, 3)
    tree, _ = agree(g, [base, Tar().hardlink("hs", "s").hardlink("hp", "p").hardlink("hc", "c")])
    for name in ("s", "p", "c", "hs", "hp", "hc"):
        assert ("trusted.lamina", b"1") in tuple(tree.entries[name].xattrs), (name, tree.entries[name])


def test_user_xattrs_on_symlinks_fifos_and_devices_are_dropped_on_every_path(g):
    """The kernel takes user.* on files and directories only (EPERM elsewhere).  lamina drops
    such an xattr, says so in the layer's ``skipped`` and goes on, on every path and in what a
    later hardlink copies up; GNU tar drops it too (a warning, exit 0), bsdtar drops it and
    exits 1, umoci refuses the layer (CONFORMANCE.md).  Refusing the layer would fail images
    GNU tar extracts; keeping some other xattr of the node would leave two trees to compare."""
    u, t = ("SCHILY.xattr.user.lamina", b"1"), ("SCHILY.xattr.trusted.lamina", b"2")
    base = (Tar().pax([u, t]).symlink("s", "f").pax([u, t]).fifo("p").pax([u, t]).chardev("c", 1, 3)
            .pax([u]).file("f", b"x"))
    raws = [base.bytes(), Tar().hardlink("hs", "s").hardlink("hp", "p").bytes()]
    tree, oracle = agree(g, raws)
    for name in ("s", "p", "c", "hs", "hp"):
        assert dict(tree.entries[name].xattrs) == {"trusted.lamina": b"2"}, (name, tree.entries[name])
    assert dict(tree.entries["f"].xattrs) == {"user.lamina": b"1"}
    assert isinstance(oracle, Exception) and "operation not permitted" in oracle.stderr, oracle

    import lamina as lamina_api
    stats = lamina_api.unpack(f"oci:{write_image(g.dest / 'lay', raws)}:img", g.dest / "api")
    for name in ("'s'", "'p'", "'c'"):
        assert any(k.startswith(f"{name}: xattr 'user.lamina' not set") for k in stats.layers[0].skipped), \
            stats.layers[0].skipped

    gnu = g.dest / "gnu"
    gnu.mkdir()
    (g.dest / "l.tar").write_bytes(raws[0])
    proc = subprocess.run(["tar", "--xattrs", "--xattrs-include=*", "-xpf", g.dest / "l.tar", "-C", gnu],
                          capture_output=True, text=True)
    assert proc.returncode == 0 and "user.lamina" in proc.stderr, proc
    for name in ("s", "p", "c"):
        assert "user.lamina" not in os.listxattr(gnu / name, follow_symlinks=False)
    assert os.getxattr(gnu / "f", "user.lamina") == b"1"


# --- overlay format: hardlinks to files of the layers below, over many layers ---

def test_hardlinks_to_lower_files_over_many_layers_cost_no_walk_per_layer(tmp_path):
    """A hardlink to a lower file copies it up first, and each one walked the target's directory
    through every layer below and looked the name up in each (3k links to bottom-layer files
    over 400 layers: 3 to 5 s, 1M of them most of an hour; the dir format: 0.02 s).  Counted in
    syscalls: links to files of three directories in turn that every layer has, to files of
    the middle layers, to files each in a directory of its own, and to a file with three names
    below, whose names must stay one inode with the links."""
    require_root()
    nlayers, n, spread = 60, 1200, 300
    bottom = Tar().dir("d0").dir("d1").dir("d2").dir("far/deep")
    for i in range(n):
        bottom.file(f"d{i % 3}/f{i}", b"%d" % i)
    for i in range(spread):
        bottom.file(f"s{i}/g", b"s%d" % i)
    bottom.file("far/deep/m", b"m").hardlink("far/deep/m2", "far/deep/m").hardlink("d0/m3", "far/deep/m")
    tars = [bottom] + [Tar().dir(f"d{k % 3}").file(f"d{k % 3}/x{k}", b"x%d" % k) for k in range(1, nlayers)]
    lowers = overlay_layers(tmp_path, tars)
    top = Tar()
    for i in range(n):
        top.hardlink(f"l{i}", f"d{i % 3}/f{i}")
    for k in range(1, nlayers):
        top.hardlink(f"x{k}", f"d{k % 3}/x{k}")
    for i in range(spread):
        top.hardlink(f"s{i}-g", f"s{i}/g")
    top.hardlink("lm", "far/deep/m")
    dest, calls = _opens_and_stats(tmp_path, top, lowers)
    links = n + nlayers + spread
    assert calls < 20 * links, f"{calls} opens and stats for {links} hardlinks over {nlayers} layers"  # was 162k
    for i in range(n):
        a, b = os.lstat(dest / f"l{i}"), os.lstat(dest / f"d{i % 3}" / f"f{i}")
        assert (a.st_ino, a.st_nlink) == (b.st_ino, 2) and (dest / f"l{i}").read_bytes() == b"%d" % i
    for k in range(1, nlayers):
        assert (dest / f"x{k}").read_bytes() == b"x%d" % k and os.lstat(dest / f"x{k}").st_nlink == 2
    for i in range(spread):
        assert os.lstat(dest / f"s{i}-g").st_ino == os.lstat(dest / f"s{i}" / "g").st_ino
    group = {os.lstat(dest / p).st_ino for p in ("lm", "far/deep/m", "far/deep/m2", "d0/m3")}
    assert len(group) == 1 and os.lstat(dest / "lm").st_nlink == 4



def _hardlink_top(tmp_path, tars, targets):
    """A top layer of hardlinks l0, l1, ... to ``targets``, extracted (overlay format, under
    strace) over the layers of ``tars``: (its dir, the opens and stats it made)."""
    top = Tar()
    for i, target in enumerate(targets):
        top.hardlink(f"l{i}", target)
    return _opens_and_stats(tmp_path, top, overlay_layers(tmp_path, tars))


def test_hardlinks_into_a_directory_every_layer_fills_cost_no_stat_per_layer(tmp_path):
    """A directory too large to list for a few lookups is looked up with a stat in each layer
    that has it; listing it must not wait until the lookups alone pay for it (16 names
    each), or links into a directory each of 400 layers put 30 names in cost a stat per layer
    each (4.5 s for 3k).  Counted in syscalls: 600 links into a directory 40 layers hold 6.6k
    names in."""
    require_root()
    nlayers, n, fill = 40, 600, 150
    tars = [Tar().dir("d")]
    for i in range(n):
        tars[0].file(f"d/f{i}", b"%d" % i)
    for k in range(1, nlayers):
        tars.append(Tar().dir("d"))
        for j in range(fill):
            tars[-1].file(f"d/x{k}-{j}", b"")
    dest, calls = _hardlink_top(tmp_path, tars, [f"d/f{i}" for i in range(n)])
    assert calls < 20 * n, f"{calls} opens and stats for {n} hardlinks into a directory of {nlayers} layers"  # was 56k
    assert all(os.lstat(dest / f"l{i}").st_ino == os.lstat(dest / "d" / f"f{i}").st_ino for i in range(n))


def test_hardlinks_into_directories_only_the_topmost_lower_layer_has_cost_no_open_per_layer(tmp_path):
    """Each directory the layers below merge is resolved once, from its parent's: which layers
    have it was asked of every layer that has the parent, an open in each (3k links to files
    each in a directory of its own that only the topmost of 400 layers has: 4.7 s).  Counted in
    syscalls: the parent's listing says which layers have the directory."""
    require_root()
    nlayers, n = 60, 600
    tars = [Tar().dir(f"e{k}").file(f"e{k}/x", b"%d" % k) for k in range(nlayers - 1)]
    tars.append(Tar())
    for i in range(n):
        tars[-1].file(f"t{i}/f", b"%d" % i)
    dest, calls = _hardlink_top(tmp_path, tars, [f"t{i}/f" for i in range(n)])
    assert calls < 30 * n, f"{calls} opens and stats for {n} hardlinks into directories of the topmost of {nlayers} layers"  # was 49k
    assert all(os.lstat(dest / f"l{i}").st_ino == os.lstat(dest / f"t{i}" / "f").st_ino for i in range(n))

def test_hardlinks_through_a_lower_symlink_cost_no_walk_per_layer(tmp_path):
    """A link whose target is reached through a symlink of a layer below (``lib -> usr/lib``
    of a merged-/usr image) took the walk through every layer below, each link: 3k over 400
    layers took 10 s where links to the same files by their own path took 0.2 s.  The
    symlink is read once and the directory it leads to resolved as the others are.  Counted
    in syscalls, against the same links by the files' own path; and each link is the file."""
    require_root()
    nlayers, n = 60, 600
    tars = [Tar().dir("usr").dir("usr/lib").symlink("lib", "usr/lib").symlink("abs", "/usr/lib")
            .symlink("up", "../../usr")]
    tars += [Tar().dir(f"e{k}").file(f"e{k}/x", b"%d" % k) for k in range(1, nlayers - 1)]
    tars.append(Tar())
    for i in range(n):
        tars[-1].file(f"usr/lib/f{i}", b"%d" % i)
    shapes = ["lib/f{}", "abs/f{}", "up/lib/f{}", "usr/lib/f{}"]
    (tmp_path / "own").mkdir()
    _, own = _hardlink_top(tmp_path / "own", tars, [f"usr/lib/f{i}" for i in range(n)])
    dest, calls = _hardlink_top(tmp_path, tars, [shapes[i % 4].format(i) for i in range(n)])
    assert calls < 2 * own, f"{calls} opens and stats through lower symlinks, {own} by the files' own path"
    assert sorted(os.listdir(dest)) == sorted([f"l{i}" for i in range(n)] + ["usr"])
    assert all(os.lstat(dest / f"l{i}").st_ino == os.lstat(dest / "usr" / "lib" / f"f{i}").st_ino for i in range(n))


def _links(t, name, target, n):
    for i in range(n):
        t.hardlink(name.format(i), target)
    return t


def _link_base():
    return (Tar().dir("a", mode=0o750, uid=7).file("a/f", b"f", mode=0o640, uid=5).hardlink("a/g", "a/f")
            .hardlink("c", "a/f").dir("b", mode=0o711, uid=3).file("b/x", b"x").file("b/y", b"y")
            .dir("b/sub").file("b/sub/z", b"z").symlink("s", "b").symlink("up", "../../..").symlink("abs", "/b"))


_LINK_CASES = {
    # (layer just below the top, the top layer)
    "bottom-and-middle": (Tar().dir("m").file("m/q", b"q").file("b/w", b"w"),
                          Tar().hardlink("L1", "b/x").hardlink("L2", "m/q").hardlink("L3", "b/w")
                          .hardlink("L4", "b/sub/z").hardlink("L5", "a/f").hardlink("L6", "b/sub/z")),
    "many-to-one": (Tar().file("m", b"m"),
                    _links(Tar().dir("k").hardlink("b/x2", "b/x").hardlink("b/sub/x3", "b/x"), "k/n{}", "b/x", 20)),
    "spread": (Tar().dir("m").file("m/q", b"q"),
               Tar().hardlink("L1", "b/x").hardlink("L2", "m/q").hardlink("L3", "b/sub/z")
               .hardlink("L4", "a/g").hardlink("L5", "b/y").hardlink("L6", "m/q").hardlink("L7", "b/sub/z")),
    "whited-out-below": (Tar().whiteout("b/x"), Tar().hardlink("L", "b/x")),
    "replaced-below": (Tar().file("b/x", b"new"), Tar().hardlink("L", "b/x")),
    "dir-replaced-below": (Tar().file("b", b"file"), Tar().hardlink("L", "b/y")),
    "dir-whited-out-below": (Tar().whiteout("b").dir("b").file("b/n", b"n"), Tar().hardlink("L", "b/n")),
    "dir-whited-out-below-hides": (Tar().whiteout("b").dir("b").file("b/n", b"n"), Tar().hardlink("L", "b/y")),
    "opaque-below": (Tar().dir("b").opaque("b").file("b/n", b"n"), Tar().hardlink("L", "b/n")),
    "opaque-below-hides": (Tar().dir("b").opaque("b").file("b/n", b"n"), Tar().hardlink("L", "b/sub/z")),
    "through-lower-symlink": (Tar().file("m", b"m"), Tar().hardlink("L", "s/x").hardlink("L2", "s/sub/z")),
    "through-escaping-symlinks": (Tar().file("m", b"m"), Tar().hardlink("L", "up/b/x").hardlink("L2", "abs/y")),
    "middle-symlink-replaces-dir": (Tar().symlink("b", "a"), Tar().hardlink("L", "b/f")),
    # links through lower symlinks the directory they lead to resolves without the walk
    "through-symlink-chain": (Tar().symlink("s2", "s/sub").symlink("s3", "abs/../s"),
                              Tar().hardlink("L", "s2/z").hardlink("L2", "s3/x").hardlink("L3", "s3/sub/z")),
    "through-dotdot-symlink": (Tar().dir("q").symlink("q/back", "../b/sub"), Tar().hardlink("L", "q/back/z")),
    "through-deeper-symlink-to-group": (Tar().symlink("b/sub/in", "../../a"), Tar().hardlink("L", "b/sub/in/g")),
    "through-symlink-replaced-below": (Tar().symlink("s", "a"), Tar().hardlink("L", "s/f").hardlink("L2", "s/g")),
    "through-symlink-to-dir-whited-out": (Tar().whiteout("b/sub"), Tar().hardlink("L", "s/sub/z")),
    "through-symlink-to-opaque-dir": (Tar().dir("b").opaque("b").file("b/n", b"n"), Tar().hardlink("L", "s/n")),
    "through-symlink-to-hidden-in-opaque": (Tar().dir("b").opaque("b").file("b/n", b"n"), Tar().hardlink("L", "s/x")),
    "through-symlink-to-file": (Tar().file("m", b"m").symlink("sf", "m"), Tar().hardlink("L", "sf/x")),
    "through-symlink-loop": (Tar().symlink("o1", "o2").symlink("o2", "o1/b"), Tar().hardlink("L", "o1/x")),
    "through-dangling-symlink": (Tar().symlink("dg", "nowhere"), Tar().hardlink("L", "dg/x")),
    "through-symlink-own-dir-there": (Tar().file("m", b"m"), Tar().dir("b", mode=0o700).file("b/own", b"o")
                                      .hardlink("L", "s/y").hardlink("L2", "s/sub/z")),
    "through-symlink-own-opaque-there": (Tar().file("m", b"m"), Tar().dir("b").opaque("b").hardlink("L", "s/x")),
    "through-symlink-own-whiteout-there": (Tar().file("m", b"m"), Tar().whiteout("b/x").hardlink("L", "s/x")),
    "through-symlink-own-dir-whiteout-there": (Tar().file("m", b"m"), Tar().whiteout("b").hardlink("L", "s/x")),
    "through-symlink-own-symlink-over-it": (Tar().file("m", b"m"), Tar().symlink("s", "a").hardlink("L", "s/f")),
    "through-symlink-own-file-over-it": (Tar().file("m", b"m"), Tar().file("s", b"f").hardlink("L", "s/x")),
    "through-symlink-own-dir-over-it": (Tar().file("m", b"m"), Tar().dir("s").file("s/x", b"o").hardlink("L", "s/x")),
    "through-symlink-own-symlink-on-the-way": (Tar().file("m", b"m"), Tar().symlink("b/sub", "../a")
                                               .hardlink("L", "s/sub/g")),
    "own-whiteout-first": (Tar().file("m", b"m"), Tar().whiteout("b/x").hardlink("L", "b/x")),
    "own-dir-whiteout-first": (Tar().file("m", b"m"), Tar().whiteout("b").hardlink("L", "b/x")),
    "own-opaque-first": (Tar().file("m", b"m"), Tar().dir("b").opaque("b").hardlink("L", "b/x")),
    "own-symlink-first": (Tar().dir("m").file("m/x", b"mx"), Tar().symlink("b", "m").hardlink("L", "b/x")),
    "own-dir-first": (Tar().file("m", b"m"), Tar().dir("b", mode=0o700).file("b/own", b"o").hardlink("L", "b/y")
                      .hardlink("b/sub/L2", "b/sub/z")),
    "group-partly-hidden": (Tar().whiteout("c").file("a/g", b"other"), Tar().hardlink("L", "a/f")),
    "group-dir-opaque": (Tar().dir("a").opaque("a").file("a/f", b"newf"), Tar().hardlink("L", "c")),
    "group-own-name-first": (Tar().file("m", b"m"), Tar().file("c", b"mine").hardlink("L", "a/f")),
    "group-other-dir-gone": (Tar().whiteout("a"), Tar().hardlink("L", "c")),
    "link-then-whiteout": (Tar().file("m", b"m"), Tar().hardlink("L", "b/x").whiteout("b/x").hardlink("L2", "b/y")),
}


@pytest.mark.parametrize("case", sorted(_LINK_CASES))
def test_hardlinks_to_lower_files_over_many_layers_agree(g, case):
    """From 8 layers below, a hardlink to a lower file finds it in the merged listing of its
    directory below (each directory resolved once from its parent's) instead of walking every
    layer: every path and umoci still agree on links to files of the bottom and middle layers,
    many links to one file, links to files a layer above whited out or replaced (or their
    directory, or hid it by an opaque one), links through lower symlinks (also ones that
    would leave the root), through a symlink or whiteout or opaque dir of the layer itself,
    and to a file with other names below that a layer above hid, replaced or took away."""
    from treecmp import compare
    middle, top = _LINK_CASES[case]
    layers = [_link_base()] + [Tar().dir(f"p{k}").file(f"p{k}/y", b"%d" % k).file(f"b/p{k}", b"p")
                               for k in range(8)] + [middle, top]
    tree, oracle = agree(g, layers)
    if tree is not None and not isinstance(oracle, Exception):
        assert not compare(tree, oracle, labels=("lamina", "umoci"))
    if case in ("bottom-and-middle", "spread", "many-to-one"):
        assert tree is not None


def test_whiteouts_over_more_layers_than_the_run_cache_holds_cost_no_walk_per_layer(tmp_path):
    """Over more than 512 layers below (a raised max_layers) the whiteout run cache, which holds
    the directory's fd in each layer, is not used, and each whiteout walked its directory
    through every layer below and looked its name up in each (5k over 600 layers: 9.4 s).
    Counted in syscalls; and the nodes made are exactly the names a layer below shows."""
    require_root()
    nlayers, n = 520, 600
    bottom = Tar().dir("d")
    for i in range(0, n, 2):
        bottom.file(f"d/f{i}", b"%d" % i)
    tars = [bottom] + [Tar().dir(f"e{k}").file(f"e{k}/x", b"%d" % k) for k in range(1, nlayers)]
    tars[-1].whiteout("d/f0")  # hidden below already: no node
    lowers = overlay_layers(tmp_path, tars)
    top = Tar().dir("d")
    for i in range(n):
        top.whiteout(f"d/f{i}")
    dest, calls = _opens_and_stats(tmp_path, top, lowers)
    assert calls < 10 * n + 2 * nlayers, f"{calls} opens and stats for {n} whiteouts over {nlayers} layers"
    made = sorted(os.listdir(dest / "d"))
    assert made == sorted(f"f{i}" for i in range(2, n, 2)), made
    assert all(os.lstat(dest / "d" / x).st_rdev == 0 and stat.S_ISCHR(os.lstat(dest / "d" / x).st_mode) for x in made)
