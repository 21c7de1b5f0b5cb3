/* float32 matrix products for the linear layers on AVX-512 CPUs: C = A B (+ bias), BLIS's
 * loop structure around a register block of C.
 *
 *   numpyllm_sgemm(M, N, K, a, a_row, a_col, b, b_row, b_col, c, ldc, bias, n_threads)
 *       C (M × N) = A B + bias,  A[i, p] = a[i·a_row + p·a_col],  B[p, j] = b[p·b_row + j·b_col],
 *       C's rows ldc floats apart, bias (N,) or NULL; returns 0, or -1 when out of memory.
 *
 * Any element strides, so xᵀ and Wᵀ enter as they lie. The reduction over p is cut into blocks
 * of at most KC (of equal length), and for each block:
 *   - B's rows of the block are packed into strips of NR = 64 columns (KC × 64 floats each,
 *     NC columns of strips at a time: 0.75 MB that stays in the 2 MB L2 of the Xeon);
 *   - A's rows are read in place when its rows are contiguous (x @ W, dy @ Wᵀ), or packed into
 *     panels of MR = 6 rows when its columns are (xᵀ dy);
 *   - every 6 × 64 block of C is 24 zmm accumulators: per step of p, one load of each B
 *     vector, one broadcast of each A element, 24 FMAs; C is written (with the bias) after
 *     the first block of p and accumulated after the others.
 * Threads split C into bands of rows (when M >= N) or of columns, and each runs that band's
 * whole product with its own packed buffers: no barrier, and the duplicated packing of the
 * shared operand is 1/M_band (or 1/N_band) of the work. A sum over p runs in the order
 * p = 0, 1, ... in float32 within a block, as a BLAS's does; results differ from BLAS's by
 * rounding only.
 *
 * On the Intel Xeon (Sapphire Rapids, 2 cores, 130 GFLOP/s a core for a register-only FMA
 * loop) the 15 product shapes of benchmarks.model's step took 231 ms against 257 ms for NumPy's
 * OpenBLAS 0.3.31 (SkylakeX kernels) in the same process. On an AMD EPYC Zen 4 (whose 512-bit
 * FMAs run as two 256-bit halves) they took 237 ms against OpenBLAS's 243 ms, each product
 * timed alone; inside a step, where no OpenBLAS pool wakes beside the kernels' OpenMP threads,
 * the GPT step took 1171 ms against 1606 ms with OpenBLAS's products (medians, alternated).
 *
 * Built only for x86-64 with GCC or clang; `numpyllm_gemm_available()` says whether this CPU
 * has AVX-512F and AVX-512VL (elsewhere the linear layers keep NumPy's BLAS).
 */
#ifndef NUMPYLLM_GEMM_H
#define NUMPYLLM_GEMM_H

#include <stddef.h>

#include "avx512.h"

#ifdef NUMPYLLM_AVX512_BUILD
#include <pthread.h>
#include <stdlib.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define NUMPYLLM_GEMM_MR 6                            /* rows of a register block of C */
#define NUMPYLLM_GEMM_NV 4                            /* its 16-float vectors: 64 columns */
#define NUMPYLLM_GEMM_NR (16 * NUMPYLLM_GEMM_NV)
#define NUMPYLLM_GEMM_KC 384                          /* longest block of the reduction */
#define NUMPYLLM_GEMM_NC 512                          /* columns of B packed at a time */
#define NUMPYLLM_GEMM_GROUP 16                        /* A panels packed together from a transposed A */
#define NUMPYLLM_GEMM_PREFETCH 16                     /* rows ahead fetched while packing a transposed A */
#define NUMPYLLM_GEMM_MAX_THREADS 256
_Static_assert(NUMPYLLM_GEMM_NC % NUMPYLLM_GEMM_NR == 0, "B is packed NC columns at a time, whole strips of NR");

#define NUMPYLLM_GEMM_TARGET __attribute__((target("avx512f,avx512vl")))
#define NUMPYLLM_GEMM_INLINE static inline __attribute__((always_inline, target("avx512f,avx512vl")))

static int numpyllm_gemm_available(void) { return numpyllm_cpu_has_avx512(1); }

/* One MR × NR block of C from kc steps of p: A[r, p] = a[r·a_row + p·a_col] (in place or a packed
 * panel), B's strip bp (kc × NR). Stores the first `rows` rows and `cols` columns of the block:
 * C = acc + bias (bias NULL: 0) when `accumulate` is 0, C += acc otherwise. */
