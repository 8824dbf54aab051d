# cython: language_level=3
"""The flatten engine: merge overlay-format snapshot dirs into one rootfs.

store/flatten.py describes what a merge means; this is the walk that does it,
in C with the GIL released:

- iterative, with an explicit stack of levels (no recursion limit on deep
  images), each level holding the open fds of its destination directory and
  of the source directories it merges (so nothing is resolved by path twice:
  cost linear in entries and depth);
- under a low open-file limit (a deep tree in an image of hundreds of layers
  needs depth x layers fds) the shallowest levels' fds are closed and opened
  again, component by component from the roots, when the walk comes back up;
- every source and destination is reached with ``openat`` relative to an fd
  the walk opened itself, ``O_NOFOLLOW`` on each component;
- a directory one layer has is listed in readdir order; one several layers
  have is listed from each, sorted by (name, layer), and the topmost entry
  of each name decides (the merge of overlayfs, without a hash table);
- file data moves in the kernel (FICLONE, then copy_file_range, then
  sendfile), files of 256 KiB and more on worker threads so the walk goes on
  meanwhile;
- no Python object per entry: Python is entered only for rare messages
  (skipped xattrs, devices without root) and, every few hundred entries, to
  let Ctrl-C through.
"""
from cpython.exc cimport PyErr_CheckSignals
from libc.errno cimport (errno, EEXIST, EMLINK, EOPNOTSUPP, ENOTTY, EXDEV, EINVAL, ENOSYS, EPERM,
                         ETXTBSY, EIO, ERANGE, EINTR, ENOMEM, ENAMETOOLONG, ESTALE)
from libc.stdint cimport uint64_t, int64_t
from libc.stdlib cimport malloc, calloc, realloc, free, qsort
from libc.string cimport strlen, memcpy, strcmp, strncmp, strerror, strchr, strrchr
from posix.time cimport timespec
from posix.types cimport mode_t, uid_t, gid_t, dev_t, off_t
from posix.unistd cimport lseek, SEEK_SET

from syscalls cimport *

import os

from lamina._extract import _current_umask
from lamina.quoting import quote_name

cdef extern from *:
    """
    #include <errno.h>
    #include <unistd.h>
    #define LAMINA_SEEK_DATA 3  /* SEEK_DATA, SEEK_HOLE: Linux values, whatever the libc exposes */
    #define LAMINA_SEEK_HOLE 4
    """
    int LAMINA_SEEK_DATA
    int LAMINA_SEEK_HOLE
    int ENXIO

cdef extern from "<sys/ioctl.h>" nogil:
    int ioctl(int fd, unsigned long request, ...)

cdef extern from "<sys/sendfile.h>" nogil:
    ssize_t sendfile(int out_fd, int in_fd, void *offset, size_t count)

cdef extern from "<stdio.h>" nogil:
    int snprintf(char *buf, size_t size, const char *fmt, ...)

cdef extern from "<pthread.h>" nogil:
    ctypedef struct pthread_t:
        pass
    ctypedef struct pthread_mutex_t:
        pass
    ctypedef struct pthread_cond_t:
        pass
    int pthread_create(pthread_t *t, void *attr, void *(*fn)(void *) noexcept nogil, void *arg)
    int pthread_join(pthread_t t, void **ret)
    int pthread_mutex_init(pthread_mutex_t *m, void *attr)
    int pthread_mutex_destroy(pthread_mutex_t *m)
    int pthread_mutex_lock(pthread_mutex_t *m)
    int pthread_mutex_unlock(pthread_mutex_t *m)
    int pthread_cond_init(pthread_cond_t *c, void *attr)
    int pthread_cond_destroy(pthread_cond_t *c)
    int pthread_cond_wait(pthread_cond_t *c, pthread_mutex_t *m)
    int pthread_cond_broadcast(pthread_cond_t *c)

cdef extern from *:
    """
    #define LAMINA_FICLONE 0x40049409UL  /* _IOW(0x94, 9, int) */
    #define LAMINA_S_IFMT 0170000
    #define LAMINA_S_IFSOCK 0140000
    """
    unsigned long LAMINA_FICLONE
    mode_t LAMINA_S_IFMT
    mode_t LAMINA_S_IFSOCK

cdef extern from "<fcntl.h>" nogil:
    enum:
        O_NONBLOCK

cdef enum:
    BIG_FILE = 256 << 10     # bytes: larger files are copied on a worker thread
    QUEUE = 8                # copies queued for the workers
    MAX_WORKERS = 4
    CHUNK = 1 << 30
    CHECK_EVERY = 256        # entries between two looks at Ctrl-C
    # which ways file data was moved (FlattenStats.method)
    M_REFLINK = 1
    M_CFR = 2
    M_SENDFILE = 4

cdef int DIR_FLAGS = O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC
cdef int READ_FLAGS = O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK
cdef int CREATE_FLAGS = O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC


class FlattenError(Exception):
    """(relative path, what failed, errno): turned into MaterializeError by store/flatten.py."""


# --- small C helpers -------------------------------------------------------------------------

cdef struct Ent:
    const char *name
    size_t off
    int k                  # index in the level's chain (0: topmost)
    unsigned char dtype


cdef struct Src:
    int fd                 # -1 while parked (closed for want of fds)
    int layer
    dev_t dev              # what a parked fd was: its reopening must find the same directory
    unsigned long ino


cdef struct Level:
    int dfd                # -1 while parked, as Src.fd
    dev_t ddev
    unsigned long dino
    int parked             # how many of its fds are
    int nsrc
    Src *src               # the source dirs merged here, topmost first
    char *arena            # their names
    Ent *ents
    size_t nents, pos
    size_t parent_len      # length of the parent's path in Flattener.rel
    stat meta              # the metadata it gets once filled
    int meta_src           # the source dir it is taken from


cdef struct Link:
    dev_t dev
    unsigned long ino
    char *path             # the first name made for it, relative to the destination


cdef struct Job:
    int src, dst
    stat st
    mode_t create_mode
    char *path


