"""Removing a tree whatever a layer left in it.

Used by unpack (a failed staging dir), the store (snapshots, mounts) and
materialize; kept free of other imports so that none of them pays for the rest.
"""
import os
import shutil
import stat


def remove_tree(path):
    """Remove a tree even where layers left read-only or unsearchable directories.

    Root needs no help, but an unprivileged unpack can leave dirs of mode
    0555 (or 0000) that rmtree cannot empty: open them up and retry.
    Symlinks are never followed.
    """
    try:
        shutil.rmtree(path)
        return
    except FileNotFoundError:
        return
    except OSError:
        pass
    try:
        _open_up(path)
    except OSError:
        pass
    try:
        shutil.rmtree(path)
    except FileNotFoundError:
        pass


def _open_up(top):
    st = os.lstat(top)
    if not stat.S_ISDIR(st.st_mode):
        return
    os.chmod(top, 0o700)
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        _open_up_fd(fd)
    finally:
        os.close(fd)


def _open_up_fd(dirfd):
    with os.scandir(dirfd) as it:
        subdirs = [e.name for e in it if e.is_dir(follow_symlinks=False)]
    for name in subdirs:
        # Just listed as a real directory (not a symlink) and nobody else writes this
        # staging tree, so chmod by name cannot be redirected outside it.
        try:
            os.chmod(name, 0o700, dir_fd=dirfd)
            sub = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dirfd)
        except OSError:
            continue
        try:
            _open_up_fd(sub)
        finally:
            os.close(sub)
