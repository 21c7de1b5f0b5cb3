"""Attention: the kernel equals the reference, the reference's backward equals finite
differences, bad input is rejected, and the NumPy fallback works."""

import functools
import os
import subprocess
import sys
import tracemalloc
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings

from numpyllm import attention
from numpyllm.testing import AttentionProblem, attention_problems, check_attention, make_attention_problem
from finite_differences import assert_gradient_matches

KERNEL_BUILT = "cython" in attention.available_backends()
# In CI (and whenever NUMPYLLM_REQUIRE_KERNEL is set) a missing kernel is a failure,
# so a broken build can never pass as the NumPy fallback.
REQUIRE_KERNEL = bool(os.environ.get("CI") or os.environ.get("NUMPYLLM_REQUIRE_KERNEL"))
needs_kernel = pytest.mark.skipif(
    not KERNEL_BUILT and not REQUIRE_KERNEL, reason="compiled kernel not built (pip install -e .)"
)
# For tests run on both implementations: the kernel's case follows needs_kernel.
REFERENCE_AND_KERNEL = ["numpy", pytest.param("cython", marks=needs_kernel)]

kernel_forward = functools.partial(attention.forward, backend="cython")
kernel_backward = functools.partial(attention.backward, backend="cython")
reference_forward = functools.partial(attention.forward, backend="numpy")
reference_backward = functools.partial(attention.backward, backend="numpy")


def random_qkv(shape_q, n_k, dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    B, H, n_q, d = shape_q
    q = rng.standard_normal((B, H, n_q, d)).astype(dtype)
    k = rng.standard_normal((B, H, n_k, d)).astype(dtype)
    v = rng.standard_normal((B, H, n_k, d)).astype(dtype)
    return q, k, v


# --------------------------------------------------------------------------- kernel == reference


def test_kernel_is_built():
    if not REQUIRE_KERNEL and not KERNEL_BUILT:
        pytest.skip("compiled kernel not built; set NUMPYLLM_REQUIRE_KERNEL=1 to make this a failure")
    assert KERNEL_BUILT, f"numpyllm._attention failed to import: {attention.KERNEL.error}"
    assert attention.available_backends() == ("numpy", "cython")


@needs_kernel
@given(attention_problems())
def test_kernel_matches_reference(problem):
    check_attention(kernel_forward, kernel_backward, problem)


@needs_kernel
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@given(problem=attention_problems(max_len=140, max_heads=6))
@settings(max_examples=30)
def test_kernel_matches_reference_with_padding_and_grouped_heads(dtype, problem):
    """The strategy's padded or grouped problems, per dtype, with any layout of q, k, v."""
    assume(problem.key_lengths is not None or problem.k.shape[1] < problem.q.shape[1])
    check_attention(kernel_forward, kernel_backward, make_attention_problem(**dict(problem.recipe, dtype=dtype)))


def avx512_tiles_available():
    """Whether this CPU and build can run the kernel's AVX-512 tile products."""
    if not KERNEL_BUILT:
        return False
    kernel, current = attention.KERNEL.module, attention.KERNEL.module.tile_products()
    try:
        kernel.tile_products("avx512")
    except ValueError:
        return False
    kernel.tile_products(current)
    return True


# Both implementations of the kernel's float32 tile products: BLAS everywhere, tiles.h's where the CPU has AVX-512F.
TILE_PRODUCTS = ["blas", pytest.param("avx512", marks=pytest.mark.skipif(
    not avx512_tiles_available(), reason="no AVX-512F on this CPU: the kernel uses BLAS for its tiles"))]


@pytest.fixture
def tile_products(request):
    """Run the test with the tile products its ``tile_products`` parameter names, then restore the default."""
    kernel = attention.KERNEL.module
    default = kernel.tile_products()
    kernel.tile_products(request.param)
    yield request.param
    kernel.tile_products(default)


@needs_kernel
@pytest.mark.parametrize("tile_products", TILE_PRODUCTS, indirect=True)
@pytest.mark.parametrize("n_q, n_k", [(1, 70), (5, 5), (6, 64), (7, 65), (13, 127), (64, 200), (257, 300)])
@pytest.mark.parametrize("d", [16, 48, 64, 80])
def test_kernel_tile_products_match_reference_at_register_block_edges(tile_products, n_q, n_k, d):
    """Row counts around the 6-row register blocks, key counts around their 64-column strips, and head
    widths of 1, 3, 4 and 5 vectors: every block and tail of tiles.h, float32, causal and not, padded."""
    for causal in (False, True):
        if causal and n_q > n_k:
            continue
        q, k, v = random_qkv((2, 2, n_q, d), n_k, np.float32, seed=n_q * 1000 + n_k + d)
        dout = np.random.default_rng(2).standard_normal(q.shape).astype(np.float32)
        key_lengths = None if causal else np.array([n_k, max(1, n_k - 37)])
        check_attention(kernel_forward, kernel_backward, AttentionProblem(q, k, v, dout, causal, None, key_lengths))


@needs_kernel
@pytest.mark.parametrize("tile_products", TILE_PRODUCTS, indirect=True)
@given(problem=attention_problems(max_len=140, max_heads=4))
@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])  # set once for all examples
def test_kernel_tile_products_match_reference(tile_products, problem):
    check_attention(kernel_forward, kernel_backward, make_attention_problem(**dict(problem.recipe, dtype="float32")))


