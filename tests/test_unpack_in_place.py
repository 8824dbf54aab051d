"""``unpack`` into an existing empty DEST that cannot be replaced by a rename: its parent
is not writable (another user's, a read-only filesystem) or DEST is a mount point.

The image is staged in a hidden DEST/.lamina-tmp-* and moved up only once all of it
verified, so DEST still never looks complete before it is (see unpacker.py)."""
import io
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tarfile

import pytest

import lamina
import ocibuild as ob
from conftest import require_tool
from layerkit import rmtree, run_as_nobody, world_tmpdir
from storekit import lamina as lamina_cli
from tarbuild import Tar
from treecmp import assert_same, snapshot

SAMPLE = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "sample", "image"))
ROOT_MTIME = 1_600_000_000


def tree(path):
    return snapshot(path, include_root=True)


def _root_tar():
    """A layer whose "./" entry gives the rootfs mode 0750, an mtime and an xattr."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        root = tarfile.TarInfo("./")
        root.type, root.mode, root.mtime = tarfile.DIRTYPE, 0o750, ROOT_MTIME
        root.pax_headers = {"SCHILY.xattr.user.lamina.root": "yes"}
        tar.addfile(root)
        f = tarfile.TarInfo("hello")
        f.size, f.mode, f.mtime = 6, 0o644, ROOT_MTIME
        tar.addfile(f, io.BytesIO(b"hello\n"))
    return buf.getvalue()


@pytest.fixture
def mount_point(tmp_path):
    """An empty tmpfs mounted on DEST (rename(2) can never replace a mount point)."""
    require_tool("mount")
    dest = tmp_path / "dest"
    dest.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", str(dest)], check=True)
    try:
        yield dest
    finally:
        subprocess.run(["umount", "-l", str(dest)], check=True)


def test_unpack_onto_a_mount_point_is_the_same_tree(tmp_path, mount_point):
    lay = ob.Layout(tmp_path / "lay")
    lay.image_of_tars([_root_tar()], ref="root:1")
    lamina.unpack(f"oci:{lay.root}:root:1", tmp_path / "renamed")
    lamina.unpack(f"oci:{lay.root}:root:1", mount_point)
    assert_same(tree(tmp_path / "renamed"), tree(mount_point), labels=("renamed", "in place"))
    st = os.lstat(mount_point)
    # the root's own metadata came from the layer's "./" entry, as with a rename
    assert stat.S_IMODE(st.st_mode) == 0o750 and st.st_mtime == ROOT_MTIME
    assert os.getxattr(mount_point, "user.lamina.root") == b"yes"
    assert sorted(os.listdir(mount_point)) == ["hello"]
    assert os.path.ismount(mount_point)  # filled, not replaced


@pytest.mark.parametrize("fmt", ["dir", "overlay"])
def test_store_unpack_and_overlay_onto_a_mount_point(tmp_path, mount_point, fmt):
    root = tmp_path / "store"
    lamina_cli(root, "copy", f"oci:{SAMPLE}:latest", "sample:1")
    if fmt == "dir":
        lamina_cli(root, "unpack", "sample:1", tmp_path / "renamed")
        lamina_cli(root, "unpack", "sample:1", mount_point)
    else:
        lamina_cli(root, "unpack", "--overlay", f"oci:{SAMPLE}:latest", tmp_path / "renamed")
        lamina_cli(root, "unpack", "--overlay", f"oci:{SAMPLE}:latest", mount_point)
        renamed_opts = (tmp_path / "renamed" / "mount-options").read_text()
        assert (mount_point / "mount-options").read_text() == renamed_opts.replace(
            str(tmp_path / "renamed"), str(mount_point))
        # whiteouts are made at extraction time, so their mtimes differ between two unpacks
        assert_same(snapshot(tmp_path / "renamed" / "layers"), snapshot(mount_point / "layers"),
                    ignore=("mtime",), labels=("renamed", "in place"))
        return
    assert_same(tree(tmp_path / "renamed"), tree(mount_point), labels=("renamed", "in place"))


def test_a_failed_in_place_unpack_leaves_dest_empty(tmp_path, mount_point):
    shutil.copytree(SAMPLE, tmp_path / "image")
    lay = ob.Layout.existing(tmp_path / "image")
    manifest = lay.read_json(lay.entries[0]["digest"])
    with open(lay.path(manifest["layers"][2]["digest"]), "r+b") as f:
        f.seek(4)  # gzip header MTIME: the blob no longer matches its digest
        f.write(b"\x01\x02\x03\x04")
    with pytest.raises(lamina.errors.DigestMismatchError):
        lamina.unpack(f"oci:{tmp_path / 'image'}", mount_point)
    assert os.listdir(mount_point) == []
    lamina.unpack(f"oci:{SAMPLE}", mount_point)  # and it can be used again at once
    assert (mount_point / "opt" / "app" / "README").is_file()


def test_an_unfinished_unpack_is_named(tmp_path):
    """What a crash while moving up leaves (part of the tree and the staging dir) is not
    mistaken for a DEST someone else filled, nor unpacked over."""
    dest = tmp_path / "dest"
    (dest / ".lamina-tmp-k2x8q1ab" / "usr").mkdir(parents=True)
    _mark_as_lamina_does(dest / ".lamina-tmp-k2x8q1ab")
    (dest / "etc").mkdir()
    proc = lamina_cli(tmp_path / "store", "unpack", f"oci:{SAMPLE}", dest, check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip() == (f"lamina: error: destination {dest} holds an unpack that did not finish "
                                   f"(.lamina-tmp-k2x8q1ab); empty it and unpack again"), proc.stderr


# Runs the CLI with one function of lamina.unpacker made to SIGKILL the process when entered
# (its Nth call): a crash at a point of the in-place fill chosen by name, not by timing.
KILL_AT = """
import os, signal, sys
import lamina.unpacker as u
name, nth, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
real, calls = getattr(u, name), [0]
def dying(*a, **kw):
    calls[0] += 1
    if calls[0] == nth:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(*a, **kw)
