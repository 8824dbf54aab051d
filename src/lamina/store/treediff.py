"""First difference between two extracted trees (fsck: a snapshot against a fresh extraction).

Compared: entry names, type, permission bits, owner, size, file content and
mtime, symlink target, device numbers, xattrs.  Directory mtimes are not:
directories a layer does not list are created at extraction time.
"""
from __future__ import annotations

import errno
import functools
import os
import stat
import struct
import tempfile

from ..quoting import quote_name

_CHUNK = 1 << 20
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK

# The trees are walked through directory fds, one pair at a time (down by name, up by
# ".."): a layer may be as deep as its path limit allows, and the snapshot's own path
# in front of that goes past PATH_MAX, where path strings fail (ENAMETOOLONG); a fd per
# level would run out of fds on a chain of thousands of directories.


def _xattrs(dirfd, name):
    """Sorted (name, value) of the entry ``name`` in ``dirfd`` (None: the directory itself),
    never following a symlink: the entry is reached through the fd, by /proc."""
    target = dirfd if name is None else f"/proc/self/fd/{dirfd}/{name}"
    follow = name is None
    try:
        names = os.listxattr(target, follow_symlinks=follow)
    except OSError:
        return ()
    out = []
    for n in sorted(names):
        try:
            out.append((n, os.getxattr(target, n, follow_symlinks=follow)))
        except OSError:
            out.append((n, None))
    return tuple(out)


def _data_map(fd, size):
    """[(start, end)] of the file's data regions, None where the filesystem cannot tell."""
    out, pos = [], 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
            end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        except OSError as e:
            if e.errno == errno.ENXIO:  # only a hole is left
                break
            return None
        out.append((start, end))
        pos = end
    return out


def _same_content(da, db, name):
    """Byte for byte; where both files have the same holes only their data is read (a sparse
    file of a terabyte is a few blocks: reading its holes would take fsck an hour)."""
    fa = os.open(name, _FILE_FLAGS, dir_fd=da)
    try:
        fb = os.open(name, _FILE_FLAGS, dir_fd=db)
        try:
            return _same_data(fa, fb)
        finally:
            os.close(fb)
    finally:
        os.close(fa)


def _same_data(fa, fb):
    size = os.fstat(fa).st_size
    if size != os.fstat(fb).st_size:
        return False
    regions = _data_map(fa, size)
    if regions is None or regions != _data_map(fb, size):
        regions = [(0, size)]
    for start, end in regions:
        while start < end:
            n = min(_CHUNK, end - start)
            x, y = os.pread(fa, n, start), os.pread(fb, n, start)
            if x != y:
                return False
            if not x:
                return False  # shorter than its size said: changed while read
            start += len(x)
    return True


def _entry_diff(da, db, name, sa, sb, rel, loose):
    """The first difference between entry ``name`` of ``da`` and of ``db`` (None: the dirs
    themselves), whose lstat results are ``sa`` and ``sb``; ``rel()`` names it."""
    if stat.S_IFMT(sa.st_mode) != stat.S_IFMT(sb.st_mode):
        return f"{_shown(rel())}: type differs"
    if loose and stat.S_ISDIR(sa.st_mode):
        return None
    if stat.S_IMODE(sa.st_mode) != stat.S_IMODE(sb.st_mode):
        return f"{_shown(rel())}: mode {stat.S_IMODE(sa.st_mode):o} != {stat.S_IMODE(sb.st_mode):o}"
    if (sa.st_uid, sa.st_gid) != (sb.st_uid, sb.st_gid):
        return f"{_shown(rel())}: owner {sa.st_uid}:{sa.st_gid} != {sb.st_uid}:{sb.st_gid}"
    if stat.S_ISREG(sa.st_mode):
        if sa.st_size != sb.st_size:
            return f"{_shown(rel())}: size {sa.st_size} != {sb.st_size}"
        if sa.st_mtime_ns != sb.st_mtime_ns:
            return f"{_shown(rel())}: mtime differs"
        if not _same_content(da, db, name):
            return f"{_shown(rel())}: content differs"
    elif stat.S_ISLNK(sa.st_mode):
        if os.readlink(name, dir_fd=da) != os.readlink(name, dir_fd=db):
            return f"{_shown(rel())}: symlink target differs"
        if sa.st_mtime_ns != sb.st_mtime_ns:
            return f"{_shown(rel())}: mtime differs"
    elif stat.S_ISCHR(sa.st_mode) or stat.S_ISBLK(sa.st_mode):
        if sa.st_rdev != sb.st_rdev:
            return f"{_shown(rel())}: device number differs"
    if _xattrs(da, name) != _xattrs(db, name):
        return f"{_shown(rel())}: xattrs differ"
    return None


