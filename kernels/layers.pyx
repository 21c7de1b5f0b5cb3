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
    adamw_update     the AdamW step on one tensor, in place
    sum_of_squares   Σ g² of one tensor (the global norm that clipping needs)
    decode_block     one GPT-2 block on one new position per row (KV-cached decoding) in a
                     single call: the products through BLAS, attention and the rest in C

float32 and float64 share one code path (``floating`` fused types); float32 sums are
accumulated in double. float64 takes exp, tanh and erfc from libm; float32's vector loops
(rows.h) build tanh and Φ from ``fastexp.h``'s vectorizable exp. The Python functions
below take arrays the caller has checked (``numpyllm.layers`` passes only float32/float64
arrays of one dtype); any strides are accepted: an input that is not C-contiguous is
copied once.
"""

import numpy as np

from cython cimport floating
from cython.parallel cimport parallel, prange, threadid
from libc.math cimport erfc, exp, log, sqrt, tanh
from libc.string cimport memcpy
from scipy.linalg.cython_blas cimport dgemm, dgemv, sgemm, sgemv

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
    to this thread's dweight and dbias rows. x_hat and g are this thread's scratch rows."""
    cdef long c
    for c in range(C):
        x_hat[c] = (x[c] - mean) * rstd
        g[c] = dy[c] * w[c]
    cdef floating mean_g = <floating> (_sum(g, C) / C)
    cdef floating mean_g_x_hat = <floating> (_dot(g, x_hat, C) / C)
    for c in range(C):
        dx[c] = (g[c] - mean_g - x_hat[c] * mean_g_x_hat) * rstd
        dw_acc[c] += <double> dy[c] * x_hat[c]
        db_acc[c] += dy[c]


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


# --------------------------------------------------------------------------- one decoding step of a block


cdef inline void _matmul_rows(const floating* a, int rows, int k, const floating* w, int n, floating* out,
                              floating beta) noexcept nogil:
    """out (rows, n) = a (rows, k) @ w (k, n) + beta · out, all C-contiguous, through BLAS.

    Row-major matrices are column-major transposes, so this is outᵀ = wᵀ aᵀ; one row is a gemv."""
    cdef char no = b'N'
    cdef int inc = 1
    cdef floating alpha = 1
    if rows == 1:
        if floating is float:
            sgemv(&no, &n, &k, &alpha, <float*> w, &n, <float*> a, &inc, &beta, out, &inc)
        else:
            dgemv(&no, &n, &k, &alpha, <double*> w, &n, <double*> a, &inc, &beta, out, &inc)
    elif floating is float:
        sgemm(&no, &no, &n, &rows, &k, &alpha, <float*> w, &n, <float*> a, &k, &beta, out, &n)
    else:
        dgemm(&no, &no, &n, &rows, &k, &alpha, <double*> w, &n, <double*> a, &k, &beta, out, &n)


cdef void _add_rows(floating* out, const floating* bias, int rows, int n) noexcept nogil:
    """out[r] += bias for each of the rows."""
    cdef int r, c
    for r in range(rows):
        for c in range(n):
            out[r * n + c] += bias[c]


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


