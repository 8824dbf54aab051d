/* lamina: NEON is part of every AArch64 CPU; blake3_impl.h turns it on there (BLAKE3_USE_NEON). */
#if defined(__aarch64__)
#include "blake3_neon.c"
#endif
