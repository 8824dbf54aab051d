# cython: freethreading_compatible = True
"""BLAKE3 of whole files, for the store's file objects (lamina.store.objects).

The vendored BLAKE3 C implementation (native/vendor/blake3) picks its SIMD back
end at run time.  hash_fd() reads and hashes with the GIL released, so several
threads hash several files on several cores.
"""
from libc.stdint cimport uint8_t
from libc.stdlib cimport malloc, free
from libc.errno cimport errno, EINTR, EEXIST, ENOENT, EINVAL
from libc.string cimport memcpy
from posix.types cimport off_t
from cpython.bytes cimport PyBytes_FromStringAndSize

from blake3_c cimport *

cdef extern from "<unistd.h>" nogil:
    ssize_t pread(int fd, void *buf, size_t count, off_t offset)

from posix.resource cimport getrlimit, rlimit, RLIMIT_NOFILE

DEF BUFSIZE = 1 << 20

BLAKE3_VERSION = blake3_version().decode()


def hash_fd(int fd):
    """(blake3 hex digest, bytes read) of everything ``fd`` holds from offset 0.

    pread, so the fd's own offset is untouched and the caller may share it.
    """
    cdef blake3_hasher hasher
    cdef uint8_t out[BLAKE3_OUT_LEN]
    cdef char *buf = <char *>malloc(BUFSIZE)
    cdef off_t off = 0
    cdef ssize_t n
    cdef int err = 0
    if buf == NULL:
        raise MemoryError()
    with nogil:
        blake3_hasher_init(&hasher)
        while True:
            n = pread(fd, buf, BUFSIZE, off)
            if n < 0:
                if errno == EINTR:
                    continue
                err = errno
                break
            if n == 0:
                break
            blake3_hasher_update(&hasher, buf, <size_t>n)
            off += n
        blake3_hasher_finalize(&hasher, out, BLAKE3_OUT_LEN)
    free(buf)
    if err:
        raise OSError(err, __import__("os").strerror(err))
    return PyBytes_FromStringAndSize(<char *>out, BLAKE3_OUT_LEN).hex(), off


def hash_bytes(const unsigned char[::1] data):
    """blake3 hex digest of a bytes-like object (the GIL is released for large inputs)."""
    cdef blake3_hasher hasher
    cdef uint8_t out[BLAKE3_OUT_LEN]
    cdef size_t n = data.shape[0]
    blake3_hasher_init(&hasher)
    if n:
        if n >= 65536:
            with nogil:
                blake3_hasher_update(&hasher, &data[0], n)
        else:
            blake3_hasher_update(&hasher, &data[0], n)
    blake3_hasher_finalize(&hasher, out, BLAKE3_OUT_LEN)
    return PyBytes_FromStringAndSize(<char *>out, BLAKE3_OUT_LEN).hex()


from syscalls cimport openat, O_RDONLY, O_DIRECTORY, O_NOFOLLOW, O_CLOEXEC, AT_SYMLINK_NOFOLLOW, close
from syscalls cimport stat, fstatat, mkdirat, S_ISREG

cdef extern from "lamina_sys.h" nogil:
    int lamina_rename_noreplace(int olddirfd, const char *oldpath, int newdirfd, const char *newpath)
    long long lamina_mtime_ns(const stat *st)


def rename_noreplace(int src_dir_fd, src, int dst_dir_fd, dst):
    """renameat2(RENAME_NOREPLACE): True if renamed, False if ``dst`` exists; OSError otherwise
    (EINVAL or ENOSYS where the filesystem or kernel cannot do it without replacing)."""
    cdef bytes s = __import__("os").fsencode(src), d = __import__("os").fsencode(dst)
    cdef const char *sp = s
    cdef const char *dp = d
    cdef int rc, err
    with nogil:
        rc = lamina_rename_noreplace(src_dir_fd, sp, dst_dir_fd, dp)
    if rc == 0:
        return True
    err = errno
    if err == EEXIST:
        return False
    raise OSError(err, __import__("os").strerror(err), src)


