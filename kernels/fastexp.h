/* Row operations of the attention kernel that the compiler can vectorize.
 *
 * libm's expf is a scalar call per element and would dominate the kernel; these loops
 * are written so that gcc/clang vectorize them at -O3 without -ffast-math (which would
 * break the -inf mask and NaN propagation). `target_clones` builds one copy per
 * instruction set and picks the best one at load time, so the extension still runs on
 * CPUs without AVX.
 *
 * exp(x) = 2^n · exp(r) with n = round(x / ln 2) and r = x - n·ln 2 in [-ln2/2, ln2/2];
 * exp(r) is Cephes' degree-7 polynomial for expf (relative error below 1e-7 here).
 */
#ifndef NUMPYLLM_FASTEXP_H
#define NUMPYLLM_FASTEXP_H

#include <math.h>
#include <stdint.h>
#include <string.h>

/* The clones, best first: AVX-512; x86-64-v3 (AVX2 with FMA: the "avx2" target alone has no
 * FMA, so every a·b + c is a multiply and an add; on the AMD EPYC Zen 3 exp_shift_sum took
 * 0.69 ns an element instead of 0.82); AVX2, for a CPU (a VM) that reports AVX2 without every
 * other x86-64-v3 feature; SSE2. GCC before 12 knows no x86-64-v3 to dispatch on. ("arch=haswell"
 * would be picked on Intel only: the resolver checks the CPU's model, not its features.) */
#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__) && !defined(NUMPYLLM_NO_CLONES)
#if __GNUC__ >= 12
#define NUMPYLLM_CLONES __attribute__((target_clones("avx512f", "arch=x86-64-v3", "avx2", "default")))
#else
#define NUMPYLLM_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#endif
#else
#define NUMPYLLM_CLONES
#endif

#define NUMPYLLM_LANES 16 /* independent partial results: room for one AVX-512 register */

/* exp(x) for one float, written with selects so that a loop of it vectorizes.
 * 2^n is built from the bits of x·log2(e) + 1.5·2^23, whose low mantissa bits hold n: integer
 * arithmetic on unsigned bits, so no float-to-int conversion (undefined for NaN) is needed.
 * The polynomial is evaluated in Estrin's scheme (a tree of depth 4, not Horner's chain of 12),
 * so consecutive elements overlap in the pipeline: the loop is latency-bound otherwise.
 * A NaN stays NaN through the arithmetic; x < -87 gives 0 and x > 88 gives inf. */
static inline float numpyllm_expf(float x)
{
    const float log2e = 1.44269504088896341f;
    const float ln2_hi = 0.693359375f; /* ln 2 split so n·ln2_hi is exact */
    const float ln2_lo = -2.12194440e-4f;
    const float round_magic = 12582912.0f; /* 1.5·2^23: adding it rounds to an integer */
    float t = x * log2e + round_magic;
    float n = t - round_magic;
    float r = (x - n * ln2_hi) - n * ln2_lo;
    float r2 = r * r;
    float a = 5.0000001201e-1f + 1.6666665459e-1f * r;
    float b = 4.1665795894e-2f + 8.3334519073e-3f * r;
    float c = 1.3981999507e-3f + 1.9875691500e-4f * r;
    float p = (a + r2 * (b + r2 * c)) * r2 + r + 1.0f;
    uint32_t t_bits, bits;
    memcpy(&t_bits, &t, sizeof t_bits);
    bits = (t_bits - 0x4B400000u + 127u) << 23; /* 2^n as a float's exponent field */
    float two_n;
    memcpy(&two_n, &bits, sizeof two_n);
    float y = p * two_n;
    y = x < -87.0f ? 0.0f : y;       /* underflow (and -inf) -> 0 */
    return x > 88.0f ? INFINITY : y; /* overflow (and +inf) -> inf */
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

/* numpyllm_exp_shift_sum_f32, also storing in *max_in the largest x[j] before the exp (NaNs
 * skipped; -inf when n == 0): the attention forward's shift by a running maximum, checked in
 * the same pass (0.69 ns an element on the Zen 3 against 0.81 for a max pass, then this one).
 * Kept apart from it: a row's first block needs its max before the exps, and tracking it again
 * there made the forward at N = 1024 1-2% slower. */
NUMPYLLM_CLONES
static double numpyllm_exp_shift_sum_max_f32(float *x, int n, float shift, float *max_in)
{
    float lane_sum[NUMPYLLM_LANES] = {0};
    float lane_max[NUMPYLLM_LANES];
    for (int l = 0; l < NUMPYLLM_LANES; l++)
        lane_max[l] = -INFINITY;
    int j = 0;
    for (; j + NUMPYLLM_LANES <= n; j += NUMPYLLM_LANES) {
        float *xj = x + j; /* see numpyllm_exp_shift_sum_f32 */
        for (int l = 0; l < NUMPYLLM_LANES; l++) {
            float value = xj[l];
            lane_max[l] = value > lane_max[l] ? value : lane_max[l];
            float y = numpyllm_expf(value - shift);
            xj[l] = y;
            lane_sum[l] += y;
        }
    }
    float m = -INFINITY;
    double total = 0.0;
    for (; j < n; j++) {
        m = x[j] > m ? x[j] : m;
        x[j] = numpyllm_expf(x[j] - shift);
        total += (double)x[j];
    }
    for (int l = 0; l < NUMPYLLM_LANES; l++) {
        total += (double)lane_sum[l];
        m = lane_max[l] > m ? lane_max[l] : m;
    }
    *max_in = m;
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
 * without -ffast-math. Two vectors of 8 lanes: one AVX2 register each (gcc lowers a
 * comparison of vectors wider than the target's registers to scalar code). */
typedef float numpyllm_v8f __attribute__((vector_size(32)));
typedef int32_t numpyllm_v8i __attribute__((vector_size(32)));

NUMPYLLM_CLONES
static float numpyllm_max_f32(const float *x, int n)
{
    const numpyllm_v8f neg_inf = {-INFINITY, -INFINITY, -INFINITY, -INFINITY,
                                  -INFINITY, -INFINITY, -INFINITY, -INFINITY};
    numpyllm_v8f max_lo = neg_inf, max_hi = neg_inf;
    int j = 0;
    for (; j + 16 <= n; j += 16) {
        numpyllm_v8f lo, hi;
        memcpy(&lo, x + j, sizeof lo);
        memcpy(&hi, x + j + 8, sizeof hi);
        numpyllm_v8i take_lo = lo > max_lo, take_hi = hi > max_hi; /* all ones where larger (never for NaN) */
        max_lo = (numpyllm_v8f)(((numpyllm_v8i)lo & take_lo) | ((numpyllm_v8i)max_lo & ~take_lo));
        max_hi = (numpyllm_v8f)(((numpyllm_v8i)hi & take_hi) | ((numpyllm_v8i)max_hi & ~take_hi));
    }
    float m = -INFINITY;
    for (; j < n; j++)
        m = x[j] > m ? x[j] : m;
    for (int l = 0; l < 8; l++) {
        m = max_lo[l] > m ? max_lo[l] : m;
        m = max_hi[l] > m ? max_hi[l] : m;
    }
    return m;
}

#endif
