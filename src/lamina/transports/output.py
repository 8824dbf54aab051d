"""Shared by the writers: verify bytes while copying them, and publish output files atomically."""
from __future__ import annotations

import errno
import fcntl
import hashlib
import io
import os
import re
import stat
import tarfile
from contextlib import contextmanager

from .. import compression, trace
from ..errors import CompressionError, DigestMismatchError, ImageError
from ..store.fsutil import NamedWrites, fsync_dir, name_error, tmp_name

CHUNK = 1 << 20


class VerifyingReader:
    """Hashes what passes through; check() after the copy compares with the expected digest.

    Used for every blob and layer tar we write, so an output never carries
    bytes that do not match the digest (or diffID) its manifest announces.
    """

    def __init__(self, raw, expected, what):
        self.raw, self.expected, self.what = raw, expected, what
        self.hash = hashlib.sha256()
        self.count = 0

    def read(self, n=-1):
        n = CHUNK if n is None or n < 0 else n
        data = self.raw.read(n)
        # tarfile treats a short read as the end of data; decompressors (zstd) may return less
        # than asked before their end, so fill the request.
        while data and len(data) < n:
            more = self.raw.read(n - len(data))
            if not more:
                break
            data += more
        self.hash.update(data)
        self.count += len(data)
        return data

    def check(self):
        if self.raw.read(1):  # longer than announced: the digest would not cover what we wrote
            raise ImageError(f"{self.what}: longer than its recorded size")
        actual = "sha256:" + self.hash.hexdigest()
        if actual != self.expected:
            raise DigestMismatchError(self.what, self.expected, actual)


FULL_WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # what only a write fails with


def add_stream(tar, name, size, fileobj, expected, what, mode=0o644):
    """Add a member from a stream of known size, verifying its digest."""
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, mode, 0
    reader = VerifyingReader(fileobj, expected, what)
    try:
        tar.addfile(info, reader)
    except BrokenPipeError:
        raise  # the reader of our output went away (save | head): not a fault of the layer
    except OSError as e:
        if e.errno in FULL_WRITE_ERRNOS:
            raise  # the archive's disk is full (atomic_output names the archive), not the layer short
        # tarfile says "unexpected end of data" when the stream is short
        raise ImageError(f"{what}: {e} (expected {size} bytes)") from None
    reader.check()


def add_bytes(tar, name, data, mode=0o644):
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, 0
    tar.addfile(info, io.BytesIO(data))


def add_dir(tar, name):
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
    tar.addfile(info)


def add_symlink(tar, name, target):
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode, info.mtime = tarfile.SYMTYPE, target, 0o777, 0
    tar.addfile(info)


@contextmanager
def atomic_output(path):
    """A binary file that appears at ``path`` only if the block succeeds (else nothing is left)."""
    path = os.path.abspath(os.fsdecode(path))
    if os.path.isdir(path):
        raise ImageError(f"{path} is a directory")
    parent = os.path.dirname(path)
    if not os.path.isdir(parent):
        # a file there is no missing directory: say which it is, as open(2)'s ENOTDIR would
        raise ImageError(f"{parent} exists and is not a directory" if os.path.lexists(parent)
                         else f"{parent}: no such directory")
    if _written_in_place(path):
        with _in_place(path) as f:
            yield f
        return
    tmp = tmp_name(path)
    f = None
    try:
        f = open(tmp, "xb")   # inside the try: a Ctrl-C right after the open still removes it
        _hold_and_mark(f.fileno(), tmp)
        _sweep_killed_outputs(parent, os.path.basename(path))
        yield NamedWrites(f, path)
        try:
            f.flush()
            os.fsync(f.fileno())
            f.close()
            os.rename(tmp, path)
            fsync_dir(parent)
        except OSError as e:   # the file's own sync or rename: it names no file ("Input/output error")
            raise name_error(e, path)
    except BaseException as e:
        try:
            if f is not None:
                f.close()
        except OSError:
            pass  # flushing what the failed write left buffered fails the same way
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(e, OSError):
            _raise_naming(e, path)
        raise


# A temp file of atomic_output is held (flock) while it is written and marked with this xattr, its
# value the file's inode number and the random part of its name; one found marked that nobody
# holds is what a killed save or copy left (a partial archive, as big as the image): the next
# output to the same path removes it.  Unmarked (a filesystem without user xattrs, a kill in the
# two calls between the open and the mark), nothing is removed: the user's own file of such a
# name (or a copy of ours: another inode) never passes for one.
_MARK = "user.lamina.partial"
_HOLD_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def _mark_value(ino, name):
    return f"{ino} {name.rsplit('.tmp-', 1)[-1]}".encode()


def _hold_and_mark(fd, tmp):
    fcntl.flock(fd, fcntl.LOCK_EX)   # before the mark: a marked file nobody holds is a dead one
    try:
        os.setxattr(fd, _MARK, _mark_value(os.fstat(fd).st_ino, tmp))
    except OSError:
        pass   # no user xattrs there: a kill leaves the temp file, as it always did


