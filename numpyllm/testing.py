"""Property-test kit for attention kernels: hypothesis strategies and ``check_attention``.

Kernel authors test their own ``forward(q, k, v, causal, scale)`` and
``backward(dout, q, k, v, out, lse, causal, scale)`` (the signature of
``numpyllm.attention``) against numpyllm's NumPy reference::

    from hypothesis import given
    from numpyllm.testing import attention_problems, check_attention

    @given(attention_problems())
    def test_my_kernel(problem):
        check_attention(my_forward, my_backward, problem)

Tolerances follow DESIGN.md's numerical contract, scaled by how hard the problem is:
a candidate's error may be at most ``rtol · (1 + S) · M`` where ``rtol`` is 1e-12
(float64) or 1e-5 (float32), ``S = |scale| · max_ij Σ_c |q_ic| |k_jc|`` bounds the
scores (rounding in a score of size S moves a probability by about eps·S), and ``M``
is the size of the quantity's own terms (e.g. ``max P |V|`` for ``out``). The
reference is evaluated in float64 on the same inputs, so float32 candidates are
judged against the exact answer, not against another float32 computation.

Needs ``hypothesis`` (``pip install numpyllm[testing]``); nothing else in numpyllm
imports this module.
"""

import dataclasses

import numpy as np

try:
    from hypothesis import given, settings
    from hypothesis import strategies as st
except ImportError as exc:  # pragma: no cover - exercised only without hypothesis
    raise ImportError(
        "numpyllm.testing needs hypothesis: pip install 'numpyllm[testing]' (or pip install hypothesis)"
    ) from exc

from . import attention

__all__ = [
    "AttentionProblem",
    "attention_problems",
    "check_attention",
    "tolerances",
    "EDGE_LENGTHS",
    "EDGE_HEAD_DIMS",
    "LAYOUTS",
]

#: Sequence lengths that sit on or next to tile edges of typical kernels (ours: 128 × 256).
EDGE_LENGTHS = (1, 2, 3, 31, 32, 33, 63, 64, 65, 127, 128, 129, 255, 256, 257)
#: Head dimensions, including 1 and sizes that are not a multiple of the SIMD width.
EDGE_HEAD_DIMS = (1, 2, 3, 7, 8, 16, 32, 33, 64)
#: Memory layouts an input may have (attention must accept any strides).
LAYOUTS = ("contiguous", "heads_last", "cache_prefix", "strided", "fortran")
#: Largest |score| the strategy aims for: rows whose softmax is numerically one-hot.
MAX_SCORE = 1e4

_RTOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}


@dataclasses.dataclass(frozen=True)
class AttentionProblem:
    """One attention test case: inputs, an upstream gradient and the options.

    q: (B, H, Nq, d); k, v: (B, H, Nk, d); dout: (B, H, Nq, d); all one dtype,
    possibly non-contiguous views.
    """

    q: np.ndarray
    k: np.ndarray
    v: np.ndarray
    dout: np.ndarray
    causal: bool
    scale: object  # float or None (1/sqrt(d))

    def __repr__(self):
        B, H, n_q, d = self.q.shape
        layouts = ", ".join(f"{n} C={x.flags.c_contiguous}" for n, x in zip("qkv", (self.q, self.k, self.v)))
        max_abs = float(np.max(np.abs(self.q))) if self.q.size else 0.0
        return (
            f"AttentionProblem(B={B}, H={H}, Nq={n_q}, Nk={self.k.shape[2]}, d={d}, "
            f"dtype={self.q.dtype}, causal={self.causal}, scale={self.scale}, "
            f"max|q|={max_abs:.3g}, {layouts})"
        )


def _with_layout(x, layout):
    """The same values as x (B, H, N, d) in the requested memory layout."""
    if layout == "heads_last":  # (B, N, H, d) storage viewed as (B, H, N, d): what a model produces
        return np.ascontiguousarray(x.transpose(0, 2, 1, 3)).transpose(0, 2, 1, 3)
    if layout == "cache_prefix":  # the first N positions of a longer buffer, like a KV cache's
        buffer = np.zeros(x.shape[:2] + (x.shape[2] + 5,) + x.shape[3:], dtype=x.dtype)
        buffer[:, :, : x.shape[2]] = x
        return buffer[:, :, : x.shape[2]]
    if layout == "strided":  # every other element of a twice-as-wide buffer
        wide = np.zeros(x.shape[:-1] + (2 * x.shape[-1],), dtype=x.dtype)
        wide[..., ::2] = x
        return wide[..., ::2]
    if layout == "fortran":
        return np.asfortranarray(x)
    return np.ascontiguousarray(x)