cdef struct Shared:
    # what the walk and the copy workers share
    int reflink, cfr, used                # copy methods still worth trying / used (atomics)
    int is_root
    mode_t umask
    pthread_mutex_t mu
    pthread_cond_t more, room
    Job queue[QUEUE]
    int head, count, closing
    int err                               # first worker error (errno) and where
    char *err_path
    const char *err_what
    void *skipped                         # the Python list of skip messages (borrowed)


cdef int _cmp_ent(const void *a, const void *b) noexcept nogil:
    cdef const Ent *x = <const Ent *>a
    cdef const Ent *y = <const Ent *>b
    cdef int c = strcmp(x.name, y.name)
    if c:
        return c
    return x.k - y.k


cdef int _cmp_u64(const void *a, const void *b) noexcept nogil:
    cdef uint64_t x = (<const uint64_t *>a)[0], y = (<const uint64_t *>b)[0]
    return (x > y) - (x < y)


cdef bint _is_opaque(int fd) noexcept nogil:
    cdef char v[2]
    if fgetxattr(fd, b"trusted.overlay.opaque", v, 2) == 1 and v[0] == b'y':
        return True
    return fgetxattr(fd, b"user.overlay.opaque", v, 2) == 1 and v[0] == b'y'


cdef bint _overlay_xattr(const char *name) noexcept nogil:
    return strncmp(name, b"trusted.overlay.", 16) == 0 or strncmp(name, b"user.overlay.", 13) == 0


cdef char *_dup_str(const char *s) noexcept nogil:
    cdef size_t n = strlen(s)
    cdef char *out = <char *>malloc(n + 1)
    if out != NULL:
        memcpy(out, s, n + 1)
    return out


cdef void _skip(Shared *sh, const char *path, const char *what, const char *detail, int err) noexcept nogil:
    with gil:
        msg = f"{quote_name(<bytes>path)}: {what.decode()}"
        if detail != NULL:
            msg += f" {quote_name(<bytes>detail)}"
        if err:
            msg += f" not copied: {os.strerror(err)}"
        (<object>sh.skipped).append(msg)


# which xattrs _copy_xattrs copies: a directory's ACLs go on last (ACLS_ONLY, once its entries
# are made), or the kernel would give each of them an ACL the image does not hold (the default
# one), and without root the access one may take the owner's write and search away
cdef enum:
    ALL_XATTRS = 0
    BUT_ACLS = 1
    ACLS_ONLY = 2


cdef inline bint _acl_xattr(const char *name) noexcept nogil:
    return strcmp(name, b"system.posix_acl_access") == 0 or strcmp(name, b"system.posix_acl_default") == 0


cdef int _copy_xattrs(Shared *sh, int src, int dst, const char *spath, const char *dpath,
                      const char *rel, int which=ALL_XATTRS) noexcept nogil:
    """Every xattr but overlay's own (``which``: see above), fd to fd (``src >= 0``) or path to path.
    The ACLs go on after the others: an access ACL sets the owner's bits (user::r-- of a
    read-only file), and without root user.* xattrs need the owner's write."""
    cdef ssize_t n, vn
    cdef char *names = NULL
    cdef char *value = NULL
    cdef char *k
    cdef size_t vcap = 0
    cdef int rc, acls
    while True:
        n = flistxattr(src, NULL, 0) if src >= 0 else llistxattr(spath, NULL, 0)
        if n <= 0:
            return 0  # none, or no xattr support
        names = <char *>realloc(names, n)
        n = flistxattr(src, names, n) if src >= 0 else llistxattr(spath, names, n)
        if n >= 0:
            break
        if errno != ERANGE:
            free(names)
            return 0
    for acls in range(2):  # the others, then the ACLs
        if which == (BUT_ACLS if acls else ACLS_ONLY):
            continue
        k = names
        while k < names + n:
            if not _overlay_xattr(k) and _acl_xattr(k) == acls:
                vn = fgetxattr(src, k, NULL, 0) if src >= 0 else lgetxattr(spath, k, NULL, 0)
                if vn >= 0 and <size_t>vn + 1 > vcap:
                    vcap = <size_t>vn + 1
                    value = <char *>realloc(value, vcap)
                if vn >= 0:
                    vn = fgetxattr(src, k, value, vcap) if src >= 0 else lgetxattr(spath, k, value, vcap)
                if vn >= 0:
                    rc = fsetxattr(dst, k, value, vn, 0) if dst >= 0 else lsetxattr(dpath, k, value, vn, 0)
                    if rc < 0:
                        _skip(sh, rel, b"xattr", k, errno)
            k += strlen(k) + 1
    free(names)
    free(value)
    return 0


cdef int _copy_range(Shared *sh, int src, int dst, int64_t size) noexcept nogil:
    """``size`` bytes from the current offsets: copy_file_range, else sendfile."""
    cdef long n
    cdef int64_t done = 0
    cdef int e
    if lamina_atomic_load(&sh.cfr):
        while done < size:
            n = lamina_copy_file_range(src, dst, <size_t>min(size - done, CHUNK))
            if n < 0:
                if errno == EINTR:
                    continue
                e = errno
                if not (e == EXDEV or e == EINVAL or e == ENOSYS or e == EOPNOTSUPP or e == EIO):
                    return -1
                if done == 0:
                    lamina_atomic_store(&sh.cfr, 0)
                break
            if n == 0:
                break
            done += n
        if done > 0:
            lamina_atomic_or(&sh.used, M_CFR)
        if done >= size:
            return 0
    while done < size:  # from the current offsets
        n = sendfile(dst, src, NULL, <size_t>min(size - done, CHUNK))
        if n < 0:
            if errno == EINTR:
                continue
            return -1
        if n == 0:
            break
        done += n
    lamina_atomic_or(&sh.used, M_SENDFILE)
    return 0


