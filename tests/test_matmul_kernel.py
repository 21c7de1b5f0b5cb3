"""The linear layers' compiled float32 products (kernels/gemm.h, as ``numpyllm._layers.matmul``)
equal the exact product to float32 rounding on every edge of their blocking (6-row blocks of A,
64-column strips of B, reduction blocks of 384, 512 columns of B packed at a time), with A and B in
any layout and with or without a bias; the result does not depend on the thread count; bad input
is refused; and ``numpyllm.layers`` runs them when selected.
"""

import contextlib
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from threadpoolctl import threadpool_limits

from numpyllm import backend
from numpyllm import layers as L

KERNEL_BUILT = "cython" in backend.available_backends()
REQUIRE_KERNEL = bool(os.environ.get("CI") or os.environ.get("NUMPYLLM_REQUIRE_KERNEL"))
pytestmark = pytest.mark.skipif(not KERNEL_BUILT and not REQUIRE_KERNEL,
                                reason="layer kernels not built (python setup.py build_ext --inplace)")


def cpu_has_avx512():
    """AVX-512F and AVX-512VL in /proc/cpuinfo (False where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return "avx512f" in flags and "avx512vl" in flags


def gemm_runs_here():
    """Whether this CPU and build can run gemm.h's products."""
    if not KERNEL_BUILT:
        return False
    kernel = backend.KERNEL.module
    current = kernel.matrix_products()
    try:
        kernel.matrix_products("avx512")
    except ValueError:
        return False
    kernel.matrix_products(current)
    return True


needs_gemm = pytest.mark.skipif(not gemm_runs_here() and not (REQUIRE_KERNEL and cpu_has_avx512()),
                                reason="no AVX-512F/VL here: the linear layers use NumPy's BLAS")


@contextlib.contextmanager
def gemm_selected():
    """The kernel module with gemm.h's products selected inside the block, the default restored after."""
    module = backend.KERNEL.module
    default = module.matrix_products()
    module.matrix_products("avx512")
    try:
        yield module
    finally:
        module.matrix_products(default)


@pytest.fixture
def kernel():
    """gemm_selected() for a whole test."""
    with gemm_selected() as module:
        yield module


def test_products_run_where_the_cpu_has_avx512():
    """A kernel build on an AVX-512 CPU can run gemm.h (so CI on such a CPU cannot quietly skip it)."""
    if cpu_has_avx512() and (KERNEL_BUILT or REQUIRE_KERNEL):
        assert gemm_runs_here()


def test_products_are_the_default_where_the_cpu_has_avx512():
    """A fresh process picks gemm.h's products on any AVX-512F/VL CPU, AMD's as well as Intel's,
    and NumPy's BLAS elsewhere."""
    if not (KERNEL_BUILT or REQUIRE_KERNEL):
        pytest.skip("layer kernels not built")
    probe = "import numpyllm._layers as kernel; print(kernel.matrix_products())"
    default = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip()
    assert default == ("avx512" if cpu_has_avx512() else "blas")


def layout(rng, shape, kind):
    """A random float32 (rows, cols) array: C-contiguous, a transposed view, every other column
    of a wider array, or every other row of a taller one."""
    rows, cols = shape
    if kind == "transposed":
        x = rng.standard_normal((cols, rows)).astype(np.float32).T
    elif kind == "column step":
        x = rng.standard_normal((rows, 2 * cols)).astype(np.float32)[:, ::2]
    elif kind == "row step":
        x = rng.standard_normal((2 * rows, cols)).astype(np.float32)[::2]
    else:
        x = rng.standard_normal(shape).astype(np.float32)
    assert x.shape == shape
    return x


