/* Thin portable wrappers for the Linux syscalls the extractor needs that
 * glibc does not wrap everywhere (manylinux2014 ships old headers). */
#ifndef LAMINA_SYS_H
#define LAMINA_SYS_H

#include <errno.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <unistd.h>

/* openat2 has the same number on every architecture (unified syscall table). */
#ifndef SYS_openat2
#define SYS_openat2 437
#endif

#define LAMINA_RESOLVE_NO_MAGICLINKS 0x02
#define LAMINA_RESOLVE_NO_SYMLINKS 0x04
#define LAMINA_RESOLVE_IN_ROOT 0x10

struct lamina_open_how {
    uint64_t flags;
    uint64_t mode;
    uint64_t resolve;
};

static inline int lamina_openat2(int dirfd, const char *path, int flags, int resolve)
{
    struct lamina_open_how how;
    long rc;
    how.flags = (uint64_t)(unsigned int)flags;
    how.mode = 0;
    how.resolve = (uint64_t)resolve;
    do {
        rc = syscall(SYS_openat2, dirfd, path, &how, sizeof(how));
    } while (rc < 0 && (errno == EINTR || errno == EAGAIN));
    return (int)rc;
}

/* Write all of buf, retrying short writes and EINTR. Returns 0 or -1 (errno set). */
static inline int lamina_write_all(int fd, const char *buf, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, buf, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

/* renameat2 through syscall(2): glibc wraps it only from 2.28, and manylinux2014's kernel
 * headers predate it, so the number is supplied where <sys/syscall.h> lacks it.  ENOSYS where
 * neither knows it; the callers fall back on ENOSYS or EINVAL (a kernel or filesystem without
 * the flag). */
#ifndef SYS_renameat2
# if defined(__x86_64__)
#  define SYS_renameat2 316
# elif defined(__aarch64__)
#  define SYS_renameat2 276
# endif
#endif

#define LAMINA_RENAME_NOREPLACE 1u
#define LAMINA_RENAME_EXCHANGE 2u

static inline int lamina_renameat2(int olddirfd, const char *oldpath, int newdirfd, const char *newpath,
                                   unsigned int flags)
{
#ifdef SYS_renameat2
    return (int)syscall(SYS_renameat2, olddirfd, oldpath, newdirfd, newpath, flags);
#else
    errno = ENOSYS;
    return -1;
#endif
}

static inline int lamina_rename_noreplace(int olddirfd, const char *oldpath, int newdirfd, const char *newpath)
{
    return lamina_renameat2(olddirfd, oldpath, newdirfd, newpath, LAMINA_RENAME_NOREPLACE);
}

/* Cython cannot assign to errno without making it a local. */
static inline void lamina_set_errno(int e) { errno = e; }

/* copy_file_range through syscall(2): manylinux2014's glibc (2.17) has no wrapper. */
#ifndef SYS_copy_file_range
# if defined(__x86_64__)
#  define SYS_copy_file_range 326
# elif defined(__aarch64__)
#  define SYS_copy_file_range 285
# endif
#endif

static inline long lamina_copy_file_range(int in, int out, size_t len)
{
#ifdef SYS_copy_file_range
    return syscall(SYS_copy_file_range, in, (void *)0, out, (void *)0, len, 0U);
#else
    errno = ENOSYS;
    return -1;
#endif
}

/* The next data region of fd at or after pos and below size: 1 with [*start, *end), 0 if
 * only a hole is left, -1 on error.  Copies walk these so a sparse file keeps its holes (an
 * image's terabyte lastlog is a few blocks; written out whole it fills the disk).  Where the
 * filesystem has no SEEK_DATA (EINVAL), all of [pos, size) is data. */
#ifndef SEEK_DATA
# define SEEK_DATA 3
# define SEEK_HOLE 4
#endif
#ifndef ENXIO
# define ENXIO 6
#endif
static inline int lamina_next_data(int fd, long long pos, long long size,
                                   long long *start, long long *end)
{
    off_t s = lseek(fd, (off_t)pos, SEEK_DATA), e;
    if (s < 0) {
        if (errno == ENXIO)
            return 0;
        if (errno != EINVAL)
            return -1;
        *start = pos;
        *end = size;
        return 1;
    }
    if ((long long)s >= size)
        return 0;
    e = lseek(fd, s, SEEK_HOLE);
    if (e < 0)
        return -1;
    *start = (long long)s;
    *end = (long long)e < size ? (long long)e : size;
    return 1;
}

/* Flags several threads set: relaxed atomics (a GCC/Clang builtin on every architecture). */
static inline void lamina_atomic_or(int *p, int v) { __atomic_fetch_or(p, v, __ATOMIC_RELAXED); }
static inline int lamina_atomic_load(int *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
static inline void lamina_atomic_store(int *p, int v) { __atomic_store_n(p, v, __ATOMIC_RELAXED); }

#endif
