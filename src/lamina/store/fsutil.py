"""Small filesystem helpers the store needs for crash safety: atomic writes, fsync, syncfs, du."""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import secrets

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


def name_the_layer(e, digests, which):
    """An error of an image's layer that the store's snapshots, shared by every image, name by
    digest alone ("layer sha256:…: entry 'x': …", a full disk's "layer sha256:…: storing its
    snapshot failed"), or that a blob's download or ingest names by its digest alone ("blob
    sha256:…: cannot write it", "blob sha256:… not found in REPO", "GET blob sha256:… from
    REPO: 500"): say which layer of the image that is too, as unpack does ("layer 2 of 3
    (sha256:…): …", "layer 2 of 3: blob sha256:…").  ``digests``: the image's layer digests,
    bottom first; ``which(i)``: how the ``i``-th is named.  Rewrites ``e``'s message in place
    (keeping its class, errno and the rest); returns whether it did."""
    if len(e.args) != 1 or not isinstance(e.args[0], str):
        return False
    msg = e.args[0]
    # a blob an image lists twice is two layers: the place the error was marked with comes first
    # (snapshots.ensure_all, the pull's extraction), else the first layer of that digest
    at = getattr(e, "layer_index", None)
    first = [at] if isinstance(at, int) and 0 <= at < len(digests) else []
    for i in first + list(range(len(digests))):
        digest = digests[i]
        head = f"layer {digest}"
        if msg.startswith(head + ":") or msg.startswith(head + " ("):
            rest = msg[len(head):]
            # "layer sha256:… (diffID …): …" keeps its diffID in the one parenthesis
            e.args = (f"{which(i)} ({digest}{', ' + rest[2:] if rest.startswith(' (') else ')' + rest}",)
            if isinstance(getattr(e, "what", None), str) and e.what.startswith(head):
                e.what = e.args[0][:len(e.args[0]) - len(msg) + len(e.what)]
            return True
        if any(msg.startswith(f"{verb}blob {digest}") for verb in ("", "GET ", "HEAD ")):
            e.args = (f"{which(i)}: {msg}",)
            if isinstance(getattr(e, "what", None), str) and e.what.startswith("blob "):
                e.what = f"{which(i)}: {e.what}"
            return True
    return False


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
    finally:
        os.close(fd)


def name_error(e, path):
    """Give ``e`` the file name ``path`` if it has none: an OSError of a write through an fd or
    a file object carries none (only open() sets it), so a full disk said "No space left on
    device" and not where.  Returns ``e``."""
    if isinstance(e, OSError) and e.filename is None:
        e.filename = os.fspath(path)
    return e


def tmp_name(prefix):
    """A unique sibling name for staging: ``<prefix>.tmp-<pid>-<random>``."""
    return f"{prefix}.tmp-{os.getpid()}-{secrets.token_hex(4)}"


def atomic_write(path, data, mode=0o644):
    """Replace ``path`` with ``data``: write a temp file, fsync, rename, fsync the directory.

    ``data``: bytes, or an iterable of bytes chunks (a document too big to hold whole).
    Readers see the old or the new content, never a mix; a crash leaves at most
    a ``*.tmp-*`` file that fsck removes.
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
