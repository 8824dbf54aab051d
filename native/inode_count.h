/* Counting distinct inodes in bounded memory (tree_usage in objects.pyx).
 *
 * A snapshot in the store can have every file linked twice (its name in the tree and the
 * extractor's name in hashed/, or an object's), so "count each inode with several names
 * once" met a million (dev, ino, blocks) records for a layer of a million files: 24 MiB and a
 * realloc that doubled it, past the 64 MiB a layer of any size may cost.  Records now go to
 * a fixed buffer; a full buffer is sorted, made unique and written to a temp file as a run,
 * and the runs are merged at the end (each read through a small window).
 *
 * Plain C, no GIL: every function runs inside tree_usage's nogil block.  Errors are errno
 * values (0: none). */
#ifndef LAMINA_INODE_COUNT_H
#define LAMINA_INODE_COUNT_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct {
    uint64_t dev, ino;
    int64_t blocks;
} lam_inode_rec;

#define LAM_INODE_WINDOW 512   /* records read at once from each run while merging */

typedef struct {
    lam_inode_rec *buf;
    size_t n, cap;
    size_t limit;      /* records held before a run is spilled (65536: 1.5 MiB) */
    int spill_dir;     /* where the temp file goes (O_TMPFILE), or -1: $TMPDIR or /tmp */
    int fd;            /* the runs, one after another; -1 until the first spill */
    size_t *runs;      /* records in each run */
    size_t nruns, runs_cap;
    long long total;   /* st_blocks * 512 of the distinct inodes, once merged */
    long long count;
} lam_inode_count;

static int lam_inode_cmp(const void *a, const void *b)
{
    const lam_inode_rec *x = a, *y = b;
    if (x->dev != y->dev)
        return x->dev < y->dev ? -1 : 1;
    if (x->ino != y->ino)
        return x->ino < y->ino ? -1 : 1;
    return 0;
}

static void lam_inode_init(lam_inode_count *c, int spill_dir, size_t limit)
{
    memset(c, 0, sizeof(*c));
    c->limit = limit < 2 ? 2 : limit;
    c->spill_dir = spill_dir;
    c->fd = -1;
}

static void lam_inode_free(lam_inode_count *c)
{
    free(c->buf);
    free(c->runs);
    if (c->fd >= 0)
        close(c->fd);
    c->buf = NULL;
    c->runs = NULL;
    c->fd = -1;
}

/* Sorted, and each inode once (a file with two names in the tree was met twice). */
static size_t lam_inode_unique(lam_inode_rec *r, size_t n)
{
    size_t i, k = 0;
    if (n == 0)
        return 0;
    qsort(r, n, sizeof(*r), lam_inode_cmp);
    for (i = 1; i < n; i++)
        if (lam_inode_cmp(&r[i], &r[k]) != 0)
            r[++k] = r[i];
    return k + 1;
}

static int lam_inode_open_spill(lam_inode_count *c)
{
    const char *dir;
    char path[4096];
    if (c->spill_dir >= 0) {
        c->fd = openat(c->spill_dir, ".", O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
        if (c->fd >= 0)
            return 0;
    }
    dir = getenv("TMPDIR");
    if (dir == NULL || *dir == 0)
        dir = "/tmp";
    c->fd = open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
    if (c->fd >= 0)
        return 0;
    if (strlen(dir) + 32 > sizeof(path))
        return ENAMETOOLONG;
    strcpy(path, dir);
    strcat(path, "/lamina-inodes-XXXXXX");
    c->fd = mkostemp(path, O_CLOEXEC);
    if (c->fd < 0)
        return errno;
    unlink(path);
    return 0;
}

static int lam_inode_write_all(int fd, const void *p, size_t len)
{
    const char *s = p;
    while (len) {
        ssize_t w = write(fd, s, len);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return errno;
        }
        s += w;
        len -= (size_t)w;
    }
    return 0;
}

static int lam_inode_spill(lam_inode_count *c)
{
    int err;
    size_t n = lam_inode_unique(c->buf, c->n);
    if (c->fd < 0 && (err = lam_inode_open_spill(c)) != 0)
        return err;
    if (c->nruns == c->runs_cap) {
        size_t cap = c->runs_cap ? 2 * c->runs_cap : 16;
        size_t *grown = realloc(c->runs, cap * sizeof(size_t));
        if (grown == NULL)
            return ENOMEM;
        c->runs = grown;
        c->runs_cap = cap;
    }
    if ((err = lam_inode_write_all(c->fd, c->buf, n * sizeof(lam_inode_rec))) != 0)
        return err;
    c->runs[c->nruns++] = n;
    c->n = 0;
    return 0;
}

