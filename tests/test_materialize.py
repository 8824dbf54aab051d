"""Materializing images from the store: flat copies, --link, overlay mounts, OCI runtime bundles.

Oracles: ``umoci raw unpack`` / ``umoci unpack`` of the very same OCI layout (trees compared with
treecmp, including directory mtimes and hardlink groups) and the kernel's overlayfs.
"""
from __future__ import annotations

import errno
import json
import os
import stat

import pytest

import ocibuild
from conftest import require_root, require_tool, run
from treecmp import assert_same, compare, snapshot
from verbkit import base_and_app, fails, load_layout, ok

MTIME = 1_650_000_000


def _store(tmp_path):
    from lamina.store import Store
    return Store(tmp_path / "root")


def _setattrs(path, mode=None, uid=0, gid=0, mtime=MTIME):
    os.lchown(path, uid, gid)
    if mode is not None and not os.path.islink(path):
        os.chmod(path, mode)
    os.utime(path, (mtime, mtime), follow_symlinks=False)


@pytest.fixture(scope="module")
def rich(tmp_path_factory):
    """An umoci-built 3-layer image with every kind of entry, and its ``umoci raw unpack`` (the oracle)."""
    require_root()
    require_tool("umoci")
    tmp = tmp_path_factory.mktemp("rich")
    layout, bundle = tmp / "layout", tmp / "bundle"
    run("umoci", "init", "--layout", layout)
    run("umoci", "new", "--image", f"{layout}:rich")
    run("umoci", "unpack", "--image", f"{layout}:rich", bundle)
    r = bundle / "rootfs"
    # layer 1: every entry type and attribute
    for d in ("etc", "usr/bin", "usr/lib", "tmp", "var/lib/app", "data", "gone/sub", "dir2file", "opaque/old"):
        (r / d).mkdir(parents=True, exist_ok=True)
    (r / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001:app:/app:/bin/sh\n")
    (r / "etc/group").write_text("root:x:0:\napp:x:1001:\nstaff:x:50:app,other\nwheel:x:10:app\n")
    (r / "usr/bin/tool").write_bytes(b"\x7fELF" + os.urandom(3000))
    (r / "usr/lib/big.so").write_bytes(os.urandom(3 << 20))  # copied on a worker thread (> 256 KiB)
    (r / "usr/lib/empty").write_bytes(b"")
    (r / "usr/bin/a").write_bytes(b"hardlinked\n")
    os.link(r / "usr/bin/a", r / "usr/bin/b")
    os.link(r / "usr/bin/a", r / "usr/lib/c")
    os.symlink("tool", r / "usr/bin/link")
    os.symlink("/etc/passwd", r / "usr/bin/abs-link")
    os.symlink("../nowhere", r / "usr/bin/dangling")
    os.mknod(r / "etc/null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.mknod(r / "etc/loop", 0o660 | stat.S_IFBLK, os.makedev(7, 0))
    os.mkfifo(r / "etc/fifo", 0o640)
    (r / "etc/xattr").write_bytes(b"attrs\n")
    os.setxattr(r / "etc/xattr", "user.lamina", b"value")
    os.setxattr(r / "etc/xattr", "trusted.lamina", b"\x00\x01binary")
    os.setxattr(r / "var/lib/app", "user.dirattr", b"d")
    (r / "gone/sub/file").write_text("to be deleted\n")
    (r / "dir2file/inner").write_text("x\n")
    (r / "file2dir").write_text("becomes a dir\n")
    (r / "opaque/old/f").write_text("old\n")
    (r / "data/owned").write_text("owned\n")
    _setattrs(r / "data/owned", 0o640, 1234, 5678)
    _setattrs(r / "data", 0o700, 1000, 1001)
    _setattrs(r / "tmp", 0o1777)
    _setattrs(r / "usr/bin/tool", 0o4755)
    _setattrs(r / "usr/bin/link")
    for p in ("etc", "usr", "usr/bin", "usr/lib", "var", "var/lib", "var/lib/app"):
        _setattrs(r / p, 0o755, mtime=MTIME + 5)
    run("umoci", "repack", "--image", f"{layout}:rich", bundle)
    # layer 2: whiteouts, type changes, a broken hardlink group, new files in existing dirs
    import shutil
    shutil.rmtree(r / "gone")
    shutil.rmtree(r / "dir2file")
    (r / "dir2file").write_text("now a file\n")
    (r / "file2dir").unlink()
    (r / "file2dir").mkdir()
    (r / "file2dir/child").write_text("child\n")
    (r / "usr/bin/b").unlink()
    (r / "usr/bin/b").write_text("b replaced, no longer linked\n")
    (r / "etc/new.conf").write_text("added in layer 2\n")
    os.chmod(r / "etc", 0o750)
    run("umoci", "repack", "--image", f"{layout}:rich", bundle)
    # layer 3: a directory emptied and refilled, a chown, a symlink replacing a file
    shutil.rmtree(r / "opaque/old")
    (r / "opaque/old").mkdir()
    (r / "opaque/old/new").write_text("new\n")
    os.chown(r / "usr/lib/empty", 42, 43)
    (r / "usr/lib/big.so").unlink()
    os.symlink("empty", r / "usr/lib/big.so")
    run("umoci", "repack", "--image", f"{layout}:rich", bundle)
    oracle = tmp / "umoci-raw"
    run("umoci", "raw", "unpack", "--image", f"{layout}:rich", oracle)
    return layout, oracle


def _tree(path):
    return snapshot(path, include_root=True, dir_mtime=True)


def test_unpack_from_store_equals_umoci(tmp_path, rich):
    layout, oracle = rich
    store = _store(tmp_path)
    load_layout(store, layout, "rich", "rich:1")
    dest = tmp_path / "dest"
    ok(store.root, "unpack", "rich:1", dest)
    assert_same(_tree(oracle), _tree(dest), labels=("umoci", "lamina copy"))
    st = os.stat(dest / "usr/bin/tool")
    assert st.st_mode & 0o7777 == 0o4755, "setuid survives the copy (chmod after chown)"
    assert os.getxattr(dest / "etc/xattr", "trusted.lamina") == b"\x00\x01binary"
    assert not any(n.startswith("trusted.overlay.") for n in os.listxattr(dest / "opaque/old"))


def test_link_mode_equals_umoci_and_shares_inodes(tmp_path, rich):
    layout, oracle = rich
    store = _store(tmp_path)
    image = load_layout(store, layout, "rich", "rich:1")
    dest = tmp_path / "dest"
    out = ok(store.root, "unpack", "--link", "rich:1", dest)
    assert "hardlink" in out
    assert_same(_tree(oracle), _tree(dest), labels=("umoci", "lamina --link"))
    top = store.paths.snapshot(image.chain_ids[-1]) / "fs"
    assert os.stat(dest / "opaque/old/new").st_ino == os.stat(top / "opaque/old/new").st_ino
    # directories are private: adding or removing entries in DEST leaves the snapshot alone
    (dest / "opaque/old/extra").write_text("mine\n")
    os.unlink(dest / "opaque/old/new")
    assert not (top / "opaque/old/extra").exists() and (top / "opaque/old/new").exists()
    # removing the image from the store does not take the files away from DEST
    ok(store.root, "rmi", "rich:1")
    assert not top.exists()
    assert (dest / "usr/bin/a").read_bytes() == b"hardlinked\n" and os.stat(dest / "usr/bin/a").st_nlink == 2


def test_dest_is_independent_of_the_store(tmp_path, rich):
    layout, _ = rich
    store = _store(tmp_path)
    image = load_layout(store, layout, "rich", "rich:1")
    snaps = [store.paths.snapshot(c) / "fs" for c in image.chain_ids]
    before = [_tree(s) for s in snaps]
    dest = tmp_path / "dest"
    ok(store.root, "unpack", "rich:1", dest)
    # change everything a copy could share with the store
    with open(dest / "usr/bin/a", "r+b") as f:
        f.write(b"CHANGED")
    with open(dest / "etc/passwd", "ab") as f:
        f.write(b"evil:x:0:0::/:/bin/sh\n")
    os.chmod(dest / "usr/bin/tool", 0o700)
    os.chown(dest / "etc/xattr", 7, 7)
    os.setxattr(dest / "etc/xattr", "user.lamina", b"changed")
    os.utime(dest / "etc/os-release" if (dest / "etc/os-release").exists() else dest / "etc/group", (1, 1))
    os.unlink(dest / "usr/lib/c")
    after = [_tree(s) for s in snaps]
    for s, b, a in zip(snaps, before, after):
        assert not compare(b, a), f"snapshot {s} changed when DEST was modified:\n{compare(b, a)}"
    again = tmp_path / "again"
    ok(store.root, "unpack", "rich:1", again)
    assert (again / "usr/bin/a").read_bytes() == b"hardlinked\n"


def _opaque_layout(tmp_path):
    """Hand-made layers with what umoci never writes: opaque whiteouts, implicit parents, whiteout-then-recreate."""
    lay = ocibuild.Layout(tmp_path / "handmade")
    l0 = {"a/": None, "a/keep": b"keep", "a/sub/": None, "a/sub/deep": b"deep", "b/": None, "b/x": b"x",
          "c/": None, "c/file": b"c", "d": b"file d", "e/": None, "e/f/": None, "e/f/g": b"g", "h/": None,
          "h/hl": b"hard"}
    l1 = {"a/.wh..wh..opq": b"", "a/new": b"new in 1", "b/.wh.x": b"", "b/y": b"y", ".wh.c": b"",
          "d/": None, "d/inside": b"d became a dir", "e/f/more": b"implicit parents e and e/f",
          "zz/deep/er/file": b"implicit chain"}
    l2 = {"c/": None, "c/again": b"c is back", "a/sub/": None, "a/sub/fresh": b"after opaque",
          "b/.wh..wh..opq": b"", ".wh.d": b"", "d": b"file again"}
    desc = lay.image([l0, l1, l2])
    lay.add(desc, "handmade")
    return lay.root


def test_opaque_dirs_and_whiteouts_equal_umoci(tmp_path):
    require_root()
    require_tool("umoci")
    layout = _opaque_layout(tmp_path)
    store = _store(tmp_path)
    load_layout(store, layout, "handmade", "hand")
    oracle = tmp_path / "oracle"
    run("umoci", "raw", "unpack", "--image", f"{layout}:handmade", oracle)
    for link in (False, True):
        dest = tmp_path / f"dest-{link}"
        ok(store.root, "unpack", *(["--link"] if link else []), "hand", dest)
        # umoci invents implicit parents with its own times: compare dir mtimes only where the tar had them
        assert_same(snapshot(oracle, include_root=True), snapshot(dest, include_root=True),
                    labels=("umoci", f"lamina link={link}"))
        assert (dest / "a/new").exists() and not (dest / "a/keep").exists(), "opaque a/ hides layer 0"
        assert sorted(os.listdir(dest / "a/sub")) == ["fresh"]
        assert sorted(os.listdir(dest / "b")) == []
        assert (dest / "d").read_bytes() == b"file again"


def test_unpack_errors_leave_nothing(tmp_path, rich):
    layout, _ = rich
    store = _store(tmp_path)
    load_layout(store, layout, "rich", "rich:1")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "mine").write_text("keep me")
    out, err = fails(store.root, "unpack", "rich:1", busy)
    assert "not empty" in err
    assert os.listdir(busy) == ["mine"]
    out, err = fails(store.root, "unpack", "nosuch:tag", tmp_path / "d2")
    assert "no such image" in err.lower() and not (tmp_path / "d2").exists()
    assert not [p for p in os.listdir(tmp_path) if ".lamina-tmp-" in p]
    out, err = fails(store.root, "unpack", "--format", "overlay", "rich:1", tmp_path / "d3")
    assert "lamina mount" in err
    # the foundation path is untouched: a transport source still unpacks from the layout itself
    ok(store.root, "unpack", f"oci:{layout}:rich", tmp_path / "from-layout")
    assert (tmp_path / "from-layout/usr/bin/tool").exists()


@pytest.mark.parametrize("verb", [["unpack"], ["unpack", "--link"], ["unpack", "--bundle"], ["mount"]],
                         ids=["unpack", "link", "bundle", "mount"])
@pytest.mark.parametrize("inside", ["snapshots/mine", "objects/stage/x", "blobs/sha256/mine", "mine",
                                    "through-a-symlink/mine", "through-a-bind-mount/mine",
                                    "through-a-bind-mount/snapshots/mine", "through-a-bind-of-snapshots/mine",
                                    "through-a-bind-mount/new/parents/mine"])
def test_a_destination_inside_the_store_is_refused(tmp_path, verb, inside):
    """gc, prune and fsck --repair own every name in the store: a tree unpacked into
    snapshots/ or objects/ was taken as debris by the next fsck --repair (the user's DEST
    removed, 'not a snapshot', 'not an object'), one in objects/stage/ made the repair fail
    ('Is a directory'), and a mount there would cover the store's own files.  Refused by
    name before anything is made; the store checks clean.  The check went by path: the
    store reached through a bind mount of it (or of its snapshots/) was let in."""
    if verb == ["mount"] or "bind" in inside:
        require_root()
    bound = []
    try:
        _inside_the_store(tmp_path, verb, inside, bound)
    finally:
        for b in reversed(bound):
            run("umount", b)


def _inside_the_store(tmp_path, verb, inside, bound):
    from everypath import write_image
    from tarbuild import Tar
    store = _store(tmp_path)
    layout = write_image(tmp_path / "layout", [Tar().dir("etc").file("etc/f", b"f\n").bytes()])
    load_layout(store, layout, "img", "img:1")
    os.symlink(store.root / "snapshots", tmp_path / "through-a-symlink")
    for name, what in (("through-a-bind-mount", store.root), ("through-a-bind-of-snapshots", store.root / "snapshots")):
        if inside.startswith(name + "/"):
            (tmp_path / name).mkdir()
            run("mount", "--bind", what, tmp_path / name)
            bound.append(tmp_path / name)
    dest = (tmp_path / inside) if inside.startswith("through-") else (store.root / inside)
    before = sorted(str(p.relative_to(store.root)) for p in store.root.rglob("*"))
    try:
        out, err = fails(store.root, *verb, "img:1", dest)
    finally:
        if os.path.ismount(dest):  # what the test saw fail: not left mounted
            run("umount", dest)
    assert "inside the store" in err and (str(dest) in err or os.path.realpath(dest) in err), err
    assert sorted(str(p.relative_to(store.root)) for p in store.root.rglob("*")) == before
    assert "0 errors, 0 warnings" in ok(store.root, "fsck")


def test_link_refuses_another_filesystem(tmp_path, rich):
    layout, _ = rich
    if os.stat(tmp_path).st_dev == os.stat("/dev/shm").st_dev:
        pytest.skip("tmp_path is on /dev/shm")
    store = _store(tmp_path)
    load_layout(store, layout, "rich", "rich:1")
    import tempfile
    other = tempfile.mkdtemp(dir="/dev/shm")
    try:
        out, err = fails(store.root, "unpack", "--link", "rich:1", os.path.join(other, "d"))
        assert "filesystem" in err and not os.path.exists(os.path.join(other, "d"))
    finally:
        import shutil
        shutil.rmtree(other)


# --- overlay mounts -------------------------------------------------------------------------------------

def _mounted(path):
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == os.fspath(path) for line in f)


