"""The common entry path releases the GIL for its syscalls (issue 14).

Several layers extract in parallel threads beside a Python reader thread, so an
extractor that holds the GIL through each entry's openat/mkdirat/symlinkat/
futimens/close stalls all of them.  Payload writes always released it; this
checks the entries that write no payload (empty files, directories, symlinks,
hardlinks, whiteouts), which the old extractor made with the GIL held from start
to end; and that the trees they make are still umoci's and GNU tar's.

How it is observed, without timing: the switch interval is made so long that
the interpreter never forces a switch, so a second thread only runs when the
extracting thread gives the GIL up by itself.  The old code never did during
feed() for such entries, so the second thread's counter could not move at all;
the new one lets go once per entry, and the second thread, waiting on the GIL,
gets it on some of those thousands of chances.
"""
import functools
import json
import os
import sys
import tarfile
import threading
import time

import pytest

from conftest import require_root, run
from layerkit import apply, gnu_tar_extract, inflate_layer, read_layout, write
from lamina._extract import Extractor
from tarbuild import tarfile_bytes, ti
from treecmp import assert_same, snapshot

ENTRIES = 3000  # directories, each with an empty file and a symlink: 9000 entries


@functools.lru_cache(maxsize=1)  # both tests read the same bytes: built once
def _layer():
    members = []
    for i in range(ENTRIES):
        d = f"d{i:05d}"
        members.append((ti(d, tarfile.DIRTYPE, mode=0o755), None))
        members.append((ti(f"{d}/empty", mode=0o644), b""))
        members.append((ti(f"{d}/link", tarfile.SYMTYPE, linkname="empty"), None))
    return tarfile_bytes(members, fmt=tarfile.USTAR_FORMAT)


def _runs_beside(fn):
    """How many times a pure-Python thread ran while ``fn()`` ran in this thread."""
    count = 0
    stop = False

    def spin():
        nonlocal count
        while not stop:
            count += 1
            time.sleep(0.001)  # gives the GIL up long enough for the main thread to take it back

    old = sys.getswitchinterval()
    sys.setswitchinterval(1000.0)  # no forced switch: only a voluntary release lets spin() run
    t = threading.Thread(target=spin, daemon=True)
    try:
        t.start()
        while count == 0:
            time.sleep(0.001)
        before = count
        fn()
        during = count - before
    finally:
        stop = True
        t.join()
        sys.setswitchinterval(old)
    return during


def _extract(root, *chunks, beside=None, **kw):
    """One layer fed in ``chunks`` into ``root``: its stats, or with ``beside`` (e.g.
    _runs_beside, given the last feed to run) (stats, what ``beside`` returned)."""
    ex = Extractor(str(root), **kw)
    try:
        for chunk in chunks[:-1]:
            ex.feed(chunk)
        last = lambda: ex.feed(chunks[-1])  # noqa: E731
        seen = beside(last) if beside else last()
        stats = ex.finish()
    finally:
        ex.close()
    return (stats, seen) if beside else stats


def test_entries_without_payload_release_the_gil(tmp_path):
    data = _layer()
    root = tmp_path / "root"
    root.mkdir()
    stats, during = _extract(root, data, beside=_runs_beside)
    assert stats["entries"] == 3 * ENTRIES
    assert (root / "d00007" / "link").readlink().as_posix() == "empty"
    assert during > 0, "another thread never ran while 9000 entries were created: their syscalls held the GIL"


def test_entries_without_payload_are_counted_as_gil_free(tmp_path):
    """The stat lamina bench shows: entries whose syscalls all ran in one block without the GIL."""
    root = tmp_path / "root"
    root.mkdir()
    stats = _extract(root, _layer())
    assert stats["nogil_entries"] == 3 * ENTRIES


# --- hardlinks and whiteouts ------------------------------------------------

LINKED = 1000  # lower files at the root; the upper layer links to them and whites out as many others


@functools.lru_cache(maxsize=1)
def _link_layers():
    """Both at the root, where the old extractor resolved nothing from the root (a dup)
    and so never let go of the GIL for a hardlink or a whiteout."""
    lower = []
    for i in range(LINKED):
        lower.append((ti(f"f{i:05d}", mode=0o640, uid=7, gid=8), b""))
        lower.append((ti(f"g{i:05d}"), b"gone"))
    upper = []
    for i in range(LINKED):
        upper.append((ti(f"h{i:05d}", tarfile.LNKTYPE, linkname=f"f{i:05d}"), None))
        upper.append((ti(f".wh.g{i:05d}"), b""))
    return (tarfile_bytes(lower, fmt=tarfile.USTAR_FORMAT), tarfile_bytes(upper, fmt=tarfile.USTAR_FORMAT))




