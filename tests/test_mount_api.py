"""Which kernel interface `lamina mount` used, checked against what the machine offers.

Linux >= 6.8 with fsopen/fsconfig takes one `lowerdir+` per layer; without fsopen (old kernels,
seccomp, qemu-user, which answers ENOSYS) lamina falls back to mount(2), whose options fit in one
page.  These tests detect the missing syscall and then test the fallback itself, instead of
failing on a path the machine does not have.
"""
import os
import subprocess
import sys

import pytest

import ocibuild as ob
from conftest import fsopen_usable, require_root
from verbkit import load_layout

from lamina.errors import LaminaError
from lamina.store import Store
from lamina.store.mounts import mount, umount


def _kernel_at_least(major, minor):
    release = os.uname().release.split("-")[0].split(".")
    return tuple(int(x) for x in release[:2]) >= (major, minor)


@pytest.fixture
def store(tmp_path):
    require_root()
    lay = ob.Layout(tmp_path / "layout")
    lay.add(lay.image([{"base": b"base\n", "shared": b"base"}, {"top": b"top\n", "shared": b"top"}]), "two")
    layers = [{f"l{i:02d}": b"x", "shared": f"top is {i}".encode()} for i in range(70)]
    lay.add(lay.image(layers), "many")
    # A long store path: 70 snapshot paths then overflow mount(2)'s one page of options.
    store = Store(tmp_path / ("r" * 100) / "root")
    load_layout(store, lay.root, "two", "two")
    load_layout(store, lay.root, "many", "many")
    return store


def _expected_api():
    if not fsopen_usable():
        return "mount"
    return "fsconfig" if _kernel_at_least(6, 8) else "mount"


def test_mount_uses_the_interface_the_kernel_offers(store, tmp_path):
    mnt = tmp_path / "mnt"
    record = mount(store, "two", mnt)
    try:
        assert record["api"] == _expected_api()
        assert (mnt / "shared").read_bytes() == b"top" and sorted(os.listdir(mnt)) == ["base", "shared", "top"]
    finally:
        umount(store, mnt)
    assert not os.path.ismount(mnt)


def test_many_layers(store, tmp_path):
    """With fsconfig: 70 layers mount.  With mount(2) only: a clear error, nothing left mounted."""
    mnt = tmp_path / "mnt"
    if _expected_api() == "fsconfig":
        record = mount(store, "many", mnt)
        try:
            assert record["api"] == "fsconfig"
            assert (mnt / "shared").read_bytes() == b"top is 69" and len(os.listdir(mnt)) == 71
        finally:
            umount(store, mnt)
    else:
        with pytest.raises(LaminaError, match=r"more than mount\(2\) accepts"):
            mount(store, "many", mnt)
        assert not os.path.ismount(mnt)
        assert subprocess.run(["findmnt", str(mnt)], capture_output=True).returncode != 0


def _opaque_image_store(tmp_path):
    from everypath import write_image
    from tarbuild import Tar
    low = Tar().dir("d").file("d/old", b"o\n")
    up = Tar().opaque("d").file("d/new", b"n\n")
    layout = write_image(tmp_path / "opaque-layout", [low.bytes(), up.bytes()])
    store = Store(tmp_path / "opaque-store")
    load_layout(store, layout, "img", "img:1")
    return store


def _mounted_names(store, mnt):
    mount(store, "img:1", mnt)
    try:
        return sorted(os.listdir(mnt / "d"))
    finally:
        umount(store, mnt)


def test_the_marker_kind_is_the_snapshots_not_its_directorys_owner(tmp_path):
    """Root's snapshots mark opaque dirs with trusted.overlay.*; a snapshot directory chowned
    since (a store handed over, restored from a backup) does not change that.  On e77a40d the
    mount guessed the kind from that owner: it mounted with userxattr and d/old showed through
    the opaque d/ (or, with one snapshot chowned, refused the image as mixed)."""
    require_root()
    store = _opaque_image_store(tmp_path)
    image = store.resolve("img:1")
    snaps = [store.paths.snapshot(c) for c in image.chain_ids]
    os.chown(snaps[-1], 65534, 65534)  # one of them: "mixed" by owner
    assert _mounted_names(store, tmp_path / "mnt1") == ["new"]
    for s in snaps:
        os.chown(s, 65534, 65534)
    assert _mounted_names(store, tmp_path / "mnt2") == ["new"]