cdef int _copy_data(Shared *sh, int src, int dst, int64_t size, bint sparse) noexcept nogil:
    """FICLONE where the filesystem shares extents, else copy_file_range, else sendfile; a
    ``sparse`` file (fewer blocks than bytes) region by region, keeping its holes."""
    cdef int e, r
    cdef long long pos = 0, start, end
    if size == 0:
        return 0
    if lamina_atomic_load(&sh.reflink):
        if ioctl(dst, LAMINA_FICLONE, src) == 0:
            lamina_atomic_or(&sh.used, M_REFLINK)
            return 0
        e = errno
        if not (e == EOPNOTSUPP or e == ENOTTY or e == EXDEV or e == EINVAL or e == ENOSYS
                or e == EPERM or e == ETXTBSY):
            return -1
        lamina_atomic_store(&sh.reflink, 0)
    if not sparse:
        return _copy_range(sh, src, dst, size)
    while pos < size:
        r = lamina_next_data(src, pos, size, &start, &end)
        if r < 0:
            return -1
        if r == 0:
            break
        if lseek(src, <off_t>start, SEEK_SET) < 0 or lseek(dst, <off_t>start, SEEK_SET) < 0:
            return -1
        if _copy_range(sh, src, dst, end - start) < 0:
            return -1
        pos = end
    return ftruncate(dst, <off_t>size)


cdef const char *_finish_file(Shared *sh, int src, int dst, stat *st, mode_t create_mode,
                              const char *rel) noexcept nogil:
    """Data, xattrs, owner, mode, times of one regular file; NULL, or what failed (errno set)."""
    cdef timespec ts[2]
    cdef mode_t mode = st.st_mode & 0o7777
    if _copy_data(sh, src, dst, st.st_size, st.st_blocks * 512 < st.st_size) < 0:
        return b"copy"
    if sh.is_root and fchown(dst, st.st_uid, st.st_gid) < 0:
        return b"chown"
    # after chown, which removes security.capability (and after the data: so does a write);
    # before chmod, which may take away the owner's write bit that user.* xattrs need
    _copy_xattrs(sh, src, dst, NULL, NULL, rel)
    if mode != (create_mode & ~sh.umask) or mode & 0o7000:
        if fchmod(dst, mode) < 0:  # after chown, which clears setuid/setgid
            return b"chmod"
    ts[0] = st.st_atim
    ts[1] = st.st_mtim
    if futimens(dst, ts) < 0:
        return b"set times of"
    return NULL


cdef void *_worker(void *arg) noexcept nogil:
    cdef Shared *sh = <Shared *>arg
    cdef Job job
    cdef const char *what
    while True:
        pthread_mutex_lock(&sh.mu)
        while sh.count == 0 and not sh.closing:
            pthread_cond_wait(&sh.more, &sh.mu)
        if sh.count == 0:
            pthread_mutex_unlock(&sh.mu)
            return NULL
        job = sh.queue[sh.head]
        sh.head = (sh.head + 1) % QUEUE
        sh.count -= 1
        pthread_cond_broadcast(&sh.room)
        pthread_mutex_unlock(&sh.mu)
        what = _finish_file(sh, job.src, job.dst, &job.st, job.create_mode, job.path)
        if what != NULL:
            pthread_mutex_lock(&sh.mu)
            if not sh.err:
                sh.err = errno or EIO
                sh.err_what = what
                sh.err_path = job.path
                job.path = NULL
            pthread_mutex_unlock(&sh.mu)
        close(job.src)
        close(job.dst)
        free(job.path)


# --- the walk ----------------------------------------------------------------------------------