def _lengths(upper):
    """Lengths 1..upper, with extra weight on the tile edges of ``EDGE_LENGTHS``."""
    edges = [n for n in EDGE_LENGTHS if n <= upper]
    return st.one_of(st.sampled_from(edges), st.integers(1, upper))


@st.composite
def attention_problems(
    draw,
    dtypes=("float32", "float64"),
    causal=None,
    max_batch=2,
    max_heads=3,
    max_len=260,
    head_dims=EDGE_HEAD_DIMS,
    max_score=MAX_SCORE,
    layouts=LAYOUTS,
):
    """Hypothesis strategy drawing :class:`AttentionProblem` instances.

    Parameters
    ----------
    dtypes : sequence of str
        Dtypes to draw from.
    causal : bool or None
        Fix the mask, or None to draw it.
    max_batch, max_heads, max_len : int
        Upper bounds on B, H and Nq/Nk. Lengths are drawn from 1..max_len with
        extra weight on ``EDGE_LENGTHS`` (tile edges). Causal problems keep Nq <= Nk.
    head_dims : sequence of int
        Head dimensions d to draw from.
    max_score : float
        Largest score magnitude aimed for; problems range from tiny scores
        (uniform attention) to ``max_score`` (one-hot rows).
    layouts : sequence of str
        Memory layouts (see ``LAYOUTS``) drawn independently for q, k and v.

    The values come from a NumPy generator seeded by hypothesis, so large problems
    are cheap to draw; hypothesis still shrinks shapes, options and the seed.
    """
    dtype = np.dtype(draw(st.sampled_from(dtypes)))
    is_causal = draw(st.booleans()) if causal is None else bool(causal)
    B = draw(st.integers(1, max_batch))
    H = draw(st.integers(1, max_heads))
    n_k = draw(_lengths(max_len))
    n_q = draw(_lengths(n_k if is_causal else max_len))
    d = draw(st.sampled_from(head_dims))
    scale = draw(st.one_of(st.none(), st.floats(-2.0, 2.0, allow_nan=False, width=32)))
    # Target score size: uniform attention .. ordinary .. numerically one-hot rows.
    score_size = draw(st.sampled_from([1e-3, 1.0, 30.0, max_score]))
    seed = draw(st.integers(0, 2**32 - 1))

    rng = np.random.default_rng(seed)
    q = rng.standard_normal((B, H, n_q, d))
    k = rng.standard_normal((B, H, n_k, d))
    v = rng.standard_normal((B, H, n_k, d))
    dout = rng.standard_normal((B, H, n_q, d))
    used_scale = 1.0 / np.sqrt(d) if scale is None else abs(scale)
    if used_scale > 0:
        # Typical |score| is used_scale·sqrt(d)·|q||k|; rescale q so it is about score_size.
        q *= score_size / (used_scale * np.sqrt(d) * 3.0)
    arrays = [x.astype(dtype) for x in (q, k, v, dout)]
    arrays[:3] = [_with_layout(x, draw(st.sampled_from(layouts))) for x in arrays[:3]]
    return AttentionProblem(*arrays, causal=is_causal, scale=scale)


