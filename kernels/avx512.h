/* What the AVX-512 kernels (tiles.h for attention, gemm.h for the linear layers) share: the
 * test that they can be compiled here, the CPU check, and the lane mask of a partial vector.
 *
 * NUMPYLLM_AVX512_BUILD is defined where they are compiled (x86-64 with GCC or clang, unless
 * NUMPYLLM_NO_TILES asks for the portable kernels only).
 */
#ifndef NUMPYLLM_AVX512_H
#define NUMPYLLM_AVX512_H

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(NUMPYLLM_NO_TILES)
#define NUMPYLLM_AVX512_BUILD 1
#include <immintrin.h>
#include <stddef.h>

/* Whether this CPU has AVX-512F, and AVX-512VL too when `with_vl`. */
static int numpyllm_cpu_has_avx512(int with_vl)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && (!with_vl || __builtin_cpu_supports("avx512vl"));
}

/* Mask of the first `count` lanes (none for count <= 0, all for count >= 16). */
static inline __mmask16 numpyllm_lanes(ptrdiff_t count)
{
    return count >= 16 ? (__mmask16)0xFFFF : count <= 0 ? (__mmask16)0 : (__mmask16)((1u << count) - 1u);
}
#endif

#endif
