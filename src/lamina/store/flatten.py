"""flatten: merge a stack of overlay-format snapshot dirs into one rootfs, as overlayfs would show them.

Each snapshot is one overlay-format directory per layer (whiteouts are char
devices 0/0, opaque directories carry ``trusted.overlay.opaque=y`` or
``user.overlay.opaque=y``), bottom layer first.  For every path the topmost
layer that has an entry decides; a whiteout hides it, a non-directory hides
everything below, a directory merges with the directories below it until one
of them is opaque or a lower layer has a non-directory there.  Hidden content
is never read or written.

Copy mode (the default) makes ``dest`` an independent tree: file data is
cloned with the FICLONE ioctl where the filesystem shares extents (btrfs,
xfs with reflink, bcachefs), else copied in the kernel with
copy_file_range(2) (sendfile(2) across filesystems that refuse it).  Mode,
owner, times, xattrs (without overlay's own), hardlink groups, devices,
fifos and symlinks are preserved.

Link mode (``link=True``) hardlinks every non-directory to the snapshot's
inode instead: nearly free, but the files ARE the store's files.  Writing to
them, or chmod/chown/touch on them, changes the store's snapshot and every
other image and link-unpack sharing that layer.  Use it only for read-only
consumers; directories are still private copies, so creating, renaming and
deleting entries in ``dest`` is safe (unlink/rename never touch the inode's
content).  ``dest`` must be on the store's filesystem.

The walk itself is native (native/flatten.pyx): iterative, through directory
fds only, with the GIL released.
"""
from __future__ import annotations

import errno
import os
import time
from dataclasses import asdict, dataclass, field

from ..errors import MaterializeError
from ..limits import open_file_budget
from ..quoting import quote_name


@dataclass
class FlattenStats:
    """What flatten() did."""
    dest: str = ""
    mode: str = "copy"                 # "copy" or "link"
    method: str = ""                   # how file data got there: reflink, copy_file_range, sendfile, hardlink
    layers: int = 0
    entries: int = 0                   # entries in the merged tree (excluding the root)
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    hardlinks: int = 0                 # extra names of a hardlink group (copy mode)
    other: int = 0                     # devices, fifos, sockets
    bytes: int = 0                     # regular file data in the merged tree
    hidden: int = 0                    # whiteouts and entries of lower layers that were not visited
    skipped: list = field(default_factory=list)
    seconds: float = 0.0               # the flatten itself
    extract_seconds: float = 0.0       # extracting snapshots the store did not have yet (0 when warm)
    extracted: int = 0                 # how many snapshots had to be extracted

    def to_dict(self):
        return asdict(self)


def _is_root():
    return os.geteuid() == 0


def check_link(layer_dirs, dest):
    """--link hands out the store's inodes: DEST (or, while it does not exist,
    its nearest existing parent) must be on the snapshots' filesystem."""
    if not layer_dirs:
        return
    parent = dest  # an existing DEST may be a mount point of another filesystem than its parent
    while parent and not os.path.isdir(parent):
        parent = os.path.dirname(parent)
    if os.stat(layer_dirs[0]).st_dev != os.stat(parent or "/").st_dev:
        raise MaterializeError(f"--link needs {dest} on the store's filesystem (the store is at "
                               f"{os.path.dirname(os.path.dirname(os.path.dirname(layer_dirs[0])))}); "
                               f"unpack without --link for a copy")


_ACLS = ("system.posix_acl_access", "system.posix_acl_default")


def _take_acls(root_fd):
    """Remove and return the ACLs the root (``root_fd``) got from its parent's default ACL: the
    kernel would give that ACL to every entry the flatten makes in it (and down every directory
    made there), a host user's rights on the image's files that the dir unpack, which undoes the
    inheritance entry by entry, never gives."""
    taken = {}
    for k in _ACLS:
        try:
            taken[k] = os.getxattr(root_fd, k)
            os.removexattr(root_fd, k)
        except OSError:
            pass  # none (ENODATA), or no ACLs on this filesystem
    return taken


