/* The metadata key of a store object whose inode has no xattrs: the first 8 bytes (16 hex)
 * of blake3("<mode octal>:<uid>:<gid>:<mtime ns>"), what lamina.store.objects.metadata_key()
 * computes in Python.  One definition for the dedup pass (lamina._objects) and for the
 * extractor's link to an existing object (lamina._extract): the two must never disagree. */
#ifndef LAMINA_METADATA_KEY_H
#define LAMINA_METADATA_KEY_H

#include <stdint.h>
#include <stdio.h>
#include "blake3.h"

/* ``out``: 17 chars, the 16 hex digits and a NUL. */
static inline void lamina_metadata_key(unsigned int mode, unsigned int uid, unsigned int gid,
                                       long long mtime_ns, char *out)
{
    static const char hex[] = "0123456789abcdef";
    char text[96];
    uint8_t h[BLAKE3_OUT_LEN];
    blake3_hasher hasher;
    int n = snprintf(text, sizeof(text), "%o:%u:%u:%lld", mode, uid, gid, mtime_ns);
    int k;
    blake3_hasher_init(&hasher);
    blake3_hasher_update(&hasher, text, (size_t)n);
    blake3_hasher_finalize(&hasher, h, BLAKE3_OUT_LEN);
    for (k = 0; k < 8; k++) {
        out[2 * k] = hex[h[k] >> 4];
        out[2 * k + 1] = hex[h[k] & 15];
    }
    out[16] = 0;
}

#endif
