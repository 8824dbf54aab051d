"""Hostile layers: one test (or parametrized family) per attack class.

Every test builds its tar by hand, applies it, and then `Guard.check()`
asserts that the sentinel directory next to dest (files, a subdir, modes,
owners, xattrs, mtimes incl. dirs, link counts) is untouched, that nothing
appeared in tmp_path outside dest, and that dest itself was not replaced.
Where an error is expected, its message must name the offending entry.
"""
from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import time

import pytest

import lamina
from lamina import errors
from conftest import require_root
from layerkit import Guard, apply, gz, gz_stream, rmtree, run_as_nobody, sha256, world_tmpdir, write
from tarbuild import B256, Tar, header, pad, pax_records
from treecmp import listing, snapshot

pytestmark = pytest.mark.usefixtures("_root")


@pytest.fixture
def _root():
    require_root()


@pytest.fixture(autouse=True, params=["openat2", "o_nofollow-walk"])
def resolver(request, monkeypatch):
    """Run every hostile test twice: with openat2(RESOLVE_IN_ROOT) and with the
    component-by-component O_NOFOLLOW fallback used on kernels < 5.6 / under seccomp
    (forced with LAMINA_NO_OPENAT2=1, read by the extractor at construction)."""
    if request.param == "openat2":
        monkeypatch.delenv("LAMINA_NO_OPENAT2", raising=False)
    else:
        monkeypatch.setenv("LAMINA_NO_OPENAT2", "1")
    return request.param


_counter = [0]


def layer(guard, data, dest=None, **kw):
    """Write `data` to a fresh file beside dest (tracked by the guard) and apply it."""
    _counter[0] += 1
    blobs = guard.tmp / "blobs"
    blobs.mkdir(exist_ok=True)
    p = blobs / f"layer{_counter[0]}.tar"
    p.write_bytes(data)
    return apply(str(p), str(dest or guard.dest), **kw)


def layers(guard, first, second, split, **kw):
    """Apply two tars either as one layer (second appended to first) or as two, in order."""
    if split == "same-layer":
        first.raw(second.buf.getvalue())
        layer(guard, first.bytes(), **kw)
    else:
        layer(guard, first.bytes(), **kw)
        layer(guard, second.bytes(), **kw)


PWN_GLOBS = ("/pwned-lamina-*", "/tmp/pwned-lamina-*")


@pytest.fixture
def g(tmp_path):
    """Guard whose baseline already includes the blobs/ dir."""
    import glob
    (tmp_path / "blobs").mkdir()
    yield Guard(tmp_path)
    stray = [p for pat in PWN_GLOBS for p in glob.glob(pat)]
    for p in stray:
        rmtree(p) if os.path.isdir(p) and not os.path.islink(p) else os.unlink(p)
    assert not stray, f"entries escaped to the real filesystem: {stray}"


def names_entry(exc, *names):
    msg = str(exc)
    assert any(n in msg for n in names), f"error message does not name the entry {names}: {msg!r}"


def rel(p):
    return os.fspath(p).lstrip("/")


# ---------------------------------------------------------------------------
# 1. '..' and absolute names are re-rooted
# ---------------------------------------------------------------------------

def test_dotdot_and_absolute_names_are_rerooted(g):
    t = Tar()
    t.dir("/").dir("./").dir("../")
    t.file("../../evil", b"evil\n")
    t.dir("/abs").file("/abs/file", b"abs\n")
    t.file("a/../../b", b"b\n")
    t.file("/../../../c", b"c\n")
    t.file("../sentinel/secret", b"inside\n")
    t.file("./../outside.txt", b"inside too\n")
    t.file(str(g.sentinel / "sub" / "file"), b"abs path of the sentinel\n")
    layer(g, t.bytes())
    g.check()
    d = g.dest
    assert (d / "evil").read_bytes() == b"evil\n"
    assert (d / "abs" / "file").read_bytes() == b"abs\n"
    assert (d / "b").read_bytes() == b"b\n"
    assert (d / "c").read_bytes() == b"c\n"
    assert (d / "sentinel" / "secret").read_bytes() == b"inside\n"
    assert (d / "outside.txt").read_bytes() == b"inside too\n"
    assert (d / rel(g.sentinel) / "sub" / "file").read_bytes() == b"abs path of the sentinel\n"


def test_dotdot_hardlink_and_symlink_names_rerooted(g):
    t = Tar().file("target", b"t").hardlink("../../hl", "../../../target").symlink("/../../sl", "target")
    layer(g, t.bytes())
    g.check()
    assert os.path.samefile(g.dest / "hl", g.dest / "target")
    assert os.readlink(g.dest / "sl") == "target"


# ---------------------------------------------------------------------------
# 2. writing through a symlink, same layer and across layers
# ---------------------------------------------------------------------------

