"""numpyllm.testing, the kit: it catches deliberately broken candidates of every kind it
claims to test, within its default search, and passes correct ones in every mode."""

import functools
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import given, settings

from numpyllm import attention
from numpyllm.testing import AttentionProblem, attention_problems, check_attention, corner_problems
from numpyllm.testing.__main__ import main as cli_main

reference_forward = functools.partial(attention.forward, backend="numpy")
reference_backward = functools.partial(attention.backward, backend="numpy")


def random_problem(causal=True, n_q=6, n_k=6):
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((1, 2, n, 4)) for n in (n_q, n_k, n_k))
    return AttentionProblem(q, k, v, np.ones_like(q), causal=causal, scale=None)


# --------------------------------------------------------------------------- candidates


def reference_out_only(q, k, v, **options):
    """A correct forward that, like most kernels, returns out without lse."""
    return attention.forward(q, k, v, backend="numpy", **options)[0]


def reference_vjp(dout, q, k, v, **options):
    """A correct vector-Jacobian product, the way an autograd framework offers the backward."""
    out, lse = attention.forward(q, k, v, backend="numpy", **options)
    return attention.backward(dout, q, k, v, out, lse, backend="numpy", **options)


def top_left_forward(q, k, v, causal, scale, key_lengths=None):
    """A correct kernel whose causal=True is top-left (row i sees j <= i), as PyTorch's is_causal."""
    scale = 1 / np.sqrt(q.shape[-1]) if scale is None else scale
    lengths = None if key_lengths is None else np.asarray(key_lengths)
    return attention.reference_forward(q, k, v, causal, scale, lengths, causal_offset=0)


def padding_sees_one_more_key(q, k, v, key_lengths=None, **options):
    if key_lengths is not None:
        key_lengths = np.minimum(np.asarray(key_lengths) + 1, k.shape[2])
    return reference_forward(q, k, v, key_lengths=key_lengths, **options)


def padding_sees_one_key_less(q, k, v, key_lengths=None, **options):
    if key_lengths is not None:
        key_lengths = np.maximum(np.asarray(key_lengths) - 1, 1)
    return reference_forward(q, k, v, key_lengths=key_lengths, **options)


def group_map_modulo(q, k, v, **options):
    """Query head h reads kv head h % H_kv instead of h // (H / H_kv)."""
    heads = np.arange(q.shape[1]) % k.shape[1]
    return reference_forward(q, k[:, heads], v[:, heads], **options)


def vjp_without_group_sum(dout, q, k, v, **options):
    """dk, dv of the first query head of each group only, instead of the group's sum."""
    group = q.shape[1] // k.shape[1]
    heads = np.arange(q.shape[1]) // group
    dq, dk, dv = reference_vjp(dout, q, k[:, heads], v[:, heads], **options)
    return dq, dk[:, ::group], dv[:, ::group]


def scale_sign_ignored(q, k, v, scale=None, **options):
    return reference_forward(q, k, v, scale=None if scale is None else abs(scale), **options)


def padding_ignored_in_backward(dout, q, k, v, key_lengths=None, **options):
    return reference_vjp(dout, q, k, v, **options)


@pytest.mark.parametrize(
    "forward, vjp, options",
    [
        (padding_sees_one_more_key, None, {}),
        (padding_sees_one_key_less, None, {}),
        (group_map_modulo, None, {}),
        (scale_sign_ignored, None, {}),
        (reference_out_only, vjp_without_group_sum, {}),
        (reference_out_only, padding_ignored_in_backward, {}),
        (top_left_forward, None, {}),  # a top-left kernel checked as bottom-right
        (reference_out_only, None, dict(causal_alignment="top-left")),  # and the other way round
    ],
    ids=["padding+1", "padding-1", "group-h%H_kv", "scale-abs", "vjp-no-group-sum", "vjp-ignores-padding",
         "top-left-as-bottom-right", "bottom-right-as-top-left"],
)
def test_default_search_catches_broken_candidate(forward, vjp, options, no_shrinking):
    """Each bug is confined to one option value; the default 50-example search finds it."""
    with pytest.raises(AssertionError, match="differs from the float64 reference"):
        check_attention(forward, vjp=vjp, **options)


@pytest.mark.parametrize(
    "forward, backward, vjp, options",
    [
        (reference_forward, reference_backward, None, {}),
        (reference_out_only, None, reference_vjp, {}),
        (top_left_forward, None, None, dict(causal_alignment="top-left")),
    ],
    ids=["numpyllm-signature", "out-only-and-vjp", "top-left"],
)
def test_default_search_passes_correct_candidate(forward, backward, vjp, options):
    check_attention(forward, backward, vjp=vjp, max_len=80, **options)