static int lam_inode_add(lam_inode_count *c, uint64_t dev, uint64_t ino, int64_t blocks)
{
    if (c->n == c->cap) {
        if (c->cap == c->limit) {
            int err = lam_inode_spill(c);
            if (err)
                return err;
        } else {
            size_t cap = c->cap ? 2 * c->cap : 256;
            lam_inode_rec *grown;
            if (cap > c->limit)
                cap = c->limit;
            grown = realloc(c->buf, cap * sizeof(lam_inode_rec));
            if (grown == NULL)
                return ENOMEM;
            c->buf = grown;
            c->cap = cap;
        }
    }
    c->buf[c->n].dev = dev;
    c->buf[c->n].ino = ino;
    c->buf[c->n].blocks = blocks;
    c->n++;
    return 0;
}

typedef struct {
    off_t next;        /* file offset of the run's next unread record */
    size_t left;       /* records of the run not yet read */
    lam_inode_rec *win;
    size_t at, have;   /* position and fill of the window */
} lam_inode_run;

static int lam_inode_refill(int fd, lam_inode_run *r)
{
    size_t want = r->left < LAM_INODE_WINDOW ? r->left : LAM_INODE_WINDOW;
    size_t got = 0, bytes = want * sizeof(lam_inode_rec);
    while (got < bytes) {
        ssize_t n = pread(fd, (char *)r->win + got, bytes - got, r->next + (off_t)got);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return errno;
        }
        if (n == 0)
            return EIO;  /* the temp file is shorter than what was written to it */
        got += (size_t)n;
    }
    r->next += (off_t)bytes;
    r->left -= want;
    r->at = 0;
    r->have = want;
    return 0;
}

/* total and count of the distinct inodes: the buffer alone when nothing was spilled, else a
 * merge of the runs and the buffer (made a run of its own). */
static int lam_inode_finish(lam_inode_count *c)
{
    lam_inode_run *runs;
    lam_inode_rec last;
    size_t i, k;
    off_t off = 0;
    int err = 0, have_last = 0;
    if (c->fd < 0) {
        size_t n = lam_inode_unique(c->buf, c->n);
        for (i = 0; i < n; i++) {
            c->total += c->buf[i].blocks * 512;
            c->count++;
        }
        return 0;
    }
    if (c->n && (err = lam_inode_spill(c)) != 0)
        return err;
    free(c->buf);  /* the windows take its place */
    c->buf = NULL;
    c->n = c->cap = 0;
    runs = calloc(c->nruns, sizeof(*runs));
    if (runs == NULL)
        return ENOMEM;
    for (k = 0; k < c->nruns; k++) {
        runs[k].next = off;
        runs[k].left = c->runs[k];
        off += (off_t)(c->runs[k] * sizeof(lam_inode_rec));
        runs[k].win = malloc(LAM_INODE_WINDOW * sizeof(lam_inode_rec));
        if (runs[k].win == NULL) {
            err = ENOMEM;
            goto out;
        }
        if ((err = lam_inode_refill(c->fd, &runs[k])) != 0)
            goto out;
    }
    for (;;) {
        lam_inode_run *min = NULL;
        for (k = 0; k < c->nruns; k++)  /* few runs (a 2M-entry layer: 31): a scan is enough */
            if (runs[k].at < runs[k].have
                    && (min == NULL || lam_inode_cmp(&runs[k].win[runs[k].at], &min->win[min->at]) < 0))
                min = &runs[k];
        if (min == NULL)
            break;
        if (!have_last || lam_inode_cmp(&min->win[min->at], &last) != 0) {
            last = min->win[min->at];
            have_last = 1;
            c->total += last.blocks * 512;
            c->count++;
        }
        if (++min->at == min->have && min->left && (err = lam_inode_refill(c->fd, min)) != 0)
            goto out;
    }
out:
    for (k = 0; k < c->nruns; k++)
        free(runs[k].win);
    free(runs);
    return err;
}

#endif
