"""Materialize images held in the store: a flat copy, an overlayfs mount, an OCI runtime bundle.

Everything here starts from the store's snapshots: one overlay-format directory
per layer (whiteouts are char devices 0/0, opaque directories carry the xattr
``trusted.overlay.opaque=y`` or ``user.overlay.opaque=y``), bottom layer first.
Nothing is re-extracted from the blobs.

flatten(layer_dirs, dest)
    Merges the layers top-down into ``dest`` the way overlayfs would show them:
    for every path the topmost layer that has an entry decides; a whiteout hides
    it, a non-directory hides everything below, a directory merges with the
    directories below it until one of them is opaque or a lower layer has a
    non-directory there.  Hidden content is never read or written.

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

materialize(store, ref, dest, link=False, bundle=False)
    ``lamina unpack REF DEST`` (and ``--bundle``): resolve the image in the store,
    make sure its snapshots exist, flatten them into a staging directory next to
    ``dest`` and rename it into place (``dest`` never looks complete before it is).

mount(store, ref, target, rw=False) / umount(store, target)
    ``lamina mount`` / ``lamina umount``: kernel overlayfs over the snapshots.

In-use records (ROOT/lamina-mounts/<id>.json, ROOT/lamina-bundles/<id>.json)
list mounted and bundled images so that ``image prune -a`` keeps them.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import re
import stat
import threading
import time
from dataclasses import asdict, dataclass, field

from ..errors import ExtractError, ImageError
from ..tree import abandon, remove_tree

OPAQUE_XATTRS = ("trusted.overlay.opaque", "user.overlay.opaque")
OVERLAY_XATTR_PREFIXES = ("trusted.overlay.", "user.overlay.")
FICLONE = 0x40049409  # _IOW(0x94, 9, int)

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_CHUNK = 1 << 30
BIG_FILE = 256 << 10  # bytes; larger files are copied on a worker thread


class MaterializeError(ExtractError):
    """The store's snapshots could not be materialized into the destination."""


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


# --- flatten -----------------------------------------------------------------

class _Copier:
    """Moves regular-file data: reflink, then copy_file_range, then sendfile, remembering what works."""

    def __init__(self):
        self.reflink = True
        self.cfr = hasattr(os, "copy_file_range")
        self.used = set()

    def copy(self, sfd, dfd, size):
        if size == 0:
            return
        if self.reflink:
            try:
                fcntl.ioctl(dfd, FICLONE, sfd)
                self.used.add("reflink")
                return
            except OSError as e:
                if e.errno not in (errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL, errno.ENOSYS,
                                   errno.EPERM, errno.ETXTBSY):
                    raise
                self.reflink = False
        done = 0
        if self.cfr:
            try:
                while done < size:
                    n = os.copy_file_range(sfd, dfd, min(size - done, _CHUNK))
                    if n == 0:
                        break
                    done += n
                self.used.add("copy_file_range")
                if done >= size:
                    return
            except OSError as e:
                if e.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EIO):
                    raise
                if done == 0:
                    self.cfr = False
        while done < size:  # sendfile from the current offsets
            n = os.sendfile(dfd, sfd, None, min(size - done, _CHUNK))
            if n == 0:
                break
            done += n
        self.used.add("sendfile")


