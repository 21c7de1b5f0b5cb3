/* The products and the barrier of one decoding step (kernels/layers.pyx, DecodeStep).
 *
 * A step multiplies R (a few) rows by every weight matrix, so it is bound by reading the
 * weights: each thread computes the output columns [j0, j1) of y = x @ W (W row-major
 * (K, N)). One row streams 8 rows of W per pass over its whole column range: y[j0:j1] stays
 * in L1 and is loaded and stored once per 8 rows (AMD EPYC Zen 3, the 6-layer C = 384 model's
 * products: 15-20% less time than 4 rows per pass in L1-sized column tiles, one thread or
 * two; 16 rows per pass was 50% slower). More rows (a prompt, a batch) go in column tiles
 * that keep 4 rows of W in L1 while pairs of rows of x share each load. The tied head's
 * logits = x @ tableᵀ as dot products of table rows (V, C). float32 sums are float32, as
 * BLAS's. Built with fastexp.h's `target_clones`, so the column loops get AVX2 / AVX-512
 * without -march.
 *
 * numpyllm_spin_wait: the threads of the step's one parallel region meet at this barrier
 * between dependent phases, five times a layer. OpenMP's own barrier sleeps on a futex
 * under OMP_WAIT_POLICY=PASSIVE (which numpyllm sets); this one spins on an atomic (sense
 * reversal, a pause per probe) and calls sched_yield after NUMPYLLM_SPIN_PROBES probes, for
 * a descheduled partner on a busy machine. (AMD EPYC, 2 threads, 2 layers of C = 384: best
 * steps 0.74-0.98 ms spinning, 0.91-1.43 ms with OpenMP's barrier; in a C loop of the same
 * products the 8 spin barriers a token cost nothing measurable.)
 */
#ifndef NUMPYLLM_DECODE_H
#define NUMPYLLM_DECODE_H

#include "rows.h"

#if defined(_OPENMP)
#include <omp.h>
#endif

#define NUMPYLLM_DECODE_L1_BYTES 16384 /* the y tile and 4 rows of W kept in L1 per pass */

/* y[j0:j1] += Σ_k x[k] · w[k, j0:j1]; x (K,), w (K, N), y (N,) C-contiguous. */
#define NUMPYLLM_ROWS_TIMES(T, SUFFIX)                                                              \
    NUMPYLLM_CLONES                                                                                 \
    static void numpyllm_row_times_##SUFFIX(const T *x, long K, const T *w, long N, T *y,           \
                                            long j0, long j1)                                       \
    {                                                                                               \
        long k = 0;                                                                                 \
        for (; k + 8 <= K; k += 8) {                                                                \
            const T *__restrict w0 = w + k * N;                                                     \
            const T a0 = x[k], a1 = x[k + 1], a2 = x[k + 2], a3 = x[k + 3];                         \
            const T a4 = x[k + 4], a5 = x[k + 5], a6 = x[k + 6], a7 = x[k + 7];                     \
            T *__restrict yr = y;                                                                   \
            for (long j = j0; j < j1; j++)                                                          \
                yr[j] += ((a0 * w0[j] + a1 * w0[j + N]) + (a2 * w0[j + 2 * N] + a3 * w0[j + 3 * N])) \
                       + ((a4 * w0[j + 4 * N] + a5 * w0[j + 5 * N]) + (a6 * w0[j + 6 * N] + a7 * w0[j + 7 * N])); \
        }                                                                                           \
        for (; k < K; k++) {                                                                        \
            const T *__restrict w0 = w + k * N;                                                     \
            T *__restrict yr = y;                                                                   \
            for (long j = j0; j < j1; j++)                                                          \
                yr[j] += x[k] * w0[j];                                                              \
        }                                                                                           \
    }                                                                                               \
    /* y[r, j0:j1] += Σ_k x[r, k] · w[k, j0:j1] for r < B; x (B, K), w (K, N), y (B, N) C-contiguous. */ \
    NUMPYLLM_CLONES                                                                                 \
    static void numpyllm_rows_times_##SUFFIX(const T *x, long B, long K, const T *w, long N, T *y,  \
                                             long j0, long j1)                                      \
    {                                                                                               \
        if (B == 1) {                                                                               \
            numpyllm_row_times_##SUFFIX(x, K, w, N, y, j0, j1);                                     \
            return;                                                                                 \
        }                                                                                           \
        long tile = (NUMPYLLM_DECODE_L1_BYTES / (long)sizeof(T)) / (B + 4) / 16 * 16;               \
        if (tile < 16)                                                                              \
            tile = 16;                                                                              \
        for (long jt = j0; jt < j1; jt += tile) {                                                   \
            long n = j1 - jt < tile ? j1 - jt : tile;                                               \
            long k = 0;                                                                             \
            for (; k + 4 <= K; k += 4) {                                                            \
                const T *__restrict w0 = w + k * N + jt, *__restrict w1 = w0 + N;                   \
                const T *__restrict w2 = w1 + N, *__restrict w3 = w2 + N;                           \
                long r = 0;                                                                         \
                for (; r + 2 <= B; r += 2) { /* two rows: each load of w feeds both */              \
                    const T *xr = x + r * K + k, *xs = xr + K;                                      \
                    const T a0 = xr[0], a1 = xr[1], a2 = xr[2], a3 = xr[3];                         \
                    const T b0 = xs[0], b1 = xs[1], b2 = xs[2], b3 = xs[3];                         \
                    T *__restrict yr = y + r * N + jt, *__restrict ys = yr + N;                     \
                    for (long j = 0; j < n; j++) {                                                  \
                        const T v0 = w0[j], v1 = w1[j], v2 = w2[j], v3 = w3[j];                     \
                        yr[j] += (a0 * v0 + a1 * v1) + (a2 * v2 + a3 * v3);                         \
                        ys[j] += (b0 * v0 + b1 * v1) + (b2 * v2 + b3 * v3);                         \
                    }                                                                               \
                }                                                                                   \
                for (; r < B; r++) {                                                                \
                    const T *xr = x + r * K + k;                                                    \
                    const T a0 = xr[0], a1 = xr[1], a2 = xr[2], a3 = xr[3];                         \
                    T *__restrict yr = y + r * N + jt;                                              \
                    for (long j = 0; j < n; j++)                                                    \
                        yr[j] += (a0 * w0[j] + a1 * w1[j]) + (a2 * w2[j] + a3 * w3[j]);             \
                }                                                                                   \
            }                                                                                       \
            for (; k < K; k++) {                                                                    \
                const T *__restrict w0 = w + k * N + jt;                                              \
                for (long r = 0; r < B; r++) {                                                      \
                    const T a0 = x[r * K + k];                                                      \
                    T *__restrict yr = y + r * N + jt;                                                \
                    for (long j = 0; j < n; j++)                                                    \
                        yr[j] += a0 * w0[j];                                                        \
                }                                                                                   \
            }                                                                                       \
        }                                                                                           \
    }

