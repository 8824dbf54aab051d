"""Writing a blob into the store: partial file, hashed as written, verified, fsynced, renamed.

    with store.ingest(digest, size) as w:
        if not w.exists:
            fetch from w.offset on; w.write(chunk) ...; w.commit()

The per-digest lock is held for the whole block, so a second writer of the
same digest waits and then finds ``w.exists``.  Nothing reaches blobs/ before
its bytes hashed to the digest it is named by.  A block that ends without
commit() (an exception, a killed connection) keeps the partial file: the next
ingest of that digest re-hashes it and resumes at ``w.offset``.
"""
from __future__ import annotations

import hashlib
import os
import stat

from .. import digest as _digest
from ..errors import DigestMismatchError, ImageError, StoreError
from .fsutil import fsync_dir
from .locks import FileLock

_CHUNK = 1 << 20


def check_stored_size(digest, size, held):
    """The stored blob was verified against its digest, so a descriptor of another size lies about
    it.  Not checked, a pull took such an image when the blob was in the store already ("Already
    exists") and refused it into an empty store: the same image, two answers."""
    if held != size:
        # (the store's copy is the one that can be damaged instead: fsck hashes it)
        raise ImageError(f"blob {digest}: the descriptor says {size} bytes, but the blob of that digest "
                         f"is {held} bytes (the store's copy: lamina fsck checks it)")


def stored_blob(path):
    """The lstat of the blob at ``path`` if the store holds one there, else None.  Only a regular
    file is a blob: lamina writes no other kind, fsck calls anything else at a blob's name "not
    a blob", and open_blob refuses it (a symlink to a good copy elsewhere was taken as held, so a
    pull or copy said "exists" and kept it, and save refused it then).  A writer replaces it."""
    try:
        st = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return st if stat.S_ISREG(st.st_mode) else None


