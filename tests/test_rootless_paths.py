"""Hostile and odd layers unpacked by an unprivileged user, on every path it has.

lamina run as nobody (no mount: overlayfs needs root) turns an image into a tree
by ``unpack`` (dir format), ``unpack --format overlay``, and a store of its own
(copy, then a flatten by copy or --link); the store must then check clean (fsck)
and give everything back (rmi, prune).  Every path must give the same tree, touch
nothing outside its work directory, and fail, when it fails, with a lamina error.
"""
import json
import os
import shutil
import subprocess
import sys

import pytest

import test_fuzz_paths
from conftest import require_tool
from everypath import overlay_mount, write_image
from layerkit import run_as_nobody, world_tmpdir
from tarbuild import Tar
from treecmp import compare, snapshot

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="drops to nobody: needs root")

PATHS = ("dir", "overlay", "store-copy", "store-link")

# a compact store (keep-blobs false): save rebuilds each layer from its snapshot and sidecar;
# the nobody scripts here and in test_fuzz_rootless.py run it after their other paths
COMPACT_SAVE = r"""
croot = os.path.join(work, "compact")
if cli(["--root", croot, "config", "set", "keep-blobs", "false"]) == 0:
    cstore = Store(croot)
    attempt("compact-save", lambda: (copy(src, "img:1", store=cstore),
                                     save(["img:1"], os.path.join(work, "saved.tar"), store=cstore)))
    if out["compact-save"] == "ok":  # (fsck extracts each compact layer as its sidecar rebuilds it)
        try:
            out["compact-fsck"] = [f"{f.severity}: {f.subject}: {f.message}" for f in cstore.fsck().findings]
        except BaseException as e:
            out["compact-fsck"] = [f"raised {type(e).__name__}: {e}"]
else:
    out["compact-save"] = "crash: config set keep-blobs false failed"
"""

SCRIPT = r"""
import lamina.images
from lamina.store import Store
from lamina.store.fsck import check
from lamina.store.materialize import materialize
from lamina.transports import copy
src, work = sys.argv[1], sys.argv[2]
out = {}
def attempt(name, fn):
    try:
        fn()
        out[name] = "ok"
    except lamina.errors.LaminaError as e:
        out[name] = "error: " + str(e)
attempt("dir", lambda: lamina.unpack(src, os.path.join(work, "dir")))
try:
    out["layer_dirs"] = [os.fspath(d) for d in
                         lamina.unpack(src, os.path.join(work, "overlay"), format="overlay").layer_dirs]
    out["overlay"] = "ok"
except lamina.errors.LaminaError as e:
    out["overlay"] = "error: " + str(e)
store = Store(os.path.join(work, "store"))
attempt("copy", lambda: copy(src, "img:1", store=store))
if out["copy"] == "ok":
    attempt("store-copy", lambda: materialize(store, "img:1", os.path.join(work, "store-copy")))
    attempt("store-link", lambda: materialize(store, "img:1", os.path.join(work, "store-link"), link=True))
    try:
        out["fsck"] = [f"{f.severity}: {f.subject}: {f.message}" for f in check(store).findings]
    except (lamina.errors.LaminaError, OSError) as e:
        out["fsck"] = [f"raised {type(e).__name__}: {e}"]
    try:
        lamina.images.remove(store, "img:1")
        lamina.images.prune(store, all=True)
        out["left"] = sorted(os.listdir(os.path.join(work, "store", "snapshots")))
    except (lamina.errors.LaminaError, OSError) as e:
        out["left"] = [f"raised {type(e).__name__}: {e}"]
from lamina.cli import main as cli
from lamina.transports import save
""" + COMPACT_SAVE + """
print(json.dumps(out))
"""


def _preload():
    import pkgutil

    import lamina
    own = [m.name for m in pkgutil.walk_packages(lamina.__path__, "lamina.") if not m.name.endswith("__main__")]
    return own + ["concurrent.futures.thread", "isal.igzip", "isal.isal_zlib", "zstandard", "base64",
                  "ctypes.util", "datetime", "functools", "gzip", "ipaddress", "shutil", "tempfile",
                  "urllib.parse", "zlib", "lamina._objects", "lamina._flatten", "lz4.frame", "xxhash", "tarfile"]