@needs_kernel
@pytest.mark.parametrize("tile_products", TILE_PRODUCTS, indirect=True)
def test_kernel_reads_keys_with_a_row_stride_past_32_bit_gather_offsets(tile_products):
    """K and V rows 36M floats apart (15 rows' byte offsets pass 2**31): tiles.h packs them
    without its gather. The rows live in lazily zeroed pages, so only the touched ones cost memory."""
    rng = np.random.default_rng(3)
    n_k, d, stride = 20, 64, 36_000_000
    base = np.zeros((n_k, stride), np.float32)  # 2.9 GB of address space, a few pages of memory
    base[:, :2 * d] = rng.standard_normal((n_k, 2 * d))
    k, v = base[None, None, :, :d], base[None, None, :, d:2 * d]
    q = rng.standard_normal((1, 1, 7, d)).astype(np.float32)
    dout = rng.standard_normal(q.shape).astype(np.float32)
    for causal in (False, True):
        check_attention(kernel_forward, kernel_backward, AttentionProblem(q, k, v, dout, causal, None))


def test_tile_products_rejects_unknown_names():
    if not KERNEL_BUILT:
        pytest.skip("compiled kernel not built")
    with pytest.raises(ValueError, match="'avx512' or 'blas', got 'mkl'"):
        attention.KERNEL.module.tile_products("mkl")


@needs_kernel
@pytest.mark.parametrize("causal", [False, True])
def test_kernel_matches_reference_with_padding_at_tile_edges(causal):
    """Lengths on and around the key tile edge, grouped heads, odd strides, both dtypes."""
    bk = attention.KERNEL.module.block_k
    n_k = 2 * bk + 3
    lengths = [1, bk - 1, bk, bk + 1, n_k]
    for dtype in (np.float32, np.float64):
        q, _, _ = random_qkv((len(lengths), 4, 130, 5), n_k, dtype, seed=11)
        _, k, v = random_qkv((len(lengths), 2, 130, 5), n_k, dtype, seed=12)
        dout = np.random.default_rng(13).standard_normal(q.shape).astype(dtype)
        views = [odd_views(x)["padded rows and heads (in place)"] for x in (q, k, v)]
        for arrays in ((q, k, v), views):
            problem = AttentionProblem(*arrays, dout, causal=causal, scale=-0.3, key_lengths=np.array(lengths))
            check_attention(kernel_forward, kernel_backward, problem)


@needs_kernel
def test_kernel_ignores_padded_keys_entirely():
    """Keys and values past key_lengths may hold anything, NaN included: results do not change,
    and their gradients are exactly zero."""
    q, k, v = random_qkv((2, 2, 40, 8), 300, np.float32, seed=14)
    lengths = np.array([7, 257])
    out, lse = attention.forward(q, k, v, key_lengths=lengths, backend="cython")
    dout = np.ones_like(q)
    grads = attention.backward(dout, q, k, v, out, lse, key_lengths=lengths, backend="cython")
    k2, v2 = k.copy(), v.copy()
    for b, n in enumerate(lengths):
        k2[b, :, n:] = np.nan
        v2[b, :, n:] = np.inf
    out2, lse2 = attention.forward(q, k2, v2, key_lengths=lengths, backend="cython")
    np.testing.assert_array_equal(out, out2)
    np.testing.assert_array_equal(lse, lse2)
    grads2 = attention.backward(dout, q, k2, v2, out2, lse2, key_lengths=lengths, backend="cython")
    for g, g2 in zip(grads, grads2):
        np.testing.assert_array_equal(g, g2)
    for b, n in enumerate(lengths):
        assert not grads[1][b, :, n:].any() and not grads[2][b, :, n:].any()


def tile_edge_shapes():
    """(Nq, Nk, d) on and around the kernel's query and key tile sizes."""
    kernel = attention.KERNEL.module if KERNEL_BUILT else None
    bq, bk, bq_causal = (kernel.block_q, kernel.block_k, kernel.causal_backward_block_q) if kernel else (256, 256, 128)
    lengths = sorted({1, bq_causal - 1, bq_causal, bq_causal + 1, bq - 1, bq, bq + 1, bk - 1, bk, bk + 1, 2 * bk + 1})
    shapes = [(n_q, n_k, d) for n_q in lengths for n_k in lengths for d in (1, 3)] + [(1, 4096, 8), (64, 64, 64)]
    return [(*shape, causal) for shape in shapes for causal in (False, True) if not (causal and shape[0] > shape[1])]


