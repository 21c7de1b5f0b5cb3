"""The compiled layer kernels (numpyllm._layers) equal the NumPy reference, forward and
backward, float32 and float64, on awkward shapes and strides; the backend switch works; a
build without the kernels still trains on the reference.

tests/test_layers.py proves the reference against finite differences; this file proves
the kernels against the reference, through the public ``numpyllm.layers`` functions.
"""

import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import numpyllm
from numpyllm import backend
from numpyllm import layers as L

KERNEL_BUILT = "cython" in backend.available_backends()
# In CI (and whenever NUMPYLLM_REQUIRE_KERNEL is set) a missing kernel is a failure.
REQUIRE_KERNEL = bool(os.environ.get("CI") or os.environ.get("NUMPYLLM_REQUIRE_KERNEL"))
pytestmark = pytest.mark.skipif(not KERNEL_BUILT and not REQUIRE_KERNEL,
                                reason="layer kernels not built (python setup.py build_ext --inplace)")

# float64 to ~1e-12 and float32 to ~1e-5 of the output's scale (DESIGN.md's kernel contract).
RTOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}
dtypes = st.sampled_from([np.float32, np.float64])
seeds = st.integers(0, 2**32 - 1)
# Leading axes (one row, a few rows, two axes) and widths around the 16-lane sums.
leading = st.sampled_from([(1,), (3,), (2, 3), (1, 1)])
widths = st.sampled_from([1, 2, 3, 7, 16, 17, 33])
layouts = st.sampled_from(["contiguous", "strided", "transposed"])


def awkward(rng, shape, dtype, layout, scale=3.0):
    """A random array of ``shape`` and ``dtype``: C-contiguous, every other column of a wider
    array ("strided"), or the transpose of a C-contiguous array ("transposed")."""
    if layout == "strided":
        x = (rng.standard_normal((*shape[:-1], 2 * shape[-1])) * scale).astype(dtype)[..., ::2]
    elif layout == "transposed":
        x = (rng.standard_normal(shape[::-1]) * scale).astype(dtype).T
    else:
        x = (rng.standard_normal(shape) * scale).astype(dtype)
    assert x.shape == tuple(shape) and x.dtype == dtype
    return x


def assert_close(kernel, reference, name):
    """kernel equals reference to the dtype's tolerance, relative to the reference's scale."""
    kernel, reference = np.asarray(kernel), np.asarray(reference)
    assert kernel.shape == reference.shape, name
    assert kernel.dtype == reference.dtype, name
    tol = RTOL[reference.dtype] * (1.0 + float(np.max(np.abs(reference), initial=0.0)))
    np.testing.assert_allclose(kernel, reference, rtol=0, atol=tol, err_msg=name)


def both(function, *args):
    """(kernel result, reference result) of one layers.* call."""
    with backend.using("cython"):
        kernel = function(*args)
    with backend.using("numpy"):
        reference = function(*args)
    return kernel, reference


def assert_same_tree(kernel, reference, name):
    """Arrays (or floats) nested in tuples, compared leaf by leaf."""
    if isinstance(reference, tuple):
        assert isinstance(kernel, tuple) and len(kernel) == len(reference), name
        for i, (a, b) in enumerate(zip(kernel, reference)):
            assert_same_tree(a, b, f"{name}[{i}]")
    elif isinstance(reference, np.ndarray) and reference.dtype.kind == "f":
        assert_close(kernel, reference, name)
    elif isinstance(reference, np.ndarray):
        np.testing.assert_array_equal(kernel, reference, err_msg=name)
    elif isinstance(reference, float):
        assert kernel == pytest.approx(reference, rel=1e-6, abs=1e-12), name
    else:
        assert kernel == reference, name


# --------------------------------------------------------------------------- the kernels are the ones tested


def test_kernel_is_built():
    if not REQUIRE_KERNEL and not KERNEL_BUILT:
        pytest.skip("layer kernels not built; set NUMPYLLM_REQUIRE_KERNEL=1 to make this a failure")
    assert KERNEL_BUILT, f"numpyllm._layers failed to import: {backend.KERNEL.error}"
    assert backend.get_backend() == "auto"
    x = np.ones((2, 3))
    assert backend.kernel(x) is backend.KERNEL.module
    with backend.using("numpy"):
        assert backend.kernel(x) is None


# --------------------------------------------------------------------------- kernel == reference


