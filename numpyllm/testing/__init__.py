"""Property-test kit for attention kernels: hypothesis strategies and ``check_attention``.

Kernel authors test their own attention against numpyllm's NumPy reference::

    from hypothesis import given
    from numpyllm.testing import attention_problems, check_attention

    @given(attention_problems())
    def test_my_kernel(problem):
        check_attention(my_forward, my_backward, problem)

or let the kit run the search itself, ``check_attention(my_forward, vjp=my_vjp)``, or
from the command line, ``python -m numpyllm.testing MODULE:FORWARD [--vjp MODULE:FUNC]``.
The forward may return ``(out, lse)`` or ``out`` alone; the backward may be numpyllm's
``backward(dout, q, k, v, out, lse, ...)`` or a vector-Jacobian product
``vjp(dout, q, k, v, ...)``. The strategy draws padded batches (``key_lengths``),
grouped and multi-query heads (k, v with H_kv < H heads), every scale sign, both
masks and, for a top-left causal kernel (PyTorch's ``is_causal``), Nq > Nk; each can
be switched off for a candidate that lacks it. Before drawing, the search runs
``corner_problems``: one small problem per combination of those options.

Tolerances follow DESIGN.md's numerical contract, scaled by how hard the problem is:
a candidate's error may be at most ``rtol · (1 + S) · M`` where ``rtol`` is 1e-12
(float64) or 1e-5 (float32), ``S = |scale| · max_ij Σ_c |q_ic| |k_jc|`` bounds the
scores (rounding in a score of size S moves a probability by about eps·S), and ``M``
is the size of the quantity's own terms (e.g. ``max P |V|`` for ``out``). The
reference is evaluated in float64 on the same inputs, so float32 candidates are
judged against the exact answer, not against another float32 computation.

Needs ``hypothesis`` (``pip install numpyllm[testing]``); nothing else in numpyllm
imports this package.
"""

try:
    import hypothesis  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised only without hypothesis
    raise ImportError(
        "numpyllm.testing needs hypothesis: pip install 'numpyllm[testing]' (or pip install hypothesis)"
    ) from exc

from .check import check_attention, tolerances
from .problems import (
    ALIGNMENTS,
    EDGE_HEAD_DIMS,
    EDGE_LENGTHS,
    LAYOUTS,
    MAX_SCORE,
    AttentionProblem,
    attention_problems,
    corner_problems,
    make_attention_problem,
)

__all__ = [
    "AttentionProblem",
    "make_attention_problem",
    "attention_problems",
    "corner_problems",
    "check_attention",
    "tolerances",
    "ALIGNMENTS",
    "EDGE_LENGTHS",
    "EDGE_HEAD_DIMS",
    "LAYOUTS",
    "MAX_SCORE",
]