setattr(u, name, dying)
from lamina.cli import main
sys.exit(main(argv))
"""


def _killed_unpack(tmp_path, dest, name, nth=1):
    proc = subprocess.run([sys.executable, "-c", KILL_AT, name, str(nth), "--root", str(tmp_path / "store"),
                           "unpack", f"oci:{SAMPLE}", str(dest)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, f"{name} never called (exit {proc.returncode}):\n{proc.stderr}"


def test_an_in_place_unpack_killed_before_it_moves_up_is_done_again_by_the_rerun(tmp_path, mount_point):
    """Killed (kill -9, a reboot) while the image was staged in DEST/.lamina-tmp-* -- the long
    part of an unpack: nothing of it had reached DEST, yet the rerun refused the staging dir
    ('holds an unpack that did not finish; empty it') and the user had to clean up by hand.
    The staging dir is locked as a sibling's is, so the rerun knows nobody works in it."""
    _killed_unpack(tmp_path, mount_point, "_move_up")
    assert [n for n in os.listdir(mount_point) if n.startswith(".lamina-tmp-")], os.listdir(mount_point)
    lamina_cli(tmp_path / "store", "unpack", f"oci:{SAMPLE}", mount_point)
    lamina.unpack(f"oci:{SAMPLE}", tmp_path / "renamed")
    assert_same(tree(tmp_path / "renamed"), tree(mount_point), labels=("renamed", "in place after a kill"))


def test_an_in_place_unpack_killed_while_it_moves_up_is_named_not_swept(tmp_path, mount_point):
    """Killed after its first entry reached DEST: DEST is part-filled, which no rerun may take for
    its own to finish or remove (someone may have written there since); it names it as before."""
    _killed_unpack(tmp_path, mount_point, "_copy_root_metadata")
    left = sorted(os.listdir(mount_point))
    assert any(n.startswith(".lamina-tmp-") for n in left) and len(left) > 1, left
    proc = lamina_cli(tmp_path / "store", "unpack", f"oci:{SAMPLE}", mount_point, check=False)
    assert proc.returncode == 1 and "holds an unpack that did not finish" in proc.stderr, proc.stderr
    assert sorted(os.listdir(mount_point)) == left


def test_an_in_place_unpack_killed_before_a_reboot_is_named_not_swept(tmp_path, mount_point, monkeypatch):
    """An in-place staging dir is swept only if lamina both marked it and recorded it in its
    runtime directory, which a reboot empties: after one (a fresh runtime dir here) a killed
    in-place unpack's dir is named, as one that moved entries up is, and left as it is; with its
    record it is swept.  Both are kept (see the next test): the mark alone is a value anyone who
    writes DEST can set, an image's layer too; the record is in a directory only lamina writes."""
    runs = [tmp_path / "run-before", tmp_path / "run-after-reboot"]
    for d in runs:
        d.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runs[0]))
    _killed_unpack(tmp_path, mount_point, "_move_up")
    left = os.listdir(mount_point)
    assert len(left) == 1 and left[0].startswith(".lamina-tmp-"), left
    staged = snapshot(mount_point)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runs[1]))
    proc = lamina_cli(tmp_path / "store", "unpack", f"oci:{SAMPLE}", mount_point, check=False)
    assert proc.returncode == 1 and proc.stderr.strip() == (
        f"lamina: error: destination {mount_point} holds an unpack that did not finish ({left[0]}); "
        f"empty it and unpack again"), proc.stderr
    assert_same(staged, snapshot(mount_point), labels=("killed", "after the refused rerun"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runs[0]))
    lamina_cli(tmp_path / "store", "unpack", f"oci:{SAMPLE}", mount_point)
    lamina.unpack(f"oci:{SAMPLE}", tmp_path / "renamed")
    assert_same(tree(tmp_path / "renamed"), tree(mount_point), labels=("renamed", "swept and unpacked again"))


