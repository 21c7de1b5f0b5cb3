"""PyTorch's CPU scaled_dot_product_attention through numpyllm.testing's public kit.

torch's ``is_causal`` is top-left aligned, its forward returns ``out`` alone and its
backward is autograd: the kit's ``causal_alignment="top-left"``, out-only forward and
``vjp=`` modes. Where torch departs from the reference (README, "Attention": findings),
the departure is pinned below as an explicit expectation, and the search steers around
it the way a user would (an explicit boolean mask instead of ``is_causal``).
"""

import numpy as np
import pytest

from numpyllm import attention
from numpyllm.testing import check_attention, make_attention_problem, tolerances
from test_readme import python_block

torch = pytest.importorskip("torch", reason="torch is not installed: no PyTorch comparison")
sdpa = torch.nn.functional.scaled_dot_product_attention


def _mask(n_q, n_k, causal, key_lengths, always=False):
    """Boolean mask (B, 1, Nq, Nk), True = may attend: padding and top-left causal; None if
    is_causal alone can say it (and not ``always``)."""
    if key_lengths is None and not always:
        return None
    lengths = torch.full((1,), n_k) if key_lengths is None else torch.as_tensor(key_lengths)
    mask = torch.arange(n_k) < lengths[:, None, None, None]  # (B, 1, 1, Nk)
    if causal:
        mask = mask & torch.ones(n_q, n_k, dtype=torch.bool).tril()  # top-left: j <= i
    return mask


def _torch_attention(q, k, v, causal, scale, key_lengths, requires_grad):
    """(leaf tensors, out). With causal and scale <= 0, is_causal gives NaN rows (finding 1):
    use an explicit mask there."""
    leaves = [torch.tensor(np.asarray(x), requires_grad=requires_grad) for x in (q, k, v)]
    avoid_is_causal = causal and scale is not None and scale <= 0
    mask = _mask(q.shape[2], k.shape[2], causal, key_lengths, always=avoid_is_causal)
    out = sdpa(*leaves, attn_mask=mask, is_causal=causal and mask is None, scale=scale,
               enable_gqa=k.shape[1] != q.shape[1])
    return leaves, out


def torch_forward(q, k, v, causal=False, scale=None, key_lengths=None):
    """A forward returning out alone (torch has no lse)."""
    with torch.no_grad():
        return _torch_attention(q, k, v, causal, scale, key_lengths, False)[1].numpy()


def torch_vjp(dout, q, k, v, causal=False, scale=None, key_lengths=None):
    """torch autograd's vector-Jacobian product at (q, k, v) applied to dout."""
    leaves, out = _torch_attention(q, k, v, causal, scale, key_lengths, True)
    return [g.numpy() for g in torch.autograd.grad(out, leaves, torch.from_numpy(np.asarray(dout)))]


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_torch_sdpa_matches_reference(dtype, causal):
    """Padded batches, grouped heads, every scale sign, Nq > Nk, odd strides: torch's
    forward and autograd backward agree with the reference within the kit's tolerances."""
    check_attention(torch_forward, vjp=torch_vjp, causal_alignment="top-left", dtypes=(dtype,),
                    causal=causal, max_examples=25, max_len=80)


def test_torch_is_causal_is_top_left_not_bottom_right():
    """The kit tells the alignments apart: torch's is_causal fails as a bottom-right kernel."""
    with pytest.raises(AssertionError, match="differs from the float64 reference"):
        check_attention(torch_forward, causal=True, max_examples=25, max_len=40)


@pytest.mark.parametrize("scale", [-1.0, 0.0])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_finding_is_causal_with_a_nonpositive_scale_gives_nan_rows(dtype, scale):
    """Finding 1 (README): with is_causal=True and scale <= 0, torch's CPU kernel returns NaN
    in every row that has a masked key (all but the last of a square problem); an explicit
    boolean mask gives the reference's answer. If this starts failing, torch has changed:
    update the README's finding."""
    problem = make_attention_problem(batch=1, heads=1, kv_heads=1, n_q=3, n_k=3, head_dim=4, dtype=dtype,
                                     causal=True, causal_alignment="top-left", scale=scale)
    tensors = [torch.from_numpy(x) for x in (problem.q, problem.k, problem.v)]
    with torch.no_grad():
        out = sdpa(*tensors, is_causal=True, scale=scale).numpy()
    assert np.isnan(out[0, 0, :2]).all() and np.isfinite(out[0, 0, 2]).all()
    check_attention(torch_forward, vjp=torch_vjp, problem=problem)  # the explicit mask is right


@pytest.mark.parametrize("dtype, score_size", [("float32", 1e15), ("float64", 1e20)])
def test_finding_backward_overflows_for_huge_scores_past_32_keys(dtype, score_size):
    """Finding 2 (README): with scores of ~1e15 (float32) or ~1e20 (float64) and more than 32
    keys, torch's forward stays right but its backward returns inf/NaN where the reference's
    gradients are tiny; numpyllm's kernel passes the same problem. If this starts failing,
    torch has changed: update the README's finding."""
    problem = make_attention_problem(batch=1, heads=1, kv_heads=1, n_q=33, n_k=33, head_dim=2, dtype=dtype,
                                     score_size=score_size)
    check_attention(torch_forward, problem=problem)  # the forward is fine
    grads = torch_vjp(problem.dout, problem.q, problem.k, problem.v)
    assert not all(np.isfinite(g).all() for g in grads)
    reference, _ = tolerances(problem)
    assert all(np.isfinite(reference[name]).all() for name in ("dq", "dk", "dv"))
    if "cython" in attention.available_backends():
        check_attention(lambda *a, **kw: attention.forward(*a, backend="cython", **kw),
                        lambda *a, **kw: attention.backward(*a, backend="cython", **kw), problem=problem)


def test_readme_torch_example_finds_finding_1(no_shrinking):
    """The README's plain torch adapter (is_causal as given) fails on a causal problem with a
    scale <= 0, as the README says."""
    with pytest.raises(AssertionError, match=r"differs from the float64 reference by nan .*causal=True.*scale=(-|0\.0)"):
        exec(compile(python_block("### Testing your own attention kernel", index=1), "README.md", "exec"), {})
