"""``apply_layer`` all-or-nothing: ``lamina apply --atomic``.

apply works in place, like ``tar -x``: a layer that fails half-way leaves DEST partly
applied.  apply_layer_atomic applies onto a staged copy of DEST (``cp -a``, with reflinks
where the filesystem has them, so ownership, modes, xattrs, devices and hardlinks are
kept) and puts the copy in DEST's place only once the whole layer applied and verified.
The cost is the copy; DEST's parent must be writable.

The staging dir is unpack's (unpacker.make_sibling_staging): made, locked and held by fds in
DEST's parent, so that whoever else can write that parent cannot have their directory take
DEST's place, nor have lamina remove theirs: the copy, the layer, the exchange with DEST and
the removal of the old tree all go by fds, and a name is acted on only while it is still the
directory lamina made or opened.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import subprocess

from .errors import ExtractError, LaminaError
from .tree import clear_dir

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def why_unwritable(directory):
    """Why no entry can be made in ``directory``, in the system's words (None: it can)."""
    try:
        if os.statvfs(directory).f_flag & os.ST_RDONLY:
            return os.strerror(errno.EROFS)  # root too: access(2) alone would not say which
    except OSError as e:
        return e.strerror
    return None if os.access(directory, os.W_OK | os.X_OK) else os.strerror(errno.EACCES)


def _open_dest(dest):
    """An fd of the existing directory DEST (None if there is none), after the checks that
    say why --atomic cannot replace it."""
    try:
        st = os.lstat(dest)
    except (FileNotFoundError, NotADirectoryError):
        return None
    if not stat.S_ISDIR(st.st_mode):
        raise LaminaError(f"{dest} exists and is not a directory")
    parent = os.path.dirname(dest)
    reason = why_unwritable(parent)
    if reason:  # else the staging dir's own error, about a name the user never gave
        raise LaminaError(f"cannot write {parent}: {reason} (--atomic stages a copy of {dest} beside it)")
    if os.path.ismount(dest):
        raise LaminaError(f"{dest} is a mount point: --atomic cannot put another directory in its place")
    try:
        return os.open(dest, _DIR_FLAGS)
    except OSError as e:
        raise LaminaError(f"cannot open {dest}: {e.strerror}") from None


def _copy_into(src_fd, dst_fd, dest):
    """cp -a of directory ``src_fd``'s tree (its own metadata too) into the empty ``dst_fd``."""
    proc = subprocess.run(["cp", "-a", "-T", "--reflink=auto", "--", f"/proc/self/fd/{src_fd}/.",
                           f"/proc/self/fd/{dst_fd}/."], pass_fds=(src_fd, dst_fd), capture_output=True, text=True)
    if proc.returncode != 0:
        raise LaminaError(f"--atomic: cannot copy {dest} to stage the layer: {proc.stderr.strip() or 'cp failed'}")


def _exchange_with_dest(parent_fd, own, name, fd, old_fd, dest):
    """Put the staging dir ``own`` (directory ``fd``) in DEST's place and the old DEST (``old_fd``)
    at ``own``, in one renameat2(RENAME_EXCHANGE) where the filesystem has it (else two renames,
    between which there is no DEST); then make sure it was ours that went onto DEST, else
    undo and refuse."""
    from ._objects import RENAME_EXCHANGE, renameat2
    from .unpacker import _is_at

    def refuse(why):
        raise ExtractError(f"cannot put the applied layer's tree in place of {dest}: {why}") from None

    replaced = (f"its staging dir {own} was replaced by someone else while the layer was applied "
                f"(the staged tree was removed; what is at {own} now is not lamina's)")
    if not _is_at(parent_fd, own, fd):
        refuse(replaced)
    if not _is_at(parent_fd, name, old_fd):
        refuse("it was replaced by someone else while the layer was applied")
    try:
        renameat2(parent_fd, own, parent_fd, name, RENAME_EXCHANGE)
        exchanged = True
    except OSError as e:
        if e.errno not in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
            refuse(e.strerror)
        exchanged = False
    if not exchanged:
        try:
            os.rename(name, own + "-old", src_dir_fd=parent_fd, dst_dir_fd=parent_fd)
        except OSError as e:
            refuse(e.strerror)
        try:
            os.rename(own, name, src_dir_fd=parent_fd, dst_dir_fd=parent_fd)
        except OSError as e:
            os.rename(own + "-old", name, src_dir_fd=parent_fd, dst_dir_fd=parent_fd)
            refuse(e.strerror)
    if not _is_at(parent_fd, name, fd):
        # theirs went onto DEST: the user's tree back in its place, theirs back at our name
        if exchanged:
            renameat2(parent_fd, own, parent_fd, name, RENAME_EXCHANGE)
        else:
            os.rename(name, own, src_dir_fd=parent_fd, dst_dir_fd=parent_fd)
            os.rename(own + "-old", name, src_dir_fd=parent_fd, dst_dir_fd=parent_fd)
        refuse(replaced)
    return own if exchanged else own + "-old"