NUMPYLLM_GEMM_INLINE void numpyllm_gemm_block(ptrdiff_t kc, const float* a, ptrdiff_t a_row, ptrdiff_t a_col,
                                              const float* bp, float* c, ptrdiff_t ldc, ptrdiff_t rows,
                                              ptrdiff_t cols, int accumulate, const float* bias)
{
    enum { MR = NUMPYLLM_GEMM_MR, NV = NUMPYLLM_GEMM_NV, NR = NUMPYLLM_GEMM_NR };
    __m512 acc[MR][NV];
    if (accumulate)  /* C's lines arrive while the block computes */
        for (int r = 0; r < MR && r < rows; r++)
            for (int v = 0; v < NV; v++) _mm_prefetch((const char*)(c + r * ldc + 16 * v), _MM_HINT_T0);
    for (int r = 0; r < MR; r++)
        for (int v = 0; v < NV; v++) acc[r][v] = _mm512_setzero_ps();
    #pragma GCC unroll 4  /* fewer loop-counter uops beside the FMAs: 1-5% faster */
    for (ptrdiff_t p = 0; p < kc; p++) {
        __m512 b[NV];
        for (int v = 0; v < NV; v++) b[v] = _mm512_load_ps(bp + p * NR + 16 * v);
        for (int r = 0; r < MR; r++) {
            __m512 a_rp = _mm512_set1_ps(a[r * a_row + p * a_col]);
            for (int v = 0; v < NV; v++) acc[r][v] = _mm512_fmadd_ps(a_rp, b[v], acc[r][v]);
        }
    }
    __mmask16 mask[NV];
    __m512 add[NV];
    for (int v = 0; v < NV; v++) {
        mask[v] = numpyllm_lanes(cols - 16 * v);
        add[v] = bias && !accumulate ? _mm512_maskz_loadu_ps(mask[v], bias + 16 * v) : _mm512_setzero_ps();
    }
    for (int r = 0; r < MR && r < rows; r++)
        for (int v = 0; v < NV; v++) {
            float* dst = c + r * ldc + 16 * v;
            __m512 old = accumulate ? _mm512_maskz_loadu_ps(mask[v], dst) : add[v];
            _mm512_mask_storeu_ps(dst, mask[v], _mm512_add_ps(old, acc[r][v]));
        }
}

/* Pack rows [0, rows) and reduction steps [0, kc) of A into panels of MR rows: panel i0 holds
 * A[i0 + r, p] at ap[i0·kc + p·MR + r], zeros past the last row. */
NUMPYLLM_GEMM_TARGET static void numpyllm_gemm_pack_a(ptrdiff_t rows, ptrdiff_t kc, const float* a, ptrdiff_t a_row,
                                                      ptrdiff_t a_col, float* ap)
{
    enum { MR = NUMPYLLM_GEMM_MR, GROUP = NUMPYLLM_GEMM_GROUP, AHEAD = NUMPYLLM_GEMM_PREFETCH };
    const __mmask8 panel_lanes = (__mmask8)((1u << MR) - 1u);
    /* A group of panels at a time: each step over p reads one run of A's column p (a row of X
     * when A = Xᵀ) and appends to every panel of the group; rows far apart are fetched ahead. */
    for (ptrdiff_t g0 = 0; g0 < rows; g0 += GROUP * MR) {
        ptrdiff_t g1 = g0 + GROUP * MR < rows ? g0 + GROUP * MR : rows;
        for (ptrdiff_t p = 0; p < kc; p++) {
            const float* column = a + p * a_col;
            if (a_row == 1 && p + AHEAD < kc)
                for (ptrdiff_t i = g0; i < g1; i += 16) _mm_prefetch((const char*)(column + AHEAD * a_col + i), _MM_HINT_T0);
            for (ptrdiff_t i0 = g0; i0 < g1; i0 += MR) {
                float* dst = ap + i0 * kc + p * MR;
                ptrdiff_t mr = g1 - i0 < MR ? g1 - i0 : MR;
                if (mr == MR && a_row == 1) {
                    _mm256_mask_storeu_ps(dst, panel_lanes, _mm256_maskz_loadu_ps(panel_lanes, column + i0));
                } else {
                    ptrdiff_t r = 0;
                    for (; r < mr; r++) dst[r] = column[(i0 + r) * a_row];
                    for (; r < MR; r++) dst[r] = 0.0f;
                }
            }
        }
    }
}

/* Pack steps [0, kc) and columns [0, cols) of B into strips of NR columns: strip j0 holds
 * B[p, j0 + j] at bp[j0·kc + p·NR + j], zeros past the last column. */