def test_an_images_entry_carrying_lamina_s_mark_is_still_not_swept(tmp_path, mount_point):
    """Why the in-place sweep wants a record as well as the mark: an image's top-level
    .lamina-tmp-<8 hex> entry carries what xattrs its layer gives it (user.lamina.staging is
    dropped from a layer's entries now), and anyone who may write DEST may set it: the mark alone
    is only as safe as the inode number is hard to guess (on tmpfs they come
    in sequence).  Given the very value lamina would write (a guess that came true: set here
    after the unpack), the entry is still no killed unpack's: no unpack recorded it."""
    name = ".lamina-tmp-0123abcd"
    lay = ob.Layout(tmp_path / "lay")
    lay.image_of_tars([Tar().pax({"SCHILY.xattr.user.lamina.staging": "1 0123abcd"}).dir(name + "/")
                       .file(name + "/mine", b"data\n").bytes()], ref="odd:1")
    lamina.unpack(f"oci:{lay.root}:odd:1", mount_point)
    assert "user.lamina.staging" not in os.listxattr(mount_point / name), "lamina's own mark, set by a layer"
    _mark_as_lamina_does(mount_point / name)
    proc = lamina_cli(tmp_path / "store", "unpack", f"oci:{SAMPLE}", mount_point, check=False)
    assert proc.returncode == 1 and name in proc.stderr, proc.stderr
    assert (mount_point / name / "mine").read_bytes() == b"data\n"


