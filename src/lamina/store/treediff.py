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


def _xattrs(path):
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return ()
    out = []
    for n in sorted(names):
        try:
            out.append((n, os.getxattr(path, n, follow_symlinks=False)))
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


def _same_content(a, b):
    """Byte for byte; where both files have the same holes only their data is read (a sparse
    file of a terabyte is a few blocks: reading its holes would take fsck an hour)."""
    with open(a, "rb", buffering=0) as fa, open(b, "rb", buffering=0) as fb:
        size = os.fstat(fa.fileno()).st_size
        if size != os.fstat(fb.fileno()).st_size:
            return False
        regions = _data_map(fa.fileno(), size)
        if regions is None or regions != _data_map(fb.fileno(), size):
            regions = [(0, size)]
        for start, end in regions:
            while start < end:
                n = min(_CHUNK, end - start)
                x, y = os.pread(fa.fileno(), n, start), os.pread(fb.fileno(), n, start)
                if x != y:
                    return False
                if not x:
                    return start >= end
                start += len(x)
        return True


def _entry_diff(a, b, rel, loose):
    sa, sb = os.lstat(a), os.lstat(b)
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
        if not _same_content(a, b):
            return f"{rel}: content differs"
    elif stat.S_ISLNK(sa.st_mode):
        if os.readlink(a) != os.readlink(b):
            return f"{rel}: symlink target differs"
    elif stat.S_ISCHR(sa.st_mode) or stat.S_ISBLK(sa.st_mode):
        if sa.st_rdev != sb.st_rdev:
            return f"{rel}: device number differs"
    if _xattrs(a) != _xattrs(b):
        return f"{rel}: xattrs differ"
    return None


def first_difference(a, b, loose_dirs=()):
    """None if the trees under ``a`` and ``b`` match, else a short description of one difference.

    ``loose_dirs``: relative paths of directories whose metadata is not compared (only that they are
    directories), for implicit dirs whose inherited metadata cannot be recomputed.
    """
    loose_dirs = set(loose_dirs)
    stack = [("", True)]
    while stack:
        rel, is_root = stack.pop()
        pa, pb = os.path.join(a, rel) if rel else a, os.path.join(b, rel) if rel else b
        diff = _entry_diff(pa, pb, rel or "/", rel in loose_dirs)
        if diff:
            return diff
        if not stat.S_ISDIR(os.lstat(pa).st_mode):
            continue
        na, nb = sorted(os.listdir(pa)), sorted(os.listdir(pb))
        if na != nb:
            extra = sorted(set(na) ^ set(nb))[0]
            where = "only in the snapshot" if extra in na else "missing from the snapshot"
            return f"{os.path.join(rel, extra) if rel else extra}: {where}"
        stack.extend((os.path.join(rel, n) if rel else n, False) for n in reversed(na))
    return None
