"""Checking a candidate attention against numpyllm's reference: ``tolerances`` and
``check_attention``.

A candidate is a forward returning ``(out, lse)`` or ``out`` alone, and optionally a
backward, either numpyllm's ``backward(dout, q, k, v, out, lse, ...)`` or a
vector-Jacobian product ``vjp(dout, q, k, v, ...) -> (dq, dk, dv)``. Each gets the
problem's arrays and ``causal=``, ``scale=`` and, for a padded problem, ``key_lengths=``.
Results may be anything ``np.asarray`` reads (a CPU torch tensor included).
"""

import numpy as np
from hypothesis import example, given, settings

from .. import attention
from .problems import attention_problems, corner_problems

__all__ = ["tolerances", "check_attention"]

_RTOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}


def _causal_offset(problem):
    """The reference's causal diagonal for the problem's alignment (None: bottom-right)."""
    return 0 if problem.causal_alignment == "top-left" else None


def tolerances(problem):
    """Float64 reference results of ``problem`` and the allowed absolute error of each.

    Returns
    -------
    reference : dict
        "out", "lse", "dq", "dk", "dv" computed by the NumPy reference in float64.
    atol : dict
        The same keys: ``rtol · (1 + S) · M`` as described in the package docstring.
    """
    q, k, v, dout = (np.asarray(x, dtype=np.float64) for x in (problem.q, problem.k, problem.v, problem.dout))
    n_head, n_kv_head, d = q.shape[1], k.shape[1], q.shape[-1]
    scale = 1.0 / np.sqrt(d) if problem.scale is None else float(problem.scale)
    options = (problem.causal, scale, problem.key_lengths, _causal_offset(problem))
    out, lse = attention.reference_forward(q, k, v, *options)
    dq, dk, dv = attention.reference_backward(dout, q, k, v, out, lse, *options)

    # The magnitudes of the terms each result sums, from |P| and the absolute inputs,
    # with k and v repeated to the H query heads that read them.
    p = np.exp(attention._scores(q, k, *options) - lse[..., None])  # (B, H, Nq, Nk)
    k_abs, v = np.abs(attention._repeat_kv_heads(k, n_head)), attention._repeat_kv_heads(v, n_head)
    dp = np.abs(dout @ v.swapaxes(-1, -2)) + np.abs((dout * out).sum(-1, keepdims=True))
    p_dp = p * dp  # bounds |dS| = |P ∘ (dP - D)|
    score_bound = abs(scale) * (np.abs(q) @ k_abs.swapaxes(-1, -2)).max(initial=0.0)

    def biggest(x):
        return float(np.max(x, initial=0.0))

    magnitude = {
        "out": biggest(p @ np.abs(v)),
        "lse": 1.0 + np.log(k.shape[2]),
        "dq": abs(scale) * biggest(p_dp @ k_abs),
        "dk": abs(scale) * biggest(attention._sum_kv_heads(p_dp.swapaxes(-1, -2) @ np.abs(q), n_kv_head)),
        "dv": biggest(attention._sum_kv_heads(p.swapaxes(-1, -2) @ np.abs(dout), n_kv_head)),
    }
    rtol = _RTOL[np.dtype(problem.q.dtype)]
    tiny = np.finfo(problem.q.dtype).tiny
    atol = {name: rtol * (1.0 + score_bound) * m + tiny for name, m in magnitude.items()}
    reference = {"out": out, "lse": lse, "dq": dq, "dk": dk, "dv": dv}
    return reference, atol


def _assert_close(name, got, expected, atol, problem):
    """Assert got ≈ expected within atol and in the problem's dtype, naming the problem."""
    got = np.asarray(got)
    if got.shape != expected.shape:
        raise AssertionError(f"{name} has shape {got.shape}, expected {expected.shape} for {problem!r}")
    error = np.abs(got.astype(np.float64) - expected)
    if not np.all(np.isfinite(got)) or error.max(initial=0.0) > atol:
        worst = np.unravel_index(np.nanargmax(np.where(np.isfinite(error), error, np.inf)), error.shape)
        worst = tuple(int(i) for i in worst)
        raise AssertionError(
            f"{name} differs from the float64 reference by {error[worst]:.3g} at index {worst} "
            f"(allowed {atol:.3g}; got {float(got[worst])!r}, expected {float(expected[worst])!r}) for {problem!r}"
        )
    if name != "lse" and got.dtype != problem.q.dtype:
        raise AssertionError(f"{name} has dtype {got.dtype}, expected {problem.q.dtype} for {problem!r}")