def test_mount_merged_view_equals_flat_unpack(tmp_path, rich):
    layout, oracle = rich
    store = _store(tmp_path)
    load_layout(store, layout, "rich", "rich:1")
    flat = tmp_path / "flat"
    ok(store.root, "unpack", "rich:1", flat)
    mnt = tmp_path / "mnt"
    out = ok(store.root, "mount", "rich:1", mnt)
    try:
        assert out.strip() == str(mnt)
        assert _mounted(mnt)
        assert_same(_tree(flat), _tree(mnt), labels=("flat unpack", "overlay mount"))
        assert_same(_tree(oracle), _tree(mnt), labels=("umoci", "overlay mount"))
        with pytest.raises(OSError) as e:
            (mnt / "newfile").write_text("x")
        assert e.value.errno == errno.EROFS
        listing = ok(store.root, "mount")
        assert str(mnt) in listing and "rich:1" in listing and " ro " in listing
        fails(store.root, "mount", "rich:1", mnt)  # already mounted there
    finally:
        ok(store.root, "umount", mnt)
    assert not _mounted(mnt)
    assert ok(store.root, "mount").strip().splitlines()[1:] == []
    assert store.holds() == {}


def test_rw_mount_writes_to_upper_and_umount_cleans(tmp_path, rich):
    layout, _ = rich
    store = _store(tmp_path)
    image = load_layout(store, layout, "rich", "rich:1")
    snaps = [store.paths.snapshot(c) / "fs" for c in image.chain_ids]
    before = [_tree(s) for s in snaps]
    mnt = tmp_path / "mnt"
    ok(store.root, "mount", "--rw", "rich:1", mnt)
    try:
        (mnt / "etc/passwd").write_text("rewritten\n")
        (mnt / "created").write_text("new\n")
        os.unlink(mnt / "usr/bin/tool")
        assert (mnt / "created").read_text() == "new\n"
        records = os.listdir(store.paths.meta / "mounts")
        assert any(r.endswith(".json") for r in records)
    finally:
        ok(store.root, "umount", mnt)
    for s, b in zip(snaps, before):
        assert not compare(b, _tree(s)), f"a rw mount changed snapshot {s}"
    assert [p for p in os.listdir(store.paths.meta / "mounts")] == []
    assert not (mnt / "created").exists()
    out, err = fails(store.root, "umount", mnt)
    assert "not a lamina mount" in err


