# cython: freethreading_compatible = True
"""BLAKE3 of whole files, for the store's file objects (lamina.store.objects).

The vendored BLAKE3 C implementation (native/vendor/blake3) picks its SIMD back
end at run time.  hash_fd() reads and hashes with the GIL released, so several
threads hash several files on several cores.
"""
from libc.stdint cimport uint8_t
from libc.stdlib cimport malloc, free
from libc.errno cimport errno, EINTR, EEXIST, ENOENT, EINVAL, ESTALE, ENOMEM
from libc.string cimport memcpy
from posix.types cimport off_t
from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE, PyByteArray_Resize
from cpython.long cimport PyLong_FromUnsignedLongLong
from cpython.unicode cimport PyUnicode_DecodeUTF8, PyUnicode_DecodeASCII
from libc.string cimport strlen
from json.encoder import encode_basestring_ascii as _json_string  # a str as json.dumps writes it

cdef extern from "Python.h":
    const char *PyUnicode_AsUTF8(object s) except NULL

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

from syscalls cimport lamina_renameat2, lamina_rename_noreplace, LAMINA_RENAME_NOREPLACE, LAMINA_RENAME_EXCHANGE

RENAME_NOREPLACE = LAMINA_RENAME_NOREPLACE
RENAME_EXCHANGE = LAMINA_RENAME_EXCHANGE


def renameat2(int src_dir_fd, src, int dst_dir_fd, dst, unsigned int flags):
    """renameat2(2) with ``flags``; OSError naming ``src`` on failure (ENOSYS where the build's
    headers did not know the syscall, ENOSYS or EINVAL where the kernel or filesystem does not)."""
    cdef bytes s = __import__("os").fsencode(src), d = __import__("os").fsencode(dst)
    cdef const char *sp = s
    cdef const char *dp = d
    cdef int rc, err
    with nogil:
        rc = lamina_renameat2(src_dir_fd, sp, dst_dir_fd, dp, flags)
    if rc == 0:
        return None
    err = errno
    raise OSError(err, __import__("os").strerror(err), src)


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
            raise OSError(errno, __import__("os").strerror(errno), "objects/blake3/" + name[:2])
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
    long long sec
    long nsec
    char key[17]


cdef void _metadata_key(stat *st, _Meta *last) noexcept nogil:
    """metadata_key() of a file without xattrs into ``last.key``, computed again only when the
    inode's mode, owner or mtime differ from the previous file's (most files of a layer agree).
    (The time as seconds and nanoseconds: in nanoseconds alone, two times 584 years apart wrap
    to one number past 64 bits, and two such files shared one key.)"""
    cdef long long sec = st.st_mtim.tv_sec
    cdef long nsec = st.st_mtim.tv_nsec
    if (last.key[0] != 0 and last.mode == <unsigned int>st.st_mode and last.uid == <unsigned int>st.st_uid
            and last.gid == <unsigned int>st.st_gid and last.sec == sec and last.nsec == nsec):
        return
    lamina_metadata_key(<unsigned int>st.st_mode, <unsigned int>st.st_uid, <unsigned int>st.st_gid, sec, nsec,
                        last.key)
    last.mode, last.uid, last.gid, last.sec, last.nsec = st.st_mode, st.st_uid, st.st_gid, sec, nsec


DEF OBJ_LEN = 82   # <64 hex blake3>.<16 hex metadata key> and a NUL