@given(seeds, dtypes, leading, widths, layouts)
def test_layernorm_kernel_matches_reference(seed, dtype, lead, C, layout):
    rng = np.random.default_rng(seed)
    x = awkward(rng, (*lead, C), dtype, layout) + rng.standard_normal()
    weight, bias = awkward(rng, (C,), dtype, "strided"), rng.standard_normal(C).astype(dtype)
    (y, cache), (y_ref, cache_ref) = both(L.layernorm_forward, x, weight, bias)
    assert_close(y, y_ref, "y")
    assert_same_tree(cache, cache_ref, "cache")
    dy = awkward(rng, x.shape, dtype, layout)
    kernel, reference = both(L.layernorm_backward, dy, cache_ref)
    assert_same_tree(kernel, reference, "layernorm_backward")


@pytest.mark.parametrize("form", ["tanh", "erf"])
@given(seed=seeds, dtype=dtypes, lead=leading, width=widths, layout=layouts)
def test_gelu_kernel_matches_reference(form, seed, dtype, lead, width, layout):
    forward, backward = {"tanh": (L.gelu_forward, L.gelu_backward),
                         "erf": (L.gelu_erf_forward, L.gelu_erf_backward)}[form]
    rng = np.random.default_rng(seed)
    x = awkward(rng, (*lead, width), dtype, layout, scale=4.0)
    (y, cache), (y_ref, cache_ref) = both(forward, x)
    assert_close(y, y_ref, "y")
    assert_same_tree(cache, cache_ref, "cache")
    dy = awkward(rng, x.shape, dtype, layout)
    kernel, reference = both(backward, dy, cache_ref)
    assert_close(kernel, reference, "dx")


@pytest.mark.parametrize("form", ["tanh", "erf"])
def test_gelu_kernel_covers_the_tails_and_special_values(form):
    forward = {"tanh": L.gelu_forward, "erf": L.gelu_erf_forward}[form]
    for dtype in (np.float32, np.float64):
        x = np.concatenate([np.linspace(-30, 30, 6001), [0.0, -0.0, np.inf, np.nan]]).astype(dtype)
        (y, (_, saved)), (y_ref, (_, saved_ref)) = both(forward, x)
        finite = np.isfinite(x)
        assert_close(y[finite], y_ref[finite], "y")
        assert_close(saved[finite], saved_ref[finite], "saved")
        assert np.isnan(y[-1]) and y[-2] == np.inf


@given(seeds, dtypes, leading, st.sampled_from([1, 2, 5, 17, 40]), st.sampled_from([0.0, 0.5]),
       st.sampled_from(["contiguous", "strided"]))
def test_cross_entropy_kernel_matches_reference(seed, dtype, lead, vocab, ignored_fraction, layout):
    rng = np.random.default_rng(seed)
    logits = awkward(rng, (*lead, vocab), dtype, layout, scale=5.0)
    targets = rng.integers(0, vocab, lead)
    targets[rng.random(lead) < ignored_fraction] = L.IGNORE_INDEX
    targets.flat[0] = vocab - 1  # at least one scored position
    (loss, cache), (loss_ref, cache_ref) = both(L.cross_entropy_forward, logits, targets)
    tol = RTOL[np.dtype(dtype)]  # a loss term is logsumexp - logit: its rounding scales with the logits
    assert loss == pytest.approx(loss_ref, rel=tol, abs=float(tol * (1 + np.abs(logits).max())))  # float: pytest 9 refuses a NumPy scalar
    assert_same_tree(cache, cache_ref, "cache")
    dloss = float(rng.standard_normal())
    kernel, reference = both(L.cross_entropy_backward, dloss, cache_ref)
    assert_close(kernel, reference, "dlogits")
    assert not np.any(kernel[targets == L.IGNORE_INDEX])


@pytest.mark.parametrize("name", ["cython", "numpy"])
@given(seed=seeds, dtype=dtypes, lead=leading, vocab=st.sampled_from([1, 5, 40]), layout=layouts)
def test_cross_entropy_in_place_equals_out_of_place(name, seed, dtype, lead, vocab, layout):
    """out=logits (then out=the cache's probabilities) writes the same numbers as fresh arrays."""
    rng = np.random.default_rng(seed)
    logits = awkward(rng, (*lead, vocab), dtype, layout, scale=5.0)
    targets = rng.integers(0, vocab, lead)
    with backend.using(name):
        loss, cache = L.cross_entropy_forward(logits, targets)
        dlogits = L.cross_entropy_backward(0.7, cache)
        in_place = logits.copy(order="K")  # keeps the layout: strided and transposed outs too
        loss_in_place, cache_in_place = L.cross_entropy_forward(in_place, targets, out=in_place)
        assert cache_in_place[0] is in_place
        np.testing.assert_array_equal(in_place, cache[0])
        dlogits_in_place = L.cross_entropy_backward(0.7, cache_in_place, out=in_place)
    assert loss_in_place == loss
    assert dlogits_in_place is in_place
    np.testing.assert_array_equal(dlogits_in_place, dlogits)