def _chmod_tree(path, how):
    subprocess.run(["chmod", "-R", how, path], check=True)


def _image_for_nobody(base, layer_tars, dirname):
    """Under ``base``: an OCI layout of ``layer_tars`` that everyone may read, and an empty
    directory ``dirname`` that nobody owns; (layout, directory)."""
    layout = write_image(os.path.join(base, "layout"), layer_tars)
    _chmod_tree(layout, "a+rX")
    path = os.path.join(base, dirname)
    os.mkdir(path)
    os.chown(path, 65534, 65534)
    return layout, path


def run_rootless(layer_tars, *, dir_mtime=False):
    """{path: Snapshot or 'error: ...'} plus the store's fsck errors and what rmi + prune left."""
    base = world_tmpdir()
    try:
        layout, work = _image_for_nobody(base, layer_tars, "work")
        sentinel = os.path.join(base, "sentinel")
        os.makedirs(os.path.join(sentinel, "sub"))
        with open(os.path.join(sentinel, "sub", "f"), "w") as f:
            f.write("outside")
        _chmod_tree(sentinel, "a+rwX")  # writable by nobody: only lamina's care keeps it as it is
        before = snapshot(sentinel, include_root=True, dir_mtime=True)
        proc = run_as_nobody(SCRIPT, f"oci:{layout}:img", work, preload=_preload(), timeout=300)
        assert proc.returncode == 0, f"lamina as nobody crashed (not a lamina error):\n{proc.stderr[-3000:]}"
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        diff = compare(before, snapshot(sentinel, include_root=True, dir_mtime=True), labels=("before", "after"))
        assert not diff, f"outside the work dir changed:\n{diff}"
        trees = {}
        for p in PATHS:
            if out.get(p) != "ok":
                trees[p] = out.get(p, out.get("copy"))
            elif p == "overlay":
                trees[p] = mount_rootless_layers(out["layer_dirs"], os.path.join(work, "mnt"), dir_mtime=dir_mtime)
            else:
                trees[p] = snapshot(os.path.join(work, p), dir_mtime=dir_mtime)
        return trees, out
    finally:
        _chmod_tree(base, "u+rwx")
        shutil.rmtree(base, ignore_errors=True)


def mount_rootless_layers(layer_dirs, mnt, *, dir_mtime=True):
    """Root's view of nobody's overlay layers through overlayfs, reading user.overlay.*
    markers (``userxattr``) as lamina's mount of a rootless store does."""
    with overlay_mount(layer_dirs, mnt, userxattr=True):
        return snapshot(mnt, dir_mtime=dir_mtime, xattr_filter=lambda n: not n.startswith("user.overlay."))


def assert_all_agree(trees, out):
    bad = {p: v for p, v in trees.items() if isinstance(v, str) and v != "ok"}
    assert not bad, f"paths failed as nobody: {bad}"
    assert out.get("compact-save") == "ok", f"save from a compact rootless store: {out.get('compact-save')}"
    assert out["compact-fsck"] == [], f"fsck of the compact rootless store: {out['compact-fsck']}"
    assert out["fsck"] == [], f"fsck of the rootless store: {out['fsck']}"
    assert out["left"] == [], f"rmi + prune left snapshots: {out['left']}"
    ref = trees["dir"]
    for p in ("overlay", "store-copy", "store-link"):
        links = trees[p].links if p == "store-copy" else ref.links
        import dataclasses
        diff = compare(ref, dataclasses.replace(trees[p], links=links), labels=("dir", p))
        assert not diff, f"dir and {p} differ as nobody:\n{diff}"
    return ref