cdef long long _new_object(int dir_fd, const char *name, unsigned long long ino, int hashed_fd, const char *hold,
                           FanOut fanout, bint claim, _Meta *last, char *obj) noexcept nogil:
    """new_objects() for one file: its size once ``obj`` (OBJ_LEN bytes, NUL-ended) is (or may become)
    its new object, else -1."""
    cdef stat st
    cdef stat ost
    cdef int rc, ffd
    if (fstatat(dir_fd, name, &st, AT_SYMLINK_NOFOLLOW) < 0 or not S_ISREG(st.st_mode)
            or st.st_ino != ino or st.st_nlink != 2):
        return -1
    _metadata_key(&st, last)
    memcpy(obj, hold, 64)
    obj[64] = 46  # '.'
    memcpy(obj + 65, last.key, 16)
    obj[OBJ_LEN - 1] = 0
    ffd = fanout.fd_of(obj)
    if ffd < 0:
        return -1  # the general way reports it
    if claim:
        rc = lamina_rename_noreplace(hashed_fd, hold, ffd, obj)
    else:
        rc = 0 if fstatat(ffd, obj, &ost, AT_SYMLINK_NOFOLLOW) < 0 and errno == ENOENT else -1
    return st.st_size if rc == 0 else -1


def new_objects(int dir_fd, list names, list inos, int hashed_fd, list holds, FanOut fanout, bint claim=True):
    """The dedup pass's common case, for files of one directory the extractor hashed (lamina.store.objects).

    For each ``names[i]``: if it is still the regular file ``inos[i]`` with no other name than
    its ``hashed/holds[i]`` (and the hold says it has no xattrs), its object name is
    ``<blake3>.<metadata key>``; with ``claim`` the hold is renamed to it unless that object
    exists, without it the object is only looked up (the caller claims it later, claim_objects).
    Returns, per file, (object name, size) once it is (or may become) the new object, else None:
    the caller handles that file the general way (an existing object, a hardlink, xattrs, ...).
    The metadata key is metadata_key()'s for a file without xattrs.  (DirScan.take does the same
    per file, for the pass.)

    The syscalls run without the GIL (the other layers' extractors go on meanwhile).
    """
    cdef Py_ssize_t count = len(names), i
    cdef list bnames = [(<str>n).encode("utf-8", "surrogateescape") for n in names]
    cdef list bholds = [(<str>h).encode() for h in holds]
    cdef const char **cname = <const char **>malloc(count * sizeof(char *) + 1)
    cdef const char **chold = <const char **>malloc(count * sizeof(char *) + 1)
    cdef unsigned long long *cino = <unsigned long long *>malloc(count * sizeof(unsigned long long) + 1)
    cdef long long *size = <long long *>malloc(count * sizeof(long long) + 1)
    cdef char *objs = <char *>malloc(count * OBJ_LEN + 1)
    cdef _Meta last
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
                size[i] = _new_object(dir_fd, cname[i], cino[i], hashed_fd, chold[i], fanout, claim, &last,
                                      objs + i * OBJ_LEN)
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


cdef inline void _grow_append(bytearray buf, const void *data, Py_ssize_t n) except *:
    """``buf += data[:n]`` without a bytes object in between."""
    cdef Py_ssize_t at = PyByteArray_GET_SIZE(buf)
    if PyByteArray_Resize(buf, at + n) < 0:
        raise MemoryError()
    memcpy(PyByteArray_AS_STRING(buf) + at, data, n)


cdef inline bint _plain_json(const char *s, Py_ssize_t n) noexcept nogil:
    """Whether json.dumps (ensure_ascii) writes the UTF-8 bytes ``s`` unchanged between its quotes."""
    cdef Py_ssize_t i
    for i in range(n):
        if s[i] < 32 or s[i] > 126 or s[i] == 34 or s[i] == 92:  # signed char: >= 0x80 is < 0; '"', '\'
            return False
    return True


cdef int _unhex(const char *hexs, Py_ssize_t n, char *out) noexcept nogil:
    """``n`` bytes from 2n lowercase hex digits; -1 if one is not."""
    cdef Py_ssize_t i
    cdef int hi, lo
    for i in range(n):
        hi = _hex_nibble(hexs[2 * i])
        lo = _hex_nibble(hexs[2 * i + 1])
        if hi < 0 or lo < 0:
            return -1
        out[i] = <char>(hi * 16 + lo)
    return 0


