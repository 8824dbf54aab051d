"""Another local user racing lamina in a directory that user can write.

An image's directory of mode 0777 is writable by every local user once its layer's fixups set
that mode, so while the layers above it are written over it (the dir format: one tree for all
layers) anybody may swap an entry lamina has just made for a symlink.  A call that acts on an
entry by its name and follows a symlink there (fchmodat(2) without AT_SYMLINK_NOFOLLOW) then
changes a file of the host.  strace holds the call back, so that the swap lands in the window
every time rather than once in a million runs.

Only the dir format has such a window: an overlay layer, a store snapshot and a flatten make
their directories 0700 (at most 0755) until their entries are written (see extract.pyx's
_mkdir and flatten.pyx's _dir), which test_every_path.py's trees show as they end.
"""
from __future__ import annotations

import glob
import os
import stat
import subprocess
import time

import pytest

from conftest import require_tool
from everypath import write_image
from storekit import LAMINA
from tarbuild import Tar


def _race(call, delay, argv, pattern, swap, ready=os.path.lexists):
    """Run ``lamina argv`` under strace holding ``call`` back (``delay``: strace's
    ``delay_enter=``/``delay_exit=`` microseconds), and once ``pattern`` names a path that
    ``ready`` accepts, ``swap(path)`` as the other user would.  (swapped, exit status, stderr)."""
    proc = subprocess.Popen(["strace", "-f", "-qq", "-o", "/dev/null", "-e", f"trace={call}",
                             "-e", f"inject={call}:{delay}", "--", *LAMINA, *argv],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    swapped = False
    try:
        end = time.monotonic() + 60
        while not swapped and proc.poll() is None and time.monotonic() < end:
            for p in glob.glob(pattern, include_hidden=True):   # a staging dir may be a dot-name
                try:
                    if ready(p):
                        swap(p)
                        swapped = True
                        break
                except FileNotFoundError:
                    pass
            time.sleep(0.001)
    finally:
        _, err = proc.communicate(timeout=120)
    return swapped, proc.returncode, err


def test_a_node_swapped_for_a_symlink_before_its_chmod_leaves_the_host_file_alone(tmp_path):
    """The dir format made a FIFO or device node with mknodat, then set its mode with
    fchmodat(pfd, name, mode, 0), which follows a symlink: in a 0777 directory of a lower
    layer, a user who swapped the node for a link to /etc/shadow between the two had lamina
    (root) chmod /etc/shadow to the node's mode (here 0666)."""
    require_tool("strace")
    victim = tmp_path / "victim"
    victim.write_text("secret\n")
    victim.chmod(0o600)
    layout = write_image(tmp_path / "img", [Tar().dir("pub", mode=0o777).bytes(),
                                            Tar().fifo("pub/p", mode=0o666).bytes()])
    dest = tmp_path / "dest"

    def swap(p):   # as any user may in a 0777 directory
        os.unlink(p)
        os.symlink(victim, p)

    swapped, rc, err = _race("fchmodat", "delay_enter=300000", ["unpack", f"oci:{layout}:img", str(dest)],
                             f"{dest}.lamina-tmp-*/pub/p", swap, ready=lambda p: stat.S_ISFIFO(os.lstat(p).st_mode))
    assert swapped, f"the FIFO was never seen: {err}"
    # the chmod, held back, reaches the FIFO lamina made (pinned before the swap), never the link
    assert stat.S_IMODE(os.stat(victim).st_mode) == 0o600, "lamina chmod'ed the host file through the symlink"
    # a swap that lands before _chmod_at's O_PATH open pins the node (only its fchmodat is held
    # back: 2 runs in 12 here) is seen by that open, which refuses the link: safe, and an error
    assert rc == 0 or (rc == 1 and "entry 'pub/p': chmod failed: Too many levels of symbolic links" in err), err


def _root_mode_tar(mode):
    """A layer whose "./" entry gives the rootfs ``mode``, and one file."""
    return Tar().dir("./", mode=mode).file("hello", b"image\n").bytes()


def test_dest_swapped_for_a_symlink_while_filled_in_place_leaves_the_target_alone(tmp_path):
    """An existing empty DEST whose parent the user cannot write (another user's directory) is
    filled in place: the entries move up from DEST/.lamina-tmp-*, then DEST gets the image
    root's mode, owner and xattrs.  That went by DEST's path (rename, chmod, setxattr, rmdir,
    utime), so the parent's owner, swapping DEST for a symlink to a directory of the user's
    (~/.ssh) once the entries had moved, had lamina chmod it to the image root's mode (0777
    here) and then, the staging dir not being found there, "take back" the moved entries by
    removing the ones of the same names in it."""
    import threading
    from layerkit import rmtree, run_as_nobody, world_tmpdir
    require_tool("strace")
    world = world_tmpdir()   # root's: nobody cannot write it, so DEST is filled in place
    try:
        victim = os.path.join(world, "victim")   # nobody's own private directory
        os.mkdir(victim, 0o700)
        with open(os.path.join(victim, "hello"), "w") as f:
            f.write("mine\n")
        dest = os.path.join(world, "dest")
        os.mkdir(dest, 0o755)
        for p in (victim, os.path.join(victim, "hello"), dest):
            os.chown(p, 65534, 65534)
        layout = write_image(os.path.join(world, "img"), [_root_mode_tar(0o777)])
        swapped = []

        def swap():   # as the parent's owner: once the entries moved up, DEST becomes a symlink
            end = time.monotonic() + 60
            while time.monotonic() < end and not swapped:
                if os.path.lexists(os.path.join(dest, "hello")):
                    os.rename(dest, os.path.join(world, "moved"))
                    os.symlink(victim, dest)
                    swapped.append(True)
                time.sleep(0.001)

        t = threading.Thread(target=swap)
        t.start()
        try:
            proc = run_as_nobody("lamina.unpack(sys.argv[1], sys.argv[2])", f"oci:{layout}:img", dest,
                                 prefix=["strace", "-f", "-qq", "-o", "/dev/null", "-e", "trace=chmod,fchmodat",
                                         "-e", "inject=chmod,fchmodat:delay_enter=300000"])
        finally:
            swapped.append(False)  # stops the thread if it never swapped
            t.join()
        assert swapped[0] is True, f"the entries never moved up: {proc.stderr}"
        assert stat.S_IMODE(os.stat(victim).st_mode) == 0o700, "DEST's mode went through the symlink"
        with open(os.path.join(victim, "hello")) as f:
            assert f.read() == "mine\n", "an entry of the user's own was removed through the symlink"
        # the image went where the directory lamina held went, whole
        assert proc.returncode == 0, proc.stderr
        moved = os.path.join(world, "moved")
        assert stat.S_IMODE(os.stat(moved).st_mode) == 0o777 and os.listdir(moved) == ["hello"]
    finally:
        rmtree(world)


def test_apply_atomic_staging_swapped_for_a_symlink_before_it_is_opened_writes_nothing_there(tmp_path):
    """apply --atomic stages the layer in a sibling of DEST; apply_layer refuses a DEST that is a
    symlink, then the extractor opened it by its path, following a symlink there: whoever can
    write DEST's parent (a group's shared directory) and swapped the staging dir for a link to
    /etc in between had the layer written into /etc.  strace holds the staging dir's mkdir back
    at its exit, where the swap lands."""
    require_tool("strace")
    shared = tmp_path / "shared"
    shared.mkdir()
    victim = tmp_path / "victim"
    victim.mkdir()
    layer = tmp_path / "layer.tar"
    layer.write_bytes(Tar().file("planted", b"image\n").bytes())
    dest = shared / "dest"

    def swap(p):
        os.rename(p, tmp_path / "aside")
        os.symlink(victim, p)

    swapped, rc, err = _race("mkdir,mkdirat", "delay_exit=300000", ["apply", "--atomic", str(layer), str(dest)],
                             f"{shared}/*dest.lamina-*", swap,
                             ready=lambda p: os.path.isdir(p) and not os.path.islink(p))
    assert swapped, f"no staging dir was seen: {err}"
    assert os.listdir(victim) == [], "the layer was written through the swapped-in symlink"
    assert rc == 1 and "replaced by someone else" in err, err
    assert not [n for n in os.listdir(shared) if os.path.islink(shared / n)], "the swapped-in symlink was left"


@pytest.mark.parametrize("existing", [False, True], ids=["new-dest", "existing-dest"])
def test_apply_atomic_staging_swapped_before_the_commit_never_becomes_dest(tmp_path, existing):
    """apply --atomic renamed (or exchanged) its staging dir onto DEST by their names: whoever can
    write DEST's parent, swapping the staging dir for a directory of theirs once the layer was in
    it, had DEST be their directory (exit 0), the image sit where they had moved it and, for an
    existing DEST, the user's tree deleted.  The staging dir is held by an fd now and what lands
    on DEST is checked to be it: DEST stays as it was, and the apply is refused."""
    require_tool("strace")
    shared = tmp_path / "shared"
    shared.mkdir()
    dest = shared / "dest"
    if existing:
        dest.mkdir()
        (dest / "old").write_text("user's\n")
    before = os.stat(dest).st_ino if existing else None
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "planted").write_text("theirs\n")
    aside = tmp_path / "aside"
    layer = tmp_path / "layer.tar"
    layer.write_bytes(Tar().file("f", b"image\n").bytes())

    def swap(p):   # as the parent's owner may, between the layer and the commit
        staging = os.path.dirname(p)
        os.rename(staging, aside)
        os.rename(theirs, staging)

    swapped, rc, err = _race("rename,renameat,renameat2", "delay_enter=1000000",
                             ["apply", "--atomic", str(layer), str(dest)], f"{shared}/*dest.lamina-*/f", swap)
    assert swapped, f"the layer's file was never seen: {err}"
    if existing:
        assert sorted(os.listdir(dest)) == ["old"] and os.stat(dest).st_ino == before, \
            f"DEST is not the user's tree: {os.listdir(dest)}"
    else:
        assert not os.path.lexists(dest), f"DEST is their directory: {os.listdir(dest)}"
    assert rc == 1 and "replaced by someone else" in err, (rc, err)
    assert glob.glob(f"{glob.escape(str(shared))}/*/planted"), "their directory was not put back"
    assert os.listdir(aside) == [], "the staged tree was left where the other user had moved it"