def test_hardlinks_and_whiteouts_release_the_gil(tmp_path):
    lower, upper = _link_layers()
    root = tmp_path / "root"
    root.mkdir()
    _extract(root, lower)
    stats, during = _extract(root, upper, beside=_runs_beside)
    assert stats["whiteouts"] == LINKED
    assert os.path.samefile(root / "h00007", root / "f00007") and not (root / "g00007").exists()
    assert during > 0, f"another thread never ran while {LINKED} hardlinks and whiteouts were made: they held the GIL"


def test_hardlinks_and_whiteouts_are_counted_as_gil_free(tmp_path):
    lower, upper = _link_layers()
    root = tmp_path / "root"
    root.mkdir()
    _extract(root, lower)
    stats = _extract(root, upper)
    assert stats["entries"] == 2 * LINKED
    assert stats["nogil_entries"] == 2 * LINKED


# An image made by umoci, whose unpack is the oracle: hardlinks in their target's
# directory and elsewhere, to files of this layer and of the one below, to a symlink;
# whiteouts of files, symlinks and directories (those stay on the general path), in
# directories of either layer, at the root and deep; owners and modes that differ.
DIRS = 40


def _umoci_steps():
    from umoci_images import _fix_times, _md, _w, T0

    def lower(r):
        for d in range(DIRS):
            base = os.path.join(r, "top", f"d{d:03d}")
            _md(base, 0o750 if d % 3 else 0o755, uid=d % 4, gid=d % 5)
            for i in range(8):
                _w(os.path.join(base, f"f{i}"), f"{d}/{i}\n", mode=(0o600, 0o644, 0o4755, 0o640)[i % 4],
                   uid=i % 3, gid=i % 2)
            os.symlink(f"f{d % 8}", os.path.join(base, "sl"))
            _md(os.path.join(base, "sub"))
            _w(os.path.join(base, "sub", "deep"), "deep\n")
            _w(os.path.join(r, f"root{d:03d}"), "at the root\n")
        _fix_times(r, T0 + 1000)

    def upper(r):
        for d in range(DIRS):
            base = os.path.join(r, "top", f"d{d:03d}")
            os.unlink(os.path.join(base, "f1"))                       # file whiteouts
            os.unlink(os.path.join(base, "sl"))                       # symlink whiteouts
            if d % 5 == 0:
                import shutil
                shutil.rmtree(os.path.join(base, "sub"))              # directory whiteouts
            os.unlink(os.path.join(r, f"root{d:03d}"))                # whiteouts at the root
            _w(os.path.join(base, "new"), f"new {d}\n", mode=0o604, uid=3, gid=4)
            os.link(os.path.join(base, "new"), os.path.join(base, "new.same-dir"))
            other = os.path.join(r, "top", f"d{(d + 1) % DIRS:03d}")
            os.link(os.path.join(base, "new"), os.path.join(other, f"from{d:03d}"))
            os.symlink("new", os.path.join(base, "nsl"))
            os.link(os.path.join(base, "nsl"), os.path.join(base, "nsl.hl"), follow_symlinks=False)
        _fix_times(r, T0 + 2000)

    return [lower, upper]


@pytest.fixture(scope="module")
def link_image(tmp_path_factory):
    require_root()
    from umoci_images import build_umoci_image
    return build_umoci_image(str(tmp_path_factory.mktemp("umoci-links")), _umoci_steps())


def _kinds(blob):
    """-> (entries, hardlinks, whiteouts of non-directories, whiteouts of directories, entries
    of the root itself) of a layer."""
    import io
    counts = [0, 0, 0, 0, 0]
    with tarfile.open(fileobj=io.BytesIO(inflate_layer(blob))) as tf:
        members = tf.getmembers()
    dirs = {m.name.rstrip("/") for m in members if m.isdir()}
    for m in members:
        counts[0] += 1
        name = m.name.rstrip("/")
        base = os.path.basename(name)
        if name in (".", ""):
            counts[4] += 1
        elif m.islnk():
            counts[1] += 1
        elif base.startswith(".wh."):
            hidden = os.path.join(os.path.dirname(name), base[4:])
            counts[3 if hidden in dirs or hidden.endswith("sub") else 2] += 1
    return counts


