"""``apply_layer`` all-or-nothing: ``lamina apply --atomic``.

apply works in place, like ``tar -x``: a layer that fails half-way leaves DEST partly
applied.  apply_layer_atomic applies onto a staged copy of DEST (``cp -a``, with reflinks
where the filesystem has them, so ownership, modes, xattrs, devices and hardlinks are
kept) and puts the copy in DEST's place only once the whole layer applied and verified.
The cost is the copy; DEST's parent must be writable.
"""
from __future__ import annotations

import errno
import os
import secrets
import subprocess

from .errors import LaminaError
from .tree import make_dirs


def why_unwritable(directory):
    """Why no entry can be made in ``directory``, in the system's words (None: it can)."""
    try:
        if os.statvfs(directory).f_flag & os.ST_RDONLY:
            return os.strerror(errno.EROFS)  # root too: access(2) alone would not say which
    except OSError as e:
        return e.strerror
    return None if os.access(directory, os.W_OK | os.X_OK) else os.strerror(errno.EACCES)


def _sibling(dest, what):
    parent, name = os.path.split(dest.rstrip("/"))
    return os.path.join(parent, f".{name}.lamina-{what}-{secrets.token_hex(4)}")


def _exchange(a, b):
    """Swap the sibling directories ``a`` and ``b`` in one renameat2(RENAME_EXCHANGE): True if
    done, False where the kernel or filesystem offers no exchange."""
    from ._objects import RENAME_EXCHANGE, renameat2
    parent = os.open(os.path.dirname(b), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        renameat2(parent, os.path.basename(a), parent, os.path.basename(b), RENAME_EXCHANGE)
    except OSError as e:
        if e.errno in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
            return False
        raise OSError(e.errno, e.strerror, b) from None
    finally:
        os.close(parent)
    return True


def apply_layer_atomic(layer, dest, **kw):
    """apply_layer(layer, dest, **kw) that leaves DEST untouched unless it succeeds.

    DEST appears (or is replaced) by rename: readers see the old tree or the new one."""
    from .layer import apply_layer
    from .tree import remove_tree
    dest = os.path.abspath(os.fsdecode(dest))
    staging = _sibling(dest, "staging")
    make_dirs(os.path.dirname(dest), f"destination {dest}")  # the staging dir's errors would name it
    try:
        if os.path.lexists(dest):
            if not os.path.isdir(dest) or os.path.islink(dest):
                raise LaminaError(f"{dest} exists and is not a directory")
            parent = os.path.dirname(dest)
            reason = why_unwritable(parent)
            if reason:  # else cp's own words, about a staging name the user never gave
                raise LaminaError(f"cannot write {parent}: {reason} (--atomic stages a copy of {dest} beside it)")
            proc = subprocess.run(["cp", "-a", "--reflink=auto", "--", dest, staging],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                raise LaminaError(f"--atomic: cannot copy {dest} to stage the layer: "
                                  f"{proc.stderr.strip() or 'cp failed'}")
        stats = apply_layer(layer, staging, **kw)
        if not os.path.lexists(dest):
            os.rename(staging, dest)
        elif not _exchange(staging, dest):  # the old tree is the staging name's now (removed below)
            # two renames: for a moment there is no DEST, and a crash there leaves none
            old = _sibling(dest, "old")
            os.rename(dest, old)
            os.rename(staging, dest)
            remove_tree(old)
        return stats
    finally:
        if os.path.lexists(staging):
            remove_tree(staging)