def test_modes_that_shut_out_the_owner_still_give_a_tree_it_can_use():
    """Fedora and UBI images ship /etc/shadow as mode 0000; layers also hold 0000 and
    0100 directories.  As nobody on 2dfdebc: the store's commit crashed with a bare
    PermissionError traceback (its size walk could not open the directory), a later
    layer's entries under a 0000 directory failed ("cannot open 'a'"), and a flatten,
    fsck or save could not read a 0000 file.  Rootless, the owner is the container's
    root (the bundle maps it so), for whom owner bits are moot: the owner keeps read
    (and search on directories), on every path alike."""
    low = (Tar().dir("etc").file("etc/shadow", b"root:*:1::::::\n", mode=0o000)
           .file("etc/wo", b"write-only\n", mode=0o200)
           .dir("a", mode=0o000).file("a/f", b"f\n").dir("a/b", mode=0o000).file("a/b/g", b"g\n")
           .dir("x", mode=0o100).file("x/y", b"y\n", mode=0o640))
    up = (Tar().file("a/new", b"new\n").whiteout("a/f").file("a/b/h", b"h\n")
          .dir("x", mode=0o300).opaque("x").file("x/z", b"z\n"))
    trees, out = run_rootless([low.bytes(), up.bytes()])
    ref = assert_all_agree(trees, out)
    assert sorted(ref.paths()) == ["a", "a/b", "a/b/g", "a/b/h", "a/new", "etc", "etc/shadow", "etc/wo",
                                   "x", "x/z"]
    assert ref["etc/shadow"].mode == 0o400 and ref["etc/wo"].mode == 0o600
    assert ref["a"].mode == 0o500 and ref["a/b"].mode == 0o500
    assert ref["x"].mode == 0o700, "0300 plus the owner's read and search"
    assert ref["x/z"].mode == 0o644


def test_read_only_directories_holding_only_directories_are_removed():
    """A tree of 0555 directories with no file directly in the outer one (Fedora's
    /usr/lib, /boot, a layer's 0555 dir of subdirs), replaced or whited out by a
    later layer, removed by fsck's scratch extraction, rmi and prune.  As nobody on
    2dfdebc the removal opened up a read-only directory only when it had a file to
    unlink there, so its subdirectory could not be removed: the dir-format unpack
    failed, and a rootless store could neither check nor drop the image."""
    low = (Tar().dir("r", mode=0o555).dir("r/s", mode=0o555).dir("r/s/t", mode=0o555)
           .file("r/s/t/f", b"f\n").dir("q", mode=0o555).dir("q/e", mode=0o555)
           .dir("keep", mode=0o555).dir("keep/sub", mode=0o555))
    up = Tar().whiteout("r").file("q", b"now a file\n")
    trees, out = run_rootless([low.bytes(), up.bytes()])
    ref = assert_all_agree(trees, out)
    assert sorted(ref.paths()) == ["keep", "keep/sub", "q"]
    assert ref["keep"].mode == 0o555 and ref["q"].type == "file"


@pytest.mark.parametrize("mode", [0o555, 0o500])
def test_a_read_only_directory_written_through_a_symlink_gets_its_mode_back(mode):
    """The next layer writes and whites out in a read-only directory through a symlink to
    it (ln/g with ln -> real).  As nobody the dir format opens the directory up for the
    layer and restores its mode at the end; on 2dfdebc the restore looked for it under
    the name it was reached by, found a symlink there and gave up: ``real`` stayed
    0755 (0700), writable, where the store's paths show the image's mode."""
    low = Tar().dir("real", mode=mode).file("real/f", b"f\n").file("real/k", b"k\n").symlink("ln", "real")
    up = Tar().file("ln/g", b"g\n").whiteout("ln/f").file("real/h", b"h\n")
    trees, out = run_rootless([low.bytes(), up.bytes()])
    ref = assert_all_agree(trees, out)
    assert sorted(ref.paths()) == ["ln", "real", "real/g", "real/h", "real/k"]
    assert ref["real"].mode == mode


def _lamina(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "lamina", *map(str, args)], capture_output=True, text=True,
                          timeout=300)
    if check:
        assert proc.returncode == 0, f"lamina {args}: {proc.stderr}"
    return proc