def test_apply_atomic_removes_the_old_tree_by_its_fd_not_by_the_name_it_was_moved_to(tmp_path):
    """Once apply --atomic has exchanged its staging dir with DEST, the old tree sits at the
    staging name and is removed.  It was removed by that name, through DEST's parent: whoever can
    write the parent, moving another directory there meanwhile (here one they cannot write
    themselves), had lamina delete its contents as root.  The old tree is removed through the fd
    lamina opened DEST by, and the name only if it is still that directory."""
    require_tool("strace")
    shared = tmp_path / "shared"
    shared.mkdir()
    dest = shared / "dest"
    dest.mkdir()
    (dest / "old").write_text("user's\n")
    victim = shared / "victim"
    victim.mkdir()
    (victim / "keep").write_text("not lamina's\n")
    layer = tmp_path / "layer.tar"
    layer.write_bytes(Tar().file("f", b"image\n").bytes())

    def exchanged(p):
        return os.path.isdir(p) and os.path.exists(dest / "f") and not os.path.exists(os.path.join(p, "f"))

    def swap(p):   # the old tree, now at the staging name, for the other directory
        os.rename(p, tmp_path / "old-tree")
        os.rename(victim, p)

    swapped, rc, err = _race("rename,renameat,renameat2", "delay_exit=1000000",
                             ["apply", "--atomic", str(layer), str(dest)], f"{shared}/*dest.lamina-*",
                             swap, ready=exchanged)
    assert swapped, f"the exchange was never seen: {err}"
    kept = glob.glob(f"{glob.escape(str(shared))}/*/keep")
    assert kept and open(kept[0]).read() == "not lamina's\n", "lamina removed a directory that was not the old tree"
    assert rc == 0, err
    assert sorted(os.listdir(dest)) == ["f", "old"], os.listdir(dest)
    assert os.listdir(tmp_path / "old-tree") == [], "the old tree was not removed"