# The CLI with lamina.store.mounts._kernel_mount made to SIGKILL the process: a mount killed
# once its record (and hold) is written, before mount(2).
_KILLED_BEFORE_MOUNT2 = """
import os, signal, sys
import lamina.store.mounts as m
m._kernel_mount = lambda *a, **kw: os.kill(os.getpid(), signal.SIGKILL)
from lamina.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("rw", [False, True], ids=["ro", "rw"])
def test_a_mount_killed_before_mount2_is_made_by_the_next_mount(tmp_path, rich, rw):
    """``lamina mount`` killed between its record and mount(2): the record said TARGET was a
    lamina mount, so the same mount run again failed ('already a lamina mount (lamina umount
    first)') for a TARGET with nothing mounted on it.  A record whose mount is gone and whose
    upper dir holds no writes keeps nothing: the next mount to TARGET takes its place."""
    import subprocess
    import sys
    layout, _ = rich
    store = _store(tmp_path)
    load_layout(store, layout, "rich", "rich:1")
    mnt, rw_flag = tmp_path / "mnt", ["--rw"] if rw else []
    proc = subprocess.run([sys.executable, "-c", _KILLED_BEFORE_MOUNT2, "--root", store.root, "mount", *rw_flag,
                           "rich:1", mnt], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr
    assert not _mounted(mnt) and store.holds() != {}
    ok(store.root, "mount", *rw_flag, "rich:1", mnt)
    try:
        assert _mounted(mnt) and (mnt / "etc/passwd").exists()
        assert len(ok(store.root, "mount").strip().splitlines()[1:]) == 1
    finally:
        ok(store.root, "umount", mnt)
    assert store.holds() == {} and os.listdir(store.paths.meta / "mounts") == []
    ok(store.root, "rmi", "rich:1")
    ok(store.root, "fsck")


def test_a_rw_mount_gone_with_its_writes_is_kept_for_umount(tmp_path, rich):
    """The other side: a --rw mount whose kernel mount went (a reboot) with writes in its upper
    dir is still a lamina mount, which a new mount to TARGET must not take over."""
    layout, _ = rich
    store = _store(tmp_path)
    load_layout(store, layout, "rich", "rich:1")
    mnt = tmp_path / "mnt"
    ok(store.root, "mount", "--rw", "rich:1", mnt)
    (mnt / "created").write_text("new\n")
    run("umount", mnt)
    _, err = fails(store.root, "mount", "--rw", "rich:1", mnt)
    assert "already a lamina mount" in err, err
    ok(store.root, "umount", mnt)
    assert store.holds() == {}


def test_mount_one_layer_and_many_layers(tmp_path):
    """One layer needs a padding lower dir; 70 layers under a long root exceed mount(2)'s one page of options."""
    require_root()
    lay = ocibuild.Layout(tmp_path / "layout")
    lay.add(lay.image([{"only": b"one layer"}]), "one")
    layers = [{f"l{i:02d}": f"layer {i}".encode(), "shared": f"top is {i}".encode()} for i in range(70)]
    lay.add(lay.image(layers), "many")
    from lamina.store import Store
    store = Store(tmp_path / ("r" * 100) / "root")
    load_layout(store, lay.root, "one", "one")
    image = load_layout(store, lay.root, "many", "many")
    opts = ":".join(str(store.paths.snapshot(c) / "fs") for c in image.chain_ids)
    assert len(opts) > 4096, "the test must exceed the legacy option size"
    for name, check in (("one", lambda m: (m / "only").read_bytes() == b"one layer"),
                        ("many", lambda m: (m / "shared").read_bytes() == b"top is 69" and len(os.listdir(m)) == 71)):
        mnt = tmp_path / f"mnt-{name}"
        ok(store.root, "mount", name, mnt)
        try:
            assert check(mnt)
        finally:
            ok(store.root, "umount", mnt)