def test_roots_mount_of_a_store_an_unprivileged_user_filled_hides_what_opaque_dirs_hide(tmp_path):
    """An unprivileged store marks opaque directories with user.overlay.opaque (trusted.*
    needs root); root may still mount its images.  On 2dfdebc the mount read trusted.*
    only: the lower layer's d/old showed through the opaque d/, which lamina unpack of the
    same image hides.  Snapshots made by root and by another user in one image cannot be
    mounted as the flatten reads them: refused, naming the image."""
    from everypath import overlay_mount  # noqa: F401  (mount and umount present)
    from treecmp import snapshot
    base = world_tmpdir()
    try:
        low = Tar().dir("d").file("d/old", b"o\n").file("gone", b"g\n").dir("e").file("e/x", b"x\n")
        up = Tar().opaque("d").file("d/new", b"n\n").whiteout("gone").dir("e").opaque("e")
        low = low.bytes()
        layout, root = _image_for_nobody(base, [low, up.bytes()], "store")
        proc = run_as_nobody("from lamina.transports import copy\nfrom lamina.store import Store\n"
                             "copy('oci:' + sys.argv[1] + ':img', 'img:1', store=Store(sys.argv[2]))\n",
                             layout, root, preload=_preload())
        assert proc.returncode == 0, proc.stderr
        _lamina("--root", root, "unpack", "img:1", tmp_path / "flat")
        want = snapshot(tmp_path / "flat")
        assert sorted(want.paths()) == ["d", "d/new", "e"]
        for rw in (False, True):
            mnt = tmp_path / f"mnt-{rw}"
            _lamina("--root", root, "mount", *(["--rw"] if rw else []), "img:1", mnt)
            try:
                got = snapshot(mnt)
            finally:
                _lamina("--root", root, "umount", mnt)
            diff = compare(want, got, labels=("unpack", f"mount{' --rw' if rw else ''}"), ignore=("uid", "gid"))
            assert not diff, diff
        # a layer on top extracted by root, on the unprivileged user's base
        layout2 = write_image(os.path.join(base, "layout2"), [low, Tar().opaque("d").bytes()])
        _lamina("--root", root, "copy", f"oci:{layout2}:img", "img:2")
        proc = _lamina("--root", root, "mount", "img:2", tmp_path / "mnt-mixed", check=False)
        assert proc.returncode == 1 and proc.stderr.startswith("lamina: error: image ") \
            and "extracted by root and by another user" in proc.stderr, proc.stderr
        assert "mnt-mixed" not in _lamina("--root", root, "mount").stdout, "a refused mount left its record"
    finally:
        for d in os.listdir(tmp_path):
            if d.startswith("mnt-"):
                subprocess.run(["umount", str(tmp_path / d)], capture_output=True)
        _chmod_tree(base, "u+rwx")
        shutil.rmtree(base, ignore_errors=True)


def test_identical_files_in_a_read_only_directory_are_shared_without_root():
    """The store's dedup pass swaps a duplicate file for a link to its object with a rename
    into its directory.  As nobody, in a directory the layer made read-only, that rename was
    refused and the copy into the store died with a PermissionError traceback (e77a40d).
    Now the directory is opened to its owner for the rename and gets its mode and time back:
    the same tree, directory times included, on every path."""
    low = (Tar().dir("ro", mode=0o555, mtime=1_500_000_000).file("ro/a", b"same").file("ro/b", b"same")
           .dir("ro/sub", mode=0o500, mtime=1_500_000_002).file("ro/sub/c", b"same")
           .dir("rw", mtime=1_500_000_001).file("rw/x", b"up"))
    up = Tar().dir("ro", mode=0o500, mtime=1_600_000_000).file("ro/d", b"same").file("rw/y", b"up")
    trees, out = run_rootless([low.bytes(), up.bytes()], dir_mtime=True)
    ref = assert_all_agree(trees, out)
    assert ref["ro"].mode == 0o500 and ref["ro"].mtime == 1_600_000_000, ref["ro"]
    assert ref["ro/sub"].mtime == 1_500_000_002 and ref["rw"].mtime == 1_500_000_001


def test_an_image_holding_one_layer_twice_is_saved_from_a_compact_store():
    """Two layers of one image may be the same blob (identical layers, a repeated empty
    layer): one digest, two chainIDs.  A compact store builds each chain's sidecar from that
    blob and then drops it; on 6a27a26 it dropped the blob as soon as the first chain had its
    sidecar, so the second had nothing to be built from and the copy into the store failed
    ("layer ... is not in the store"), as nobody and as root alike."""
    layer = Tar().file("a", b"").dir("d", mode=0o555).file("d/f", b"same").bytes()
    trees, out = run_rootless([layer, layer], dir_mtime=True)
    ref = assert_all_agree(trees, out)
    assert sorted(ref.paths()) == ["a", "d", "d/f"]


