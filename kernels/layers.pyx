# cython: language_level=3
"""Fused, multi-threaded kernels for the element-wise layers, built as ``numpyllm._layers``.

The math is ``numpyllm/layers.py``'s and ``numpyllm/optim.py``'s (read those first: they
are the specification); ``numpyllm.backend`` decides which of the two runs. NumPy runs
each of those formulas as a chain of whole-array passes, one temporary array each, on
one thread. Here each row (or chunk of elements) makes one or two passes through the
cache, and rows are split over OpenMP threads (``prange``), as scikit-learn's kernels do:

    layernorm        per row: mean, rstd; y = (x - mean) · rstd · weight + bias
                     backward: per row dx; dweight, dbias summed in per-thread rows
    gelu (tanh)      y = x (1 + tanh u) / 2,  u = √(2/π) (x + 0.044715 x³)
    gelu (erf)       y = x Φ(x),  Φ(x) = erfc(-x / √2) / 2
    cross-entropy    per row: probabilities and logsumexp - target logit
    sum_rows         Σ over rows (a bias gradient), in per-thread rows
    matmul           float32 a @ b (+ bias) for the linear layers: gemm.h's AVX-512 products
                     (bands of C's rows or columns per thread), by default where AVX-512 runs
    adamw_update     the AdamW step on one tensor, in place
    sum_of_squares   Σ g² of one tensor (the global norm that clipping needs)
    DecodeStep       GPT-2's KV-cached forward on a few new positions (a decoding step),
                     every layer and the head in one parallel region (decode.h's products)

float32 and float64 share one code path (``floating`` fused types); float32 sums are
accumulated in double (DecodeStep's products excepted: in float32, as BLAS's). float64 takes exp, tanh and erfc from libm; float32's vector loops
(rows.h) build tanh and Φ from ``fastexp.h``'s vectorizable exp. The Python functions
below take arrays the caller has checked (``numpyllm.layers`` passes only float32/float64
arrays of one dtype; DecodeStep checks its own); any strides are accepted: an input that is not C-contiguous is
copied once.
"""

import numpy as np

from cython cimport floating
from cython.parallel cimport parallel, prange, threadid
from libc.math cimport erfc, exp, log, sqrt, tanh
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy

cdef extern from "fastexp.h" nogil:
    void numpyllm_exp_shift_f32(float* x, int n, float shift)
    double numpyllm_sum_f32(const float* x, int n)
    float numpyllm_max_f32(const float* x, int n)

cdef extern from "rows.h" nogil:
    double numpyllm_row_dot_f32(const float* a, const float* b, long n)
    double numpyllm_row_dot_f64(const double* a, const double* b, long n)
    double numpyllm_row_sum_f64(const double* a, long n)
    double numpyllm_row_sumsq_dev_f32(const float* a, long n, double shift)
    double numpyllm_row_sumsq_dev_f64(const double* a, long n, double shift)
    double numpyllm_row_max_f64(const double* a, long n)
    void numpyllm_row_accumulate_f32(double* acc, const float* row, long n)
    void numpyllm_row_accumulate_f64(double* acc, const double* row, long n)
    void numpyllm_layernorm_backward_prepare_f32(const float* dy, const float* x, const float* w, float mean,
                                                 float rstd, float* x_hat, float* g, long n)
    void numpyllm_layernorm_backward_prepare_f64(const double* dy, const double* x, const double* w, double mean,
                                                 double rstd, double* x_hat, double* g, long n)
    void numpyllm_layernorm_backward_finish_f32(const float* dy, const float* x_hat, const float* g, float mean_g,
                                                float mean_g_x_hat, float rstd, float* dx, double* dw_acc,
                                                double* db_acc, long n)
    void numpyllm_layernorm_backward_finish_f64(const double* dy, const double* x_hat, const double* g,
                                                double mean_g, double mean_g_x_hat, double rstd, double* dx,
                                                double* dw_acc, double* db_acc, long n)
    void numpyllm_adamw_f32(float* p, const float* g, float* m, float* v, long n, float decay, float beta1,
                            float beta2, float one_minus_beta1, float one_minus_beta2, float step_size,
                            float sqrt_bias_correction2, float eps)
    void numpyllm_adamw_f64(double* p, const double* g, double* m, double* v, long n, double decay,
                            double beta1, double beta2, double one_minus_beta1, double one_minus_beta2,
                            double step_size, double sqrt_bias_correction2, double eps)
    void numpyllm_gelu_tanh_f32(const float* x, float* y, float* tanh_u, long n)
    void numpyllm_gelu_tanh_backward_f32(const float* dy, const float* x, const float* tanh_u, float* dx, long n)
    void numpyllm_gelu_erf_f32(const float* x, float* y, float* cdf, long n)
    void numpyllm_gelu_erf_backward_f32(const float* dy, const float* x, const float* cdf, float* dx, long n)

cdef extern from "gemm.h" nogil:
    int numpyllm_gemm_available()
    int numpyllm_sgemm(Py_ssize_t M, Py_ssize_t N, Py_ssize_t K, const float* a, Py_ssize_t a_row, Py_ssize_t a_col,
                       const float* b, Py_ssize_t b_row, Py_ssize_t b_col, float* c, Py_ssize_t ldc,
                       const float* bias, int n_threads)