class IngestWriter:
    def __init__(self, paths, digest, size=None):
        self.digest = _digest.validate(digest, "blob digest")
        if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
            raise ImageError(f"blob {digest}: invalid size {size!r}")
        self.size = size
        self._paths = paths
        self.path = paths.blob(digest)
        self._partial = paths.partial(digest)
        self._lock = FileLock(paths.blob_lock(digest))
        self._fd = None
        self._hash = None
        self.offset = 0
        self.exists = False
        self.committed = False

    # --- lifecycle -----------------------------------------------------------

    def __enter__(self):
        self._lock.acquire()
        try:
            self.exists = stored_blob(self.path) is not None
            if self.exists:
                self._check_stored_size()
            else:
                self._open_partial()
        except BaseException:
            self._close()
            raise
        return self

    def __exit__(self, exc_type, exc, tb):
        self._close()
        return False

    def _close(self):
        if self._fd is not None:
            if not self.committed and os.fstat(self._fd).st_size == 0:
                # nothing to resume from (the server failed before the first byte): kept, it
                # would only show as a stale partial download until the next prune
                try:
                    os.unlink(self._partial)
                except FileNotFoundError:
                    pass
            os.close(self._fd)
            self._fd = None
        # Waiters re-open the lock path after we unlink it (see locks.py), so removing it is safe.
        self._lock.release(unlink=True)

    def _check_stored_size(self):
        if self.size is not None:
            check_stored_size(self.digest, self.size, os.stat(self.path).st_size)

    def _open_partial(self):
        self._fd = os.open(self._partial, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        self._hash = hashlib.sha256()
        # Resume: the partial's bytes were written by an earlier ingest of this same digest;
        # hash them again (hash state cannot be saved) so the final check covers every byte.
        offset = 0
        buf = bytearray(_CHUNK)
        with open(self._fd, "rb", buffering=0, closefd=False) as f:
            while True:
                n = f.readinto(buf)
                if not n:
                    break
                self._hash.update(memoryview(buf)[:n])
                offset += n
        if self.size is not None and offset > self.size:
            self._restart()  # longer than the blob can be: not a prefix of it
        else:
            self.offset = offset
        os.lseek(self._fd, self.offset, os.SEEK_SET)

    def _restart(self):
        try:
            os.ftruncate(self._fd, 0)
            os.lseek(self._fd, 0, os.SEEK_SET)
        except OSError as e:   # (as write: which blob, which store, not the bare strerror)
            raise StoreError(f"blob {self.digest}: cannot start it again from byte 0 in the store "
                             f"{self._paths.root}: {e.strerror}") from e
        self._hash = hashlib.sha256()
        self.offset = 0

    # --- writing -------------------------------------------------------------

    def _check_open(self):
        if self.exists:
            raise StoreError(f"blob {self.digest} already exists; nothing to write")
        if self.committed or self._fd is None:
            raise StoreError(f"ingest of blob {self.digest} is closed")

    def write(self, data):
        self._check_open()
        if self.size is not None and self.offset + len(data) > self.size:
            self.discard()
            raise ImageError(f"blob {self.digest}: more data than the expected {self.size} bytes")
        view = memoryview(data)
        self._hash.update(view)
        try:
            while view:
                view = view[os.write(self._fd, view):]
        except OSError as e:
            # a full disk said only "No space left on device": which blob, which store
            raise StoreError(f"blob {self.digest}: cannot write it into the store {self._paths.root}: "
                             f"{e.strerror}") from e
        self.offset += len(data)
        return len(data)

    def write_from(self, fileobj):
        """Copy the rest of a binary file object (after the caller skipped to ``offset``)."""
        buf = bytearray(_CHUNK)
        view = memoryview(buf)
        while True:
            n = fileobj.readinto(view) if hasattr(fileobj, "readinto") else None
            if n is None:
                chunk = fileobj.read(_CHUNK)
                if not chunk:
                    return
                self.write(chunk)
                continue
            if not n:
                return
            self.write(view[:n])

    def restart(self):
        """Throw away what the partial holds and start from byte 0."""
        self._check_open()
        self._restart()

    def discard(self):
        """Delete the partial (its content is known bad)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        try:
            os.unlink(self._partial)
        except FileNotFoundError:
            pass

    def commit(self):
        """Verify size and digest, make durable, and publish as blobs/sha256/<hex>."""
        if self.exists:
            return self.path
        self._check_open()
        if self.size is not None and self.offset != self.size:
            # Short: the source stopped early. Keep the partial, the rest may come later.
            raise ImageError(f"blob {self.digest}: got {self.offset} bytes, expected {self.size}")
        actual = "sha256:" + self._hash.hexdigest()
        if actual != self.digest:
            self.discard()
            raise DigestMismatchError(f"blob {self.digest}", self.digest, actual)
        renamed = False
        try:
            os.fchmod(self._fd, 0o444)  # content-addressed: never to be modified in place
            os.fsync(self._fd)
            os.rename(self._partial, self.path)
            renamed = True
            fsync_dir(self.path.parent)
        except OSError as e:   # a failed sync said only "Input/output error": which blob, which store
            if not renamed:    # the partial stays for a rerun to resume, which its owner must write
                try:
                    os.fchmod(self._fd, 0o644)
                except OSError:
                    pass
            raise StoreError(f"blob {self.digest}: cannot commit it into the store {self._paths.root}: "
                             f"{e.strerror}") from e
        os.close(self._fd)
        self._fd = None
        self.committed = True
        return self.path


def put_bytes(paths, data, digest=None):
    """Store a small blob; returns its digest. Verified like any ingest, atomic, idempotent."""
    actual = _digest.sha256_bytes(bytes(data))
    if digest is not None:
        _digest.validate(digest, "blob digest")
        if digest != actual:
            raise DigestMismatchError(f"blob {digest}", digest, actual)
    if stored_blob(paths.blob(actual)) is not None:
        return actual
    with IngestWriter(paths, actual, len(data)) as w:
        if not w.exists:
            w.restart()
            w.write(data)
            w.commit()
    return actual
