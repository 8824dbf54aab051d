"""fcntl file locks for the store: per blob, per snapshot, the index, and the gc lease.

flock(2), not POSIX record locks: flock locks belong to the open file
description, so two threads of one process exclude each other just like two
processes do, and closing an unrelated fd on the same file does not drop them.

Per-item lock files are unlinked by their holder when it is done, so locks/
does not grow with every blob ever stored.  That is safe because acquire()
checks, after locking, that the path still names the inode it locked; a waiter
that locked an unlinked inode simply opens the path again.

Readers of a store they cannot write (mounted read-only, another user's) still
lock: a lock file that exists is opened read-only (flock needs no write access),
and one that cannot be created is taken in a per-user runtime directory keyed
by the store, so lamina processes of this machine still exclude each other.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import stat
import tempfile

from ..errors import LaminaError
from .fsutil import symlink_refusal


class LockBusy(LaminaError):
    """A non-blocking lock attempt found the lock held."""


class FileLock:
    """One lock file. ``shared`` for readers of a lease, exclusive otherwise."""

    def __init__(self, path, *, shared=False):
        self.path = os.fspath(path)
        self.shared = shared
        self.fd = None
        self._where = self.path   # the file really locked (a stand-in when the store is read-only)

    def acquire(self, blocking=True):
        op = fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX
        if not blocking:
            op |= fcntl.LOCK_NB
        while True:
            fd, where = _open_lock_file(self.path)
            try:
                fcntl.flock(fd, op)
            except OSError as e:
                os.close(fd)
                if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise LockBusy(f"{self.path} is locked by another process") from None
                raise
            try:
                st = os.stat(where)
            except FileNotFoundError:
                os.close(fd)
                continue
            fst = os.fstat(fd)
            if (st.st_dev, st.st_ino) == (fst.st_dev, fst.st_ino):
                self.fd, self._where = fd, where
                return self
            os.close(fd)  # the holder we waited for unlinked it: lock the new file

    def try_acquire(self):
        """True if acquired; False if someone else holds it."""
        try:
            self.acquire(blocking=False)
            return True
        except LockBusy:
            return False

    def release(self, unlink=False):
        """Release; with ``unlink`` (exclusive holders only) also remove the lock file, if it
        can: one that stays (EIO, a read-only store) is only a leftover, which the next holder
        reuses and fsck sweeps, so what the lock guarded (a blob committed) does not fail for it."""
        if self.fd is None:
            return
        if unlink and not self.shared:
            try:
                os.unlink(self._where)
            except OSError:
                pass
        os.close(self.fd)  # closing the last fd drops the flock
        self.fd = None

    @property
    def held(self):
        return self.fd is not None

    def __del__(self):
        # A forgotten lock must not outlive its owner object (a lease would block gc forever).
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


_UNWRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)


# A lock file is never a symlink lamina made: one planted in locks/ would have its O_CREAT make
# a file (as root) wherever it points, or open a device there read-write (/dev/watchdog arms).
_NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC


class SymlinkLockError(LaminaError):
    """A lock file that is a symlink: never followed, named to the user (fsck --repair removes it)."""


def _refuse_symlink(path, e):
    if e.errno != errno.ELOOP or not os.path.islink(path):
        raise e
    parent, name = os.path.split(os.fspath(path))
    raise SymlinkLockError(symlink_refusal(path, f"lock file {os.path.basename(parent)}/{name} in "
                                           f"{os.path.dirname(parent)}", "remove it (lamina fsck --repair)")) from None


def _open_lock_file(path):
    """(fd to flock, the path it has) for ``path``: the file itself (created if needed),
    opened read-only when the store cannot be written, or a stand-in outside the store
    when it cannot even be created there."""
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | _NOFOLLOW, 0o644), path
    except OSError as e:
        if e.errno not in _UNWRITABLE:
            _refuse_symlink(path, e)
            raise
    try:
        return os.open(path, os.O_RDONLY | _NOFOLLOW), path
    except FileNotFoundError:
        pass
    except OSError as e:
        _refuse_symlink(path, e)
    where = _stand_in(path)
    return os.open(where, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600), where


def _stand_in(path):
    """$XDG_RUNTIME_DIR/lamina-locks/<id of the lock dir>/<name> (or under the temp dir):
    where a lock lives when the store's own locks/ cannot be written."""
    parent, name = os.path.split(os.path.abspath(path))
    try:
        st = os.stat(parent)
        key = f"{st.st_dev}-{st.st_ino}"
    except OSError:
        key = hashlib.sha256(os.fsencode(parent)).hexdigest()[:16]
    d = os.path.join(runtime_dir(create=True), "lamina-locks", key)
    os.makedirs(d, mode=0o700, exist_ok=True)
    return os.path.join(d, name)


def runtime_dir(*, create=False):
    """This user's directory for what lamina keeps outside a store it cannot write (lock
    stand-ins, mount records): $XDG_RUNTIME_DIR, else /run/lamina for root, else
    <temp dir>/lamina-<uid>.  With ``create``, it is made if missing, and one in a shared
    directory must be a real directory of ours that nobody else may write, or we refuse it
    (a planted symlink there would steer root's writes)."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base:
        return base
    uid = os.geteuid()
    d = "/run/lamina" if uid == 0 and os.path.isdir("/run") else os.path.join(tempfile.gettempdir(), f"lamina-{uid}")
    if create:
        try:
            os.mkdir(d, 0o700)
        except FileExistsError:
            pass
        st = os.lstat(d)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != uid or st.st_mode & 0o022:
            raise LaminaError(f"{d} is not a private directory of user {uid}; set XDG_RUNTIME_DIR to one")
    return d


def is_locked(path):
    """True if some process holds a lock on ``path`` (probe without creating it)."""
    try:
        fd = os.open(path, os.O_RDONLY | _NOFOLLOW)
    except FileNotFoundError:
        return False
    except OSError as e:
        if e.errno == errno.ELOOP:
            return False   # a symlink: nobody's lock (none is taken through one)
        raise
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return True
        raise
    finally:
        os.close(fd)
    return False


def remove_if_unlocked(path):
    """Unlink a lock file nobody holds (fsck/gc cleanup). True if removed."""
    if os.path.islink(path):   # no lock is taken through one (see _NOFOLLOW): the link goes, not its target
        os.unlink(path)
        return True
    lock = FileLock(path)
    try:
        if not lock.try_acquire():
            return False
    except FileNotFoundError:
        return False
    try:
        os.unlink(lock._where)   # its failure is fsck's to report, unlike release()'s
    except FileNotFoundError:
        pass
    finally:
        lock.release()
    return True