def test_umoci_layer_of_hardlinks_and_whiteouts_runs_gil_free_and_matches_umoci(tmp_path, link_image):
    _, _, layers = read_layout(link_image, "t2")
    dest = tmp_path / "lamina"
    dest.mkdir()
    stats = [apply(blob, dest, format="dir", diff_id=diff_id) for _, diff_id, blob in layers]
    entries, links, file_wh, dir_wh, roots = _kinds(layers[1][2])
    # what umoci wrote: the layer must exercise both paths, or the count below says nothing
    assert links >= 3 * DIRS and file_wh >= 3 * DIRS and dir_wh == DIRS // 5
    assert stats[1].entries == entries
    # every entry but the whiteouts of directories (removed with all they hold, under the GIL)
    # and the root's (its metadata is set on the general path)
    assert stats[1].nogil_entries == entries - dir_wh - roots
    want = str(tmp_path / "umoci")
    run("umoci", "raw", "unpack", "--image", f"{link_image}:t2", want)
    assert_same(snapshot(want), snapshot(dest), labels=("umoci", "lamina"), context="hardlinks and whiteouts")
    a = snapshot(want, dir_mtime=True).filtered(lambda p, e: e.type == "dir")
    b = snapshot(dest, dir_mtime=True).filtered(lambda p, e: e.type == "dir")
    assert_same(a, b, labels=("umoci", "lamina"), context="directory mtimes after whiteouts")


def test_overlay_hardlinks_run_gil_free_and_match_gnu_tar(tmp_path):
    """Overlay format, one layer: its dir is what GNU tar extracts, hardlink groups included."""
    require_root()
    members = []
    for d in range(50):
        members.append((ti(f"d{d:02d}", tarfile.DIRTYPE, mode=0o755), None))
        members.append((ti(f"d{d:02d}/f", mode=0o640, uid=5, gid=6), b"x" * d))
        members.append((ti(f"d{d:02d}/f.same-dir", tarfile.LNKTYPE, linkname=f"d{d:02d}/f"), None))
        members.append((ti(f"d{d:02d}/f.root", tarfile.LNKTYPE, linkname="top"), None))
        if d:
            members.append((ti(f"d{d:02d}/f.up", tarfile.LNKTYPE, linkname=f"d{d - 1:02d}/f"), None))
    members.insert(0, (ti("top", mode=0o600), b"top"))
    data = tarfile_bytes(members, fmt=tarfile.USTAR_FORMAT)
    layer = tmp_path / "layer"
    layer.mkdir()
    st = apply(write(tmp_path / "blob", data), layer, format="overlay", lower_dirs=[])
    assert st.nogil_entries == len(members)
    want = gnu_tar_extract(str(tmp_path / "blob"), str(tmp_path / "tar"))
    assert_same(snapshot(want), snapshot(layer), labels=("GNU tar", "lamina"), context="overlay hardlinks")


# --- syscalls that change nothing --------------------------------------------

_CHILD = r'''
import os, sys
from lamina._extract import Extractor
os.umask(0o022)
ex = Extractor(sys.argv[1])
ex.feed(open(sys.argv[2], "rb").read())
ex.finish()
ex.close()
'''