class _DirStack:
    """LIFO of the directories still to visit, (depth of the parent, name): the newest frames
    in a list, the older ones spilled to a temp file (``scratch``) in chunks of HELD // 2.  A
    directory of 300k subdirectories waits as ~10 MB of file, not ~60 MB of tuples; a frame
    spilled is read back once, when the frames above it are all visited."""
    HELD = 4096
    _HEAD = struct.Struct("<IH")   # depth, length of the name's bytes (NAME_MAX is 255)

    def __init__(self, scratch=None):
        self.top = []
        self.scratch = scratch
        self.file = None
        self.chunks = []           # offset of each spilled chunk in the file; the last ends at ``end``
        self.end = 0

    def close(self):
        if self.file is not None:
            self.file.close()

    def push(self, depth, name):
        self.top.append((depth, name))
        if len(self.top) > self.HELD:
            self._spill(self.HELD // 2)

    def pop(self):
        if not self.top and self.chunks:
            self._load()
        return self.top.pop() if self.top else None

    def _spill(self, n):
        if self.file is None:
            self.file = tempfile.TemporaryFile(dir=self.scratch)
        out = bytearray()
        for depth, name in self.top[:n]:
            raw = os.fsencode(name)
            out += self._HEAD.pack(depth, len(raw)) + raw
        del self.top[:n]
        os.pwrite(self.file.fileno(), out, self.end)
        self.chunks.append(self.end)
        self.end += len(out)

    def _load(self):
        start = self.chunks.pop()
        data = os.pread(self.file.fileno(), self.end - start, start)
        self.end = start
        pos, head = 0, self._HEAD
        while pos < len(data):
            depth, n = head.unpack_from(data, pos)
            pos += head.size
            self.top.append((depth, os.fsdecode(data[pos:pos + n])))
            pos += n


def _step(fds, name):
    """Move the pair of directory fds to their directories ``name`` (".." for the parents)."""
    for i, fd in enumerate(fds):
        fds[i] = os.open(name, _DIR_FLAGS, dir_fd=fd)
        os.close(fd)


def _relpath(path, name):
    return "/".join((*path, name))


def _shown(rel):
    """A relative path in a message, quoted as every message quotes a name from a layer: a
    newline cannot forge a line, and the byte 0xff reads apart from the characters \\xff."""
    return quote_name(os.fsencode(rel))


def _count(dirfd):
    with os.scandir(dirfd) as it:
        return sum(1 for _ in it)


def _name_missing_from(dirfd, other):
    """A name of ``dirfd`` that ``other`` does not have (None: there is none)."""
    with os.scandir(dirfd) as it:
        for e in it:
            try:
                os.stat(e.name, dir_fd=other, follow_symlinks=False)
            except FileNotFoundError:
                return e.name
    return None


def _compare_dir(da, db, path, stack, loose_dirs):
    """The first difference in the entries of one directory pair; its subdirectories (compared
    as entries) are pushed on ``stack`` to be listed later.  The snapshot's (``da``) names are
    streamed and each looked up in ``db``: equal counts and every name of ``da`` found in
    ``db`` mean the same names, and ``db`` is listed again only to name one it has in excess."""
    depth = len(path)
    count = 0
    with os.scandir(da) as it:
        for e in it:
            count += 1
            name = e.name
            rel = functools.partial(_relpath, path, name)
            sa = e.stat(follow_symlinks=False)
            try:
                sb = os.stat(name, dir_fd=db, follow_symlinks=False)
            except FileNotFoundError:
                return f"{_shown(rel())}: only in the snapshot"
            diff = _entry_diff(da, db, name, sa, sb, rel, bool(loose_dirs) and rel() in loose_dirs)
            if diff:
                return diff
            if stat.S_ISDIR(sa.st_mode):
                stack.push(depth, name)
    if _count(db) != count:
        extra = _name_missing_from(db, da)
        if extra is None:  # a name came or went while the pair was listed
            return f"{_shown('/'.join(path) or '/')}: entries changed while compared"
        return f"{_shown(_relpath(path, extra))}: missing from the snapshot"
    return None


def first_difference(a, b, loose_dirs=(), scratch=None):
    """None if the trees under ``a`` and ``b`` match, else a short description of one difference.

    ``loose_dirs``: relative paths of directories whose metadata is not compared (only that they are
    directories), for implicit dirs whose inherited metadata cannot be recomputed.  ``scratch``:
    where the directories waiting to be visited spill (a temp file; default: the temp dir).

    Memory does not grow with the trees: a directory's names are streamed (``a``'s in the
    order the filesystem lists them, so which difference is reported first depends on that
    order, the same for one state of the trees), the directories waiting for their turn are a
    _DirStack, and two directory fds are held whatever the depth.
    """
    loose_dirs = frozenset(loose_dirs)
    fds = [os.open(a, _DIR_FLAGS)]
    stack = _DirStack(scratch)
    try:
        fds.append(os.open(b, _DIR_FLAGS))
        diff = _entry_diff(*fds, None, os.fstat(fds[0]), os.fstat(fds[1]), lambda: "/", "" in loose_dirs)
        path = []   # names from the root down to the directory pair in fds
        while not diff:
            diff = _compare_dir(*fds, path, stack, loose_dirs)
            if diff:
                break
            frame = stack.pop()
            if frame is None:
                return None
            depth, name = frame
            while len(path) > depth:   # up to the frame's parent
                _step(fds, "..")
                path.pop()
            _step(fds, name)
            path.append(name)
        return diff
    finally:
        stack.close()
        for fd in fds:
            os.close(fd)
