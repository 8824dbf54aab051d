"""fsck's tree comparison (lamina.store.treediff.first_difference: a snapshot against a fresh
extraction of its layer) finds each kind of difference, naming the entry, in trees of every
shape, in memory that does not grow with them (issue 14: peak RSS <= 64 MiB whatever the
layer).  It held both sorted listings of every directory on the path being walked and each
level's relative path: ~10 MiB for a directory of 50k names, 100 MiB for a chain of 1000
directories of 200-byte names.  Memory is measured as the VmHWM growth of a child, no timing.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from conftest import run
from lamina.store.treediff import first_difference
from test_extract_memory import VM, _scratch

MTIME = 1_700_000_000


def _tree(root):
    """A small tree with an entry of every kind the comparison looks at."""
    os.makedirs(root / "etc/deep/er")
    (root / "etc/conf").write_bytes(b"conf\n")
    (root / "etc/deep/er/f").write_bytes(b"x" * 5000)
    with open(root / "sparse", "wb") as f:   # data, a 1 MiB hole, data
        f.write(b"head")
        f.seek(1 << 20)
        f.write(b"tail")
    os.link(root / "etc/conf", root / "etc/conf-link")
    os.symlink("../etc/conf", root / "etc/sym")
    os.mknod(root / "etc/null", 0o20666, os.makedev(1, 3))
    os.setxattr(root / "etc/conf", "trusted.x", b"1")
    os.makedirs(root / "empty")
    for p in ("etc/conf", "etc/deep/er/f", "sparse", "etc/sym"):
        os.utime(root / p, (MTIME, MTIME), follow_symlinks=False)


@pytest.fixture
def pair(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for t in (a, b):
        _tree(t)
    return a, b


def test_identical_trees(pair):
    assert first_difference(str(pair[0]), str(pair[1])) is None


def _resparse(p):
    """Same bytes, no holes: equal content."""
    data = p.read_bytes()
    p.unlink()
    p.write_bytes(data)
    os.utime(p, (MTIME, MTIME))


def _rewrite(p, data):
    p.write_bytes(data)
    os.utime(p, (MTIME, MTIME))


def _sparse_tail(p):
    with open(p, "r+b") as f:
        f.seek((1 << 20) + 1)
        f.write(b"A")
    os.utime(p, (MTIME, MTIME))


def _redo_symlink(p, target):
    p.unlink()
    os.symlink(target, p)


def _redo_node(p, dev):
    p.unlink()
    os.mknod(p, 0o20666, dev)


def _file_for_dir(p):
    shutil.rmtree(p)
    p.write_bytes(b"")


CHANGES = {
    "only in the snapshot": (lambda a, b: (a / "etc/deep/new").write_bytes(b""), "'etc/deep/new': only in the snapshot"),
    "missing from the snapshot": (lambda a, b: (b / "etc/deep/er/g").write_bytes(b""),
                                  "'etc/deep/er/g': missing from the snapshot"),
    "type": (lambda a, b: _file_for_dir(b / "empty"), "'empty': type differs"),
    "mode": (lambda a, b: os.chmod(b / "etc/deep", 0o700), "'etc/deep': mode "),
    "owner": (lambda a, b: os.lchown(b / "etc/sym", 1234, 5678), "'etc/sym': owner 0:0 != 1234:5678"),
    "size": (lambda a, b: _rewrite(b / "etc/deep/er/f", b"x" * 5001), "'etc/deep/er/f': size 5000 != 5001"),
    "mtime": (lambda a, b: os.utime(b / "etc/deep/er/f", (MTIME, MTIME + 1)), "'etc/deep/er/f': mtime differs"),
    "symlink mtime": (lambda a, b: os.utime(b / "etc/sym", (MTIME, MTIME + 1), follow_symlinks=False),
                      "'etc/sym': mtime differs"),
    "content": (lambda a, b: _rewrite(b / "etc/deep/er/f", b"x" * 4999 + b"y"), "'etc/deep/er/f': content differs"),
    "content past a hole": (lambda a, b: _sparse_tail(b / "sparse"), "'sparse': content differs"),
    "symlink target": (lambda a, b: _redo_symlink(b / "etc/sym", "../etc/other"), "'etc/sym': symlink target differs"),
    "device number": (lambda a, b: _redo_node(b / "etc/null", os.makedev(1, 5)), "'etc/null': device number differs"),
    "xattrs": (lambda a, b: os.setxattr(b / "etc/deep/er/f", "trusted.y", b"2"), "'etc/deep/er/f': xattrs differ"),
    "root": (lambda a, b: os.chmod(b, 0o711), "'/': mode "),
}


@pytest.mark.parametrize("change", CHANGES)
def test_each_kind_of_difference_names_its_entry(pair, change):
    a, b = pair
    make, want = CHANGES[change]
    make(a, b)
    got = first_difference(str(a), str(b))
    assert got is not None and got.startswith(want), got
    # the same difference seen from the other side
    if change not in ("only in the snapshot", "missing from the snapshot"):
        assert first_difference(str(b), str(a)).split(":")[0] == want.split(":")[0]


def test_holes_alone_are_not_a_difference(pair):
    _resparse(pair[1] / "sparse")
    assert first_difference(str(pair[0]), str(pair[1])) is None


def test_loose_dirs_compare_only_the_type(pair):
    a, b = pair
    os.chmod(b / "etc/deep", 0o700)
    os.chown(b / "etc/deep/er", 7, 7)
    assert first_difference(str(a), str(b), loose_dirs=["etc/deep", "etc/deep/er"]) is None
    _file_for_dir(b / "empty")
    assert first_difference(str(a), str(b), loose_dirs=["empty", "etc/deep", "etc/deep/er"]) == "'empty': type differs"


def _big_dir(root, n, kind):
    """``n`` entries in root/d: empty files or directories holding one file."""
    d = root / "d"
    os.makedirs(d)
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for i in range(n):
            name = f"a-module-file-name-{i:06d}.py"
            if kind == "files":
                os.close(os.open(name, os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd))
                os.utime(name, (MTIME, MTIME), dir_fd=fd)
            else:
                os.mkdir(name, dir_fd=fd)
                os.close(os.open(f"{name}/f", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd))
                os.utime(f"{name}/f", (MTIME, MTIME), dir_fd=fd)
    finally:
        os.close(fd)


def test_a_difference_late_in_a_big_directory(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for t in (a, b):
        _big_dir(t, 20_000, "files")
    assert first_difference(str(a), str(b)) is None
    last = os.listdir(a / "d")[-1]   # the last name the walk meets
    os.chmod(b / "d" / last, 0o600)
    assert first_difference(str(a), str(b)) == f"'d/{last}': mode 644 != 600"
    os.chmod(b / "d" / last, 0o644)
    (b / "d/zz-extra").write_bytes(b"")
    assert first_difference(str(a), str(b)) == "'d/zz-extra': missing from the snapshot"
    (a / "d/zz-extra").write_bytes(b"")
    os.utime(a / "d/zz-extra", (MTIME, MTIME))
    assert first_difference(str(a), str(b)) == "'d/zz-extra': mtime differs"


def test_many_hardlinks_of_one_file(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for t in (a, b):
        os.makedirs(t / "d")
        _rewrite(t / "d/target", b"one\n")
        for i in range(2000):
            os.link(t / "d/target", t / f"d/l{i:05d}")
    assert first_difference(str(a), str(b)) is None
    os.unlink(b / "d/l01234")
    _rewrite(b / "d/l01234", b"two\n")
    assert first_difference(str(a), str(b)) == "'d/l01234': content differs"


def _chain(root, depth, name):
    """root/name/name/... ``depth`` levels, a file at the bottom: longer than PATH_MAX, so built
    through directory fds."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            os.mkdir(name, 0o755, dir_fd=fd)
            child = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
        f = os.open("f", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd)
        os.write(f, b"bottom\n")
        os.utime(f, (MTIME, MTIME))
        os.close(f)
        # a sibling at the bottom too: the walk comes back up through every level
        os.mkdir("side", 0o755, dir_fd=fd)
    finally:
        os.close(fd)


