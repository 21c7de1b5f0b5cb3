"""Every layer's backward equals central finite differences of its forward (float64); forwards
match their definitions; float32 inputs stay float32. These prove the NumPy reference (the
layer kernels are proven equal to it in tests/test_layer_kernels.py)."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy.special import expit, log_softmax, ndtr

from finite_differences import assert_gradient_matches
from numpyllm import attention, backend
from numpyllm import layers as L
from numpyllm.gpt import block_param_shapes


@pytest.fixture(autouse=True, scope="module")
def reference_layers():
    """The reference under test here, whatever the default backend."""
    with backend.using("numpy"):
        yield


seeds = st.integers(0, 2**32 - 1)
batch = st.integers(1, 2)
time = st.integers(1, 5)
heads = st.integers(1, 3)
head_size = st.integers(1, 4)


def check_pair(forward, backward, arrays, rng):
    """FD-check backward(dout, cache) against forward(*arrays) for the scalar Σ out · dout.

    ``backward`` returns one gradient per array, in order (as every layer pair does), or
    a bare array when the forward has one input.
    """
    out, cache = forward(*arrays)
    dout = rng.standard_normal(out.shape)
    grads = backward(dout, cache)
    if isinstance(grads, np.ndarray):
        grads = (grads,)
    assert len(grads) == len(arrays)

    def objective():
        return float(np.sum(forward(*arrays)[0] * dout))

    for position, (x, g) in enumerate(zip(arrays, grads)):
        assert_gradient_matches(objective, x, g, rng, name=f"{forward.__name__} argument {position}")


@given(seeds, batch, time, st.integers(1, 4), st.integers(1, 6), st.integers(0, 3))
def test_embedding_backward_matches_finite_differences(seed, B, T, vocab, C, extra_positions):
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, vocab, (B, T))  # a small vocabulary makes repeated tokens likely
    wte = rng.standard_normal((vocab, C))
    wpe = rng.standard_normal((T + extra_positions, C))

    def embedding(wte, wpe):
        return L.embedding_forward(idx, wte, wpe)

    check_pair(embedding, L.embedding_backward, [wte, wpe], rng)


@given(seeds, batch, time, st.integers(1, 8))
def test_layernorm_backward_matches_finite_differences(seed, B, T, C):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((B, T, C)) * 3 + rng.standard_normal()
    check_pair(L.layernorm_forward, L.layernorm_backward, [x, rng.standard_normal(C), rng.standard_normal(C)], rng)


@given(seeds, batch, time, st.integers(1, 6), st.integers(1, 6), st.booleans())
def test_linear_backward_matches_finite_differences(seed, B, T, n_in, n_out, with_bias):
    rng = np.random.default_rng(seed)
    x, w = rng.standard_normal((B, T, n_in)), rng.standard_normal((n_in, n_out))
    if with_bias:
        check_pair(L.linear_forward, L.linear_backward, [x, w, rng.standard_normal(n_out)], rng)
    else:
        def linear(x, w):
            return L.linear_forward(x, w)

        def linear_backward(dy, cache):
            dx, dw, db = L.linear_backward(dy, cache)
            assert db is None
            return dx, dw

        check_pair(linear, linear_backward, [x, w], rng)


@given(seeds, st.integers(1, 40))
def test_gelu_backward_matches_finite_differences(seed, n):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(n) * 3  # covers the curved middle and both saturated tails
    check_pair(L.gelu_forward, L.gelu_backward, [x], rng)


def test_gelu_is_the_tanh_approximation_of_x_times_normal_cdf():
    x = np.linspace(-12, 12, 1201)
    y, _ = L.gelu_forward(x)
    exact = x * ndtr(x)  # the erf GELU, x · Φ(x)
    np.testing.assert_allclose(y, exact, atol=1e-3)  # the tanh form is an approximation...
    assert np.max(np.abs(y - exact)) > 1e-5  # ...not the erf form itself
    np.testing.assert_allclose(y[x > 10], x[x > 10], rtol=1e-15)  # and saturates to x, 0
    np.testing.assert_allclose(y[x < -10], 0, atol=1e-15)


@given(seeds, st.integers(1, 40))
def test_gelu_erf_backward_matches_finite_differences(seed, n):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(n) * 3
    check_pair(L.gelu_erf_forward, L.gelu_erf_backward, [x], rng)


def test_gelu_erf_is_x_times_normal_cdf():
    x = np.linspace(-12, 12, 1201)
    y, _ = L.gelu_erf_forward(x)
    np.testing.assert_allclose(y, x * ndtr(x), rtol=1e-14, atol=1e-300)
    assert L.gelu_erf_forward(x.astype(np.float32))[0].dtype == np.float32


def random_targets(rng, B, T, vocab, ignored_fraction):
    targets = rng.integers(0, vocab, (B, T))
    ignored = rng.random((B, T)) < ignored_fraction
    targets[ignored] = rng.choice([L.IGNORE_INDEX, -100], size=int(ignored.sum()))  # every negative is ignored
    targets.flat[rng.integers(B * T)] = rng.integers(vocab)  # at least one scored position
    return targets


@given(seeds, batch, time, st.integers(1, 7), st.sampled_from([0.0, 0.5]))
def test_cross_entropy_backward_matches_finite_differences(seed, B, T, vocab, ignored_fraction):
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((B, T, vocab)) * 4
    targets = random_targets(rng, B, T, vocab, ignored_fraction)
    dloss = rng.standard_normal()
    _, cache = L.cross_entropy_forward(logits, targets)
    dlogits = L.cross_entropy_backward(dloss, cache)
    assert_gradient_matches(lambda: L.cross_entropy_forward(logits, targets)[0] * dloss, logits, dlogits, rng,
                            name="logits", n_entries=20)
    assert not np.any(dlogits[targets < 0])  # padding gets no gradient at all


@given(seeds, batch, time, st.integers(1, 7), st.sampled_from([0.0, 0.5]))
def test_cross_entropy_is_mean_negative_log_softmax_over_scored_positions(seed, B, T, vocab, ignored_fraction):
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((B, T, vocab)) * 4
    targets = random_targets(rng, B, T, vocab, ignored_fraction)
    loss, _ = L.cross_entropy_forward(logits, targets)
    scored = targets >= 0
    expected = -np.mean(log_softmax(logits[scored], axis=-1)[np.arange(scored.sum()), targets[scored]])
    assert loss == pytest.approx(expected, rel=1e-12)


def test_cross_entropy_survives_huge_logits():
    logits = np.array([[[1e4, 0.0, -1e4]]], dtype=np.float32)
    loss, cache = L.cross_entropy_forward(logits, np.array([[1]]))
    assert loss == pytest.approx(1e4, rel=1e-6)
    assert np.all(np.isfinite(L.cross_entropy_backward(1.0, cache)))


@pytest.mark.parametrize("backend", attention.available_backends())
@given(seed=seeds, B=batch, T=time, H=heads, hd=head_size)
def test_self_attention_backward_matches_finite_differences(backend, seed, B, T, H, hd):
    rng = np.random.default_rng(seed)
    C = H * hd
    arrays = [rng.standard_normal((B, T, C)), rng.standard_normal((C, 3 * C)) / np.sqrt(C),
              rng.standard_normal(3 * C), rng.standard_normal((C, C)), rng.standard_normal(C)]

    def self_attention(*arrays):
        return L.self_attention_forward(*arrays, n_head=H, backend=backend)

    check_pair(self_attention, L.self_attention_backward, arrays, rng)


def test_self_attention_is_causal_and_splits_heads_like_gpt2():
    # Position t's output depends on positions <= t only, and head h reads channels [h·hd, (h+1)·hd).
    rng = np.random.default_rng(0)
    B, T, H, hd = 2, 5, 3, 2
    C = H * hd
    w_attn, b_attn = rng.standard_normal((C, 3 * C)), rng.standard_normal(3 * C)
    x = rng.standard_normal((B, T, C))
    (q, k, v), _ = L.qkv_forward(x, w_attn, b_attn, H)
    qkv = x @ w_attn + b_attn
    np.testing.assert_array_equal(k[:, 1], qkv[:, :, C + hd: C + 2 * hd])  # head 1 of k
    y, _ = L.self_attention_forward(x, w_attn, b_attn, np.eye(C), np.zeros(C), H, backend="numpy")
    x_changed = x.copy()
    x_changed[:, 3:] += 1.0
    y_changed, _ = L.self_attention_forward(x_changed, w_attn, b_attn, np.eye(C), np.zeros(C), H, backend="numpy")
    np.testing.assert_array_equal(y_changed[:, :3], y[:, :3])
    assert not np.allclose(y_changed[:, 3:], y[:, 3:])


@given(seeds, batch, time, st.integers(1, 4))
def test_mlp_backward_matches_finite_differences(seed, B, T, C):
    rng = np.random.default_rng(seed)
    arrays = [rng.standard_normal((B, T, C)), rng.standard_normal((C, 4 * C)), rng.standard_normal(4 * C),
              rng.standard_normal((4 * C, C)), rng.standard_normal(C)]
    check_pair(L.mlp_forward, L.mlp_backward, arrays, rng)


def block_params(rng, C):
    # Matrices scaled by 1/sqrt(fan_in), as trained weights roughly are: unscaled ones make
    # near-one-hot attention whose curvature swamps the finite differences' O(step²) error.
    return {name: rng.standard_normal(shape) / np.sqrt(shape[0] if len(shape) == 2 else 1)
            for name, shape in block_param_shapes(C)}


@given(seed=seeds, B=batch, T=time, H=heads, hd=head_size)
def test_block_backward_matches_finite_differences(seed, B, T, H, hd):
    rng = np.random.default_rng(seed)
    x, params = rng.standard_normal((B, T, H * hd)), block_params(rng, H * hd)
    out, cache = L.block_forward(x, params, H, backend="numpy")
    dout = rng.standard_normal(out.shape)
    dx, dparams = L.block_backward(dout, cache)
    assert dparams.keys() == params.keys()

    def objective():
        return float(np.sum(L.block_forward(x, params, H, backend="numpy")[0] * dout))

    assert_gradient_matches(objective, x, dx, rng, name="x")
    for name, p in params.items():
        assert_gradient_matches(objective, p, dparams[name], rng, name=name)


def test_float32_in_float32_out():
    # Nothing silently promotes to float64: the model computes in its config's dtype.
    rng = np.random.default_rng(0)
    B, T, H, hd = 2, 4, 2, 3
    x = rng.standard_normal((B, T, H * hd)).astype(np.float32)
    params = {name: p.astype(np.float32) for name, p in block_params(rng, H * hd).items()}
    for backend in attention.available_backends():
        out, cache = L.block_forward(x, params, H, backend=backend)
        dx, dparams = L.block_backward(np.ones_like(out), cache)
        assert out.dtype == dx.dtype == np.float32
        assert {g.dtype for g in dparams.values()} == {np.dtype(np.float32)}
    logits = rng.standard_normal((B, T, 5)).astype(np.float32)
    _, cache = L.cross_entropy_forward(logits, rng.integers(0, 5, (B, T)))
    assert L.cross_entropy_backward(1.0, cache).dtype == np.float32
    wte, wpe = logits[0], rng.standard_normal((T, 5)).astype(np.float32)
    out, cache = L.embedding_forward(rng.integers(0, T, (B, T)), wte, wpe)
    assert out.dtype == np.float32
    assert {g.dtype for g in L.embedding_backward(out, cache)} == {np.dtype(np.float32)}


# --------------------------------------------------------------------------- the layers BERT adds


@given(seeds, batch, time, st.integers(1, 4), st.integers(1, 5))
def test_lookup_backward_matches_finite_differences(seed, B, T, V, C):
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, V, (B, T))  # a small table makes repeated ids likely

    def lookup(table):
        return L.lookup_forward(idx, table)

    check_pair(lookup, L.lookup_backward, [rng.standard_normal((V, C))], rng)


@given(seeds, batch, time, st.integers(1, 6), st.integers(1, 5), st.booleans())
def test_tied_decoder_backward_matches_finite_differences(seed, B, T, V, C, with_bias):
    rng = np.random.default_rng(seed)
    arrays = [rng.standard_normal((B, T, C)), rng.standard_normal((V, C))] + ([rng.standard_normal(V)] * with_bias)

    def backward(dlogits, cache):
        dx, dtable, dbias = L.tied_decoder_backward(dlogits, cache)
        assert dtable.shape == (V, C) and (dbias is None) == (not with_bias)
        return (dx, dtable, dbias)[:len(arrays)]

    check_pair(L.tied_decoder_forward, backward, arrays, rng)
    logits, _ = L.tied_decoder_forward(*arrays)
    np.testing.assert_allclose(logits, arrays[0] @ arrays[1].T + (arrays[2] if with_bias else 0), rtol=1e-12)


@given(seeds, st.integers(1, 40))
def test_tanh_backward_matches_finite_differences(seed, n):
    rng = np.random.default_rng(seed)
    check_pair(L.tanh_forward, L.tanh_backward, [rng.standard_normal(n) * 2], rng)


@given(seeds, batch, st.integers(1, 4))
def test_mse_backward_matches_finite_differences_and_is_the_mean_square(seed, B, n):
    rng = np.random.default_rng(seed)
    predictions, targets = rng.standard_normal((B, n)), rng.standard_normal((B, n))
    dloss = rng.standard_normal()
    loss, cache = L.mse_forward(predictions, targets)
    assert loss == pytest.approx(np.mean((predictions - targets) ** 2), rel=1e-12)
    assert_gradient_matches(lambda: L.mse_forward(predictions, targets)[0] * dloss, predictions,
                            L.mse_backward(dloss, cache), rng, name="predictions")


@given(seeds, batch, st.integers(1, 4))
def test_bce_with_logits_backward_matches_finite_differences_and_is_binary_cross_entropy(seed, B, n):
    rng = np.random.default_rng(seed)
    logits, targets = rng.standard_normal((B, n)) * 4, (rng.random((B, n)) < 0.5).astype(float)
    targets[0, 0] = 0.3  # soft targets are values too
    dloss = rng.standard_normal()
    loss, cache = L.bce_with_logits_forward(logits, targets)
    sigmoid = expit(logits)
    expected = -np.mean(targets * np.log(sigmoid) + (1 - targets) * np.log(1 - sigmoid))
    assert loss == pytest.approx(expected, rel=1e-12)
    assert_gradient_matches(lambda: L.bce_with_logits_forward(logits, targets)[0] * dloss, logits,
                            L.bce_with_logits_backward(dloss, cache), rng, name="logits")


def test_bce_with_logits_survives_huge_logits():
    logits = np.array([[1e4, -1e4, 1e4, -1e4]], dtype=np.float32)
    loss, cache = L.bce_with_logits_forward(logits, np.array([[1.0, 0.0, 0.0, 1.0]], dtype=np.float32))
    assert loss == pytest.approx(1e4 / 2, rel=1e-6)  # the two wrong ones cost 1e4 each
    dlogits = L.bce_with_logits_backward(1.0, cache)
    assert dlogits.dtype == np.float32
    np.testing.assert_allclose(dlogits, [[0.0, 0.0, 0.25, -0.25]], atol=1e-7)


def padded_lengths(rng, B, T):
    lengths = rng.integers(1, T + 1, B)
    lengths[0] = T  # one full row: the batch is as long as its longest
    return lengths


@pytest.mark.parametrize("backend", attention.available_backends())
@given(seed=seeds, B=batch, T=time, H=heads, hd=head_size)
def test_padded_self_attention_backward_matches_finite_differences(backend, seed, B, T, H, hd):
    rng = np.random.default_rng(seed)
    C = H * hd
    arrays = [rng.standard_normal((B, T, C)), rng.standard_normal((C, 3 * C)) / np.sqrt(C),
              rng.standard_normal(3 * C), rng.standard_normal((C, C)), rng.standard_normal(C)]
    lengths = padded_lengths(rng, B, T)

    def self_attention(*arrays):
        return L.self_attention_forward(*arrays, n_head=H, backend=backend, causal=False, key_lengths=lengths)

    check_pair(self_attention, L.self_attention_backward, arrays, rng)


def test_padded_self_attention_ignores_the_padding_and_sees_both_directions():
    rng = np.random.default_rng(1)
    B, T, H, hd = 2, 6, 2, 3
    C = H * hd
    weights = [rng.standard_normal((C, 3 * C)), rng.standard_normal(3 * C), rng.standard_normal((C, C)),
               rng.standard_normal(C)]
    x, lengths = rng.standard_normal((B, T, C)), np.array([6, 4])
    y, _ = L.self_attention_forward(x, *weights, H, backend="numpy", causal=False, key_lengths=lengths)
    changed = x.copy()
    changed[1, 4:] += 5.0  # row 1's padding
    y_changed, _ = L.self_attention_forward(changed, *weights, H, backend="numpy", causal=False, key_lengths=lengths)
    np.testing.assert_array_equal(y_changed[1, :4], y[1, :4])
    np.testing.assert_array_equal(y_changed[0], y[0])
    short, _ = L.self_attention_forward(x[1:, :4], *weights, H, backend="numpy", causal=False)  # no padding at all
    np.testing.assert_allclose(y[1:, :4], short, rtol=1e-12)
    changed[1, 3] += 1.0  # a later token changes earlier outputs: not causal
    y_changed, _ = L.self_attention_forward(changed, *weights, H, backend="numpy", causal=False, key_lengths=lengths)
    assert not np.allclose(y_changed[1, 0], y[1, 0])


@pytest.mark.parametrize("activation", sorted(L.ACTIVATIONS))
@given(seed=seeds, B=batch, T=time, C=st.integers(1, 4), inner=st.integers(1, 6))
def test_mlp_backward_matches_finite_differences_for_every_activation(activation, seed, B, T, C, inner):
    rng = np.random.default_rng(seed)
    arrays = [rng.standard_normal((B, T, C)), rng.standard_normal((C, inner)), rng.standard_normal(inner),
              rng.standard_normal((inner, C)), rng.standard_normal(C)]

    def mlp(*arrays):
        return L.mlp_forward(*arrays, activation=activation)

    check_pair(mlp, L.mlp_backward, arrays, rng)
    h = arrays[0] @ arrays[1] + arrays[2]
    act = h * ndtr(h) if activation == "gelu" else L.gelu_forward(h)[0]
    np.testing.assert_allclose(mlp(*arrays)[0], act @ arrays[3] + arrays[4], rtol=1e-10, atol=1e-12)