def _current_umask():
    """The process umask, read without changing it (/proc), else by the set-and-restore dance."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def _is_root():
    return os.geteuid() == 0


class _Flattener:
    def __init__(self, layer_dirs, dest, *, link=False, workers=None):
        self.layer_dirs = [os.fspath(d) for d in layer_dirs]
        self.dest = os.fspath(dest)
        self.link = link
        self.root = _is_root()
        self.copier = _Copier()
        self.stats = FlattenStats(dest=self.dest, mode="link" if link else "copy", layers=len(self.layer_dirs))
        self.inodes = {}        # (dev, ino) of a multiply linked source -> dest path relative to the root
        self.dest_fd = -1
        self.pending = []       # copy jobs for the worker threads
        self.lock = threading.Lock()
        self.workers = workers if workers is not None else min(2, os.cpu_count() or 1)
        self.umask = _current_umask()
        # per layer: files that share a store object's inode (file-level dedup) without being
        # hardlinked in the image; never grouped as hardlinks when copying
        from .objects import singletons
        self.singles = [singletons(os.path.dirname(d)) for d in self.layer_dirs]
        self.layer = 0          # the layer the entry being copied comes from

    # -- entry point --
    def run(self):
        t0 = time.perf_counter()
        fds = []
        chain = []
        try:
            for d in self.layer_dirs:
                try:
                    fds.append(os.open(d, _DIR_FLAGS))
                except OSError as e:
                    raise MaterializeError(f"snapshot {d}: {e.strerror}") from None
            self.dest_fd = os.open(self.dest, _DIR_FLAGS)
            if self.link and fds:
                sdev = os.fstat(fds[0]).st_dev
                if os.fstat(self.dest_fd).st_dev != sdev:
                    raise MaterializeError(
                        f"--link needs the destination on the store's filesystem ({self.layer_dirs[0]}"
                        f" and {self.dest} are on different filesystems); unpack without --link to copy")
            srcs = list(reversed(list(enumerate(fds))))  # top first
            # The merged root: the topmost layer's root directory (its "./" entry, if any) decides
            # its metadata; layers below merge unless that root is opaque.
            chain = self._root_chain(srcs)
            if self.workers > 0 and not self.link and (os.cpu_count() or 1) > 1:
                import concurrent.futures
                self.pool = concurrent.futures.ThreadPoolExecutor(self.workers, thread_name_prefix="lamina-copy")
            else:
                self.pool = None
            try:
                self._walk(chain)
                self._flush()
            finally:
                if self.pool is not None:
                    self.pool.shutdown(wait=True)  # queued copies still run (and close their fds)
            if chain:
                self._finish_dir(chain, self.dest_fd, ".")
        finally:
            for _, fd in chain:
                os.close(fd)
            for fd in fds:
                os.close(fd)
            if self.dest_fd >= 0:
                os.close(self.dest_fd)
        methods = sorted(self.copier.used) if not self.link else ["hardlink"]
        self.stats.method = "+".join(methods)
        self.stats.seconds = round(time.perf_counter() - t0, 6)
        return self.stats

    def _root_chain(self, srcs):
        chain = []
        for li, fd in srcs:
            chain.append((li, os.dup(fd)))
            if self._opaque(fd):
                break
        return chain

    @staticmethod
    def _opaque(fd):
        try:
            names = os.listxattr(fd)  # one call, no exception in the common case of no xattrs
        except OSError:
            return False
        for name in OPAQUE_XATTRS:
            if name in names:
                try:
                    if os.getxattr(fd, name) == b"y":
                        return True
                except OSError:
                    pass
        return False

    # -- the walk --
    def _walk(self, chain):
        """Depth first over the merged tree with an explicit stack (no recursion
        limit on deep images): each level is a _merge generator that yields the
        subdirectories it creates, finished once their own level is done."""
        stack = [(self._merge(chain, self.dest_fd, ""), None)]
        try:
            while stack:
                level, _ = stack[-1]
                job = next(level, None)
                if job is None:
                    _, done = stack.pop()
                    if done is not None:
                        self._close_dir(done)
                    continue
                sub_chain, child, crel = job
                stack.append((self._merge(sub_chain, child, crel), job))
        finally:
            for _, job in stack:
                if job is not None:
                    self._close_dir(job, finish=False)

    def _close_dir(self, job, finish=True):
        sub_chain, child, crel = job
        try:
            if finish:
                self._finish_dir(sub_chain, child, crel)
        finally:
            for _, fd in sub_chain:
                os.close(fd)
            os.close(child)

    def _merge(self, chain, dfd, rel):
        """Fill dest dir ``dfd`` (path ``rel``) from ``chain``: [(layer, dirfd)] top first (the caller closes them).

        A generator: yields (chain, fd, rel) for each subdirectory made, for _walk to fill."""
        if len(chain) == 1:  # the common case: a directory only one layer has
            sfd = chain[0][1]
            with os.scandir(sfd) as it:
                entries = list(it)
            if self.link:
                link, stats = os.link, self.stats
                for e in entries:
                    self.layer = chain[0][0]  # other levels ran while this one was suspended
                    if e.is_dir(follow_symlinks=False):
                        yield self._dir(e.name, 0, chain, None, dfd, rel)
                    elif e.is_file(follow_symlinks=False):
                        try:
                            link(e.name, e.name, src_dir_fd=sfd, dst_dir_fd=dfd, follow_symlinks=False)
                            stats.files += 1
                            stats.entries += 1
                        except OSError:
                            self._link_entry(e.name, sfd, dfd, rel)  # reports the error, or copies on EMLINK
                    else:
                        self._special(e.name, e, sfd, dfd, rel)
                return
            for e in entries:
                job = self._entry(e.name, e, 0, chain, None, sfd, dfd, rel)
                if job is not None:
                    yield job
            return
        listings = []
        for _, fd in chain:
            with os.scandir(fd) as it:
                listings.append({e.name: e for e in it})
        seen = set()
        for k in range(len(chain)):
            sfd = chain[k][1]
            for name, e in listings[k].items():
                if name in seen:
                    self.stats.hidden += 1
                    continue
                seen.add(name)
                job = self._entry(name, e, k, chain, listings, sfd, dfd, rel)
                if job is not None:
                    yield job

    def _entry(self, name, e, k, chain, listings, sfd, dfd, rel):
        self.layer = chain[k][0]
        if e.is_dir(follow_symlinks=False):
            return self._dir(name, k, chain, listings, dfd, rel)
        elif e.is_file(follow_symlinks=False):
            if self.link:
                self._link_entry(name, sfd, dfd, rel)
            else:
                self._copy_one(name, sfd, dfd, rel)
        else:
            self._special(name, e, sfd, dfd, rel)

    def _dir(self, name, k, chain, listings, dfd, rel):
        """Make dest dir ``name``; return (its source chain, its fd, its path) to fill and finish."""
        sub_chain = []
        child = -1
        try:
            sub = os.open(name, _DIR_FLAGS, dir_fd=chain[k][1])
            sub_chain.append((chain[k][0], sub))
            if listings is not None and not self._opaque(sub):
                for k2 in range(k + 1, len(chain)):
                    e2 = listings[k2].get(name)
                    if e2 is None:
                        continue
                    if not e2.is_dir(follow_symlinks=False):
                        break  # a lower non-directory (or whiteout) ends the merge, as in overlayfs
                    fd2 = os.open(name, _DIR_FLAGS, dir_fd=chain[k2][1])
                    sub_chain.append((chain[k2][0], fd2))
                    if self._opaque(fd2):
                        break
            os.mkdir(name, 0o700, dir_fd=dfd)
            child = os.open(name, _DIR_FLAGS, dir_fd=dfd)
            crel = rel + "/" + name if rel else name
            self.stats.dirs += 1
            self.stats.entries += 1
            return sub_chain, child, crel
        except BaseException:
            for _, fd in sub_chain:
                os.close(fd)
            if child >= 0:
                os.close(child)
            raise

    def _finish_dir(self, chain, dfd, rel):
        """Give the dest directory the metadata of the topmost layer that lists it explicitly.

        A layer whose tar has ``usr/bin/x`` but no ``usr/`` entry gets an implicit
        ``usr`` (0755, root, extraction time) in its snapshot.  The image's real
        ``usr`` is the lower layer's (umoci, docker and the ``dir`` format agree).
        The extractor never sets times on an implicit directory, so its mtime and
        ctime are the same instant; an explicit one had its mtime set from the tar
        afterwards.
        """
        sfd, st = chain[0][1], None
        for _, fd in chain:
            s = os.fstat(fd)
            if s.st_mtime_ns != s.st_ctime_ns:
                sfd, st = fd, s
                break
        if st is None:
            st = os.fstat(sfd)
        self._xattrs_fd(sfd, dfd, rel)
        if self.root:
            os.fchown(dfd, st.st_uid, st.st_gid)
        os.fchmod(dfd, stat.S_IMODE(st.st_mode))
        os.utime(dfd, ns=(st.st_atime_ns, st.st_mtime_ns))

    def _xattrs_fd(self, sfd, dfd, rel):
        try:
            names = os.listxattr(sfd)
        except OSError as e:
            if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
                return
            raise
        for n in names:
            if n.startswith(OVERLAY_XATTR_PREFIXES):
                continue
            try:
                os.setxattr(dfd, n, os.getxattr(sfd, n))
            except OSError as e:
                self._skip(rel, f"xattr {n} not copied: {e.strerror}")

    def _skip(self, rel, why):
        with self.lock:
            self.stats.skipped.append(f"{rel}: {why}")

    # -- non-directories --
    def _link_entry(self, name, sfd, dfd, rel):
        try:
            os.link(name, name, src_dir_fd=sfd, dst_dir_fd=dfd, follow_symlinks=False)
        except OSError as e:
            if e.errno != errno.EMLINK:
                raise MaterializeError(f"{_join(rel, name)}: cannot hardlink from the store: {e.strerror}") from None
            self._copy_one(name, sfd, dfd, rel)  # inode has too many links: a private copy instead
            return
        self.stats.files += 1
        self.stats.entries += 1

    def _special(self, name, e, sfd, dfd, rel):
        st = e.stat(follow_symlinks=False)
        mode = st.st_mode
        if stat.S_ISCHR(mode) and st.st_rdev == 0:
            self.stats.hidden += 1  # an overlay whiteout: hides lower layers, is not itself content
            return
        crel = _join(rel, name)
        if self.link:
            if stat.S_ISSOCK(mode):
                self._skip(crel, "socket not materialized")
                return
            try:
                os.link(name, name, src_dir_fd=sfd, dst_dir_fd=dfd, follow_symlinks=False)
                self.stats.entries += 1
                if stat.S_ISLNK(mode):
                    self.stats.symlinks += 1
                else:
                    self.stats.other += 1
                return
            except OSError as e:
                if e.errno != errno.EMLINK:
                    raise MaterializeError(f"{crel}: cannot hardlink from the store: {e.strerror}") from None
        if st.st_nlink > 1 and not stat.S_ISDIR(mode):
            key = (st.st_dev, st.st_ino)
            first = self.inodes.get(key)
            if first is not None:
                self._hardlink(first, name, dfd, rel)
                return
            self.inodes[key] = crel
        if stat.S_ISLNK(mode):
            os.symlink(os.readlink(name, dir_fd=sfd), name, dir_fd=dfd)
            self.stats.symlinks += 1
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode):
            if not stat.S_ISFIFO(mode) and not self.root:
                self._skip(crel, "device node not created (needs root)")
                return
            os.mknod(name, stat.S_IFMT(mode) | 0o600, st.st_rdev, dir_fd=dfd)
            self.stats.other += 1
        else:
            self._skip(crel, "socket not materialized")
            return
        self.stats.entries += 1
        self._xattrs_path(sfd, dfd, name, crel)
        if self.root:
            os.chown(name, st.st_uid, st.st_gid, dir_fd=dfd, follow_symlinks=False)
        if not stat.S_ISLNK(mode):
            os.chmod(name, stat.S_IMODE(mode), dir_fd=dfd, follow_symlinks=False)
        os.utime(name, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=dfd, follow_symlinks=False)

    def _xattrs_path(self, sfd, dfd, name, rel):
        spath = f"/proc/self/fd/{sfd}/{name}"
        try:
            names = os.listxattr(spath, follow_symlinks=False)
        except OSError:
            return
        for n in names:
            if n.startswith(OVERLAY_XATTR_PREFIXES):
                continue
            try:
                os.setxattr(f"/proc/self/fd/{dfd}/{name}", n, os.getxattr(spath, n, follow_symlinks=False),
                            follow_symlinks=False)
            except OSError as e:
                self._skip(rel, f"xattr {n} not copied: {e.strerror}")

    def _flush(self):
        for f in self.pending:
            f.result()
        self.pending.clear()

    def _copy_one(self, name, sfd, dfd, rel):
        src = os.open(name, _READ_FLAGS, dir_fd=sfd)
        dst = -1
        try:
            st = os.fstat(src)
            if st.st_nlink > 1 and _join(rel, name) not in self.singles[self.layer]:
                key = (st.st_dev, st.st_ino)
                first = self.inodes.get(key)
                if first is None:
                    self.inodes[key] = _join(rel, name)
                else:
                    self._hardlink(first, name, dfd, rel)
                    return
            create_mode = st.st_mode & 0o777  # the fd is writable whatever the mode (O_CREAT)
            dst = os.open(name, _CREATE_FLAGS, create_mode, dir_fd=dfd)
            self.stats.files += 1
            self.stats.entries += 1
            self.stats.bytes += st.st_size
            if self.pool is not None and st.st_size >= BIG_FILE:
                # Large files go to a worker: copy_file_range runs without the GIL for the
                # whole file, so the walk goes on in parallel on the other core.
                if len(self.pending) >= 4 * self.workers:
                    self.pending.pop(0).result()
                self.pending.append(self.pool.submit(self._copy_fd, src, dst, st, rel, name, create_mode))
                src = dst = -1  # the worker closes them
                return
            self._copy_fd(src, dst, st, rel, name, create_mode, close=False)
        finally:
            if dst >= 0:
                os.close(dst)
            if src >= 0:
                os.close(src)

    def _copy_fd(self, src, dst, st, rel, name, create_mode, close=True):
        try:
            self.copier.copy(src, dst, st.st_size)
            try:
                names = os.listxattr(src)
            except OSError:
                names = ()
            for n in names:
                if n.startswith(OVERLAY_XATTR_PREFIXES):
                    continue
                try:
                    os.setxattr(dst, n, os.getxattr(src, n))
                except OSError as e:
                    self._skip(_join(rel, name), f"xattr {n} not copied: {e.strerror}")
            if self.root:
                os.fchown(dst, st.st_uid, st.st_gid)
            mode = stat.S_IMODE(st.st_mode)
            if mode != create_mode & ~self.umask or mode & 0o7000:
                os.fchmod(dst, mode)  # after chown, which clears setuid/setgid
            os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))
        finally:
            if close:
                os.close(dst)
                os.close(src)

    def _hardlink(self, first, name, dfd, rel):
        # ``first`` was created earlier in this walk (its data may still be in flight on a
        # worker: same inode either way).  Every component above it is a directory lamina made.
        try:
            os.link(first, name, src_dir_fd=self.dest_fd, dst_dir_fd=dfd, follow_symlinks=False)
        except OSError as e:
            raise MaterializeError(f"{_join(rel, name)}: cannot hardlink to {first}: {e.strerror}") from None
        self.stats.hardlinks += 1
        self.stats.entries += 1


def _join(rel, name):
    return rel + "/" + name if rel else name


def flatten(layer_dirs, dest, *, link=False, workers=None) -> FlattenStats:
    """Merge overlay-format ``layer_dirs`` (bottom first) into the existing empty directory ``dest``."""
    return _Flattener(layer_dirs, dest, link=link, workers=workers).run()


# --- unpack from the store ----------------------------------------------------------

def _staged(dest, fill):
    """Create ``dest`` atomically: ``fill(staging_dir)`` then rename (dest must be absent or empty)."""
    from ..unpacker import _check_dest, _commit, _make_staging
    dest = os.path.abspath(os.fspath(dest))
    _check_dest(dest)
    staging = _make_staging(dest)
    try:
        result = fill(staging)
        _commit(staging, dest)
    except BaseException as e:
        abandon(staging, e)
        raise
    return result


def _check_platform(image, platform):
    if platform is None or image.platform is None:
        return
    from ..platform import Platform
    want = platform if isinstance(platform, Platform) else Platform.parse(platform)
    if not want.matches(image.platform):
        raise ImageError(f"image {image.config_digest[7:19]} is {image.platform}, not {want}")


def materialize(store, ref, dest, *, link=False, platform=None):
    """``lamina unpack REF DEST`` from the store. Returns (Image, FlattenStats).

    The snapshots are extracted first if the store does not have them yet (a
    "cold" unpack); then they are flattened into DEST (the "warm" part).
    """
    image = ref if hasattr(ref, "chain_ids") else store.resolve(ref)
    _check_platform(image, platform)
    dest = os.path.abspath(os.fspath(dest))
    layer_dirs, t_extract, extracted = _snapshots(store, image)
    if link:
        _check_link(layer_dirs, dest)
    stats = _staged(dest, lambda staging: flatten(layer_dirs, staging, link=link))
    stats.dest = dest
    stats.extract_seconds, stats.extracted = t_extract, extracted
    return image, stats


def _snapshots(store, image):
    t0 = time.perf_counter()
    missing = sum(1 for c in image.chain_ids if store.snapshot_info(c) is None)
    dirs = [os.fspath(p) for p in store.snapshots_for(image)]
    return dirs, round(time.perf_counter() - t0, 6) if missing else 0.0, missing


def _check_link(layer_dirs, dest):
    if not layer_dirs:
        return
    parent = os.path.dirname(dest)
    while parent and not os.path.isdir(parent):
        parent = os.path.dirname(parent)
    if os.stat(layer_dirs[0]).st_dev != os.stat(parent or "/").st_dev:
        raise MaterializeError(f"--link needs {dest} on the store's filesystem (the store is at "
                               f"{os.path.dirname(os.path.dirname(os.path.dirname(layer_dirs[0])))}); "
                               f"unpack without --link for a copy")


# --- OCI runtime bundles ---------------------------------------------------------------

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_CAPS = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]


def _default_spec(rootless):
    """The runtime-spec example configuration (what ``runc spec`` and umoci start from)."""
    mounts = [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"] + ([] if rootless else ["gid=5"])},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
    ]
    if rootless:
        mounts.append({"destination": "/sys", "type": "none", "source": "/sys",
                       "options": ["rbind", "nosuid", "noexec", "nodev", "ro"]})
    else:
        mounts += [
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
             "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]},
        ]
    namespaces = [{"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}]
    linux = {
        "resources": {"devices": [{"allow": False, "access": "rwm"}]},
        "namespaces": namespaces,
        "maskedPaths": ["/proc/kcore", "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
                        "/proc/sched_debug", "/sys/firmware", "/proc/scsi"],
        "readonlyPaths": ["/proc/asound", "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
    }
    if rootless:
        # like `runc spec --rootless`: a user namespace mapping root to the caller, no network namespace,
        # no cgroup device rules (an unprivileged runtime cannot set them)
        namespaces[:] = [n for n in namespaces if n["type"] != "network"] + [{"type": "user"}]
        linux["uidMappings"] = [{"containerID": 0, "hostID": os.geteuid(), "size": 1}]
        linux["gidMappings"] = [{"containerID": 0, "hostID": os.getegid(), "size": 1}]
        del linux["resources"]
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": True,
            "user": {"uid": 0, "gid": 0},
            "args": ["sh"],
            "env": [f"PATH={DEFAULT_PATH}", "TERM=xterm"],
            "cwd": "/",
            "capabilities": {k: list(_CAPS) for k in ("bounding", "effective", "inheritable", "permitted", "ambient")},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": True,
        },
        "root": {"path": "rootfs"},
        "hostname": "lamina",
        "mounts": mounts,
        "linux": linux,
    }


def _read_in_root(root, relpath, limit=1 << 20):
    """Read a file of the rootfs, resolving symlinks inside ``root`` (never outside); None if absent."""
    root_fd = os.open(root, _DIR_FLAGS)
    try:
        parts = [p for p in relpath.split("/") if p not in ("", ".")]
        hops = 0
        stack = []           # fds of the directories walked, root first (not including root_fd)
        cur = root_fd
        try:
            while parts:
                name = parts.pop(0)
                if name == "..":
                    if stack:
                        os.close(stack.pop())
                    cur = stack[-1] if stack else root_fd
                    continue
                try:
                    st = os.stat(name, dir_fd=cur, follow_symlinks=False)
                except (FileNotFoundError, NotADirectoryError):
                    return None
                if stat.S_ISLNK(st.st_mode):
                    hops += 1
                    if hops > 40:
                        return None
                    target = os.readlink(name, dir_fd=cur)
                    if target.startswith("/"):
                        while stack:
                            os.close(stack.pop())
                        cur = root_fd
                    parts = [p for p in target.split("/") if p not in ("", ".")] + parts
                    continue
                if parts:
                    if not stat.S_ISDIR(st.st_mode):
                        return None
                    fd = os.open(name, _DIR_FLAGS, dir_fd=cur)
                    stack.append(fd)
                    cur = fd
                    continue
                if not stat.S_ISREG(st.st_mode):
                    return None
                fd = os.open(name, _READ_FLAGS, dir_fd=cur)
                try:
                    return os.read(fd, limit)
                finally:
                    os.close(fd)
            return None
        finally:
            for fd in stack:
                os.close(fd)
    finally:
        os.close(root_fd)


def _parse_colon_file(data, fields):
    out = []
    if data is None:
        return out
    for line in data.decode("utf-8", "replace").splitlines():
        if not line or line.startswith("#"):
            continue
        parts = line.split(":")
        if len(parts) >= fields:
            out.append(parts)
    return out


def resolve_user(user, rootfs):
    """(OCI process user {uid, gid[, additionalGids]}, home dir) for an image config's User.

    ``user``, ``uid``, ``user:group``, ``uid:gid``, like docker and umoci (moby/sys/user):
    names are looked up in the rootfs' /etc/passwd and /etc/group (read without ever
    leaving the rootfs); a numeric uid also picks up its passwd entry (primary group,
    home); supplementary groups come from /etc/group membership unless a group is
    given; an unknown name is an error, the home defaults to "/".
    """
    user = (user or "").strip()
    name, _, group = user.partition(":")
    passwd = _parse_colon_file(_read_in_root(rootfs, "etc/passwd"), 6)
    uid, gid, home, username = 0, 0, "/", None
    entry = None
    if name == "" or name.isdigit():
        uid = int(name) if name else 0
        entry = next((p for p in passwd if p[2].isdigit() and int(p[2]) == uid), None)
    else:
        entry = next((p for p in passwd if p[0] == name), None)
        if entry is None or not entry[2].isdigit():
            raise ImageError(f"image config User {user!r}: no user {name!r} in the image's /etc/passwd")
        uid = int(entry[2])
    if entry is not None:
        username = entry[0]
        if entry[3].isdigit():
            gid = int(entry[3])
        home = entry[5] or "/"
    groups = None
    if group:
        if group.isdigit():
            gid = int(group)
        else:
            groups = _parse_colon_file(_read_in_root(rootfs, "etc/group"), 3)
            g = next((g for g in groups if g[0] == group and g[2].isdigit()), None)
            if g is None:
                raise ImageError(f"image config User {user!r}: no group {group!r} in the image's /etc/group")
            gid = int(g[2])
    out = {"uid": uid, "gid": gid}
    if not group and username:
        groups = _parse_colon_file(_read_in_root(rootfs, "etc/group"), 3)
        extra = []
        for g in groups:
            members = g[3].split(",") if len(g) > 3 and g[3] else []
            if username in members and g[2].isdigit() and int(g[2]) not in extra:
                extra.append(int(g[2]))
        if extra:
            out["additionalGids"] = extra
    return out, home


def runtime_config(image, rootfs, *, rootless=None):
    """config.json for an OCI runtime bundle from an image config (image-spec conversion.md)."""
    if rootless is None:
        rootless = not _is_root()
    spec = _default_spec(rootless)
    cfg = (image.config or {}).get("config") or {}
    proc = spec["process"]
    proc["user"], home = resolve_user(cfg.get("User"), rootfs)
    env = list(proc["env"])
    for item in cfg.get("Env") or []:
        if not isinstance(item, str):
            continue
        key = item.split("=", 1)[0]
        for i, e in enumerate(env):
            if e.split("=", 1)[0] == key:
                env[i] = item
                break
        else:
            env.append(item)
    if not any(e.startswith("HOME=") for e in env):
        env.append(f"HOME={home}")  # docker and umoci give the process its user's home
    proc["env"] = env
    args = list(cfg.get("Entrypoint") or []) + list(cfg.get("Cmd") or [])
    if args:
        proc["args"] = [a for a in args if isinstance(a, str)]
    proc["cwd"] = cfg.get("WorkingDir") or "/"
    for vol in sorted(cfg.get("Volumes") or {}):
        spec["mounts"].append({"destination": vol, "type": "tmpfs", "source": "none",
                               "options": ["rw", "nosuid", "nodev", "noexec", "relatime"]})
    annotations = {}
    labels = cfg.get("Labels") or {}
    if isinstance(labels, dict):
        annotations.update({k: v for k, v in labels.items() if isinstance(v, str)})
    c = image.config or {}
    annotations["org.opencontainers.image.os"] = c.get("os", "")
    annotations["org.opencontainers.image.architecture"] = c.get("architecture", "")
    if c.get("variant"):
        annotations["org.opencontainers.image.variant"] = c["variant"]
    if c.get("os.version"):
        annotations["org.opencontainers.image.os.version"] = c["os.version"]
    annotations["org.opencontainers.image.author"] = c.get("author", "") or ""
    if c.get("created"):
        annotations["org.opencontainers.image.created"] = c["created"]
    ports = cfg.get("ExposedPorts") if isinstance(cfg.get("ExposedPorts"), dict) else {}
    annotations["org.opencontainers.image.exposedPorts"] = ",".join(sorted(ports))
    annotations["org.opencontainers.image.stopSignal"] = cfg.get("StopSignal") or ""
    spec["annotations"] = dict(sorted(annotations.items()))
    # keep the key order of runc/umoci: annotations before linux
    linux = spec.pop("linux")
    spec["linux"] = linux
    return spec


def make_bundle(store, ref, bundle, *, link=False, platform=None):
    """``lamina unpack --bundle REF DIR``: DIR/config.json + DIR/rootfs. Returns (Image, FlattenStats, config)."""
    image = ref if hasattr(ref, "chain_ids") else store.resolve(ref)
    _check_platform(image, platform)
    layer_dirs, t_extract, extracted = _snapshots(store, image)
    bundle = os.path.abspath(os.fspath(bundle))
    if link:
        _check_link(layer_dirs, bundle)

    def fill(staging):
        rootfs = os.path.join(staging, "rootfs")
        os.mkdir(rootfs, 0o700)
        stats = flatten(layer_dirs, rootfs, link=link)
        spec = runtime_config(image, rootfs)
        data = (json.dumps(spec, indent="\t") + "\n").encode()
        fd = os.open(os.path.join(staging, "config.json"), _CREATE_FLAGS, 0o644)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        return stats, spec

    stats, spec = _staged(bundle, fill)
    stats.dest = bundle
    stats.extract_seconds, stats.extracted = t_extract, extracted
    _record_use(store, "bundle", bundle, image, {"link": link})
    return image, stats, spec


# --- in-use records (mounts, bundles) ------------------------------------------------------

def _records_dir(store, kind):
    return os.path.join(store.paths.meta, kind + "s")


def _key(kind, path):
    return f"{kind}-" + hashlib.sha256(os.fsencode(path)).hexdigest()[:24]


def _record_use(store, kind, path, image, extra=None):
    key = _key(kind, path)
    record = {"kind": kind, "key": key, "path": path, "manifest_digest": image.manifest_digest,
              "image_id": image.config_digest, "names": [r.familiar() for r in image.refs], "created": time.time()}
    record.update(extra or {})
    store.hold(key, image)  # gc keeps the image's blobs and snapshots while the record exists
    d = _records_dir(store, kind)
    os.makedirs(d, exist_ok=True)
    from .fsutil import atomic_write
    atomic_write(os.path.join(d, key + ".json"), json.dumps(record, indent=2).encode())
    return record


def _drop_record(store, record, *, best_effort=False):
    try:
        try:
            os.unlink(os.path.join(_records_dir(store, record["kind"]), record["key"] + ".json"))
        except FileNotFoundError:
            pass
        store.release(record["key"])
    except OSError:
        if not best_effort:  # e.g. a read-only listing by a user who cannot write the store
            raise


def _load_records(store, kind):
    d = _records_dir(store, kind)
    try:
        names = sorted(os.listdir(d))
    except FileNotFoundError:
        return []
    out = []
    for n in names:
        if not n.endswith(".json") or ".tmp-" in n:
            continue
        try:
            with open(os.path.join(d, n), "rb") as f:
                rec = json.load(f)
        except (OSError, ValueError):
            continue
        if isinstance(rec, dict) and rec.get("key") == n[:-5]:
            out.append(rec)
    return out


def _bundle_alive(rec):
    path = rec.get("path", "")
    try:
        st = os.stat(os.path.join(path, "config.json"))
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and os.path.isdir(os.path.join(path, "rootfs"))


def in_use(store, *, prune_stale=True):
    """Records of mounts and bundles that keep images in use: [{kind, path, manifest_digest, image_id, ...}].

    A bundle whose directory was deleted no longer counts (and its record and hold
    are dropped when ``prune_stale``).  A mount counts until ``lamina umount``, even
    if the kernel mount is gone (e.g. after a reboot): its upper dir may hold writes.
    """
    out = []
    for rec in _load_records(store, "bundle"):
        if _bundle_alive(rec):
            out.append(rec)
        elif prune_stale:
            _drop_record(store, rec, best_effort=True)
    for rec in _load_records(store, "mount"):
        rec["mounted"] = _is_mountpoint(rec.get("path", ""))
        out.append(rec)
    return out


def mounts(store):
    """The mount records (each with ``mounted``: whether the kernel mount is present)."""
    return [r for r in in_use(store, prune_stale=False) if r["kind"] == "mount"]


# --- overlayfs mounts ----------------------------------------------------------------------

_libc = None


def _libc_fn(name):
    global _libc
    import ctypes
    import ctypes.util
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    return getattr(_libc, name)


# New mount API (unified syscall numbers on every architecture since 5.2)
_SYS_MOVE_MOUNT, _SYS_FSOPEN, _SYS_FSCONFIG, _SYS_FSMOUNT = 429, 430, 431, 432
_FSOPEN_CLOEXEC = 1
_FSCONFIG_SET_FLAG, _FSCONFIG_SET_STRING, _FSCONFIG_CMD_CREATE = 0, 1, 6
_FSMOUNT_CLOEXEC = 1
_MOUNT_ATTR_RDONLY, _MOUNT_ATTR_NODEV = 0x1, 0x4
_MOVE_MOUNT_F_EMPTY_PATH = 0x4
_AT_FDCWD = -100
_MS_RDONLY, _MS_NODEV = 1, 4
_MNT_DETACH = 2
_MAX_MOUNT_DATA = 4095  # mount(2) copies at most one page of options


def _syscall(*args):
    import ctypes
    fn = _libc_fn("syscall")
    fn.restype = ctypes.c_long
    conv = [ctypes.c_long(a) if isinstance(a, int) else a for a in args]
    r = fn(*conv)
    if r < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return r


def _mount_new_api(lowers, upper, work, target, readonly):
    """overlayfs through fsopen/fsconfig: one ``lowerdir+`` per layer, so neither the page-size limit
    of mount(2) options nor ':' and ',' in paths matter (Linux >= 6.8)."""
    import ctypes
    fsfd = _syscall(_SYS_FSOPEN, ctypes.c_char_p(b"overlay"), _FSOPEN_CLOEXEC)
    try:
        def setstr(key, value):
            try:
                _syscall(_SYS_FSCONFIG, fsfd, _FSCONFIG_SET_STRING, ctypes.c_char_p(key.encode()),
                         ctypes.c_char_p(os.fsencode(value)), 0)
            except OSError as e:
                raise OSError(e.errno, f"overlay option {key}={value}: {e.strerror}") from None
        setstr("source", "lamina")
        for d in lowers:  # top first
            setstr("lowerdir+", d)
        if upper:
            setstr("upperdir", upper)
            setstr("workdir", work)
        _syscall(_SYS_FSCONFIG, fsfd, _FSCONFIG_CMD_CREATE, None, None, 0)
        attrs = _MOUNT_ATTR_NODEV | (_MOUNT_ATTR_RDONLY if readonly else 0)
        mfd = _syscall(_SYS_FSMOUNT, fsfd, _FSMOUNT_CLOEXEC, attrs)
        try:
            _syscall(_SYS_MOVE_MOUNT, mfd, ctypes.c_char_p(b""), _AT_FDCWD, ctypes.c_char_p(os.fsencode(target)),
                     _MOVE_MOUNT_F_EMPTY_PATH)
        finally:
            os.close(mfd)
    finally:
        os.close(fsfd)


def _escape(path):
    return path.replace("\\", "\\\\").replace(":", "\\:").replace(",", "\\,")


def _mount_legacy(lowers, upper, work, target, readonly):
    opts = "lowerdir=" + ":".join(_escape(d) for d in lowers)
    if upper:
        opts += f",upperdir={_escape(upper)},workdir={_escape(work)}"
    import ctypes
    data = opts.encode()
    if len(data) > _MAX_MOUNT_DATA:
        raise MaterializeError(f"{len(lowers)} layers make overlay options of {len(data)} bytes, more than mount(2)"
                               f" accepts, and this kernel lacks fsconfig lowerdir+ (Linux 6.8)")
    fn = _libc_fn("mount")
    fn.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
    flags = _MS_NODEV | (_MS_RDONLY if readonly else 0)
    if fn(b"lamina", os.fsencode(target), b"overlay", flags, data) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def _kernel_mount(lowers, upper, work, target, readonly):
    try:
        _mount_new_api(lowers, upper, work, target, readonly)
        return "fsconfig"
    except OSError as e:
        if e.errno not in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
            raise
        if e.errno == errno.EINVAL and "lowerdir+" not in str(e):
            raise
    _mount_legacy(lowers, upper, work, target, readonly)
    return "mount"


def _mountinfo():
    """[(mount point, fstype, source)] from /proc/self/mountinfo (octal escapes decoded)."""
    out = []
    try:
        with open("/proc/self/mountinfo", "rb") as f:
            lines = f.read().splitlines()
    except OSError:
        return out
    unesc = lambda s: re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m.group(1), 8)]), s)  # noqa: E731
    for line in lines:
        left, _, right = line.partition(b" - ")
        fields = left.split(b" ")
        rfields = right.split(b" ")
        if len(fields) < 5 or len(rfields) < 2:
            continue
        out.append((os.fsdecode(unesc(fields[4])), os.fsdecode(rfields[0]), os.fsdecode(unesc(rfields[1]))))
    return out


def _is_mountpoint(path):
    return any(mp == path and fs == "overlay" and src == "lamina" for mp, fs, src in _mountinfo())


def _lock(store, key):
    from .locks import FileLock
    return FileLock(store.paths.locks / f"{key}.lock")


def mount(store, ref, target, *, rw=False, platform=None):
    """``lamina mount REF TARGET [--rw]``: overlayfs over the image's snapshots. Returns the mount record.

    Read-only: the snapshots are the lower layers and nothing else.  ``rw``: an
    upper and a work dir under ROOT/lamina/mounts/<key>/ take the writes (removed
    by umount).  The image counts as in use until umount.
    """
    if not _is_root():
        raise MaterializeError("lamina mount needs root (overlayfs mounts need CAP_SYS_ADMIN); "
                               "use lamina unpack for a private copy instead")
    image = ref if hasattr(ref, "chain_ids") else store.resolve(ref)
    _check_platform(image, platform)
    target = os.path.realpath(os.fspath(target))
    os.makedirs(target, exist_ok=True)
    if not os.path.isdir(target):
        raise MaterializeError(f"mount target {target} is not a directory")
    key = _key("mount", target)
    lock = _lock(store, key)
    lock.acquire()
    try:
        if _is_mountpoint(target) or any(r["key"] == key for r in _load_records(store, "mount")):
            raise MaterializeError(f"{target} is already a lamina mount (lamina umount {target} first)")
        layer_dirs = [os.fspath(p) for p in store.snapshots_for(image)]
        lowers = list(reversed(layer_dirs))  # overlayfs wants the top layer first
        base = os.path.join(_records_dir(store, "mount"), key)
        os.makedirs(base, mode=0o700, exist_ok=True)
        # overlayfs needs two lower layers without an upper one, and one with it: pad with empty dirs
        for i in range(max(0, (1 if rw else 2) - len(lowers))):
            empty = os.path.join(base, f"empty{i}")
            os.makedirs(empty, exist_ok=True)
            lowers.append(empty)
        upper = work = None
        if rw:
            upper, work = os.path.join(base, "upper"), os.path.join(base, "work")
            for d in (upper, work):
                if os.path.exists(d):
                    remove_tree(d)
                os.mkdir(d, 0o755)
        # record (and hold) first: a crash after the mount leaves a record umount can clean up
        record = _record_use(store, "mount", target, image,
                             {"rw": rw, "upper": upper, "work": work, "layers": len(layer_dirs)})
        try:
            record["api"] = _kernel_mount(lowers, upper, work, target, readonly=not rw)
        except OSError as e:
            _drop_record(store, record)
            remove_tree(base)
            raise MaterializeError(f"cannot mount {image.config_digest[7:19]} on {target}: {e.strerror or e}") from None
        record["mounted"] = True
        return record
    finally:
        lock.release(unlink=True)


def umount(store, target, *, lazy=False):
    """``lamina umount TARGET``: unmount and remove the mount's upper/work dirs and in-use record."""
    target_abs = os.path.abspath(os.fspath(target))
    real = os.path.realpath(target_abs)
    records = {r["key"]: r for r in _load_records(store, "mount")}
    key = next((k for k in (_key("mount", real), _key("mount", target_abs)) if k in records), None)
    if key is None:
        raise MaterializeError(f"{target_abs} is not a lamina mount of the store {store.root}")
    record = records[key]
    path = record["path"]
    lock = _lock(store, key)
    lock.acquire()
    try:
        if _is_mountpoint(path):
            import ctypes
            fn = _libc_fn("umount2")
            fn.argtypes = [ctypes.c_char_p, ctypes.c_int]
            if fn(os.fsencode(path), _MNT_DETACH if lazy else 0) != 0:
                e = ctypes.get_errno()
                hint = " (still in use; close what uses it or pass --lazy)" if e == errno.EBUSY else ""
                raise MaterializeError(f"cannot unmount {path}: {os.strerror(e)}{hint}")
        remove_tree(os.path.join(_records_dir(store, "mount"), key))
        _drop_record(store, record)
    finally:
        lock.release(unlink=True)
    return record
