/* <sys/syscall.h> as CentOS 7's headers (manylinux2014, x86_64 and aarch64) have it: no openat2,
 * no new mount API, no renameat2.  ci/compile-old-headers.sh puts this directory first on the
 * include path. */
#include_next <sys/syscall.h>
#undef SYS_openat2
#undef __NR_openat2
#undef SYS_fsopen
#undef __NR_fsopen
#undef SYS_fsconfig
#undef __NR_fsconfig
#undef SYS_fsmount
#undef __NR_fsmount
#undef SYS_move_mount
#undef __NR_move_mount
#undef SYS_copy_file_range
#undef __NR_copy_file_range
#undef SYS_renameat2
#undef __NR_renameat2