def test_snapshots_from_before_the_marker_kind_was_kept_still_mount(tmp_path):
    """A store whose meta.json files have no "markers": the owner of each snapshot's
    directory still says it."""
    import json
    require_root()
    store = _opaque_image_store(tmp_path)
    for c in store.resolve("img:1").chain_ids:
        meta_path = store.paths.snapshot(c) / "meta.json"
        meta = json.loads(meta_path.read_text())
        assert meta.pop("markers") == "trusted"
        meta_path.write_text(json.dumps(meta))
    assert _mounted_names(store, tmp_path / "mnt") == ["new"]


# --- set-user-ID files of a mounted image -----------------------------------------------------------------

def _setid_image_store(tmp_path):
    """An image whose bin/id is a setuid-root copy of the host's id(1) and bin/gid a setgid-root one:
    run from a mount that honours the bits, they report euid / egid 0 to any user."""
    from everypath import write_image
    from tarbuild import Tar
    with open("/usr/bin/id", "rb") as f:
        prog = f.read()
    layer = Tar().dir("bin").file("bin/id", prog, mode=0o4755).file("bin/gid", prog, mode=0o2755)
    layout = write_image(tmp_path / "setid-layout", [layer.bytes()])
    store = Store(tmp_path / "setid-store")
    load_layout(store, layout, "img", "img:1")
    return store


def _ids_as_nobody(mnt):
    """(effective uid, effective gid) that bin/id and bin/gid of the mount run with, started by nobody."""
    drop = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    uid = subprocess.run(drop + [os.path.join(mnt, "bin/id"), "-u"], capture_output=True, text=True, check=True)
    gid = subprocess.run(drop + [os.path.join(mnt, "bin/gid"), "-g"], capture_output=True, text=True, check=True)
    return int(uid.stdout), int(gid.stdout)


@pytest.mark.parametrize("rw", [False, True], ids=["ro", "rw"])
def test_setuid_files_of_a_mounted_image_give_no_privilege(tmp_path, rw):
    """A hostile image mounted at a host path must not hand its setuid-root files to local users:
    the mount is nosuid (and nodev) unless --suid asks otherwise.  Before, lamina mount was nodev
    only and nobody ran bin/id with euid 0."""
    from layerkit import world_tmpdir
    require_root()
    store = _setid_image_store(tmp_path)
    base = world_tmpdir()  # pytest's tmp is 0700: nobody could not reach a mount inside it
    try:
        mnt = os.path.join(base, "mnt")
        record = mount(store, "img:1", mnt, rw=rw)
        try:
            assert os.stat(os.path.join(mnt, "bin/id")).st_mode & 0o7777 == 0o4755  # the bit is there, inert
            assert _ids_as_nobody(mnt) == (65534, 65534)
            assert not record["suid"]
        finally:
            umount(store, mnt)
        # the opt-in, and proof that this test sees the bits work when a mount honours them
        mount(store, "img:1", mnt, rw=rw, suid=True)
        try:
            assert _ids_as_nobody(mnt) == (0, 0)
            listing = subprocess.run([sys.executable, "-m", "lamina", "--root", str(store.root), "mount",
                                      "--format", "{{.Target}} {{.Mode}}"], capture_output=True, text=True, check=True)
            assert listing.stdout == f"{mnt} {'rw' if rw else 'ro'},suid\n"
        finally:
            umount(store, mnt)
    finally:
        os.rmdir(os.path.join(base, "mnt"))
        os.rmdir(base)