def test_an_in_place_unpack_leaves_a_running_ones_staging_dir_alone(tmp_path, mount_point):
    """A staging dir whose lock is held belongs to an unpack still running into DEST."""
    import fcntl
    running = mount_point / ".lamina-tmp-0123abcd"
    (running / "etc").mkdir(parents=True)
    _mark_as_lamina_does(running)
    fd = os.open(running, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        proc = lamina_cli(tmp_path / "store", "unpack", f"oci:{SAMPLE}", mount_point, check=False)
        assert proc.returncode == 1 and ".lamina-tmp-0123abcd" in proc.stderr, proc.stderr
        assert os.listdir(mount_point) == [".lamina-tmp-0123abcd"] and os.listdir(running) == ["etc"]
    finally:
        os.close(fd)


@pytest.mark.parametrize("source", ["layout", "store"])
@pytest.mark.parametrize("how", ["image", "user"])
@pytest.mark.parametrize("into", ["directory", "mount-point"])
def test_an_entry_named_like_a_staging_dir_that_no_unpack_made_is_never_swept(tmp_path, how, into, source, request):
    """A DEST whose only entry is a directory named like an in-place staging dir
    (``.lamina-tmp-`` and 8 hex digits) that no unpack made: an image's whole tree
    (its one top-level directory), or the user's own.  The next unpack to DEST took it
    for a killed unpack's (nobody holds its lock), removed it with all it held and
    unpacked over it, where a DEST with anything else in it is refused as not empty."""
    dest = request.getfixturevalue("mount_point") if into == "mount-point" else tmp_path / "dest"
    name = ".lamina-tmp-0123abcd"
    if how == "image":
        layout = ob.Layout(tmp_path / "image")
        layout.image_of_tars([Tar().dir(name).file(name + "/precious", b"kept\n").bytes()], ref="img")
        lamina.unpack(f"oci:{tmp_path / 'image'}:img", dest)
    else:
        (dest / name).mkdir(parents=True)
        (dest / name / "precious").write_bytes(b"kept\n")
    assert os.listdir(dest) == [name]
    ref = f"oci:{SAMPLE}"
    if source == "store":  # lamina unpack REF DEST of an image in the store: the flatten's staging
        ref = "sample:1"
        lamina_cli(tmp_path / "store", "copy", f"oci:{SAMPLE}", ref)
    proc = lamina_cli(tmp_path / "store", "unpack", ref, dest, check=False)
    assert proc.returncode == 1 and name in proc.stderr, proc.stderr
    assert os.listdir(dest) == [name] and (dest / name / "precious").read_bytes() == b"kept\n"


def _mark_as_lamina_does(path):
    """The xattr lamina marks its staging dirs with (unpacker._MARK): the dir's inode number and
    its name's token."""
    os.setxattr(path, "user.lamina.staging", f"{os.stat(path).st_ino} {path.name.rsplit('-', 1)[1]}".encode())


@pytest.mark.parametrize("where", ["renamed", "in place"])
def test_an_images_entry_named_like_a_staging_dir_is_not_swept_by_the_next_unpack(tmp_path, mount_point, where):
    """An image whose one top-level entry is named .lamina-tmp-<8 hex> (nothing forbids it): the
    next unpack into that DEST took the entry for a killed unpack's staging dir (its name, and
    no lock held) and removed it, then unpacked over the tree.  Only a dir lamina marked is swept
    now: the unpack refuses DEST, naming the entry, the tree untouched, and no mark reaches DEST
    (whether it was renamed there or filled in place)."""
    lay = ob.Layout(tmp_path / "lay")
    lay.image_of_tars([Tar().dir(".lamina-tmp-0123abcd/").file(".lamina-tmp-0123abcd/mine", b"data\n").bytes()],
                      ref="odd:1")
    dest = tmp_path / "dest-renamed" if where == "renamed" else mount_point
    lamina.unpack(f"oci:{lay.root}:odd:1", dest)
    assert os.listdir(dest) == [".lamina-tmp-0123abcd"]
    assert "user.lamina.staging" not in os.listxattr(dest)
    proc = lamina_cli(tmp_path / "store", "unpack", f"oci:{SAMPLE}", dest, check=False)
    assert proc.returncode == 1 and ".lamina-tmp-0123abcd" in proc.stderr, proc.stderr
    assert (dest / ".lamina-tmp-0123abcd" / "mine").read_bytes() == b"data\n"


NOBODY = r"""
from lamina.cli import main
from lamina.store import Store
from lamina.store.materialize import materialize
from lamina.transports import copy
layout, store_root, parent = sys.argv[1:4]
lamina.unpack("oci:" + layout, os.path.join(parent, "from-layout"))
store = Store(store_root)
copy("oci:" + layout, "sample:1", store=store)
materialize(store, "sample:1", os.path.join(parent, "from-store"))
# a DEST that does not exist must be made in its parent: that one error names the user's path
rc = main(["--root", store_root, "unpack", "sample:1", os.path.join(parent, "new")])
print(json.dumps({"uid": os.geteuid(), "rc": rc}))
"""


def test_unpack_into_an_empty_dest_of_a_parent_nobody_may_write(tmp_path):
    """As user nobody: DEST (nobody's, empty) sits in root's 0755 directory."""
    base = world_tmpdir()
    try:
        layout, store_root, parent = (os.path.join(base, n) for n in ("image", "store", "parent"))
        shutil.copytree(SAMPLE, layout)
        os.mkdir(store_root)
        os.mkdir(parent, 0o755)
        for d in (store_root, os.path.join(parent, "from-layout"), os.path.join(parent, "from-store")):
            os.makedirs(d, exist_ok=True)
            os.chown(d, 65534, 65534)
        proc = run_as_nobody(NOBODY, layout, store_root, parent,
                             preload=["lamina.cli", "lamina.cli.layers", "lamina.cli.images", "lamina.cli.store",
                                      "lamina.cli.registry", "lamina.cli.bench", "lamina.images", "lamina.transports",
                                      "lamina.store.materialize", "lamina.store.flatten", "concurrent.futures.thread",
                                      "isal.igzip", "tempfile", "shutil", "ctypes.util"])
        assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        assert out["uid"] == 65534 and out["rc"] == 1
        assert proc.stderr.strip().splitlines()[-1] == \
            f"lamina: error: cannot write {os.path.join(parent, 'new')}: Permission denied", proc.stderr
        assert sorted(os.listdir(parent)) == ["from-layout", "from-store"]  # nothing staged beside them

        lamina.unpack(f"oci:{SAMPLE}", tmp_path / "as-root")
        for d, _, files in os.walk(tmp_path / "as-root"):  # what only root may do: setuid/setgid bits
            for f in files:
                p = os.path.join(d, f)
                mode = os.lstat(p).st_mode
                if mode & 0o6000 and not os.path.islink(p):
                    os.chmod(p, mode & 0o1777)
        for made in ("from-layout", "from-store"):
            dest = os.path.join(parent, made)
            assert_same(snapshot(tmp_path / "as-root"), snapshot(dest), ignore=("uid", "gid"),
                        labels=("root", f"nobody {made}"))
            assert os.lstat(dest).st_uid == 65534
    finally:
        rmtree(base)