def _bottom_fd(root, depth, name):
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(depth):
        child = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = child
    return fd


def _remove_chain(root, depth, name):
    fd = _bottom_fd(root, depth, name)
    os.unlink("f", dir_fd=fd)
    os.rmdir("side", dir_fd=fd)
    for _ in range(depth):
        up = os.open("..", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = up
        os.rmdir(name, dir_fd=fd)
    os.close(fd)


MEMORY = VM + r'''
import json, resource, sys
from lamina.store.treediff import first_difference
resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))  # a fd per level would run out
base = vm("VmHWM:")
diff = first_difference(sys.argv[1], sys.argv[2])
print(json.dumps({"growth": vm("VmHWM:") - base, "diff": diff}))
'''


def _child(a, b):
    return json.loads(run(sys.executable, "-c", MEMORY, a, b).stdout)


def test_a_deep_chain_of_long_names(tmp_path):
    """1000 levels of 200-byte names: a 200 KB path.  The walk held each level's relative path
    (100 MiB here); now the names from the root, once."""
    depth, name = 1000, "n" * 200
    a, b = tmp_path / "a", tmp_path / "b"
    for t in (a, b):
        t.mkdir()
        _chain(t, depth, name)
    try:
        got = _child(str(a), str(b))
        assert got["diff"] is None
        assert got["growth"] < 8 << 20, f"peak RSS grew {got['growth'] / 2**20:.1f} MiB over {depth} levels"
        fd = _bottom_fd(b, depth, name)
        os.utime("f", (MTIME, MTIME + 1), dir_fd=fd, follow_symlinks=False)
        os.close(fd)
        got = _child(str(a), str(b))
        assert got["diff"] == "'" + "/".join([name] * depth) + "/f': mtime differs"
    finally:
        for t in (a, b):
            _remove_chain(t, depth, name)


@pytest.mark.parametrize("kind", ["files", "dirs"])
def test_peak_rss_of_comparing_50k_entries(tmp_path, kind):
    """One directory of 50k files, or of 50k directories each holding a file (the directories
    waiting for their turn spill to a temp file).  The sorted listings took ~10 MiB."""
    with _scratch(tmp_path) as scratch:
        a, b = os.path.join(scratch, "a"), os.path.join(scratch, "b")
        for t in (a, b):
            _big_dir(Path(t), 50_000, kind)
        got = _child(a, b)
        assert got["diff"] is None
        assert got["growth"] < 3 << 20, f"peak RSS grew {got['growth'] / 2**20:.1f} MiB over 50k {kind}"


def test_the_dir_stack_spills_and_pops_in_order(tmp_path):
    from lamina.store.treediff import _DirStack
    stack = _DirStack(str(tmp_path))
    names = ["plain", "bad-\udcff-utf8", "x" * 255, "new\nline"]
    want = []
    try:
        for round_ in range(3):   # pushes and pops interleaved across the spill boundary
            for i in range(3 * _DirStack.HELD + 7):
                frame = (i % 70000, f"{names[i % len(names)]}-{round_}-{i}"[:255])
                stack.push(*frame)
                want.append(frame)
            for _ in range(_DirStack.HELD + 3):
                assert stack.pop() == want.pop()
        assert stack.file is not None
        while want:
            assert stack.pop() == want.pop()
        assert stack.pop() is None
    finally:
        stack.close()