# --- bundles ----------------------------------------------------------------------------------------------

def _umoci_image_with_config(tmp_path):
    require_tool("umoci")
    layout = tmp_path / "cfg-layout"
    bundle = tmp_path / "cfg-bundle"
    run("umoci", "init", "--layout", layout)
    run("umoci", "new", "--image", f"{layout}:cfg")
    run("umoci", "unpack", "--image", f"{layout}:cfg", bundle)
    r = bundle / "rootfs"
    (r / "etc").mkdir()
    (r / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\nweb:x:33:44:web:/srv:/bin/sh\n")
    (r / "etc/group").write_text("root:x:0:\nwww:x:44:\nextra:x:99:web\n")
    (r / "srv").mkdir()
    run("umoci", "repack", "--image", f"{layout}:cfg", bundle)
    run("umoci", "config", "--image", f"{layout}:cfg", "--config.env", "FOO=bar", "--config.env",
        "PATH=/opt/bin:/usr/bin", "--config.entrypoint", "/bin/entry", "--config.cmd", "serve", "--config.cmd",
        "--port=80", "--config.workingdir", "/srv", "--config.user", "web", "--config.exposedports", "80/tcp",
        "--config.volume", "/data", "--config.label", "team=store", "--config.stopsignal", "SIGQUIT")
    return layout


def test_bundle_config_matches_umoci(tmp_path):
    require_root()
    layout = _umoci_image_with_config(tmp_path)
    store = _store(tmp_path)
    load_layout(store, layout, "cfg", "cfg")
    ours = tmp_path / "ours"
    ok(store.root, "unpack", "--bundle", "cfg", ours)
    theirs = tmp_path / "theirs"
    run("umoci", "unpack", "--image", f"{layout}:cfg", theirs)
    mine = json.loads((ours / "config.json").read_text())
    umoci = json.loads((theirs / "config.json").read_text())
    assert set(mine) == set(umoci)
    assert set(mine["process"]) == set(umoci["process"])
    assert set(mine["linux"]) == set(umoci["linux"])
    assert [m["destination"] for m in mine["mounts"]] == [m["destination"] for m in umoci["mounts"]]
    for key in ("args", "cwd", "user", "env", "terminal", "capabilities", "rlimits", "noNewPrivileges"):
        assert mine["process"][key] == umoci["process"][key], key
    assert mine["process"]["args"] == ["/bin/entry", "serve", "--port=80"]
    assert mine["process"]["user"] == {"uid": 33, "gid": 44, "additionalGids": [99]}
    assert "FOO=bar" in mine["process"]["env"] and "PATH=/opt/bin:/usr/bin" in mine["process"]["env"]
    assert mine["process"]["cwd"] == "/srv"
    for key in ("org.opencontainers.image.exposedPorts", "org.opencontainers.image.stopSignal", "team",
                "org.opencontainers.image.os", "org.opencontainers.image.architecture"):
        assert mine["annotations"][key] == umoci["annotations"][key], key
    assert mine["linux"]["namespaces"] == umoci["linux"]["namespaces"]
    assert_same(snapshot(theirs / "rootfs", include_root=True), snapshot(ours / "rootfs", include_root=True),
                labels=("umoci unpack", "lamina --bundle"))


def test_bundle_counts_as_in_use_until_deleted(tmp_path):
    layout = tmp_path / "layout"
    base_and_app(layout)
    store = _store(tmp_path)
    load_layout(store, layout, "app", "app")
    load_layout(store, layout, "base", "base")
    bundle = tmp_path / "bundle"
    ok(store.root, "unpack", "--bundle", "app", bundle)
    cfg = json.loads((bundle / "config.json").read_text())
    assert cfg["process"]["args"] == ["/bin/sh", "-c", "python3", "/app/main.py"]
    assert cfg["process"]["cwd"] == "/app" and cfg["process"]["user"] == {"uid": 1000, "gid": 1000}
    assert "APP_MODE=prod" in cfg["process"]["env"]
    assert (bundle / "rootfs/app/main.py").exists()
    out = ok(store.root, "image", "prune", "-a", "-f")
    assert "base" in out and "app" not in out.replace("Deleted Images", "")
    assert [i.refs[0].familiar() for i in store.images()] == ["app:latest"]
    rc_out = ok(store.root, "images", "--format", "{{.Repository}} {{.Containers}}")
    assert rc_out.strip() == "app 1"
    import shutil
    shutil.rmtree(bundle)
    out = ok(store.root, "image", "prune", "-a", "-f")
    assert "untagged: app:latest" in out
    assert store.images() == [] and store.holds() == {}
    assert os.listdir(store.paths.snapshots) == [] and os.listdir(store.paths.blobs) == []
