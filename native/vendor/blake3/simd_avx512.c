/* lamina: compiles blake3_avx512.c with the instruction set it needs (avx512f,avx512vl) for this file only,
   so the rest of the extension stays portable; blake3_dispatch.c picks it at run time (cpuid). */
#if defined(__x86_64__) || defined(_M_X64)
#pragma GCC target("avx512f,avx512vl")
#include "blake3_avx512.c"
#endif