# OpenMP when the build has it; one thread otherwise (Cython's prange is then a plain loop).
cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    #define NUMPYLLM_OPENMP 1
    #else
    #define NUMPYLLM_OPENMP 0
    static int omp_get_max_threads(void) { return 1; }
    static int omp_get_num_threads(void) { return 1; }
    #endif
    """
    bint NUMPYLLM_OPENMP
    int omp_get_max_threads() noexcept nogil
    int omp_get_num_threads() noexcept nogil

# Elements of work per thread below which more threads cost more than they save (starting
# a team takes microseconds, and idle OpenMP threads spin beside NumPy's BLAS threads).
MIN_ELEMENTS_PER_THREAD = 1 << 15
cdef enum:
    CHUNK = 4096  # elements per task of the element-wise loops

cdef double SQRT_2_OVER_PI = 0.7978845608028654  # √(2/π)
cdef double GELU_CUBIC = 0.044715
cdef double INV_SQRT_2 = 0.7071067811865476
cdef double INV_SQRT_2PI = 0.3989422804014327  # 1 / √(2π)


def _threads(Py_ssize_t n_elements):
    """Threads for a pass over ``n_elements``: OpenMP's default, fewer for small work."""
    n = omp_get_max_threads() if NUMPYLLM_OPENMP else 1
    return int(max(1, min(n, n_elements // MIN_ELEMENTS_PER_THREAD)))


def _rows(x):
    """x as a C-contiguous (rows, last axis) matrix (a view when x already is contiguous)."""
    x = np.ascontiguousarray(x)
    return x.reshape(-1, x.shape[x.ndim - 1]) if x.ndim else x.reshape(1, 1)


def _flat(x):
    """x as a C-contiguous 1-D array (a view when x already is contiguous)."""
    return np.ascontiguousarray(x).reshape(-1)


# --------------------------------------------------------------------------- scalar helpers


cdef inline double _sum(const floating* a, long n) noexcept nogil:
    if floating is float:
        return numpyllm_sum_f32(a, n)
    else:
        return numpyllm_row_sum_f64(a, n)


cdef inline double _dot(const floating* a, const floating* b, long n) noexcept nogil:
    if floating is float:
        return numpyllm_row_dot_f32(a, b, n)
    else:
        return numpyllm_row_dot_f64(a, b, n)


cdef inline double _sumsq_dev(const floating* a, long n, double shift) noexcept nogil:
    if floating is float:
        return numpyllm_row_sumsq_dev_f32(a, n, shift)
    else:
        return numpyllm_row_sumsq_dev_f64(a, n, shift)


cdef inline double _max(const floating* a, long n) noexcept nogil:
    if floating is float:
        return numpyllm_max_f32(a, n)
    else:
        return numpyllm_row_max_f64(a, n)


# --------------------------------------------------------------------------- layernorm


cdef void _layernorm_row(const floating* x, const floating* w, const floating* b, floating* y,
                         floating* mean_out, floating* rstd_out, long C, double eps) noexcept nogil:
    """One row: mean, rstd (two passes, so the variance never cancels), then y."""
    cdef double mean = _sum(x, C) / C
    cdef floating rstd = <floating> (1.0 / sqrt(_sumsq_dev(x, C, mean) / C + eps))
    cdef floating m = <floating> mean
    cdef long c
    for c in range(C):
        y[c] = (x[c] - m) * rstd * w[c] + b[c]
    mean_out[0] = m
    rstd_out[0] = rstd


cdef void _layernorm_backward_row(const floating* dy, const floating* x, const floating* w,
                                  floating mean, floating rstd, floating* dx, floating* x_hat,
                                  floating* g, double* dw_acc, double* db_acc, long C) noexcept nogil:
    """One row of dx = rstd · (g - mean(g) - x̂ · mean(g · x̂)), g = dy · w; adds dy · x̂ and dy
    to this thread's dweight and dbias rows. x_hat and g are this thread's scratch rows (rows.h's loops)."""
    if floating is float:
        numpyllm_layernorm_backward_prepare_f32(dy, x, w, mean, rstd, x_hat, g, C)
    else:
        numpyllm_layernorm_backward_prepare_f64(dy, x, w, mean, rstd, x_hat, g, C)
    cdef floating mean_g = <floating> (_sum(g, C) / C)
    cdef floating mean_g_x_hat = <floating> (_dot(g, x_hat, C) / C)
    if floating is float:
        numpyllm_layernorm_backward_finish_f32(dy, x_hat, g, mean_g, mean_g_x_hat, rstd, dx, dw_acc, db_acc, C)
    else:
        numpyllm_layernorm_backward_finish_f64(dy, x_hat, g, mean_g, mean_g_x_hat, rstd, dx, dw_acc, db_acc, C)


cdef void _layernorm_all(floating[:, ::1] x, floating[::1] w, floating[::1] b, floating[:, ::1] y,
                         floating[::1] mean, floating[::1] rstd, double eps, int n_threads) noexcept nogil:
    cdef Py_ssize_t i
    cdef long C = x.shape[1]
    for i in prange(x.shape[0], num_threads=n_threads, schedule="guided"):
        _layernorm_row(&x[i, 0], &w[0], &b[0], &y[i, 0], &mean[i], &rstd[i], C, eps)


cdef void _layernorm_backward_all(floating[:, ::1] dy, floating[:, ::1] x, floating[::1] w,
                                  floating[::1] mean, floating[::1] rstd, floating[:, ::1] dx,
                                  floating[:, ::1] scratch, double[:, ::1] dw_acc, double[:, ::1] db_acc,
                                  int n_threads) noexcept nogil:
    cdef Py_ssize_t i
    cdef int t = 0
    cdef long C = x.shape[1]
    with parallel(num_threads=n_threads):
        t = threadid()
        for i in prange(x.shape[0], schedule="guided"):
            _layernorm_backward_row(&dy[i, 0], &x[i, 0], &w[0], mean[i], rstd[i], &dx[i, 0],
                                    &scratch[t, 0], &scratch[t, C], &dw_acc[t, 0], &db_acc[t, 0], C)


def layernorm_forward(x, weight, bias, double eps):
    """x: (..., C), weight, bias: (C,) -> y: (..., C), mean, rstd: (..., 1), all in x's dtype."""
    rows = _rows(x)
    weight, bias = _flat(weight), _flat(bias)
    y = np.empty_like(rows)
    mean = np.empty(rows.shape[0], dtype=rows.dtype)
    rstd = np.empty(rows.shape[0], dtype=rows.dtype)
    n_threads = _threads(rows.size)
    if rows.dtype == np.float32:
        _layernorm_all[float](rows, weight, bias, y, mean, rstd, eps, n_threads)
    else:
        _layernorm_all[double](rows, weight, bias, y, mean, rstd, eps, n_threads)
    stats = x.shape[:x.ndim - 1] + (1,)
    return y.reshape(x.shape), mean.reshape(stats), rstd.reshape(stats)


def layernorm_backward(dy, x, weight, mean, rstd):
    """dy, x: (..., C), weight: (C,), mean, rstd: (..., 1) -> dx: (..., C), dweight, dbias: (C,)."""
    dy_rows, x_rows = _rows(dy), _rows(x)
    weight, mean, rstd = _flat(weight), _flat(mean), _flat(rstd)
    n, C = x_rows.shape
    dx = np.empty_like(x_rows)
    n_threads = _threads(x_rows.size)
    scratch = np.empty((n_threads, 2 * C), dtype=x_rows.dtype)  # x̂ and g rows, one pair per thread
    dw_acc = np.zeros((n_threads, C))
    db_acc = np.zeros((n_threads, C))
    if x_rows.dtype == np.float32:
        _layernorm_backward_all[float](dy_rows, x_rows, weight, mean, rstd, dx, scratch, dw_acc, db_acc, n_threads)
    else:
        _layernorm_backward_all[double](dy_rows, x_rows, weight, mean, rstd, dx, scratch, dw_acc, db_acc, n_threads)
    dtype = x_rows.dtype
    return dx.reshape(x.shape), dw_acc.sum(axis=0).astype(dtype), db_acc.sum(axis=0).astype(dtype)


# --------------------------------------------------------------------------- GELU


cdef void _gelu_chunk(const floating* x, floating* y, floating* tanh_u, long n) noexcept nogil:
    """y = x (1 + tanh u) / 2, u = √(2/π) (x + 0.044715 x³); saves tanh u.
    float32: rows.h's vectorized loop (tanh from exp); float64: libm's tanh."""
    cdef long j
    if floating is float:
        numpyllm_gelu_tanh_f32(x, y, tanh_u, n)
    else:
        for j in range(n):
            tanh_u[j] = tanh(SQRT_2_OVER_PI * (x[j] + GELU_CUBIC * x[j] * x[j] * x[j]))
            y[j] = 0.5 * x[j] * (1.0 + tanh_u[j])


cdef void _gelu_backward_chunk(const floating* dy, const floating* x, const floating* tanh_u,
                               floating* dx, long n) noexcept nogil:
    """dx = dy · [(1 + t) + x (1 - t²) √(2/π) (1 + 3 · 0.044715 x²)] / 2, t = tanh u."""
    cdef long j
    cdef double du_dx
    if floating is float:
        numpyllm_gelu_tanh_backward_f32(dy, x, tanh_u, dx, n)
    else:
        for j in range(n):
            du_dx = SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_CUBIC * x[j] * x[j])
            dx[j] = 0.5 * dy[j] * ((1.0 + tanh_u[j]) + x[j] * (1.0 - tanh_u[j] * tanh_u[j]) * du_dx)


cdef void _gelu_erf_chunk(const floating* x, floating* y, floating* cdf, long n) noexcept nogil:
    """y = x Φ(x); saves Φ(x). float64: Φ(x) = erfc(-x / √2) / 2 with libm's erfc, accurate in
    the negative tail; float32: rows.h's vectorized polynomial (absolute error ~1e-7)."""
    cdef long j
    if floating is float:
        numpyllm_gelu_erf_f32(x, y, cdf, n)
    else:
        for j in range(n):
            cdf[j] = 0.5 * erfc(-x[j] * INV_SQRT_2)
            y[j] = x[j] * cdf[j]


cdef void _gelu_erf_backward_chunk(const floating* dy, const floating* x, const floating* cdf,
                                   floating* dx, long n) noexcept nogil:
    """dx = dy (Φ(x) + x φ(x)), φ(x) = exp(-x²/2) / √(2π)."""
    cdef long j
    if floating is float:
        numpyllm_gelu_erf_backward_f32(dy, x, cdf, dx, n)
    else:
        for j in range(n):
            dx[j] = dy[j] * (cdf[j] + x[j] * exp(-0.5 * x[j] * x[j]) * INV_SQRT_2PI)


cdef void _forward_chunks(floating[::1] x, floating[::1] y, floating[::1] saved, bint erf_form,
                          int n_threads) noexcept nogil:
    cdef Py_ssize_t k, start
    cdef Py_ssize_t n = x.shape[0]
    for k in prange((n + CHUNK - 1) // CHUNK, num_threads=n_threads, schedule="dynamic"):
        start = k * CHUNK
        if erf_form:
            _gelu_erf_chunk(&x[start], &y[start], &saved[start], min(CHUNK, n - start))
        else:
            _gelu_chunk(&x[start], &y[start], &saved[start], min(CHUNK, n - start))


cdef void _backward_chunks(floating[::1] dy, floating[::1] x, floating[::1] saved, floating[::1] dx,
                           bint erf_form, int n_threads) noexcept nogil:
    cdef Py_ssize_t k, start
    cdef Py_ssize_t n = x.shape[0]
    for k in prange((n + CHUNK - 1) // CHUNK, num_threads=n_threads, schedule="dynamic"):
        start = k * CHUNK
        if erf_form:
            _gelu_erf_backward_chunk(&dy[start], &x[start], &saved[start], &dx[start], min(CHUNK, n - start))
        else:
            _gelu_backward_chunk(&dy[start], &x[start], &saved[start], &dx[start], min(CHUNK, n - start))


def _gelu_forward(x, bint erf_form):
    flat = _flat(x)
    y, saved = np.empty_like(flat), np.empty_like(flat)
    if flat.size:
        if flat.dtype == np.float32:
            _forward_chunks[float](flat, y, saved, erf_form, _threads(flat.size))
        else:
            _forward_chunks[double](flat, y, saved, erf_form, _threads(flat.size))
    return y.reshape(x.shape), saved.reshape(x.shape)


def _gelu_backward(dy, x, saved, bint erf_form):
    flat_dy, flat_x, flat_saved = _flat(dy), _flat(x), _flat(saved)
    dx = np.empty_like(flat_x)
    if flat_x.size:
        if flat_x.dtype == np.float32:
            _backward_chunks[float](flat_dy, flat_x, flat_saved, dx, erf_form, _threads(dx.size))
        else:
            _backward_chunks[double](flat_dy, flat_x, flat_saved, dx, erf_form, _threads(dx.size))
    return dx.reshape(x.shape)


def gelu_forward(x):
    """x: any shape -> y, tanh_u: x's shape (the tanh form)."""
    return _gelu_forward(x, False)


def gelu_backward(dy, x, tanh_u):
    """dy, x, tanh_u: one shape -> dx."""
    return _gelu_backward(dy, x, tanh_u, False)


def gelu_erf_forward(x):
    """x: any shape -> y, cdf = Φ(x): x's shape (the exact form)."""
    return _gelu_forward(x, True)


def gelu_erf_backward(dy, x, cdf):
    """dy, x, cdf: one shape -> dx."""
    return _gelu_backward(dy, x, cdf, True)


# --------------------------------------------------------------------------- cross-entropy


cdef double _softmax_row(const floating* logits, floating* probs, long V, Py_ssize_t target) noexcept nogil:
    """probs = softmax(logits) of one row; returns logsumexp(logits) - logits[target].
    probs may be logits itself (computed in place)."""
    cdef floating shift = <floating> _max(logits, V)
    cdef double target_logit = logits[target]  # read before an in-place softmax overwrites it
    cdef long j
    if floating is float:
        if probs != logits:
            memcpy(probs, logits, V * sizeof(float))
        numpyllm_exp_shift_f32(probs, V, shift)
    else:
        for j in range(V):
            probs[j] = exp(logits[j] - shift)
    cdef double sum_exp = _sum(probs, V)
    cdef floating inv = <floating> (1.0 / sum_exp)
    for j in range(V):
        probs[j] *= inv
    return log(sum_exp) - (target_logit - shift)


cdef void _softmax_all(floating[:, ::1] logits, const Py_ssize_t[::1] targets, floating[:, ::1] probs,
                       double[::1] row_loss, int n_threads) noexcept nogil:
    cdef Py_ssize_t i
    cdef long V = logits.shape[1]
    for i in prange(logits.shape[0], num_threads=n_threads, schedule="guided"):
        row_loss[i] = _softmax_row(&logits[i, 0], &probs[i, 0], V, targets[i])


cdef void _cross_entropy_backward_all(floating[:, ::1] probs, const Py_ssize_t[::1] targets,
                                      floating[::1] row_scale, floating[:, ::1] dlogits,
                                      int n_threads) noexcept nogil:
    cdef Py_ssize_t i, j
    cdef floating s
    for i in prange(probs.shape[0], num_threads=n_threads, schedule="guided"):
        s = row_scale[i]
        for j in range(probs.shape[1]):
            dlogits[i, j] = probs[i, j] * s
        dlogits[i, targets[i]] -= s


def cross_entropy_forward(logits, targets, out=None):
    """logits: (..., V), targets: (...) ints in [0, V) -> probs: (..., V), row_loss: (...) float64,
    row_loss = logsumexp(logits) - logits[target] of each row. probs is out when given
    (logits' shape and dtype; logits itself for an in-place softmax)."""
    rows = _rows(logits)
    target_rows = np.ascontiguousarray(targets, dtype=np.intp).reshape(-1)
    probs = _output_rows(out, rows)
    row_loss = np.empty(rows.shape[0])
    n_threads = _threads(rows.size)
    if rows.dtype == np.float32:
        _softmax_all[float](rows, target_rows, probs, row_loss, n_threads)
    else:
        _softmax_all[double](rows, target_rows, probs, row_loss, n_threads)
    return _into(out, probs, logits.shape), row_loss.reshape(logits.shape[:logits.ndim - 1])


def cross_entropy_backward(probs, targets, row_scale, out=None):
    """probs: (..., V), targets, row_scale: (...) -> dlogits = row_scale · (probs - onehot(targets)),
    out when given (probs' shape and dtype; probs itself included)."""
    rows = _rows(probs)
    target_rows = np.ascontiguousarray(targets, dtype=np.intp).reshape(-1)
    scale = np.ascontiguousarray(row_scale, dtype=rows.dtype).reshape(-1)
    dlogits = _output_rows(out, rows)
    n_threads = _threads(rows.size)
    if rows.dtype == np.float32:
        _cross_entropy_backward_all[float](rows, target_rows, scale, dlogits, n_threads)
    else:
        _cross_entropy_backward_all[double](rows, target_rows, scale, dlogits, n_threads)
    return _into(out, dlogits, probs.shape)


def _output_rows(out, rows):
    """Where a kernel writes rows' result: out's own memory when it is C-contiguous, else a new array."""
    return out.reshape(rows.shape) if out is not None and out.flags.c_contiguous else np.empty_like(rows)


def _into(out, result_rows, shape):
    """The result, shaped: out itself when given (copied into unless written in place)."""
    if out is None:
        return result_rows.reshape(shape)
    if not out.flags.c_contiguous:
        out[...] = result_rows.reshape(shape)
    return out


# --------------------------------------------------------------------------- sums over rows


cdef void _sum_rows_all(floating[:, ::1] x, double[:, ::1] acc, int n_threads) noexcept nogil:
    cdef Py_ssize_t i
    cdef int t = 0
    with parallel(num_threads=n_threads):
        t = threadid()
        for i in prange(x.shape[0], schedule="guided"):
            if floating is float:
                numpyllm_row_accumulate_f32(&acc[t, 0], &x[i, 0], x.shape[1])
            else:
                numpyllm_row_accumulate_f64(&acc[t, 0], &x[i, 0], x.shape[1])


def sum_rows(x):
    """x: (..., n) -> Σ over every leading index: (n,), in x's dtype (summed in double)."""
    rows = _rows(x)
    n_threads = _threads(rows.size)
    acc = np.zeros((n_threads, rows.shape[1]))
    if rows.dtype == np.float32:
        _sum_rows_all[float](rows, acc, n_threads)
    else:
        _sum_rows_all[double](rows, acc, n_threads)
    return acc.sum(axis=0).astype(rows.dtype)


# --------------------------------------------------------------------------- matrix products


# Multiply-adds per thread below which one more thread costs more than it saves.
MIN_PRODUCT_WORK_PER_THREAD = 1 << 22

# gemm.h's products by default wherever AVX-512F/VL runs: measured at least as fast as NumPy's
# OpenBLAS per product, and faster in a step, on an Intel Xeon and an AMD EPYC Zen 4 (README).
cdef bint use_gemm = numpyllm_gemm_available()


def matrix_products(name=None):
    """The float32 products of the linear layers in use, ``"avx512"`` or ``"blas"``; ``name`` selects one first.

    ``"avx512"`` (kernels/gemm.h, the default on CPUs with AVX-512F and AVX-512VL) or
    ``"blas"`` (NumPy's ``@``, the default elsewhere). float64 always uses NumPy's ``@``. For tests and benchmarks that compare the
    two; not thread-safe against running products.
    """
    global use_gemm
    if name is not None:
        if name not in ("avx512", "blas"):
            raise ValueError(f"matrix products must be 'avx512' or 'blas', got {name!r}")
        if name == "avx512" and not numpyllm_gemm_available():
            raise ValueError("matrix products 'avx512' need a CPU with AVX-512F and AVX-512VL "
                             "(and an x86-64 GCC/clang build)")
        use_gemm = name == "avx512"
    return "avx512" if use_gemm else "blas"


def _element_strides(x):
    """x itself and its (row, column) strides in elements, or a C-contiguous copy when its byte
    strides are not whole, non-negative elements."""
    if any(s < 0 or s % 4 for s in x.strides):
        x = np.ascontiguousarray(x)
    return x, x.strides[0] // 4, x.strides[1] // 4


def matmul(a, b, bias=None):
    """a @ b (+ bias) in float32 with gemm.h: a (M, K), b (K, N), bias (N,) or None -> a new
    C-contiguous (M, N) array. Any strides: transposed views (xᵀ, Wᵀ) are read in place.

    The product of ``numpyllm.layers.matmul`` when ``matrix_products()`` is "avx512"; raises
    TypeError for arrays that are not float32 and ValueError for shapes that do not chain.
    """
    for array, name in ((a, "a"), (b, "b"), (bias, "bias")):
        if array is not None and not (isinstance(array, np.ndarray) and array.dtype == np.float32):
            raise TypeError(f"{name} must be a float32 ndarray, got {getattr(array, 'dtype', type(array).__name__)}")
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0]:
        raise ValueError(f"a (M, K) and b (K, N) must be 2-D with matching K, got {a.shape} and {b.shape}")
    cdef Py_ssize_t M = a.shape[0], K = a.shape[1], N = b.shape[1]
    if bias is not None and bias.shape != (N,):
        raise ValueError(f"bias must have shape (N,) = ({N},), got {bias.shape}")
    out = np.empty((M, N), dtype=np.float32)
    if M == 0 or N == 0:
        return out
    if K == 0:
        out[...] = 0 if bias is None else bias
        return out
    cdef Py_ssize_t a_row, a_col, b_row, b_col
    a, a_row, a_col = _element_strides(a)
    b, b_row, b_col = _element_strides(b)
    bias = None if bias is None else np.ascontiguousarray(bias)
    cdef const float[:, :] a_view = a
    cdef const float[:, :] b_view = b
    cdef float[:, ::1] out_view = out
    cdef const float[::1] bias_view
    cdef const float* bias_data = NULL
    if bias is not None:
        bias_view = bias
        bias_data = &bias_view[0]
    n = omp_get_max_threads() if NUMPYLLM_OPENMP else 1
    cdef int n_threads = int(max(1, min(n, M * N * K // MIN_PRODUCT_WORK_PER_THREAD)))
    cdef int status
    with nogil:
        status = numpyllm_sgemm(M, N, K, &a_view[0, 0], a_row, a_col, &b_view[0, 0], b_row, b_col,
                                &out_view[0, 0], N, bias_data, n_threads)
    if status:
        raise MemoryError("matmul: no memory for the packing buffers")
    return out


# --------------------------------------------------------------------------- embedding gradient


cdef void _scatter_add_rows(floating[:, ::1] table, const Py_ssize_t[::1] idx,
                            const floating[:, ::1] rows) noexcept nogil:
    """table[idx[i]] += rows[i] for i in order (one thread: repeated ids add in the reference's order)."""
    cdef Py_ssize_t i, c, n = rows.shape[1]
    cdef floating* target
    cdef const floating* source
    for i in range(idx.shape[0]):
        target = &table[idx[i], 0]
        source = &rows[i, 0]
        for c in range(n):
            target[c] += source[c]


def lookup_backward(dx, idx, Py_ssize_t n_rows):
    """dtable (n_rows, C) with dtable[v] = Σ over i with idx[i] = v of dx[i]: ``np.add.at``'s sum,
    in the same order (so the same values), without its per-row overhead (4 µs a row on the Xeon).

    dx: (..., C); idx: ints of dx's leading shape, each in [-n_rows, n_rows) (negative ones count
    from the end, as NumPy indexing does); others raise IndexError, as ``np.add.at`` does.
    """
    rows = _rows(dx)
    flat = np.ascontiguousarray(idx, dtype=np.intp).reshape(-1)
    if flat.shape[0] != rows.shape[0]:
        raise ValueError(f"idx must have dx's leading shape {dx.shape[:-1]}, got {np.shape(idx)}")
    if flat.size and (flat.min() < -n_rows or flat.max() >= n_rows):
        bad = flat[(flat < -n_rows) | (flat >= n_rows)][0]
        raise IndexError(f"index {bad} is out of bounds for axis 0 with size {n_rows}")
    flat = np.where(flat < 0, flat + n_rows, flat)
    table = np.zeros((n_rows, rows.shape[1]), dtype=rows.dtype)
    if rows.dtype == np.float32:
        _scatter_add_rows[float](table, flat, rows)
    else:
        _scatter_add_rows[double](table, flat, rows)
    return table


# --------------------------------------------------------------------------- optimizer


cdef void _adamw_all(floating[::1] p, floating[::1] g, floating[::1] m, floating[::1] v,
                     floating decay_factor, floating beta1, floating beta2, floating one_minus_beta1,
                     floating one_minus_beta2, floating step_size, floating sqrt_bias_correction2,
                     floating eps, int n_threads) noexcept nogil:
    """p ← p · decay; m ← β₁ m + (1 - β₁) g; v ← β₂ v + (1 - β₂) g²;
    p ← p - step_size · m / (√v / √(1 - β₂ᵗ) + ε), element by element (rows.h), in chunks."""
    cdef Py_ssize_t k, start, length
    cdef Py_ssize_t n = p.shape[0]
    for k in prange((n + CHUNK - 1) // CHUNK, num_threads=n_threads, schedule="dynamic"):
        start = k * CHUNK
        length = min(CHUNK, n - start)
        if floating is float:
            numpyllm_adamw_f32(&p[start], &g[start], &m[start], &v[start], length, decay_factor, beta1, beta2,
                               one_minus_beta1, one_minus_beta2, step_size, sqrt_bias_correction2, eps)
        else:
            numpyllm_adamw_f64(&p[start], &g[start], &m[start], &v[start], length, decay_factor, beta1, beta2,
                               one_minus_beta1, one_minus_beta2, step_size, sqrt_bias_correction2, eps)


def adamw_update(p, g, m, v, double decay_factor, double beta1, double beta2, double step_size,
                 double sqrt_bias_correction2, double eps):
    """One AdamW step on one tensor, in place. p, m, v: C-contiguous arrays of one shape
    (written); g: the gradient, same shape. decay_factor is 1 for tensors without decay."""
    flat_p, flat_m, flat_v = p.reshape(-1), m.reshape(-1), v.reshape(-1)  # views: the caller checked
    flat_g = _flat(g)
    n_threads = _threads(flat_p.size)
    if flat_p.dtype == np.float32:
        _adamw_all[float](flat_p, flat_g, flat_m, flat_v, decay_factor, beta1, beta2, 1 - beta1, 1 - beta2,
                          step_size, sqrt_bias_correction2, eps, n_threads)
    else:
        _adamw_all[double](flat_p, flat_g, flat_m, flat_v, decay_factor, beta1, beta2, 1 - beta1, 1 - beta2,
                           step_size, sqrt_bias_correction2, eps, n_threads)


cdef void _sum_of_squares_chunks(floating[::1] g, double[::1] partial, int n_threads) noexcept nogil:
    cdef Py_ssize_t k, start
    cdef Py_ssize_t n = g.shape[0]
    for k in prange(partial.shape[0], num_threads=n_threads, schedule="dynamic"):
        start = k * CHUNK
        partial[k] = _dot(&g[start], &g[start], min(CHUNK, n - start))


def sum_of_squares(g):
    """Σ g² over every element of g (any shape), summed in double -> float."""
    flat = _flat(g)
    partial = np.zeros((flat.size + CHUNK - 1) // CHUNK)
    if flat.size:
        if flat.dtype == np.float32:
            _sum_of_squares_chunks[float](flat, partial, _threads(flat.size))
        else:
            _sum_of_squares_chunks[double](flat, partial, _threads(flat.size))
    return float(partial.sum())


# --------------------------------------------------------------------------- one decoding step


cdef extern from "decode.h" nogil:
    ctypedef struct numpyllm_barrier:
        int count
        int sense
    void numpyllm_rows_times_f32(const float* x, long B, long K, const float* w, long N, float* y, long j0, long j1)
    void numpyllm_rows_times_f64(const double* x, long B, long K, const double* w, long N, double* y, long j0,
                                 long j1)
    void numpyllm_rows_dot_table_f32(const float* x, long B, long C, const float* table, long V, float* y, long v0,
                                     long v1)
    void numpyllm_rows_dot_table_f64(const double* x, long B, long C, const double* table, long V, double* y,
                                     long v0, long v1)
    void numpyllm_spin_wait(numpyllm_barrier* barrier, int* local_sense, int n)

cdef enum:
    N_BLOCK_PARAMS = 12  # ln_1 w, b; c_attn w, b; attn.c_proj w, b; ln_2 w, b; c_fc w, b; mlp.c_proj w, b
    SPLIT_ALIGN = 16  # thread shares of a row start at multiples of 16 elements (whole cache lines)


cdef inline void _times(const floating* x, long B, long K, const floating* w, long N, floating* y, long j0,
                        long j1) noexcept nogil:
    """y[:, j0:j1] += x (B, K) @ w[:, j0:j1] (w: (K, N); y: (B, N))."""
    if j1 > j0:
        if floating is float:
            numpyllm_rows_times_f32(x, B, K, w, N, y, j0, j1)
        else:
            numpyllm_rows_times_f64(x, B, K, w, N, y, j0, j1)


cdef inline void _preset(floating* y, const floating* bias, long B, long N, long j0, long j1,
                         bint add) noexcept nogil:
    """y[:, j0:j1] = bias[j0:j1] (add: y[:, j0:j1] += bias[j0:j1]); y: (B, N)."""
    cdef long r, j
    for r in range(B):
        for j in range(j0, j1):
            y[r * N + j] = y[r * N + j] + bias[j] if add else bias[j]


cdef inline long _share(long n, int t, int n_threads) noexcept nogil:
    """Where thread t's share of [0, n) starts (t = n_threads: n), at a multiple of SPLIT_ALIGN."""
    cdef long start = (n * t // n_threads + SPLIT_ALIGN - 1) // SPLIT_ALIGN * SPLIT_ALIGN
    return min(start, n)


cdef void _attend_one(const floating* q, floating* keys, floating* values, int length, int hd,
                      floating* scores, floating* out) noexcept nogil:
    """out (hd) = softmax(q · keys[j] / √hd over j < length) · values: one query of one head,
    keys, values: (length, hd) rows. (What attention.forward computes for Nq = 1, causal or not.)"""
    cdef int j, c
    cdef double scale = 1.0 / sqrt(hd)
    for j in range(length):
        scores[j] = <floating> (scale * _dot(q, keys + j * hd, hd))
    cdef floating shift = <floating> _max(scores, length)
    if floating is float:
        numpyllm_exp_shift_f32(scores, length, shift)
    else:
        for j in range(length):
            scores[j] = exp(scores[j] - shift)
    cdef floating inv = <floating> (1.0 / _sum(scores, length))
    for c in range(hd):
        out[c] = 0
    for j in range(length):
        for c in range(hd):
            out[c] += scores[j] * values[j * hd + c]
    for c in range(hd):
        out[c] *= inv


cdef void _step_thread(void** params, int n_layer, floating* x, long B, long T, long C, long I, int H,
                       long capacity, floating* keys, floating* values, long start, double eps,
                       const floating* ln_f_w, const floating* ln_f_b, const floating* wte, long V,
                       floating* logits, floating* h, floating* qkv, floating* o, floating* hidden, floating* act,
                       floating* saved, floating* scores, floating* stats, numpyllm_barrier* barrier, int t,
                       int n_threads) noexcept nogil:
    """Thread t's part of DecodeStep.step on the R = B·T rows of x (row b·T + i at position
    start + i): every layer, then the head's logits[:, v0:v1] of each sequence's last row.

    Thread t owns columns [a0, a1) of qkv, heads [h0, h1) (their cache rows and attention),
    columns [c0, c1) of x's updates and [f0, f1) of the hidden layer, and computes each
    layernorm of all rows itself into its own h (R, C) (cheaper than a barrier). Shared: qkv
    (R, 3C), o (R, C), hidden, act, saved (R, I); its own scores (capacity), stats (2).
    Barriers per layer: qkv complete, o complete, x complete, act complete, x complete. (qkv
    split by heads would save the first, but each thread would read three strips of every
    row of w_attn: 6-8% slower on the AMD EPYC Zen 3.)"""
    cdef int sense = 0, layer, head
    cdef long R = B * T, b, i, r, c, hd = C // H
    cdef int h0 = H * t // n_threads, h1 = H * (t + 1) // n_threads
    cdef long a0 = _share(3 * C, t, n_threads), a1 = _share(3 * C, t + 1, n_threads)
    cdef long c0 = _share(C, t, n_threads), c1 = _share(C, t + 1, n_threads)
    cdef long f0 = _share(I, t, n_threads), f1 = _share(I, t + 1, n_threads)
    cdef long v0 = _share(V, t, n_threads), v1 = _share(V, t + 1, n_threads)
    cdef floating** p
    cdef floating* cached_k
    cdef floating* cached_v
    for layer in range(n_layer):
        p = <floating**> (params + layer * N_BLOCK_PARAMS)
        # qkv = layernorm_1(x) @ w_attn + b_attn, this thread's columns; then its heads' attention
        # ([q | k | v], head in channels [head·hd, (head+1)·hd) of each)
        for r in range(R):
            _layernorm_row(x + r * C, p[0], p[1], h + r * C, stats, stats + 1, C, eps)
        _preset(qkv, p[3], R, 3 * C, a0, a1, False)
        _times(h, R, C, p[2], 3 * C, qkv, a0, a1)
        numpyllm_spin_wait(barrier, &sense, n_threads)
        for b in range(B):
            for head in range(h0, h1):
                cached_k = keys + ((layer * B + b) * H + head) * capacity * hd  # (capacity, hd)
                cached_v = values + ((layer * B + b) * H + head) * capacity * hd
                for i in range(T):
                    r = b * T + i
                    for c in range(hd):
                        cached_k[(start + i) * hd + c] = qkv[r * 3 * C + C + head * hd + c]
                        cached_v[(start + i) * hd + c] = qkv[r * 3 * C + 2 * C + head * hd + c]
                for i in range(T):  # causal: position start + i sees the positions up to itself
                    r = b * T + i
                    _attend_one(qkv + r * 3 * C + head * hd, cached_k, cached_v, <int> (start + i + 1), <int> hd,
                                scores, o + r * C + head * hd)
        numpyllm_spin_wait(barrier, &sense, n_threads)
        # x += o @ w_proj + b_proj
        _preset(x, p[5], R, C, c0, c1, True)
        _times(o, R, C, p[4], C, x, c0, c1)
        numpyllm_spin_wait(barrier, &sense, n_threads)
        # x += gelu(layernorm_2(x) @ w_fc + b_fc) @ w_fc_proj + b_fc_proj
        for r in range(R):
            _layernorm_row(x + r * C, p[6], p[7], h + r * C, stats, stats + 1, C, eps)
        _preset(hidden, p[9], R, I, f0, f1, False)
        _times(h, R, C, p[8], I, hidden, f0, f1)
        for r in range(R):
            _gelu_chunk(hidden + r * I + f0, act + r * I + f0, saved + r * I + f0, f1 - f0)
        numpyllm_spin_wait(barrier, &sense, n_threads)
        _preset(x, p[11], R, C, c0, c1, True)
        _times(act, R, I, p[10], C, x, c0, c1)
        numpyllm_spin_wait(barrier, &sense, n_threads)
    # logits = layernorm_f(x[:, -1]) @ wteᵀ (the tied head), sequence b's row into h[b]
    for b in range(B):
        _layernorm_row(x + (b * T + T - 1) * C, ln_f_w, ln_f_b, h + b * C, stats, stats + 1, C, eps)
    if v1 > v0:
        if floating is float:
            numpyllm_rows_dot_table_f32(h, B, C, wte, V, logits, v0, v1)
        else:
            numpyllm_rows_dot_table_f64(h, B, C, wte, V, logits, v0, v1)


cdef class DecodeStep:
    """GPT-2's forward on new positions against a KV cache, every layer and the tied head in
    one call with one OpenMP parallel region: the cached forward of
    ``numpyllm.generation.Decoder``, equal to its layer functions up to rounding.

    DecodeStep(blocks, keys, values, ln_f_weight, ln_f_bias, wte, eps, num_threads=0)
        blocks: per layer the 12 arrays (one float dtype, C-contiguous) in the order ln_1,
            attn.c_attn, attn.c_proj, ln_2, mlp.c_fc, mlp.c_proj, weight then bias of each:
            (C,), (C,), (C, 3C), (3C,), (C, C), (C,), (C,), (C,), (C, I), (I,), (I, C), (C,).
        keys, values: (n_layer, B, H, capacity, hd), C = H · hd, C-contiguous: the cache, written.
        ln_f_weight, ln_f_bias: (C,); wte: (V, C), the tied head's table.
        num_threads: 0 for OpenMP's default (OMP_NUM_THREADS, threadpoolctl), fewer when a
            C × C matrix has under MIN_ELEMENTS_PER_THREAD elements a thread; else exactly that.

    step(x, start) -> logits (B, V) of each sequence's last new position. x: (B, T, C), the
    embeddings of positions [start, start + T) <= capacity, C-contiguous; it becomes the last
    block's output in place. The cache must hold positions < start; the step writes
    [start, start + T), and position start + i attends to positions <= start + i.

    Every product splits its output columns over the threads, which stream the weights
    themselves (decode.h) instead of calling BLAS: a few rows times a matrix is bound by
    reading the matrix, and a BLAS call's own threads inside the region would oversubscribe
    the cores. Built for few rows (decoding, short prompts): its products and attention are
    plain loops, slower than BLAS and the attention kernel on long prompts. Every argument is
    checked here, and the arrays are kept referenced, so bad input raises ValueError or
    TypeError instead of reaching the C loops. One object serves one caller at a time (its
    scratch rows are shared by its calls; Decoder makes its own).
    """

    cdef object _arrays  # the block arrays the pointers below point into, kept alive
    cdef void** _params  # n_layer × N_BLOCK_PARAMS data pointers
    cdef int n_layer, n_head, num_threads
    cdef long batch, width, inner, capacity, vocab, _scratch_rows, _scratch_threads
    cdef double eps
    cdef object dtype, keys, values, ln_f_weight, ln_f_bias, wte
    cdef object _h, _qkv, _o, _hidden, _act, _saved, _scores, _stats

    def __cinit__(self):
        self._params = NULL

    def __dealloc__(self):
        free(self._params)

    def __init__(self, blocks, keys, values, ln_f_weight, ln_f_bias, wte, double eps, int num_threads=0):
        if num_threads < 0:
            raise ValueError(f"num_threads must be >= 0, got {num_threads}")
        blocks = [tuple(block) for block in blocks]
        if not isinstance(keys, np.ndarray) or keys.ndim != 5 or 0 in keys.shape:
            raise ValueError("keys must be a 5-D array (n_layer, B, H, capacity, hd) with no empty axis")
        if keys.dtype not in (np.float32, np.float64):
            raise TypeError(f"the arrays must be float32 or float64, got {keys.dtype}")
        n_layer, B, H, capacity, hd = keys.shape
        C = H * hd
        if len(blocks) != n_layer or any(len(block) != N_BLOCK_PARAMS for block in blocks):
            raise ValueError(f"blocks must hold {N_BLOCK_PARAMS} arrays for each of keys' {n_layer} layers")
        fc_shape, wte_shape = np.shape(blocks[0][8]), np.shape(wte)
        I = fc_shape[len(fc_shape) - 1] if fc_shape else 0  # checked below with every shape
        V = wte_shape[0] if wte_shape else 0
        shapes = [(C,), (C,), (C, 3 * C), (3 * C,), (C, C), (C,), (C,), (C,), (C, I), (I,), (I, C), (C,)]
        named = [("values", values, keys.shape), ("ln_f_weight", ln_f_weight, (C,)),
                 ("ln_f_bias", ln_f_bias, (C,)), ("wte", wte, (V, C))]
        named += [(f"blocks[{layer}][{i}]", a, shape) for layer, block in enumerate(blocks)
                  for i, (a, shape) in enumerate(zip(block, shapes))]
        for name, a, shape in named:
            if not isinstance(a, np.ndarray) or a.dtype != keys.dtype:
                raise TypeError(f"{name} must be a {keys.dtype} ndarray like keys, got "
                                f"{getattr(a, 'dtype', type(a).__name__)}")
            if a.shape != shape or not a.flags.c_contiguous:
                raise ValueError(f"{name} must be C-contiguous of shape {shape}, got {a.shape}")
        if I < 1 or V < 1:
            raise ValueError("the hidden layer and the vocabulary must not be empty")
        if not (keys.flags.writeable and values.flags.writeable):
            raise ValueError("keys and values must be writeable")
        self._params = <void**> malloc(n_layer * N_BLOCK_PARAMS * sizeof(void*))
        if self._params == NULL:
            raise MemoryError()
        cdef Py_ssize_t k = 0
        for block in blocks:
            for a in block:
                self._params[k] = <void*> <Py_ssize_t> a.ctypes.data
                k += 1
        self._arrays = blocks
        self.keys, self.values, self.ln_f_weight, self.ln_f_bias, self.wte = keys, values, ln_f_weight, ln_f_bias, wte
        self.dtype, self.eps, self.num_threads = keys.dtype, eps, num_threads
        self.n_layer, self.batch, self.n_head, self.capacity = n_layer, B, H, capacity
        self.width, self.inner, self.vocab = C, I, V
        self._scratch_rows = self._scratch_threads = 0

    cdef int _threads_and_scratch(self, long rows) except -1:
        """The step's threads; (re)allocates the scratch for them and ``rows`` rows when it is short."""
        cdef long n = self.num_threads
        if n == 0:
            n = max(1, min(omp_get_max_threads(), self.width * self.width // MIN_ELEMENTS_PER_THREAD))
        if not NUMPYLLM_OPENMP:
            n = 1
        if rows > self._scratch_rows:
            self._qkv, self._o = np.empty((rows, 3 * self.width), self.dtype), np.empty((rows, self.width), self.dtype)
            self._hidden, self._act, self._saved = (np.empty((rows, self.inner), self.dtype) for _ in range(3))
        if rows > self._scratch_rows or n > self._scratch_threads:
            self._scratch_rows, self._scratch_threads = max(rows, self._scratch_rows), max(n, self._scratch_threads)
            self._h = np.empty((self._scratch_threads, self._scratch_rows, self.width), self.dtype)
            self._scores = np.empty((self._scratch_threads, self.capacity), self.dtype)
            self._stats = np.empty((self._scratch_threads, 2), self.dtype)
        return n

    def step(self, x, long start):
        if not isinstance(x, np.ndarray) or x.dtype != self.dtype:
            raise TypeError(f"x must be a {self.dtype} ndarray")
        if (x.ndim != 3 or x.shape[0] != self.batch or x.shape[2] != self.width or x.shape[1] < 1
                or not x.flags.c_contiguous or not x.flags.writeable):
            raise ValueError(f"x must be writeable and C-contiguous of shape ({self.batch}, T >= 1, {self.width}), "
                             f"got {x.shape}")
        if start < 0 or start + x.shape[1] > self.capacity:
            raise ValueError(f"positions [{start}, {start + x.shape[1]}) must lie in [0, {self.capacity})")
        cdef int n_threads = self._threads_and_scratch(x.shape[0] * x.shape[1])
        logits = np.empty((self.batch, self.vocab), self.dtype)
        if self.dtype == np.float32:
            _run_step[float](self, x, logits, self.keys, self.values, self.ln_f_weight, self.ln_f_bias, self.wte,
                             self._h, self._qkv, self._o, self._hidden, self._act, self._saved, self._scores,
                             self._stats, start, n_threads)
        else:
            _run_step[double](self, x, logits, self.keys, self.values, self.ln_f_weight, self.ln_f_bias, self.wte,
                              self._h, self._qkv, self._o, self._hidden, self._act, self._saved, self._scores,
                              self._stats, start, n_threads)
        return logits


cdef int _run_step(DecodeStep step, floating[:, :, ::1] x, floating[:, ::1] logits,
                   floating[:, :, :, :, ::1] keys, floating[:, :, :, :, ::1] values, floating[::1] ln_f_w,
                   floating[::1] ln_f_b, floating[:, ::1] wte, floating[:, :, ::1] h, floating[:, ::1] qkv,
                   floating[:, ::1] o, floating[:, ::1] hidden, floating[:, ::1] act, floating[:, ::1] saved,
                   floating[:, ::1] scores, floating[:, ::1] stats, long start, int n_threads) except -1:
    """DecodeStep.step on its checked arrays: one parallel region. Thread t's scratch rows are
    h[t] (rows, C), scores[t] (capacity), stats[t] (2); qkv, o, hidden, act, saved are shared."""
    cdef void** params = step._params
    cdef int n_layer = step.n_layer, H = step.n_head, t = 0, team = 1
    cdef double eps = step.eps
    cdef long B = x.shape[0], T = x.shape[1], C = x.shape[2], I = hidden.shape[1], capacity = keys.shape[3]
    cdef numpyllm_barrier barrier
    barrier.count = 0
    barrier.sense = 0
    with nogil, parallel(num_threads=n_threads):
        t = threadid()
        team = omp_get_num_threads()  # may be fewer than asked for
        _step_thread(params, n_layer, &x[0, 0, 0], B, T, C, I, H, capacity, &keys[0, 0, 0, 0, 0],
                     &values[0, 0, 0, 0, 0], start, eps, &ln_f_w[0], &ln_f_b[0], &wte[0, 0], wte.shape[0],
                     &logits[0, 0], &h[t, 0, 0], &qkv[0, 0], &o[0, 0], &hidden[0, 0], &act[0, 0], &saved[0, 0],
                     &scores[t, 0], &stats[t, 0], &barrier, t, team)
    return 0