cdef DIR *_listing(int dir_fd) except NULL:
    """A readdir stream of the directory ``dir_fd`` (left open: closedir() closes a dup of it),
    from its start whatever an earlier stream of that fd read (a dup shares the offset)."""
    cdef int fd = dup(dir_fd)
    cdef DIR *d
    if fd < 0:
        raise OSError(errno, __import__("os").strerror(errno))
    if lseek(fd, 0, SEEK_SET) < 0:
        close(fd)
        raise OSError(errno, __import__("os").strerror(errno))
    d = fdopendir(fd)
    if d == NULL:
        close(fd)
        raise OSError(errno, __import__("os").strerror(errno))
    return d


cdef dirent *_next_entry(DIR *d) except? NULL:
    """readdir(): the next entry, or NULL at the end; OSError if the listing fails."""
    cdef dirent *e
    errno_reset()
    e = readdir(d)
    if e == NULL and errno:
        raise OSError(errno, __import__("os").strerror(errno))
    return e


def list_held(int hashed_fd, held):
    """Put each name of the extractor in ``hashed/`` (``<64 hex>-…``, a regular file) into ``held``
    (lamina.store.objects.SpilledNames: inode number -> name), as ``held[ino] = name`` does, spills
    included.  Names are decoded as os.scandir does (UTF-8, surrogateescape); nothing is followed."""
    cdef DIR *d = _listing(hashed_fd)
    cdef dirent *e
    cdef stat st
    cdef Py_ssize_t n, budget = held.budget
    cdef dict front = held.front
    try:
        while True:
            e = _next_entry(d)
            if e == NULL:
                break
            n = strlen(e.d_name)
            if n <= 65 or e.d_name[64] != 45:  # '-'
                continue
            if e.d_type != DT_REG:
                if e.d_type != DT_UNKNOWN or fstatat(hashed_fd, e.d_name, &st, AT_SYMLINK_NOFOLLOW) < 0 \
                        or not S_ISREG(st.st_mode):
                    continue
            front[PyLong_FromUnsignedLongLong(e.d_ino)] = PyUnicode_DecodeUTF8(e.d_name, n, "surrogateescape")
            if len(front) >= budget:
                held._spill()
                front = held.front
    finally:
        closedir(d)