NUMPYLLM_GEMM_TARGET static void numpyllm_gemm_pack_b(ptrdiff_t kc, ptrdiff_t cols, const float* b, ptrdiff_t b_row,
                                                      ptrdiff_t b_col, float* bp)
{
    enum { NV = NUMPYLLM_GEMM_NV, NR = NUMPYLLM_GEMM_NR };
    if (b_col == 1) {  /* row by row: one contiguous run of B's row p feeds row p of every strip */
        ptrdiff_t full = cols / NR * NR;
        for (ptrdiff_t p = 0; p < kc; p++) {
            const float* row = b + p * b_row;
            for (ptrdiff_t j0 = 0; j0 < full; j0 += NR)
                for (int v = 0; v < NV; v++)
                    _mm512_store_ps(bp + j0 * kc + p * NR + 16 * v, _mm512_loadu_ps(row + j0 + 16 * v));
            if (full < cols)
                for (int v = 0; v < NV; v++)
                    _mm512_store_ps(bp + full * kc + p * NR + 16 * v,
                                    _mm512_maskz_loadu_ps(numpyllm_lanes(cols - full - 16 * v), row + full + 16 * v));
        }
        return;
    }
    /* Strided rows (B = Wᵀ: b_row == 1): 32 steps of p at a time, so the part of the strip being
     * written stays in L1 while each column j is read along p. */
    for (ptrdiff_t j0 = 0; j0 < cols; j0 += NR) {
        ptrdiff_t nr = cols - j0 < NR ? cols - j0 : NR;
        float* dst = bp + j0 * kc;
        for (ptrdiff_t q0 = 0; q0 < kc; q0 += 32) {
            ptrdiff_t q1 = q0 + 32 < kc ? q0 + 32 : kc;
            for (ptrdiff_t j = 0; j < nr; j++) {
                const float* column = b + (j0 + j) * b_col;
                for (ptrdiff_t p = q0; p < q1; p++) dst[p * NR + j] = column[p * b_row];
            }
        }
        for (ptrdiff_t p = 0; p < kc; p++)
            for (ptrdiff_t j = nr; j < NR; j++) dst[p * NR + j] = 0.0f;
    }
}

/* One thread's band: C (M × N) = A B + bias with its own buffers ap (round_up(M, MR) × kc, or MR × kc
 * when A's rows are read in place) and bp (min(round_up(N, NR), NC) × kc). */
NUMPYLLM_GEMM_TARGET static void numpyllm_gemm_band(ptrdiff_t M, ptrdiff_t N, ptrdiff_t K, const float* a,
                                                    ptrdiff_t a_row, ptrdiff_t a_col, const float* b, ptrdiff_t b_row,
                                                    ptrdiff_t b_col, float* c, ptrdiff_t ldc, const float* bias,
                                                    float* ap, float* bp)
{
    enum { MR = NUMPYLLM_GEMM_MR, NR = NUMPYLLM_GEMM_NR, NC = NUMPYLLM_GEMM_NC };
    ptrdiff_t n_blocks = (K + NUMPYLLM_GEMM_KC - 1) / NUMPYLLM_GEMM_KC;
    ptrdiff_t block = (K + n_blocks - 1) / n_blocks;
    int in_place = a_col == 1;  /* A's rows contiguous: its elements are broadcast straight from them */
    for (ptrdiff_t p0 = 0; p0 < K; p0 += block) {
        ptrdiff_t kc = K - p0 < block ? K - p0 : block;
        int accumulate = p0 > 0;
        if (!in_place) numpyllm_gemm_pack_a(M, kc, a + p0 * a_col, a_row, a_col, ap);
        for (ptrdiff_t j0 = 0; j0 < N; j0 += NC) {
            ptrdiff_t nc = N - j0 < NC ? N - j0 : NC;
            const float* bias_j0 = bias && !accumulate ? bias + j0 : NULL;
            numpyllm_gemm_pack_b(kc, nc, b + p0 * b_row + j0 * b_col, b_row, b_col, bp);
            for (ptrdiff_t i = 0; i < M; i += MR) {
                float* c_i = c + i * ldc + j0;
                if (in_place && M - i >= MR) {
                    for (ptrdiff_t j = 0; j < nc; j += NR)
                        numpyllm_gemm_block(kc, a + i * a_row + p0, a_row, 1, bp + j * kc, c_i + j, ldc, MR, nc - j,
                                            accumulate, bias_j0 ? bias_j0 + j : NULL);
                } else {
                    const float* panel = ap + i * kc;
                    if (in_place) {  /* the last, partial panel: packed, so no row past M is read */
                        numpyllm_gemm_pack_a(M - i, kc, a + i * a_row + p0, a_row, 1, ap);
                        panel = ap;
                    }
                    for (ptrdiff_t j = 0; j < nc; j += NR)
                        numpyllm_gemm_block(kc, panel, 1, MR, bp + j * kc, c_i + j, ldc, M - i, nc - j, accumulate,
                                            bias_j0 ? bias_j0 + j : NULL);
                }
            }
        }
    }
}