def tolerances(problem):
    """Float64 reference results of ``problem`` and the allowed absolute error of each.

    Returns
    -------
    reference : dict
        "out", "lse", "dq", "dk", "dv" computed by the NumPy reference in float64.
    atol : dict
        The same keys: ``rtol · (1 + S) · M`` as described in the module docstring.
    """
    q, k, v, dout = (np.asarray(x, dtype=np.float64) for x in (problem.q, problem.k, problem.v, problem.dout))
    d = q.shape[-1]
    scale = 1.0 / np.sqrt(d) if problem.scale is None else float(problem.scale)
    out, lse = attention.reference_forward(q, k, v, problem.causal, scale)
    dq, dk, dv = attention.reference_backward(dout, q, k, v, out, lse, problem.causal, scale)

    # The magnitudes of the terms each result sums, from |P| and the absolute inputs.
    p = np.exp(attention._scores(q, k, problem.causal, scale) - lse[..., None])  # (B, H, Nq, Nk)
    dp = np.abs(dout @ v.swapaxes(-1, -2)) + np.abs((dout * out).sum(-1, keepdims=True))
    p_dp = p * dp  # bounds |dS| = |P ∘ (dP - D)|
    score_bound = abs(scale) * (np.abs(q) @ np.abs(k).swapaxes(-1, -2)).max(initial=0.0)

    def biggest(x):
        return float(np.max(x, initial=0.0))

    magnitude = {
        "out": biggest(p @ np.abs(v)),
        "lse": 1.0 + np.log(k.shape[2]),
        "dq": abs(scale) * biggest(p_dp @ np.abs(k)),
        "dk": abs(scale) * biggest(p_dp.swapaxes(-1, -2) @ np.abs(q)),
        "dv": biggest(p.swapaxes(-1, -2) @ np.abs(dout)),
    }
    rtol = _RTOL[np.dtype(problem.q.dtype)]
    tiny = np.finfo(problem.q.dtype).tiny
    atol = {name: rtol * (1.0 + score_bound) * m + tiny for name, m in magnitude.items()}
    reference = {"out": out, "lse": lse, "dq": dq, "dk": dk, "dv": dv}
    return reference, atol


def _assert_close(name, got, expected, atol, problem):
    """Assert got ≈ expected within atol, with a message that names the problem."""
    got = np.asarray(got)
    if got.shape != expected.shape:
        raise AssertionError(f"{name} has shape {got.shape}, expected {expected.shape} for {problem!r}")
    error = np.abs(got.astype(np.float64) - expected)
    if not np.all(np.isfinite(got)) or error.max(initial=0.0) > atol:
        worst = np.unravel_index(np.nanargmax(np.where(np.isfinite(error), error, np.inf)), error.shape)
        raise AssertionError(
            f"{name} differs from the float64 reference by {error[worst]:.3g} at index {worst} "
            f"(allowed {atol:.3g}; got {got[worst]!r}, expected {expected[worst]!r}) for {problem!r}"
        )


def _check_one(forward, backward, problem):
    inputs = (problem.q, problem.k, problem.v, problem.dout)
    before = [x.copy() for x in inputs]
    reference, atol = tolerances(problem)

    out, lse = forward(problem.q, problem.k, problem.v, causal=problem.causal, scale=problem.scale)
    for name, got in (("out", out), ("lse", lse)):
        _assert_close(name, got, reference[name], atol[name], problem)
    if np.asarray(out).dtype != problem.q.dtype:
        raise AssertionError(f"out has dtype {np.asarray(out).dtype}, expected {problem.q.dtype}")

    if backward is not None:
        grads = backward(
            problem.dout, problem.q, problem.k, problem.v, out, lse,
            causal=problem.causal, scale=problem.scale,
        )
        for name, got in zip(("dq", "dk", "dv"), grads):
            _assert_close(name, got, reference[name], atol[name], problem)
            if np.asarray(got).dtype != problem.q.dtype:
                raise AssertionError(f"{name} has dtype {np.asarray(got).dtype}, expected {problem.q.dtype}")

    for name, x, x0 in zip(("q", "k", "v", "dout"), inputs, before):
        if not np.array_equal(x, x0):
            raise AssertionError(f"the candidate modified its input {name} for {problem!r}")


def check_attention(forward, backward=None, problem=None, *, max_examples=50, **strategy_options):
    """Assert that ``forward`` (and ``backward``) match numpyllm's reference attention.

    Parameters
    ----------
    forward : callable
        ``forward(q, k, v, causal=..., scale=...) -> (out, lse)`` with the shapes of
        :func:`numpyllm.attention.forward`.
    backward : callable, optional
        ``backward(dout, q, k, v, out, lse, causal=..., scale=...) -> (dq, dk, dv)``.
    problem : AttentionProblem, optional
        Check this one problem (use inside your own ``@given(attention_problems())``
        test). When omitted, hypothesis draws ``max_examples`` problems from
        ``attention_problems(**strategy_options)`` and shrinks any failure.

    Raises
    ------
    AssertionError
        Naming the result, the worst index, the error, the allowed error and the problem.
    """
    if problem is not None:
        _check_one(forward, backward, problem)
        return

    @settings(max_examples=max_examples, deadline=None)
    @given(attention_problems(**strategy_options))
    def run(drawn):
        _check_one(forward, backward, drawn)

    run()