def test_overlay_lowers_through_a_swapped_staging_dir_copy_up_nothing_of_the_host(tmp_path):
    """The overlay format's layers opened the layers below them by path, through the staging
    dir beside DEST, when they first needed them (a hardlink to a lower file is copied up).
    Whoever can write DEST's parent, swapping the staging dir meanwhile for a link to a
    directory of theirs whose layers/0 leads to a host directory, had that directory read as
    the lower layer: the host's file was copied into the image.  strace holds layer 0 back
    (its FIFO's mknodat) while layer 1 waits on it."""
    require_tool("strace")
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "f").write_text("secret\n")
    theirs = tmp_path / "theirs" / "layers"
    theirs.mkdir(parents=True)
    os.symlink(victim, theirs / "0")
    (theirs / "1").mkdir()
    layout = write_image(tmp_path / "img", [Tar().file("f", b"image\n").fifo("p").bytes(),
                                            Tar().hardlink("h", "f").bytes()])
    dest = tmp_path / "dest"

    def swap(f):
        staging = f[:-len("/layers/0/f")]
        time.sleep(0.3)   # layer 1 is at its hardlink, waiting for layer 0
        os.rename(staging, tmp_path / "aside")
        os.symlink(theirs.parent, staging)

    swapped, rc, err = _race("mknodat", "delay_enter=1500000", ["unpack", "--overlay", f"oci:{layout}:img", str(dest)],
                             f"{dest}.lamina-tmp-*/layers/0/f", swap)
    assert swapped, f"layer 0 was never seen: {err}"
    for top, _, files in os.walk(tmp_path):
        for n in files:
            p = os.path.join(top, n)
            if p != os.fspath(victim / "f") and stat.S_ISREG(os.lstat(p).st_mode):
                with open(p, "rb") as fh:
                    assert b"secret" not in fh.read(), f"the host's file was copied up into {p}"
    # and their link is never made DEST (see test_a_staging_dir_swapped_before_the_commit_never_becomes_dest)
    assert rc == 1 and "replaced by someone else" in err, err
    assert not os.path.lexists(dest) and os.listdir(tmp_path / "aside") == [], err
    assert (victim / "f").read_text() == "secret\n"