/* Packing buffers kept between calls (allocating a megabyte each call would fault its pages in
 * every time), one pair per thread, guarded by a lock: one product at a time per process. */
static pthread_mutex_t numpyllm_gemm_lock = PTHREAD_MUTEX_INITIALIZER;
static float* numpyllm_gemm_buffers[NUMPYLLM_GEMM_MAX_THREADS][2];
static size_t numpyllm_gemm_buffer_bytes[NUMPYLLM_GEMM_MAX_THREADS][2];

static float* numpyllm_gemm_buffer(int thread, int which, size_t floats)
{
    size_t bytes = (floats * sizeof(float) + 63) / 64 * 64;
    if (numpyllm_gemm_buffer_bytes[thread][which] < bytes) {
        free(numpyllm_gemm_buffers[thread][which]);
        numpyllm_gemm_buffers[thread][which] = aligned_alloc(64, bytes);
        numpyllm_gemm_buffer_bytes[thread][which] = numpyllm_gemm_buffers[thread][which] ? bytes : 0;
    }
    return numpyllm_gemm_buffers[thread][which];
}

/* C (M × N) = A B + bias on up to n_threads threads (see the top of this file); M, N, K >= 1. */
static int numpyllm_sgemm(ptrdiff_t M, ptrdiff_t N, ptrdiff_t K, const float* a, ptrdiff_t a_row, ptrdiff_t a_col,
                          const float* b, ptrdiff_t b_row, ptrdiff_t b_col, float* c, ptrdiff_t ldc,
                          const float* bias, int n_threads)
{
    enum { MR = NUMPYLLM_GEMM_MR, NR = NUMPYLLM_GEMM_NR, NC = NUMPYLLM_GEMM_NC };
    int by_rows = M >= N;
    ptrdiff_t unit = by_rows ? MR : NR, extent = by_rows ? M : N;
    ptrdiff_t units = (extent + unit - 1) / unit;
    ptrdiff_t kc = (K + (K + NUMPYLLM_GEMM_KC - 1) / NUMPYLLM_GEMM_KC - 1) / ((K + NUMPYLLM_GEMM_KC - 1) / NUMPYLLM_GEMM_KC);
    int failed = 0;
    if (n_threads > units) n_threads = (int)units;
    if (n_threads > NUMPYLLM_GEMM_MAX_THREADS) n_threads = NUMPYLLM_GEMM_MAX_THREADS;
    if (n_threads < 1) n_threads = 1;
    pthread_mutex_lock(&numpyllm_gemm_lock);
    #pragma omp parallel num_threads(n_threads) reduction(|| : failed)
    {
        int thread = 0, team = 1;
#ifdef _OPENMP
        thread = omp_get_thread_num();
        team = omp_get_num_threads();
#endif
        ptrdiff_t start = units * thread / team * unit, stop = units * (thread + 1) / team * unit;
        if (stop > extent) stop = extent;
        ptrdiff_t m = by_rows ? stop - start : M, n = by_rows ? N : stop - start;
        ptrdiff_t strip_columns = n < NC ? (n + NR - 1) / NR * NR : NC;
        ptrdiff_t panel_rows = a_col == 1 ? MR : (m + MR - 1) / MR * MR;  /* in place: only the last panel is packed */
        float* ap = numpyllm_gemm_buffer(thread, 0, (size_t)(panel_rows * kc));
        float* bp = numpyllm_gemm_buffer(thread, 1, (size_t)(strip_columns * kc));
        if (!ap || !bp)
            failed = 1;
        else if (stop > start) {
            if (by_rows)
                numpyllm_gemm_band(m, n, K, a + start * a_row, a_row, a_col, b, b_row, b_col, c + start * ldc, ldc,
                                   bias, ap, bp);
            else
                numpyllm_gemm_band(m, n, K, a, a_row, a_col, b + start * b_col, b_row, b_col, c + start, ldc,
                                   bias ? bias + start : NULL, ap, bp);
        }
    }
    pthread_mutex_unlock(&numpyllm_gemm_lock);
    return failed ? -1 : 0;
}

#else  /* not x86-64 GCC/clang: NumPy's BLAS runs the linear layers */

static int numpyllm_gemm_available(void) { return 0; }
static int numpyllm_sgemm(ptrdiff_t M, ptrdiff_t N, ptrdiff_t K, const float* a, ptrdiff_t a_row, ptrdiff_t a_col,
                          const float* b, ptrdiff_t b_row, ptrdiff_t b_col, float* c, ptrdiff_t ldc,
                          const float* bias, int n_threads)
{
    return -1;
}

#endif
#endif
