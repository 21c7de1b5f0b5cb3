/* The attention kernel's float32 tile work on AVX-512 CPUs: register-blocked tile products,
 * and the exp pass over a row of scores (numpyllm_exp_shift_rows_avx512, at the end).
 *
 * The attention kernel multiplies small tiles (up to 256 × 256 scores against d = 64 wide
 * rows) from its own threads. A BLAS call on such a tile packs both operands first, every
 * call. These two products keep a block of C in registers and stream the operands as they
 * lie; only the transposed operand of C = A Bᵀ is packed, into a panel the caller owns and
 * reuses for every tile of that key block; and a causal tile's hidden part is skipped. On the
 * Intel Xeon (Sapphire Rapids, 2 cores) the kernel took 0.65-0.77 of its time with OpenBLAS's
 * sgemm, the products running at 100-117 GFLOP/s a core (a register-only FMA loop: 110):
 *
 *   numpyllm_tile_abt_f32:  C (m × n)  = alpha · A Bᵀ,     A (m × k), B (n × k) packed by numpyllm_pack_bt_f32
 *   numpyllm_tile_acc_f32:  C (m × d) += alpha · op(A) B,  op(A)[r, p] = a[r·a_row + p·a_col],
 *                                                           B (p × d), d a multiple of 16
 *
 * Each block of C is (MR rows) × (16-float vectors), every vector an accumulator in a zmm
 * register: per step of the reduction, one load of each B vector, one broadcast of each A
 * element, MR·vectors FMAs. A sum over p runs in the order p = 0, 1, ... in float32, as a
 * BLAS's does; results differ from BLAS's by rounding only.
 *
 * Built only for x86-64 with GCC or clang; `numpyllm_tiles_available()` says whether this
 * CPU has AVX-512F (elsewhere the kernel keeps calling BLAS and fastexp.h).
 */
#ifndef NUMPYLLM_TILES_H
#define NUMPYLLM_TILES_H

/* Rows per block of C = A Bᵀ, and its width in vectors (64 columns): 24 accumulators. (12 × 2
 * and 4 × 4 were 5-10% slower on the Xeon, 14 × 2 a third slower.) A packed Bᵀ panel holds
 * round_up(n, NUMPYLLM_ABT_NC) columns (the kernel sizes its panels by it). */
#define NUMPYLLM_ABT_MR 6
#define NUMPYLLM_ABT_NV 4
#define NUMPYLLM_ABT_NC (16 * NUMPYLLM_ABT_NV)

#include "avx512.h"

#ifdef NUMPYLLM_AVX512_BUILD
#include <math.h>

#define NUMPYLLM_AVX512 __attribute__((target("avx512f")))
#define NUMPYLLM_INLINE_AVX512 static inline __attribute__((always_inline, target("avx512f")))

/* Rows per block of C += op(A) B, its width up to four vectors (64 columns): 24 accumulators. */
#define NUMPYLLM_ACC_MR 6
#define NUMPYLLM_ACC_CHUNK 128

static int numpyllm_tiles_available(void) { return numpyllm_cpu_has_avx512(0); }

/* The register block both products share: acc[r][v] = Σ_{p < n_red} op(A)[r, p] · B[p, 16v : 16v + 16]
 * for r < mr, v < nv, op(A)[r, p] = a[r·a_row + p·a_col], B's rows ldb floats apart. Inlined with
 * mr and nv constant, so acc lives in zmm registers. */
NUMPYLLM_INLINE_AVX512
void numpyllm_block_product(const int mr, const int nv, int n_red, const float *a, int a_row, int a_col,
                            const float *b, int ldb, __m512 acc[][4])
{
#pragma GCC unroll 6
    for (int r = 0; r < mr; r++)
#pragma GCC unroll 4
        for (int v = 0; v < nv; v++)
            acc[r][v] = _mm512_setzero_ps();
    for (int p = 0; p < n_red; p++) {
        __m512 bv[4];
        const float *a_p = a + (size_t)p * a_col;
#pragma GCC unroll 4
        for (int v = 0; v < nv; v++)
            bv[v] = _mm512_loadu_ps(b + (size_t)p * ldb + 16 * v);
#pragma GCC unroll 6
        for (int r = 0; r < mr; r++) {
            __m512 ar = _mm512_set1_ps(a_p[(size_t)r * a_row]);
#pragma GCC unroll 4
            for (int v = 0; v < nv; v++)
                acc[r][v] = _mm512_fmadd_ps(ar, bv[v], acc[r][v]);
        }
    }
}

