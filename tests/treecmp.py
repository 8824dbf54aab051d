"""Snapshot a directory tree and compare two snapshots with a readable diff.

A snapshot records, for every path below the root (relative, "/"-separated):
type, permission bits (incl. setuid/setgid/sticky), uid, gid, size and
content digest of regular files (content_digest: blind to holes), symlink target, (major, minor) of devices, every
xattr (all namespaces, read without following symlinks) and mtime (int
seconds; directories only when asked).  Hardlink groups (paths sharing one
inode, within the tree) are recorded separately.
"""
from __future__ import annotations

import errno
import hashlib
import os
import stat
from dataclasses import dataclass, field, fields, replace

TYPES = {
    stat.S_IFREG: "file", stat.S_IFDIR: "dir", stat.S_IFLNK: "symlink",
    stat.S_IFCHR: "chr", stat.S_IFBLK: "blk", stat.S_IFIFO: "fifo", stat.S_IFSOCK: "sock",
}


@dataclass(frozen=True)
class Entry:
    type: str
    mode: int
    uid: int
    gid: int
    size: int | None = None          # regular files only
    sha256: str | None = None        # regular files only
    target: str | None = None        # symlinks only
    rdev: tuple | None = None        # devices only: (major, minor)
    xattrs: tuple = ()               # sorted ((name, value-bytes), ...)
    mtime: int | None = None         # None when not recorded

    def describe(self):
        parts = [self.type, oct(self.mode), f"{self.uid}:{self.gid}"]
        if self.size is not None:
            parts.append(f"size={self.size}")
        if self.target is not None:
            parts.append(f"-> {self.target!r}")
        if self.rdev is not None:
            parts.append(f"rdev={self.rdev[0]},{self.rdev[1]}")
        return " ".join(parts)


@dataclass
class Snapshot:
    root: str
    entries: dict = field(default_factory=dict)      # relpath -> Entry
    links: frozenset = frozenset()                   # frozenset of frozensets of relpaths

    def __contains__(self, path):
        return path in self.entries

    def __getitem__(self, path):
        return self.entries[path]

    def paths(self):
        return sorted(self.entries)

    def without(self, *fieldnames, types=None):
        """A copy with the given Entry fields blanked (for types in `types`, or all)."""
        out = {}
        blank = {f: (() if f == "xattrs" else None) for f in fieldnames}
        for p, e in self.entries.items():
            out[p] = replace(e, **blank) if (types is None or e.type in types) else e
        return Snapshot(self.root, out, self.links)

    def filtered(self, keep):
        """A copy with only paths for which keep(path, entry) is true."""
        out = {p: e for p, e in self.entries.items() if keep(p, e)}
        links = frozenset(frozenset(x for x in g if x in out) for g in self.links)
        return Snapshot(self.root, out, frozenset(g for g in links if len(g) > 1))


def _xattrs(path, xattr_filter):
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return ()
    out = []
    for n in sorted(names):
        if xattr_filter is not None and not xattr_filter(n):
            continue
        try:
            v = os.getxattr(path, n, follow_symlinks=False)
        except OSError as e:  # pragma: no cover - racing
            v = f"<error {e.errno}>".encode()
        out.append((n, v))
    return tuple(out)


_BLOCK = 1 << 16
_ZEROS = bytes(_BLOCK)