def test_candidate_without_padding_or_groups_is_checked_without_them():
    def plain(q, k, v, causal, scale):  # no key_lengths parameter at all
        assert k.shape[1] == q.shape[1]
        return reference_forward(q, k, v, causal=causal, scale=scale)

    check_attention(plain, key_lengths=False, grouped_heads=False, max_examples=20, max_len=40)


@pytest.mark.parametrize(
    "wrong_forward",
    [
        lambda q, k, v, causal, scale: attention.forward(q, k, v, causal=not causal, scale=scale, backend="numpy"),
        lambda q, k, v, causal, scale: attention.forward(
            q, k, v, causal=causal, scale=(scale or 1 / np.sqrt(q.shape[-1])) * 1.001, backend="numpy"
        ),
        lambda q, k, v, causal, scale: (
            attention.forward(q, k, v, causal=causal, scale=scale, backend="numpy")[0],
            attention.forward(q, k, v, causal=causal, scale=scale, backend="numpy")[1] + 1e-3,
        ),
    ],
    ids=["ignores-causal", "scale-off-by-0.1%", "lse-shifted"],
)
def test_check_attention_rejects_wrong_forward(wrong_forward):
    with pytest.raises(AssertionError):
        check_attention(wrong_forward, None, random_problem())


def test_check_attention_rejects_wrong_backward():
    def wrong_backward(dout, q, k, v, out, lse, causal, scale):
        dq, dk, dv = attention.backward(dout, q, k, v, out, lse, causal=causal, scale=scale, backend="numpy")
        return dq, dk, dv * (1 + 1e-4)

    with pytest.raises(AssertionError, match="dv differs"):
        check_attention(reference_forward, wrong_backward, random_problem(causal=False))


def test_check_attention_refuses_backward_and_vjp_together():
    with pytest.raises(TypeError, match="not both"):
        check_attention(reference_forward, reference_backward, vjp=reference_vjp, problem=random_problem())


def test_top_left_problems_allow_more_queries_than_keys():
    problem = random_problem(n_q=7, n_k=3)
    top_left = AttentionProblem(problem.q, problem.k, problem.v, problem.dout, causal=True, scale=None,
                                causal_alignment="top-left")
    check_attention(top_left_forward, problem=top_left)


# --------------------------------------------------------------------------- the strategy


FEATURES = {
    "float32": lambda p: p.q.dtype == np.float32,
    "causal": lambda p: p.causal,
    "padded": lambda p: p.key_lengths is not None and (p.key_lengths < p.k.shape[2]).any(),
    "multi-query": lambda p: p.k.shape[1] == 1 < p.q.shape[1],
    "grouped": lambda p: 1 < p.k.shape[1] < p.q.shape[1],
    "negative scale": lambda p: p.scale is not None and p.scale < 0,
    "zero scale": lambda p: p.scale == 0,
    "default scale": lambda p: p.scale is None,
    "Nq != Nk": lambda p: p.q.shape[2] != p.k.shape[2],
}


def test_strategy_draws_every_option_value_often():
    """Each option value in at least 15% of draws: a bug confined to one is missed by 50
    independent draws with probability below 0.85^50 ≈ 3e-4."""
    counts = dict.fromkeys(FEATURES, 0)
    drawn = []

    @settings(max_examples=200, database=None)
    @given(attention_problems(max_len=40))
    def collect(problem):
        drawn.append(problem)
        for name, has in FEATURES.items():
            counts[name] += bool(has(problem))

    collect()
    shares = {name: count / len(drawn) for name, count in counts.items()}
    assert all(share >= 0.15 for share in shares.values()), shares


def _kind(problem):
    scale = "default" if problem.scale is None else ("zero" if problem.scale == 0 else
                                                     "negative" if problem.scale < 0 else "positive")
    return problem.causal, scale, problem.key_lengths is not None, (problem.q.shape[1], problem.k.shape[1])


def test_corner_problems_cover_every_combination_of_option_values():
    corners = corner_problems()
    assert len({_kind(p) for p in corners}) == len(corners) == 2 * 4 * 2 * 3
    assert {p.q.dtype for p in corners} == {np.dtype(np.float32), np.dtype(np.float64)}
    assert all(p.q.shape[2] <= p.k.shape[2] for p in corners if p.causal)  # bottom-right refuses Nq > Nk
    assert {p.q.shape[2] > p.k.shape[2] for p in corners} == {False, True}
    for p in corners:
        if p.key_lengths is not None:
            assert (p.key_lengths < p.k.shape[2]).any()