def test_read_only_files_keep_their_user_xattrs():
    """A user.* xattr can be set only with write permission on the inode, its owner's
    included.  As nobody on 6a27a26 a read-only file with one (0444, or a 0000 /etc/shadow
    given the owner's read) failed the layer on every path ("set xattr 'user.x' on failed:
    Permission denied"): the xattr went on after the file's mode.  Root unpacks it."""
    low = (Tar().pax({"SCHILY.xattr.user.x": b"1"}).file("ro", b"r\n", mode=0o444)
           .pax({"SCHILY.xattr.user.x": b"22"}).file("shut", b"s\n", mode=0o000)
           .pax({"SCHILY.xattr.user.x": b"3"}).file("rw", b"w\n", mode=0o644))
    trees, out = run_rootless([low.bytes()])
    ref = assert_all_agree(trees, out)
    assert ref["ro"].mode == 0o444 and ref["ro"].xattrs == (("user.x", b"1"),)
    assert ref["shut"].mode == 0o400 and ref["shut"].xattrs == (("user.x", b"22"),)
    assert ref["rw"].xattrs == (("user.x", b"3"),)


def test_a_read_only_directory_listed_again_gets_the_entrys_xattrs():
    """A directory entry over a lower layer's directory leaves it the entry's xattrs only
    (CONFORMANCE.md).  Changing a user.* xattr needs write permission on the directory,
    so as nobody on 6a27a26 the dir format failed where the lower directory was read-only
    ("remove xattr user.x of the existing directory failed" / "set xattr ... failed:
    Permission denied") while the overlay format and the store, which make the upper
    directory anew, succeeded."""
    low = (Tar().pax({"SCHILY.xattr.user.x": b"low"}).dir("d", mode=0o555, mtime=1_500_000_000)
           .file("d/f", b"f\n")
           .pax({"SCHILY.xattr.user.x": b"low"}).dir("e", mode=0o555, mtime=1_500_000_000)
           .dir("g", mode=0o500, mtime=1_500_000_000))
    up = (Tar().pax({"SCHILY.xattr.user.y": b"up"}).dir("d", mode=0o500, mtime=1_600_000_000)
          .dir("e", mode=0o555, mtime=1_600_000_000)
          .pax({"SCHILY.xattr.user.z": b"up"}).dir("g", mode=0o555, mtime=1_600_000_000))
    trees, out = run_rootless([low.bytes(), up.bytes()], dir_mtime=True)
    ref = assert_all_agree(trees, out)
    assert (ref["d"].mode, ref["d"].xattrs, ref["d"].mtime) == (0o500, (("user.y", b"up"),), 1_600_000_000)
    assert (ref["e"].mode, ref["e"].xattrs, ref["e"].mtime) == (0o555, (), 1_600_000_000)
    assert (ref["g"].mode, ref["g"].xattrs, ref["g"].mtime) == (0o555, (("user.z", b"up"),), 1_600_000_000)


def test_a_directory_whose_access_acl_shuts_its_owner_out_is_written_in():
    """An access ACL sets the owner's permissions too: user::rw- takes the owner's search
    away.  As nobody on 4360fa6 a directory (or the root) listed with one failed every path
    at the next entry under it ("cannot open 'd': Permission denied"), and the dir unpack's
    cleanup died on the unsearchable staging dir with a PermissionError (found by
    test_fuzz_rootless.py, seed 20202).  The mode is the header's, the ACL in step with it."""
    acl = test_fuzz_paths.ACL  # user::rw- user:1000:r-- group::r-- mask::r-- other::r--
    layer = (Tar().pax({"SCHILY.xattr.system.posix_acl_access": acl}).dir("./", mode=0o755)
             .pax({"SCHILY.xattr.system.posix_acl_access": acl}).dir("d", mode=0o750)
             .file("d/f", b"f\n").file("g", b"g\n"))
    trees, out = run_rootless([layer.bytes()])
    ref = assert_all_agree(trees, out)
    assert ref["d"].mode == 0o750 and ref.paths() == ["d", "d/f", "g"]
    # the ACL's owner, mask and other entries are the mode's: rwx, r-x, ---
    assert dict(ref["d"].xattrs)["system.posix_acl_access"] == test_fuzz_paths.acl_in_step(acl, 0o750)