def content_digest(data):
    """The digest snapshot() records for a regular file holding ``data``."""
    h = hashlib.sha256(b"%d:" % len(data))
    for i in range(0, -(-len(data) // _BLOCK)):
        b = data[i * _BLOCK:(i + 1) * _BLOCK]
        if b != _ZEROS[:len(b)]:
            h.update(b"%d:%d:" % (i, len(b)) + b)
    return h.hexdigest()


def _sha256(path):
    """A digest of a file's bytes that does not see where its holes are: sha256 of its size and of
    its non-zero 64 KiB blocks with their places.  Holes are never read (SEEK_DATA), so a sparse
    file of a terabyte costs a few blocks, and one tool writing zeros where another leaves a hole
    gives the same digest."""
    h = None
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        size = os.fstat(fd).st_size
        h = hashlib.sha256(b"%d:" % size)
        pos, done = 0, -1
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
                end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
            except OSError as e:  # ENXIO: only a hole is left; EINVAL: no SEEK_DATA here
                if e.errno != errno.EINVAL:
                    break
                start, end = pos, size
            for i in range(max(start // _BLOCK, done + 1), (end - 1) // _BLOCK + 1):
                b = os.pread(fd, _BLOCK, i * _BLOCK)
                if b != _ZEROS[:len(b)]:
                    h.update(b"%d:%d:" % (i, len(b)) + b)
                done = i
            pos = end
    finally:
        os.close(fd)
    return h.hexdigest()


def snapshot(root, *, include_root=False, dir_mtime=False, mtime=True, symlink_mtime=True,
             xattrs=True, xattr_filter=None, content=True):
    """Snapshot the tree below `root` (never following symlinks).

    include_root: also record the root itself under the path ".".
    dir_mtime:    record directory mtimes (off by default: they move whenever a child changes).
    mtime:        record mtimes of non-directories.
    symlink_mtime: record symlink mtimes (when mtime is on).
    xattr_filter: callable(name) -> bool choosing which xattrs to record.
    """
    root = os.fspath(root)
    entries = {}
    inodes = {}

    def record(rel, full, st):
        t = TYPES.get(stat.S_IFMT(st.st_mode), "unknown")
        kw = dict(type=t, mode=stat.S_IMODE(st.st_mode), uid=st.st_uid, gid=st.st_gid)
        if t == "file":
            kw["size"] = st.st_size
            if content:
                kw["sha256"] = _sha256(full)
        elif t == "symlink":
            kw["target"] = os.readlink(full)
        elif t in ("chr", "blk"):
            kw["rdev"] = (os.major(st.st_rdev), os.minor(st.st_rdev))
        if xattrs:
            kw["xattrs"] = _xattrs(full, xattr_filter)
        want_mtime = (t == "dir" and dir_mtime) or (t == "symlink" and mtime and symlink_mtime) \
            or (t not in ("dir", "symlink") and mtime)
        if want_mtime:
            kw["mtime"] = int(st.st_mtime_ns // 1_000_000_000)
        entries[rel] = Entry(**kw)
        if t != "dir" and st.st_nlink > 1:
            inodes.setdefault((st.st_dev, st.st_ino), set()).add(rel)

    def walk(rootfull):
        # Iterative, one directory fd open at a time, children named through /proc/self/fd:
        # a hostile image's tree may be thousands of levels deep (symlinks chained through
        # it), past both Python's recursion limit and PATH_MAX, and every path must still be
        # compared.  Going back up is openat(fd, ".."), fine inside a tree nothing changes.
        fd = os.open(rootfull, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        stack = []  # (dirrel, remaining children) of the directories above the current one

        def children(fd):
            with os.scandir(fd) as it:
                return sorted((d.name for d in it), reverse=True)

        try:
            dirrel, todo = "", children(fd)
            while True:
                if not todo:
                    if not stack:
                        break
                    up = os.open("..", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
                    os.close(fd)
                    fd = up
                    dirrel, todo = stack.pop()
                    continue
                name = todo.pop()
                rel = name if not dirrel else dirrel + "/" + name
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                record(rel, f"/proc/self/fd/{fd}/{name}", st)
                if stat.S_ISDIR(st.st_mode):
                    down = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
                    os.close(fd)
                    fd = down
                    stack.append((dirrel, todo))
                    dirrel, todo = rel, children(fd)
        finally:
            os.close(fd)

    st = os.lstat(root)
    if not stat.S_ISDIR(st.st_mode):
        raise NotADirectoryError(root)
    if include_root:
        record(".", root, st)
    walk(root)
    links = frozenset(frozenset(g) for g in inodes.values() if len(g) > 1)
    return Snapshot(root, entries, links)


def _fmt_val(name, v):
    if name == "mode" and v is not None:
        return oct(v)
    if name == "xattrs":
        return "{" + ", ".join(f"{k}={val!r}" for k, val in v) + "}"
    return repr(v)


def compare(a, b, *, ignore=(), labels=("A", "B"), max_lines=200):
    """Return a readable diff of two snapshots ('' when equal).

    ignore: Entry field names not to compare, and/or "links" for hardlink groups.
    """
    la, lb = labels
    lines = []
    pa, pb = set(a.entries), set(b.entries)
    for p in sorted(pa - pb):
        lines.append(f"only in {la}: {p!r} ({a.entries[p].describe()})")
    for p in sorted(pb - pa):
        lines.append(f"only in {lb}: {p!r} ({b.entries[p].describe()})")
    names = [f.name for f in fields(Entry) if f.name not in ignore]
    for p in sorted(pa & pb):
        ea, eb = a.entries[p], b.entries[p]
        if ea.type != eb.type:
            lines.append(f"{p!r}: type {la}={ea.describe()} {lb}={eb.describe()}")
            continue
        for n in names:
            va, vb = getattr(ea, n), getattr(eb, n)
            if va != vb:
                lines.append(f"{p!r}: {n} {la}={_fmt_val(n, va)} {lb}={_fmt_val(n, vb)}")
    if "links" not in ignore:
        ga = {g for g in a.links if g <= (pa & pb)}
        gb = {g for g in b.links if g <= (pa & pb)}
        for g in sorted(ga - gb, key=sorted):
            lines.append(f"hardlink group only in {la}: {sorted(g)}")
        for g in sorted(gb - ga, key=sorted):
            lines.append(f"hardlink group only in {lb}: {sorted(g)}")
    if len(lines) > max_lines:
        lines = lines[:max_lines] + [f"... and {len(lines) - max_lines} more differences"]
    return "\n".join(lines)


def assert_same(a, b, *, ignore=(), labels=("expected", "lamina"), context=""):
    diff = compare(a, b, ignore=ignore, labels=labels)
    if diff:
        head = f"trees differ ({labels[0]}={a.root}, {labels[1]}={b.root})"
        if context:
            head += f" [{context}]"
        raise AssertionError(head + ":\n" + diff)


def listing(root):
    """Sorted relative paths below root (quick existence checks)."""
    return snapshot(root, xattrs=False, content=False, mtime=False).paths()