def _check_one(forward, backward, vjp, problem):
    inputs = (problem.q, problem.k, problem.v, problem.dout)
    before = [x.copy() for x in inputs]
    reference, atol = tolerances(problem)
    options = problem.options()

    result = forward(problem.q, problem.k, problem.v, **options)
    out, lse = result if isinstance(result, (tuple, list)) else (result, None)  # out alone: no lse
    _assert_close("out", out, reference["out"], atol["out"], problem)
    if lse is not None:
        _assert_close("lse", lse, reference["lse"], atol["lse"], problem)

    grads = None
    if backward is not None:
        grads = backward(problem.dout, problem.q, problem.k, problem.v, out, lse, **options)
    elif vjp is not None:
        grads = vjp(problem.dout, problem.q, problem.k, problem.v, **options)
    if grads is not None:
        if len(grads) != 3:
            raise AssertionError(f"the backward must return (dq, dk, dv), got {len(grads)} results")
        for name, got in zip(("dq", "dk", "dv"), grads):
            _assert_close(name, got, reference[name], atol[name], problem)

    for name, x, x0 in zip(("q", "k", "v", "dout"), inputs, before):
        if not np.array_equal(x, x0, equal_nan=True):
            raise AssertionError(f"the candidate modified its input {name} for {problem!r}")


def check_attention(forward, backward=None, problem=None, *, vjp=None, max_examples=50, on_failure=None,
                    **strategy_options):
    """Assert that ``forward`` (and ``backward`` or ``vjp``) match numpyllm's reference attention.

    Parameters
    ----------
    forward : callable
        ``forward(q, k, v, causal=..., scale=..., [key_lengths=...]) -> (out, lse)``
        with the shapes of :func:`numpyllm.attention.forward`, or ``-> out`` alone
        (then lse is not checked).
    backward : callable, optional
        ``backward(dout, q, k, v, out, lse, causal=..., scale=..., [key_lengths=...])
        -> (dq, dk, dv)``, numpyllm's signature; needs a forward that returns lse.
    vjp : callable, optional
        Instead of ``backward``: ``vjp(dout, q, k, v, causal=..., scale=...,
        [key_lengths=...]) -> (dq, dk, dv)``, the vector-Jacobian product of the
        forward at (q, k, v) applied to dout (what an autograd framework gives).
    problem : AttentionProblem, optional
        Check this one problem (use inside your own ``@given(attention_problems())``
        test). When omitted, the small ``corner_problems(**strategy_options)``
        (every combination of mask, scale kind, padding and head grouping) run
        first, then hypothesis draws ``max_examples`` problems from
        ``attention_problems(**strategy_options)`` and shrinks any failure.
    on_failure : callable, optional
        Called with each failing problem before its error propagates; during a
        search the last call is the shrunk case (the command line prints it).

    ``key_lengths=`` is passed only for padded problems, so a candidate without
    padding support can be checked with ``key_lengths=False`` among the strategy
    options; ``grouped_heads=False`` keeps H_kv == H; ``causal_alignment="top-left"``
    checks a kernel whose ``causal=True`` is PyTorch's ``is_causal``.

    Raises
    ------
    AssertionError
        Naming the result, the worst index, the error, the allowed error and the problem.
    """
    if backward is not None and vjp is not None:
        raise TypeError("give backward (numpyllm's signature) or vjp (dout, q, k, v, ...), not both")

    def check(drawn):
        try:
            _check_one(forward, backward, vjp, drawn)
        except Exception:
            if on_failure is not None:
                on_failure(drawn)
            raise

    if problem is not None:
        check(problem)
        return

    @settings(max_examples=max_examples, deadline=None, report_multiple_bugs=False)
    @given(attention_problems(**strategy_options))
    def run(drawn):
        check(drawn)

    for corner in reversed(corner_problems(**strategy_options)):  # explicit examples, run first, in order
        run = example(corner)(run)
    run()