def test_a_read_only_file_or_directory_with_an_access_acl_keeps_every_xattr_on_every_path():
    """The ACL of a read-only file (0000, given the owner's read: user::r--) copied before
    its user.* xattrs takes away the write they need: as nobody on 4360fa6 the store's flatten
    dropped user.x of such a file (found by test_fuzz_rootless.py, seed 20204), and of a
    read-only directory (user::r-x) it could not make the entries."""
    acl = test_fuzz_paths.ACL
    layer = (Tar().pax({"SCHILY.xattr.system.posix_acl_access": acl, "SCHILY.xattr.user.x": b"1"}).file("f", mode=0)
             .pax({"SCHILY.xattr.user.x": b"2", "SCHILY.xattr.system.posix_acl_access": acl}).dir("d", mode=0o500)
             .file("d/g", b"g\n"))
    trees, out = run_rootless([layer.bytes()])
    ref = assert_all_agree(trees, out)
    assert dict(ref["f"].xattrs) == {"user.x": b"1", "system.posix_acl_access": test_fuzz_paths.acl_in_step(acl, 0o400)}
    assert dict(ref["d"].xattrs) == {"user.x": b"2", "system.posix_acl_access": test_fuzz_paths.acl_in_step(acl, 0o500)}
    assert ref.paths() == ["d", "d/g", "f"]


def test_a_read_only_root_with_an_access_acl_keeps_its_xattrs_in_an_upper_layer():
    """An overlay layer that does not name the root copies the root's metadata from below:
    as nobody on 4360fa6 the ACL of a read-only root (user::r-x), copied first, took the write
    its user.x then needed ("copy xattr 'user.x' failed: Permission denied" on the overlay and
    store paths; found by test_fuzz_rootless.py, seed 20205)."""
    acl = test_fuzz_paths.ACL
    low = Tar().pax({"SCHILY.xattr.system.posix_acl_access": acl, "SCHILY.xattr.user.x": b"1"}).dir("./", mode=0o555)
    trees, out = run_rootless([low.file("f").bytes(), Tar().file("g").bytes()])
    assert_all_agree(trees, out)


def test_a_read_only_directory_with_an_access_acl_is_written_in_by_an_upper_layer():
    """Copied up into an upper overlay layer, a read-only directory's ACL (user::r-x) took
    the owner's write: as nobody on 130c769 the next layer's entries under it failed on the
    overlay and store paths ("mkdir failed: Permission denied"; test_fuzz_rootless.py, seed 20205)."""
    acl = test_fuzz_paths.ACL
    low = Tar().pax({"SCHILY.xattr.system.posix_acl_access": acl}).dir("b", mode=0o555)
    trees, out = run_rootless([low.bytes(), Tar().file("b/a/f").bytes()])
    ref = assert_all_agree(trees, out)
    assert ref["b"].mode == 0o555 and ref.paths() == ["b", "b/a", "b/a/f"]


def test_a_whiteout_of_a_device_node_nobody_could_make_hides_what_is_below():
    """Without root a device node is not made, on every path as if the layer did not list it
    (a lower file of that name stays).  A whiteout of that name later in the same layer must
    then hide what is below, as it would with no device entry.  On 6a27a26 the skipped node
    still counted as the layer's own: the dir format kept an empty ``b`` (the whiteout taken
    as one of the layer's own directory), the overlay format and the store showed all of the
    lower ``b``."""
    low = Tar().dir("b").dir("b/b").file("b/b/f", b"f\n").file("keep", b"k\n").file("c", b"c\n")
    up = (Tar().blockdev("b", 7, 0).whiteout("b").chardev("c", 1, 3).file("new", b"n\n"))
    trees, out = run_rootless([low.bytes(), up.bytes()])
    ref = assert_all_agree(trees, out)
    assert sorted(ref.paths()) == ["c", "keep", "new"], "the lower c stays: its device replacement was not made"


