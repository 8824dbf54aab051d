# The vendored BLAKE3 C API (native/vendor/blake3), for _objects and the extractor.
from libc.stdint cimport uint8_t

cdef extern from "blake3.h" nogil:
    ctypedef struct blake3_hasher:
        pass
    const char *blake3_version()
    void blake3_hasher_init(blake3_hasher *self)
    void blake3_hasher_update(blake3_hasher *self, const void *input, size_t input_len)
    void blake3_hasher_finalize(const blake3_hasher *self, uint8_t *out, size_t out_len)
    enum:
        BLAKE3_OUT_LEN

cdef extern from "metadata_key.h" nogil:
    # objects.metadata_key() of an inode without xattrs: 16 hex digits and a NUL into ``out``
    void lamina_metadata_key(unsigned int mode, unsigned int uid, unsigned int gid, long long sec, long nsec,
                             char *out)