def _give_back_acls(root_fd, dest, taken):
    """The root itself keeps what it inherited (as the dir unpack's does) where the image's root
    sets no ACL of its own."""
    for k, v in taken.items():
        try:
            os.getxattr(root_fd, k)
            continue  # the image's
        except OSError:
            pass
        try:
            os.setxattr(root_fd, k, v)
        except OSError as e:
            raise MaterializeError(f"{dest}: cannot set {k} back: {e.strerror}") from None


# fds the walk opens besides its levels': the copy workers' queue (two per file, 8 queued and
# 4 copying), a directory being listed, a file and its copy, a reopening's two
WALK_RESERVE = 32


def _walk_fd_budget():
    """How many fds the merge's levels may hold (0: no bound).  A level holds one fd per layer
    that has its directory, so a path 40 deep in 300 layers asked for 12,000 fds and failed
    with "Too many open files" under ``ulimit -n 1024`` although the root's 600 fitted; the walk
    gives the shallowest levels' fds up and opens them again when it comes back to them."""
    import resource
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        return 0
    try:
        open_now = len(os.listdir("/proc/self/fd"))
    except OSError:
        open_now = soft // 2  # no /proc: a guess on the safe side
    return max(soft - open_now - WALK_RESERVE, 1)


def _short_of_fds(err):
    """The walk's budget counts the fds open as it starts: another thread of the process (a
    Python API user flattening two images at once) may take those it counted on."""
    if err != errno.EMFILE:
        return ""
    import resource
    return (f" (the open-file limit is {resource.getrlimit(resource.RLIMIT_NOFILE)[0]}, ulimit -n; "
            "other threads of this process may hold fds too)")


def flatten(layer_dirs, dest, *, link=False, workers=None) -> FlattenStats:
    """Merge overlay-format ``layer_dirs`` (bottom first) into the existing empty directory ``dest``."""
    from .._extract import cancelled
    from .._flatten import FlattenError, Flattener
    t0 = time.perf_counter()
    layer_dirs = [os.fspath(d) for d in layer_dirs]
    dest = os.fspath(dest)
    if workers is None:
        workers = 2 if (os.cpu_count() or 1) > 1 else 0  # big files copy on workers meanwhile
    # at the root already each layer's directory is open, and listed through another fd; the
    # rest is a dozen (measured: 500 layers merge under ulimit -n 1016, not 1010)
    open_file_budget(2 * len(layer_dirs), f"{len(layer_dirs)} layers",
                     "merging their snapshots (each one's directory and its listing)", reserve=24)
    try:
        if link:
            check_link(layer_dirs, dest)
        # files sharing an inode only through file dedup are never grouped as hardlinks
        # (a --link unpack hands out the store's inodes anyway)
        from .objects import object_inodes
        singles = None if link else [object_inodes(os.path.dirname(d)) for d in layer_dirs]
        walker = Flattener(layer_dirs, dest, link=link, workers=workers, singles=singles, cancelled=cancelled)
        # the root's ACLs through an fd, as every other change to the image's tree
        try:
            root_fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as e:
            raise MaterializeError(f"{dest}: {e.strerror}", errno=e.errno) from None
        try:
            inherited = _take_acls(root_fd)
            walker.run(_walk_fd_budget())
            _give_back_acls(root_fd, dest, inherited)
        finally:
            os.close(root_fd)
    except FlattenError as e:
        path, what, err = e.args
        if what == "open snapshot":
            raise MaterializeError(f"snapshot {path}: {os.strerror(err)}") from None
        # the path is a name from the layer: quoted like every other message quotes it
        raise MaterializeError(f"{quote_name(os.fsencode(path))}: cannot {what}: {os.strerror(err)}"
                               f"{_short_of_fds(err)}", errno=err) from None
    stats = FlattenStats(dest=dest, mode="link" if link else "copy", layers=len(layer_dirs))
    for k in ("entries", "files", "dirs", "symlinks", "hardlinks", "other", "bytes", "hidden"):
        setattr(stats, k, getattr(walker, k))
    stats.skipped = list(walker.skipped)
    stats.method = "hardlink" if link else "+".join(walker.methods)
    stats.seconds = round(time.perf_counter() - t0, 6)
    return stats
