/* Inflate (ISA-L gzip, libzstd) and OpenSSL SHA-256 for lamina._pipeline,
 * all callable without the GIL.
 *
 * ISA-L and libzstd are linked when setup.py finds them at build time
 * (LAMINA_HAVE_ISAL / LAMINA_HAVE_ZSTD); a kind that was not built in makes
 * lamina_inflater_init fail, and layer.py then uses its Python pipeline.
 *
 * SHA-256 is not linked: it is looked up in the libcrypto that the
 * interpreter's own _hashlib module already loaded, so the wheel neither
 * needs OpenSSL headers to build nor ships a second libcrypto, and the hash
 * is exactly the one hashlib.sha256 computes (SHA-NI / ARMv8 CE included). */
#ifndef LAMINA_PIPELINE_CODECS_H
#define LAMINA_PIPELINE_CODECS_H

#include <dlfcn.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef LAMINA_HAVE_ISAL
#define LAMINA_HAVE_ISAL 0
#endif
#ifndef LAMINA_HAVE_ZSTD
#define LAMINA_HAVE_ZSTD 0
#endif
#if LAMINA_HAVE_ISAL
#include <isa-l/igzip_lib.h>
#endif
#if LAMINA_HAVE_ZSTD
#include <zstd.h>
#endif

/* ------------------------------------------------------------ SHA-256 */

/* The EVP calls we need, by their documented signatures (contexts are opaque). */
static struct {
    void *(*ctx_new)(void);
    void (*ctx_free)(void *);
    const void *(*md)(void);
    int (*init)(void *, const void *, void *);
    int (*update)(void *, const void *, size_t);
    int (*final)(void *, unsigned char *, unsigned int *);
} lamina_evp;

static void *lamina_sym2(void *h, const char *a, const char *b) {
    void *p = dlsym(h, a);
    return p || !b ? p : dlsym(h, b);
}

/* Resolve the EVP functions from `handle` (the _hashlib module, whose
 * dependencies include libcrypto).  Returns 0, or -1 if one is missing. */
static int lamina_sha_load(void *handle) {
    if (lamina_evp.update)
        return 0;
    /* OpenSSL 1.1+ names first, then the 1.0.2 ones (Python 3.9 may still use it) */
    void *ctx_new = lamina_sym2(handle, "EVP_MD_CTX_new", "EVP_MD_CTX_create");
    void *ctx_free = lamina_sym2(handle, "EVP_MD_CTX_free", "EVP_MD_CTX_destroy");
    void *md = lamina_sym2(handle, "EVP_sha256", NULL);
    void *init = lamina_sym2(handle, "EVP_DigestInit_ex", NULL);
    void *update = lamina_sym2(handle, "EVP_DigestUpdate", NULL);
    void *final = lamina_sym2(handle, "EVP_DigestFinal_ex", NULL);
    if (!ctx_new || !ctx_free || !md || !init || !update || !final)
        return -1;
    *(void **)&lamina_evp.ctx_new = ctx_new;
    *(void **)&lamina_evp.ctx_free = ctx_free;
    *(void **)&lamina_evp.md = md;
    *(void **)&lamina_evp.init = init;
    *(void **)&lamina_evp.final = final;
    *(void **)&lamina_evp.update = update;
    return 0;
}

/* A fresh SHA-256 context, or NULL. */
static void *lamina_sha_new(void) {
    void *ctx = lamina_evp.ctx_new();
    if (ctx && lamina_evp.init(ctx, lamina_evp.md(), NULL) != 1) {
        lamina_evp.ctx_free(ctx);
        return NULL;
    }
    return ctx;
}

static int lamina_sha_update(void *ctx, const void *data, size_t n) {
    return lamina_evp.update(ctx, data, n) == 1 ? 0 : -1;
}

static int lamina_sha_final(void *ctx, unsigned char out[32]) {
    unsigned int n = 0;
    return lamina_evp.final(ctx, out, &n) == 1 && n == 32 ? 0 : -1;
}

static void lamina_sha_free(void *ctx) {
    if (ctx)
        lamina_evp.ctx_free(ctx);
}

/* ------------------------------------------------------------ inflate */

enum { LAMINA_NONE = 0, LAMINA_GZIP = 1, LAMINA_ZSTD = 2 };

typedef struct {
    int kind;
    void *state;      /* struct inflate_state * or ZSTD_DCtx * */
    int in_frame;     /* a gzip member / zstd frame is started and not finished */
    int in_header;    /* gzip: the member's header is not read to its end yet */
    int padded;       /* gzip: zero padding followed a member (only more zeros may follow) */
    int members;      /* gzip: members started */
    int hdr_pos;      /* gzip: bytes of the member's header seen, up to its FLG byte */
#if LAMINA_HAVE_ISAL
    struct isal_gzip_header gz;
#endif
    uint8_t zhead[18]; /* zstd: the frame's first bytes (its header is at most 18), for its content size */
    size_t zhead_len;
    unsigned long long zmade; /* zstd: bytes the frame has given so far */
    char err[160];
} lamina_inflater;