def test_corner_problems_follow_the_strategy_options():
    corners = corner_problems(causal=True, key_lengths=False, grouped_heads=False, dtypes=("float64",),
                              causal_alignment="top-left", max_score=1e3)
    assert len(corners) == 4  # the four scale kinds
    assert all(p.causal and p.key_lengths is None and p.k.shape[1] == p.q.shape[1] for p in corners)
    assert any(p.q.shape[2] > p.k.shape[2] for p in corners)  # top-left allows it


def test_a_bug_in_one_combination_is_found_before_any_random_draw():
    """Like torch's NaN rows (README finding 1): wrong only for causal with a negative scale."""
    def wrong_for_causal_negative_scale(q, k, v, causal, scale, **options):
        out = reference_out_only(q, k, v, causal=causal, scale=scale, **options)
        return out * 2 if causal and scale is not None and scale < 0 else out

    with pytest.raises(AssertionError, match="out differs"):
        check_attention(wrong_for_causal_negative_scale, max_examples=1)


@given(attention_problems())
@settings(max_examples=20)
def test_strategy_respects_the_contract(problem):
    assert problem.q.dtype == problem.k.dtype == problem.v.dtype == problem.dout.dtype
    B, H, n_q, d = problem.q.shape
    assert problem.k.shape[0] == B and H % problem.k.shape[1] == 0 and problem.k.shape == problem.v.shape
    if problem.causal:
        assert n_q <= problem.k.shape[2]
    if problem.key_lengths is not None:
        assert problem.key_lengths.shape == (B,)
        assert 1 <= problem.key_lengths.min() and problem.key_lengths.max() <= problem.k.shape[2]


def test_top_left_strategy_draws_more_queries_than_keys_often():
    seen = []

    @settings(max_examples=60, database=None)
    @given(attention_problems(causal=True, causal_alignment="top-left", max_len=40))
    def collect(problem):
        seen.append(problem.q.shape[2] > problem.k.shape[2])

    collect()
    assert sum(seen) >= 0.2 * len(seen)


# --------------------------------------------------------------------------- command line

CANDIDATES = textwrap.dedent(
    """
    import numpy as np
    from numpyllm import attention

    def good(q, k, v, **options):
        return attention.forward(q, k, v, backend="numpy", **options)

    def good_backward(dout, q, k, v, out, lse, **options):
        return attention.backward(dout, q, k, v, out, lse, backend="numpy", **options)

    def padding_off_by_one(q, k, v, key_lengths=None, **options):
        if key_lengths is not None:
            key_lengths = np.minimum(key_lengths + 1, k.shape[2])
        return attention.forward(q, k, v, key_lengths=key_lengths, backend="numpy", **options)
    """
)


@pytest.fixture
def candidates(tmp_path, monkeypatch):
    (tmp_path / "my_candidates.py").write_text(CANDIDATES)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "my_candidates"


def test_cli_passes_a_correct_candidate(candidates, capsys):
    status = cli_main([f"{candidates}:good", "--backward", f"{candidates}:good_backward", "--examples", "5",
                       "--max-len", "30"])
    assert status == 0
    assert "OK: forward and backward matched" in capsys.readouterr().out


def test_cli_prints_the_shrunk_failing_case_as_a_runnable_snippet(candidates, capsys):
    status = cli_main([f"{candidates}:padding_off_by_one", "--examples", "50", "--max-len", "40"])
    printed = capsys.readouterr().out
    assert status == 1
    assert "FAILED: AssertionError: out differs" in printed
    code = printed.split("as a snippet that reruns it:\n", 1)[1]
    assert f"check_attention({candidates}.padding_off_by_one, problem=problem)" in code
    assert "key_lengths=[" in code  # the shrunk case is a padded one
    with pytest.raises(AssertionError, match="out differs"):
        exec(compile(code, "<snippet>", "exec"), {})


@pytest.mark.parametrize(
    "argv, message",
    [
        (["nocolon"], "expected MODULE:FUNCTION"),
        (["no_such_module_xyz:f"], "No module named 'no_such_module_xyz'"),
        (["numpyllm.attention:nothing_here"], "has no attribute 'nothing_here'"),
        (["numpyllm.attention:BACKENDS"], "is a tuple, not a callable"),
    ],
)
def test_cli_rejects_bad_candidates(argv, message, capsys):
    with pytest.raises(SystemExit) as excinfo:
        cli_main(argv)
    assert excinfo.value.code == 2
    assert message in capsys.readouterr().err


def test_cli_runs_as_python_dash_m():
    result = subprocess.run([sys.executable, "-m", "numpyllm.testing", "--help"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "MODULE:FORWARD" in result.stdout and "--vjp" in result.stdout