def _sweep_killed_outputs(parent, name):
    """Remove ``parent``'s NAME.tmp-* files that atomic_output marked and nobody holds: those of
    saves and copies to the same path that were killed.  Through the directory's fd."""
    pattern = re.compile(re.escape(name) + r"\.tmp-[0-9]+-[0-9a-f]{8}")
    try:
        dir_fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        for n in os.listdir(dir_fd):
            if not pattern.fullmatch(n):
                continue
            try:
                fd = os.open(n, _HOLD_FLAGS, dir_fd=dir_fd)
            except OSError:
                continue   # gone, a symlink, or not ours to read
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode) or os.getxattr(fd, _MARK) != _mark_value(st.st_ino, n):
                    continue
                there = os.stat(n, dir_fd=dir_fd, follow_symlinks=False)
                if (there.st_dev, there.st_ino) == (st.st_dev, st.st_ino):
                    trace.event("sweep-killed-output", path=os.path.join(parent, n))
                    os.unlink(n, dir_fd=dir_fd)
            except OSError:
                pass   # held (another save to that path is writing it), unmarked, or not ours to remove
            finally:
                os.close(fd)
    finally:
        os.close(dir_fd)


def _raise_naming(e, path):
    """A write to the archive that found the disk full names the file the user gave (else "No
    space left on device" alone); any other error is left to the caller to raise as it is."""
    if e.errno in FULL_WRITE_ERRNOS and e.filename is None:
        raise OSError(e.errno, e.strerror, path) from None


def _written_in_place(path):
    """An output that is no file of its own to replace: a device (``-o /dev/null``), a FIFO or a
    socket, or one of the process's own descriptors (``/dev/stdout``, ``/dev/fd/3``: a shell's pipe
    or file).  A temp file renamed over it replaced /dev/null itself with the archive, for every
    program after; docker's own rename does the same.  These are written through, as tar -f does."""
    if path in ("/dev/stdout", "/dev/stderr") or path.startswith(("/dev/fd/", "/proc/")):
        return os.path.exists(path)
    try:
        return not stat.S_ISREG(os.stat(path).st_mode)
    except FileNotFoundError:
        return False


def is_stdout(path):
    """Whether ``path`` is this process's stdout (``/dev/stdout``, ``/dev/fd/1``, the file a shell's
    ``>`` opened): an archive written there is the whole stream a reader gets, so a report printed
    beside it would be junk after the archive's end."""
    try:
        a, b = os.stat(path), os.fstat(1)
    except (OSError, ValueError):
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


@contextmanager
def _in_place(path):
    """``path`` opened for writing as it is: never created, truncated only if a regular file
    (``/dev/stdout`` redirected to one), nothing removed if the block fails."""
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    f = os.fdopen(fd, "wb")
    try:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            f.truncate(0)
        yield NamedWrites(f, path)
        f.flush()
    except OSError as e:
        _raise_naming(e, path)
        raise
    finally:
        try:
            f.close()
        except OSError:
            pass  # what a failed write left buffered fails the same way


@contextmanager
def stream_tar(fileobj):
    """A streaming tar writer (no seeking, so stdout works), with 1 MiB copies; the archive is
    finished (end blocks written) only when the block succeeds."""
    tar = tarfile.open(fileobj=fileobj, mode="w|", format=tarfile.PAX_FORMAT, bufsize=CHUNK)
    tar.copybufsize = CHUNK
    try:
        yield tar
    except BaseException:
        # abandoned half-way (an error, Ctrl-C): left to the garbage collector, tarfile would write
        # its end blocks into a file already closed and print a traceback
        tar.fileobj.closed = tar.closed = True
        raise
    tar.close()


def open_uncompressed(open_raw, what, media_type=None):
    """The uncompressed bytes of a layer blob, whatever its compression (sniffed from magic bytes,
    a plain ``tar`` ``media_type`` deciding for a tar whose first name starts like one)."""
    raw = open_raw()
    head, kind = compression.sniff(raw, media_type)
    stream = io.BufferedReader(compression.Prefixed(head, raw, close_raw=True), CHUNK)
    if kind == "none":
        return stream
    return io.BufferedReader(_Inflating(compression.open_decompressed(stream, kind, what), stream, what), CHUNK)


class _Inflating(io.RawIOBase):
    """A decompressor that also closes its source (GzipFile leaves a passed fileobj open)."""

    def __init__(self, inflater, source, what):
        self._inflater, self._source, self._what = inflater, source, what

    def readable(self):
        return True

    def readinto(self, buf):
        try:
            data = self._inflater.read(len(buf))
        except compression.decompress_errors() as e:
            raise CompressionError(f"{self._what}: corrupt compressed stream: {e}") from None
        buf[:len(data)] = data
        return len(data)

    def close(self):
        if not self.closed:
            self._inflater.close()
            self._source.close()
        super().close()
