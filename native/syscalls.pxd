# The *at() syscalls the extractor uses, declared nogil so write loops and
# metadata calls run without the GIL.
from posix.types cimport mode_t, uid_t, gid_t, dev_t, off_t
from posix.time cimport timespec

cdef extern from "<fcntl.h>" nogil:
    int openat(int dirfd, const char *path, int flags, ...)
    enum:
        O_RDONLY
        O_WRONLY
        O_RDWR
        O_CREAT
        O_EXCL
        O_TRUNC
        O_NOFOLLOW
        O_CLOEXEC
        O_DIRECTORY
        O_PATH
        AT_FDCWD
        AT_SYMLINK_NOFOLLOW
        AT_SYMLINK_FOLLOW
        AT_REMOVEDIR
        AT_EMPTY_PATH

cdef extern from "<unistd.h>" nogil:
    int close(int fd)
    int dup(int fd)
    int unlinkat(int dirfd, const char *path, int flags)
    int symlinkat(const char *target, int newdirfd, const char *linkpath)
    int linkat(int olddirfd, const char *oldpath, int newdirfd, const char *newpath, int flags)
    int fchownat(int dirfd, const char *path, uid_t owner, gid_t group, int flags)
    int fchown(int fd, uid_t owner, gid_t group)
    ssize_t readlinkat(int dirfd, const char *path, char *buf, size_t size)
    uid_t geteuid()
    gid_t getegid()
    int ftruncate(int fd, off_t length)

cdef extern from "<sys/stat.h>" nogil:
    cdef struct stat:
        dev_t st_dev
        unsigned long st_ino
        mode_t st_mode
        unsigned long st_nlink
        uid_t st_uid
        gid_t st_gid
        dev_t st_rdev
        off_t st_size
        long long st_blocks
        timespec st_atim
        timespec st_mtim
        timespec st_ctim
    int fstatat(int dirfd, const char *path, stat *buf, int flags)
    int fstat(int fd, stat *buf)
    int mkdirat(int dirfd, const char *path, mode_t mode)
    int mknodat(int dirfd, const char *path, mode_t mode, dev_t dev)
    int fchmod(int fd, mode_t mode)
    int fchmodat(int dirfd, const char *path, mode_t mode, int flags)
    int futimens(int fd, const timespec *times)
    int utimensat(int dirfd, const char *path, const timespec *times, int flags)
    bint S_ISDIR(mode_t m)
    bint S_ISLNK(mode_t m)
    bint S_ISREG(mode_t m)
    bint S_ISCHR(mode_t m)
    bint S_ISBLK(mode_t m)
    enum:
        S_IFREG
        S_IFDIR
        S_IFCHR
        S_IFBLK
        S_IFIFO
        S_IFLNK

cdef extern from "<sys/sysmacros.h>" nogil:
    dev_t makedev(unsigned int major, unsigned int minor)

cdef extern from "<sys/xattr.h>" nogil:
    int fsetxattr(int fd, const char *name, const void *value, size_t size, int flags)
    int lsetxattr(const char *path, const char *name, const void *value, size_t size, int flags)
    ssize_t fgetxattr(int fd, const char *name, void *value, size_t size)
    ssize_t flistxattr(int fd, char *list, size_t size)
    ssize_t llistxattr(const char *path, char *list, size_t size)
    ssize_t lgetxattr(const char *path, const char *name, void *value, size_t size)

cdef extern from "<dirent.h>" nogil:
    ctypedef struct DIR:
        pass
    cdef struct dirent:
        unsigned long long d_ino
        unsigned char d_type
        char d_name[256]
    DIR *fdopendir(int fd)
    int dirfd(DIR *d)
    dirent *readdir(DIR *d)
    int closedir(DIR *d)
    enum:
        DT_DIR
        DT_REG
        DT_LNK
        DT_CHR
        DT_UNKNOWN

cdef extern from "lamina_sys.h" nogil:
    int lamina_openat2(int dirfd, const char *path, int flags, int resolve)
    int lamina_renameat2(int olddirfd, const char *oldpath, int newdirfd, const char *newpath,
                         unsigned int flags)
    int lamina_rename_noreplace(int olddirfd, const char *oldpath, int newdirfd, const char *newpath)
    int lamina_write_all(int fd, const char *buf, size_t len)
    void lamina_set_errno(int e)
    long lamina_copy_file_range(int infd, int outfd, size_t length)
    int lamina_next_data(int fd, long long pos, long long size, long long *start, long long *end)
    void lamina_atomic_or(int *p, int v)
    int lamina_atomic_load(int *p)
    void lamina_atomic_store(int *p, int v)
    enum:
        LAMINA_RESOLVE_NO_MAGICLINKS
        LAMINA_RESOLVE_NO_SYMLINKS
        LAMINA_RESOLVE_IN_ROOT
        LAMINA_RENAME_NOREPLACE
        LAMINA_RENAME_EXCHANGE