def test_dir_format_layers_through_a_swapped_staging_dir_write_nothing_into_theirs(tmp_path):
    """The dir format opened the staging dir beside DEST by its path for each layer: whoever
    can write DEST's parent, swapping it between two layers for a directory of theirs, had
    lamina (root) write the layers above into a tree they own and may rearrange as it is
    written.  The layers go by the staging dir's fd now, as the overlay format's do: they land
    in the directory lamina made, wherever it was moved.  strace holds layer 0 back (its FIFO's
    mknodat) while the swap is made."""
    require_tool("strace")
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    layout = write_image(tmp_path / "img", [Tar().file("f", b"image\n").fifo("p").bytes(),
                                            Tar().file("g", b"upper\n").bytes()])
    dest = tmp_path / "dest"

    def swap(p):
        staging = p[:-len("/f")]
        os.rename(staging, tmp_path / "aside")
        os.rename(theirs, staging)

    swapped, rc, err = _race("mknodat", "delay_enter=1500000", ["unpack", f"oci:{layout}:img", str(dest)],
                             f"{dest}.lamina-tmp-*/f", swap)
    assert swapped, f"layer 0 was never seen: {err}"
    # their directory got nothing of the image; it stays where they put it, and is not made DEST
    # (see test_a_staging_dir_swapped_before_the_commit_never_becomes_dest), so the unpack fails
    [staging] = glob.glob(f"{glob.escape(str(dest))}.lamina-tmp-*")
    assert os.listdir(staging) == [], f"layer 1 was written into the swapped-in directory: {os.listdir(staging)}"
    assert not os.path.lexists(dest), err
    assert rc == 1 and "replaced by someone else" in err, err
    assert os.listdir(tmp_path / "aside") == [], "the image was left where the other user had moved it"


@pytest.mark.parametrize("fmt", [[], ["--overlay"]], ids=["dir", "overlay"])
def test_a_newborn_staging_dir_swapped_for_a_symlink_is_never_pinned(tmp_path, fmt):
    """The staging dir is made by mkdtemp and then opened by its name, the fd held for its
    lock and for every layer (see _apply_flat; 59afba6 for the overlay format).  That open
    followed a symlink: whoever can write DEST's parent, swapping the new dir for a link to a
    directory of the user's in between, had lamina (root) chmod that directory 0755 and the
    overlay format write its layers/ there.  strace holds mkdir back at its exit."""
    require_tool("strace")
    victim = tmp_path / "victim"
    victim.mkdir(mode=0o700)
    layout = write_image(tmp_path / "img", [Tar().file("f", b"image\n").bytes()])
    dest = tmp_path / "dest"

    def swap(p):
        os.rename(p, tmp_path / "aside")
        os.symlink(victim, p)

    swapped, rc, err = _race("mkdir,mkdirat", "delay_exit=300000", ["unpack", *fmt, f"oci:{layout}:img", str(dest)],
                             f"{dest}.lamina-new-*", swap, ready=lambda p: os.path.isdir(p) and not os.path.islink(p))
    assert swapped, f"no new staging dir was seen: {err}"
    assert os.listdir(victim) == [], "the image was written through the swapped-in symlink"
    assert stat.S_IMODE(os.stat(victim).st_mode) == 0o700, "the user's directory was chmod'ed through the symlink"
    assert rc == 1, err
    # said as what happened (it was "DEST.lamina-new-*: Not a directory"), and their symlink at
    # the name lamina chose is not left behind as if an unpack had been killed there
    assert "replaced by someone else" in err, err
    assert glob.glob(f"{glob.escape(str(dest))}.lamina-*") == [], os.listdir(tmp_path)
    assert os.path.isdir(victim) and not os.path.islink(victim)