/* One block: rows 0..mr-1 of C, NUMPYLLM_ABT_NC columns (those past n_cols not stored), from a
 * strip of Bᵀ (k rows of NUMPYLLM_ABT_NC floats). */
NUMPYLLM_INLINE_AVX512
void numpyllm_abt_block(const int mr, int k, float alpha, const float *a, int lda,
                        const float *strip, float *c, int ldc, int n_cols)
{
    __m512 acc[NUMPYLLM_ABT_MR][4];
    numpyllm_block_product(mr, NUMPYLLM_ABT_NV, k, a, lda, 1, strip, NUMPYLLM_ABT_NC, acc);
    __m512 scale = _mm512_set1_ps(alpha);
#pragma GCC unroll 6
    for (int r = 0; r < mr; r++)
#pragma GCC unroll 4
        for (int v = 0; v < NUMPYLLM_ABT_NV; v++)
            _mm512_mask_storeu_ps(c + (size_t)r * ldc + 16 * v, numpyllm_lanes(n_cols - 16 * v),
                                  _mm512_mul_ps(acc[r][v], scale));
}

/* Transpose a 16 × 16 block in registers: r[i] holds row i on entry, column i on return
 * (unpack pairs of rows, then shuffle 2-float, 4-float and 8-float groups). */
NUMPYLLM_INLINE_AVX512 void numpyllm_transpose_16x16(__m512 r[16])
{
    __m512 t[16];
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) {
        r[i] = _mm512_shuffle_ps(t[i], t[i + 2], 0x44);
        r[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], 0xEE);
        r[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0x44);
        r[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
    }
    for (int i = 0; i < 4; i++) {
        t[i] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0x88);
        t[i + 4] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0xDD);
        t[i + 8] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0x88);
        t[i + 12] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0xDD);
    }
    for (int i = 0; i < 4; i++) {
        r[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
        r[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xDD);
        r[i + 4] = _mm512_shuffle_f32x4(t[i + 4], t[i + 12], 0x88);
        r[i + 12] = _mm512_shuffle_f32x4(t[i + 4], t[i + 12], 0xDD);
    }
}

/* Bᵀ for numpyllm_tile_abt_f32: B (n × k, row stride ldb) as strips of NUMPYLLM_ABT_NC columns,
 * each strip k × NC contiguous (16 KB for k = 64, so it stays in L1 while every row block of A
 * passes it: a whole-width k × n panel's rows, 1 KB apart, fell into 4 of L1's 64 sets and evicted
 * each other), zero past column n. panel: room for k × round_up(n, NC) floats. The strip starting
 * at column j0 (a multiple of NC) is at panel + j0 · k, whatever n is. 16 rows × 16 steps of B at
 * a time, loaded as they lie and transposed in registers (4× faster than gathering each column's
 * 16 elements, on the AMD EPYC Zen 4 at k = 64). */
