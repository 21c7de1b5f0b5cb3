/* Row reductions and float32 GELU loops of the layer kernels (kernels/layers.pyx), written so
 * compilers vectorize them.
 *
 * Without -ffast-math (never: it breaks NaN propagation and the -inf masks) a compiler
 * must add floating-point numbers in the order written, so `s += x[j]` is one long
 * dependency chain that no vector unit can help. These sums keep NUMPYLLM_ROW_LANES
 * independent partial sums instead, which the compiler packs into vector registers, and
 * add them at the end: the result is a sum in another order, equally accurate (better:
 * float32 terms are added in double). fastexp.h's `target_clones` (gcc, x86-64) builds AVX-512,
 * AVX2 + FMA, AVX2 and baseline copies and picks one when the extension loads, so no -march
 * flag is needed.
 * The float32 GELU loops are here for the same clones: without them a compiler targets
 * SSE2 only, and GELU is the one compute-bound element-wise pass of a training step.
 * libm's tanhf and erfcf are scalar calls, so float32 builds both from fastexp.h's exp.
 */
#ifndef NUMPYLLM_ROWS_H
#define NUMPYLLM_ROWS_H

#include <math.h>

#include "fastexp.h"

#define NUMPYLLM_ROW_LANES 16

/* Σ_j a[j] · b[j] and Σ_j (a[j] - shift)² for j < n, in double, for one element type.
 * (float32's plain sum and max are fastexp.h's; float64's are below.) */
#define NUMPYLLM_ROW_REDUCTIONS(T, SUFFIX)                                              \
    NUMPYLLM_CLONES                                                                     \
    static double numpyllm_row_dot_##SUFFIX(const T *a, const T *b, long n)             \
    {                                                                                   \
        double lane[NUMPYLLM_ROW_LANES] = {0};                                          \
        long j = 0;                                                                     \
        for (; j + NUMPYLLM_ROW_LANES <= n; j += NUMPYLLM_ROW_LANES)                    \
            for (int l = 0; l < NUMPYLLM_ROW_LANES; l++)                                \
                lane[l] += (double)a[j + l] * (double)b[j + l];                         \
        double total = 0.0;                                                             \
        for (; j < n; j++)                                                              \
            total += (double)a[j] * (double)b[j];                                       \
        for (int l = 0; l < NUMPYLLM_ROW_LANES; l++)                                    \
            total += lane[l];                                                           \
        return total;                                                                   \
    }                                                                                   \
    NUMPYLLM_CLONES                                                                     \
    static double numpyllm_row_sumsq_dev_##SUFFIX(const T *a, long n, double shift)     \
    {                                                                                   \
        double lane[NUMPYLLM_ROW_LANES] = {0};                                          \
        long j = 0;                                                                     \
        for (; j + NUMPYLLM_ROW_LANES <= n; j += NUMPYLLM_ROW_LANES)                    \
            for (int l = 0; l < NUMPYLLM_ROW_LANES; l++) {                              \
                double d = (double)a[j + l] - shift;                                    \
                lane[l] += d * d;                                                       \
            }                                                                           \
        double total = 0.0;                                                             \
        for (; j < n; j++) {                                                            \
            double d = (double)a[j] - shift;                                            \
            total += d * d;                                                             \
        }                                                                               \
        for (int l = 0; l < NUMPYLLM_ROW_LANES; l++)                                    \
            total += lane[l];                                                           \
        return total;                                                                   \
    }

NUMPYLLM_ROW_REDUCTIONS(float, f32)
NUMPYLLM_ROW_REDUCTIONS(double, f64)

/* Σ_j a[j] and max_j a[j] (-inf when n == 0; NaNs skipped) of float64 rows. */
NUMPYLLM_CLONES
static double numpyllm_row_sum_f64(const double *a, long n)
{
    double lane[NUMPYLLM_ROW_LANES] = {0};
    long j = 0;
    for (; j + NUMPYLLM_ROW_LANES <= n; j += NUMPYLLM_ROW_LANES)
        for (int l = 0; l < NUMPYLLM_ROW_LANES; l++)
            lane[l] += a[j + l];
    double total = 0.0;
    for (; j < n; j++)
        total += a[j];
    for (int l = 0; l < NUMPYLLM_ROW_LANES; l++)
        total += lane[l];
    return total;
}