def _swap_staging_for_theirs(tmp_path, fmt, dest):
    """unpack under strace holding every rename back, swapping the staging dir for a directory
    of another user's (with a file in it) once the image's file is in it: (rc, stderr, aside,
    theirs' file)."""
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "planted").write_text("theirs\n")
    aside = tmp_path / "aside"
    layout = write_image(tmp_path / "img", [Tar().file("f", b"image\n").bytes()])
    inner = "/layers/0/f" if fmt else "/f"

    def swap(p):   # as the parent's owner may, between the last layer and the commit
        staging = p[:-len(inner)]
        os.rename(staging, aside)
        os.rename(theirs, staging)

    swapped, rc, err = _race("rename,renameat,renameat2", "delay_enter=1000000",
                             ["unpack", *fmt, f"oci:{layout}:img", str(dest)], f"{dest}.lamina-tmp-*{inner}", swap)
    assert swapped, f"the image's file was never seen: {err}"
    planted = glob.glob(f"{glob.escape(str(tmp_path))}/*/planted")
    return rc, err, aside, planted


@pytest.mark.parametrize("fmt", [[], ["--overlay"]], ids=["dir", "overlay"])
def test_a_staging_dir_swapped_before_the_commit_never_becomes_dest(tmp_path, fmt):
    """_commit renamed the staging dir onto DEST by its name: whoever can write DEST's parent,
    swapping it for a directory of theirs before that rename, had DEST be their directory (exit
    0) and the image sit where they had moved it.  The rename goes by the parent's fd now and
    what lands on DEST is checked to be the directory lamina made: theirs goes back where it
    was, the unpack is refused, and nothing of the image is left."""
    require_tool("strace")
    dest = tmp_path / "dest"
    rc, err, aside, planted = _swap_staging_for_theirs(tmp_path, fmt, dest)
    assert not os.path.lexists(dest), f"DEST is their directory: {os.listdir(dest)}"
    assert rc == 1, err
    assert "replaced by someone else" in err, err
    assert [os.path.basename(os.path.dirname(p)).startswith("dest.lamina-tmp-") for p in planted] == [True], planted
    assert os.listdir(aside) == [], "the image was left where the other user had moved it"


@pytest.mark.parametrize("fmt", [[], ["--overlay"]], ids=["dir", "overlay"])
def test_a_staging_dir_swapped_before_the_commit_onto_an_empty_dest_leaves_dest_as_it_was(tmp_path, fmt):
    """As above with DEST an empty directory: rename(2) replaced it with theirs.  The commit
    exchanges the two (renameat2 RENAME_EXCHANGE), so that a staging dir found not to be ours
    is exchanged back: DEST is the user's empty directory again."""
    require_tool("strace")
    dest = tmp_path / "dest"
    dest.mkdir()
    before = os.stat(dest).st_ino
    rc, err, aside, planted = _swap_staging_for_theirs(tmp_path, fmt, dest)
    assert os.listdir(dest) == [] and os.stat(dest).st_ino == before, f"DEST is not the user's: {os.listdir(dest)}"
    assert rc == 1, err
    assert "replaced by someone else" in err, err
    assert os.listdir(aside) == [], "the image was left where the other user had moved it"


def test_dest_filled_by_someone_else_before_the_commit_is_left_alone(tmp_path):
    """rename(2) refuses to replace a directory that is not empty; the exchange the commit makes
    instead does not, so what was on DEST must be put back: DEST emptied for a directory with
    a file in it while the image is unpacked keeps that file, and the unpack is refused."""
    require_tool("strace")
    dest = tmp_path / "dest"
    dest.mkdir()
    layout = write_image(tmp_path / "img", [Tar().file("f", b"image\n").bytes()])

    def swap(p):
        (dest / "theirs").write_text("theirs\n")

    swapped, rc, err = _race("rename,renameat,renameat2", "delay_enter=1000000",
                             ["unpack", f"oci:{layout}:img", str(dest)], f"{dest}.lamina-tmp-*/f", swap)
    assert swapped, err
    assert os.listdir(dest) == ["theirs"], os.listdir(dest)
    assert rc == 1 and "not empty" in err, err
    assert [n for n in os.listdir(tmp_path) if n.startswith("dest.")] == [], os.listdir(tmp_path)
