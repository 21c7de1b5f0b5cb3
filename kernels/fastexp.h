/* Row operations of the attention kernel that the compiler can vectorize.
 *
 * libm's expf is a scalar call per element and would dominate the kernel; these loops
 * are written so that gcc/clang vectorize them at -O3 without -ffast-math (which would
 * break the -inf mask and NaN propagation). `target_clones` builds one copy per
 * instruction set and picks the best one at load time, so the extension still runs on
 * CPUs without AVX.
 *
 * exp(x) = 2^n · exp(r) with n = round(x / ln 2) and r = x - n·ln 2 in [-ln2/2, ln2/2];
 * exp(r) is Cephes' degree-7 polynomial for expf (relative error about 1e-7 here).
 */
#ifndef NUMPYLLM_FASTEXP_H
#define NUMPYLLM_FASTEXP_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__) && !defined(NUMPYLLM_NO_CLONES)
#define NUMPYLLM_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define NUMPYLLM_CLONES
#endif

#define NUMPYLLM_LANES 16 /* independent partial results: room for one AVX-512 register */

/* exp(x) for one float, written with selects so that a loop of it vectorizes. */
static inline float numpyllm_expf(float x)
{
    const float log2e = 1.44269504088896341f;
    const float ln2_hi = 0.693359375f; /* ln 2 split so n·ln2_hi is exact */
    const float ln2_lo = -2.12194440e-4f;
    const float round_magic = 12582912.0f; /* 1.5·2^23: adding it rounds to an integer */
    float xc = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
    float n = (xc * log2e + round_magic) - round_magic;
    float r = (xc - n * ln2_hi) - n * ln2_lo;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    int32_t bits = ((int32_t)n + 127) << 23; /* 2^n as a float's exponent field */
    float two_n;
    memcpy(&two_n, &bits, sizeof two_n);
    float y = p * two_n;
    y = x < -87.0f ? 0.0f : y;     /* underflow (and -inf) -> 0 */
    y = x > 88.0f ? INFINITY : y;  /* overflow (and +inf) -> inf */
    return x != x ? x : y;         /* NaN stays NaN */
}

/* x[j] = exp(x[j] - shift) for j < n. */
NUMPYLLM_CLONES
static void numpyllm_exp_shift_f32(float *x, int n, float shift)
{
    for (int j = 0; j < n; j++)
        x[j] = numpyllm_expf(x[j] - shift);
}

/* x[j] = exp(x[j] - shift) for j < n; returns sum_j x[j] (the new values): one pass over
 * the row instead of an exp pass and a sum pass. Each of the float lanes adds n / LANES
 * terms (16 for a 256-wide tile row); the lanes are added in double. */
NUMPYLLM_CLONES
static double numpyllm_exp_shift_sum_f32(float *x, int n, float shift)
{
    float lane_sum[NUMPYLLM_LANES] = {0};
    int j = 0;
    for (; j + NUMPYLLM_LANES <= n; j += NUMPYLLM_LANES)
    {
        float *xj = x + j; /* not x[j + l]: under Python's -fwrapv that index may wrap, and gcc
                              would then not vectorize the lane loop */
        for (int l = 0; l < NUMPYLLM_LANES; l++) {
            float y = numpyllm_expf(xj[l] - shift);
            xj[l] = y;
            lane_sum[l] += y;
        }
    }
    double total = 0.0;
    for (; j < n; j++) {
        x[j] = numpyllm_expf(x[j] - shift);
        total += (double)x[j];
    }
    for (int l = 0; l < NUMPYLLM_LANES; l++)
        total += (double)lane_sum[l];
    return total;
}

/* sum_j x[j] for j < n, accumulated in double over independent lanes. */
NUMPYLLM_CLONES
static double numpyllm_sum_f32(const float *x, int n)
{
    double lane_sum[NUMPYLLM_LANES] = {0};
    int j = 0;
    for (; j + NUMPYLLM_LANES <= n; j += NUMPYLLM_LANES) {
        const float *xj = x + j; /* see numpyllm_exp_shift_sum_f32 */
        for (int l = 0; l < NUMPYLLM_LANES; l++)
            lane_sum[l] += (double)xj[l];
    }
    double total = 0.0;
    for (; j < n; j++)
        total += (double)x[j];
    for (int l = 0; l < NUMPYLLM_LANES; l++)
        total += lane_sum[l];
    return total;
}

/* max_j x[j] for j < n (-inf when n == 0); NaNs are skipped (exp propagates them later).
 * Written with GCC's vector extension: gcc does not vectorize a lane loop of selects
 * without -ffast-math; each clone splits the 16 lanes into its own register width. */
typedef float numpyllm_v16f __attribute__((vector_size(64)));
typedef int32_t numpyllm_v16i __attribute__((vector_size(64)));

NUMPYLLM_CLONES
static float numpyllm_max_f32(const float *x, int n)
{
    numpyllm_v16f lane_max;
    for (int l = 0; l < NUMPYLLM_LANES; l++)
        lane_max[l] = -INFINITY;
    int j = 0;
    for (; j + NUMPYLLM_LANES <= n; j += NUMPYLLM_LANES) {
        numpyllm_v16f v;
        memcpy(&v, x + j, sizeof v);
        numpyllm_v16i take = v > lane_max; /* all ones where v is larger (never for NaN) */
        lane_max = (numpyllm_v16f)(((numpyllm_v16i)v & take) | ((numpyllm_v16i)lane_max & ~take));
    }
    float m = -INFINITY;
    for (; j < n; j++)
        m = x[j] > m ? x[j] : m;
    for (int l = 0; l < NUMPYLLM_LANES; l++)
        m = lane_max[l] > m ? lane_max[l] : m;
    return m;
}

#endif