static int lamina_inflate_available(int kind) {
    return (kind == LAMINA_GZIP && LAMINA_HAVE_ISAL) || (kind == LAMINA_ZSTD && LAMINA_HAVE_ZSTD);
}

/* 0, or -1 if `kind` is not built in or out of memory. */
static int lamina_inflater_init(lamina_inflater *z, int kind) {
    memset(z, 0, sizeof *z);
    z->kind = kind;
#if LAMINA_HAVE_ISAL
    if (kind == LAMINA_GZIP) {
        z->state = malloc(sizeof(struct inflate_state));
        if (!z->state)
            return -1;
        isal_inflate_init((struct inflate_state *)z->state);
        return 0;
    }
#endif
#if LAMINA_HAVE_ZSTD
    if (kind == LAMINA_ZSTD) {
        z->state = ZSTD_createDCtx();
        return z->state ? 0 : -1;
    }
#endif
    return -1;
}

static void lamina_inflater_free(lamina_inflater *z) {
#if LAMINA_HAVE_ISAL
    if (z->kind == LAMINA_GZIP)
        free(z->state);
#endif
#if LAMINA_HAVE_ZSTD
    if (z->kind == LAMINA_ZSTD)
        ZSTD_freeDCtx((ZSTD_DCtx *)z->state);
#endif
    z->state = NULL;
}

#define LAMINA_GZIP_AFTER_PADDING \
    "a gzip member after zero padding (gzip(1) and bsdtar stop at the padding, Go's reader fails)"

#define LAMINA_GZIP_RESERVED_FLAGS \
    "reserved flag bits set in a gzip member's header (gzip(1) and bsdtar refuse it)"

#if LAMINA_HAVE_ISAL
static const char *lamina_isal_error(int rc) {
    switch (rc) {
    case ISAL_INVALID_BLOCK: return "invalid deflate block";
    case ISAL_INVALID_SYMBOL: return "invalid deflate symbol";
    case ISAL_INVALID_LOOKBACK: return "invalid lookback distance";
    case ISAL_INVALID_WRAPPER: return "not a gzip member (bad header)";
    case ISAL_UNSUPPORTED_METHOD: return "unsupported compression method";
    case ISAL_INCORRECT_CHECKSUM: return "CRC32 or length check failed";
    default: return "inflate failed";
    }
}

/* gzip members one after another (pigz, concatenation), zero padding after the
 * last one skipped.  A member after zero padding is an error: gzip(1) and bsdtar
 * stop at the padding and Go's reader fails there, so the tar it carries on would
 * be seen by lamina alone (Python's gzip module reads it). */
static int lamina_gunzip(lamina_inflater *z, const uint8_t *in, size_t in_len, size_t *in_pos,
                         uint8_t *out, size_t out_cap, size_t *out_pos) {
    struct inflate_state *s = (struct inflate_state *)z->state;
    for (;;) {
        if (*out_pos == out_cap)
            return 0;
        if (!z->in_frame) {
            size_t start = *in_pos;
            while (*in_pos < in_len && in[*in_pos] == 0)
                (*in_pos)++;
            if (*in_pos > start && z->members)
                z->padded = 1;
            if (*in_pos == in_len)
                return 0;
            if (z->padded) {
                snprintf(z->err, sizeof z->err, "%s", LAMINA_GZIP_AFTER_PADDING);
                return -1;
            }
            z->members++;
            z->hdr_pos = 0;
            isal_inflate_reset(s);
            isal_gzip_header_init(&z->gz);
            z->in_frame = z->in_header = 1;
        }
        size_t ai = in_len - *in_pos, ao = out_cap - *out_pos;
        if (ai > UINT32_MAX) ai = UINT32_MAX;
        if (ao > UINT32_MAX) ao = UINT32_MAX;
        s->next_in = (uint8_t *)in + *in_pos;
        s->avail_in = (uint32_t)ai;
        if (z->in_header) {
            /* (not gzip's magic: isal's "bad header" says it) */
            for (size_t i = *in_pos; i < in_len && z->hdr_pos < 4; i++, z->hdr_pos++)
                if ((z->hdr_pos == 0 && in[i] != 0x1f) || (z->hdr_pos == 1 && in[i] != 0x8b))
                    z->hdr_pos = 4;
                else if (z->hdr_pos == 3 && (in[i] & 0xE0)) {
                    snprintf(z->err, sizeof z->err, "%s", LAMINA_GZIP_RESERVED_FLAGS);
                    return -1;
                }
            /* The header on its own: isal_inflate(ISAL_GZIP) checks an FHCRC header's
             * CRC16 over the bytes of the last call only, so a valid member whose header
             * spans two reads (the sniffed head is one) failed as "CRC32 or length". */
            int hr = isal_read_gzip_header(s, &z->gz);
            *in_pos += ai - s->avail_in;
            if (hr == ISAL_END_INPUT)
                return 0;  /* needs more input */
            if (hr != ISAL_DECOMP_OK) {
                snprintf(z->err, sizeof z->err, "%s",
                         hr == ISAL_INCORRECT_CHECKSUM ? "gzip header CRC16 check failed" : lamina_isal_error(hr));
                return -1;
            }
            z->in_header = 0;
            s->crc_flag = ISAL_GZIP_NO_HDR_VER;  /* the data, then its CRC32 and ISIZE verified */
            continue;
        }
        s->next_out = out + *out_pos;
        s->avail_out = (uint32_t)ao;
        int rc = isal_inflate(s);
        size_t used = ai - s->avail_in, made = ao - s->avail_out;
        *in_pos += used;
        *out_pos += made;
        if (rc < 0) {
            snprintf(z->err, sizeof z->err, "%s", lamina_isal_error(rc));
            return -1;
        }
        if (s->block_state == ISAL_BLOCK_FINISH)
            z->in_frame = 0;
        else if (!used && !made)
            return 0;  /* needs more input */
    }
}
#endif

