# cython: language_level=3
"""Fused attention kernel, FlashAttention-style, built as ``numpyllm._attention``.

Same math as the NumPy reference in ``numpyllm/attention.py`` (read that first):

    S = scale · Q Kᵀ + mask,   O = softmax(S) V,   lse = logsumexp(S) per row

where the mask hides keys j >= L = key_lengths[b] (right padding) and, when causal,
keys j > i + (Nk - Nq). Query head h reads key/value head h // (H // H_kv).

but no (Nq, Nk) matrix is ever formed. Queries are cut into blocks of BLOCK_Q rows
(CAUSAL_BACKWARD_BLOCK_Q in the causal backward) and
keys/values into blocks of BLOCK_K rows; only one (BLOCK_Q, BLOCK_K) tile of scores
lives at a time, in per-thread scratch.

Forward, for one query block (online softmax):
    m = -inf, l = 0, acc = 0                      per row: running max, running sum, output
    for each key block K_j, V_j below L and not fully hidden by the causal mask:
        S    = scale · Q_i K_jᵀ                   (tile product)
        m'   = max(m, rowmax(S))                  (after a row's first block, m' = m unless
                                                   rowmax(S) > m + MAX_SHIFT_SLACK: any shift
                                                   gives the same O and lse, so the max is
                                                   checked in the exp pass, not before it)
        P    = exp(S - m')                        (masked entries: 0)
        l    = l · exp(m - m') + rowsum(P)
        acc  = acc · exp(m - m') + P V_j          (tile product)
        m    = m'
    O = acc / l,  lse = m + log(l)

Backward, for one key block j below L (its dK_j, dV_j are owned by this (batch, head)):
    D_i = rowsum(dO_i ∘ O_i)                      once per query row
    for each query block i that can see key block j:
        P     = exp(scale · Q_i K_jᵀ - lse_i)     rebuilt from the saved lse
        dV_j += Pᵀ dO_i
        dP    = dO_i V_jᵀ
        dS    = P ∘ (dP - D_i)
        dQ_i += scale · dS K_j
        dK_j += scale · dSᵀ Q_i

Tile products: float32 on a CPU with AVX-512F runs tiles.h's register-blocked products, which
read Kᵀ (and, in the backward, Vᵀ) from a packed copy: the forward packs each key head once
before its query blocks run (one more K-sized buffer), the backward each key block once per
head; they skip the part of a causal tile that the diagonal hides. Otherwise (float64, other
CPUs, tile_products("blas")) every tile is a BLAS call, which reads the inputs in place.

Key blocks at or past L are never touched: a batch padded to twice its length costs
what its real keys cost. Parallel over (batch·head, query block) in the forward and over
batch·head in the backward: each task owns its dQ rows and its own dK, dV of one query
head, so there is no race. With grouped heads (H_kv < H) the H query heads' dK, dV
(B·H·Nk·d, still O(N·d)) are summed onto the H_kv shared heads at the end.
Inputs are validated by the Python wrapper in ``numpyllm.attention``; these functions
trust shapes and dtypes. Each head of an input is read in place as a matrix of rows
(BLAS's leading dimension is the row stride), so views such as a KV cache's first
positions or heads split out of (B, T, C) activations are not copied; only inputs whose
rows are not contiguous or overlap are.
"""

from contextlib import nullcontext

import numpy as np
from threadpoolctl import ThreadpoolController

cimport cython
from cython cimport floating
from cython.parallel cimport parallel, prange, threadid
from libc.math cimport INFINITY, exp, log
from libc.string cimport memset
from scipy.linalg.cython_blas cimport dgemm, dgemv, sgemm, sgemv

cdef extern from "fastexp.h" nogil:
    # Vectorizable float32 row operations (see the header); float64 uses libm below.
    void numpyllm_exp_shift_f32(float* x, int n, float shift)
    double numpyllm_exp_shift_sum_f32(float* x, int n, float shift)
    double numpyllm_exp_shift_sum_max_f32(float* x, int n, float shift, float* max_in)
    float numpyllm_max_f32(const float* x, int n)

cdef extern from "rows.h" nogil:
    # Dot products accumulated in double over independent lanes (vectorized; shared with the layer kernels).
    double numpyllm_row_dot_f32(const float* a, const float* b, long n)
    double numpyllm_row_dot_f64(const double* a, const double* b, long n)

cdef extern from "tiles.h" nogil:
    # Register-blocked float32 tile products for AVX-512 CPUs (see the header).
    enum: NUMPYLLM_ABT_NC  # columns of a packed strip: panels hold round_up(n, it) columns
    int numpyllm_tiles_available()
    void numpyllm_pack_bt_f32(int n, int k, const float* b, int ldb, float* panel)
    void numpyllm_tile_abt_f32(int m, int n, int k, int diag, float alpha, const float* a, int lda,
                               const float* panel, float* c, int ldc)
    void numpyllm_tile_acc_f32(int m, int d, int n_red, int diag, int upper, float alpha,
                               const float* a, int a_row, int a_col, const float* b, int ldb, float* c, int ldc)
    double numpyllm_exp_shift_rows_avx512(float* x, int n, float shift, float* max_in)

