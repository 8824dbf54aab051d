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
"""
from __future__ import annotations

import errno
import fcntl
import os
import stat
import threading
import time
from dataclasses import asdict, dataclass, field

from ..errors import MaterializeError

OPAQUE_XATTRS = ("trusted.overlay.opaque", "user.overlay.opaque")
OVERLAY_XATTR_PREFIXES = ("trusted.overlay.", "user.overlay.")
FICLONE = 0x40049409  # _IOW(0x94, 9, int)

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_CHUNK = 1 << 30
BIG_FILE = 256 << 10  # bytes; larger files are copied on a worker thread
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