NUMPYLLM_AVX512
static void numpyllm_pack_bt_f32(int n, int k, const float *b, int ldb, float *panel)
{
    for (int j0 = 0; j0 < n; j0 += NUMPYLLM_ABT_NC) {
        float *strip = panel + (size_t)j0 * k;
        for (int v = 0; v < NUMPYLLM_ABT_NV; v++) {
            const int rows = n - j0 - 16 * v;  /* rows of B in this vector of the strip; past them: 0 */
            for (int p0 = 0; p0 < k; p0 += 16) {
                const __mmask16 steps = numpyllm_lanes(k - p0);
                __m512 r[16];
                for (int i = 0; i < 16; i++)
                    r[i] = i < rows ? _mm512_maskz_loadu_ps(steps, b + (size_t)(j0 + 16 * v + i) * ldb + p0)
                                    : _mm512_setzero_ps();
                numpyllm_transpose_16x16(r);
                for (int i = 0; i < 16 && p0 + i < k; i++)
                    _mm512_storeu_ps(strip + (size_t)(p0 + i) * NUMPYLLM_ABT_NC + 16 * v, r[i]);
            }
        }
    }
}

/* C (m × n, row stride ldc) = alpha · A Bᵀ, A (m × k, row stride lda), Bᵀ packed into panel by
 * numpyllm_pack_bt_f32 (for n or more columns). For a causal tile, whose row r sees columns
 * j <= r + diag only, a row block skips the strips right of what its last row sees (those
 * entries of C are left as they were: the caller masks them); diag >= n skips nothing. */
NUMPYLLM_AVX512
static void numpyllm_tile_abt_f32(int m, int n, int k, int diag, float alpha, const float *a, int lda,
                                  const float *panel, float *c, int ldc)
{
    for (int j0 = 0; j0 < n; j0 += NUMPYLLM_ABT_NC) {
        const float *strip = panel + (size_t)j0 * k;
        /* the first row block whose last row sees column j0: i0 + MR - 1 + diag >= j0 */
        int i0 = j0 - diag - (NUMPYLLM_ABT_MR - 1);
        i0 = i0 <= 0 ? 0 : i0 / NUMPYLLM_ABT_MR * NUMPYLLM_ABT_MR;
        for (; i0 + NUMPYLLM_ABT_MR <= m; i0 += NUMPYLLM_ABT_MR)
            numpyllm_abt_block(NUMPYLLM_ABT_MR, k, alpha, a + (size_t)i0 * lda, lda, strip,
                               c + (size_t)i0 * ldc + j0, ldc, n - j0);
        if (i0 >= m)
            continue;
        const float *a_tail = a + (size_t)i0 * lda;
        float *c_tail = c + (size_t)i0 * ldc + j0;
        switch (m - i0) { /* the last rows, each count its own register block */
#define NUMPYLLM_ABT_TAIL(rows) \
        case rows: numpyllm_abt_block(rows, k, alpha, a_tail, lda, strip, c_tail, ldc, n - j0); break;
        NUMPYLLM_ABT_TAIL(1) NUMPYLLM_ABT_TAIL(2) NUMPYLLM_ABT_TAIL(3) NUMPYLLM_ABT_TAIL(4) NUMPYLLM_ABT_TAIL(5)
#undef NUMPYLLM_ABT_TAIL
        default: break;
        }
    }
}

/* One block: rows 0..mr-1 of C, nv vectors (16·nv columns), C += alpha · op(A) B. */
NUMPYLLM_INLINE_AVX512
void numpyllm_acc_block(const int mr, const int nv, int n_red, float alpha,
                        const float *a, int a_row, int a_col, const float *b, int ldb,
                        float *c, int ldc)
{
    __m512 acc[NUMPYLLM_ACC_MR][4];
    numpyllm_block_product(mr, nv, n_red, a, a_row, a_col, b, ldb, acc);
    __m512 scale = _mm512_set1_ps(alpha);
#pragma GCC unroll 6
    for (int r = 0; r < mr; r++)
#pragma GCC unroll 4
        for (int v = 0; v < nv; v++) {
            float *c_rv = c + (size_t)r * ldc + 16 * v;
            _mm512_storeu_ps(c_rv, _mm512_fmadd_ps(acc[r][v], scale, _mm512_loadu_ps(c_rv)));
        }
}

/* One block of rows r0 .. r0+mr-1, with the reduction cut to the part of [p0, p1) where its
 * rows of op(A) can be non-zero (see numpyllm_tile_acc_f32's diag). */