@needs_kernel
@pytest.mark.parametrize("n_q, n_k, d, causal", tile_edge_shapes())
def test_kernel_matches_reference_at_tile_edges(n_q, n_k, d, causal):
    for dtype in (np.float32, np.float64):
        q, k, v = random_qkv((1, 2, n_q, d), n_k, dtype, seed=n_q * 1000 + n_k)
        dout = np.random.default_rng(1).standard_normal(q.shape).astype(dtype)
        problem = AttentionProblem(q, k, v, dout, causal=causal, scale=None)
        check_attention(kernel_forward, kernel_backward, problem)


@needs_kernel
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("jump", [5.0, 40.0, 3000.0])
def test_kernel_matches_reference_when_later_key_blocks_score_far_higher(causal, jump):
    """The forward shifts a key block's exps by the running max of the blocks before it, and by
    the block's own max when that is more than its slack (16) higher: jumps on both sides of it."""
    block_k = attention.KERNEL.module.block_k
    n = 2 * block_k + 40
    for dtype in (np.float32, np.float64):
        q, k, v = random_qkv((1, 2, n, 8), n, dtype, seed=int(jump))
        direction = np.ones(8, dtype) / np.sqrt(8)
        q += (2 * direction).astype(dtype)  # every query leans the same way ...
        for j in (block_k + 7, 2 * block_k + 3):  # ... and a key in each later block points there
            k[:, :, j] = (jump / 2 * np.sqrt(8) * direction).astype(dtype)
        dout = np.random.default_rng(3).standard_normal(q.shape).astype(dtype)
        check_attention(kernel_forward, kernel_backward, AttentionProblem(q, k, v, dout, causal, None))


def odd_views(x):
    """Arrays of x's shape (B, H, N, d) with strides the kernel reads in place or must copy."""
    B, H, N, d = x.shape
    padded = np.zeros((B, H + 1, N + 3, d + 2), dtype=x.dtype)
    padded[:, 1:, :N, 1:-1] = x
    tokens_first = np.ascontiguousarray(x.transpose(2, 0, 1, 3))  # (N, B, H, d), heads from (T, C)
    return {
        "padded rows and heads (in place)": padded[:, 1:, :N, 1:-1],
        "positions outermost (in place)": tokens_first.transpose(1, 2, 0, 3),
        "heads reversed (copied)": np.ascontiguousarray(x[:, ::-1])[:, ::-1],
        "rows reversed (copied)": np.ascontiguousarray(x[:, :, ::-1])[:, :, ::-1],
        "one head broadcast (in place: zero head stride)": np.broadcast_to(x[:, :1], x.shape),
        "one position broadcast (copied: zero row stride)": np.broadcast_to(x[:, :, :1], x.shape),
    }


@needs_kernel
@pytest.mark.parametrize("n_q, n_k", [(1, 37), (5, 300), (130, 130)])
def test_kernel_reads_strided_views_correctly(n_q, n_k):
    """Views whose heads BLAS can read in place (row stride >= d, any head stride >= 0)
    are not copied, and they and views it cannot read (negative strides, overlapping
    rows) give the reference's results."""
    for dtype in (np.float32, np.float64):
        q, k, v = random_qkv((2, 3, n_q, 5), n_k, dtype, seed=n_q)
        dout = np.random.default_rng(2).standard_normal(q.shape).astype(dtype)
        views = {name: (odd_views(q)[name], odd_views(k)[name], odd_views(v)[name], odd_views(dout)[name])
                 for name in odd_views(q)}
        for name, (qv, kv, vv, dv) in views.items():
            assert (attention.KERNEL.module._rows(kv) is kv) == ("in place" in name), name
            for causal in (False, True):
                check_attention(kernel_forward, kernel_backward, AttentionProblem(qv, kv, vv, dv, causal, None))


def gradient_buffers(q, k, layout):
    """NaN-filled (dq, dk, dv) for backward's ``into``, of q's, k's, k's shapes (B, h, N, d):
    positions outermost, as views of the q, k, v projection's output lie (the kernel writes
    them in place), or with reversed rows (the kernel fills them through a copy)."""
    if layout == "positions outermost":
        return tuple(np.full((x.shape[0], x.shape[2], x.shape[1], x.shape[3]), np.nan, dtype=q.dtype)
                     .transpose(0, 2, 1, 3) for x in (q, k, k))
    return tuple(np.full(x.shape, np.nan, dtype=q.dtype)[:, :, ::-1] for x in (q, k, k))


@pytest.mark.parametrize("backend", REFERENCE_AND_KERNEL)
@pytest.mark.parametrize("layout", ["positions outermost", "rows reversed"])
@given(problem=attention_problems(max_len=70, max_heads=4))
@settings(max_examples=20)
def test_backward_into_writes_what_it_returns(backend, layout, problem):
    """into=(dq, dk, dv) receives exactly the gradients backward returns without it (grouped
    heads and padding included), and is what it returns."""
    options = dict(problem.options(), backend=backend)
    out, lse = attention.forward(problem.q, problem.k, problem.v, **options)
    expected = attention.backward(problem.dout, problem.q, problem.k, problem.v, out, lse, **options)
    into = gradient_buffers(problem.q, problem.k, layout)
    result = attention.backward(problem.dout, problem.q, problem.k, problem.v, out, lse, **options, into=into)
    assert all(r is target for r, target in zip(result, into))
    for target, grad in zip(into, expected):
        np.testing.assert_array_equal(target, grad)