# OpenMP when the build has it; one thread otherwise (Cython's prange is then a plain loop).
cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    #define NUMPYLLM_OPENMP 1
    #else
    #define NUMPYLLM_OPENMP 0
    static int omp_get_max_threads(void) { return 1; }
    #endif
    """
    bint NUMPYLLM_OPENMP
    int omp_get_max_threads() noexcept nogil

cdef enum:
    BLOCK_Q = 256  # query rows per tile (at most)
    BLOCK_K = 256  # key/value rows per tile
    CAUSAL_BACKWARD_BLOCK_Q = 128  # the causal backward's query rows per tile: see backward_head
    # How far a key block's scores may pass a row's running max before the forward shifts by
    # their own max instead: P's entries stay below e^16 ≈ 9e6, far from float32's overflow.
    MAX_SHIFT_SLACK = 16
    # A tile's diagonal offset when nothing is masked (see tile_diagonal): past any tile's width.
    NO_DIAGONAL = 1 << 30

# Whether float32 tiles go to tiles.h's AVX-512 kernels (register-blocked products, the exp passes)
# or to BLAS and fastexp.h (see tile_products).
cdef bint use_tile_kernels = numpyllm_tiles_available()

#: Tile sizes, for documentation and tests of the block edges.
block_q = BLOCK_Q
causal_backward_block_q = CAUSAL_BACKWARD_BLOCK_Q
block_k = BLOCK_K


# --------------------------------------------------------------------------- helpers


cdef inline void gemm(bint trans_a, bint trans_b, int m, int n, int k,
                      floating alpha, const floating* a, int lda,
                      const floating* b, int ldb,
                      floating beta, floating* c, int ldc) noexcept nogil:
    """Row-major C (m×n) = alpha · op(A) op(B) + beta · C with BLAS.

    BLAS is column-major, and a row-major matrix is its column-major transpose, so
    the row-major product C = op(A) op(B) is computed as Cᵀ = op(B)ᵀ op(A)ᵀ.
    A single row (m == 1, e.g. one decoding query) goes to gemv: gemm would spend
    its time packing B for a product that uses each element once.
    """
    cdef char transb_cm = b'T' if trans_b else b'N'
    cdef char transa_cm = b'T' if trans_a else b'N'
    cdef int inc_a = lda if trans_a else 1, one = 1
    if m == 1:
        # c (n) = alpha · op(B)ᵀ a + beta · c, op(B)ᵀ being B's column-major view
        # (n×k, no transpose) when B is not transposed, and its transpose otherwise.
        if trans_b:
            if floating is float:
                sgemv(&transb_cm, &k, &n, &alpha, <float*> b, &ldb, <float*> a, &inc_a, &beta, c, &one)
            else:
                dgemv(&transb_cm, &k, &n, &alpha, <double*> b, &ldb, <double*> a, &inc_a, &beta, c, &one)
        else:
            if floating is float:
                sgemv(&transb_cm, &n, &k, &alpha, <float*> b, &ldb, <float*> a, &inc_a, &beta, c, &one)
            else:
                dgemv(&transb_cm, &n, &k, &alpha, <double*> b, &ldb, <double*> a, &inc_a, &beta, c, &one)
        return
    if floating is float:
        sgemm(&transb_cm, &transa_cm, &n, &m, &k, &alpha, <float*> b, &ldb,
              <float*> a, &lda, &beta, c, &ldc)
    else:
        dgemm(&transb_cm, &transa_cm, &n, &m, &k, &alpha, <double*> b, &ldb,
              <double*> a, &lda, &beta, c, &ldc)


cdef inline double row_max(const floating* x, int n) noexcept nogil:
    """max_j x[j] over j < n; -inf for n == 0."""
    cdef double m = -INFINITY
    cdef int j
    if floating is float:
        m = numpyllm_max_f32(x, n)
    else:
        for j in range(n):
            if x[j] > m:
                m = x[j]
    return m


cdef inline void exp_shift(floating* x, int n, double shift) noexcept nogil:
    """x[j] = exp(x[j] - shift) for j < n, in place."""
    cdef int j
    if floating is float:
        if use_tile_kernels:
            numpyllm_exp_shift_rows_avx512(x, n, <float> shift, NULL)
        else:
            numpyllm_exp_shift_f32(x, n, <float> shift)
    else:
        for j in range(n):
            x[j] = exp(x[j] - shift)


cdef inline double exp_shift_sum(floating* x, int n, double shift) noexcept nogil:
    """x[j] = exp(x[j] - shift) for j < n, in place; returns Σ_j x[j], accumulated in double."""
    cdef double total = 0.0
    cdef int j
    if floating is float:
        if use_tile_kernels:
            total = numpyllm_exp_shift_rows_avx512(x, n, <float> shift, NULL)
        else:
            total = numpyllm_exp_shift_sum_f32(x, n, <float> shift)
    else:
        for j in range(n):
            x[j] = exp(x[j] - shift)
            total += x[j]
    return total


cdef inline double exp_shift_sum_max(floating* x, int n, double shift, double* max_in) noexcept nogil:
    """exp_shift_sum, also setting max_in[0] to max_j x[j] before the exp (NaNs skipped; -inf for n == 0)."""
    cdef double total = 0.0, m = -INFINITY
    cdef float m32
    cdef int j
    if floating is float:
        if use_tile_kernels:
            total = numpyllm_exp_shift_rows_avx512(x, n, <float> shift, &m32)
        else:
            total = numpyllm_exp_shift_sum_max_f32(x, n, <float> shift, &m32)
        m = m32
    else:
        for j in range(n):
            if x[j] > m:
                m = x[j]
            x[j] = exp(x[j] - shift)
            total += x[j]
    max_in[0] = m
    return total


cdef inline int visible_keys(bint causal, Py_ssize_t row, Py_ssize_t offset,
                             Py_ssize_t col0, int n_cols) noexcept nogil:
    """How many of the columns col0 .. col0+n_cols-1 query `row` may see.

    Causal rows see columns j <= row + offset (offset = Nk - Nq, bottom-right alignment).
    """
    cdef Py_ssize_t n
    if not causal:
        return n_cols
    n = row + offset - col0 + 1
    if n < 0:
        return 0
    if n > n_cols:
        return n_cols
    return <int> n


def tile_products(name=None):
    """The float32 tile products in use, ``"avx512"`` or ``"blas"``; ``name`` selects one first.

    ``"avx512"`` (tiles.h: register-blocked, no packing of the streamed operands, and its
    vscalefps exp for the score rows; the default where the CPU has AVX-512F) or ``"blas"``
    (sgemm on every tile, fastexp.h's exp). float64 always uses BLAS and libm.
    For tests and benchmarks that compare the two; not thread-safe against running kernels.
    """
    global use_tile_kernels
    if name is not None:
        if name not in ("avx512", "blas"):
            raise ValueError(f"tile products must be 'avx512' or 'blas', got {name!r}")
        if name == "avx512" and not numpyllm_tiles_available():
            raise ValueError("tile products 'avx512' need a CPU with AVX-512F (and an x86-64 GCC/clang build)")
        use_tile_kernels = name == "avx512"
    return "avx512" if use_tile_kernels else "blas"


cdef inline bint packs_keys(int n_rows) noexcept nogil:
    """Whether products with n_rows rows of A use tiles.h (and so a packed Bᵀ): float32 only, checked
    by the caller; a single row goes to BLAS's gemv, since packing B would cost as much as the product."""
    return use_tile_kernels and n_rows > 1


cdef inline void pack_rows(int n, int k, const floating* b, int ldb, floating* panel) noexcept nogil:
    """panel = Bᵀ (B: n × k row-major), packed for product_abt's tiles.h path (float32 only)."""
    if floating is float:
        numpyllm_pack_bt_f32(n, k, b, ldb, panel)


cdef inline int tile_diagonal(bint causal, Py_ssize_t row0, Py_ssize_t col0, Py_ssize_t offset) noexcept nogil:
    """diag of the tile at (row0, col0): its row i sees its columns j <= i + diag (causal), or NO_DIAGONAL."""
    if not causal:
        return NO_DIAGONAL
    return <int> min(<Py_ssize_t> NO_DIAGONAL, row0 + offset - col0)


cdef inline void product_abt(int m, int n, int k, floating alpha, const floating* a, int lda,
                             const floating* b, int ldb, floating* c, int ldc, const floating* panel,
                             int diag) noexcept nogil:
    """C (m × n, row stride ldc) = alpha · A Bᵀ for row-major A (m × k) and B (n × k).

    With tiles.h (float32 and packs_keys(m)), from panel, which pack_rows filled with Bᵀ (or more
    columns of it), and entries right of the causal diagonal (j > i + diag) may be left unwritten:
    the caller masks them. Otherwise BLAS reads B and writes every entry.
    """
    if floating is float:
        if packs_keys(m):
            numpyllm_tile_abt_f32(m, n, k, diag, alpha, a, lda, panel, c, ldc)
            return
    gemm(False, True, m, n, k, alpha, a, lda, b, ldb, <floating> 0, c, ldc)


cdef inline void accumulate(bint trans_a, int m, int d, int n_red, floating alpha, const floating* a, int lda,
                            const floating* b, int ldb, floating* c, int ldc, int diag) noexcept nogil:
    """C (m × d, row stride ldc) += alpha · op(A) B, op(A) = A (m × n_red) or Aᵀ (A: n_red × m),
    row-major with row stride lda; B (n_red × d) row-major. A is a tile whose entries right of
    its causal diagonal diag (tile_diagonal) are zero; tiles.h skips them."""
    if floating is float:
        if use_tile_kernels and d % 16 == 0:
            numpyllm_tile_acc_f32(m, d, n_red, diag, trans_a, alpha, a, 1 if trans_a else lda,
                                  lda if trans_a else 1, b, ldb, c, ldc)
            return
    gemm(trans_a, False, m, d, n_red, alpha, a, lda, b, ldb, <floating> 1, c, ldc)


cdef inline void score_tile(const floating* q, int ldq, const floating* k, int ldk,
                            Py_ssize_t row0, Py_ssize_t col0,
                            int n_rows, int n_cols, int d, floating scale,
                            floating* tile, const floating* panel, int diag) noexcept nogil:
    """tile (n_rows × n_cols, row stride BLOCK_K) = scale · Q[row0:] K[col0:]ᵀ; panel: pack_rows of K[col0:].
    Entries right of the causal diagonal diag may be left unwritten (product_abt): mask_row them."""
    product_abt(n_rows, n_cols, d, scale, q + row0 * ldq, ldq, k + col0 * ldk, ldk, tile, BLOCK_K, panel, diag)


cdef inline int row_stride(const floating[:, :, :, :] x) noexcept nogil:
    """Elements between consecutive rows of x (B, H, N, d): BLAS's leading dimension.

    ``_rows`` has made the rows contiguous. A single row (N == 1) may carry any
    stride; BLAS still wants one >= d.
    """
    return leading_dimension(x.strides[2] // sizeof(floating), x.shape[3])


cdef inline int leading_dimension(Py_ssize_t stride, Py_ssize_t d) noexcept nogil:
    """row_stride's rule, on a row stride in elements: at least d."""
    return <int> (stride if stride > d else d)


cdef inline int mask_row(floating* row, bint causal, Py_ssize_t query, Py_ssize_t offset,
                         Py_ssize_t col0, int n_cols) noexcept nogil:
    """Set the entries of a score row that `query` may not see to 0 (probability 0).

    Returns how many leading entries it does see; only those get exponentiated.
    """
    cdef int n_vis = visible_keys(causal, query, offset, col0, n_cols)
    memset(row + n_vis, 0, (n_cols - n_vis) * sizeof(floating))  # all-zero bits: 0.0
    return n_vis


# --------------------------------------------------------------------------- forward


cdef void forward_query_block(
    const floating* q, int ldq,                # (Nq, d) of one head, row stride ldq
    const floating* k, int ldk, const floating* v, int ldv,  # (Nk, d) each
    floating* out, int ldout, double* lse,     # (Nq, d) with row stride ldout, (Nq,)
    Py_ssize_t n_q, Py_ssize_t n_k, Py_ssize_t key_length, int d, Py_ssize_t row0,
    bint causal, floating scale,
    floating* scores, floating* acc, double* running_max, double* running_sum,  # thread scratch
    const floating* key_panel,                 # pack_rows of this head's keys below key_length, if packs_keys
) noexcept nogil:
    """Rows row0 .. row0+BLOCK_Q-1 of out and lse, streaming over the key blocks below key_length."""
    cdef int n_rows = <int> min(<Py_ssize_t> BLOCK_Q, n_q - row0)
    cdef Py_ssize_t offset = n_k - n_q
    cdef Py_ssize_t col0, last_col
    cdef int n_cols, n_vis, i, c, diag
    cdef double m_new, m_blk, alpha, block_sum, inv_sum
    cdef floating* s_row
    cdef floating* acc_row
    cdef floating* out_row

    for i in range(n_rows):
        running_max[i] = -INFINITY
        running_sum[i] = 0.0
    memset(acc, 0, n_rows * d * sizeof(floating))
    # Keys past the block's last visible column (the padding, and right of the causal
    # diagonal) are hidden from every row: skip them, including the hidden tail of the last tile.
    last_col = key_length - 1
    if causal and row0 + n_rows - 1 + offset < last_col:
        last_col = row0 + n_rows - 1 + offset
    col0 = 0
    while col0 <= last_col:
        n_cols = <int> min(<Py_ssize_t> BLOCK_K, last_col + 1 - col0)
        diag = tile_diagonal(causal, row0, col0, offset)
        score_tile(q, ldq, k, ldk, row0, col0, n_rows, n_cols, d, scale, scores, key_panel + col0 * d, diag)  # S = scale · Q_i K_jᵀ
        for i in range(n_rows):
            s_row = scores + i * BLOCK_K
            n_vis = mask_row(s_row, causal, row0 + i, offset, col0, n_cols)
            if n_vis == 0:
                continue
            if running_max[i] == -INFINITY:  # the row's first scores: shift by their max
                m_new = row_max(s_row, n_vis)
                block_sum = exp_shift_sum(s_row, n_vis, m_new)  # P = exp(S - m'), and its row sum
            else:
                # Shift by the running max and find the block's max in the same pass. Only when
                # the block's max passes it by more than MAX_SHIFT_SLACK (P would exceed e^slack)
                # is the row computed again and shifted by its own max.
                m_new = running_max[i]
                block_sum = exp_shift_sum_max(s_row, n_vis, m_new, &m_blk)
                if m_blk > m_new + MAX_SHIFT_SLACK:
                    score_tile(q, ldq, k, ldk, row0 + i, col0, 1, n_cols, d, scale, s_row, key_panel + col0 * d,
                               diag + i)
                    mask_row(s_row, causal, row0 + i, offset, col0, n_cols)
                    m_new = m_blk
                    block_sum = exp_shift_sum(s_row, n_vis, m_new)
            alpha = exp(running_max[i] - m_new)  # rescales what earlier blocks accumulated
            running_sum[i] = running_sum[i] * alpha + block_sum
            running_max[i] = m_new
            if alpha != 1.0:
                acc_row = acc + i * d
                for c in range(d):
                    acc_row[c] = <floating> (acc_row[c] * alpha)
        # acc (n_rows × d) += P V_j
        accumulate(False, n_rows, d, n_cols, <floating> 1, scores, BLOCK_K, v + col0 * ldv, ldv, acc, d, diag)
        col0 += BLOCK_K
    for i in range(n_rows):
        out_row = out + (row0 + i) * ldout
        acc_row = acc + i * d
        inv_sum = 1.0 / running_sum[i]
        for c in range(d):
            out_row[c] = <floating> (acc_row[c] * inv_sum)
        lse[row0 + i] = running_max[i] + log(running_sum[i])


cdef void forward_all(
    const floating[:, :, :, :] q, const floating[:, :, :, :] k, const floating[:, :, :, :] v,
    const Py_ssize_t[::1] key_lengths, floating[:, :, :, :] out, double[:, ::1] lse,  # out (B, H, Nq, d), unit stride along d
    bint causal, floating scale,
    floating[:, ::1] scores, floating[:, ::1] acc, double[:, ::1] stats,
    floating[:, ::1] key_panels, bint pack, int n_threads,
) noexcept nogil:
    """key_panels: (B·H_kv, round_up(Nk, NUMPYLLM_ABT_NC)·d) scratch, filled first with each key head's packed
    Kᵀ when pack (the tiles.h path; every query block of the head then reads it), else unused."""
    cdef Py_ssize_t n_h = q.shape[1], n_q = q.shape[2], n_k = k.shape[2], n_kv = k.shape[1]
    cdef Py_ssize_t group = n_h // n_kv  # query heads per key/value head
    cdef int d = <int> q.shape[3], rows = <int> stats.shape[1] // 2
    cdef int ldq = row_stride(q), ldk = row_stride(k), ldv = row_stride(v)
    cdef int ldout = leading_dimension(out.strides[2] // sizeof(floating), d)
    cdef Py_ssize_t n_qblocks = (n_q + BLOCK_Q - 1) // BLOCK_Q
    cdef Py_ssize_t task, head, b, h, row0
    cdef int tid
    if pack:  # a parallel region of its own: it ends when every panel is written (Cython's prange has nowait)
        for head in prange(q.shape[0] * n_kv, num_threads=n_threads, schedule="dynamic"):
            b = head // n_kv
            pack_rows(<int> key_lengths[b], d, &k[b, head % n_kv, 0, 0], ldk, &key_panels[head, 0])
    with parallel(num_threads=n_threads):
        for task in prange(q.shape[0] * n_h * n_qblocks, schedule="dynamic"):
            tid = threadid()
            head = task // n_qblocks
            b = head // n_h
            h = head % n_h
            row0 = (task % n_qblocks) * BLOCK_Q
            forward_query_block(&q[b, h, 0, 0], ldq, &k[b, h // group, 0, 0], ldk,
                                &v[b, h // group, 0, 0], ldv, &out[b, h, 0, 0], ldout, &lse[head, 0],
                                n_q, n_k, key_lengths[b], d, row0, causal, scale,
                                &scores[tid, 0], &acc[tid, 0],
                                &stats[tid, 0], &stats[tid, rows],
                                &key_panels[b * n_kv + h // group if pack else 0, 0])


# --------------------------------------------------------------------------- backward


cdef void backward_head(
    const floating* q, int ldq, const floating* k, int ldk, const floating* v, int ldv,
    const floating* out, int ldo, const floating* dout, int lddo,  # (Nq or Nk, d), row strides ld*
    const double* lse,
    floating* dq, int lddq, floating* dk, int lddk, floating* dv, int lddv,  # (Nq or Nk, d), zeroed here
    Py_ssize_t n_q, Py_ssize_t n_k, Py_ssize_t key_length, int d, bint causal, floating scale,
    floating* probs, floating* dscores, double* d_row,         # thread scratch
    floating* k_panel, floating* v_panel,                      # thread scratch: d × BLOCK_K each
    int block_q,                                               # query rows per tile
) noexcept nogil:
    """dq, dk, dv of one (batch, head), streaming over the key blocks below key_length and
    the query blocks that see them; dk, dv rows at or past key_length stay zero.

    A causal tile on the diagonal is computed only up to what its last row sees, so
    shorter query tiles skip more of the hidden triangle: the causal backward uses
    CAUSAL_BACKWARD_BLOCK_Q rows (10-25% faster than BLOCK_Q at N = 256-2048)."""
    cdef Py_ssize_t offset = n_k - n_q
    cdef Py_ssize_t row0, col0, first_row, col_end
    cdef int n_rows, n_cols, n_vis, i, j, diag
    cdef floating d_i
    cdef floating* p_row
    cdef floating* ds_row

    for i in range(n_q):
        memset(dq + i * lddq, 0, d * sizeof(floating))
    for j in range(n_k):
        memset(dk + j * lddk, 0, d * sizeof(floating))
        memset(dv + j * lddv, 0, d * sizeof(floating))
    for i in range(n_q):  # D_i = Σ_c dO_ic O_ic
        if floating is float:
            d_row[i] = numpyllm_row_dot_f32(dout + i * lddo, out + i * ldo, d)
        else:
            d_row[i] = numpyllm_row_dot_f64(dout + i * lddo, out + i * ldo, d)
    col0 = 0
    while col0 < key_length:
        if floating is float:
            if packs_keys(<int> min(<Py_ssize_t> block_q, n_q)):  # Kᵀ, Vᵀ of this key block, for every query block
                pack_rows(<int> min(<Py_ssize_t> BLOCK_K, key_length - col0), d, k + col0 * ldk, ldk, k_panel)
                pack_rows(<int> min(<Py_ssize_t> BLOCK_K, key_length - col0), d, v + col0 * ldv, ldv, v_panel)
        # Causal: the first query row that sees column col0 is col0 - offset.
        first_row = 0
        if causal and col0 - offset > 0:
            first_row = ((col0 - offset) // block_q) * block_q
        row0 = first_row
        while row0 < n_q:
            n_rows = <int> min(<Py_ssize_t> block_q, n_q - row0)
            # Padding, and causal: columns right of what the block's last row sees get nothing from it.
            col_end = key_length
            if causal and row0 + n_rows + offset < col_end:
                col_end = row0 + n_rows + offset
            n_cols = <int> min(<Py_ssize_t> BLOCK_K, col_end - col0)
            # P = exp(scale · Q_i K_jᵀ - lse_i), masked entries 0
            diag = tile_diagonal(causal, row0, col0, offset)
            score_tile(q, ldq, k, ldk, row0, col0, n_rows, n_cols, d, scale, probs, k_panel, diag)
            for i in range(n_rows):
                p_row = probs + i * BLOCK_K
                n_vis = mask_row(p_row, causal, row0 + i, offset, col0, n_cols)
                exp_shift(p_row, n_vis, lse[row0 + i])
            # dV_j += Pᵀ dO_i
            accumulate(True, n_cols, d, n_rows, <floating> 1, probs, BLOCK_K,
                       dout + row0 * lddo, lddo, dv + col0 * lddv, lddv, diag)
            # dP = dO_i V_jᵀ (masked entries maybe unwritten), then dS = P ∘ (dP - D_i) in place, masked entries 0
            product_abt(n_rows, n_cols, d, <floating> 1, dout + row0 * lddo, lddo,
                        v + col0 * ldv, ldv, dscores, BLOCK_K, v_panel, diag)
            for i in range(n_rows):
                p_row = probs + i * BLOCK_K
                ds_row = dscores + i * BLOCK_K
                d_i = <floating> d_row[row0 + i]
                n_vis = visible_keys(causal, row0 + i, offset, col0, n_cols)
                for j in range(n_vis):
                    ds_row[j] = p_row[j] * (ds_row[j] - d_i)
                memset(ds_row + n_vis, 0, (n_cols - n_vis) * sizeof(floating))
            # dQ_i += scale · dS K_j ;  dK_j += scale · dSᵀ Q_i
            accumulate(False, n_rows, d, n_cols, scale, dscores, BLOCK_K,
                       k + col0 * ldk, ldk, dq + row0 * lddq, lddq, diag)
            accumulate(True, n_cols, d, n_rows, scale, dscores, BLOCK_K,
                       q + row0 * ldq, ldq, dk + col0 * lddk, lddk, diag)
            row0 += block_q
        col0 += BLOCK_K


cdef void backward_all(
    const floating[:, :, :, :] q, const floating[:, :, :, :] k, const floating[:, :, :, :] v,
    const floating[:, :, :, :] out, const floating[:, :, :, :] dout, const double[:, ::1] lse,
    const Py_ssize_t[::1] key_lengths,
    floating[:, :, :, :] dq, floating[:, :, :, :] dk, floating[:, :, :, :] dv,  # (B, H, N, d), rows as _rows makes them; dk, dv per query head
    bint causal, floating scale,
    floating[:, ::1] probs, floating[:, ::1] dscores, double[:, ::1] d_row, floating[:, ::1] panels,
    int n_threads,
) noexcept nogil:
    cdef Py_ssize_t n_h = q.shape[1], n_q = q.shape[2], n_k = k.shape[2]
    cdef Py_ssize_t group = n_h // k.shape[1]  # query heads per key/value head
    cdef int d = <int> q.shape[3]
    cdef int ldq = row_stride(q), ldk = row_stride(k), ldv = row_stride(v)
    cdef int ldo = row_stride(out), lddo = row_stride(dout)
    cdef int lddq = leading_dimension(dq.strides[2] // sizeof(floating), d)
    cdef int lddk = leading_dimension(dk.strides[2] // sizeof(floating), d)
    cdef int lddv = leading_dimension(dv.strides[2] // sizeof(floating), d)
    cdef Py_ssize_t head, b, h
    cdef int tid
    with parallel(num_threads=n_threads):
        for head in prange(q.shape[0] * n_h, schedule="dynamic"):
            tid = threadid()
            b = head // n_h
            h = head % n_h
            backward_head(&q[b, h, 0, 0], ldq, &k[b, h // group, 0, 0], ldk, &v[b, h // group, 0, 0], ldv,
                          &out[b, h, 0, 0], ldo, &dout[b, h, 0, 0], lddo, &lse[head, 0],
                          &dq[b, h, 0, 0], lddq, &dk[b, h, 0, 0], lddk, &dv[b, h, 0, 0], lddv,
                          n_q, n_k, key_lengths[b], d, causal, scale,
                          &probs[tid, 0], &dscores[tid, 0], &d_row[tid, 0], &panels[tid, 0], &panels[tid, d * BLOCK_K],
                          CAUSAL_BACKWARD_BLOCK_Q if causal else BLOCK_Q)


# --------------------------------------------------------------------------- Python entry points


# Multiply-adds below which one more thread costs more than it saves: waking an OpenMP
# team takes microseconds, and its threads then spin for a while, competing on a small
# machine with NumPy's own BLAS threads (a decoding step is 1 × Nk per head).
MIN_WORK_PER_THREAD = 1 << 20

# Controls the BLAS that cimporting scipy's cython_blas has loaded by now.
_blas = ThreadpoolController()


def _threads(int num_threads, Py_ssize_t n_tasks, double work):
    """Threads to use: at most the request (0 = OpenMP's default), one per task, and
    one per MIN_WORK_PER_THREAD multiply-adds of work."""
    cdef int n = num_threads if num_threads > 0 else omp_get_max_threads()
    if not NUMPYLLM_OPENMP:
        n = 1
    return int(max(1, min(n, n_tasks, work // MIN_WORK_PER_THREAD)))


def _single_threaded_blas(double work):
    """Pin BLAS to one thread while the kernel calls it on tiles from its own threads.

    A multi-threaded BLAS inside them would oversubscribe the cores, and with
    num_threads=1 it would use more threads than asked. Calls under
    MIN_WORK_PER_THREAD skip the ~25 µs pinning costs: BLAS never splits such tiles.
    """
    return _blas.limit(limits=1, user_api="blas") if work >= MIN_WORK_PER_THREAD else nullcontext()


def _rows(x):
    """x (B, H, N, d) itself when BLAS can read each head in place, else a C-contiguous copy.

    In place needs contiguous rows (unit stride along d), non-overlapping rows (row stride
    >= d, or a single row) and non-negative strides that are whole elements.
    """
    item = x.itemsize
    row_stride_ok = x.shape[2] == 1 or x.strides[2] >= x.shape[3] * item
    if x.strides[3] == item and row_stride_ok and \
            all(s >= 0 and s % item == 0 for s in x.strides[:3]):
        return x
    return np.ascontiguousarray(x)


def _lengths(key_lengths, Py_ssize_t batch, Py_ssize_t n_k):
    """key_lengths as the kernel reads them: intp (B,), every key visible when None."""
    if key_lengths is None:
        return np.full(batch, n_k, dtype=np.intp)
    return np.ascontiguousarray(key_lengths, dtype=np.intp)


def _visible_work(key_lengths, Py_ssize_t heads, Py_ssize_t n_q, Py_ssize_t d):
    """Multiply-adds of one pass over the keys below key_lengths, for the thread count."""
    return <double> heads * n_q * d * float(np.sum(key_lengths, dtype=np.float64))


def forward(q, k, v, bint causal, double scale, key_lengths=None, int num_threads=0):
    """Kernel forward. q: (B, H, Nq, d), k, v: (B, H_kv, Nk, d), key_lengths (B,) ints
    in [1, Nk] or None, all validated by the caller.

    Returns out: (B, H, Nq, d) in q's dtype, a view of a (B, Nq, H, d) array (so merging the
    heads back into (B, Nq, H·d) is a reshape, not a copy), and lse: (B, H, Nq) float64.
    """
    B, H, n_q, d = q.shape
    lengths = _lengths(key_lengths, B, k.shape[2])
    out = np.empty((B, n_q, H, d), dtype=q.dtype).transpose(0, 2, 1, 3)
    lse = np.empty((B * H, n_q), dtype=np.float64)
    n_tasks = B * H * ((n_q + BLOCK_Q - 1) // BLOCK_Q)
    if n_tasks > 0:
        work = _visible_work(lengths, H, n_q, d)
        n_threads = _threads(num_threads, n_tasks, work)
        rows = min(BLOCK_Q, n_q)  # a decoding step's scratch is one row, not a whole tile
        scores = np.empty((n_threads, rows * BLOCK_K), dtype=q.dtype)
        acc = np.empty((n_threads, rows * d), dtype=q.dtype)
        stats = np.empty((n_threads, 2 * rows), dtype=np.float64)
        pack = q.dtype == np.float32 and packs_keys(rows)  # the query blocks' products read packed keys
        panel_columns = -(-k.shape[2] // NUMPYLLM_ABT_NC) * NUMPYLLM_ABT_NC
        key_panels = np.empty((B * k.shape[1], panel_columns * d) if pack else (1, 1), dtype=q.dtype)
        q, k, v = _rows(q), _rows(k), _rows(v)
        with _single_threaded_blas(work):
            if q.dtype == np.float32:
                forward_all[float](q, k, v, lengths, out, lse, causal, <float> scale, scores, acc, stats,
                                   key_panels, pack, n_threads)
            else:
                forward_all[double](q, k, v, lengths, out, lse, causal, scale, scores, acc, stats,
                                    key_panels, pack, n_threads)
    return out, lse.reshape(B, H, n_q)


def backward(dout, q, k, v, out, lse, bint causal, double scale, key_lengths=None, int num_threads=0,
             into=None):
    """Kernel backward. Shapes as in ``forward``; returns dq, dk, dv in q's dtype, dk and
    dv with k's shape (B, H_kv, Nk, d). ``into``: None, or (dq, dk, dv) arrays of those
    shapes and dtype, validated by the caller: where their rows allow, the kernel computes
    into them and returns them; otherwise it returns arrays of its own (the caller copies)."""
    B, H, n_q, d = q.shape
    H_kv, n_k = k.shape[1], k.shape[2]
    lengths = _lengths(key_lengths, B, n_k)
    # The kernel writes each head's rows where they lie when their elements are contiguous;
    # grouped heads (H_kv < H) are computed per query head and summed into dk, dv below.
    direct = into is not None and H_kv == H and all(_rows(x) is x for x in into)
    if direct:
        dq, dk, dv = into
    else:
        dq = np.empty((B, H, n_q, d), dtype=q.dtype)
        dk = np.empty((B, H, n_k, d), dtype=q.dtype)
        dv = np.empty((B, H, n_k, d), dtype=q.dtype)
    if B * H > 0 and n_q > 0:
        work = _visible_work(lengths, H, n_q, d)
        n_threads = _threads(num_threads, B * H, work)
        rows = min(BLOCK_Q, n_q)  # scratch for the larger tile
        probs = np.empty((n_threads, rows * BLOCK_K), dtype=q.dtype)
        dscores = np.empty((n_threads, rows * BLOCK_K), dtype=q.dtype)
        d_row = np.empty((n_threads, n_q), dtype=np.float64)
        panels = np.empty((n_threads, 2 * d * BLOCK_K), dtype=q.dtype)  # Kᵀ and Vᵀ of a key block
        lse_heads = np.ascontiguousarray(lse, dtype=np.float64).reshape(B * H, n_q)
        q, k, v, out, dout = _rows(q), _rows(k), _rows(v), _rows(out), _rows(dout)
        with _single_threaded_blas(work):
            if q.dtype == np.float32:
                backward_all[float](q, k, v, out, dout, lse_heads, lengths, dq, dk, dv, causal,
                                    <float> scale, probs, dscores, d_row, panels, n_threads)
            else:
                backward_all[double](q, k, v, out, dout, lse_heads, lengths, dq, dk, dv, causal, scale,
                                     probs, dscores, d_row, panels, n_threads)
    else:
        for x in (dq, dk, dv):
            x[...] = 0
    if H_kv != H:  # (B, H, Nk, d) per query head -> (B, H_kv, Nk, d): sum each group of H // H_kv heads
        dk, dv = (x.reshape(B, H_kv, H // H_kv, n_k, d).sum(axis=2) for x in (dk, dv))
    return dq, dk, dv