#if LAMINA_HAVE_ZSTD
/* Frames one after another, skippable frames included (libzstd skips them). */
static int lamina_unzstd(lamina_inflater *z, const uint8_t *in, size_t in_len, size_t *in_pos,
                         uint8_t *out, size_t out_cap, size_t *out_pos) {
    ZSTD_inBuffer ib = {in, in_len, *in_pos};
    ZSTD_outBuffer ob = {out, out_cap, *out_pos};
    int rc = 0;
    while (ob.pos < ob.size) {
        size_t in0 = ib.pos, out0 = ob.pos;
        size_t r = ZSTD_decompressStream((ZSTD_DCtx *)z->state, &ob, &ib);
        if (ZSTD_isError(r)) {
            snprintf(z->err, sizeof z->err, "%s", ZSTD_getErrorName(r));
            rc = -1;
            break;
        }
        if (ib.pos == in0 && ob.pos == out0)
            break;  /* needs more input */
        /* one call ends at most one frame (it returns 0 there): what it took is this frame's */
        if (z->zhead_len < sizeof z->zhead) {
            size_t k = ib.pos - in0 < sizeof z->zhead - z->zhead_len ? ib.pos - in0 : sizeof z->zhead - z->zhead_len;
            memcpy(z->zhead + z->zhead_len, in + in0, k);
            z->zhead_len += k;
        }
        z->zmade += ob.pos - out0;
        z->in_frame = r != 0;
        if (r == 0) {
            /* libzstd (1.5.4) checks the content size a frame declares against what it gave,
             * but not when the frame ends in an empty last block and is read in pieces: a
             * frame that `zstd -d` (in one pass), bsdtar and Go's decoder refuse ("frame size
             * does not match") went through.  Skippable frames give nothing, whatever their size. */
            unsigned long long declared = ZSTD_getFrameContentSize(z->zhead, z->zhead_len);
            int skippable = z->zhead_len >= 4 && (z->zhead[0] & 0xF0) == 0x50 && z->zhead[1] == 0x2A &&
                            z->zhead[2] == 0x4D && z->zhead[3] == 0x18;
            if (!skippable && declared != ZSTD_CONTENTSIZE_UNKNOWN && declared != ZSTD_CONTENTSIZE_ERROR &&
                declared != z->zmade) {
                snprintf(z->err, sizeof z->err,
                         "Data corruption detected (a frame declares %llu bytes of content and gives %llu)",
                         declared, z->zmade);
                rc = -1;
                break;
            }
            z->zhead_len = 0;
            z->zmade = 0;
        }
    }
    *in_pos = ib.pos;
    *out_pos = ob.pos;
    return rc;
}
#endif

/* Inflate in[*in_pos:in_len] into out[*out_pos:out_cap], advancing both
 * positions as far as they go.  0, or -1 with z->err on corrupt input. */
static int lamina_inflate(lamina_inflater *z, const uint8_t *in, size_t in_len, size_t *in_pos,
                          uint8_t *out, size_t out_cap, size_t *out_pos) {
#if LAMINA_HAVE_ISAL
    if (z->kind == LAMINA_GZIP)
        return lamina_gunzip(z, in, in_len, in_pos, out, out_cap, out_pos);
#endif
#if LAMINA_HAVE_ZSTD
    if (z->kind == LAMINA_ZSTD)
        return lamina_unzstd(z, in, in_len, in_pos, out, out_cap, out_pos);
#endif
    snprintf(z->err, sizeof z->err, "not built in");
    return -1;
}

/* The input is over: 0 if the stream ended cleanly, else -1 with z->err. */
static int lamina_inflate_end(lamina_inflater *z) {
    if (!z->in_frame)
        return 0;
    snprintf(z->err, sizeof z->err, "truncated (the stream ends inside a %s)",
             z->kind == LAMINA_GZIP ? "gzip member" : "zstd frame");
    return -1;
}

#endif
