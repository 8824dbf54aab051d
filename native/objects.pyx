# cython: freethreading_compatible = True
"""BLAKE3 of whole files, for the store's file objects (lamina.store.objects).

The vendored BLAKE3 C implementation (native/vendor/blake3) picks its SIMD back
end at run time.  hash_fd() reads and hashes with the GIL released, so several
threads hash several files on several cores.
"""
from libc.stdint cimport uint8_t
from libc.stdlib cimport malloc, free
from libc.errno cimport errno, EINTR, EEXIST, ENOENT
from posix.types cimport off_t
from cpython.bytes cimport PyBytes_FromStringAndSize

from blake3_c cimport *

cdef extern from "<unistd.h>" nogil:
    ssize_t pread(int fd, void *buf, size_t count, off_t offset)

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


cdef class FanOut:
    """fds of objects/blake3/<2 hex>/, opened (and made) on first use, for new_objects() and claim_objects()."""
    cdef int root
    cdef int fds[256]

    def __cinit__(self, int blake3_dir_fd):
        cdef int i
        self.root = blake3_dir_fd
        for i in range(256):
            self.fds[i] = -1

    def __dealloc__(self):
        self.close()

    def close(self):
        cdef int i
        for i in range(256):
            if self.fds[i] >= 0:
                close(self.fds[i])
                self.fds[i] = -1

    def get(self, name):
        """The fd of the fan-out directory of object ``name``."""
        return self.fd(name[:2].encode())

    cdef int fd(self, const char *hex2) except -2:
        cdef int i = int(hex2[:2].decode(), 16)
        cdef char name[3]
        if self.fds[i] < 0:
            name[0], name[1], name[2] = hex2[0], hex2[1], 0
            if mkdirat(self.root, name, 0o700) < 0 and errno != EEXIST:
                raise OSError(errno, __import__("os").strerror(errno), name[:2].decode())
            self.fds[i] = openat(self.root, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
            if self.fds[i] < 0:
                raise OSError(errno, __import__("os").strerror(errno), name[:2].decode())
        return self.fds[i]


def new_objects(int dir_fd, list names, list inos, int hashed_fd, list holds, FanOut fanout, bint claim=True):
    """The dedup pass's common case, for files of one directory the extractor hashed (lamina.store.objects).

    For each ``names[i]``: if it is still the regular file ``inos[i]`` with no other name than
    its ``hashed/holds[i]`` (and the hold says it has no xattrs), its object name is
    ``<blake3>.<metadata key>``; with ``claim`` the hold is renamed to it unless that object
    exists, without it the object is only looked up (the caller claims it later, claim_objects).
    Returns, per file, (object name, size) once it is (or may become) the new object, else None:
    the caller handles that file the general way (an existing object, a hardlink, xattrs, ...).
    The metadata key is metadata_key()'s for a file without xattrs.
    """
    cdef stat st
    cdef stat ost
    cdef blake3_hasher hasher
    cdef uint8_t out[BLAKE3_OUT_LEN]
    cdef char text[96]
    cdef char key[17]
    cdef int n, k, rc
    cdef Py_ssize_t i
    results = []
    for i in range(len(names)):
        name = names[i]
        hold = holds[i]
        bname = (<str>name).encode("utf-8", "surrogateescape")
        if (fstatat(dir_fd, bname, &st, AT_SYMLINK_NOFOLLOW) < 0 or not S_ISREG(st.st_mode)
                or st.st_ino != <unsigned long>inos[i] or st.st_nlink != 2):
            results.append(None)
            continue
        n = snprintf(text, sizeof(text), "%o:%u:%u:%lld", <unsigned int>st.st_mode, <unsigned int>st.st_uid,
                     <unsigned int>st.st_gid, lamina_mtime_ns(&st))
        blake3_hasher_init(&hasher)
        blake3_hasher_update(&hasher, text, n)
        blake3_hasher_finalize(&hasher, out, BLAKE3_OUT_LEN)
        for k in range(8):
            key[2 * k] = b"0123456789abcdef"[out[k] >> 4]
            key[2 * k + 1] = b"0123456789abcdef"[out[k] & 15]
        key[16] = 0
        obj = f"{(<str>hold)[:64]}.{key[:16].decode()}"
        bobj = obj.encode()
        if claim:
            bhold = (<str>hold).encode()
            rc = lamina_rename_noreplace(hashed_fd, bhold, fanout.fd(bobj), bobj)
        else:
            rc = 0 if fstatat(fanout.fd(bobj), bobj, &ost, AT_SYMLINK_NOFOLLOW) < 0 and errno == ENOENT else -1
        results.append((obj, st.st_size) if rc == 0 else None)
    return results


def claim_objects(int hashed_fd, list holds, list objs, FanOut fanout):
    """Rename each ``hashed/holds[i]`` to object ``objs[i]`` unless that object exists (RENAME_NOREPLACE):
    per name 0 if renamed, else the errno (EEXIST: the object exists; EINVAL: not supported here)."""
    cdef Py_ssize_t i
    cdef int dir_fd, rc
    out = []
    for i in range(len(holds)):
        bobj = (<str>objs[i]).encode()
        bhold = (<str>holds[i]).encode()
        dir_fd = fanout.fd(bobj)
        rc = lamina_rename_noreplace(hashed_fd, bhold, dir_fd, bobj)
        out.append(0 if rc == 0 else errno)
    return out