@needs_kernel
def test_kernel_backward_writes_one_buffer_in_place():
    """The kernel fills views of one [dq | dk | dv] buffer directly (no copy): every entry
    is written, including the zero gradients of padded keys."""
    q, k, v = random_qkv((2, 3, 40, 8), 40, np.float32, seed=4)
    dout = np.random.default_rng(5).standard_normal(q.shape).astype(np.float32)
    lengths = np.array([40, 17])
    out, lse = kernel_forward(q, k, v, key_lengths=lengths)
    B, H, N, d = q.shape
    into = tuple(np.full((B, N, 3, H, d), np.nan, dtype=np.float32).transpose(2, 0, 3, 1, 4))
    assert all(attention.KERNEL.module._rows(x) is x for x in into)
    computed = attention.KERNEL.module.backward(dout, q, k, v, out, lse, False, d ** -0.5, lengths, 0, into)
    assert all(grad is target for grad, target in zip(computed, into))  # computed there, not copied in
    kernel_backward(dout, q, k, v, out, lse, key_lengths=lengths, into=into)
    expected = kernel_backward(dout, q, k, v, out, lse, key_lengths=lengths)
    for target, grad in zip(into, expected):
        np.testing.assert_array_equal(target, grad)
    assert not np.any(into[1][1, :, 17:]) and not np.any(into[2][1, :, 17:])


@needs_kernel
def test_kernel_forward_output_merges_heads_without_a_copy():
    """The kernel's out (B, H, N, d) lies as (B, N, H, d): merge_heads is a view of it."""
    from numpyllm.layers import merge_heads

    q, k, v = random_qkv((2, 3, 9, 4), 9, np.float32, seed=6)
    out, _ = kernel_forward(q, k, v, causal=True)
    merged = merge_heads(out)
    assert np.shares_memory(merged, out)
    np.testing.assert_array_equal(merged, np.ascontiguousarray(out.transpose(0, 2, 1, 3)).reshape(2, 9, 12))


def test_backward_into_rejects_bad_buffers():
    q, k, v = random_qkv((1, 2, 5, 4), 5)
    out, lse = reference_forward(q, k, v)
    good = [np.empty_like(q) for _ in range(3)]
    read_only = np.empty_like(q)
    read_only.flags.writeable = False
    cases = [((good[0], good[1]), TypeError, "tuple \\(dq, dk, dv\\) of three arrays, got tuple of length 2"),
             ("dq", TypeError, "got str"),
             ((good[0].astype(np.float32), good[1], good[2]), TypeError, "into's dq must be a numpy.ndarray of q's dtype"),
             ((good[0], good[1][:, :, :4], good[2]), ValueError, "into's dk must have shape \\(1, 2, 5, 4\\)"),
             ((good[0], good[1], read_only), ValueError, "into's dv must be writeable")]
    for into, error, message in cases:
        with pytest.raises(error, match=message):
            attention.backward(q, q, k, v, out, lse, backend="numpy", into=into)


@given(attention_problems(max_len=80))
@settings(max_examples=25)
def test_reference_meets_its_own_tolerances(problem):
    """The reference in float32 passes the check too: the tolerances are attainable."""
    check_attention(reference_forward, reference_backward, problem)


@needs_kernel
@pytest.mark.parametrize("n_kv_head, key_lengths", [(3, None), (1, [150, 61]), (1, None)])
def test_kernel_result_does_not_depend_on_thread_count(n_kv_head, key_lengths):
    """Bitwise equal at 1 and 2 threads: with grouped heads too, no thread's dk, dv
    accumulation races with another's."""
    q, _, _ = random_qkv((2, 3, 150, 16), 150, np.float32)
    _, k, v = random_qkv((2, n_kv_head, 150, 16), 150, np.float32, seed=1)
    options = dict(causal=True, key_lengths=None if key_lengths is None else np.array(key_lengths), backend="cython")
    one = attention.forward(q, k, v, **options, num_threads=1)
    two = attention.forward(q, k, v, **options, num_threads=2)
    np.testing.assert_array_equal(one[0], two[0])
    np.testing.assert_array_equal(one[1], two[1])
    dout = np.ones_like(q)
    grads_one = attention.backward(dout, q, k, v, *one, **options, num_threads=1)
    grads_two = attention.backward(dout, q, k, v, *one, **options, num_threads=2)
    for a, b in zip(grads_one, grads_two):
        np.testing.assert_array_equal(a, b)


