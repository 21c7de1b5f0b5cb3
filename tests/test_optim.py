"""AdamW and clip_grad_norm: torch as the oracle, exact resume, validation."""
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from numpyllm import GPT, AdamW, GPTConfig, clip_grad_norm

# A model-like mix: matrices (decayed) and vectors (not decayed), one of them a 3-D tensor.
SHAPES = {"wte.weight": (7, 4), "h.0.attn.c_attn.weight": (4, 12), "h.0.ln_1.bias": (4,), "w3": (2, 3, 2), "b": (12,)}


def random_tensors(rng, dtype, scale=1.0):
    return {name: (scale * rng.standard_normal(shape)).astype(dtype) for name, shape in SHAPES.items()}


def copy_tensors(tensors):
    return {name: array.copy() for name, array in tensors.items()}


hyperparameters = st.fixed_dictionaries(
    {
        "lr": st.floats(1e-4, 1e-1),
        "betas": st.tuples(st.floats(0.0, 0.99), st.floats(0.0, 0.999)),
        "eps": st.floats(1e-10, 1e-3),
        "weight_decay": st.floats(0.0, 0.5),
    }
)


@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-12), (np.float32, 1e-5)])
@given(hp=hyperparameters, seed=st.integers(0, 2**32 - 1))
def test_adamw_matches_torch(dtype, rtol, hp, seed):
    torch = pytest.importorskip("torch", reason="torch.optim.AdamW is the oracle for the update")
    rng = np.random.default_rng(seed)
    params = random_tensors(rng, dtype)
    torch_params = {name: torch.tensor(p.copy(), requires_grad=True) for name, p in params.items()}
    groups = [  # the same rule AdamW applies internally: decay tensors with ndim >= 2 only
        {"params": [p for p in torch_params.values() if p.ndim >= 2], "weight_decay": hp["weight_decay"]},
        {"params": [p for p in torch_params.values() if p.ndim < 2], "weight_decay": 0.0},
    ]
    torch_opt = torch.optim.AdamW(groups, lr=hp["lr"], betas=hp["betas"], eps=hp["eps"], foreach=False)
    opt = AdamW(params, **hp)
    for step, lr in enumerate([None, None, hp["lr"] / 3, None, 0.0]):  # a schedule overrides lr on some steps
        grads = random_tensors(rng, dtype, scale=10.0 ** (step - 2))
        for name, p in torch_params.items():
            p.grad = torch.tensor(grads[name])
        for group in torch_opt.param_groups:
            group["lr"] = hp["lr"] if lr is None else lr
        torch_opt.step()
        opt.step(grads, lr=lr)
    for name, p in params.items():
        expected = torch_params[name].detach().numpy()
        assert p.dtype == dtype
        np.testing.assert_allclose(p, expected, rtol=rtol, atol=rtol * np.abs(expected).max(), err_msg=name)


def test_first_step_moves_each_element_by_lr_against_its_gradient_sign():
    # At t = 1 the bias-corrected m / √v is g / |g|, so without decay each element moves by lr·sign(g).
    rng = np.random.default_rng(0)
    params = random_tensors(rng, np.float64)
    before = copy_tensors(params)
    grads = random_tensors(rng, np.float64)
    AdamW(params, lr=0.01, eps=1e-12, weight_decay=0.0).step(grads)
    for name in params:
        np.testing.assert_allclose(before[name] - params[name], 0.01 * np.sign(grads[name]), rtol=1e-9)


def test_weight_decay_applies_to_matrices_only():
    # With zero gradients the moments stay zero, so the only change is the decay p ← p (1 - lr wd).
    rng = np.random.default_rng(1)
    params = random_tensors(rng, np.float64)
    before = copy_tensors(params)
    AdamW(params, lr=0.1, weight_decay=0.5).step({name: np.zeros(shape) for name, shape in SHAPES.items()})
    for name, p in params.items():
        expected = before[name] * (1 - 0.1 * 0.5) if p.ndim >= 2 else before[name]
        np.testing.assert_array_equal(p, expected, err_msg=name)


def run_steps(opt, grads_sequence):
    for grads in grads_sequence:
        opt.step(copy_tensors(grads))


