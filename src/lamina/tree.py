"""Removing a tree whatever a layer left in it.

Used by unpack (a failed staging dir), the store (snapshots, mounts) and
materialize.  The work is done by the native core: directory fds all the
way down, never following a symlink, read-only directories opened up as it
goes, iterative (any depth, two fds open).
"""
import os

from ._extract import clear_dir, remove_tree

__all__ = ["abandon", "clear_dir", "discard", "is_pinned", "make_dirs", "pin", "remove_tree", "unpin"]

# The /proc/self/fd/N names of the directories held open that lamina writes by (unpack's staging
# dir): a magic link, which lstat calls a symlink, yet one that reaches the directory the fd was
# opened on (O_NOFOLLOW) whatever is at its old name now, as no user's symlink does.
_pinned = set()


def _fd_name(fd):
    return f"/proc/self/fd/{fd}"


def pin(fd):
    """``/proc/self/fd/N`` of directory ``fd``, which check_not_symlink lets through until unpin."""
    _pinned.add(_fd_name(fd))
    return _fd_name(fd)


def unpin(fd):
    _pinned.discard(_fd_name(fd))


def is_pinned(path):
    """Is ``path`` (``/proc/self/fd/N``, or with a trailing ``/.``) one of ours from pin()?"""
    return os.path.abspath(os.fsdecode(path)) in _pinned


def discard(path, trash_name=None):
    """Remove a tree without making the user wait: it is renamed out of the way
    at once (so nothing half-made keeps a real name), then removed by a detached
    process.  For Ctrl-C, where lamina must stop now, not after deleting a
    rootfs file by file.  ``trash_name``: the name to move it to (same dir)."""
    import secrets
    import subprocess
    import sys
    parent, name = os.path.split(os.path.abspath(os.fspath(path)))
    trash = os.path.join(parent, trash_name or f".lamina-trash-{secrets.token_hex(6)}")
    try:
        os.rename(path, trash)
    except FileNotFoundError:
        return
    try:
        subprocess.Popen([sys.executable, "-c", "import sys; from lamina.tree import remove_tree; "
                          "remove_tree(sys.argv[1])", trash], start_new_session=True, cwd="/",
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except OSError:
        remove_tree(trash)


def abandon(path, exc, trash_name=None):
    """Remove a half-made tree that ``exc`` left behind: in the background when
    the user pressed Ctrl-C (see discard), else here and now."""
    from .errors import Interrupted
    if isinstance(exc, (KeyboardInterrupt, Interrupted)):
        discard(path, trash_name)
    else:
        remove_tree(path)


def make_dirs(path, what):
    """os.makedirs(path, exist_ok=True) for a DEST or mount target the user named (``what``:
    "destination DEST", "mount target T").  A component there that is no directory (a file, or
    a symlink to nothing that an earlier image's tree left: ``R/etc -> /nowhere``, then DEST
    ``R/etc/x``) failed with "R/etc: File exists", which names no problem: say what is there.
    Like ``mkdir -p``, nothing is made where a dangling symlink points."""
    from .errors import ExtractError
    try:
        os.makedirs(path, exist_ok=True)
    except (FileExistsError, FileNotFoundError, NotADirectoryError):
        here, parts = os.path.abspath(os.fsdecode(path)), []
        while here != os.path.dirname(here):
            parts.append(here)
            here = os.path.dirname(here)
        for part in reversed(parts):
            if os.path.islink(part) and not os.path.isdir(part):
                raise ExtractError(f"cannot make {what}: {part} is a symlink to {os.readlink(part)!r}, "
                                   "where there is no directory") from None
            if os.path.lexists(part) and not os.path.isdir(part):
                raise ExtractError(f"cannot make {what}: {part} exists and is not a directory") from None
        raise
