"""Attention test problems: ``AttentionProblem``, ``make_attention_problem`` and the
hypothesis strategy ``attention_problems`` that draws them.

A problem is built from a small recipe (shapes, options, a seed), so any drawn problem,
however large, can be rebuilt by one ``make_attention_problem(...)`` call: that call is
its repr, and what the command line prints for a failing case.
"""

import dataclasses

import numpy as np
from hypothesis import strategies as st

__all__ = [
    "AttentionProblem",
    "make_attention_problem",
    "attention_problems",
    "corner_problems",
    "ALIGNMENTS",
    "EDGE_LENGTHS",
    "EDGE_HEAD_DIMS",
    "LAYOUTS",
    "MAX_SCORE",
]

#: Sequence lengths that sit on or next to tile edges of typical kernels (ours: 128 × 256).
EDGE_LENGTHS = (1, 2, 3, 31, 32, 33, 63, 64, 65, 127, 128, 129, 255, 256, 257)
#: Head dimensions, including 1 and sizes that are not a multiple of the SIMD width.
EDGE_HEAD_DIMS = (1, 2, 3, 7, 8, 16, 32, 33, 64)
#: Memory layouts an input may have (attention must accept any strides).
LAYOUTS = ("contiguous", "heads_last", "cache_prefix", "strided", "fortran")
#: Largest |score| the strategy aims for: rows whose softmax is numerically one-hot.
MAX_SCORE = 1e4
#: Causal alignments: query row i sees keys j <= i + (Nk - Nq) (bottom-right: numpyllm,
#: flash-attn >= 2.1) or j <= i (top-left: PyTorch's ``is_causal``, flash-attn < 2.1).
ALIGNMENTS = ("bottom-right", "top-left")