NUMPYLLM_INLINE_AVX512
void numpyllm_acc_band(const int mr, const int nv, int r0, int p0, int p1, int n_red, int diag, int upper,
                       float alpha, const float *a, int a_row, int a_col, const float *b, int ldb, float *c, int ldc)
{
    int lo = p0, hi = p1;
    if (upper) {
        if (r0 - diag > lo)
            lo = r0 - diag;
    } else if (r0 + mr + diag < hi) {
        hi = r0 + mr + diag;
    }
    if (hi > lo)
        numpyllm_acc_block(mr, nv, hi - lo, alpha, a + (size_t)r0 * a_row + (size_t)lo * a_col, a_row, a_col,
                           b + (size_t)lo * ldb, ldb, c + (size_t)r0 * ldc, ldc);
}

/* The rows of C in blocks of NUMPYLLM_ACC_MR, then the last ones, for nv vectors of columns. */
NUMPYLLM_INLINE_AVX512
void numpyllm_acc_columns(const int nv, int m, int p0, int p1, int n_red, int diag, int upper, float alpha,
                          const float *a, int a_row, int a_col, const float *b, int ldb, float *c, int ldc)
{
    int r0 = 0;
    for (; r0 + NUMPYLLM_ACC_MR <= m; r0 += NUMPYLLM_ACC_MR)
        numpyllm_acc_band(NUMPYLLM_ACC_MR, nv, r0, p0, p1, n_red, diag, upper, alpha, a, a_row, a_col, b, ldb, c, ldc);
    switch (m - r0) {
#define NUMPYLLM_ACC_TAIL(rows) \
    case rows: numpyllm_acc_band(rows, nv, r0, p0, p1, n_red, diag, upper, alpha, a, a_row, a_col, b, ldb, c, ldc); break;
    NUMPYLLM_ACC_TAIL(1) NUMPYLLM_ACC_TAIL(2) NUMPYLLM_ACC_TAIL(3) NUMPYLLM_ACC_TAIL(4) NUMPYLLM_ACC_TAIL(5)
#undef NUMPYLLM_ACC_TAIL
    default: break;
    }
}

/* C (m × d, row stride ldc) += alpha · op(A) B with op(A)[r, p] = a[r·a_row + p·a_col] (r < m,
 * p < n_red) and B (n_red × d, row stride ldb); d a multiple of 16.
 * A causal tile's op(A) is zero on one side of a diagonal, and that side is skipped: with
 * upper = 0, op(A)[r, p] = 0 for p > r + diag (P V); with upper = 1, for p < r - diag (Pᵀ dO).
 * diag >= n_red (upper = 0) or >= m (upper = 1) skips nothing. */
NUMPYLLM_AVX512
static void numpyllm_tile_acc_f32(int m, int d, int n_red, int diag, int upper, float alpha,
                                  const float *a, int a_row, int a_col, const float *b, int ldb, float *c, int ldc)
{
    /* The reduction in chunks of NUMPYLLM_ACC_CHUNK rows of B (32 KB at d = 64), which then stay in
     * L1 while every row block of C passes them; a whole 256-row B came from L2 for each. */
    for (int p0 = 0; p0 < n_red; p0 += NUMPYLLM_ACC_CHUNK) {
        const int p1 = n_red - p0 < NUMPYLLM_ACC_CHUNK ? n_red : p0 + NUMPYLLM_ACC_CHUNK;
        int c0 = 0;
        for (; c0 + 64 <= d; c0 += 64)
            numpyllm_acc_columns(4, m, p0, p1, n_red, diag, upper, alpha, a, a_row, a_col, b + c0, ldb, c + c0, ldc);
        switch ((d - c0) / 16) {
        case 3: numpyllm_acc_columns(3, m, p0, p1, n_red, diag, upper, alpha, a, a_row, a_col, b + c0, ldb, c + c0, ldc); break;
        case 2: numpyllm_acc_columns(2, m, p0, p1, n_red, diag, upper, alpha, a, a_row, a_col, b + c0, ldb, c + c0, ldc); break;
        case 1: numpyllm_acc_columns(1, m, p0, p1, n_red, diag, upper, alpha, a, a_row, a_col, b + c0, ldb, c + c0, ldc); break;
        default: break;
        }
    }
}