cdef class DirScan:
    """One directory of the dedup pass (lamina.store.objects._Pass.run): its listing, taken whole
    at once (the pass then renames into the directory, which a readdir stream must not see),
    and the common case done batch by batch (``take``).

    The listing is records (kind, inode, name) in a buffer that goes to an unlinked temp file in
    ``spill_dir`` past LISTING_HELD bytes, and ``take()`` handles BATCH of them at a time:
    a directory of 300k files took 341 MiB as lists of names, inodes and holds (~1.1 KB a file),
    and one of 400k subdirectories 27 MiB of names.
    """
    cdef public int dir_fd    # the pass opens the directory again when it closed it (depth: see its run)
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
        cdef DIR *d = _listing(self.dir_fd)
        cdef dirent *e
        cdef stat st
        cdef char head[9]
        cdef unsigned long long ino
        buf = self.buf
        try:
            while True:
                e = _next_entry(d)
                if e == NULL:
                    break
                if e.d_name[0] == 46 and (e.d_name[1] == 0 or (e.d_name[1] == 46 and e.d_name[2] == 0)):
                    continue  # "." and ".."
                head[0] = e.d_type
                if head[0] == DT_UNKNOWN:  # a filesystem that does not say: ask the inode
                    if fstatat(self.dir_fd, e.d_name, &st, AT_SYMLINK_NOFOLLOW) < 0:
                        continue
                    head[0] = DT_DIR if S_ISDIR(st.st_mode) else DT_REG if S_ISREG(st.st_mode) else 0
                if head[0] != DT_DIR and head[0] != DT_REG:
                    continue
                ino = e.d_ino
                memcpy(head + 1, &ino, 8)
                _grow_append(buf, head, 9)
                _grow_append(buf, e.d_name, strlen(e.d_name) + 1)
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

    def take(self, held, planned, rows, str prefix, int hashed_fd, FanOut fanout, bint claim, bint fast, dup):
        """A batch of the directory's entries: the common case done, the rest handed back.

        The common case is a file with a ``held`` name in hashed/ (SpilledNames: inode ->
        name) that says "no xattrs", alone with it on its inode, whose object does not exist:
        its object name is made as new_objects() makes it (``claim``: the hold is renamed to
        it; else the name is added to ``planned``, object -> hold, for the claim after the
        sync), its hold leaves ``held``, and its row and object key go to ``rows``
        (FileRows, as its add() writes them) — all without a Python object per file
        but its object name, and the syscalls without the GIL.  A file whose object this pass
        has planned already (a duplicate within the layer) is handed to ``dup(dir_fd, name,
        inode, path, hold)`` (the general way, which swaps it for that inode) at its place in
        the file list.  Only with ``fast`` (no reflinks: those look for siblings per file).

        Returns None once the listing is done, else (subdirectory names, [(name, inode, hold
        or None)] of the regular files left to the general way, files done, their bytes).  A
        hold is (its name, its blake3); one that says "already an object" (``-o``) is left to
        the caller too.  Names are decoded as os.scandir does (UTF-8, surrogateescape);
        nothing is followed.
        """
        cdef list subdirs = [], slow = [], holds = []
        cdef bytearray names = bytearray(), out = bytearray()
        cdef Py_ssize_t taken = 0, nfast = 0, end, i, n, budget = planned.budget, run = rows.RUN
        cdef Py_ssize_t *name_at = NULL
        cdef unsigned long long *inos = NULL
        cdef const char **chold = NULL
        cdef long long *size = NULL
        cdef char *objs = NULL
        cdef char *p
        cdef char *obj
        cdef const char *cname
        cdef const char *chd
        cdef unsigned long long ino
        cdef unsigned char kind
        cdef long long files = 0, nbytes = 0
        cdef char key[40]
        cdef char digits[24]
        cdef _Meta last
        cdef dict held_front = held.front
        spilled = held.spilled_get()
        try:
            if fast:
                name_at = <Py_ssize_t *>malloc(self.per_batch * sizeof(Py_ssize_t))
                inos = <unsigned long long *>malloc(self.per_batch * sizeof(unsigned long long))
                chold = <const char **>malloc(self.per_batch * sizeof(char *))
                size = <long long *>malloc(self.per_batch * sizeof(long long))
                objs = <char *>malloc(self.per_batch * OBJ_LEN)
                if name_at == NULL or inos == NULL or chold == NULL or size == NULL or objs == NULL:
                    raise MemoryError()
            while taken < self.per_batch and self._more():
                p = PyByteArray_AS_STRING(self.buf)
                end = self.buf.index(0, self.pos + 9)
                kind = <unsigned char>p[self.pos]
                memcpy(&ino, p + self.pos + 1, 8)
                cname = p + self.pos + 9
                n = end - self.pos - 9
                self.pos = end + 1
                taken += 1
                if kind == DT_DIR:
                    subdirs.append(PyUnicode_DecodeUTF8(cname, n, "surrogateescape"))
                    continue
                pyino = PyLong_FromUnsignedLongLong(ino)
                hold = held_front.get(pyino)
                if hold is None and spilled is not None:
                    hold = spilled(pyino)
                if hold is not None and fast and (<str>hold)[65] != "x" and (<str>hold)[65] != "o":
                    name_at[nfast] = len(names)
                    _grow_append(names, cname, n + 1)
                    inos[nfast] = ino
                    holds.append(hold)
                    chold[nfast] = PyUnicode_AsUTF8(hold)  # kept alive by holds
                    nfast += 1
                else:
                    slow.append((PyUnicode_DecodeUTF8(cname, n, "surrogateescape"), pyino,
                                 None if hold is None else (hold, (<str>hold)[:64])))
            if not taken:
                self.close()
                return None
            if nfast:
                last.key[0] = 0
                p = PyByteArray_AS_STRING(names)
                with nogil:
                    for i in range(nfast):
                        size[i] = _new_object(self.dir_fd, p + name_at[i], inos[i], hashed_fd, chold[i], fanout,
                                              claim, &last, objs + i * OBJ_LEN)
            failed = []
            planned_front = planned.front
            keys = rows.keys
            prefix_json = (<str>_json_string(prefix)).encode()
            prefix_json = prefix_json[:len(prefix_json) - 1]   # '"prefix', the quote left open
            for i in range(nfast):
                p = PyByteArray_AS_STRING(names) + name_at[i]
                hold = holds[i]
                if size[i] < 0:
                    failed.append((PyUnicode_DecodeUTF8(p, strlen(p), "surrogateescape"),
                                   PyLong_FromUnsignedLongLong(inos[i]), (hold, (<str>hold)[:64])))
                    continue
                obj = objs + i * OBJ_LEN
                name_obj = PyUnicode_DecodeASCII(obj, OBJ_LEN - 1, NULL)
                if name_obj in planned_front or (planned.runs and planned.get(name_obj) is not None):
                    if out:
                        rows.rows.write(out)
                        del out[:]
                    name = PyUnicode_DecodeUTF8(p, strlen(p), "surrogateescape")
                    dup(self.dir_fd, name, PyLong_FromUnsignedLongLong(inos[i]), prefix + name,
                        (hold, (<str>hold)[:64]))
                    planned_front, held_front, keys = planned.front, held.front, rows.keys
                    continue
                pyino = PyLong_FromUnsignedLongLong(inos[i])
                if held_front.pop(pyino, None) is None and held.runs:
                    held.remove(pyino)
                if not claim:
                    planned_front[name_obj] = hold
                    if len(planned_front) >= budget:
                        planned._spill()
                        planned_front = planned.front
                files += 1
                nbytes += size[i]
                # FileRows.add's row: [path, blake3, size, object]
                n = strlen(p)
                _grow_append(out, b"[", 1)
                if _plain_json(p, n):
                    _grow_append(out, <char *>prefix_json, len(prefix_json))
                    _grow_append(out, p, n)
                    _grow_append(out, b'"', 1)
                else:  # escapes: json's own, on the whole path
                    path_json = (<str>_json_string(prefix + PyUnicode_DecodeUTF8(p, n, "surrogateescape"))).encode()
                    _grow_append(out, <char *>path_json, len(path_json))
                _grow_append(out, b', "', 3)
                _grow_append(out, obj, 64)
                _grow_append(out, b'", ', 3)
                _grow_append(out, digits, snprintf(digits, sizeof(digits), "%lld", size[i]))
                _grow_append(out, b', "', 3)
                _grow_append(out, obj, OBJ_LEN - 1)
                _grow_append(out, b'"]\n', 3)
                if _unhex(obj, 32, key) < 0 or _unhex(obj + 65, 8, key + 32) < 0:
                    raise ValueError(f"not an object name: {name_obj!r}")
                keys.add(PyBytes_FromStringAndSize(key, 40))
                if len(keys) >= run:
                    rows._spill()
                    keys = rows.keys
            if out:
                rows.rows.write(out)
            return subdirs, slow + failed, files, nbytes
        finally:
            free(name_at)
            free(inos)
            free(chold)
            free(size)
            free(objs)


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