def test_setuid_files_give_no_privilege_through_mount2(tmp_path):
    """The mount(2) fallback (kernels without fsconfig lowerdir+) sets the same nosuid."""
    from layerkit import world_tmpdir
    from lamina.store.mounts import _mount_legacy
    require_root()
    store = _setid_image_store(tmp_path)
    lowers = [os.fspath(p) for p in store.snapshots_for(store.resolve("img:1"))] + [os.fspath(tmp_path / "empty")]
    os.mkdir(tmp_path / "empty")
    base = world_tmpdir()
    mnt = os.path.join(base, "mnt")
    os.mkdir(mnt)
    try:
        for suid, expected in ((False, (65534, 65534)), (True, (0, 0))):
            fd = os.open(mnt, os.O_PATH | os.O_DIRECTORY)
            try:
                _mount_legacy(lowers, None, None, fd, readonly=True, suid=suid)
            finally:
                os.close(fd)
            try:
                assert _ids_as_nobody(mnt) == expected
            finally:
                subprocess.run(["umount", mnt], check=True)
    finally:
        os.rmdir(mnt)
        os.rmdir(base)


@pytest.mark.parametrize("api", ["first-choice", "mount2"])
def test_the_mount_goes_on_the_directory_held_not_on_a_path_swapped_meanwhile(tmp_path, api):
    """Root mounting into a directory another user can write: that user may swap a symlink into
    the path between lamina's checks and the mount (mnt -> /etc).  The mount goes on the
    directory lamina opened and checked, through its fd, whatever the path says by then.
    "first-choice" is what mount() calls: fsconfig, or mount(2) where there is none (qemu-user)."""
    from lamina.store.mounts import _mount_legacy, _mount_on
    require_root()
    store = _setid_image_store(tmp_path)
    lowers = [os.fspath(p) for p in store.snapshots_for(store.resolve("img:1"))] + [os.fspath(tmp_path / "empty")]
    os.mkdir(tmp_path / "empty")
    mnt, moved, victim = tmp_path / "mnt", tmp_path / "mnt.moved", tmp_path / "victim"
    mnt.mkdir()
    victim.mkdir()
    fd = os.open(mnt, os.O_PATH | os.O_DIRECTORY)
    try:
        os.rename(mnt, moved)
        os.symlink(victim, mnt)
        (_mount_on if api == "first-choice" else _mount_legacy)(lowers, None, None, fd, readonly=True)
    finally:
        os.close(fd)
    try:
        assert not os.path.ismount(victim) and os.listdir(victim) == []
        assert os.path.ismount(moved) and os.listdir(moved) == ["bin"]
    finally:
        subprocess.run(["umount", moved], check=True)


def test_a_mount_target_whose_path_went_through_a_symlink_is_refused(tmp_path):
    """What mount() holds must be at the path it resolved: a path that reaches its directory
    through a symlink (one swapped in after the resolution) is refused, naming it."""
    from lamina.errors import MaterializeError
    from lamina.store.mounts import _pin_target
    (tmp_path / "real" / "mnt").mkdir(parents=True)
    os.symlink(tmp_path / "real", tmp_path / "link")
    with pytest.raises(MaterializeError, match="changed while it was being mounted"):
        _pin_target(os.fspath(tmp_path / "link" / "mnt"))
    os.close(_pin_target(os.fspath(tmp_path / "real" / "mnt")))