cdef extern from "<stdio.h>" nogil:
    int snprintf(char *s, size_t n, const char *fmt, ...)


cdef inline int _hex_nibble(char c) noexcept nogil:
    if 48 <= c <= 57:       # '0'..'9'
        return c - 48
    if 97 <= c <= 102:      # 'a'..'f'
        return c - 87
    return -1


cdef class FanOut:
    """fds of objects/blake3/<2 hex>/, opened (and made) on first use, for new_objects() and
    claim_objects().  At most ``cap`` stay open (all closed when one more is needed): 256 where
    the fd limit is 16k or more, else a 64th of it, so that passes running beside extractions
    under a limit of 1,024 cannot run the process out of fds.  An fd from fd_of()/get() is
    good until the next call."""
    cdef int root
    cdef int fds[256]
    cdef int cap, held

    def __cinit__(self, int blake3_dir_fd, int cap=-1):
        cdef int i
        cdef rlimit lim
        self.root = blake3_dir_fd
        for i in range(256):
            self.fds[i] = -1
        self.held = 0
        if cap < 0:
            cap = 256
            if getrlimit(RLIMIT_NOFILE, &lim) == 0 and lim.rlim_cur < 16384:
                cap = <int>(lim.rlim_cur // 64)
        self.cap = min(256, max(1, cap))

    def __dealloc__(self):
        self.close()

    def close(self):
        self._close_all()

    cdef void _close_all(self) noexcept nogil:
        cdef int i
        for i in range(256):
            if self.fds[i] >= 0:
                close(self.fds[i])
                self.fds[i] = -1
        self.held = 0

    def get(self, name):
        """The fd of the fan-out directory of object ``name``."""
        cdef bytes b = name[:2].encode()
        cdef int fd = self.fd_of(b) if len(b) == 2 else -2
        if fd == -2:
            raise ValueError(f"not an object name: {name!r}")
        if fd < 0:
            raise OSError(errno, __import__("os").strerror(errno), name[:2])
        return fd

    cdef int fd_of(self, const char *hex2) noexcept nogil:
        """The fd for the first two hex digits of ``hex2``; -1 with errno set, -2 if they are not hex."""
        cdef int hi = _hex_nibble(hex2[0]), lo = _hex_nibble(hex2[1]) if hi >= 0 else -1
        cdef int i = hi * 16 + lo
        cdef char name[3]
        if hi < 0 or lo < 0:
            return -2
        if self.fds[i] < 0:
            name[0], name[1], name[2] = hex2[0], hex2[1], 0
            if mkdirat(self.root, name, 0o700) < 0 and errno != EEXIST:
                return -1
            if self.held >= self.cap:
                self._close_all()
            self.fds[i] = openat(self.root, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
            if self.fds[i] >= 0:
                self.held += 1
        return self.fds[i]


cdef struct _Meta:
    unsigned int mode, uid, gid
    long long mtime_ns
    char key[17]


cdef void _metadata_key(stat *st, _Meta *last) noexcept nogil:
    """metadata_key() of a file without xattrs into ``last.key``, computed again only when the
    inode's mode, owner or mtime differ from the previous file's (most files of a layer agree)."""
    cdef long long mtime = lamina_mtime_ns(st)
    if (last.key[0] != 0 and last.mode == <unsigned int>st.st_mode and last.uid == <unsigned int>st.st_uid
            and last.gid == <unsigned int>st.st_gid and last.mtime_ns == mtime):
        return
    lamina_metadata_key(<unsigned int>st.st_mode, <unsigned int>st.st_uid, <unsigned int>st.st_gid, mtime, last.key)
    last.mode, last.uid, last.gid, last.mtime_ns = st.st_mode, st.st_uid, st.st_gid, mtime


DEF OBJ_LEN = 82   # <64 hex blake3>.<16 hex metadata key> and a NUL


def new_objects(int dir_fd, list names, list inos, int hashed_fd, list holds, FanOut fanout, bint claim=True):
    """The dedup pass's common case, for files of one directory the extractor hashed (lamina.store.objects).

    For each ``names[i]``: if it is still the regular file ``inos[i]`` with no other name than
    its ``hashed/holds[i]`` (and the hold says it has no xattrs), its object name is
    ``<blake3>.<metadata key>``; with ``claim`` the hold is renamed to it unless that object
    exists, without it the object is only looked up (the caller claims it later, claim_objects).
    Returns, per file, (object name, size) once it is (or may become) the new object, else None:
    the caller handles that file the general way (an existing object, a hardlink, xattrs, ...).
    The metadata key is metadata_key()'s for a file without xattrs.

    The syscalls run without the GIL (the other layers' extractors go on meanwhile).
    """
    cdef Py_ssize_t count = len(names), i
    cdef list bnames = [(<str>n).encode("utf-8", "surrogateescape") for n in names]
    cdef list bholds = [(<str>h).encode() for h in holds]
    cdef const char **cname = <const char **>malloc(count * sizeof(char *) + 1)
    cdef const char **chold = <const char **>malloc(count * sizeof(char *) + 1)
    cdef unsigned long *cino = <unsigned long *>malloc(count * sizeof(unsigned long) + 1)
    cdef long long *size = <long long *>malloc(count * sizeof(long long) + 1)
    cdef char *objs = <char *>malloc(count * OBJ_LEN + 1)
    cdef stat st
    cdef stat ost
    cdef _Meta last
    cdef char *obj
    cdef int rc, ffd
    try:
        if cname == NULL or chold == NULL or cino == NULL or size == NULL or objs == NULL:
            raise MemoryError()
        for i in range(count):
            cname[i] = <bytes>bnames[i]
            chold[i] = <bytes>bholds[i]
            cino[i] = inos[i]
            if len(<bytes>bholds[i]) < 64:
                raise ValueError(f"not a hashed/ name: {holds[i]!r}")
        last.key[0] = 0
        with nogil:
            for i in range(count):
                size[i] = -1
                if (fstatat(dir_fd, cname[i], &st, AT_SYMLINK_NOFOLLOW) < 0 or not S_ISREG(st.st_mode)
                        or st.st_ino != cino[i] or st.st_nlink != 2):
                    continue
                _metadata_key(&st, &last)
                obj = objs + i * OBJ_LEN
                memcpy(obj, chold[i], 64)
                obj[64] = 46  # '.'
                memcpy(obj + 65, last.key, 16)
                ffd = fanout.fd_of(obj)
                if ffd < 0:
                    continue  # the general way reports it
                obj[OBJ_LEN - 1] = 0
                if claim:
                    rc = lamina_rename_noreplace(hashed_fd, chold[i], ffd, obj)
                else:
                    rc = 0 if fstatat(ffd, obj, &ost, AT_SYMLINK_NOFOLLOW) < 0 and errno == ENOENT else -1
                if rc == 0:
                    size[i] = st.st_size
        results = []
        for i in range(count):
            if size[i] < 0:
                results.append(None)
            else:
                results.append(((objs + i * OBJ_LEN)[:OBJ_LEN - 1].decode(), size[i]))
        return results
    finally:
        free(cname)
        free(chold)
        free(cino)
        free(size)
        free(objs)


def claim_objects(int hashed_fd, list holds, list objs, FanOut fanout):
    """Rename each ``hashed/holds[i]`` to object ``objs[i]`` unless that object exists (RENAME_NOREPLACE):
    per name 0 if renamed, else the errno (EEXIST: the object exists; EINVAL: not supported here).
    The renames run without the GIL."""
    cdef Py_ssize_t count = len(holds), i
    cdef list bholds = [(<str>h).encode() for h in holds]
    cdef list bobjs = [(<str>o).encode() for o in objs]
    cdef const char **chold = <const char **>malloc(count * sizeof(char *) + 1)
    cdef const char **cobj = <const char **>malloc(count * sizeof(char *) + 1)
    cdef int *codes = <int *>malloc(count * sizeof(int) + 1)
    cdef int dir_fd
    try:
        if chold == NULL or cobj == NULL or codes == NULL:
            raise MemoryError()
        if len(bobjs) != count:
            raise ValueError("claim_objects: as many holds as objects")
        for i in range(count):
            chold[i] = <bytes>bholds[i]
            cobj[i] = <bytes>bobjs[i]
            if len(<bytes>bobjs[i]) < 2:
                raise ValueError(f"not an object name: {objs[i]!r}")
        with nogil:
            for i in range(count):
                dir_fd = fanout.fd_of(cobj[i])
                if dir_fd == -2:
                    codes[i] = EINVAL
                elif dir_fd < 0 or lamina_rename_noreplace(hashed_fd, chold[i], dir_fd, cobj[i]) < 0:
                    codes[i] = errno
                else:
                    codes[i] = 0
        return [codes[i] for i in range(count)]
    finally:
        free(chold)
        free(cobj)
        free(codes)


cdef extern from "<unistd.h>" nogil:
    int dup(int fd)
    off_t lseek(int fd, off_t offset, int whence)
    enum: SEEK_SET

cdef inline void errno_reset() noexcept nogil:
    global errno
    errno = 0

from syscalls cimport S_ISDIR, DIR, dirent, fdopendir, readdir, closedir, DT_DIR, DT_REG, DT_UNKNOWN


DEF LISTING_HELD = 1 << 20   # bytes of a directory's listing kept in memory; past them, a temp file
DEF BATCH = 4096             # entries a DirScan.batch() call takes


cdef class DirScan:
    """One directory of the dedup pass (lamina.store.objects._Pass.run): its listing, taken whole
    at once (the pass then renames into the directory, which a readdir stream must not see),
    and the common case done batch by batch.

    The listing is records (kind, inode, name) in a buffer that goes to an unlinked temp file in
    ``spill_dir`` past LISTING_HELD bytes, and ``batch()`` hands out BATCH of them at a time:
    a directory of 300k files took 341 MiB as lists of names, inodes and holds (~1.1 KB a file),
    and one of 400k subdirectories 27 MiB of names.

    ``batch()`` returns None once the listing is done, else (subdirectory names, [(name, inode,
    hold or None)] of the regular files left to the general way, [(name, inode, hold, object,
    size)] of those new_objects() took).  ``held`` maps an inode number to the extractor's
    hashed/ name, and ``spilled(inode)`` (if not None) the inodes past it (SpilledNames); a
    hold is (that name, its blake3); with ``fast``, files with a hold that says "no xattrs" go
    through new_objects() (``claim`` as there); a hold that says "already an object" (``-o``)
    is left to the caller like the general way.  Names are decoded as os.scandir does (UTF-8,
    surrogateescape); nothing is followed.
    """
    cdef int dir_fd
    cdef bytearray buf
    cdef Py_ssize_t pos, held, per_batch
    cdef object spill

    def __init__(self, int dir_fd, spill_dir=None, Py_ssize_t held=LISTING_HELD):
        """``held``: bytes of listing in memory (tests make it tiny: every batch then reads the
        temp file, and takes one entry)."""
        self.dir_fd = dir_fd
        self.buf = bytearray()
        self.pos = 0
        self.spill = None
        self.held = max(1, held)
        self.per_batch = min(BATCH, max(1, held >> 8))
        self._list(spill_dir)

    def close(self):
        if self.spill is not None:
            self.spill.close()
            self.spill = None
        self.buf = bytearray()

    cdef _list(self, spill_dir):
        cdef int fd = dup(self.dir_fd)
        cdef DIR *d
        cdef dirent *e
        cdef stat st
        cdef unsigned char kind
        if fd < 0:
            raise OSError(errno, __import__("os").strerror(errno))
        # from the start whatever an earlier stream of this fd read (dup shares the offset)
        if lseek(fd, 0, SEEK_SET) < 0:
            close(fd)
            raise OSError(errno, __import__("os").strerror(errno))
        d = fdopendir(fd)
        if d == NULL:
            close(fd)
            raise OSError(errno, __import__("os").strerror(errno))
        buf = self.buf
        try:
            while True:
                errno_reset()
                e = readdir(d)
                if e == NULL:
                    if errno:
                        raise OSError(errno, __import__("os").strerror(errno))
                    break
                if e.d_name[0] == 46 and (e.d_name[1] == 0 or (e.d_name[1] == 46 and e.d_name[2] == 0)):
                    continue  # "." and ".."
                kind = e.d_type
                if kind == DT_UNKNOWN:  # a filesystem that does not say: ask the inode
                    if fstatat(self.dir_fd, e.d_name, &st, AT_SYMLINK_NOFOLLOW) < 0:
                        continue
                    kind = DT_DIR if S_ISDIR(st.st_mode) else DT_REG if S_ISREG(st.st_mode) else 0
                if kind != DT_DIR and kind != DT_REG:
                    continue
                buf.append(kind)
                buf += (<unsigned long long>e.d_ino).to_bytes(8, "little")
                buf += <bytes>e.d_name
                buf.append(0)
                if len(buf) >= self.held:
                    if self.spill is None:
                        self.spill = __import__("tempfile").TemporaryFile(dir=spill_dir)  # O_TMPFILE where it can
                    self.spill.write(buf)
                    del buf[:]
        finally:
            closedir(d)
        if self.spill is not None:
            self.spill.write(buf)
            self.spill.flush()
            self.spill.seek(0)
            del buf[:]

    cdef bint _more(self):
        """Records from pos on, refilled from the temp file when the buffer runs short."""
        cdef bytes chunk
        while self.buf.find(0, self.pos + 9) < 0:  # no whole record left
            if self.spill is None:
                return False
            chunk = self.spill.read(self.held)
            if not chunk:
                return False
            del self.buf[:self.pos]
            self.pos = 0
            self.buf += chunk
        return True

    def batch(self, dict held, object spilled, int hashed_fd, FanOut fanout, bint claim, bint fast):
        cdef list subdirs = [], slow = [], names = [], inos = [], holds = [], holdnames = []
        cdef Py_ssize_t end, taken = 0
        cdef unsigned char kind
        buf = self.buf
        while taken < self.per_batch and self._more():
            buf = self.buf
            end = buf.index(0, self.pos + 9)
            kind = buf[self.pos]
            ino = int.from_bytes(buf[self.pos + 1:self.pos + 9], "little")
            name = bytes(buf[self.pos + 9:end]).decode("utf-8", "surrogateescape")
            self.pos = end + 1
            taken += 1
            if kind == DT_DIR:
                subdirs.append(name)
                continue
            hold = held.get(ino)
            if hold is None and spilled is not None:
                hold = spilled(ino)
            if hold is not None:
                hold = (hold, (<str>hold)[:64])
            if hold is not None and fast and (<str>hold[0])[65] != "x" and (<str>hold[0])[65] != "o":
                names.append(name)
                inos.append(ino)
                holds.append(hold)
                holdnames.append(hold[0])
            else:
                slow.append((name, ino, hold))
        if not taken:
            self.close()
            return None
        done = []
        if names:
            for name, ino, hold, result in zip(names, inos, holds,
                                               new_objects(self.dir_fd, names, inos, hashed_fd, holdnames, fanout,
                                                           claim)):
                if result is None:
                    slow.append((name, ino, hold))
                else:
                    done.append((name, ino, hold, result[0], result[1]))
        return subdirs, slow, done


# --- disk usage of a tree ----------------------------------------------------------------------

from libc.stdlib cimport realloc
from syscalls cimport fstat, dirfd


cdef extern from "inode_count.h" nogil:
    ctypedef struct lam_inode_count:
        long long total
        long long count
    void lam_inode_init(lam_inode_count *c, int spill_dir, size_t limit)
    int lam_inode_add(lam_inode_count *c, unsigned long long dev, unsigned long long ino, long long blocks)
    int lam_inode_finish(lam_inode_count *c)
    void lam_inode_free(lam_inode_count *c)


def tree_usage(int root_fd, int spill_dir_fd=-1, size_t held=65536):
    """(bytes on disk, inodes) of the tree under the directory ``root_fd``, the root included:
    st_blocks * 512 of every entry, an inode with several names counted once, nothing followed
    (what lamina.store.fsutil.disk_usage reports, as GNU ``du -sB1`` / ``du -s --inodes`` do).
    The inodes with several names are counted in bounded memory (inode_count.h): past ``held``
    of them, sorted runs go to a temp file in ``spill_dir_fd`` (else $TMPDIR or /tmp).

    A snapshot's size goes into its meta.json at every commit: this walk runs without the GIL
    (a depth-first one, an open directory per level), beside the other layers' extraction.
    Entries that vanish during the walk are skipped."""
    cdef DIR **stack = NULL
    cdef DIR **grown
    cdef lam_inode_count multi
    cdef Py_ssize_t depth = 0, cap = 0
    cdef long long total = 0, count = 0
    cdef int err = 0, fd, nfd
    cdef stat st
    cdef dirent *e
    cdef DIR *d
    lam_inode_init(&multi, spill_dir_fd, held)
    with nogil:
        if fstat(root_fd, &st) < 0:
            err = errno
        else:
            total += st.st_blocks * 512
            count += 1
            fd = openat(root_fd, b".", O_RDONLY | O_DIRECTORY | O_CLOEXEC)  # not dup: its own offset, from the start
            d = fdopendir(fd) if fd >= 0 else NULL
            if d == NULL:
                err = errno
                if fd >= 0:
                    close(fd)
            else:
                cap = 64
                stack = <DIR **>malloc(cap * sizeof(DIR *))
                if stack == NULL:
                    closedir(d)
                    err = 12  # ENOMEM
                else:
                    stack[0] = d
                    depth = 1
        while depth > 0 and err == 0:
            d = stack[depth - 1]
            errno_reset()
            e = readdir(d)
            if e == NULL:
                if errno:
                    err = errno
                    break
                closedir(d)
                depth -= 1
                continue
            if e.d_name[0] == 46 and (e.d_name[1] == 0 or (e.d_name[1] == 46 and e.d_name[2] == 0)):
                continue
            if fstatat(dirfd(d), e.d_name, &st, AT_SYMLINK_NOFOLLOW) < 0:
                if errno == ENOENT:
                    continue
                err = errno
                break
            if not S_ISDIR(st.st_mode) and st.st_nlink > 1:
                err = lam_inode_add(&multi, st.st_dev, st.st_ino, st.st_blocks)
                if err:
                    break
            else:
                total += st.st_blocks * 512
                count += 1
            if S_ISDIR(st.st_mode):
                nfd = openat(dirfd(d), e.d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
                if nfd < 0:
                    if errno == ENOENT:
                        continue
                    err = errno
                    break
                d = fdopendir(nfd)
                if d == NULL:
                    err = errno
                    close(nfd)
                    break
                if depth == cap:
                    grown = <DIR **>realloc(stack, cap * 2 * sizeof(DIR *))
                    if grown == NULL:
                        closedir(d)
                        err = 12
                        break
                    stack = grown
                    cap *= 2
                stack[depth] = d
                depth += 1
        while depth > 0:
            depth -= 1
            closedir(stack[depth])
        free(stack)
        if err == 0:
            err = lam_inode_finish(&multi)
            total += multi.total
            count += multi.count
        lam_inode_free(&multi)
    if err:
        raise OSError(err, __import__("os").strerror(err))
    return total, count