@dataclasses.dataclass(frozen=True)
class AttentionProblem:
    """One attention test case: inputs, an upstream gradient and the options.

    q: (B, H, Nq, d); k, v: (B, H_kv, Nk, d) with H % H_kv == 0; dout: (B, H, Nq, d);
    all one dtype, possibly non-contiguous views. key_lengths: None or ints (B,) in
    [1, Nk]. causal_alignment: one of ``ALIGNMENTS`` (what ``causal=True`` means to
    the candidate). recipe: the ``make_attention_problem`` arguments that rebuild it,
    when it was made that way.
    """

    q: np.ndarray
    k: np.ndarray
    v: np.ndarray
    dout: np.ndarray
    causal: bool
    scale: object  # float or None (1/sqrt(d))
    key_lengths: object = None  # np.ndarray (B,) or None
    causal_alignment: str = "bottom-right"
    recipe: object = dataclasses.field(default=None, compare=False)

    def __post_init__(self):
        if self.causal_alignment not in ALIGNMENTS:
            raise ValueError(f"causal_alignment must be one of {ALIGNMENTS}, got {self.causal_alignment!r}")

    def options(self):
        """Keyword arguments for a candidate: causal, scale, and key_lengths when there are any."""
        options = dict(causal=self.causal, scale=self.scale)
        if self.key_lengths is not None:
            options["key_lengths"] = self.key_lengths
        return options

    def _repr_pretty_(self, printer, cycle):
        """What hypothesis prints for a falsifying example: the repr, not every array element."""
        printer.text(repr(self))

    def __repr__(self):
        if self.recipe is not None:
            arguments = ", ".join(f"{name}={value!r}" for name, value in self.recipe.items())
            return f"make_attention_problem({arguments})"
        B, H, n_q, d = self.q.shape
        lengths = None if self.key_lengths is None else self.key_lengths.tolist()
        return (
            f"AttentionProblem(B={B}, H={H}, H_kv={self.k.shape[1]}, Nq={n_q}, Nk={self.k.shape[2]}, d={d}, "
            f"dtype={self.q.dtype}, causal={self.causal} ({self.causal_alignment}), scale={self.scale}, "
            f"key_lengths={lengths})"
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
    if layout == "contiguous":
        return np.ascontiguousarray(x)
    raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")


def make_attention_problem(*, batch, heads, kv_heads, n_q, n_k, head_dim, dtype="float64", causal=False,
                           causal_alignment="bottom-right", scale=None, key_lengths=None, score_size=1.0,
                           layouts=("contiguous", "contiguous", "contiguous"), seed=0):
    """Build one :class:`AttentionProblem` from its recipe.

    q, k, v and dout are standard normal (seeded), q rescaled so that typical |scores|
    are about ``score_size``; q, k, v take the memory ``layouts`` (see ``LAYOUTS``).
    key_lengths: None or a sequence of B ints. Every argument is kept in the problem's
    recipe, so ``repr(problem)`` is this call.
    """
    recipe = dict(batch=batch, heads=heads, kv_heads=kv_heads, n_q=n_q, n_k=n_k, head_dim=head_dim,
                  dtype=str(np.dtype(dtype)), causal=causal, causal_alignment=causal_alignment, scale=scale,
                  key_lengths=None if key_lengths is None else [int(n) for n in key_lengths],
                  score_size=score_size, layouts=tuple(layouts), seed=seed)
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((batch, heads, n_q, head_dim))
    k = rng.standard_normal((batch, kv_heads, n_k, head_dim))
    v = rng.standard_normal((batch, kv_heads, n_k, head_dim))
    dout = rng.standard_normal((batch, heads, n_q, head_dim))
    used_scale = 1.0 / np.sqrt(head_dim) if scale is None else abs(scale)
    if used_scale > 0:
        # Typical |score| is used_scale·sqrt(d)·|q||k|; rescale q so it is about score_size.
        q *= score_size / (used_scale * np.sqrt(head_dim) * 3.0)
    q, k, v, dout = (x.astype(dtype) for x in (q, k, v, dout))
    q, k, v = (_with_layout(x, layout) for x, layout in zip((q, k, v), layouts))
    lengths = None if key_lengths is None else np.array(recipe["key_lengths"], dtype=np.int64)
    return AttentionProblem(q, k, v, dout, causal=causal, scale=scale, key_lengths=lengths,
                            causal_alignment=causal_alignment, recipe=recipe)


def _lengths(upper, lower=1):
    """Lengths lower..upper, with extra weight on the tile edges of ``EDGE_LENGTHS`` and the bounds."""
    edges = sorted({lower, upper} | {n for n in EDGE_LENGTHS if lower <= n <= upper})
    return st.one_of(st.sampled_from(edges), st.integers(lower, upper))


def _query_lengths(n_k, max_len, more_than_keys):
    """Nq: equal to Nk, fewer, or (when ``more_than_keys``) more, each about a third of the time."""
    kinds = [st.just(n_k), _lengths(n_k)]
    if more_than_keys and n_k < max_len:
        kinds.append(_lengths(max_len, lower=n_k + 1))
    return st.one_of(*kinds)


def _head_counts(max_heads, grouped_heads):
    """(H, H_kv): a third each ordinary (H_kv == H), multi-query (H_kv == 1 < H) and
    grouped (1 < H_kv < H), as far as max_heads allows."""
    ordinary = [(h, h) for h in range(1, max_heads + 1)]
    if not grouped_heads:
        return st.sampled_from(ordinary)
    multi_query = [(h, 1) for h in range(2, max_heads + 1)]
    grouped = [(h, g) for h in range(2, max_heads + 1) for g in range(2, h) if h % g == 0]
    return st.one_of(*(st.sampled_from(kind) for kind in (ordinary, multi_query, grouped) if kind))


def _key_lengths(batch, n_k):
    """None half the time; else B lengths in [1, Nk], each often Nk, 1 or a tile edge."""
    one = st.one_of(st.just(n_k), _lengths(n_k))
    return st.one_of(st.none(), st.lists(one, min_size=batch, max_size=batch))


def _scales():
    """None (1/sqrt(d)), a positive, a negative or a zero scale, each about a quarter of the time."""
    magnitude = st.floats(0.0625, 2.0, width=32)
    return st.one_of(st.none(), magnitude, magnitude.map(lambda x: -x), st.just(0.0))


@st.composite
def attention_problems(
    draw,
    dtypes=("float32", "float64"),
    causal=None,
    max_batch=2,
    max_heads=4,
    max_len=260,
    head_dims=EDGE_HEAD_DIMS,
    max_score=MAX_SCORE,
    layouts=LAYOUTS,
    key_lengths=True,
    grouped_heads=True,
    causal_alignment="bottom-right",
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
        extra weight on ``EDGE_LENGTHS`` (tile edges). Bottom-right causal problems
        keep Nq <= Nk; top-left ones draw Nq > Nk too.
    head_dims : sequence of int
        Head dimensions d to draw from.
    max_score : float
        Largest score magnitude aimed for; problems range from tiny scores
        (uniform attention) to ``max_score`` (one-hot rows).
    layouts : sequence of str
        Memory layouts (see ``LAYOUTS``) drawn independently for q, k and v.
    key_lengths : bool
        Draw right-padded batches (half the problems) for a candidate taking
        ``key_lengths=``; False never passes it.
    grouped_heads : bool
        Draw k, v with fewer heads than q (multi-query and grouped-query, two thirds
        of the problems when max_heads >= 4); False keeps H_kv == H.
    causal_alignment : {"bottom-right", "top-left"}
        What ``causal=True`` means to the candidate (see ``ALIGNMENTS``).

    Each option value (dtype, mask, scale sign, padding, head grouping) comes up in
    a sizeable share of draws, so a bug confined to one of them shows within the
    default 50 examples. The arrays come from a NumPy generator seeded by hypothesis,
    so large problems are cheap to draw; hypothesis still shrinks shapes, options and
    the seed.
    """
    if causal_alignment not in ALIGNMENTS:
        raise ValueError(f"causal_alignment must be one of {ALIGNMENTS}, got {causal_alignment!r}")
    dtype = draw(st.sampled_from(dtypes))
    is_causal = draw(st.booleans()) if causal is None else bool(causal)
    batch = draw(st.integers(1, max_batch))
    heads, kv_heads = draw(_head_counts(max_heads, grouped_heads))
    n_k = draw(_lengths(max_len))
    # Bottom-right causal refuses Nq > Nk (its first rows would see no key); top-left allows it.
    n_q = draw(_query_lengths(n_k, max_len, not (is_causal and causal_alignment == "bottom-right")))
    recipe = dict(
        batch=batch, heads=heads, kv_heads=kv_heads, n_q=n_q, n_k=n_k,
        head_dim=draw(st.sampled_from(head_dims)),
        dtype=dtype, causal=is_causal, causal_alignment=causal_alignment,
        scale=draw(_scales()),
        key_lengths=draw(_key_lengths(batch, n_k)) if key_lengths else None,
        # Target score size: uniform attention .. ordinary .. numerically one-hot rows.
        score_size=draw(st.sampled_from([1e-3, 1.0, 30.0, max_score])),
        layouts=tuple(draw(st.sampled_from(layouts)) for _ in range(3)),
        seed=draw(st.integers(0, 2**32 - 1)),
    )
    return make_attention_problem(**recipe)


def corner_problems(dtypes=("float32", "float64"), causal=None, max_batch=2, max_heads=4, max_len=260,
                    head_dims=EDGE_HEAD_DIMS, max_score=MAX_SCORE, layouts=LAYOUTS, key_lengths=True,
                    grouped_heads=True, causal_alignment="bottom-right"):
    """Small problems covering every combination of mask, scale kind (default, positive,
    negative, zero), padding and head grouping that ``attention_problems`` with the same
    options can draw, with dtypes and the Nq/Nk relation taking turns: the explicit
    examples ``check_attention`` runs before its random search, so a bug confined to one
    option value, or to a combination of them, is found whatever the search draws.

    Takes ``attention_problems``' options. The problems are B = min(2, max_batch),
    H = 4 (as max_heads allows), Nk = 6, d = 3 (or the first of head_dims), ordinary
    scores (max_score only shapes the random search) and the first of ``layouts``.
    """
    n_k, d = min(6, max_len), 3 if 3 in head_dims else head_dims[0]
    batch = min(2, max_batch)
    lengths = [max(1, n_k // 3), n_k][:batch]  # batch 0 padded; batch 1 (if any) not
    relations = [n_k, max(1, n_k // 2)] + ([min(max_len, n_k + 3)] if max_len > n_k else [])
    heads = [(h, g) for h, g in ((4, 4), (4, 1), (4, 2)) if h <= max_heads and (grouped_heads or g == h)]
    heads = heads or [(max_heads, max_heads)]
    problems = []
    for is_causal in ((False, True) if causal is None else (bool(causal),)):
        for scale in (None, 0.7, -0.7, 0.0):
            for padded in ((False, True) if key_lengths else (False,)):
                for n_head, n_kv_head in heads:
                    index = len(problems)
                    n_q = relations[index % len(relations)]
                    if is_causal and causal_alignment == "bottom-right":
                        n_q = min(n_q, n_k)
                    problems.append(make_attention_problem(
                        batch=batch, heads=n_head, kv_heads=n_kv_head, n_q=n_q, n_k=n_k, head_dim=d,
                        dtype=dtypes[index % len(dtypes)], causal=is_causal, causal_alignment=causal_alignment,
                        scale=scale, key_lengths=lengths if padded else None,
                        layouts=(layouts[0],) * 3, seed=index,
                    ))
    return problems