def test_directories_made_with_their_mode_get_no_chmod(tmp_path):
    """A directory is made with its final mode when that is safe early (no write for
    others, not closed to its owner): the fixup's chmod would change nothing and is
    skipped.  Counted with strace; the tree is GNU tar's, modes and times included."""
    require_root()
    from conftest import require_tool
    require_tool("strace")
    members = []
    for d in range(200):
        members.append((ti(f"d{d:03d}", tarfile.DIRTYPE, mode=(0o755, 0o750, 0o711, 0o700)[d % 4]), None))
        members.append((ti(f"d{d:03d}/f"), b"f"))
    # these do need it: sticky, setgid, read-only, and a dir that inherits the setgid bit
    # of its parent (a lower layer's) which it should not have
    for name, mode in (("t", 0o1777), ("g", 0o2755), ("ro", 0o555), ("lower/child", 0o755)):
        members.append((ti(name, tarfile.DIRTYPE, mode=mode), None))
    blob = write(tmp_path / "blob", tarfile_bytes(members, fmt=tarfile.USTAR_FORMAT))
    lower = write(tmp_path / "lower", tarfile_bytes([(ti("lower", tarfile.DIRTYPE, mode=0o2755), None)]))
    dest = tmp_path / "dest"
    dest.mkdir()
    _extract(dest, open(lower, "rb").read())
    trace = tmp_path / "trace"
    run("strace", "-f", "-qq", "-e", "trace=chmod,fchmod,fchmodat", "-o", str(trace),
        sys.executable, "-c", _CHILD, str(dest), str(blob))
    chmods = [ln for ln in trace.read_text().splitlines() if "chmod" in ln]
    assert len(chmods) == 4, "\n".join(chmods)
    gnu_tar_extract(str(lower), str(tmp_path / "tar"))
    want = gnu_tar_extract(str(blob), str(tmp_path / "tar"))
    assert_same(snapshot(want), snapshot(dest), labels=("GNU tar", "lamina"), context="directory modes")
    # GNU tar leaves an unlisted parent with the time its new child gave it; lamina keeps
    # the lower layer's (as umoci): only the listed directories' times compare
    listed = lambda p, e: p != "lower"  # noqa: E731
    assert_same(snapshot(want, dir_mtime=True).filtered(listed), snapshot(dest, dir_mtime=True).filtered(listed),
                labels=("GNU tar", "lamina"), context="directory times")


def _back_up_layer():
    """Trees listed depth first, with entries back up in a parent after a subdirectory's
    (a file, and a directory, which needs the parent's real path), and now and then a
    file through a symlinked parent."""
    members = [(ti("t", tarfile.DIRTYPE), None), (ti("l", tarfile.SYMTYPE, linkname="t"), None)]
    for d in range(100):
        members += [(ti(f"t/d{d:03d}", tarfile.DIRTYPE, mode=0o750, mtime=1_600_000_000 + d), None),
                    (ti(f"t/d{d:03d}/s", tarfile.DIRTYPE), None),
                    (ti(f"t/d{d:03d}/s/f"), b"f"),
                    (ti(f"t/d{d:03d}/after"), b"a"),      # back up one level
                    (ti(f"t/d{d:03d}/s2", tarfile.DIRTYPE, mtime=1_500_000_000 + d), None),
                    (ti(f"t/d{d:03d}/s2/g"), b"g")]
        if d % 25 == 24:
            members.append((ti(f"l/f{d:03d}"), b"l"))  # lands in t, resolved from the root
    members.append((ti("t/last"), b"l"))  # back up two levels
    return tarfile_bytes(members, fmt=tarfile.USTAR_FORMAT)


def test_entries_back_up_in_a_parent_resolve_nothing_from_the_root(tmp_path):
    """Tars list trees depth first: an entry back up in a parent, after a subdirectory's
    entries, reuses the parent's fd kept open on the way down instead of resolving it
    from the root (openat2) and reading where it is from /proc (readlinkat) each time.
    Counted with strace (the old extractor: about 200 and 100 of them here); the tree is
    GNU tar's, times included."""
    require_root()
    from conftest import require_tool
    from lamina._extract import openat2_available
    require_tool("strace")
    blob = write(tmp_path / "blob", _back_up_layer())
    dest = tmp_path / "dest"
    dest.mkdir()
    trace = tmp_path / "trace"
    run("strace", "-f", "-qq", "-e", "trace=openat2,readlink,readlinkat", "-o", str(trace),
        sys.executable, "-c", _CHILD, str(dest), str(blob))
    lines = trace.read_text().splitlines()
    back_up = [ln for ln in lines if 'openat2(3, "t/' in ln]
    assert not back_up, "\n".join(back_up)
    if openat2_available():  # (else the resolutions from the root are openat walks)
        assert any('openat2(3, "l"' in ln for ln in lines), "a symlinked parent still resolves from the root"
    # where the root is, then t's after each of the 4 entries under l
    procs = [ln for ln in lines if "readlink" in ln and "/proc/self/fd/" in ln]
    assert len(procs) <= 9, "\n".join(procs)
    want = gnu_tar_extract(str(blob), str(tmp_path / "tar"))
    unlisted = lambda p, e: p != "."  # noqa: E731
    assert_same(snapshot(want, dir_mtime=True).filtered(unlisted), snapshot(dest, dir_mtime=True).filtered(unlisted),
                labels=("GNU tar", "lamina"), context="entries back up in their parents")