cdef extern from "<dirent.h>" nogil:
    long telldir(DIR *d)
    void seekdir(DIR *d, long loc)

# Directories tree_usage keeps open: one per level of the path it is in, up to this many; the
# ones above are closed (their place kept, telldir) and opened again through ".." on the way
# back up.  A layer's symlinks lead its tree thousands of levels down, past any open-file limit.
DEF USAGE_OPEN_LEVELS = 16


cdef int _usage_reopen_parent(DIR **stack, long *places, unsigned long long *ids, Py_ssize_t level) noexcept nogil:
    """Open level ``level`` (closed to stay under USAGE_OPEN_LEVELS) again through the ".." of
    the level below it, at the place its listing had reached; 0, or an errno (ESTALE: it is no
    longer that directory, the tree moved under the walk)."""
    cdef stat st
    cdef int fd = openat(dirfd(stack[level + 1]), b"..", O_RDONLY | O_DIRECTORY | O_CLOEXEC)
    cdef DIR *d
    cdef int err
    if fd < 0:
        return errno
    if fstat(fd, &st) < 0:
        err = errno
        close(fd)
        return err
    if <unsigned long long>st.st_dev != ids[2 * level] or <unsigned long long>st.st_ino != ids[2 * level + 1]:
        close(fd)
        return ESTALE
    d = fdopendir(fd)
    if d == NULL:
        err = errno
        close(fd)
        return err
    seekdir(d, places[level])
    stack[level] = d
    return 0