# names written through the symlink: into the sentinel they would clobber existing
# things (secret, sub); into the real / they use a unique prefix the fixture sweeps.
SENTINEL_NAMES = {"file": "secret", "dir": "sub", "symlink": "pwned-sym", "hardlink": "pwned-hl",
                  "fifo": "pwned-fifo", "chardev": "pwned-dev", "whiteout": "secret"}
ROOT_NAMES = {k: "pwned-lamina-" + k for k in SENTINEL_NAMES}


def _write_through(kind, path, t, names=SENTINEL_NAMES):
    n = names.get(kind)
    if kind == "file":
        t.file(path + "/" + n, b"PWNED\n", mode=0o777)
    elif kind == "dir":
        t.dir(path + "/" + n, mode=0o777, mtime=123)
    elif kind == "symlink":
        t.symlink(path + "/" + n, "/etc/shadow")
    elif kind == "hardlink":
        t.hardlink(path + "/" + n, "inside-file")
    elif kind == "fifo":
        t.fifo(path + "/" + n)
    elif kind == "chardev":
        t.chardev(path + "/" + n, 1, 3)
    elif kind == "whiteout":
        t.whiteout(path + "/" + n)
    elif kind == "opaque":
        t.opaque(path)
    return t


KINDS = ["file", "dir", "symlink", "hardlink", "fifo", "chardev", "whiteout", "opaque"]
CREATING = ["file", "dir", "symlink", "hardlink", "fifo", "chardev"]
LANDED = {k: v for k, v in SENTINEL_NAMES.items() if k in CREATING}


@pytest.mark.parametrize("fmt,split", [("dir", "same-layer"), ("dir", "two-layers"), ("overlay", "same-layer")])
@pytest.mark.parametrize("kind", CREATING)     # (no whiteouts/opaque here: a broken extractor would rm /)
def test_symlink_to_root_escape_lands_in_dest(g, kind, split, fmt):
    """link -> ../../../../.. (far above /): re-rooted it is dest itself, so link/X is dest/X."""
    first = Tar().file("inside-file", b"inside\n").symlink("link", "../" * 12)
    second = _write_through(kind, "link", Tar(), ROOT_NAMES)
    layers(g, first, second, split, format=fmt)
    g.check()
    n = ROOT_NAMES[kind]
    assert os.path.lexists(g.dest / n), \
        f"{kind} written through link -> {'../' * 12} should land at dest/{n}: {g.tree()}"
    if kind == "file":
        assert (g.dest / n).read_bytes() == b"PWNED\n"
    assert os.path.islink(g.dest / "link")