@needs_kernel
def test_kernel_never_allocates_a_score_matrix():
    """Every buffer the kernel allocates is a NumPy array (tracemalloc sees them all)."""
    n, d = 2048, 16
    q, k, v = random_qkv((1, 1, n, d), n, np.float32)
    out, lse = attention.forward(q, k, v, causal=True, backend="cython")
    dout = np.ones_like(q)
    score_matrix_bytes = n * n * 4
    for call in (
        lambda: attention.forward(q, k, v, causal=True, backend="cython"),
        lambda: attention.backward(dout, q, k, v, out, lse, causal=True, backend="cython"),
    ):
        tracemalloc.start()
        call()
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert peak < score_matrix_bytes / 8, f"peak {peak} bytes vs N×N matrix {score_matrix_bytes}"


# --------------------------------------------------------------------------- the reference itself


def loss_of(q, k, v, dout, causal, scale):
    """L = Σ dout ∘ out: its gradient with respect to out is dout."""
    out, _ = attention.reference_forward(q, k, v, causal, scale)
    return float(np.sum(dout * out))


@given(
    attention_problems(
        dtypes=("float64",), max_batch=1, max_heads=2, max_len=9, head_dims=(1, 2, 3, 5),
        max_score=30.0, layouts=("contiguous",),
    )
)
@settings(max_examples=30)
def test_reference_backward_matches_finite_differences(problem):
    q, k, v, dout = (x.copy() for x in (problem.q, problem.k, problem.v, problem.dout))
    d = q.shape[-1]
    scale = 1 / np.sqrt(d) if problem.scale is None else problem.scale
    out, lse = attention.reference_forward(q, k, v, problem.causal, scale)
    analytic = attention.reference_backward(dout, q, k, v, out, lse, problem.causal, scale)
    step = 1e-6
    for x, grad in zip((q, k, v), analytic):
        numeric = np.zeros_like(x)
        for index in np.ndindex(x.shape):
            saved = x[index]
            x[index] = saved + step
            plus = loss_of(q, k, v, dout, problem.causal, scale)
            x[index] = saved - step
            minus = loss_of(q, k, v, dout, problem.causal, scale)
            x[index] = saved
            numeric[index] = (plus - minus) / (2 * step)
        # Central differences carry a round-off floor of about eps·|L|/step ≈ 1e-10·|L|.
        floor = 1e-9 * max(1.0, abs(loss_of(q, k, v, dout, problem.causal, scale)))
        error = np.abs(numeric - grad).max()
        allowed = 1e-6 * max(np.abs(grad).max(), np.abs(numeric).max()) + floor
        assert error <= allowed, f"error {error:.2e} > {allowed:.2e} for {problem!r}"


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("n_head, n_kv_head", [(1, 1), (4, 2), (3, 1), (2, 2)])
def test_reference_backward_matches_finite_differences_with_padding_and_groups(causal, n_head, n_kv_head):
    """Central differences of L = Σ dout ∘ out with padded keys and grouped heads; padded
    keys get exactly zero gradient."""
    rng = np.random.default_rng(n_head * 10 + n_kv_head + causal)
    B, n_q, n_k, d, scale = 3, 4, 6, 3, -0.7
    q = rng.standard_normal((B, n_head, n_q, d))
    k, v = (rng.standard_normal((B, n_kv_head, n_k, d)) for _ in range(2))
    dout = rng.standard_normal(q.shape)
    lengths = np.array([n_k, 1, 4])

    def loss():
        out, _ = attention.reference_forward(q, k, v, causal, scale, lengths)
        return float(np.sum(dout * out))

    out, lse = attention.reference_forward(q, k, v, causal, scale, lengths)
    grads = attention.reference_backward(dout, q, k, v, out, lse, causal, scale, lengths)
    for name, x, grad in zip(("dq", "dk", "dv"), (q, k, v), grads):
        assert grad.shape == x.shape
        assert_gradient_matches(loss, x, grad, rng, name, n_entries=x.size)
    for b, length in enumerate(lengths):
        assert not grads[1][b, :, length:].any() and not grads[2][b, :, length:].any()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_reference_padding_equals_truncated_keys(dtype):
    """Non-causal: batch b with key_lengths[b] = L gives what k[b, :, :L], v[b, :, :L] alone give."""
    q, k, v = random_qkv((3, 2, 5, 4), 7, dtype, seed=3)
    lengths = np.array([7, 1, 3], dtype=np.int32)
    out, lse = attention.forward(q, k, v, key_lengths=lengths, backend="numpy")
    dout = np.random.default_rng(4).standard_normal(q.shape).astype(dtype)
    dq, dk, dv = attention.backward(dout, q, k, v, out, lse, key_lengths=lengths, backend="numpy")
    close = functools.partial(np.testing.assert_allclose, rtol=1e-5 if dtype == np.float32 else 1e-13,
                              atol=1e-5 if dtype == np.float32 else 1e-14)
    for b, n in enumerate(lengths):
        sl = slice(b, b + 1)
        out_b, lse_b = attention.forward(q[sl], k[sl, :, :n], v[sl, :, :n], backend="numpy")
        close(out[sl], out_b)
        close(lse[sl], lse_b)
        dq_b, dk_b, dv_b = attention.backward(dout[sl], q[sl], k[sl, :, :n], v[sl, :, :n], out_b, lse_b,
                                              backend="numpy")
        close(dq[sl], dq_b)
        close(dk[sl, :, :n], dk_b)
        close(dv[sl, :, :n], dv_b)