def test_rootless_whiteouts_in_read_only_lower_dirs(tmp_path):
    """Without root, a whiteout in a directory a lower layer left read-only opens it up
    (u+wx) in its GIL-free block, and the end of the layer restores its mode and time."""
    require_root()  # to become nobody
    from layerkit import rmtree, run_as_nobody, world_tmpdir
    from tarbuild import Tar
    work = world_tmpdir()
    try:
        lower = Tar().dir("ro", mode=0o555, mtime=1_500_000_000)
        top = Tar()
        for i in range(50):
            lower.file(f"ro/f{i}", b"x")
            if i % 2:
                top.whiteout(f"ro/f{i}")
        for name, data in (("lower", lower.bytes()), ("top", top.bytes())):
            write(os.path.join(work, name), data)
        os.system(f"chmod -R a+rX {work}")
        os.chmod(work, 0o777)
        dest = os.path.join(work, "out")
        r = run_as_nobody(
            "os.mkdir(sys.argv[1])\n"
            "lamina.apply_layer(sys.argv[2], sys.argv[1])\n"
            "st = lamina.apply_layer(sys.argv[3], sys.argv[1])\n"
            "print(json.dumps([st.entries, st.whiteouts, st.nogil_entries]))\n",
            dest, os.path.join(work, "lower"), os.path.join(work, "top"))
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout.splitlines()[-1]) == [25, 25, 25]
        assert sorted(os.listdir(os.path.join(dest, "ro"))) == sorted(f"f{i}" for i in range(0, 50, 2))
        st = os.stat(os.path.join(dest, "ro"))
        assert st.st_mode & 0o7777 == 0o555, "mode restored after the layer"
        assert st.st_mtime == 1_500_000_000, "the lower layer's time kept: the layer does not list ro"
    finally:
        rmtree(work)


# --- overlay whiteouts and opaque markers -------------------------------------

MARKED = 500
T_WH = 1_600_000_000  # the whiteouts' and markers' mtime


@functools.lru_cache(maxsize=1)
def _marker_layers():
    """(lower, upper head, upper tail): the upper layer is head + tail, the head lists its
    directories (no payload: a feed() can end there), the tail nothing but whiteouts and
    opaque markers: of files in directories of both layers and at the root, of directories
    the layer below fills (o*), that are new (n*) or that nobody has (absent*)."""
    from tarbuild import Tar
    lower, head, tail = Tar(), Tar(), Tar()
    for i in range(MARKED):
        lower.dir(f"d{i}").file(f"d{i}/a", b"a").file(f"d{i}/b", b"b")
        lower.dir(f"o{i}").file(f"o{i}/x", b"x").file(f"r{i}", b"r")
        head.dir(f"d{i}", mode=0o750).dir(f"o{i}").dir(f"n{i}")
        tail.whiteout(f"d{i}/a", mtime=T_WH).whiteout(f"r{i}", mtime=T_WH)
        tail.opaque(f"o{i}", mtime=T_WH).opaque(f"n{i}", mtime=T_WH)
    return lower.bytes(), head.bytes(end=False), tail.bytes()


def _overlay_upper(tmp_path, during_tail=None, tail=None):
    """The lower layer into layers/0, the upper into layers/1 (overlay format); -> stats
    of the upper, and what ``during_tail`` returns run around the feed of its tail."""
    lower, head, default_tail = _marker_layers()
    tail = tail or default_tail
    l0, l1 = tmp_path / "layers" / "0", tmp_path / "layers" / "1"
    l0.mkdir(parents=True)
    l1.mkdir()
    _extract(l0, lower, format="overlay", lowers=[])
    stats, seen = _extract(l1, head, tail, beside=during_tail or (lambda feed: feed()),
                           format="overlay", lowers=[str(l0)])
    return stats, seen, [l0, l1]


def test_overlay_whiteouts_release_the_gil(tmp_path):
    """At the root, where the old extractor resolved nothing from the root (a dup) and
    so never let go of the GIL for an overlay whiteout.  (Elsewhere it did, for the
    openat2 of the parent: the count below shows which entries are GIL-free throughout.)"""
    from tarbuild import Tar
    tail = Tar()
    for i in range(MARKED):
        tail.whiteout(f"r{i}", mtime=T_WH)
    stats, during, dirs = _overlay_upper(tmp_path, _runs_beside, tail.bytes())
    assert stats["whiteouts"] == MARKED
    assert stat_is_whiteout(os.lstat(dirs[1] / "r7"))
    assert during > 0, f"another thread never ran while {MARKED} overlay whiteouts were made: they held the GIL"