NUMPYLLM_CLONES
static double numpyllm_row_max_f64(const double *a, long n)
{
    double m = -INFINITY;
    for (long j = 0; j < n; j++)
        m = a[j] > m ? a[j] : m;
    return m;
}

/* GPT-2's GELU, y = x (1 + tanh u) / 2 with u = √(2/π) (x + 0.044715 x³), for j < n; saves
 * tanh u. With e = exp(-2u): 1 + tanh u = 2 / (1 + e), which does not cancel for negative x
 * (and e = inf gives 0), and tanh u = 2 / (1 + e) - 1. */
NUMPYLLM_CLONES
static void numpyllm_gelu_tanh_f32(const float *restrict x, float *restrict y, float *restrict tanh_u, long n)
{
    for (long j = 0; j < n; j++) {
        float xj = x[j];
        float u = 0.7978845608f * (xj + 0.044715f * xj * xj * xj);
        float one_plus_tanh = 2.0f / (1.0f + numpyllm_expf(-2.0f * u));
        tanh_u[j] = one_plus_tanh - 1.0f;
        y[j] = 0.5f * xj * one_plus_tanh;
    }
}

/* Its derivative: dx = dy [(1 + t) + x (1 - t²) √(2/π) (1 + 3 · 0.044715 x²)] / 2, t = tanh u. */
NUMPYLLM_CLONES
static void numpyllm_gelu_tanh_backward_f32(const float *restrict dy, const float *restrict x,
                                            const float *restrict tanh_u, float *restrict dx, long n)
{
    for (long j = 0; j < n; j++) {
        float xj = x[j], t = tanh_u[j];
        float du_dx = 0.7978845608f * (1.0f + 0.134145f * xj * xj);
        dx[j] = 0.5f * dy[j] * ((1.0f + t) + xj * (1.0f - t * t) * du_dx);
    }
}

/* The exact GELU, y = x Φ(x), for j < n; saves Φ(x). The tail Q = Φ(-|x|) is Abramowitz and
 * Stegun's 7.1.26 for erfc(z), z = |x| / √2: erfc(z) = poly(t) exp(-z²), t = 1 / (1 + 0.3275911 z),
 * with absolute error below 1.5e-7 / 2 on Φ (about one float32 ulp of 1); Φ(x) = 1 - Q for x >= 0. */
NUMPYLLM_CLONES
static void numpyllm_gelu_erf_f32(const float *restrict x, float *restrict y, float *restrict cdf, long n)
{
    for (long j = 0; j < n; j++) {
        float xj = x[j];
        float z = fabsf(xj) * 0.70710678f;
        float t = 1.0f / (1.0f + 0.3275911f * z);
        float poly = t * (0.254829592f + t * (-0.284496736f + t * (1.421413741f
                     + t * (-1.453152027f + t * 1.061405429f))));
        float tail = 0.5f * poly * numpyllm_expf(-z * z);
        float phi = xj >= 0.0f ? 1.0f - tail : tail;
        phi = xj != xj ? xj : phi; /* NaN stays NaN */
        cdf[j] = phi;
        y[j] = xj * phi;
    }
}

/* Its derivative: dx = dy (Φ(x) + x φ(x)), φ(x) = exp(-x²/2) / √(2π). */
NUMPYLLM_CLONES
static void numpyllm_gelu_erf_backward_f32(const float *restrict dy, const float *restrict x,
                                           const float *restrict cdf, float *restrict dx, long n)
{
    for (long j = 0; j < n; j++) {
        float xj = x[j];
        dx[j] = dy[j] * (cdf[j] + xj * (numpyllm_expf(-0.5f * xj * xj) * 0.39894228f));
    }
}