def test_a_device_node_nobody_could_make_hides_nothing_from_a_flat_unpack():
    """A flat unpack reads small upper layers first and never writes what they replace.
    Without root a device node is not made (as if the layer did not list it), so what it
    would have replaced must be written: on 6a27a26 the top-down scan still counted the node,
    and the dir format lost the lower ``d`` (and ``e/f``) that the store's paths show."""
    low = (Tar().dir("d").file("d/f", b"x" * 300_000).dir("d/sub").file("d/sub/g", b"g\n")
           .dir("e").file("e/f", b"y" * 300_000).file("keep", b"k\n"))
    up = Tar().chardev("d", 1, 3).blockdev("e/f", 7, 0)
    trees, out = run_rootless([low.bytes(), up.bytes()])
    ref = assert_all_agree(trees, out)
    assert sorted(ref.paths()) == ["d", "d/f", "d/sub", "d/sub/g", "e", "e/f", "keep"]


def test_the_directories_a_device_node_nobody_could_make_implies_stay():
    """A device node not made without root still implies its directories, as in root's tree:
    an opaque marker of the same layer hides only what is below and spares them.  With the
    node no longer the layer's own (2ff2474), the dir format kept ``a/a`` and the overlay
    format (so the store) dropped it, until its parents were recorded as the layer's."""
    low = Tar().dir("a").dir("a/b").file("a/b/f", b"f\n")
    up = Tar().chardev("a/a/c", 1, 3).opaque("a").file("x", b"x\n")
    trees, out = run_rootless([low.bytes(), up.bytes()])
    ref = assert_all_agree(trees, out)
    assert sorted(ref.paths()) == ["a", "a/a", "x"]


@pytest.mark.parametrize("hidden_above", [False, True], ids=["alone", "whited-out-above"])
def test_a_hardlink_to_a_device_node_nobody_could_make_is_not_made_either(hidden_above):
    """Without root a device node is not made, as if the layer did not list it; a hardlink to
    it (another name, or the same one: ``d => d``) was refused as "not found" by every path,
    except by the flat unpack when an upper layer whited the name out (its top-down skipping
    skipped the link): fuzz seed 20322 of test_fuzz_rootless.  Now the link is not made either,
    on every path, and a hardlink to that link likewise."""
    low = (Tar().dir("a").file("a/keep", b"k\n").chardev("a/d", 1, 3).hardlink("a/d", "a/d")
           .hardlink("a/e", "a/d").hardlink("a/f", "a/e").file("big", b"x" * 300_000))
    layers = [low.bytes()]
    if hidden_above:
        layers.append(Tar().whiteout("a/d").file("new", b"n\n").bytes())
    trees, out = run_rootless(layers)
    ref = assert_all_agree(trees, out)
    assert sorted(ref.paths()) == ["a", "a/keep", "big"] + (["new"] if hidden_above else [])


def test_the_overlay_formats_own_mount_options_mount_an_unprivileged_unpack_as_it_reads():
    """Without root the overlay format marks opaque directories user.overlay.opaque
    (trusted.* needs root).  DEST/mount-options, what README passes to mount -o, lacked
    ``userxattr``: overlayfs then read trusted.* only, and the lower d/old showed through
    the opaque d/ that the dir unpack of the same image (and every other path) hides."""
    base = world_tmpdir()
    mnt = os.path.join(base, "mnt")
    try:
        low = Tar().dir("d").file("d/old", b"o\n").dir("e").file("e/x", b"x\n").file("gone", b"g\n")
        up = Tar().opaque("d").file("d/new", b"n\n").whiteout("gone").dir("e").opaque("e")
        layout, work = _image_for_nobody(base, [low.bytes(), up.bytes()], "work")
        proc = run_as_nobody("lamina.unpack(sys.argv[1], sys.argv[2] + '/dir')\n"
                             "lamina.unpack(sys.argv[1], sys.argv[2] + '/ovl', format='overlay')\n",
                             f"oci:{layout}:img", work, preload=_preload())
        assert proc.returncode == 0, proc.stderr
        want = snapshot(os.path.join(work, "dir"))
        assert sorted(want.paths()) == ["d", "d/new", "e"]
        with open(os.path.join(work, "ovl", "mount-options")) as f:
            options = f.read().strip()
        os.mkdir(mnt)
        subprocess.run(["mount", "-t", "overlay", "overlay", "-o", "nosuid,nodev," + options, mnt], check=True)
        try:
            got = snapshot(mnt, xattr_filter=lambda n: not n.startswith("user.overlay."))
        finally:
            subprocess.run(["umount", mnt], check=True)
        diff = compare(want, got, labels=("dir", "mount -o $(cat mount-options)"))
        assert not diff, f"{options}:\n{diff}"
    finally:
        subprocess.run(["umount", mnt], capture_output=True)
        _chmod_tree(base, "u+rwx")
        shutil.rmtree(base, ignore_errors=True)


