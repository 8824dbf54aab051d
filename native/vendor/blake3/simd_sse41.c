/* lamina: compiles blake3_sse41.c with the instruction set it needs (sse4.1) for this file only,
   so the rest of the extension stays portable; blake3_dispatch.c picks it at run time (cpuid). */
#if defined(__x86_64__) || defined(_M_X64)
#pragma GCC target("sse4.1")
#include "blake3_sse41.c"
#endif