cdef void _decode_block(floating[:, ::1] x, floating[::1] ln1_w, floating[::1] ln1_b,
                        floating[:, ::1] w_attn, floating[::1] b_attn, floating[:, ::1] w_proj,
                        floating[::1] b_proj, floating[::1] ln2_w, floating[::1] ln2_b,
                        floating[:, ::1] w_fc, floating[::1] b_fc, floating[:, ::1] w_fc_proj,
                        floating[::1] b_fc_proj, floating[:, :, :, ::1] keys, floating[:, :, :, ::1] values,
                        int position, double eps, floating[:, ::1] h, floating[:, ::1] qkv,
                        floating[:, ::1] o, floating[:, ::1] hidden, floating[:, ::1] act,
                        floating[:, ::1] saved, floating[::1] stats, floating[::1] scores) noexcept nogil:
    """decode_block's work; h, qkv, o, hidden, act, saved, stats, scores are scratch."""
    cdef int B = x.shape[0], C = x.shape[1], H = keys.shape[1], hd = keys.shape[3]
    cdef int b, head, c
    # x + attention(layernorm_1(x))
    for b in range(B):
        _layernorm_row(&x[b, 0], &ln1_w[0], &ln1_b[0], &h[b, 0], &stats[0], &stats[1], C, eps)
        for c in range(3 * C):
            qkv[b, c] = b_attn[c]
    _matmul_rows(&h[0, 0], B, C, &w_attn[0, 0], 3 * C, &qkv[0, 0], 1)
    for b in range(B):
        for head in range(H):  # [q | k | v], head h in channels [h·hd, (h+1)·hd) of each
            for c in range(hd):
                keys[b, head, position, c] = qkv[b, C + head * hd + c]
                values[b, head, position, c] = qkv[b, 2 * C + head * hd + c]
            _attend_one(&qkv[b, head * hd], &keys[b, head, 0, 0], &values[b, head, 0, 0], position + 1, hd,
                        &scores[0], &o[b, head * hd])
    _add_rows(&x[0, 0], &b_proj[0], B, C)
    _matmul_rows(&o[0, 0], B, C, &w_proj[0, 0], C, &x[0, 0], 1)
    # x + mlp(layernorm_2(x))
    for b in range(B):
        _layernorm_row(&x[b, 0], &ln2_w[0], &ln2_b[0], &h[b, 0], &stats[0], &stats[1], C, eps)
        for c in range(4 * C):
            hidden[b, c] = b_fc[c]
    _matmul_rows(&h[0, 0], B, C, &w_fc[0, 0], 4 * C, &hidden[0, 0], 1)
    _gelu_chunk(&hidden[0, 0], &act[0, 0], &saved[0, 0], B * 4 * C)
    _add_rows(&x[0, 0], &b_fc_proj[0], B, C)
    _matmul_rows(&act[0, 0], B, 4 * C, &w_fc_proj[0, 0], C, &x[0, 0], 1)


def decode_block(x, params, keys, values, int position, double eps):
    """One GPT-2 block on one new position of each row, in place: x += attention(layernorm_1(x)),
    then x += mlp(layernorm_2(x)), writing the position's key and value into the cache.

    x: (B, C) C-contiguous, updated in place. params: the block's 12 arrays, C-contiguous, in the
    order ln_1, attn.c_attn, attn.c_proj, ln_2, mlp.c_fc, mlp.c_proj, weight then bias of each.
    keys, values: (B, H, capacity, hd) C-contiguous; positions < position hold the cache, and the
    new position's query attends to positions <= position (all it may see).
    """
    B, C = x.shape
    ln1_w, ln1_b, w_attn, b_attn, w_proj, b_proj, ln2_w, ln2_b, w_fc, b_fc, w_fc_proj, b_fc_proj = params
    h, o = np.empty((B, C), x.dtype), np.empty((B, C), x.dtype)
    qkv = np.empty((B, 3 * C), x.dtype)
    hidden, act, saved = np.empty((B, 4 * C), x.dtype), np.empty((B, 4 * C), x.dtype), np.empty((B, 4 * C), x.dtype)
    stats, scores = np.empty(2, x.dtype), np.empty(position + 1, x.dtype)
    if x.dtype == np.float32:
        _decode_block[float](x, ln1_w, ln1_b, w_attn, b_attn, w_proj, b_proj, ln2_w, ln2_b, w_fc, b_fc,
                             w_fc_proj, b_fc_proj, keys, values, position, eps, h, qkv, o, hidden, act, saved, stats,
                             scores)
    else:
        _decode_block[double](x, ln1_w, ln1_b, w_attn, b_attn, w_proj, b_proj, ln2_w, ln2_b, w_fc, b_fc,
                              w_fc_proj, b_fc_proj, keys, values, position, eps, h, qkv, o, hidden, act, saved, stats,
                              scores)
