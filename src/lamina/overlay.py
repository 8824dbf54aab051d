"""Helpers for layers in overlay format.

A layer tar may add ``etc/new`` without listing ``etc/``.  Applied alone into
its own directory, the layer then has to invent ``etc`` (mode 0755, no
xattrs, mtime now), and in an overlayfs mount the topmost copy of a
directory decides its metadata, so the merged view would differ from a flat
unpack.  The kernel's copy-up solves this when layers are applied onto an
overlay mount, as containerd does; lamina applies layers in parallel into
separate directories instead, and then lets each invented directory inherit
the metadata of the copy below it.
"""
from __future__ import annotations

import os
import stat

_OVERLAY_XATTRS = ("trusted.overlay.", "user.overlay.")


def inherit_implicit_dirs(layer_dirs, implicit_by_layer):
    """Give every implicitly created directory the metadata of the nearest
    lower layer's directory at the same path.

    ``layer_dirs`` is bottom first; ``implicit_by_layer[i]`` lists paths
    (relative) created implicitly in ``layer_dirs[i]``.
    """
    for i, implicit in enumerate(implicit_by_layer):
        # parents before children would not matter; deepest first keeps
        # mtimes of parents from being disturbed by nothing at all, so any order works
        for rel in implicit:
            source = _lower_dir(layer_dirs[:i], rel)
            if source is not None:
                copy_dir_metadata(source, os.path.join(layer_dirs[i], rel))


def _lower_dir(lower_dirs, rel):
    """The directory overlayfs would show for ``rel`` from these layers, or None."""
    for d in reversed(lower_dirs):
        path = os.path.join(d, rel)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        except NotADirectoryError:
            return None
        return path if stat.S_ISDIR(st.st_mode) else None  # a whiteout or a file hides what is below
    return None


def copy_dir_metadata(src, dst):
    st = os.lstat(src)
    fd = os.open(dst, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        if os.geteuid() == 0:
            os.fchown(fd, st.st_uid, st.st_gid)
        os.fchmod(fd, stat.S_IMODE(st.st_mode))
        for name in os.listxattr(src, follow_symlinks=False):
            if name.startswith(_OVERLAY_XATTRS):
                continue
            try:
                os.setxattr(fd, name, os.getxattr(src, name, follow_symlinks=False))
            except PermissionError:
                pass  # trusted.* without root: the unprivileged extract skipped it too
        os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))
    finally:
        os.close(fd)