def tree_usage(int root_fd, int spill_dir_fd=-1, size_t held=65536):
    """(bytes on disk, inodes) of the tree under the directory ``root_fd``, the root included:
    st_blocks * 512 of every entry, an inode with several names counted once, nothing followed
    (what lamina.store.fsutil.disk_usage reports, as GNU ``du -sB1`` / ``du -s --inodes`` do).
    The inodes with several names are counted in bounded memory (inode_count.h): past ``held``
    of them, sorted runs go to a temp file in ``spill_dir_fd`` (else $TMPDIR or /tmp).

    A snapshot's size goes into its meta.json at every commit: this walk runs without the GIL
    (a depth-first one, a directory per level of its path open, USAGE_OPEN_LEVELS at most),
    beside the other layers' extraction.  Entries that vanish during the walk are skipped."""
    cdef DIR **stack = NULL
    cdef DIR **grown
    cdef long *places = NULL       # per level: where its listing was when it was closed
    cdef long *grown_places
    cdef unsigned long long *ids = NULL   # per level: dev, ino (checked when it is opened again)
    cdef unsigned long long *grown_ids
    cdef lam_inode_count multi
    cdef Py_ssize_t depth = 0, cap = 0, lowest = 0   # levels lowest .. depth - 1 are open
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
                places = <long *>malloc(cap * sizeof(long))
                ids = <unsigned long long *>malloc(2 * cap * sizeof(unsigned long long))
                if stack == NULL or places == NULL or ids == NULL:
                    closedir(d)
                    err = ENOMEM
                else:
                    stack[0] = d
                    ids[0], ids[1] = st.st_dev, st.st_ino
                    depth = 1
        while depth > 0 and err == 0:
            d = stack[depth - 1]
            errno_reset()
            e = readdir(d)
            if e == NULL:
                if errno:
                    err = errno
                    break
                if depth - 1 == lowest and lowest > 0:
                    err = _usage_reopen_parent(stack, places, ids, lowest - 1)
                    if err:
                        break
                    lowest -= 1
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
                    if grown != NULL:
                        stack = grown
                    grown_places = <long *>realloc(places, cap * 2 * sizeof(long))
                    if grown_places != NULL:
                        places = grown_places
                    grown_ids = <unsigned long long *>realloc(ids, 4 * cap * sizeof(unsigned long long))
                    if grown_ids != NULL:
                        ids = grown_ids
                    if grown == NULL or grown_places == NULL or grown_ids == NULL:
                        closedir(d)
                        err = 12
                        break
                    cap *= 2
                stack[depth] = d
                ids[2 * depth], ids[2 * depth + 1] = st.st_dev, st.st_ino
                depth += 1
                if depth - lowest > USAGE_OPEN_LEVELS:
                    places[lowest] = telldir(stack[lowest])
                    closedir(stack[lowest])
                    stack[lowest] = NULL
                    lowest += 1
        while depth > lowest:
            depth -= 1
            closedir(stack[depth])
        free(stack)
        free(places)
        free(ids)
        if err == 0:
            err = lam_inode_finish(&multi)
            total += multi.total
            count += multi.count
        lam_inode_free(&multi)
    if err:
        raise OSError(err, __import__("os").strerror(err))
    return total, count
