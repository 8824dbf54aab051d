# cython: freethreading_compatible = True
"""BLAKE3 of whole files, for the store's file objects (lamina.store.objects).

The vendored BLAKE3 C implementation (native/vendor/blake3) picks its SIMD back
end at run time.  hash_fd() reads and hashes with the GIL released, so several
threads hash several files on several cores.
"""
from libc.stdint cimport uint8_t
from libc.stdlib cimport malloc, free
from libc.errno cimport errno, EINTR, EEXIST
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


cdef extern from "lamina_sys.h" nogil:
    int lamina_rename_noreplace(int olddirfd, const char *oldpath, int newdirfd, const char *newpath)


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