cdef class Flattener:
    cdef Shared sh
    cdef bint link
    cdef int dest_fd
    cdef int nlayers
    cdef int *layer_fds
    cdef Level *stack
    cdef size_t depth, stack_cap
    cdef char *rel
    cdef size_t rel_cap
    cdef Link *links
    cdef size_t nlinks, links_cap
    cdef uint64_t **singles           # per layer: sorted inode numbers of the store objects its files share
    cdef size_t *nsingles
    cdef pthread_t threads[MAX_WORKERS]
    cdef int nthreads
    cdef size_t held                  # fds the levels hold (parked ones not counted)
    cdef size_t budget                # how many they may hold (0: no bound)
    cdef int err
    cdef const char *err_what
    cdef char *err_path
    cdef readonly int64_t entries, files, dirs, symlinks, hardlinks, other, bytes, hidden
    cdef readonly list skipped
    cdef object cancelled
    cdef object pending               # an exception a signal handler raised during the walk

    def __cinit__(self):
        self.dest_fd = -1
        self.layer_fds = NULL
        self.stack = NULL
        self.rel = NULL
        self.links = NULL
        self.singles = NULL
        self.nsingles = NULL
        pthread_mutex_init(&self.sh.mu, NULL)
        pthread_cond_init(&self.sh.more, NULL)
        pthread_cond_init(&self.sh.room, NULL)

    def __init__(self, layer_dirs, dest, *, bint link=False, int workers=0, singles=None, cancelled=None):
        """``layer_dirs``: the snapshots' fs dirs, bottom first.  ``singles``: per
        layer, the inode numbers (any order) of the store objects its files share
        through the store's dedup (names on them are never grouped as hardlinks).  ``cancelled``: an Event that
        stops the walk (Ctrl-C)."""
        cdef int i, fd
        cdef size_t j
        self.link = link
        self.skipped = []
        self.sh.skipped = <void *>self.skipped
        self.sh.reflink = 1
        self.sh.cfr = 1
        self.sh.is_root = geteuid() == 0
        self.sh.umask = _current_umask()
        self.cancelled = cancelled
        self.nlayers = len(layer_dirs)
        self.layer_fds = <int *>calloc(max(self.nlayers, 1), sizeof(int))
        self.singles = <uint64_t **>calloc(max(self.nlayers, 1), sizeof(uint64_t *))
        self.nsingles = <size_t *>calloc(max(self.nlayers, 1), sizeof(size_t))
        for i in range(self.nlayers):
            self.layer_fds[i] = -1
        for i, d in enumerate(layer_dirs):
            fd = openat(AT_FDCWD, os.fsencode(d), DIR_FLAGS)
            if fd < 0:
                raise FlattenError(os.fsdecode(d), "open snapshot", errno)
            self.layer_fds[i] = fd
            if singles is not None and singles[i] is not None and len(singles[i]):
                inodes = singles[i]
                self.singles[i] = <uint64_t *>malloc(len(inodes) * sizeof(uint64_t))
                if self.singles[i] == NULL:
                    raise MemoryError()
                for j in range(<size_t>len(inodes)):
                    self.singles[i][j] = inodes[j]
                self.nsingles[i] = len(inodes)
                qsort(self.singles[i], self.nsingles[i], sizeof(uint64_t), _cmp_u64)
        self.dest_fd = openat(AT_FDCWD, os.fsencode(dest), DIR_FLAGS)
        if self.dest_fd < 0:
            raise FlattenError(os.fsdecode(dest), "open destination", errno)
        self.rel_cap = 4096
        self.rel = <char *>malloc(self.rel_cap)
        self.rel[0] = 0
        if not link:
            self.nthreads = min(max(workers, 0), MAX_WORKERS)

    def __dealloc__(self):
        cdef int i
        cdef size_t j
        self._stop_workers()
        while self.depth:
            self._pop(False)
        free(self.stack)
        if self.layer_fds != NULL:
            for i in range(self.nlayers):
                if self.layer_fds[i] >= 0:
                    close(self.layer_fds[i])
                free(self.singles[i])
        free(self.layer_fds)
        free(self.singles)
        free(self.nsingles)
        if self.dest_fd >= 0:
            close(self.dest_fd)
        free(self.rel)
        for i in range(<int>self.nlinks):
            free(self.links[i].path)
        free(self.links)
        free(self.sh.err_path)
        free(self.err_path)
        pthread_cond_destroy(&self.sh.more)
        pthread_cond_destroy(&self.sh.room)
        pthread_mutex_destroy(&self.sh.mu)

    @property
    def methods(self):
        out = []
        if self.sh.used & M_REFLINK:
            out.append("reflink")
        if self.sh.used & M_CFR:
            out.append("copy_file_range")
        if self.sh.used & M_SENDFILE:
            out.append("sendfile")
        return out

    def run(self, size_t fd_budget=0):
        """Walk and copy everything; raises FlattenError(path, what, errno).  ``fd_budget``:
        how many fds the walk's levels may hold at once (0: as many as the tree asks)."""
        cdef int rc, i
        self.budget = fd_budget
        for i in range(self.nthreads):
            if pthread_create(&self.threads[i], NULL, _worker, &self.sh) != 0:
                self.nthreads = i
                break
        with nogil:
            rc = self._walk()
        self._stop_workers()
        if rc == -2:
            if self.pending is not None:
                raise self.pending
            from lamina.errors import Interrupted
            raise Interrupted("unpack: interrupted")
        if rc < 0 and self.err:
            raise FlattenError(_text(self.err_path), _text(self.err_what), self.err)
        # the walk also stops (rc -1, its own err unset) when _submit finds a worker failed
        if self.sh.err:
            raise FlattenError(_text(self.sh.err_path), _text(self.sh.err_what), self.sh.err)
        if rc < 0:
            raise FlattenError(_text(self.rel), "walk", EIO)

    cdef void _stop_workers(self) noexcept:
        cdef int i
        if self.nthreads <= 0:
            return
        with nogil:
            pthread_mutex_lock(&self.sh.mu)
            self.sh.closing = 1
            pthread_cond_broadcast(&self.sh.more)
            pthread_mutex_unlock(&self.sh.mu)
            for i in range(self.nthreads):
                pthread_join(self.threads[i], NULL)
        self.nthreads = 0

    # -- errors and paths --

    cdef int _fail(self, const char *what, const char *name) noexcept nogil:
        """Remember the first error (errno) at ``rel/name``; returns -1."""
        if not self.err:
            self.err = errno or EIO
            self.err_what = what
            self.err_path = self._path_of(name)
        return -1

    cdef char *_path_of(self, const char *name) noexcept nogil:
        """A malloc'd ``rel/name`` (or ``rel``)."""
        cdef size_t n = strlen(self.rel), m = strlen(name) if name != NULL else 0
        cdef char *out = <char *>malloc(n + m + 2)
        if out == NULL:
            return NULL
        memcpy(out, self.rel, n)
        if m:
            if n:
                out[n] = b'/'
                n += 1
            memcpy(out + n, name, m)
        out[n + m] = 0
        return out

    cdef int _push_rel(self, const char *name) noexcept nogil:
        cdef size_t n = strlen(self.rel), m = strlen(name)
        cdef char *grown
        if n + m + 2 > self.rel_cap:
            grown = <char *>realloc(self.rel, (n + m + 2) * 2)
            if grown == NULL:
                lamina_set_errno(ENOMEM)
                return -1
            self.rel = grown
            self.rel_cap = (n + m + 2) * 2
        if n:
            self.rel[n] = b'/'
            n += 1
        memcpy(self.rel + n, name, m + 1)
        return 0

    # -- hardlink groups --

    cdef bint _single(self, int layer, uint64_t ino) noexcept nogil:
        """Is inode ``ino`` of ``layer`` a store object (shared only through file dedup)?"""
        cdef size_t lo = 0, hi = self.nsingles[layer], mid
        cdef uint64_t *a = self.singles[layer]
        while lo < hi:
            mid = (lo + hi) // 2
            if a[mid] < ino:
                lo = mid + 1
            elif a[mid] > ino:
                hi = mid
            else:
                return True
        return False

    cdef Link *_find_link(self, dev_t dev, unsigned long ino) noexcept nogil:
        cdef size_t i, mask
        if self.links_cap == 0:
            return NULL
        mask = self.links_cap - 1
        i = <size_t>((ino * 0x9E3779B97F4A7C15ULL) ^ dev) & mask
        while self.links[i].path != NULL:
            if self.links[i].ino == ino and self.links[i].dev == dev:
                return &self.links[i]
            i = (i + 1) & mask
        return &self.links[i]  # the empty slot it would go in

    cdef int _add_link(self, dev_t dev, unsigned long ino, const char *name) noexcept nogil:
        cdef Link *old = self.links
        cdef size_t cap = self.links_cap, i
        cdef Link *slot
        if (self.nlinks + 1) * 2 > self.links_cap:
            self.links_cap = cap * 2 if cap else 1024
            self.links = <Link *>calloc(self.links_cap, sizeof(Link))
            if self.links == NULL:
                lamina_set_errno(ENOMEM)
                return -1
            for i in range(cap):
                if old[i].path != NULL:
                    self._find_link(old[i].dev, old[i].ino)[0] = old[i]
            free(old)
        slot = self._find_link(dev, ino)
        slot.dev = dev
        slot.ino = ino
        slot.path = self._path_of(name)
        self.nlinks += 1
        return 0

    cdef int _grouped(self, int layer, stat *st, int dfd, const char *name) noexcept nogil:
        """1 if ``name`` was made as one more name of an inode made earlier (a
        hardlink of the image), 0 if it is the first (remembered), -1 on error."""
        cdef Link *l
        if st.st_nlink <= 1 or S_ISDIR(st.st_mode) or self._single(layer, st.st_ino):
            return 0
        l = self._find_link(st.st_dev, st.st_ino)
        if l == NULL or l.path == NULL:
            return -1 if self._add_link(st.st_dev, st.st_ino, name) < 0 else 0
        if linkat(self.dest_fd, l.path, dfd, name, 0) < 0 and (
                errno != ENAMETOOLONG or _linkat_walked(self.dest_fd, l.path, dfd, name) < 0):
            return self._fail(b"hardlink to an earlier name of its inode", name)
        self.hardlinks += 1
        self.entries += 1
        return 1

    # -- levels --

    cdef int _list(self, Level *lv) noexcept nogil:
        """Read the names of every source dir of ``lv``; sorted by (name, layer) when several."""
        cdef size_t cap = 0, used = 0, ecap = 0, n, i
        cdef int k, k2, fd
        cdef DIR *d
        cdef dirent *de
        cdef char *grown
        cdef Ent *egrown
        cdef stat st
        for k in range(lv.nsrc):
            fd = dup(lv.src[k].fd)
            if fd < 0:
                return self._fail(b"list", NULL)
            d = fdopendir(fd)
            if d == NULL:
                close(fd)
                return self._fail(b"list", NULL)
            while True:
                lamina_set_errno(0)
                de = readdir(d)
                if de == NULL:
                    break
                if de.d_name[0] == b'.' and (de.d_name[1] == 0 or (de.d_name[1] == b'.' and de.d_name[2] == 0)):
                    continue
                n = strlen(de.d_name) + 1
                if used + n > cap:
                    cap = (used + n) * 2 if cap else 4096 + n
                    grown = <char *>realloc(lv.arena, cap)
                    if grown == NULL:
                        closedir(d)
                        lamina_set_errno(ENOMEM)
                        return self._fail(b"list", NULL)
                    lv.arena = grown
                if lv.nents == ecap:
                    ecap = ecap * 2 if ecap else 64
                    egrown = <Ent *>realloc(lv.ents, ecap * sizeof(Ent))
                    if egrown == NULL:
                        closedir(d)
                        lamina_set_errno(ENOMEM)
                        return self._fail(b"list", NULL)
                    lv.ents = egrown
                memcpy(lv.arena + used, de.d_name, n)
                lv.ents[lv.nents].off = used
                lv.ents[lv.nents].k = k
                lv.ents[lv.nents].dtype = de.d_type
                if de.d_type == DT_UNKNOWN:  # filesystems without d_type
                    if fstatat(lv.src[k].fd, de.d_name, &st, AT_SYMLINK_NOFOLLOW) < 0:
                        closedir(d)
                        return self._fail(b"stat", de.d_name)
                    lv.ents[lv.nents].dtype = (DT_DIR if S_ISDIR(st.st_mode) else DT_REG if S_ISREG(st.st_mode)
                                               else DT_LNK if S_ISLNK(st.st_mode) else DT_CHR if S_ISCHR(st.st_mode)
                                               else 0)
                lv.nents += 1
                used += n
            k2 = errno
            closedir(d)
            if k2:
                lamina_set_errno(k2)
                return self._fail(b"list", NULL)
        for i in range(lv.nents):
            lv.ents[i].name = lv.arena + lv.ents[i].off
        if lv.nsrc > 1 and lv.nents > 1:
            qsort(lv.ents, lv.nents, sizeof(Ent), _cmp_ent)
        return 0

    cdef int _push(self, Src *src, int nsrc, int dfd, size_t parent_len) noexcept nogil:
        """A new level (takes ownership of ``src`` and ``dfd``): list it, copy its xattrs."""
        cdef Level *lv
        cdef Level *grown
        cdef stat st
        cdef int k, meta = 0
        if self.depth == self.stack_cap:
            grown = <Level *>realloc(self.stack, (self.stack_cap * 2 + 16) * sizeof(Level))
            if grown == NULL:
                for k in range(nsrc):
                    close(src[k].fd)
                free(src)
                close(dfd)
                lamina_set_errno(ENOMEM)
                return self._fail(b"walk", NULL)
            self.stack = grown
            self.stack_cap = self.stack_cap * 2 + 16
        lv = &self.stack[self.depth]
        self.depth += 1
        lv.dfd = dfd
        lv.src = src
        lv.nsrc = nsrc
        self.held += nsrc + 1
        lv.arena = NULL
        lv.ents = NULL
        lv.nents = 0
        lv.pos = 0
        lv.parked = 0
        lv.parent_len = parent_len
        # The topmost layer that lists the directory explicitly decides its metadata.  A
        # layer with ``usr/bin/x`` but no ``usr/`` entry has an implicit ``usr`` (0755, root,
        # extraction time) whose mtime and ctime are the same instant; an explicit one had
        # its mtime set from the tar afterwards (umoci, docker and the dir format agree).
        for k in range(nsrc):
            if fstat(src[k].fd, &st) < 0:
                return self._fail(b"stat", NULL)
            if k == 0:
                lv.meta = st
            if st.st_mtim.tv_sec != st.st_ctim.tv_sec or st.st_mtim.tv_nsec != st.st_ctim.tv_nsec:
                lv.meta = st
                meta = k
                break
        if nsrc:
            _copy_xattrs(&self.sh, src[meta].fd, dfd, NULL, NULL, self.rel, BUT_ACLS)
        lv.meta_src = meta
        return self._list(lv)

    # -- parking: a deep tree of many layers needs more fds than the limit --

    cdef void _park_fd(self, Level *lv, int *fd, dev_t *dev, unsigned long *ino) noexcept nogil:
        """Close ``*fd`` of ``lv`` (a source's or its destination's), noting which directory it
        was: _reopen_fd must find that one again."""
        cdef stat st
        if fd[0] < 0:
            return
        lv.parked += 1
        if fstat(fd[0], &st) == 0:
            dev[0] = st.st_dev
            ino[0] = st.st_ino
        else:
            dev[0] = 0
            ino[0] = 0
        close(fd[0])
        fd[0] = -1
        self.held -= 1

    cdef void _park(self, Level *lv) noexcept nogil:
        """Close the fds of ``lv`` (_reopen opens them again)."""
        cdef int k
        for k in range(lv.nsrc):
            self._park_fd(lv, &lv.src[k].fd, &lv.src[k].dev, &lv.src[k].ino)
        self._park_fd(lv, &lv.dfd, &lv.ddev, &lv.dino)

    cdef void _make_room(self, size_t need, size_t below) noexcept nogil:
        """Park the levels under ``below``, shallowest first (the walk comes back to them
        last), until ``need`` more fds fit in the budget."""
        cdef size_t i = 0
        if self.budget == 0:
            return
        while self.held + need > self.budget and i < below:
            self._park(&self.stack[i])
            i += 1

    cdef int _reopen(self, Level *lv, bint all_src) noexcept nogil:
        """Open the parked fds of ``lv``, the top level (``self.rel`` is its path) again, from
        the layers' and the destination's roots: every source when ``all_src``, else only the
        one its metadata comes from (all _pop needs)."""
        cdef int k
        cdef size_t need = 1 if lv.dfd < 0 else 0
        if lv.parked == 0:
            return 0
        for k in range(lv.nsrc):
            if lv.src[k].fd < 0 and (all_src or k == lv.meta_src):
                need += 1
        if need == 0:
            return 0
        self._make_room(need + 1, self.depth - 1)
        for k in range(lv.nsrc):
            if lv.src[k].fd < 0 and (all_src or k == lv.meta_src):
                if self._reopen_fd(lv, self.layer_fds[lv.src[k].layer], &lv.src[k].fd, lv.src[k].dev,
                                   lv.src[k].ino) < 0:
                    return -1
        if lv.dfd < 0 and self._reopen_fd(lv, self.dest_fd, &lv.dfd, lv.ddev, lv.dino) < 0:
            return -1
        return 0

    cdef int _reopen_fd(self, Level *lv, int root, int *fd, dev_t dev, unsigned long ino) noexcept nogil:
        """Open ``self.rel`` from ``root`` into ``*fd``, parked by _park_fd: the same directory or
        ESTALE (a rename under the walk must not make it merge another one)."""
        cdef stat st
        cdef int got = _open_walked(root, self.rel)
        if got < 0:
            return self._fail(b"open again", NULL)
        if fstat(got, &st) < 0 or st.st_dev != dev or st.st_ino != ino:
            close(got)
            lamina_set_errno(ESTALE)
            return self._fail(b"open again", NULL)
        fd[0] = got
        lv.parked -= 1
        self.held += 1
        return 0

    cdef void _pop(self, bint finish) noexcept nogil:
        cdef Level *lv = &self.stack[self.depth - 1]
        cdef int k
        cdef timespec ts[2]
        if finish and not self.err and lv.nsrc > 0:
            _copy_xattrs(&self.sh, lv.src[lv.meta_src].fd, lv.dfd, NULL, NULL, self.rel, ACLS_ONLY)
            if self.sh.is_root and fchown(lv.dfd, lv.meta.st_uid, lv.meta.st_gid) < 0:
                self._fail(b"chown", NULL)
            elif fchmod(lv.dfd, lv.meta.st_mode & 0o7777) < 0:
                self._fail(b"chmod", NULL)
            else:
                ts[0] = lv.meta.st_atim
                ts[1] = lv.meta.st_mtim
                if futimens(lv.dfd, ts) < 0:
                    self._fail(b"set times of", NULL)
        for k in range(lv.nsrc):
            if lv.src[k].fd >= 0:
                close(lv.src[k].fd)
                self.held -= 1
        if lv.dfd >= 0:
            close(lv.dfd)
            self.held -= 1
        free(lv.src)
        free(lv.arena)
        free(lv.ents)
        self.depth -= 1
        self.rel[lv.parent_len] = 0

    cdef int _walk(self) noexcept nogil:
        cdef Src *src
        cdef int n = 0, i, fd, k
        cdef bint short = False
        cdef Level *lv
        cdef size_t first, j, count = 0
        src = <Src *>malloc(max(self.nlayers, 1) * sizeof(Src))
        if src == NULL:
            lamina_set_errno(ENOMEM)
            return self._fail(b"walk", NULL)
        for i in range(self.nlayers - 1, -1, -1):  # the merged root: top first, down to an opaque one
            src[n].fd = dup(self.layer_fds[i])
            if src[n].fd < 0:  # (-1 is a parked fd: the walk went on to "cannot stat: Bad file descriptor")
                short = True
                break
            src[n].layer = i
            n += 1
            if _is_opaque(self.layer_fds[i]):
                break
        fd = -1 if short else dup(self.dest_fd)
        if fd < 0:
            k = errno
            for j in range(<size_t>n):
                close(src[j].fd)
            free(src)
            lamina_set_errno(k)
            return self._fail(b"open", NULL)
        if self._push(src, n, fd, 0) < 0:
            return -1
        while self.depth:
            lv = &self.stack[self.depth - 1]
            if self._reopen(lv, lv.pos < lv.nents) < 0:
                return -1
            if lv.pos >= lv.nents:
                self._pop(True)
                if self.err:
                    return -1
                continue
            first = lv.pos
            j = first + 1
            if lv.nsrc > 1:
                while j < lv.nents and strcmp(lv.ents[j].name, lv.ents[first].name) == 0:
                    j += 1
                self.hidden += j - first - 1
            lv.pos = j
            if self._entry(lv, first, j) < 0:
                return -1
            count += 1
            if count % CHECK_EVERY == 0 and self._check_cancelled():
                return -2
        return 0

    cdef bint _check_cancelled(self) noexcept nogil:
        with gil:
            try:
                return _poll(self)
            except BaseException as e:  # KeyboardInterrupt from a signal handler
                self.pending = e
                return True

    cdef int _entry(self, Level *lv, size_t first, size_t end) noexcept nogil:
        """The entries ``first``..``end`` of ``lv`` share one name, topmost layer first."""
        cdef Ent *e = &lv.ents[first]
        cdef int sfd = lv.src[e.k].fd, layer = lv.src[e.k].layer
        cdef const char *name = e.name
        if e.dtype == DT_DIR:
            return self._dir(lv, first, end)
        if e.dtype == DT_REG:
            if self.link:
                if linkat(sfd, name, lv.dfd, name, 0) == 0:
                    self.files += 1
                    self.entries += 1
                    return 0
                if errno != EMLINK:
                    return self._fail(b"hardlink from the store", name)
                # the inode has too many links: a private copy instead
            return self._file(sfd, layer, lv.dfd, name)
        return self._special(sfd, layer, lv.dfd, name)

    cdef int _dir(self, Level *lv, size_t first, size_t end) noexcept nogil:
        cdef Ent *e = &lv.ents[first]
        cdef const char *name = e.name
        cdef Src *src = <Src *>malloc((end - first) * sizeof(Src))
        cdef int n = 0, fd, child
        cdef size_t j, plen
        if src == NULL:
            lamina_set_errno(ENOMEM)
            return self._fail(b"walk", name)
        # the child's fds (one per source, its destination, one for listing it) beside the
        # levels': the levels under this one give theirs up first, then this one's sources
        # each as soon as the child's opened from it
        self._make_room(end - first + 2, self.depth - 1)
        fd = openat(lv.src[e.k].fd, name, DIR_FLAGS)
        if fd < 0:
            free(src)
            return self._fail(b"open", name)
        src[0].fd = fd
        src[0].layer = lv.src[e.k].layer
        n = 1
        self._spare(lv, &lv.src[e.k], n)
        if not _is_opaque(fd):
            for j in range(first + 1, end):
                if lv.ents[j].dtype != DT_DIR:
                    break  # a lower non-directory (or whiteout) ends the merge, as in overlayfs
                fd = openat(lv.src[lv.ents[j].k].fd, name, DIR_FLAGS)
                if fd < 0:
                    # not the end of the merge (a lower non-directory is, above): leaving the
                    # layers below out gave a tree without their files and no error (EMFILE
                    # when another thread took the fds this walk's budget counted on)
                    for j in range(<size_t>n):
                        close(src[j].fd)
                    free(src)
                    return self._fail(b"open", name)
                src[n].fd = fd
                src[n].layer = lv.src[lv.ents[j].k].layer
                n += 1
                self._spare(lv, &lv.src[lv.ents[j].k], n)
                if _is_opaque(fd):
                    break
        if mkdirat(lv.dfd, name, 0o700) < 0:
            for j in range(<size_t>n):
                close(src[j].fd)
            free(src)
            return self._fail(b"create directory", name)
        child = openat(lv.dfd, name, DIR_FLAGS)
        if child < 0:
            for j in range(<size_t>n):
                close(src[j].fd)
            free(src)
            return self._fail(b"open", name)
        self.dirs += 1
        self.entries += 1
        plen = strlen(self.rel)
        if self._push_rel(name) < 0:
            for j in range(<size_t>n):
                close(src[j].fd)
            free(src)
            close(child)
            return self._fail(b"walk", name)
        return self._push(src, n, child, plen)

    cdef void _spare(self, Level *lv, Src *parent, int opened) noexcept nogil:
        """``opened`` fds of a child level are open, the last one from ``parent``: park that
        one if the child's destination and listing would not fit beside them."""
        if self.budget and self.held + <size_t>opened + 2 > self.budget:
            self._park_fd(lv, &parent.fd, &parent.dev, &parent.ino)

    cdef int _file(self, int sfd, int layer, int dfd, const char *name) noexcept nogil:
        cdef int src, dst, g
        cdef stat st
        cdef mode_t create_mode
        cdef const char *what
        src = openat(sfd, name, READ_FLAGS)
        if src < 0:
            return self._fail(b"open", name)
        if fstat(src, &st) < 0:
            close(src)
            return self._fail(b"stat", name)
        g = self._grouped(layer, &st, dfd, name)
        if g != 0:
            close(src)
            return -1 if g < 0 else 0
        create_mode = st.st_mode & 0o777  # the fd is writable whatever the mode (O_CREAT)
        if not self.sh.is_root:
            # but user.* xattrs need the owner's write bit on the inode: _finish_file's chmod
            # takes it back after them
            create_mode |= 0o200
        dst = openat(dfd, name, CREATE_FLAGS, create_mode)
        if dst < 0:
            close(src)
            return self._fail(b"create", name)
        self.files += 1
        self.entries += 1
        self.bytes += st.st_size
        if self.nthreads > 0 and st.st_size >= BIG_FILE:
            # copy_file_range runs for the whole file on a worker; the walk goes on meanwhile
            return self._submit(src, dst, &st, create_mode, name)
        what = _finish_file(&self.sh, src, dst, &st, create_mode, self.rel)
        close(src)
        close(dst)
        if what != NULL:
            return self._fail(what, name)
        return 0

    cdef int _submit(self, int src, int dst, stat *st, mode_t create_mode, const char *name) noexcept nogil:
        cdef Job *job
        pthread_mutex_lock(&self.sh.mu)
        while self.sh.count == QUEUE:
            pthread_cond_wait(&self.sh.room, &self.sh.mu)
        job = &self.sh.queue[(self.sh.head + self.sh.count) % QUEUE]
        job.src = src
        job.dst = dst
        job.st = st[0]
        job.create_mode = create_mode
        job.path = self._path_of(name)
        self.sh.count += 1
        pthread_cond_broadcast(&self.sh.more)
        pthread_mutex_unlock(&self.sh.mu)
        return -1 if self.sh.err else 0

    cdef int _special(self, int sfd, int layer, int dfd, const char *name) noexcept nogil:
        """Symlinks, devices, fifos, sockets, and whiteouts (which hide, and are not content)."""
        cdef stat st
        cdef mode_t fmt
        cdef char buf[4097]
        cdef char spath[64]
        cdef char dpath[64]
        cdef ssize_t n
        cdef timespec ts[2]
        cdef int g
        cdef char *where
        cdef char *sp
        cdef char *dp
        if fstatat(sfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0:
            return self._fail(b"stat", name)
        fmt = st.st_mode & LAMINA_S_IFMT
        if fmt == S_IFCHR and st.st_rdev == 0:
            self.hidden += 1
            return 0
        if fmt == S_IFREG or fmt == S_IFDIR:  # changed type under us (d_type said otherwise)
            return self._file(sfd, layer, dfd, name) if fmt == S_IFREG else 0
        if fmt == LAMINA_S_IFSOCK:
            where = self._path_of(name)
            _skip(&self.sh, where, b"socket not materialized", NULL, 0)
            free(where)
            return 0
        if self.link:
            if linkat(sfd, name, dfd, name, 0) == 0:
                self.entries += 1
                if fmt == S_IFLNK:
                    self.symlinks += 1
                else:
                    self.other += 1
                return 0
            if errno != EMLINK:
                return self._fail(b"hardlink from the store", name)
        g = self._grouped(layer, &st, dfd, name)
        if g != 0:
            return -1 if g < 0 else 0
        if fmt == S_IFLNK:
            n = readlinkat(sfd, name, buf, sizeof(buf) - 1)
            if n < 0:
                return self._fail(b"read symlink", name)
            buf[n] = 0
            if symlinkat(buf, dfd, name) < 0:
                return self._fail(b"create symlink", name)
            self.symlinks += 1
        else:
            if fmt != S_IFIFO and not self.sh.is_root:
                where = self._path_of(name)
                _skip(&self.sh, where, b"device node not created (needs root)", NULL, 0)
                free(where)
                return 0
            if mknodat(dfd, name, fmt | 0o600, st.st_rdev) < 0:
                return self._fail(b"create device node", name)
            self.other += 1
        self.entries += 1
        if self.sh.is_root and fchownat(dfd, name, st.st_uid, st.st_gid, AT_SYMLINK_NOFOLLOW) < 0:
            return self._fail(b"chown", name)
        # after chown, which removes security.capability from anything but a directory
        snprintf(spath, sizeof(spath), b"/proc/self/fd/%d/", sfd)
        snprintf(dpath, sizeof(dpath), b"/proc/self/fd/%d/", dfd)
        where = self._path_of(name)
        sp = _join(spath, name)
        dp = _join(dpath, name)
        if sp != NULL and dp != NULL:
            _copy_xattrs(&self.sh, -1, -1, sp, dp, where)
        free(sp)
        free(dp)
        free(where)
        if fmt != S_IFLNK and fchmodat(dfd, name, st.st_mode & 0o7777, 0) < 0:
            return self._fail(b"chmod", name)
        ts[0] = st.st_atim
        ts[1] = st.st_mtim
        if utimensat(dfd, name, ts, AT_SYMLINK_NOFOLLOW) < 0:
            return self._fail(b"set times of", name)
        return 0


cdef int _poll(Flattener f) except -1:
    PyErr_CheckSignals()  # runs Python's signal handlers (Ctrl-C) in the main thread
    return f.cancelled is not None and f.cancelled.is_set()


cdef str _text(const char *s):
    return s.decode("utf-8", "surrogateescape") if s != NULL else "."


cdef int _linkat_walked(int root, const char *path, int dfd, const char *name) noexcept nogil:
    """linkat(2) of ``path`` under ``root``, its directories opened one at a time
    (``O_NOFOLLOW``, _open_walked): an earlier name of a hardlink group may lie deeper than
    PATH_MAX (a symlink of the image led its layer there).  -1 with errno set on failure."""
    cdef const char *slash = strrchr(path, b'/')
    cdef size_t n = <size_t>(slash - path) if slash != NULL else 0
    cdef char *parent = <char *>malloc(n + 1)
    cdef int fd, r, e
    if parent == NULL:
        lamina_set_errno(ENOMEM)
        return -1
    memcpy(parent, path, n)
    parent[n] = 0
    fd = _open_walked(root, parent)
    free(parent)
    if fd < 0:
        return -1
    r = linkat(fd, slash + 1 if slash != NULL else path, dfd, name, 0)
    e = errno
    close(fd)
    lamina_set_errno(e)
    return r


cdef int _open_walked(int root, const char *path) noexcept nogil:
    """The directory ``path`` (relative, "" for ``root`` itself) under ``root``, opened one
    component at a time, ``O_NOFOLLOW``.  -1 with errno set on failure."""
    cdef int fd = dup(root), nfd, e
    cdef const char *p = path
    cdef const char *slash
    cdef char comp[256]
    cdef size_t n
    while fd >= 0 and p[0]:
        slash = strchr(p, b'/')
        n = <size_t>(slash - p) if slash != NULL else strlen(p)
        if n >= sizeof(comp):
            close(fd)
            lamina_set_errno(ENAMETOOLONG)
            return -1
        if n:
            memcpy(comp, p, n)
            comp[n] = 0
            nfd = openat(fd, comp, DIR_FLAGS)
            e = errno
            close(fd)
            lamina_set_errno(e)
            fd = nfd
        p += n
        if p[0] == b'/':
            p += 1
    return fd


cdef char *_join(const char *a, const char *b) noexcept nogil:
    cdef size_t n = strlen(a), m = strlen(b)
    cdef char *out = <char *>malloc(n + m + 1)
    if out != NULL:
        memcpy(out, a, n)
        memcpy(out + n, b, m + 1)
    return out