def test_cross_entropy_refuses_an_out_of_another_shape_or_dtype():
    logits = np.zeros((2, 3, 5), dtype=np.float32)
    targets = np.zeros((2, 3), dtype=np.int64)
    for out in (np.zeros((2, 3, 4), np.float32), np.zeros((2, 3, 5), np.float64)):
        with pytest.raises(ValueError, match="out must have logits' shape"):
            L.cross_entropy_forward(logits, targets, out=out)
    with pytest.raises(TypeError, match="out must be a NumPy array"):
        L.cross_entropy_forward(logits, targets, out=[0.0])
    _, cache = L.cross_entropy_forward(logits, targets)
    with pytest.raises(ValueError, match="out must have the probabilities' shape"):
        L.cross_entropy_backward(1.0, cache, out=np.zeros((6, 5), np.float32))


def test_cross_entropy_kernel_survives_huge_logits():
    logits = np.array([[[1e4, 0.0, -1e4], [-np.inf, 0.0, 1.0]]], dtype=np.float32)
    with backend.using("cython"):
        loss, cache = L.cross_entropy_forward(logits, np.array([[1, 2]]))
        dlogits = L.cross_entropy_backward(1.0, cache)
    assert loss == pytest.approx((1e4 + np.log1p(np.e ** -1)) / 2, rel=1e-6)
    assert np.all(np.isfinite(dlogits))


@given(seeds, dtypes, leading, widths, layouts, st.booleans())
def test_linear_bias_gradient_kernel_matches_reference(seed, dtype, lead, n_out, layout, with_bias):
    rng = np.random.default_rng(seed)
    n_in = 3
    x = awkward(rng, (*lead, n_in), dtype, layout)
    weight = rng.standard_normal((n_in, n_out)).astype(dtype)
    bias = rng.standard_normal(n_out).astype(dtype) if with_bias else None
    _, cache = L.linear_forward(x, weight, bias)
    dy = awkward(rng, (*lead, n_out), dtype, layout)
    kernel, reference = both(L.linear_backward, dy, cache)
    assert (kernel[2] is None) == (not with_bias)
    assert_same_tree(kernel[:2] + ((kernel[2],) if with_bias else ()),
                     reference[:2] + ((reference[2],) if with_bias else ()), "linear_backward")