def _remove_old_tree(parent_fd, name, old_fd):
    """The old DEST, emptied through its own fd; its name removed only while it is that dir.
    The layer is in place by now: what cannot be removed stays at a staging dir's name, which
    the next unpack or apply to DEST sweeps (once this process lets go of its lock)."""
    from .unpacker import _is_at
    try:
        clear_dir(f"/proc/self/fd/{old_fd}/.")  # "/.": clear_dir's O_NOFOLLOW open takes it
        if _is_at(parent_fd, name, old_fd):
            os.rmdir(name, dir_fd=parent_fd)
    except OSError:
        pass


def apply_layer_atomic(layer, dest, **kw):
    """apply_layer(layer, dest, **kw) that leaves DEST untouched unless it succeeds.

    DEST appears (or is replaced) by rename: readers see the old tree or the new one."""
    from .layer import apply_layer
    from .unpacker import (_abandon_staging, _mark, _rename_onto, _unmark, _unpin_message, make_sibling_staging,
                           pinned_staging, release_staging, sibling_fds)
    dest = os.path.abspath(os.fsdecode(dest))
    old_fd = _open_dest(dest)
    try:
        staging = make_sibling_staging(dest)
        try:
            parent_fd, fd = sibling_fds(staging)
            own, name = os.path.basename(staging), os.path.basename(dest)
            if old_fd is not None:
                _copy_into(old_fd, fd, dest)
                _mark(fd, own)   # again: cp -a copied DEST's xattrs, a mark a kill left on DEST among them
            # "/.": the extractor's O_NOFOLLOW open of its root reaches the dir behind the fd
            stats = apply_layer(layer, os.path.join(pinned_staging(staging), "."), **kw)
            if old_fd is None:
                _rename_onto(parent_fd, own, name, fd, dest)
            else:
                # locked as a staging dir is, for once it is at the staging dir's name: a sweep of
                # killed unpacks there leaves it to this process; and marked as one (unpacker._MARK)
                # before it goes there, so that what a kill leaves there is swept
                with contextlib.suppress(OSError):
                    fcntl.flock(old_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                _mark(old_fd, own)   # (at own, or own-old where there is no exchange)
                try:
                    old_name = _exchange_with_dest(parent_fd, own, name, fd, old_fd, dest)
                except BaseException:
                    _unmark(old_fd)   # DEST is back in its place (or never left it)
                    raise
            _unmark(fd)   # DEST now: the layer's tree, without the staging dir's mark
        except BaseException as e:  # includes KeyboardInterrupt: never leave a half-made tree
            _unpin_message(e, pinned_staging(staging), dest)   # the staging dir's /proc/self/fd/N
            _abandon_staging(staging, e)
            raise
        else:
            if old_fd is not None:
                _remove_old_tree(parent_fd, old_name, old_fd)
            return stats
        finally:
            release_staging(staging)
    finally:
        if old_fd is not None:
            os.close(old_fd)