@pytest.mark.parametrize("fmt", ["dir", "overlay"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("target", ["absolute", "relative"])
def test_symlink_to_sentinel_rerooted_existing(g, kind, target, fmt):
    """link -> <sentinel> where the re-rooted path exists inside dest: X lands there, inside."""
    inside = rel(g.sentinel) if target == "absolute" else "sentinel"
    link_target = str(g.sentinel) if target == "absolute" else "../sentinel"
    t = Tar().file("inside-file", b"inside\n")
    parts = inside.split("/")
    for i in range(1, len(parts) + 1):
        t.dir("/".join(parts[:i]))
    t.file(inside + "/secret", b"inside secret\n")
    t.dir(inside + "/sub")
    t.symlink("link", link_target)
    _write_through(kind, "link", t)
    try:
        layer(g, t.bytes(), format=fmt)
    except errors.LaminaError as e:
        if kind not in ("whiteout", "opaque"):
            raise
        assert isinstance(e, (errors.InvalidWhiteoutError, errors.UnsafeEntryError)), repr(e)
    g.check()
    if kind in LANDED and kind != "dir":
        assert os.path.lexists(g.dest / inside / LANDED[kind]), f"expected dest/{inside}/{LANDED[kind]}: {g.tree()}"
    if kind == "file":
        assert (g.dest / inside / "secret").read_bytes() == b"PWNED\n"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("target", ["absolute", "relative"])
@pytest.mark.parametrize("split", ["same-layer", "two-layers"])
def test_symlink_to_sentinel_missing_inside(g, kind, target, split):
    """link -> <sentinel> with no such path inside dest: either an error or a write inside dest."""
    link_target = str(g.sentinel) if target == "absolute" else "../sentinel"
    first = Tar().file("inside-file", b"inside\n").symlink("link", link_target)
    second = _write_through(kind, "link", Tar())
    try:
        layers(g, first, second, split)
    except errors.LaminaError:
        pass
    g.check()
    for p in listing(g.dest):
        assert not p.startswith(".wh."), p


def test_symlink_chain_and_loops(g):
    t = Tar()
    t.symlink("a", "b").symlink("b", "c").symlink("c", "../sentinel")
    t.file("a/secret", b"through a chain\n")
    t.symlink("loop1", "loop2").symlink("loop2", "loop1")
    t.file("loop1/x", b"loop\n")
    try:
        layer(g, t.bytes())
    except errors.LaminaError as e:
        names_entry(e, "loop1/x", "a/secret")
    g.check()


# ---------------------------------------------------------------------------
# 3. the root is never replaced
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", [".", "./", "/", "..", "../", "a/..", "/../."])
@pytest.mark.parametrize("kind", ["symlink", "file", "hardlink", "fifo"])
def test_non_dir_entry_naming_root_is_unsafe(g, name, kind):
    t = Tar().file("keep", b"keep\n")
    if kind == "symlink":
        t.symlink(name, str(g.sentinel))
    elif kind == "file":
        t.file(name, b"replaces root?\n")
    elif kind == "hardlink":
        t.hardlink(name, "keep")
    else:
        t.fifo(name)
    # a regular file named "x/" is a directory for GNU tar and bsdtar (no data):
    # its content is then read as a header and the archive refused as invalid
    expected = errors.InvalidArchiveError if kind == "file" and name.endswith("/") else errors.UnsafeEntryError
    with pytest.raises(expected):
        layer(g, t.bytes())
    g.check()
    assert (g.dest / "keep").read_bytes() == b"keep\n"


def test_whiteout_of_root_is_refused_or_ignored(g):
    layer(g, Tar().file("keep", b"k").bytes())
    t = Tar().file("../.wh.dest", b"").file("/.wh..", b"")
    try:
        layer(g, t.bytes())
    except errors.InvalidWhiteoutError:
        pass
    g.check()
    assert (g.dest / "keep").exists()


# ---------------------------------------------------------------------------
# 4. hardlinks must not reach outside
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("how", ["dotdot-etc", "abs-etc", "abs-sentinel", "rel-sentinel"])
def test_hardlink_to_outside_path_missing_inside(g, how):
    target = {"dotdot-etc": "../../../../../../etc/passwd", "abs-etc": "/etc/passwd",
              "abs-sentinel": str(g.sentinel / "secret"), "rel-sentinel": "../sentinel/secret"}[how]
    passwd_nlink = os.stat("/etc/passwd").st_nlink
    t = Tar().file("before", b"b").hardlink("evil-link", target)
    with pytest.raises(errors.InvalidArchiveError) as ei:
        layer(g, t.bytes())
    names_entry(ei.value, "evil-link")
    g.check()
    assert os.stat("/etc/passwd").st_nlink == passwd_nlink
    assert not os.path.lexists(g.dest / "evil-link")


@pytest.mark.parametrize("how", ["dotdot-etc", "abs-etc", "rel-sentinel", "abs-sentinel"])
def test_hardlink_to_outside_path_rerooted_inside(g, how):
    inside = {"dotdot-etc": "etc/passwd", "abs-etc": "etc/passwd", "rel-sentinel": "sentinel/secret",
              "abs-sentinel": rel(g.sentinel / "secret")}[how]
    target = {"dotdot-etc": "../../../../../../etc/passwd", "abs-etc": "/etc/passwd",
              "abs-sentinel": str(g.sentinel / "secret"), "rel-sentinel": "../sentinel/secret"}[how]
    t = Tar().file(inside, b"inside copy\n").hardlink("good-link", target)
    layer(g, t.bytes())
    g.check()
    assert os.path.samefile(g.dest / "good-link", g.dest / inside)
    assert (g.dest / "good-link").read_bytes() == b"inside copy\n"


def test_hardlink_to_symlink_pointing_outside(g):
    t = Tar().symlink("s", str(g.sentinel / "secret")).hardlink("h", "s")
    t.symlink("s2", "../sentinel/secret").hardlink("h2", "s2")
    try:
        layer(g, t.bytes())
    except errors.LaminaError as e:
        names_entry(e, "h", "h2")
    g.check()
    for h, s in (("h", "s"), ("h2", "s2")):
        p = g.dest / h
        if os.path.lexists(p):
            st = os.lstat(p)
            assert stat.S_ISLNK(st.st_mode), f"{h} must be a link to the symlink inode, not to what it points to"
            assert st.st_ino == os.lstat(g.dest / s).st_ino


@pytest.mark.parametrize("split", ["same-layer", "two-layers"])
def test_hardlink_through_symlinked_parent(g, split):
    # the links are re-rooted, where nothing is: refused as the overlay format and the store
    # refuse it (they said "goes through a dangling symlink", this one "not found")
    first = Tar().symlink("sd", str(g.sentinel)).symlink("rd", "../sentinel")
    second = Tar().hardlink("h1", "sd/secret")
    if split == "same-layer":
        first.raw(second.buf.getvalue())
        with pytest.raises(errors.ExtractError) as ei:
            layer(g, first.bytes())
    else:
        layer(g, first.bytes())
        with pytest.raises(errors.ExtractError) as ei:
            layer(g, second.bytes())
    names_entry(ei.value, "h1")
    assert str(ei.value).endswith("entry 'h1': hardlink target 'sd/secret': 'sd' goes through a dangling symlink")
    g.check()
    second2 = Tar().hardlink("h2", "rd/sub/file")
    with pytest.raises(errors.ExtractError) as ei:
        layer(g, second2.bytes())
    assert str(ei.value).endswith("entry 'h2': hardlink target 'rd/sub/file': 'rd' goes through a dangling symlink")
    g.check()


# ---------------------------------------------------------------------------
# 5. metadata (chmod/chown/utime/xattr) never applied through a symlink
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("split", ["same-layer", "two-layers"])
@pytest.mark.parametrize("target", ["absolute", "relative"])
def test_dir_entry_over_symlink_replaces_it(g, split, target):
    link = str(g.sentinel) if target == "absolute" else "../sentinel"
    first = Tar().symlink("d", link).symlink("e", link)
    second = Tar()
    second.pax([("SCHILY.xattr.user.evil", b"1")]).dir("d", mode=0o777, uid=4321, gid=4321, mtime=5)
    second.dir("e/", mode=0o777, uid=4321, mtime=5)
    layers(g, first, second, split)
    g.check()
    for n in ("d", "e"):
        st = os.lstat(g.dest / n)
        assert stat.S_ISDIR(st.st_mode), f"dir entry {n} must replace the symlink"
        assert stat.S_IMODE(st.st_mode) == 0o777 and st.st_uid == 4321 and int(st.st_mtime) == 5


def test_deferred_dir_fixups_not_applied_through_later_symlink(g):
    """Dir metadata is fixed up at the end; if the dir was replaced by a symlink meanwhile,
    the fix-up must not chmod/chown/utime what the symlink points at."""
    t = Tar()
    t.dir("x", mode=0o700, uid=4321, gid=4321, mtime=1000)
    t.dir("p", mode=0o755, mtime=2000).dir("p/sub", mode=0o700, uid=4321, mtime=3000)
    t.pax([("SCHILY.xattr.user.late", b"1")]).dir("q", mode=0o711, mtime=4000)
    t.symlink("x", str(g.sentinel))                  # replaces the (empty) dir x
    t.symlink("p", str(g.sentinel))                  # replaces p (and p/sub) -> sentinel has sub/
    t.symlink("q", "../sentinel")
    layer(g, t.bytes())
    g.check()
    for n in ("x", "p", "q"):
        assert os.path.islink(g.dest / n)


@pytest.mark.parametrize("split", ["same-layer", "two-layers"])
@pytest.mark.parametrize("kind", ["file", "fifo", "hardlink", "symlink"])
def test_non_dir_over_symlink_replaces_not_writes_through(g, split, kind):
    first = Tar().file("inside", b"inside\n").symlink("f", str(g.sentinel / "secret"))
    second = Tar()
    if kind == "file":
        second.file("f", b"new content\n", mode=0o777, uid=4321, mtime=7)
    elif kind == "fifo":
        second.fifo("f", mode=0o777)
    elif kind == "hardlink":
        second.hardlink("f", "inside")
    else:
        second.symlink("f", "elsewhere")
    layers(g, first, second, split)
    g.check()
    st = os.lstat(g.dest / "f")
    want = {"file": stat.S_ISREG, "fifo": stat.S_ISFIFO, "hardlink": stat.S_ISREG, "symlink": stat.S_ISLNK}[kind]
    assert want(st.st_mode), f"f should now be a {kind}"
    if kind == "file":
        assert (g.dest / "f").read_bytes() == b"new content\n" and st.st_uid == 4321


# ---------------------------------------------------------------------------
# 6. whiteouts
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["dir", "overlay"])
@pytest.mark.parametrize("name", [".wh.", "d/.wh.", ".wh..", "d/.wh..", "d/.wh...", "d/.wh.../x", "d/.wh./x"])
def test_invalid_whiteouts(g, name, fmt):
    lower = Tar().dir("d").file("d/keep", b"k").file("keep", b"k")
    dest = g.dest if fmt == "dir" else g.dest / "l1"
    if fmt == "dir":
        layer(g, lower.bytes())
    else:
        dest.mkdir()
    # a whiteout naming '', '.' or '..' is InvalidWhiteoutError; an entry *below* such a
    # name (d/.wh.../x) may be refused as any InvalidArchiveError
    expected = errors.InvalidWhiteoutError if name.count("/") < 2 else errors.InvalidArchiveError
    with pytest.raises(expected) as ei:
        layer(g, Tar().dir("d").file(name, b"").bytes(), dest=dest, format=fmt)
    names_entry(ei.value, name.rstrip("/"), name.split("/")[-1])
    g.check()
    if fmt == "dir":
        assert (g.dest / "d" / "keep").exists() and (g.dest / "keep").exists()


@pytest.mark.parametrize("target", ["absolute", "relative"])
@pytest.mark.parametrize("split", ["same-layer", "two-layers"])
@pytest.mark.parametrize("which", ["file", "dir", "opaque", "opaque-sub"])
def test_whiteout_through_symlinked_dir(g, target, split, which):
    link = str(g.sentinel) if target == "absolute" else "../sentinel"
    first = Tar().symlink("l", link).dir("real").file("real/keep", b"k")
    second = Tar()
    if which == "file":
        second.whiteout("l/secret")
    elif which == "dir":
        second.whiteout("l/sub")
    elif which == "opaque":
        second.opaque("l")
    else:
        second.opaque("l/sub")
    try:
        layers(g, first, second, split)
    except errors.LaminaError as e:
        assert isinstance(e, (errors.InvalidWhiteoutError, errors.UnsafeEntryError, errors.InvalidArchiveError))
    g.check()
    assert (g.dest / "real" / "keep").exists()


def test_whiteout_through_symlink_overlay_format(g):
    """overlay format: the 0/0 char device must not be created through a symlink either."""
    dest = g.dest / "layer"
    dest.mkdir()
    t = Tar().symlink("l", str(g.sentinel)).symlink("r", "../../sentinel")
    t.whiteout("l/secret").whiteout("r/newname").opaque("l/sub")
    try:
        layer(g, t.bytes(), dest=dest, format="overlay")
    except errors.LaminaError:
        pass
    g.check()


@pytest.mark.parametrize("pos", ["first", "middle", "last"])
@pytest.mark.parametrize("with_dir_entry", [True, False])
def test_opaque_marker_position_in_layer(g, pos, with_dir_entry):
    lower = Tar().dir("d").file("d/old1", b"1").file("d/old2", b"2").dir("d/sub").file("d/sub/oldsub", b"s")
    lower.file("d/.hidden-old", b"h").file("other", b"o")
    layer(g, lower.bytes())
    upper = Tar()
    if with_dir_entry:
        upper.dir("d", mode=0o750)
    entries = [("f", "d/new1"), ("f", "d/new2"), ("d", "d/sub"), ("f", "d/sub/newsub")]
    opq_at = {"first": 0, "middle": 2, "last": len(entries)}[pos]
    for i, (k, n) in enumerate(entries + [(None, None)]):
        if i == opq_at:
            upper.opaque("d")
        if k == "f":
            upper.file(n, n.encode())
        elif k == "d":
            upper.dir(n)
    layer(g, upper.bytes())
    g.check()
    assert listing(g.dest) == ["d", "d/new1", "d/new2", "d/sub", "d/sub/newsub", "other"], \
        f"opaque at {pos}: same-layer siblings must survive and lower content must go"
    if with_dir_entry:
        assert stat.S_IMODE(os.lstat(g.dest / "d").st_mode) == 0o750


def test_root_opaque_and_whiteout_of_missing(g):
    layer(g, Tar().dir("a").file("a/x", b"x").file("b", b"b").bytes())
    layer(g, Tar().file("c", b"c").opaque("").whiteout("nothing-here").whiteout("a/nope").bytes())
    g.check()
    assert listing(g.dest) == ["c"]


def test_whiteout_deletes_only_its_target(g):
    layer(g, Tar().dir("a").file("a/x", b"x").file("a/xy", b"xy").dir("a/x.d").file("a/x.d/k", b"k").bytes())
    layer(g, Tar().whiteout("a/x").whiteout("a/x.d").bytes())
    g.check()
    assert listing(g.dest) == ["a", "a/xy"]


# ---------------------------------------------------------------------------
# 7. dir <-> file replacement across layers (and within one)
# ---------------------------------------------------------------------------

def test_replacement_across_layers(g):
    layer(g, Tar().dir("x").file("x/child", b"c").dir("x/deeper").file("x/deeper/f", b"f")
          .symlink("y", "x").file("z", b"z").dir("keepdir").file("keepdir/a", b"a").bytes())
    layer(g, Tar().file("x", b"now a file\n").dir("y", mode=0o700).symlink("z", "x")
          .dir("keepdir", mode=0o711).file("keepdir/b", b"b").bytes())
    g.check()
    s = snapshot(g.dest)
    assert s["x"].type == "file" and "x/child" not in s
    assert s["y"].type == "dir" and s["y"].mode == 0o700
    assert s["z"].type == "symlink" and s["z"].target == "x"
    assert s["keepdir"].mode == 0o711 and "keepdir/a" in s and "keepdir/b" in s, "dir over dir must merge"
    layer(g, Tar().dir("x").file("y", b"y file").dir("z").bytes())
    g.check()
    s = snapshot(g.dest)
    assert s["x"].type == "dir" and [p for p in s.paths() if p.startswith("x/")] == []
    assert s["y"].type == "file" and s["z"].type == "dir"


def test_replacement_within_one_layer(g):
    t = Tar().dir("w").file("w/a", b"a").dir("w/sub").file("w/sub/b", b"b")
    t.file("w", b"file now\n")
    t.file("v", b"file").dir("v").file("v/inner", b"i")
    t.symlink("u", "../sentinel").dir("u").file("u/x", b"x")
    layer(g, t.bytes())
    g.check()
    s = snapshot(g.dest)
    assert s["w"].type == "file" and (g.dest / "w").read_bytes() == b"file now\n"
    assert s["v"].type == "dir" and "v/inner" in s
    assert s["u"].type == "dir" and "u/x" in s


# ---------------------------------------------------------------------------
# 8. unprivileged: devices skipped and listed, setuid/setgid stripped
# ---------------------------------------------------------------------------

NOBODY_SCRIPT = r"""
st = lamina.apply_layer(sys.argv[1], sys.argv[2], format=sys.argv[3], lower_dirs=sys.argv[4:] or None)
print(json.dumps({"uid": os.geteuid(), "skipped": [repr(s) for s in st.skipped], "whiteouts": st.whiteouts}))
"""


@pytest.fixture
def as_nobody():
    """apply(tar_bytes, format) as user nobody into a dest nobody owns -> (dest, stats dict)."""
    base = world_tmpdir()

    def apply_as_nobody(data, format="dir", lower=()):
        """``lower``: relative paths of files in a layer below (overlay format)."""
        tarp = os.path.join(base, "layer.tar")
        write(tarp, data)
        dest = os.path.join(base, "dest")
        os.mkdir(dest)
        os.chown(dest, 65534, 65534)
        lowers = []
        if lower:
            lowers = [os.path.join(base, "lower")]
            for rel in lower:
                os.makedirs(os.path.dirname(os.path.join(lowers[0], rel)), exist_ok=True)
                write(os.path.join(lowers[0], rel), b"lower\n")
            subprocess.run(["chmod", "-R", "a+rX", lowers[0]], check=True)
        proc = run_as_nobody(NOBODY_SCRIPT, tarp, dest, format, *lowers)
        assert proc.returncode == 0, f"apply as nobody failed: rc={proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        assert out["uid"] == 65534
        return dest, out

    yield apply_as_nobody
    rmtree(base)


def test_unprivileged_devices_skipped_setuid_stripped(as_nobody):
    t = Tar()
    t.dir("dev").chardev("dev/null", 1, 3, mode=0o666).blockdev("dev/sda", 8, 0, mode=0o660)
    t.fifo("dev/fifo", mode=0o600)
    t.file("suid", b"suid\n", mode=0o4755).file("sgid", b"sgid\n", mode=0o2755, gid=0)
    t.file("owned", b"owned\n", uid=0, gid=0, mode=0o640)
    t.dir("sticky", mode=0o1777)
    t.file("after", b"after\n")
    dest, out = as_nobody(t.bytes())
    s = snapshot(dest)
    assert "dev/null" not in s and "dev/sda" not in s, "devices must be skipped when not root"
    skipped = " ".join(out["skipped"])
    assert "dev/null" in skipped and "dev/sda" in skipped, f"stats.skipped must list the devices: {skipped}"
    assert s["dev/fifo"].type == "fifo", "a fifo needs no privilege and must be created"
    assert s["suid"].mode & 0o6000 == 0 and s["suid"].mode & 0o777 == 0o755
    assert s["sgid"].mode & 0o6000 == 0
    assert s["sticky"].mode == 0o1777, "sticky bit needs no privilege"
    assert (s["owned"].uid, s["owned"].gid) == (65534, 65534)
    assert (s["owned"].mode) == 0o640
    assert open(os.path.join(dest, "after"), "rb").read() == b"after\n"


def test_unprivileged_overlay_layer_has_whiteouts_and_user_opaque(as_nobody):
    """A rootless store needs overlay-format layers too: whiteouts as 0/0 nodes
    (unprivileged since Linux 5.8) and opaque dirs as user.overlay.opaque."""
    t = Tar().dir("etc").whiteout("etc/shadow").dir("var").opaque("var").file("var/new", b"n")
    dest, out = as_nobody(t.bytes(), "overlay", lower=["etc/shadow", "var/old"])
    assert out["whiteouts"] == 1
    st = os.lstat(os.path.join(dest, "etc", "shadow"))
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0 and st.st_uid == 65534
    var = os.path.join(dest, "var")
    assert os.getxattr(var, "user.overlay.opaque") == b"y"
    assert "trusted.overlay.opaque" not in os.listxattr(var)
    assert open(os.path.join(var, "new"), "rb").read() == b"n"


# ---------------------------------------------------------------------------
# 9. limits: huge headers, bombs, deep trees, many entries
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("kind", [b"x", b"g", b"L", b"K"])
def test_huge_declared_header_refused_before_reading(g, kind):
    """A PAX / GNU long-name header declaring 1 TiB (base-256) or 100 MiB: LimitExceededError
    from the header alone — the data is not even there (reading it first would report truncation)."""
    for size in (B256(1 << 40), 100 << 20):
        t = Tar().file("ok", b"ok")
        t.raw(header("././@LongLink" if kind in (b"L", b"K") else "././@PaxHeader",
                     type=kind, size=size, fmt="gnu" if kind in (b"L", b"K") else "ustar"))
        t.raw(b"16 path=hello\n".ljust(512, b"\0"))
        with pytest.raises(errors.LimitExceededError):
            layer(g, t.bytes())
    g.check()


@pytest.mark.parametrize("kind", ["pax", "gnu-L", "gnu-K", "pax-many-records"])
def test_big_real_header_exceeds_max_header(g, kind):
    big = 2 << 20
    t = Tar()
    if kind == "pax":
        t.pax([("comment", b"a" * big)]).file("victim", b"v")
    elif kind == "pax-many-records":
        t.pax([("VENDOR.k%d" % i, b"v" * 100) for i in range(big // 100)]).file("victim", b"v")
    elif kind == "gnu-L":
        t.gnu_longname("n" * big).file("victim", b"v", fmt="gnu")
    else:
        t.gnu_longlink("k" * big).symlink("victim", "x", fmt="gnu")
    data = gz(t.bytes())
    assert len(data) < 200_000
    with pytest.raises(errors.LimitExceededError):
        layer(g, data)
    # and with an explicit small limit
    small = Tar().pax([("comment", b"c" * 5000)]).file("victim", b"v").bytes()
    with pytest.raises(errors.LimitExceededError):
        layer(g, small, limits=lamina.Limits(max_header=4096))
    layer(g, small, dest=g.dest / "ok")          # default limits accept 5 KB
    g.check()


def _victim_tar():
    t = Tar().file("first", b"1" * 1000)
    off_victim = len(t.buf.getvalue())
    t.file("victim-file", bytes(range(256)) * 20)
    off_last = len(t.buf.getvalue())
    t.file("last", b"last")
    return t.bytes(), off_victim, off_last


@pytest.mark.parametrize("where", ["in-header", "after-header", "in-data", "in-padding"])
def test_truncated_archive(g, where):
    data, off, off_last = _victim_tar()
    cut = {"in-header": off + 300, "after-header": off + 512, "in-data": off + 512 + 3000,
           "in-padding": off + 512 + 5120 + 0}[where]
    if where == "in-padding":
        # 5120 bytes of data end exactly at a block; make the victim 5000 bytes instead.  Its data
        # is whole: the end of the layer, as Go's archive/tar reads it (CONFORMANCE.md), and
        # nothing past the cut is made
        t = Tar().file("first", b"1" * 1000).file("victim-file", b"v" * 5000).file("last", b"l")
        layer(g, t.bytes()[:off + 512 + 5000 + 50])
        assert sorted(os.listdir(g.dest)) == ["first", "victim-file"]
        assert (g.dest / "victim-file").read_bytes() == b"v" * 5000
        g.check()
        return
    with pytest.raises(errors.InvalidArchiveError) as ei:
        layer(g, data[:cut])
    assert not isinstance(ei.value, errors.LimitExceededError)
    if where in ("after-header", "in-data"):
        names_entry(ei.value, "victim-file")
    g.check()


def test_truncated_pax_header_and_longname(g):
    t = Tar().pax({"path": "p" * 3000}).file("x", b"x").bytes()
    with pytest.raises(errors.InvalidArchiveError):
        layer(g, t[:512 + 1000])
    t = Tar().gnu_longname("q" * 3000).file("x", b"x", fmt="gnu").bytes()
    with pytest.raises(errors.InvalidArchiveError):
        layer(g, t[:512 + 1000])
    g.check()


@pytest.mark.parametrize("comp", ["gzip", "zstd"])
def test_truncated_compressed_stream(g, comp):
    from layerkit import zst
    data = Tar().file("a", os.urandom(100_000)).file("b", os.urandom(100_000)).bytes()
    blob = gz(data) if comp == "gzip" else zst(data)
    with pytest.raises(errors.InvalidArchiveError):
        layer(g, blob[: len(blob) * 6 // 10])
    g.check()


@pytest.fixture(scope="module")
def gzip_bomb_trailing():
    tar = Tar().file("tiny", b"tiny\n").bytes()
    return gz_stream(tar, ("zeros", 1 << 30))


def test_gzip_bomb_after_end_of_archive(g, gzip_bomb_trailing):
    assert len(gzip_bomb_trailing) < 4 << 20
    with pytest.raises(errors.LimitExceededError):
        layer(g, gzip_bomb_trailing)
    g.check()


def test_gzip_bomb_trailing_with_small_limit(g):
    blob = gz_stream(Tar().file("tiny", b"t").bytes(), ("zeros", 8 << 20))
    with pytest.raises(errors.LimitExceededError):
        layer(g, blob, limits=lamina.Limits(max_trailing=1 << 20))
    layer(g, blob, dest=g.dest / "ok")     # 8 MiB of zero padding is within the default limit
    g.check()


def test_huge_entry_with_small_max_bytes(g):
    tar_head = header("huge", size=1 << 30)
    # 64 MiB of the declared 1 GiB are present: a reader that does not stop at the
    # limit reports truncation instead of LimitExceededError and fails the test
    blob = gz_stream(Tar().file("small", b"s").buf.getvalue(), tar_head, ("zeros", 64 << 20))
    limit = 10 << 20
    with pytest.raises(errors.LimitExceededError) as ei:
        layer(g, blob, limits=lamina.Limits(max_bytes=limit))
    names_entry(ei.value, "huge")
    p = g.dest / "huge"
    if p.exists():
        assert p.stat().st_size <= limit + (1 << 20)
    g.check()


def test_deep_nesting_default_limits(g):
    depth = 2000
    t = Tar()
    for i in range(1, depth + 1):
        t.pax({"path": "/".join(["d"] * i)}).dir("x")
    t.pax({"path": "/".join(["d"] * depth) + "/leaf"}).file("x", b"leaf")
    try:
        try:
            layer(g, t.bytes())
        except errors.LimitExceededError as e:
            names_entry(e, "d/d/d")
        else:
            p = os.path.join(g.dest, *(["d"] * depth), "leaf")
            fd = os.open(g.dest, os.O_RDONLY)          # the path is longer than PATH_MAX: walk it
            try:
                for _ in range(depth):
                    nfd = os.open("d", os.O_RDONLY | os.O_NOFOLLOW | os.O_DIRECTORY, dir_fd=fd)
                    os.close(fd)
                    fd = nfd
                lfd = os.open("leaf", os.O_RDONLY, dir_fd=fd)
                assert os.read(lfd, 10) == b"leaf"
                os.close(lfd)
            finally:
                os.close(fd)
        g.check()
    finally:
        # pytest's own cleanup recurses per level and chokes on very deep trees
        import subprocess
        subprocess.run(["rm", "-rf", os.fspath(g.dest)], check=False)


def test_deep_nesting_small_limit(g):
    t = Tar()
    for i in range(1, 21):
        t.dir("/".join(["d"] * i))
    with pytest.raises(errors.LimitExceededError) as ei:
        layer(g, t.bytes(), limits=lamina.Limits(max_depth=10))
    names_entry(ei.value, "/".join(["d"] * 11))
    # a single entry deep path without parent entries, too
    t = Tar().file("/".join(["e"] * 30) + "/f", b"f")
    with pytest.raises(errors.LimitExceededError):
        layer(g, t.bytes(), limits=lamina.Limits(max_depth=10))
    g.check()


def test_max_path_and_max_entries(g):
    t = Tar().pax({"path": "n" * 300}).file("x", b"x")
    with pytest.raises(errors.LimitExceededError) as ei:
        layer(g, t.bytes(), limits=lamina.Limits(max_path=200))
    t = Tar()
    for i in range(100):
        t.file(f"f{i:03d}", b"x")
    with pytest.raises(errors.LimitExceededError):
        layer(g, t.bytes(), limits=lamina.Limits(max_entries=50))
    layer(g, t.bytes(), dest=g.dest / "ok", limits=lamina.Limits(max_entries=100))
    g.check()


def test_default_max_path_exceeded(g):
    name = "/".join(["c" * 200] * 30)          # 6029 bytes > PATH_MAX
    t = Tar().pax({"path": name}).file("x", b"x")
    with pytest.raises(errors.LimitExceededError):
        layer(g, t.bytes())
    g.check()


# ---------------------------------------------------------------------------
# 10. odd entries: the filesystem says no -> a LaminaError naming the entry, never a bare OSError
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("case", ["hardlink-to-dir", "hardlink-to-itself", "hardlink-to-missing",
                                  "file-under-file", "name-too-long", "hardlink-to-whiteout-name"])
def test_filesystem_refusals_are_lamina_errors(g, case):
    t = Tar().dir("somedir").file("plain", b"p")
    victim = {"hardlink-to-dir": "h1", "hardlink-to-itself": "h2", "hardlink-to-missing": "h3",
              "file-under-file": "plain/x", "name-too-long": "n" * 300, "hardlink-to-whiteout-name": "h4"}[case]
    if case == "hardlink-to-dir":
        t.hardlink(victim, "somedir")
    elif case == "hardlink-to-itself":
        t.hardlink(victim, victim)
    elif case == "hardlink-to-missing":
        t.hardlink(victim, "nope")
    elif case == "file-under-file":
        t.file(victim, b"x")
    elif case == "name-too-long":
        t.pax({"path": victim}).file("short", b"x")
    else:
        t.whiteout("plain").hardlink(victim, ".wh.plain")
    try:
        layer(g, t.bytes())
    except errors.LaminaError as e:
        names_entry(e, victim[:50])
    except OSError as e:  # pragma: no cover - this is the failure being tested for
        pytest.fail(f"bare {type(e).__name__} leaked out of apply_layer: {e}")
    else:
        if case != "file-under-file":
            pytest.fail(f"{case}: expected an error")
        # replacing the file 'plain' by a dir to hold x is also acceptable ("anything else replaces")
        assert (g.dest / "plain" / "x").read_bytes() == b"x"
    g.check()