def test_overlay_whiteouts_and_opaque_markers_are_counted_as_gil_free(tmp_path):
    """Every entry of the upper layer, and what it writes is what the general path wrote:
    0/0 nodes with the entries' times, opaque directories; mounted, the dir format's flatten."""
    require_root()
    from everypath import overlay_mount
    stats, _, dirs = _overlay_upper(tmp_path)
    assert stats["entries"] == 7 * MARKED
    assert stats["nogil_entries"] == 7 * MARKED
    l1 = dirs[1]
    for i in (0, 7, MARKED - 1):
        for p in (l1 / f"d{i}" / "a", l1 / f"r{i}"):
            st = os.lstat(p)
            assert stat_is_whiteout(st) and st.st_mtime == T_WH, p
        for d in (f"o{i}", f"n{i}"):
            assert os.getxattr(l1 / d, "trusted.overlay.opaque") == b"y"
            assert os.listdir(l1 / d) == []
        assert sorted(os.listdir(l1 / f"d{i}")) == ["a"]
    lower, head, tail = _marker_layers()
    flat = tmp_path / "flat"
    flat.mkdir()
    _extract(flat, lower)
    _extract(flat, head + tail)
    with overlay_mount(dirs, tmp_path / "mnt") as mnt:
        assert_same(snapshot(flat), snapshot(mnt), labels=("dir-flatten", "overlay-mount"),
                    context="overlay whiteouts and markers")


def stat_is_whiteout(st):
    import stat as _stat
    return _stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _dir_upper(tmp_path, during_tail=None, tail=None):
    lower, head, default_tail = _marker_layers()
    root = tmp_path / "root"
    root.mkdir()
    _extract(root, lower)
    stats, seen = _extract(root, head, tail or default_tail, beside=during_tail or (lambda feed: feed()))
    return stats, seen, root


def test_dir_whiteouts_and_opaque_markers_are_counted_as_gil_free(tmp_path):
    """All but the markers of the o* directories, whose lower file goes (on the general path);
    the tree is GNU tar's of the lower layer with the upper's deletions."""
    stats, _, root = _dir_upper(tmp_path)
    assert stats["entries"] == 7 * MARKED
    assert stats["nogil_entries"] == 6 * MARKED
    for i in (0, 7, MARKED - 1):
        assert sorted(os.listdir(root / f"d{i}")) == ["b"]
        assert os.listdir(root / f"o{i}") == [] and os.listdir(root / f"n{i}") == []
        assert not (root / f"r{i}").exists()
        assert os.stat(root / f"d{i}").st_mode & 0o777 == 0o750


# --- device nodes and fifos ------------------------------------------------------

NODES = 1000


@functools.lru_cache(maxsize=1)
def _node_layer():
    """Fifos (and, for root, char and block devices) at the root, where the old extractor
    resolved nothing from the root and so held the GIL through each node; owners, modes
    (setuid, sticky) and times that differ."""
    members = []
    for i in range(NODES):
        kind = (tarfile.FIFOTYPE, tarfile.CHRTYPE, tarfile.BLKTYPE)[i % 3]
        t = ti(f"node{i:05d}", kind, mode=(0o644, 0o4755, 0o1600, 0o660)[i % 4], uid=i % 5, gid=i % 7)
        t.devmajor, t.devminor = (1, 3) if kind == tarfile.CHRTYPE else (7, i % 256)
        t.mtime = 1_500_000_000 + i
        members.append((t, None))
    return tarfile_bytes(members, fmt=tarfile.USTAR_FORMAT)


def test_device_nodes_and_fifos_release_the_gil_and_match_gnu_tar(tmp_path):
    require_root()
    data = _node_layer()
    root = tmp_path / "root"
    root.mkdir()
    stats, during = _extract(root, data, beside=_runs_beside)
    assert stats["entries"] == NODES
    assert during > 0, f"another thread never ran while {NODES} device nodes and fifos were made: they held the GIL"
    assert stats["nogil_entries"] == NODES
    want = gnu_tar_extract(str(write(tmp_path / "blob", data)), str(tmp_path / "tar"))
    assert_same(snapshot(want), snapshot(root), labels=("GNU tar", "lamina"), context="device nodes and fifos")
    assert_same(snapshot(want, dir_mtime=True), snapshot(root, dir_mtime=True), labels=("GNU tar", "lamina"),
                context="device nodes' times")