def test_a_set_group_id_directory_above_the_store_gives_no_entry_its_group():
    """nobody's work directory, and so its store, is set-group-ID with a group nobody is not
    in.  Every snapshot entry inherited that group, which an unprivileged extraction cannot
    chown away: unpack --link (the store's own inodes) gave the image's files group 1234 where
    the dir unpack and the store's copy gave nobody's own group."""
    base = world_tmpdir()
    try:
        layers = [Tar().file("f", b"x").dir("d").file("d/g", b"y").fifo("p").symlink("s", "f"),
                  Tar().file("d/h", b"z").dir("e", mode=0o700).file("e/i", b"i", gid=5)]
        layout = write_image(os.path.join(base, "layout"), [t.bytes() for t in layers])
        _chmod_tree(layout, "a+rX")
        work = os.path.join(base, "work")
        os.mkdir(work)
        os.chown(work, 65534, 1234)
        os.chmod(work, 0o2775)
        proc = run_as_nobody(SCRIPT, f"oci:{layout}:img", work, preload=_preload(), timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        assert [out[p] for p in ("dir", "store-copy", "store-link")] == ["ok"] * 3, out
        trees = {p: snapshot(os.path.join(work, p)) for p in ("dir", "store-copy", "store-link")}
        assert {e.gid for e in trees["dir"].entries.values()} == {65534}
        for p in ("store-copy", "store-link"):
            import dataclasses
            diff = compare(trees["dir"], dataclasses.replace(trees[p], links=trees["dir"].links), labels=("dir", p))
            assert not diff, diff
    finally:
        _chmod_tree(base, "u+rwx")
        shutil.rmtree(base, ignore_errors=True)


def test_a_lower_directory_nobody_may_search_through_a_symlinks_dot_dot_is_closed_once():
    """The overlay format resolves ``lnk/f`` through the layer's symlink ``lnk -> d/sub/../e``
    in the layers below, going back up from ``d/sub`` by its ``..``.  A lower layer of someone
    else's (root's, here) whose ``d/sub`` nobody may search (0644) makes that ``..`` fail
    (EACCES; EMFILE would do the same): the walk's helper had closed ``d/sub``'s fd already and
    the walk closed it again on its way out (strace: ``close(8) = -1 EBADF``).  A number closed
    twice is closed under whoever got it in between (another thread's file: another layer's
    extraction, a download).  The entry is refused by name, and each fd closed once."""
    require_tool("strace")
    work = world_tmpdir()
    try:
        for d in ("lower/d/sub", "lower/e", "dest"):
            os.makedirs(os.path.join(work, d))
        os.chmod(os.path.join(work, "lower/d/sub"), 0o644)   # readable, not searchable, by nobody
        os.chown(os.path.join(work, "dest"), 65534, 65534)
        layer = Tar().symlink("lnk", "d/sub/../e").file("lnk/f", b"f\n").bytes()
        with open(os.path.join(work, "layer.tar"), "wb") as f:
            f.write(layer)
        trace = os.path.join(work, "close.strace")
        script = r"""
work = sys.argv[1]
try:
    lamina.apply_layer(os.path.join(work, "layer.tar"), os.path.join(work, "dest"), format="overlay",
                       lower_dirs=[os.path.join(work, "lower")])
    print("applied")
except lamina.errors.LaminaError as e:
    print(e)
"""
        p = run_as_nobody(script, work, prefix=["strace", "-f", "-qq", "-Z", "-e", "trace=close", "-o", trace])
        assert p.returncode == 0, p.stderr
        assert "entry 'lnk/f'" in p.stdout and "Permission denied" in p.stdout, p.stdout
        with open(trace) as f:
            twice = [line.strip() for line in f if "EBADF" in line]
        assert not twice, f"closed twice: {twice}"
    finally:
        shutil.rmtree(work, ignore_errors=True)