/* exp(x) for 16 floats, as fastexp.h's numpyllm_expf (the same range reduction and polynomial),
 * with AVX-512's vscalefps for the 2^n: it underflows to 0 and overflows to inf by itself, so
 * no selects are needed. x is first clamped to [-104, 128] (exp is 0 or inf there in float32
 * either way; x = +inf would otherwise give inf - inf), operands ordered so that NaN stays NaN. */
NUMPYLLM_INLINE_AVX512
__m512 numpyllm_exp16(__m512 x)
{
    x = _mm512_min_ps(_mm512_set1_ps(128.0f), _mm512_max_ps(_mm512_set1_ps(-104.0f), x)); /* NaN: x */
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    const __m512 r2 = _mm512_mul_ps(r, r);
    const __m512 a = _mm512_fmadd_ps(_mm512_set1_ps(1.6666665459e-1f), r, _mm512_set1_ps(5.0000001201e-1f));
    const __m512 b = _mm512_fmadd_ps(_mm512_set1_ps(8.3334519073e-3f), r, _mm512_set1_ps(4.1665795894e-2f));
    const __m512 c = _mm512_fmadd_ps(_mm512_set1_ps(1.9875691500e-4f), r, _mm512_set1_ps(1.3981999507e-3f));
    const __m512 abc = _mm512_fmadd_ps(r2, _mm512_fmadd_ps(r2, c, b), a);
    const __m512 p = _mm512_add_ps(_mm512_fmadd_ps(abc, r2, r), _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

/* x[j] = exp(x[j] - shift) for j < n; returns Σ_j of the new x[j] (16 float lanes, added in double)
 * and, when max_in is not NULL, sets *max_in to max_j x[j] before the exp (NaNs skipped, -inf for
 * n = 0): fastexp.h's three row passes of the attention kernel in one, for AVX-512. */
NUMPYLLM_AVX512
static double numpyllm_exp_shift_rows_avx512(float *x, int n, float shift, float *max_in)
{
    const __m512 shift_v = _mm512_set1_ps(shift);
    __m512 sum = _mm512_setzero_ps(), max = _mm512_set1_ps(-INFINITY);
    for (int j = 0; j < n; j += 16) {
        const __mmask16 live = numpyllm_lanes(n - j);
        const __m512 value = _mm512_maskz_loadu_ps(live, x + j);
        max = _mm512_mask_max_ps(max, live, value, max); /* max(value, max): a NaN value keeps max */
        const __m512 y = numpyllm_exp16(_mm512_sub_ps(value, shift_v));
        _mm512_mask_storeu_ps(x + j, live, y);
        sum = _mm512_mask_add_ps(sum, live, sum, y);
    }
    if (max_in)
        *max_in = _mm512_reduce_max_ps(max);
    float lanes[16];
    _mm512_storeu_ps(lanes, sum);
    double total = 0.0;
    for (int l = 0; l < 16; l++)
        total += (double)lanes[l];
    return total;
}

#else
/* Elsewhere no CPU qualifies, so the kernel never calls the products below: they only keep it linking. */
static int numpyllm_tiles_available(void) { return 0; }
static void numpyllm_pack_bt_f32(int n, int k, const float *b, int ldb, float *panel) {}
static void numpyllm_tile_abt_f32(int m, int n, int k, int diag, float alpha, const float *a, int lda,
                                  const float *panel, float *c, int ldc) {}
static void numpyllm_tile_acc_f32(int m, int d, int n_red, int diag, int upper, float alpha,
                                  const float *a, int a_row, int a_col, const float *b, int ldb, float *c, int ldc) {}
static double numpyllm_exp_shift_rows_avx512(float *x, int n, float shift, float *max_in) { return 0.0; }
#endif

#endif