@pytest.mark.parametrize("via", ["state_dict", "file"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_resume_continues_bit_identically(via, dtype, tmp_path):
    rng = np.random.default_rng(2)
    initial = random_tensors(rng, dtype)
    grads_sequence = [random_tensors(rng, dtype) for _ in range(6)]
    hp = dict(lr=3e-3, betas=(0.8, 0.9), eps=1e-7, weight_decay=0.2)

    uninterrupted = copy_tensors(initial)
    run_steps(AdamW(uninterrupted, **hp), grads_sequence)

    resumed = copy_tensors(initial)
    first = AdamW(resumed, **hp)
    run_steps(first, grads_sequence[:3])
    # A fresh optimizer with default hyperparameters: everything must come from the saved state.
    second = AdamW(resumed)
    if via == "state_dict":
        state = first.state_dict()
        second.load_state_dict(state)
        for moments in (state["exp_avg"], state["exp_avg_sq"]):
            for array in moments.values():
                array[...] = np.nan  # the optimizer holds copies, not the caller's arrays
    else:
        path = tmp_path / "optimizer.npz"
        first.save(path)
        second.load(path)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["optimizer.npz"]  # no temp file left behind
    assert (second.step_count, second.lr, second.betas, second.eps, second.weight_decay) == (
        3, hp["lr"], hp["betas"], hp["eps"], hp["weight_decay"])
    run_steps(second, grads_sequence[3:])
    for name in initial:
        np.testing.assert_array_equal(resumed[name], uninterrupted[name], err_msg=name)


def test_load_state_dict_rejects_other_parameters():
    rng = np.random.default_rng(3)
    state = AdamW(random_tensors(rng, np.float64)).state_dict()
    other = random_tensors(rng, np.float64)
    other["extra"] = other.pop("b")
    with pytest.raises(ValueError, match=r"state\['exp_avg'\].*missing \['extra'\].*unexpected \['b'\]"):
        AdamW(other).load_state_dict(state)
    state_missing_step = {key: value for key, value in state.items() if key != "step"}
    with pytest.raises(ValueError, match=r"missing the entries \['step'\]"):
        AdamW(random_tensors(rng, np.float64)).load_state_dict(state_missing_step)
    params = random_tensors(rng, np.float64)
    with pytest.raises(ValueError, match=r"state\['step'\] must be >= 0, got -1"):
        AdamW(params).load_state_dict({**AdamW(params).state_dict(), "step": -1})
    with pytest.raises(TypeError, match=r"state\['step'\] must be an int >= 0, got float 2.0"):
        AdamW(params).load_state_dict({**AdamW(params).state_dict(), "step": 2.0})


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(lr=-1e-3), ValueError, r"lr must be in \[0.0, inf\), got -0.001"),
        (dict(betas=(1.0, 0.9)), ValueError, r"betas\[0\] must be in \[0.0, 1.0\), got 1.0"),
        (dict(betas=(0.9, -0.1)), ValueError, r"betas\[1\] must be in \[0.0, 1.0\)"),
        (dict(betas=0.9), TypeError, r"betas must be a pair"),
        (dict(eps=0.0), ValueError, r"eps must be in \(0.0, inf\), got 0.0"),
        (dict(weight_decay=-0.1), ValueError, r"weight_decay must be in \[0.0, inf\)"),
        (dict(lr="fast"), TypeError, r"lr must be a real number in \[0.0, inf\), got str 'fast'"),
        (dict(eps=True), TypeError, r"eps must be a real number in \(0.0, inf\), got bool"),
    ],
)
def test_constructor_rejects_bad_hyperparameters(kwargs, error, message):
    with pytest.raises(error, match=message):
        AdamW(random_tensors(np.random.default_rng(4), np.float32), **kwargs)


def test_constructor_rejects_bad_params():
    with pytest.raises(TypeError, match=r"params must be a dict"):
        AdamW([np.zeros(3)])
    with pytest.raises(ValueError, match=r"params must hold at least one tensor"):
        AdamW({})
    with pytest.raises(TypeError, match=r"params\['a'\] must have dtype float32 or float64, got int64"):
        AdamW({"a": np.zeros(3, dtype=np.int64)})