@given(seeds, dtypes, leading, widths, layouts, st.integers(1, 9))
def test_embedding_gradient_kernel_equals_reference_exactly(seed, dtype, lead, C, layout, n_rows):
    """Repeated and negative ids, any layout of dx: the same sums in the same order as np.add.at."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(-n_rows, n_rows, size=lead)
    dx = awkward(rng, (*lead, C), dtype, layout)
    kernel, reference = both(L.lookup_backward, dx, (idx, (n_rows, C)))
    assert kernel.dtype == reference.dtype
    np.testing.assert_array_equal(kernel, reference)


@pytest.mark.parametrize("bad", [-4, 3, 10**9])
def test_embedding_gradient_kernel_refuses_out_of_range_ids_as_the_reference_does(bad):
    dx = np.ones((2, 2, 5), np.float32)
    idx = np.array([[0, 1], [2, bad]])
    for name in ("cython", "numpy"):
        with backend.using(name), pytest.raises(IndexError, match=f"index {bad} is out of bounds"):
            L.lookup_backward(dx, (idx, (3, 5)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(4095,), (4097,), (3, 4096), (130, 257), (400, 384)])
def test_kernels_match_reference_across_chunks_and_threads(dtype, shape):
    """Sizes on either side of a 4096-element chunk, and ones large enough for several threads."""
    rng = np.random.default_rng(sum(shape))
    x = awkward(rng, shape, dtype, "contiguous")
    C = shape[-1]
    for forward, backward, args in [(L.gelu_forward, L.gelu_backward, ()),
                                    (L.gelu_erf_forward, L.gelu_erf_backward, ()),
                                    (L.layernorm_forward, L.layernorm_backward,
                                     (rng.standard_normal(C).astype(dtype), rng.standard_normal(C).astype(dtype)))]:
        (y, cache), (y_ref, cache_ref) = both(forward, x, *args)
        assert_close(y, y_ref, forward.__name__)
        assert_same_tree(both(backward, x, cache_ref)[0], both(backward, x, cache_ref)[1], backward.__name__)
    kernel, reference = both(L._sum_rows, x.reshape(-1, C))
    assert_close(kernel, reference, "_sum_rows")


def test_caches_are_interchangeable():
    """A kernel forward's cache feeds the reference backward (and the reverse) with the same result."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 5, 8))
    w, b, dy = rng.standard_normal(8), rng.standard_normal(8), rng.standard_normal((3, 5, 8))
    for forward, backward, args in [(L.layernorm_forward, L.layernorm_backward, (w, b)),
                                    (L.gelu_forward, L.gelu_backward, ()),
                                    (L.gelu_erf_forward, L.gelu_erf_backward, ())]:
        with backend.using("cython"):
            _, kernel_cache = forward(x, *args)
        with backend.using("numpy"):
            _, reference_cache = forward(x, *args)
            from_kernel_cache = backward(dy, kernel_cache)
        with backend.using("cython"):
            from_reference_cache = backward(dy, reference_cache)
        assert_same_tree(from_kernel_cache, from_reference_cache, backward.__name__)


# --------------------------------------------------------------------------- optimizer


def adamw_run(params, grads_per_step, **hyperparameters):
    opt = numpyllm.AdamW(params, **hyperparameters)
    for grads in grads_per_step:
        opt.step(grads)
    return params, opt


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@given(seed=seeds, weight_decay=st.sampled_from([0.0, 0.1]))
def test_adamw_kernel_matches_reference(dtype, seed, weight_decay):
    rng = np.random.default_rng(seed)
    shapes = {"w": (5, 3), "b": (7,), "big": (4100,), "t": (2, 3, 2)}
    params = {name: rng.standard_normal(shape).astype(dtype) for name, shape in shapes.items()}
    steps = [{name: (10.0 ** -i * rng.standard_normal(shape)).astype(dtype) for name, shape in shapes.items()}
             for i in range(3)]
    results = {}
    for name in ("cython", "numpy"):
        with backend.using(name):
            results[name] = adamw_run({k: p.copy() for k, p in params.items()}, steps, lr=1e-2,
                                      weight_decay=weight_decay)
    (p_kernel, opt_kernel), (p_reference, opt_reference) = results["cython"], results["numpy"]
    for name in shapes:
        assert_close(p_kernel[name], p_reference[name], name)
        assert_close(opt_kernel.exp_avg[name], opt_reference.exp_avg[name], f"exp_avg {name}")
        assert_close(opt_kernel.exp_avg_sq[name], opt_reference.exp_avg_sq[name], f"exp_avg_sq {name}")


def test_adamw_updates_non_contiguous_parameters_in_place():
    rng = np.random.default_rng(0)
    base = rng.standard_normal((6, 8)).astype(np.float32)
    params = {"w": base[:, ::2]}  # a view the kernel cannot update through a flat view
    original = params["w"].copy()
    reference = {"w": original.copy()}
    grads = {"w": rng.standard_normal((6, 4)).astype(np.float32)}
    with backend.using("cython"):
        numpyllm.AdamW(params, lr=0.1).step(grads)
    with backend.using("numpy"):
        numpyllm.AdamW(reference, lr=0.1).step(grads)
    assert np.shares_memory(params["w"], base)
    assert not np.array_equal(params["w"], original)
    assert_close(params["w"], reference["w"], "w")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@given(seed=seeds, max_norm=st.sampled_from([1e-3, 1.0, np.inf]))
def test_clip_grad_norm_kernel_matches_reference(dtype, seed, max_norm):
    rng = np.random.default_rng(seed)
    grads = {"a": rng.standard_normal((3, 4)).astype(dtype), "b": awkward(rng, (5000,), dtype, "contiguous"),
             "c": rng.standard_normal(1).astype(dtype)}
    results = {}
    for name in ("cython", "numpy"):
        copies = {k: g.copy() for k, g in grads.items()}
        with backend.using(name):
            results[name] = (numpyllm.clip_grad_norm(copies, max_norm), copies)
    assert results["cython"][0] == pytest.approx(results["numpy"][0], rel=RTOL[np.dtype(dtype)])
    for name in grads:
        assert_close(results["cython"][1][name], results["numpy"][1][name], name)


