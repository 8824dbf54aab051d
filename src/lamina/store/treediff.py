"""First difference between two extracted trees (fsck: a snapshot against a fresh extraction).

Compared: entry names, type, permission bits, owner, size, file content and
mtime, symlink target, device numbers, xattrs.  Directory mtimes are not:
directories a layer does not list are created at extraction time.
"""
from __future__ import annotations

import errno
import os
import stat

_CHUNK = 1 << 20
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK

# The trees are walked through directory fds, one pair at a time (down by name, up by
# ".."): a layer may be as deep as its path limit allows, and the snapshot's own path
# in front of that goes past PATH_MAX, where path strings fail (ENAMETOOLONG).


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


def _entry_diff(da, db, name, rel, loose):
    """The first difference between entry ``name`` of ``da`` and of ``db`` (None: the dirs themselves)."""
    if name is None:
        sa, sb = os.fstat(da), os.fstat(db)
    else:
        sa, sb = os.stat(name, dir_fd=da, follow_symlinks=False), os.stat(name, dir_fd=db, follow_symlinks=False)
    if stat.S_IFMT(sa.st_mode) != stat.S_IFMT(sb.st_mode):
        return f"{rel}: type differs"
    if loose and stat.S_ISDIR(sa.st_mode):
        return None
    if stat.S_IMODE(sa.st_mode) != stat.S_IMODE(sb.st_mode):
        return f"{rel}: mode {stat.S_IMODE(sa.st_mode):o} != {stat.S_IMODE(sb.st_mode):o}"
    if (sa.st_uid, sa.st_gid) != (sb.st_uid, sb.st_gid):
        return f"{rel}: owner {sa.st_uid}:{sa.st_gid} != {sb.st_uid}:{sb.st_gid}"
    if stat.S_ISREG(sa.st_mode):
        if sa.st_size != sb.st_size:
            return f"{rel}: size {sa.st_size} != {sb.st_size}"
        if sa.st_mtime_ns != sb.st_mtime_ns:
            return f"{rel}: mtime differs"
        if not _same_content(da, db, name):
            return f"{rel}: content differs"
    elif stat.S_ISLNK(sa.st_mode):
        if os.readlink(name, dir_fd=da) != os.readlink(name, dir_fd=db):
            return f"{rel}: symlink target differs"
    elif stat.S_ISCHR(sa.st_mode) or stat.S_ISBLK(sa.st_mode):
        if sa.st_rdev != sb.st_rdev:
            return f"{rel}: device number differs"
    if _xattrs(da, name) != _xattrs(db, name):
        return f"{rel}: xattrs differ"
    return None


def first_difference(a, b, loose_dirs=()):
    """None if the trees under ``a`` and ``b`` match, else a short description of one difference.

    ``loose_dirs``: relative paths of directories whose metadata is not compared (only that they are
    directories), for implicit dirs whose inherited metadata cannot be recomputed.
    """
    loose_dirs = set(loose_dirs)
    da = os.open(a, _DIR_FLAGS)
    try:
        db = os.open(b, _DIR_FLAGS)
    except BaseException:
        os.close(da)
        raise
    try:
        diff = _entry_diff(da, db, None, "/", "" in loose_dirs)
        if diff:
            return diff
        # one frame per directory being listed: its relative path and the names still to visit
        frames = []
        rel = ""
        while True:
            na, nb = sorted(os.listdir(da)), sorted(os.listdir(db))
            if na != nb:
                extra = sorted(set(na) ^ set(nb))[0]
                where = "only in the snapshot" if extra in na else "missing from the snapshot"
                return f"{rel + '/' + extra if rel else extra}: {where}"
            frames.append((rel, na[::-1]))
            while frames:
                rel, todo = frames[-1]
                if not todo:
                    frames.pop()
                    if frames:  # back up to the parent
                        pa = os.open("..", _DIR_FLAGS, dir_fd=da)
                        os.close(da)
                        da = pa
                        pb = os.open("..", _DIR_FLAGS, dir_fd=db)
                        os.close(db)
                        db = pb
                    continue
                name = todo.pop()
                crel = rel + "/" + name if rel else name
                diff = _entry_diff(da, db, name, crel, crel in loose_dirs)
                if diff:
                    return diff
                if stat.S_ISDIR(os.stat(name, dir_fd=da, follow_symlinks=False).st_mode):
                    ca = os.open(name, _DIR_FLAGS, dir_fd=da)
                    os.close(da)
                    da = ca
                    cb = os.open(name, _DIR_FLAGS, dir_fd=db)
                    os.close(db)
                    db = cb
                    rel = crel
                    break
            else:
                return None
    finally:
        os.close(da)
        os.close(db)