def assert_within_float32_rounding(c, a, b, bias):
    """|c - (a b + bias)| <= 2 (K + 2) eps |a| |b| + |bias| elementwise: the bound of a K-term
    float32 sum (and the bias's addition), against the product in float64."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    exact = a64 @ b64 + (0.0 if bias is None else bias.astype(np.float64))
    scale = np.abs(a64) @ np.abs(b64) + (0.0 if bias is None else np.abs(bias.astype(np.float64)))
    bound = 2 * (a.shape[1] + 2) * np.finfo(np.float32).eps * scale + 1e-30
    assert c.shape == exact.shape and c.dtype == np.float32 and c.flags.c_contiguous
    assert np.all(np.abs(c - exact) <= bound), float(np.max(np.abs(c - exact) / bound))


KINDS = ["contiguous", "transposed", "column step", "row step"]


@needs_gemm
@given(seed=st.integers(0, 2**32 - 1),
       m=st.sampled_from([1, 5, 6, 7, 13, 95, 97, 200]),
       n=st.sampled_from([1, 15, 16, 63, 64, 65, 511, 513, 600]),
       k=st.sampled_from([1, 2, 17, 383, 384, 385, 769]),
       a_kind=st.sampled_from(KINDS), b_kind=st.sampled_from(KINDS), with_bias=st.booleans())
@settings(max_examples=60, deadline=None)
def test_products_equal_the_exact_product_to_rounding(seed, m, n, k, a_kind, b_kind, with_bias):
    rng = np.random.default_rng(seed)
    a, b = layout(rng, (m, k), a_kind), layout(rng, (k, n), b_kind)
    bias = rng.standard_normal(n).astype(np.float32) if with_bias else None
    with gemm_selected() as kernel:
        assert_within_float32_rounding(kernel.matmul(a, b, bias), a, b, bias)


@needs_gemm
@pytest.mark.parametrize("m, k, n", [(700, 1000, 600), (96, 2048, 130), (5, 40, 1500)])
def test_products_do_not_depend_on_the_thread_count(kernel, m, k, n):
    """Bands of rows (M >= N) or columns per thread, each element summed in the same order: the
    same bits on one thread as on several."""
    rng = np.random.default_rng(m)
    a, b = layout(rng, (m, k), "transposed"), layout(rng, (k, n), "contiguous")
    bias = rng.standard_normal(n).astype(np.float32)
    with threadpool_limits(1, user_api="openmp"):
        one = kernel.matmul(a, b, bias)
    with threadpool_limits(4, user_api="openmp"):
        several = kernel.matmul(a, b, bias)
    np.testing.assert_array_equal(one, several)
    assert_within_float32_rounding(one, a, b, bias)


@needs_gemm
def test_products_read_negative_strides_and_broadcast_rows(kernel):
    rng = np.random.default_rng(1)
    a = rng.standard_normal((30, 20)).astype(np.float32)[::-1, ::-1]
    b = np.broadcast_to(rng.standard_normal(70).astype(np.float32), (20, 70))  # a zero row stride
    assert_within_float32_rounding(kernel.matmul(a, b), a, b, None)


@needs_gemm
@pytest.mark.parametrize("m, k, n", [(0, 3, 4), (3, 3, 0), (3, 0, 4), (0, 0, 0)])
def test_products_of_empty_matrices(kernel, m, k, n):
    a, b = np.ones((m, k), np.float32), np.ones((k, n), np.float32)
    np.testing.assert_array_equal(kernel.matmul(a, b), np.zeros((m, n), np.float32))
    bias = np.arange(n, dtype=np.float32)
    np.testing.assert_array_equal(kernel.matmul(a, b, bias), np.zeros((m, n), np.float32) + bias)


@needs_gemm
def test_products_refuse_bad_input(kernel):
    a, b = np.ones((3, 4), np.float32), np.ones((4, 5), np.float32)
    with pytest.raises(TypeError, match="a must be a float32 ndarray, got float64"):
        kernel.matmul(a.astype(np.float64), b)
    with pytest.raises(TypeError, match="b must be a float32 ndarray, got list"):
        kernel.matmul(a, b.tolist())
    with pytest.raises(TypeError, match="bias must be a float32 ndarray, got int64"):
        kernel.matmul(a, b, np.ones(5, np.int64))
    with pytest.raises(ValueError, match=r"matching K, got \(3, 4\) and \(5, 5\)"):
        kernel.matmul(a, np.ones((5, 5), np.float32))
    with pytest.raises(ValueError, match=r"a \(M, K\) and b \(K, N\) must be 2-D"):
        kernel.matmul(np.ones((2, 3, 4), np.float32), b)
    with pytest.raises(ValueError, match=r"bias must have shape \(N,\) = \(5,\), got \(4,\)"):
        kernel.matmul(a, b, np.ones(4, np.float32))


def test_products_switch_refuses_unknown_names():
    module = backend.KERNEL.module
    current = module.matrix_products()
    with pytest.raises(ValueError, match="'avx512' or 'blas', got 'mkl'"):
        module.matrix_products("mkl")
    assert module.matrix_products() == current
    assert module.matrix_products("blas") == "blas"
    module.matrix_products(current)


@needs_gemm
@pytest.mark.parametrize("n_in, n_out", [(24, 80), (80, 24)])  # dW formed as it is, and transposed
def test_linear_layers_run_the_products_and_match_the_reference(kernel, monkeypatch, n_in, n_out):
    rng = np.random.default_rng(n_in)
    x = rng.standard_normal((3, 50, n_in)).astype(np.float32)
    weight, bias = rng.standard_normal((n_in, n_out)).astype(np.float32), rng.standard_normal(n_out).astype(np.float32)
    dy = rng.standard_normal((3, 50, n_out)).astype(np.float32)
    calls = []
    compiled = kernel.matmul
    monkeypatch.setattr(kernel, "matmul", lambda a, b, bias=None: calls.append(a.shape) or compiled(a, b, bias))
    with backend.using("cython"):
        y, cache = L.linear_forward(x, weight, bias)
        grads = L.linear_backward(dy, cache)
    assert len(calls) == 3  # y, dx and dweight all went to gemm.h
    with backend.using("numpy"):
        y_ref, cache_ref = L.linear_forward(x, weight, bias)
        grads_ref = L.linear_backward(dy, cache_ref)
    for got, want in zip((y, *grads), (y_ref, *grads_ref)):
        assert got.shape == want.shape and got.dtype == want.dtype
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * (1 + np.abs(want).max()))


@needs_gemm
def test_float64_and_the_numpy_backend_keep_numpys_product(kernel, monkeypatch):
    monkeypatch.setattr(kernel, "matmul", lambda *args: pytest.fail("gemm.h ran"))
    a, b = np.ones((4, 3)), np.ones((3, 2))
    np.testing.assert_array_equal(L.matmul(a, b), a @ b)  # float64
    with backend.using("numpy"):
        a32, b32 = a.astype(np.float32), b.astype(np.float32)
        np.testing.assert_array_equal(L.matmul(a32, b32, np.ones(2, np.float32)), a32 @ b32 + 1)
