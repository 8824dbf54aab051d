"""Small filesystem helpers the store needs for crash safety: atomic writes, fsync, syncfs, du."""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import secrets
import stat

# A full filesystem or quota: never a trait of the layer or image being written
FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)

_libc = None


def is_full(e):
    """True for an error of a full filesystem or quota: an OSError, an ExtractError carrying its
    errno, or a StoreError raised from one."""
    err = getattr(e, "errno", None)
    if err is None and isinstance(e.__cause__, OSError):
        err = e.__cause__.errno
    return err in FULL_ERRNOS


def symlink_refusal(path, shown, remedy):
    """The one wording of a refusal of a symlink found where the store keeps a file of its own
    (an open with O_NOFOLLOW failed ELOOP): ``shown`` names it, ``remedy`` says what to do."""
    try:
        to = f" (to {os.readlink(path)!r})"
    except OSError:
        to = ""
    return f"{shown} is a symlink{to}: lamina never follows symlinks inside its store; {remedy}"


def open_own(path, buffering=-1):
    """The store's own document ``path`` (index.json, config.json, a hold, a snapshot's meta.json)
    opened to read, FileNotFoundError if absent.  lamina writes each whole, by a rename: a symlink
    or anything but a regular file there was put by someone else (a FIFO hung every command, a
    link to /dev/zero read until memory ran out, one outside was read as the store's), so it is
    never followed nor waited on but refused (a StoreError naming it)."""
    from ..errors import StoreError
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        if e.errno != errno.ELOOP:
            raise
        raise StoreError(symlink_refusal(path, os.fspath(path), "put the file back in its place")) from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise StoreError(f"{os.fspath(path)} is not a regular file (mode {stat.S_IFMT(mode):o})")
    return os.fdopen(fd, "rb", buffering=buffering)


def _syncfs_fn():
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    return _libc.syncfs


def syncfs(path):
    """Flush the whole filesystem holding ``path``.

    One call per snapshot is much cheaper than an fsync per extracted file, and
    it is what makes "the snapshot directory exists" imply "its files are on disk"
    across a power loss, not just a process kill.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _syncfs_fn()(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), path)
    finally:
        os.close(fd)


def fsync_dir(path):
    """Make a rename or unlink inside ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    except OSError as e:   # fsync(2) through an fd names nothing: "Input/output error" alone
        raise name_error(e, path)
    finally:
        os.close(fd)


def open_parent_again(fd, want, moved):
    """The directory above ``fd`` (its ".."), opened again where a walk closed it to stay under
    the open-file limit (an image's symlinks lead its tree thousands of levels down): it must
    still be the directory of (dev, ino) ``want``, else ESTALE with the message ``moved``."""
    parent = os.open("..", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
    st = os.fstat(parent)
    if (st.st_dev, st.st_ino) != want:
        os.close(parent)
        raise OSError(errno.ESTALE, moved, "..")
    return parent


def name_error(e, path):
    """Give ``e`` the file name ``path`` if it has none: an OSError of a write through an fd or
    a file object carries none (only open() sets it), so a full disk said "No space left on
    device" and not where.  Returns ``e``."""
    if isinstance(e, OSError) and e.filename is None:
        e.filename = os.fspath(path)
    return e


class NamedWrites:
    """A file object whose failed writes name ``path``: a write through a file object names no
    file, so a save whose archive's disk failed (EIO), or a copy into a compact store whose
    sidecar's did, said the bare 'Input/output error' (a full disk was named by atomic_output,
    EIO and a failing pipe were not).  Only the writes: an error reading the store is not the
    output's.  Everything else passes through to the file."""

    def __init__(self, f, path):
        self._f, self._path = f, path

    def write(self, data):
        return self._named(self._f.write, data)

    def flush(self):
        # (a buffered file shows a failed write(2) at the flush, e.g. the one lz4 makes as it closes)
        return self._named(self._f.flush)

    def _named(self, call, *args):
        try:
            return call(*args)
        except OSError as e:
            raise name_error(e, self._path)

    def __getattr__(self, name):
        return getattr(self._f, name)


def tmp_name(prefix):
    """A unique sibling name for staging: ``<prefix>.tmp-<pid>-<random>``."""
    return f"{prefix}.tmp-{os.getpid()}-{secrets.token_hex(4)}"


def atomic_write(path, data, mode=0o644, renamed=None):
    """Replace ``path`` with ``data``: write a temp file, fsync, rename, fsync the directory.

    ``data``: bytes, or an iterable of bytes chunks (a document too big to hold whole).
    Readers see the old or the new content, never a mix; a crash leaves at most
    a ``*.tmp-*`` file that fsck removes.  ``renamed``: called once the new content is in place,
    before the directory's sync (which may still fail: the file is replaced all the same).
    """
    path = os.fspath(path)
    tmp = tmp_name(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        for chunk in (data,) if isinstance(data, (bytes, bytearray, memoryview)) else data:
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException as e:
        os.close(fd)
        os.unlink(tmp)
        raise name_error(e, path)  # the file it replaces: the temp name is gone
    os.close(fd)
    try:
        os.rename(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    if renamed is not None:
        renamed()
    fsync_dir(os.path.dirname(path) or ".")


def write_if_absent(path, data, mode=0o644):
    """Create ``path`` with ``data`` unless it exists; safe when several processes race.

    link(2) of a complete temp file either creates the name or fails with
    EEXIST, so nobody ever sees a half-written file and nobody overwrites.
    """
    path = os.fspath(path)
    if os.path.lexists(path):
        return False
    tmp = tmp_name(path)
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, mode)
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        os.unlink(tmp)


def disk_usage(path):
    """(bytes on disk, inodes) of a tree, counting each hardlinked inode once; symlinks not followed.

    Every snapshot commit measures its tree (meta.json): done natively, without the GIL
    (lamina._objects.tree_usage; the Python walk it replaces took 30-90 ms of a pull's
    last layer on the bench image)."""
    from .._objects import tree_usage
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return tree_usage(fd)
    finally:
        os.close(fd)
