"""remove_tree / clear_dir run by an unprivileged user, where the modes a layer left get in
the way and lamina opens directories up to remove them.

What is opened up must be only what is going away, reached without following a symlink;
a directory that is kept (the parent of what remove_tree removes, the one clear_dir
empties) gets its own mode back.
"""
import os
import shutil
import stat

import pytest

from conftest import require_tool
from layerkit import run_as_nobody, world_tmpdir

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="drops to nobody: needs root")

NOBODY = 65534


def _mode(p):
    return stat.S_IMODE(os.lstat(p).st_mode)


def _nobody_tree(top, spec):
    """spec: [(relpath, kind, mode)], made in order, all owned by nobody; modes set last
    (deepest first) so read-only directories can be filled."""
    for rel, kind, _ in spec:
        p = os.path.join(top, rel)
        if kind == "dir":
            os.mkdir(p)
        elif kind == "file":
            with open(p, "w") as f:
                f.write(rel)
        else:
            os.symlink(kind, p)
        os.lchown(p, NOBODY, NOBODY)
    for rel, kind, mode in reversed(spec):
        if kind in ("dir", "file"):
            os.chmod(os.path.join(top, rel), mode)


def _run(script, *args, prefix=()):
    p = run_as_nobody("from lamina.tree import remove_tree, clear_dir\n" + script, *args,
                      prefix=prefix, preload=("lamina.tree",))
    assert p.returncode == 0, p.stdout + p.stderr
    return p.stdout.strip()


@pytest.fixture
def top():
    d = world_tmpdir()
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_unopenable_dir_fallback_never_chmods_through_a_swapped_symlink(top):
    """_open_subdir: a directory its owner cannot open is chmod 0700 before the second try.
    If the name became a symlink between the failed open and the chmod, the chmod must not
    reach the symlink's target (a directory of the same user outside the tree).  The race
    is forced by strace: the O_NOFOLLOW open of the (already swapped) name fails EACCES as a
    mode-0 directory's would; the removal must then fail without touching the target."""
    require_tool("strace")
    victim = os.path.join(top, "victim")
    os.mkdir(victim, 0o755)
    os.chown(victim, NOBODY, NOBODY)
    tree = os.path.join(top, "tree")
    os.mkdir(tree, 0o755)  # root's: nobody cannot unlink in it, so the unlinks fail EACCES
    os.symlink("../victim", os.path.join(tree, "zzswapped"))
    log = os.path.join(top, "strace.log")
    out = _run("try:\n"
               "    remove_tree(sys.argv[1])\n"
               "    print('removed')\n"
               "except OSError as e:\n"
               "    print('refused', e.errno)\n",
               os.path.join(tree, "zzswapped"),
               prefix=["strace", "-f", "-o", log, "-P", "zzswapped", "-e", "trace=openat,unlinkat",
                       "-e", "inject=openat:error=EACCES:when=1"])
    with open(log) as f:
        assert "(INJECTED)" in f.read()  # the race happened
    assert _mode(victim) == 0o755, "the chmod followed the symlink out of the tree"
    assert os.path.islink(os.path.join(tree, "zzswapped"))
    assert out.startswith("refused")


def test_unopenable_dirs_are_still_removed(top):
    """The fallback itself: directories of mode 0, 0200 (writable, not searchable) and
    0500 (not writable) holding files and directories, removed by their owner."""
    own, tree = os.path.join(top, "own"), os.path.join(top, "own", "tree")
    _nobody_tree(top, [("own", "dir", 0o755), ("own/tree", "dir", 0o755), ("own/tree/a", "dir", 0o000),
                       ("own/tree/a/f", "file", 0o644), ("own/tree/a/d", "dir", 0o200),
                       ("own/tree/a/d/g", "file", 0o000), ("own/tree/a/d/e", "dir", 0o500),
                       ("own/tree/a/d/e/h", "file", 0o644), ("own/tree/a/l", "../..", None)])
    _run("remove_tree(sys.argv[1])", tree)
    assert os.listdir(own) == []
    assert _mode(own) == 0o755


@pytest.mark.parametrize("mode", [0o555, 0o2555, 0o500])
def test_remove_tree_gives_the_kept_parent_its_mode_back(top, mode):
    """remove_tree(P/x) with P read-only to its owner: P is opened (0700) to unlink x,
    then must get its mode back; it was left 0700 before."""
    p = os.path.join(top, "p")
    _nobody_tree(top, [("p", "dir", mode), ("p/f", "file", 0o644), ("p/d", "dir", 0o555),
                       ("p/d/g", "file", 0o644), ("p/l", "/", None), ("p/keep", "file", 0o600)])
    _run("for n in ('f', 'd', 'l'):\n"
         "    remove_tree(os.path.join(sys.argv[1], n))\n", p)
    assert os.listdir(p) == ["keep"]
    assert _mode(p) == mode


@pytest.mark.parametrize("mode", [0o555, 0o2555])
def test_clear_dir_gives_the_emptied_dir_its_mode_back(top, mode):
    p = os.path.join(top, "p")
    _nobody_tree(top, [("p", "dir", mode), ("p/f", "file", 0o644), ("p/d", "dir", 0o000),
                       ("p/d/g", "file", 0o644), ("p/l", "/", None)])
    _run("clear_dir(sys.argv[1])", p)
    assert os.listdir(p) == []
    assert _mode(p) == mode