@pytest.mark.parametrize("layers_by", ["fd", "/proc/self/fd"])
def test_a_store_whose_snapshot_paths_pass_255_bytes_mounts_many_layers(tmp_path, monkeypatch, layers_by):
    """fsconfig copies a string of at most 255 bytes: a store deep enough that
    ROOT/snapshots/<chainID>/fs passes that had every lowerdir+ refused (EINVAL), and the fall
    back to mount(2) refused 70 layers "for want of fsconfig lowerdir+", which the kernel has.
    Such a directory now goes by an fd (FSCONFIG_SET_FD, Linux 6.13), or, where overlayfs
    takes no fd for it (6.8 to 6.12; played here by making that call one the kernel refuses
    with EINVAL), by /proc/self/fd/N.  A rw mount's upper and work dirs, under ROOT too, alike."""
    import lamina.store.mounts as m
    require_root()
    if layers_by == "/proc/self/fd":
        monkeypatch.setattr(m, "_FSCONFIG_SET_FD", m._FSCONFIG_SET_FLAG)   # a flag with an fd: EINVAL
    lay = ob.Layout(tmp_path / "layout")
    layers = [{f"l{i:02d}": b"x", "shared": f"top is {i}".encode()} for i in range(70)]
    lay.add(lay.image(layers), "many")
    store = Store(tmp_path / ("r" * 100) / ("s" * 100) / "root")
    load_layout(store, lay.root, "many", "many")
    chain = store.resolve("many").chain_ids[0]
    assert len(os.fsencode(os.path.join(store.snapshot_dir(chain), "fs"))) > 255
    if _expected_api() != "fsconfig":   # mount(2) alone: one page of options, as test_many_layers
        with pytest.raises(LaminaError, match=r"more than mount\(2\) accepts"):
            mount(store, "many", tmp_path / "mnt")
        return
    for rw in (False, True):
        mnt = tmp_path / f"mnt-{rw}"
        record = mount(store, "many", mnt, rw=rw)
        try:
            assert record["api"] == "fsconfig"
            assert (mnt / "shared").read_bytes() == b"top is 69" and len(os.listdir(mnt)) == 71
            if rw:
                (mnt / "written").write_bytes(b"w")
                assert (mnt / "written").read_bytes() == b"w"
        finally:
            umount(store, mnt)
    assert store.fsck().ok


@pytest.mark.parametrize("kernel", ["as-it-is", "without-fsopen"])
def test_the_cli_mounts_200_layers_under_a_long_root_or_names_the_limit(tmp_path, kernel):
    """``lamina --root LONG mount`` of an image of 200 layers: overlay options of some 80 KiB
    through mount(2), which copies one page.  With fsconfig (Linux >= 6.8) each layer is one
    ``lowerdir+`` (each path here past fsconfig's 255 bytes: by fd), and the mount shows the
    top layer's files; on a kernel without fsopen (played by strace's fault injection: ENOSYS,
    as qemu-user and old kernels answer) the error names the limit and nothing is mounted."""
    from conftest import EMULATION, require_tool
    from storekit import lamina
    require_root()
    lay = ob.Layout(tmp_path / "layout")
    lay.add(lay.image([{f"f{i:03d}": b"%d" % i, "shared": b"%d" % i} for i in range(200)]), "deep")
    root = tmp_path.joinpath(*["r" * 60] * 4, "root")
    lamina(root, "copy", f"oci:{lay.root}:deep", "deep:1")
    chain = Store(root).resolve("deep:1").chain_ids[0]
    assert len(os.fsencode(os.path.join(Store(root).snapshot_dir(chain), "fs"))) > 255
    mnt = tmp_path / "mnt"
    prefix = []
    if kernel == "without-fsopen" and not EMULATION:  # (qemu-user answers fsopen ENOSYS itself, and has no ptrace)
        require_tool("strace")
        prefix = ["strace", "-f", "-qq", "-o", os.devnull, "-e", "trace=fsopen", "-e", "inject=fsopen:error=ENOSYS"]
    proc = subprocess.run([*prefix, sys.executable, "-m", "lamina", "--root", root, "mount", "deep:1", mnt],
                          capture_output=True, text=True)
    if kernel == "as-it-is" and _expected_api() == "fsconfig":
        try:
            assert proc.returncode == 0, proc.stderr
            assert len(os.listdir(mnt)) == 201 and (mnt / "shared").read_bytes() == b"199"
        finally:
            lamina(root, "umount", mnt)
    else:
        assert proc.returncode == 1, proc.stderr
        assert proc.stderr.startswith("lamina: error: 200 layers make overlay options of "), proc.stderr
        assert "more than mount(2) accepts, and this kernel lacks fsconfig lowerdir+ (Linux 6.8)" in proc.stderr
        assert not os.path.ismount(mnt)
    assert not os.path.ismount(mnt) and Store(root).fsck().ok