/* acc[c] += row[c] for c < n: one row's share of a column sum (a bias gradient), in double. */
#define NUMPYLLM_ROW_ACCUMULATE(T, SUFFIX)                                                 \
    NUMPYLLM_CLONES                                                                        \
    static void numpyllm_row_accumulate_##SUFFIX(double *restrict acc, const T *restrict row, long n) \
    {                                                                                      \
        for (long c = 0; c < n; c++)                                                       \
            acc[c] += (double)row[c];                                                      \
    }
NUMPYLLM_ROW_ACCUMULATE(float, f32)
NUMPYLLM_ROW_ACCUMULATE(double, f64)

/* A layernorm backward row (kernels/layers.pyx's _layernorm_backward_row), in two passes around
 * its two row sums: first x̂ = (x - mean) · rstd and g = dy · w; then
 * dx = (g - mean(g) - x̂ · mean(g · x̂)) · rstd, adding dy · x̂ and dy to this thread's dweight and
 * dbias accumulators (double). Here for the clones: Cython's own loops get SSE2 only. */
#define NUMPYLLM_LAYERNORM_BACKWARD(T, SUFFIX)                                             \
    NUMPYLLM_CLONES                                                                        \
    static void numpyllm_layernorm_backward_prepare_##SUFFIX(                              \
        const T *restrict dy, const T *restrict x, const T *restrict w, T mean, T rstd,    \
        T *restrict x_hat, T *restrict g, long n)                                          \
    {                                                                                      \
        for (long c = 0; c < n; c++) {                                                     \
            x_hat[c] = (x[c] - mean) * rstd;                                               \
            g[c] = dy[c] * w[c];                                                           \
        }                                                                                  \
    }                                                                                      \
    NUMPYLLM_CLONES                                                                        \
    static void numpyllm_layernorm_backward_finish_##SUFFIX(                               \
        const T *restrict dy, const T *restrict x_hat, const T *restrict g, T mean_g,      \
        T mean_g_x_hat, T rstd, T *restrict dx, double *restrict dw_acc,                   \
        double *restrict db_acc, long n)                                                   \
    {                                                                                      \
        for (long c = 0; c < n; c++) {                                                     \
            dx[c] = (g[c] - mean_g - x_hat[c] * mean_g_x_hat) * rstd;                      \
            dw_acc[c] += (double)dy[c] * (double)x_hat[c];                                 \
            db_acc[c] += (double)dy[c];                                                    \
        }                                                                                  \
    }
NUMPYLLM_LAYERNORM_BACKWARD(float, f32)
NUMPYLLM_LAYERNORM_BACKWARD(double, f64)

/* The AdamW step for j < n, in T's precision, in optim.py's order of operations:
 *     p ← p · decay;  m ← β₁ m + (1 - β₁) g;  v ← β₂ v + (1 - β₂) g²;
 *     p ← p - step_size · m / (√v / √(1 - β₂ᵗ) + ε)
 * errno is never read, so sqrt may compile to the vector instruction (no -ffast-math). */
#define NUMPYLLM_ADAMW(T, SUFFIX, SQRT)                                                    \
    NUMPYLLM_CLONES __attribute__((optimize("no-math-errno")))                             \
    static void numpyllm_adamw_##SUFFIX(T *restrict p, const T *restrict g, T *restrict m,  \
                                        T *restrict v, long n, T decay, T beta1, T beta2,  \
                                        T one_minus_beta1, T one_minus_beta2, T step_size, \
                                        T sqrt_bias_correction2, T eps)                    \
    {                                                                                      \
        for (long j = 0; j < n; j++) {                                                     \
            T gj = g[j];                                                                   \
            T mj = beta1 * m[j] + one_minus_beta1 * gj;                                    \
            T vj = beta2 * v[j] + one_minus_beta2 * (gj * gj);                             \
            m[j] = mj;                                                                     \
            v[j] = vj;                                                                     \
            p[j] = p[j] * decay - step_size * (mj / (SQRT(vj) / sqrt_bias_correction2 + eps)); \
        }                                                                                  \
    }
NUMPYLLM_ADAMW(float, f32, sqrtf)
NUMPYLLM_ADAMW(double, f64, sqrt)

#endif