# --------------------------------------------------------------------------- the switch


def test_backend_switch_rejects_unknown_names_and_restores_the_setting():
    with pytest.raises(ValueError, match="backend must be one of"):
        backend.set_backend("torch")
    with backend.using("numpy"):
        assert backend.get_backend() == "numpy"
        with pytest.raises(ValueError):
            with backend.using("fast"):
                pass
        assert backend.get_backend() == "numpy"
    assert backend.get_backend() == "auto"


def test_other_dtypes_run_the_reference():
    x = np.linspace(-3, 3, 7, dtype=np.float16)
    assert backend.kernel(x) is None
    assert backend.kernel(x.astype(np.float32), x.astype(np.float64)) is None  # mixed dtypes
    y, _ = L.gelu_forward(x)
    assert y.dtype == np.float16


def test_training_without_the_kernels_uses_the_reference():
    """Block numpyllm._layers in a new process: import works, 'auto' warns once and trains,
    'cython' says what is missing; the loss equals this process's kernel run."""
    code = (
        "import sys, warnings; sys.modules['numpyllm._layers'] = None\n"
        "import numpy as np, numpyllm\n"
        "from numpyllm import backend\n"
        "model = numpyllm.GPT(numpyllm.GPTConfig(vocab_size=11, block_size=6, n_layer=1, n_head=2, n_embd=8), seed=0)\n"
        "idx = np.arange(12).reshape(2, 6) % 11\n"
        "opt = numpyllm.AdamW(model.params, lr=1e-2)\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    for _ in range(2):\n"
        "        loss, grads = model.loss_and_grads(idx, idx)\n"
        "        numpyllm.clip_grad_norm(grads, 1.0)\n"
        "        opt.step(grads)\n"
        "layer_warnings = [w for w in caught if 'layer kernels' in str(w.message)]\n"
        "assert len(layer_warnings) == 1, [str(w.message) for w in caught]\n"
        "assert backend.available_backends() == ('numpy',)\n"
        "try:\n"
        "    backend.set_backend('cython')\n"
        "except RuntimeError as error:\n"
        "    assert 'numpyllm._layers' in str(error)\n"
        "else:\n"
        "    raise AssertionError('cython backend accepted without the kernels')\n"
        "print(repr(loss))\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    model = numpyllm.GPT(numpyllm.GPTConfig(vocab_size=11, block_size=6, n_layer=1, n_head=2, n_embd=8), seed=0)
    idx = np.arange(12).reshape(2, 6) % 11
    opt = numpyllm.AdamW(model.params, lr=1e-2)
    for _ in range(2):
        loss, grads = model.loss_and_grads(idx, idx)
        numpyllm.clip_grad_norm(grads, 1.0)
        opt.step(grads)
    assert float(result.stdout) == pytest.approx(loss, rel=1e-5)


# --------------------------------------------------------------------------- decoding


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("batch_size", [1, 3])
def test_fused_decoding_step_matches_the_layer_functions(dtype, batch_size):
    """Decoder.step on a short prompt and on one position runs as one DecodeStep call; the
    logits and the cache equal those of the layer functions one by one (backend "numpy")."""
    from numpyllm.generation import Decoder

    config = numpyllm.GPTConfig(vocab_size=23, block_size=12, n_layer=2, n_head=3, n_embd=12, dtype=dtype)
    model = numpyllm.GPT(config, seed=1)
    ids = np.random.default_rng(0).integers(0, 23, (batch_size, 9))
    decoders, logits = {}, {}
    for name in ("cython", "numpy"):
        with backend.using(name):
            decoder = Decoder(model, batch_size, 12)
            steps = [decoder.prefill(ids[:, :4])] + [decoder.step(ids[:, t: t + 1]) for t in range(4, 9)]
        decoders[name], logits[name] = decoder, steps
    for t, (fused, reference) in enumerate(zip(logits["cython"], logits["numpy"])):
        assert_close(fused, reference, f"logits after position {t + 3}")
    for name in ("keys", "values"):
        assert_close(getattr(decoders["cython"].cache, name)[:, :, :, :9],
                     getattr(decoders["numpy"].cache, name)[:, :, :, :9], name)


def _decode_step(model, decoder, num_threads):
    """A DecodeStep on the decoder's cache and its blocks' arrays, with the thread count given."""
    p = model.params
    return numpyllm._layers.DecodeStep(decoder._block_arrays, decoder.cache.keys, decoder.cache.values,
                                       p["ln_f.weight"], p["ln_f.bias"], p["wte.weight"], L.LAYERNORM_EPS, num_threads)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("batch_size", [1, 3])
@pytest.mark.parametrize("num_threads", [1, 2])
def test_decode_step_matches_the_layer_functions(dtype, batch_size, num_threads):
    """DecodeStep with 1 and 2 threads: a 3-position prompt, then one position at a time up to
    the cache's end, equal to the layer functions' logits and cache. 3 heads over 2 threads,
    and widths (3C = 144, 4C = 192, V = 37) whose thread shares are uneven."""
    from numpyllm.generation import Decoder

    config = numpyllm.GPTConfig(vocab_size=37, block_size=10, n_layer=2, n_head=3, n_embd=48, dtype=dtype)
    model = numpyllm.GPT(config, seed=2)
    ids = np.random.default_rng(1).integers(0, 37, (batch_size, 10))
    with backend.using("numpy"):
        reference = Decoder(model, batch_size, 10)
        expected = [reference.prefill(ids[:, :3])] + [reference.step(ids[:, t: t + 1]) for t in range(3, 10)]
    fused = Decoder(model, batch_size, 10)  # only for its cache and arrays
    step = _decode_step(model, fused, num_threads)
    wte, wpe = model.params["wte.weight"], model.params["wpe.weight"]
    logits = [step.step(L.embedding_forward(ids[:, :3], wte, wpe)[0], 0)]
    logits += [step.step(L.embedding_forward(ids[:, t: t + 1], wte, wpe[t:])[0], t) for t in range(3, 10)]
    for t, (got, want) in enumerate(zip(logits, expected)):
        assert_close(got, want, f"logits after position {t + 2}")
    for name in ("keys", "values"):
        assert_close(getattr(fused.cache, name), getattr(reference.cache, name), name)


def test_decode_step_rejects_bad_input():
    """DecodeStep checks its arrays, x and the positions: errors, never a read past an array."""
    from numpyllm.generation import Decoder

    model = numpyllm.GPT(numpyllm.GPTConfig(vocab_size=11, block_size=6, n_layer=1, n_head=2, n_embd=8), seed=0)
    decoder = Decoder(model, 2, 6)
    cache, blocks = decoder.cache, decoder._block_arrays
    step = _decode_step(model, decoder, 0)
    x = np.zeros((2, 1, 8), np.float32)
    with pytest.raises(ValueError, match="positions"):
        step.step(x, 6)
    with pytest.raises(ValueError, match="positions"):
        step.step(np.zeros((2, 4, 8), np.float32), 3)
    with pytest.raises(ValueError, match="x must be"):
        step.step(np.zeros((1, 1, 8), np.float32), 0)
    with pytest.raises(ValueError, match="x must be"):
        step.step(np.zeros((2, 1, 16), np.float32)[:, :, ::2], 0)
    with pytest.raises(TypeError, match="x must be"):
        step.step(x.astype(np.float64), 0)
    p = model.params
    with pytest.raises(ValueError, match="blocks\\[0\\]\\[2\\]"):
        numpyllm._layers.DecodeStep([blocks[0][:2] + (blocks[0][2].T,) + blocks[0][3:]], cache.keys, cache.values,
                                    p["ln_f.weight"], p["ln_f.bias"], p["wte.weight"], 1e-5)
    with pytest.raises(TypeError, match="wte"):
        numpyllm._layers.DecodeStep(blocks, cache.keys, cache.values, p["ln_f.weight"], p["ln_f.bias"],
                                    p["wte.weight"].astype(np.float64), 1e-5)
    with pytest.raises(ValueError, match="values"):
        numpyllm._layers.DecodeStep(blocks, cache.keys, cache.values[:, :1], p["ln_f.weight"], p["ln_f.bias"],
                                    p["wte.weight"], 1e-5)
    with pytest.raises(ValueError, match="blocks must hold"):
        numpyllm._layers.DecodeStep(blocks * 2, cache.keys, cache.values, p["ln_f.weight"], p["ln_f.bias"],
                                    p["wte.weight"], 1e-5)