/* y[r, v] = Σ_c x[r, c] · table[v, c] for r < B, v in [v0, v1); x (B, C), table (V, C), y (B, V). */
#define NUMPYLLM_ROWS_DOT_TABLE(T, SUFFIX)                                                          \
    NUMPYLLM_CLONES                                                                                 \
    static void numpyllm_rows_dot_table_##SUFFIX(const T *x, long B, long C, const T *table, long V,\
                                                 T *y, long v0, long v1)                            \
    {                                                                                               \
        for (long v = v0; v < v1; v++) {                                                            \
            const T *__restrict t = table + v * C;                                                    \
            for (long r = 0; r < B; r++) {                                                          \
                const T *__restrict xr = x + r * C;                                                   \
                T lane[NUMPYLLM_ROW_LANES] = {0};                                                   \
                long c = 0;                                                                         \
                for (; c + NUMPYLLM_ROW_LANES <= C; c += NUMPYLLM_ROW_LANES)                        \
                    for (int l = 0; l < NUMPYLLM_ROW_LANES; l++)                                    \
                        lane[l] += xr[c + l] * t[c + l];                                            \
                T total = 0;                                                                        \
                for (; c < C; c++)                                                                  \
                    total += xr[c] * t[c];                                                          \
                for (int l = 0; l < NUMPYLLM_ROW_LANES; l++)                                        \
                    total += lane[l];                                                               \
                y[r * V + v] = total;                                                               \
            }                                                                                       \
        }                                                                                           \
    }

NUMPYLLM_ROWS_TIMES(float, f32)
NUMPYLLM_ROWS_TIMES(double, f64)
NUMPYLLM_ROWS_DOT_TABLE(float, f32)
NUMPYLLM_ROWS_DOT_TABLE(double, f64)

/* A sense-reversing barrier for the n threads of one region. The struct starts zeroed;
 * each thread keeps its own sense (starting 0) across waits. */
typedef struct {
    int count;
    int sense;
} numpyllm_barrier;

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define NUMPYLLM_PAUSE() __builtin_ia32_pause()
#else
#define NUMPYLLM_PAUSE() ((void)0)
#endif

#if defined(__GNUC__) && !defined(NUMPYLLM_OMP_BARRIER)
#include <sched.h>
#ifndef NUMPYLLM_SPIN_PROBES
#define NUMPYLLM_SPIN_PROBES 2000 /* before yielding: ~60 µs of pauses on a Zen 3 (28 ns each) */
#endif

static inline void numpyllm_spin_wait(numpyllm_barrier *b, int *local_sense, int n)
{
    if (n <= 1)
        return;
    int sense = !*local_sense;
    *local_sense = sense;
    if (__atomic_add_fetch(&b->count, 1, __ATOMIC_ACQ_REL) == n) {
        __atomic_store_n(&b->count, 0, __ATOMIC_RELAXED); /* nobody touches it before the release */
        __atomic_store_n(&b->sense, sense, __ATOMIC_RELEASE);
        return;
    }
    for (long probes = 0; __atomic_load_n(&b->sense, __ATOMIC_ACQUIRE) != sense; probes++) {
        if (probes < NUMPYLLM_SPIN_PROBES)
            NUMPYLLM_PAUSE();
        else
            sched_yield();
    }
}
#else /* no GCC atomics (or NUMPYLLM_OMP_BARRIER defined): OpenMP's own barrier */
static inline void numpyllm_spin_wait(numpyllm_barrier *b, int *local_sense, int n)
{
    (void)b;
    (void)local_sense;
#if defined(_OPENMP)
    if (n > 1) {
#pragma omp barrier
    }
#else
    (void)n;
#endif
}
#endif

#endif