def test_reference_padding_with_causal_hides_both():
    """Causal and padded: row i of batch b sees j <= i + Nk - Nq and j < L[b], nothing else."""
    q, k, v = random_qkv((2, 1, 4, 3), 6, seed=5)
    lengths = np.array([3, 6])
    out, _ = attention.forward(q, k, v, causal=True, key_lengths=lengths, backend="numpy")
    scores = np.einsum("bhid,bhjd->bhij", q, k) / np.sqrt(3)
    for b in range(2):
        for i in range(4):
            n_seen = min(i + 2 + 1, lengths[b])
            p = np.exp(scores[b, 0, i, :n_seen] - scores[b, 0, i, :n_seen].max())
            np.testing.assert_allclose(out[b, 0, i], (p / p.sum()) @ v[b, 0, :n_seen], rtol=1e-13)


@pytest.mark.parametrize("n_kv_head", [1, 2])
def test_reference_grouped_heads_equal_repeated_heads(n_kv_head):
    """Query head h reads kv head h // (H // H_kv); dk, dv sum over each group of query heads."""
    H = 4
    q, _, _ = random_qkv((2, H, 5, 3), 6, seed=6)
    _, k, v = random_qkv((2, n_kv_head, 5, 3), 6, seed=7)
    group = H // n_kv_head
    k_full, v_full = (np.stack([x[:, h // group] for h in range(H)], axis=1) for x in (k, v))
    out, lse = attention.forward(q, k, v, causal=True, backend="numpy")
    out_full, lse_full = attention.forward(q, k_full, v_full, causal=True, backend="numpy")
    np.testing.assert_array_equal(out, out_full)
    np.testing.assert_array_equal(lse, lse_full)
    dout = np.random.default_rng(8).standard_normal(q.shape)
    dq, dk, dv = attention.backward(dout, q, k, v, out, lse, causal=True, backend="numpy")
    dq_full, dk_full, dv_full = attention.backward(dout, q, k_full, v_full, out, lse, causal=True, backend="numpy")
    assert dk.shape == k.shape and dv.shape == v.shape
    np.testing.assert_array_equal(dq, dq_full)
    for g in range(n_kv_head):
        np.testing.assert_allclose(dk[:, g], dk_full[:, g * group:(g + 1) * group].sum(1), rtol=1e-13)
        np.testing.assert_allclose(dv[:, g], dv_full[:, g * group:(g + 1) * group].sum(1), rtol=1e-13)


def test_reference_lse_is_log_sum_exp_of_scaled_masked_scores():
    q, k, v = random_qkv((1, 2, 5, 4), 7)
    _, lse = attention.forward(q, k, v, causal=True, scale=0.3, backend="numpy")
    scores = 0.3 * np.einsum("bhid,bhjd->bhij", q, k)
    for i in range(5):
        visible = scores[:, :, i, : i + 2 + 1]  # bottom-right: row i sees j <= i + (7 - 5)
        np.testing.assert_allclose(lse[:, :, i], np.log(np.exp(visible).sum(-1)), rtol=1e-13)


@pytest.mark.parametrize("backend", REFERENCE_AND_KERNEL)
def test_causal_alignment_is_bottom_right(backend):
    q, k, v = random_qkv((1, 1, 3, 4), 5)
    out, _ = attention.forward(q, k, v, causal=True, backend=backend)
    for i in range(3):  # row i depends on keys 0 .. i + 2 only
        k2, v2 = k.copy(), v.copy()
        k2[:, :, i + 3 :] += 10.0
        v2[:, :, i + 3 :] += 10.0
        out2, _ = attention.forward(q, k2, v2, causal=True, backend=backend)
        np.testing.assert_allclose(out2[:, :, i], out[:, :, i], rtol=1e-14)
    # A single query (KV-cache decoding) sees every key: causal equals non-causal.
    one = q[:, :, -1:]
    np.testing.assert_allclose(
        attention.forward(one, k, v, causal=True, backend=backend)[0],
        attention.forward(one, k, v, causal=False, backend=backend)[0],
        rtol=1e-14,
    )


@pytest.mark.parametrize("backend", REFERENCE_AND_KERNEL)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("size", [1e4, 1e6, 1e30])
def test_softmax_stays_finite_for_huge_scores(backend, dtype, size):
    q, k, v = random_qkv((1, 2, 50, 8), 70, dtype)
    q = (q * np.sqrt(size)).astype(dtype)
    k = (k * np.sqrt(size)).astype(dtype)
    out, lse = attention.forward(q, k, v, causal=True, scale=1.0, backend=backend)
    grads = attention.backward(np.ones_like(out), q, k, v, out, lse, causal=True, scale=1.0, backend=backend)
    assert np.all(np.isfinite(out)) and np.all(np.isfinite(lse))
    assert all(np.all(np.isfinite(g)) for g in grads)
    # Each row is (numerically) one-hot: out equals v at the largest visible score.
    scores = np.einsum("bhid,bhjd->bhij", q.astype(np.float64), k.astype(np.float64))
    scores = np.where(np.tri(50, 70, k=20, dtype=bool), scores, -np.inf)
    picked = np.take_along_axis(v, scores.argmax(-1)[..., None], axis=2)
    np.testing.assert_allclose(out, picked, atol=1e-5)


@pytest.mark.parametrize("backend", REFERENCE_AND_KERNEL)
@np.errstate(invalid="ignore")  # NaN arithmetic is the point here
def test_nan_inputs_propagate_without_crashing(backend):
    q, k, v = random_qkv((1, 1, 6, 4), 6)
    q[0, 0, 2, 1] = np.nan  # row 2 of the scores becomes NaN
    v[0, 0, 4, 0] = np.inf
    out, lse = attention.forward(q, k, v, causal=True, backend=backend)
    ref_out, ref_lse = attention.forward(q, k, v, causal=True, backend="numpy")
    np.testing.assert_array_equal(np.isnan(out), np.isnan(ref_out))
    np.testing.assert_array_equal(np.isnan(lse), np.isnan(ref_lse))
    assert np.isnan(out[0, 0, 2]).all()
    np.testing.assert_allclose(out[0, 0, :2], ref_out[0, 0, :2], rtol=1e-13)
    grads = attention.backward(np.ones_like(out), q, k, v, out, lse, causal=True, backend=backend)
    assert all(g.shape == x.shape for g, x in zip(grads, (q, k, v)))


# --------------------------------------------------------------------------- bad input


def _args(**overrides):
    q, k, v = random_qkv((2, 3, 4, 8), 5)
    args = dict(q=q, k=k, v=v)
    args.update(overrides)
    return args


BAD_FORWARD_INPUTS = [
    (dict(q=np.zeros((3, 4, 8))), ValueError, "q must be 4-D"),
    (dict(k=np.zeros((2, 3, 5, 8, 1))), ValueError, "k must be 4-D"),
    (dict(q=np.zeros((2, 3, 4, 8), dtype=np.int64)), TypeError, "q must have dtype float32 or float64"),
    (dict(v=np.zeros((2, 3, 5, 8), dtype=np.float16)), TypeError, "v must have dtype"),
    (dict(q=np.zeros((2, 3, 4, 8), dtype=np.float32)), TypeError, "share one dtype"),
    (dict(q=[[[[1.0]]]]), TypeError, "q must be a numpy.ndarray"),
    (dict(k=np.zeros((1, 3, 5, 8)), v=np.zeros((1, 3, 5, 8))), ValueError, "must share B"),
    (dict(k=np.zeros((2, 2, 5, 8)), v=np.zeros((2, 2, 5, 8))), ValueError, "H % H_kv == 0 for q's H=3"),
    (dict(k=np.zeros((2, 6, 5, 8)), v=np.zeros((2, 6, 5, 8))), ValueError, "got H_kv=6"),
    (dict(k=np.zeros((2, 0, 5, 8)), v=np.zeros((2, 0, 5, 8))), ValueError, "got H_kv=0"),
    (dict(key_lengths=np.array([5])), ValueError, "key_lengths must have shape (B,) = (2,), got (1,)"),
    (dict(key_lengths=np.array([[5, 5]])), ValueError, "key_lengths must have shape (B,) = (2,), got (1, 2)"),
    (dict(key_lengths=np.array([5, 0])), ValueError, "key_lengths entries must be in [1, Nk] = [1, 5], got 0"),
    (dict(key_lengths=np.array([6, 5])), ValueError, "key_lengths entries must be in [1, Nk] = [1, 5], got 6"),
    (dict(key_lengths=np.array([-1, 5])), ValueError, "must be in [1, Nk] = [1, 5], got -1"),
    (dict(key_lengths=np.array([5.0, 5.0])), TypeError, "key_lengths must be None or an integer array"),
    (dict(key_lengths=np.array([True, True])), TypeError, "got dtype bool"),
    (dict(key_lengths=5), ValueError, "key_lengths must have shape (B,) = (2,), got ()"),
    (dict(k=np.zeros((2, 3, 5, 4)), v=np.zeros((2, 3, 5, 4))), ValueError, "head dimension d=8"),
    (dict(v=np.zeros((2, 3, 6, 8))), ValueError, "k and v must have the same shape"),
    (dict(k=np.zeros((2, 3, 0, 8)), v=np.zeros((2, 3, 0, 8))), ValueError, "Nk >= 1"),
    (dict(q=np.zeros((2, 3, 4, 0)), k=np.zeros((2, 3, 5, 0)), v=np.zeros((2, 3, 5, 0))), ValueError, "d must be >= 1"),
    (dict(q=np.zeros((2, 3, 6, 8)), causal=True), ValueError, "Nq <= Nk"),
    (dict(causal="yes"), TypeError, "causal must be a bool"),
    (dict(scale="0.5"), TypeError, "scale must be a real number"),
    (dict(scale=float("nan")), ValueError, "scale must be in (-inf, inf), got nan"),
    (dict(scale=float("inf")), ValueError, "scale must be in (-inf, inf), got inf"),
    (dict(backend="torch"), ValueError, "backend must be one of"),
    (dict(num_threads=0), ValueError, "num_threads must be >= 1 or None, got 0"),
    (dict(num_threads=1.5), TypeError, "num_threads must be an int >= 1 or None, got float 1.5"),
    (dict(num_threads=True), TypeError, "num_threads must be an int >= 1 or None, got bool True"),
]


@pytest.mark.parametrize("overrides, error, message", BAD_FORWARD_INPUTS)
@pytest.mark.parametrize("backend", ["numpy", "auto"])
def test_forward_rejects_bad_input(overrides, error, message, backend):
    args = _args(**overrides)
    args.setdefault("backend", backend)
    with pytest.raises(error) as excinfo:
        attention.forward(**args)
    assert message in str(excinfo.value)


def _backward_args(**overrides):
    q, k, v = random_qkv((2, 3, 4, 8), 5)
    out, lse = attention.forward(q, k, v, backend="numpy")
    args = dict(dout=np.ones_like(out), q=q, k=k, v=v, out=out, lse=lse)
    args.update(overrides)
    return args


BAD_BACKWARD_INPUTS = [
    (dict(dout=np.ones((2, 3, 4, 7))), ValueError, "dout must have q's shape"),
    (dict(out=np.ones((2, 3, 5, 8))), ValueError, "out must have q's shape"),
    (dict(dout=np.ones((2, 3, 4, 8), dtype=np.float32)), TypeError, "dout must have q's dtype"),
    (dict(lse=np.zeros((2, 3, 5))), ValueError, "lse must have shape (B, H, Nq)"),
    (dict(lse=np.zeros((2, 3, 4), dtype=np.int32)), TypeError, "lse must have dtype"),
    (dict(lse=None), TypeError, "lse must be a numpy.ndarray"),
    (dict(q=np.zeros((2, 3, 4))), ValueError, "q must be 4-D"),
    (dict(key_lengths=np.array([3, 9])), ValueError, "key_lengths entries must be in [1, Nk] = [1, 5], got 9"),
    (dict(key_lengths=np.array([3.0, 2.0])), TypeError, "key_lengths must be None or an integer array"),
]


@pytest.mark.parametrize("overrides, error, message", BAD_BACKWARD_INPUTS)
@pytest.mark.parametrize("backend", ["numpy", "auto"])
def test_backward_rejects_bad_input(overrides, error, message, backend):
    with pytest.raises(error) as excinfo:
        attention.backward(**_backward_args(**overrides), backend=backend)
    assert message in str(excinfo.value)


@pytest.mark.parametrize("backend", REFERENCE_AND_KERNEL)
def test_empty_query_batch_gives_empty_results(backend):
    q, k, v = random_qkv((2, 3, 0, 8), 5)
    out, lse = attention.forward(q, k, v, backend=backend)
    assert out.shape == (2, 3, 0, 8) and lse.shape == (2, 3, 0)
    dq, dk, dv = attention.backward(out, q, k, v, out, lse, backend=backend)
    assert dq.shape == q.shape and not dk.any() and not dv.any()


# --------------------------------------------------------------------------- fallback and the checker


def test_auto_falls_back_to_numpy_with_one_warning(monkeypatch):
    monkeypatch.setattr(attention.KERNEL, "module", None)
    monkeypatch.setattr(attention.KERNEL, "error", ImportError("simulated missing extension"))
    monkeypatch.setattr(attention.KERNEL, "warned_fallback", False)
    assert attention.available_backends() == ("numpy",)
    q, k, v = random_qkv((1, 2, 3, 4), 3)
    with pytest.warns(RuntimeWarning, match="simulated missing extension"):
        out, _ = attention.forward(q, k, v)
    np.testing.assert_array_equal(out, attention.forward(q, k, v, backend="numpy")[0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second warning would raise here
        attention.forward(q, k, v)
    with pytest.raises(RuntimeError, match="backend='cython' was requested"):
        attention.forward(q, k, v, backend="cython")


def test_import_without_the_extension_in_a_fresh_interpreter():
    """Block numpyllm._attention in a new process: import works, auto warns once and computes."""
    code = (
        "import sys, warnings; sys.modules['numpyllm._attention'] = None\n"
        "import numpy as np, numpyllm\n"
        "from numpyllm import attention\n"
        "assert attention.available_backends() == ('numpy',)\n"
        "q = np.ones((1, 1, 2, 2))\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    attention.forward(q, q, q); attention.forward(q, q, q)\n"
        "assert len(w) == 1 and 'NumPy reference' in str(w[0].message), w\n"
        "print('ok')\n"
    )
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=repo + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