def test_step_rejects_mismatched_grads():
    rng = np.random.default_rng(5)
    params = random_tensors(rng, np.float32)
    opt = AdamW(params)
    grads = random_tensors(rng, np.float32)
    del grads["b"]
    with pytest.raises(ValueError, match=r"grads must have the same names as params; missing \['b'\]"):
        opt.step(grads)
    grads = random_tensors(rng, np.float32)
    grads["b"] = np.zeros(11, np.float32)
    with pytest.raises(ValueError, match=r"grads\['b'\] must have shape \(12,\) like params, got \(11,\)"):
        opt.step(grads)
    grads["b"] = np.zeros(12, np.float64)
    with pytest.raises(TypeError, match=r"grads\['b'\] must have dtype float32 like params, got float64"):
        opt.step(grads)
    with pytest.raises(ValueError, match=r"lr must be in \[0.0, inf\)"):
        opt.step(random_tensors(rng, np.float32), lr=-1.0)
    assert opt.step_count == 0  # rejected steps change nothing


def test_training_a_tiny_gpt_updates_its_flat_buffer_and_lowers_the_loss():
    model = GPT(GPTConfig(vocab_size=13, block_size=8, n_layer=1, n_head=2, n_embd=8), seed=0)
    flat_before = model.flat_params.copy()
    opt = AdamW(model.params, lr=1e-2, weight_decay=0.1)
    rng = np.random.default_rng(6)
    idx, targets = rng.integers(0, 13, size=(2, 8)), rng.integers(0, 13, size=(2, 8))
    first_loss, grads = model.loss_and_grads(idx, targets)
    for _ in range(30):  # one fixed batch: the loss must fall as the model memorises it
        clip_grad_norm(grads, 1.0)
        opt.step(grads)
        loss, grads = model.loss_and_grads(idx, targets)
    assert np.all(model.flat_params != flat_before)  # every parameter moved, through the views
    assert loss < 0.8 * first_loss


# --------------------------------------------------------------------------- clip_grad_norm


@given(max_norm=st.floats(1e-3, 1e3), scale=st.floats(1e-3, 1e3), seed=st.integers(0, 2**32 - 1))
def test_clip_grad_norm_matches_torch(max_norm, scale, seed):
    torch = pytest.importorskip("torch", reason="torch.nn.utils.clip_grad_norm_ is the oracle")
    grads = random_tensors(np.random.default_rng(seed), np.float64, scale=scale)
    torch_params = [torch.zeros(g.shape, dtype=torch.float64, requires_grad=True) for g in grads.values()]
    for p, g in zip(torch_params, grads.values()):
        p.grad = torch.tensor(g.copy())
    expected_norm = float(torch.nn.utils.clip_grad_norm_(torch_params, max_norm))
    total_norm = clip_grad_norm(grads, max_norm)
    assert isinstance(total_norm, float)
    assert total_norm == pytest.approx(expected_norm, rel=1e-12)
    for g, p in zip(grads.values(), torch_params):
        np.testing.assert_allclose(g, p.grad.numpy(), rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_clip_grad_norm_is_global_not_per_tensor(dtype):
    grads = {"big": np.full((2, 2), 3.0, dtype), "small": np.full(4, 4.0, dtype)}  # global norm √(36 + 64) = 10
    total_norm = clip_grad_norm(grads, 5.0)
    assert total_norm == pytest.approx(10.0, rel=1e-7)
    scale = 5.0 / (10.0 + 1e-6)
    np.testing.assert_allclose(grads["big"], 3.0 * scale, rtol=1e-6)  # both scaled by one factor
    np.testing.assert_allclose(grads["small"], 4.0 * scale, rtol=1e-6)
    assert clip_grad_norm(grads, 100.0) == pytest.approx(5.0, rel=1e-6)  # below max_norm: untouched
    np.testing.assert_allclose(grads["big"], 3.0 * scale, rtol=1e-6)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_clip_grad_norm_leaves_non_finite_gradients_untouched(bad):
    grads = {"a": np.array([1.0, bad]), "b": np.array([100.0, 0.0])}
    total_norm = clip_grad_norm(grads, 1.0)
    assert not math.isfinite(total_norm)
    np.testing.assert_array_equal(grads["a"], [1.0, bad])
    np.testing.assert_array_equal(grads["b"], [100.0, 0.0])


@pytest.mark.parametrize("max_norm, error", [(0.0, ValueError), (-1.0, ValueError), (np.nan, ValueError),
                                             ("1", TypeError), (True, TypeError)])
def test_clip_grad_norm_rejects_bad_max_norm(max_norm, error):
    with pytest.raises(error, match="max_norm must"):
        clip_grad_norm({"a": np.ones(3)}, max_norm)
