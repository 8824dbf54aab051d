# cython: freethreading_compatible = True
"""BLAKE3 of whole files, for the store's file objects (lamina.store.objects).

The vendored BLAKE3 C implementation (native/vendor/blake3) picks its SIMD back
end at run time.  hash_fd() reads and hashes with the GIL released, so several
threads hash several files on several cores.
"""
from libc.stdint cimport uint8_t
from libc.stdlib cimport malloc, free
from libc.errno cimport errno, EINTR
from posix.types cimport off_t
from cpython.bytes cimport PyBytes_FromStringAndSize

cdef extern from "blake3.h" nogil:
    ctypedef struct blake3_hasher:
        pass
    const char *blake3_version()
    void blake3_hasher_init(blake3_hasher *self)
    void blake3_hasher_update(blake3_hasher *self, const void *input, size_t input_len)
    void blake3_hasher_finalize(const blake3_hasher *self, uint8_t *out, size_t out_len)
    enum:
        BLAKE3_OUT_LEN

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
