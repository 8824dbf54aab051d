/* The metadata key of a store object whose inode has no xattrs: the first 8 bytes (16 hex)
 * of blake3("<mode octal>:<uid>:<gid>:<mtime ns>"), what lamina.store.objects.metadata_key()
 * computes in Python.  One definition for the dedup pass (lamina._objects) and for the
 * extractor's link to an existing object (lamina._extract): the two must never disagree.
 *
 * The time comes as seconds and nanoseconds: in nanoseconds, a time after 2262 or before
 * 1678 (ext4 keeps them to 2446) does not fit 64 bits, and Python's st_mtime_ns, an exact
 * integer, is what the key spells. */
#ifndef LAMINA_METADATA_KEY_H
#define LAMINA_METADATA_KEY_H

#include <stdint.h>
#include <stdio.h>
#include "blake3.h"

/* ``out``: 17 chars, the 16 hex digits and a NUL. */
static inline void lamina_metadata_key(unsigned int mode, unsigned int uid, unsigned int gid,
                                       long long sec, long nsec, char *out)
{
    static const char hex[] = "0123456789abcdef";
    char text[96];
    uint8_t h[BLAKE3_OUT_LEN];
    blake3_hasher hasher;
    int n = snprintf(text, sizeof(text), "%o:%u:%u:", mode, uid, gid);
    int k;
    /* sec * 10^9 + nsec (0 <= nsec < 10^9) in decimal, without computing it: the seconds'
     * digits then nine of nanoseconds; below zero, -((-sec - 1) * 10^9 + (10^9 - nsec)) */
    if (sec >= 0) {
        if (sec > 0)
            n += snprintf(text + n, sizeof(text) - n, "%lld%09ld", sec, nsec);
        else
            n += snprintf(text + n, sizeof(text) - n, "%ld", nsec);
    } else {
        unsigned long long whole = (unsigned long long)(-(sec + 1));  /* no overflow at LLONG_MIN */
        long rest = 1000000000L - nsec;
        if (rest == 1000000000L) {  /* nsec 0: -sec whole seconds */
            whole += 1;
            rest = 0;
        }
        if (whole > 0)
            n += snprintf(text + n, sizeof(text) - n, "-%llu%09ld", whole, rest);
        else
            n += snprintf(text + n, sizeof(text) - n, "-%ld", rest);
    }
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
