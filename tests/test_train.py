"""The training loop: it learns, resumes bit for bit, stops cleanly, and its checkpoints survive crashes."""

import math
import os
import signal

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import numpyllm.schedule
from numpyllm import GPT, AdamW, BPETokenizer, GPTConfig
from numpyllm.attention import available_backends
from numpyllm.checkpoint import (
    OPTIMIZER_FILE,
    find_checkpoint,
    load_model_and_tokenizer,
    model_directory,
    read_trainer_state,
    save_checkpoint,
)
from numpyllm.gpt import param_shapes
from numpyllm.runlog import read_log
from numpyllm.schedule import lr_at
from numpyllm.train import PRESETS, make_config, train

from tiny_run import tiny_overrides, write_corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus") / "corpus.txt")


def _val_losses(run_dir):
    return {row["step"]: row["val_loss"] for row in read_log(run_dir / "log.csv") if row["val_loss"] is not None}


def _stop_after(monkeypatch, n_steps):
    """Make Ctrl-C arrive while step ``n_steps`` runs (the schedule is asked once per step)."""
    def lr_then_interrupt(step, **schedule):
        if step == n_steps - 1:
            signal.raise_signal(signal.SIGINT)
        return lr_at(step, **schedule)

    monkeypatch.setattr(numpyllm.schedule, "lr_at", lr_then_interrupt)


# --------------------------------------------------------------------------- schedule


@given(max_steps=st.integers(1, 500), warmup_fraction=st.floats(0, 1), min_ratio=st.floats(0, 1))
def test_schedule_warms_up_linearly_then_decays_to_min_lr(max_steps, warmup_fraction, min_ratio):
    warmup = int(warmup_fraction * max_steps)
    schedule = dict(max_lr=1e-3, min_lr=1e-3 * min_ratio, warmup_steps=warmup, max_steps=max_steps)
    lrs = np.array([lr_at(step, **schedule) for step in range(max_steps + 3)])
    np.testing.assert_allclose(lrs[:warmup], 1e-3 * np.arange(1, warmup + 1) / warmup)
    decay = lrs[warmup:max_steps]
    assert (np.diff(decay) <= 1e-18).all() and (decay <= 1e-3).all() and (decay >= schedule["min_lr"]).all()
    if warmup < max_steps:
        assert decay[0] == 1e-3  # the cosine starts at the peak
    assert (lrs[max_steps:] == schedule["min_lr"]).all()


def test_schedule_midpoint_and_bad_arguments():
    assert lr_at(60, max_lr=1.0, min_lr=0.0, warmup_steps=10, max_steps=110) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="warmup_steps must be <= max_steps"):
        lr_at(0, max_lr=1.0, min_lr=0.0, warmup_steps=11, max_steps=10)
    with pytest.raises(ValueError, match="min_lr <= max_lr"):
        lr_at(0, max_lr=1.0, min_lr=2.0, warmup_steps=0, max_steps=10)
    with pytest.raises(ValueError, match="step must be >= 0, got -1"):
        lr_at(-1, max_lr=1.0, min_lr=0.0, warmup_steps=0, max_steps=10)
    with pytest.raises(TypeError, match="max_steps must be an int >= 0, got float 10.0"):
        lr_at(0, max_lr=1.0, min_lr=0.0, warmup_steps=0, max_steps=10.0)


# --------------------------------------------------------------------------- training


def test_short_run_lowers_the_validation_loss_and_logs_every_step(tmp_path, corpus):
    status = train(tmp_path, overrides=tiny_overrides(corpus, max_steps=60, eval_interval=30))
    assert status == 0
    rows = read_log(tmp_path / "log.csv")
    assert [row["step"] for row in rows] == list(range(61))
    val = _val_losses(tmp_path)
    assert sorted(val) == [0, 30, 60]
    assert val[0] > math.log(300) - 0.5  # an untrained model is near uniform over the vocabulary
    assert val[60] < val[0] - 1.5, val
    state = read_trainer_state(find_checkpoint(tmp_path))
    assert state["step"] == 60 and state["train_config"]["max_steps"] == 60


def test_loss_plot_is_written_when_matplotlib_is_installed(tmp_path, corpus):
    pytest.importorskip("matplotlib", reason="the loss plot needs matplotlib")
    assert train(tmp_path, overrides=tiny_overrides(corpus, max_steps=3)) == 0
    assert (tmp_path / "loss.png").read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize("backend", available_backends())
def test_ctrl_c_then_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path, corpus, monkeypatch, backend):
    settings = tiny_overrides(corpus, attention_backend=backend, checkpoint_interval=7)
    assert train(tmp_path / "straight", overrides=settings) == 0

    with monkeypatch.context() as patch:
        _stop_after(patch, 10)
        assert train(tmp_path / "resumed", overrides=settings) == 130  # Ctrl-C saves and exits
    assert read_trainer_state(find_checkpoint(tmp_path / "resumed"))["step"] == 10
    (tmp_path / "resumed" / "tokens.npy").unlink()  # a resume encodes the same corpus again
    assert train(tmp_path / "resumed", resume=True) == 0

    straight = GPT.from_pretrained(tmp_path / "straight" / "checkpoint")
    resumed = GPT.from_pretrained(tmp_path / "resumed" / "checkpoint")
    np.testing.assert_array_equal(resumed.flat_params, straight.flat_params)
    for name in ("exp_avg", "exp_avg_sq"):
        optimizers = []
        for run in ("straight", "resumed"):
            optimizer = AdamW(GPT(straight.config).params)
            optimizer.load(tmp_path / run / "checkpoint" / OPTIMIZER_FILE)
            optimizers.append(optimizer.state_dict())
        for tensor in optimizers[0][name]:
            np.testing.assert_array_equal(optimizers[1][name][tensor], optimizers[0][name][tensor])
    train_losses = [[row["train_loss"] for row in read_log(tmp_path / run / "log.csv")] for run in ("straight", "resumed")]
    assert train_losses[0] == train_losses[1]  # the log was cut back to the checkpoint and continued


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, corpus, monkeypatch, capsys):
    original = GPT.loss_and_grads
    calls = []

    def loss_and_grads(self, idx, targets):
        calls.append(None)
        loss, grads = original(self, idx, targets)
        return (math.nan if len(calls) == 8 else loss), grads

    monkeypatch.setattr(GPT, "loss_and_grads", loss_and_grads)
    assert train(tmp_path, overrides=tiny_overrides(corpus, checkpoint_interval=5)) == 1
    assert "loss nan" in capsys.readouterr().err
    checkpoint = find_checkpoint(tmp_path)
    assert read_trainer_state(checkpoint)["step"] == 5
    GPT.from_pretrained(checkpoint)  # still loadable


def test_init_fine_tunes_from_a_trained_checkpoint(tmp_path, corpus):
    settings = tiny_overrides(corpus, max_steps=20)
    assert train(tmp_path / "base", overrides=settings) == 0
    shape = ("vocab_size", "n_layer", "n_head", "n_embd")
    fine_tune = {name: value for name, value in settings.items() if name not in shape}
    fine_tune["init"] = str(tmp_path / "base")
    assert train(tmp_path / "tuned", overrides=fine_tune) == 0
    # Same data and seed: the same validation windows, so step 0 of the fine-tune scores the base model.
    assert _val_losses(tmp_path / "tuned")[0] == _val_losses(tmp_path / "base")[20]
    with pytest.raises(ValueError, match="--n-layer cannot be combined with --init"):
        train(tmp_path / "other", overrides={**fine_tune, "n_layer": 2})


@pytest.mark.parametrize("preset", list(PRESETS))
def test_presets_pass_the_config_checks(preset):
    assert make_config(preset) == PRESETS[preset]


def test_gpt2_preset_is_the_124m_shape():
    config = PRESETS["gpt2"]
    shape = GPTConfig(vocab_size=config.vocab_size, block_size=config.block_size, n_layer=config.n_layer,
                      n_head=config.n_head, n_embd=config.n_embd)
    assert sum(math.prod(size) for _, size in param_shapes(shape)) == 124_439_808  # GPT-2 small, tied head


def test_bad_settings_and_run_directories_are_named(tmp_path, corpus):
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        make_config("huge")
    with pytest.raises(ValueError, match=r"--lr must be in \(0, inf\), got -1.0"):
        make_config(lr=-1.0)
    with pytest.raises(ValueError, match=r"--min-lr must be in \[0, 0.003\] or None, got 0.01"):
        make_config(lr=3e-3, min_lr=0.01)
    with pytest.raises(ValueError, match=r"--grad-clip must be in \[0, inf\) \(0: no clipping\), got -1.0"):
        make_config(grad_clip=-1.0)
    with pytest.raises(TypeError, match="--beta2 must be a real number in .*, got str '0.9'"):
        make_config(beta2="0.9")
    with pytest.raises(ValueError, match="--eval-steps must be >= 1, got 0"):
        make_config(eval_steps=0)
    with pytest.raises(TypeError, match="--max-steps must be an int >= 1, got float 5.0"):
        make_config(max_steps=5.0)
    assert make_config(max_steps=5).warmup_steps == 5
    with pytest.raises(ValueError, match="--warmup-steps \\(6\\) must be <= --max-steps \\(5\\)"):
        make_config(max_steps=5, warmup_steps=6)
    with pytest.raises(ValueError, match="--n-embd \\(15\\) must be a multiple of --n-head \\(4\\)"):
        make_config(n_embd=15)
    with pytest.raises(FileNotFoundError, match="no training checkpoint"):
        train(tmp_path / "fresh", resume=True)
    assert train(tmp_path / "run", overrides=tiny_overrides(corpus, max_steps=2)) == 0
    with pytest.raises(ValueError, match="already holds a training checkpoint"):
        train(tmp_path / "run", overrides=tiny_overrides(corpus, max_steps=2))
    with pytest.raises(ValueError, match="--lr cannot change"):
        train(tmp_path / "run", overrides={"lr": 0.5, "max_steps": 4}, resume=True)
    with pytest.raises(ValueError, match="at step 2 and --max-steps is 2"):
        train(tmp_path / "run", resume=True)


# --------------------------------------------------------------------------- checkpoint atomicity


@pytest.fixture
def parts():
    """A model, tokenizer and optimizer small enough to save in milliseconds."""
    tokenizer = BPETokenizer.train(["x = 1\n" * 20], vocab_size=260)
    model = GPT(GPTConfig(vocab_size=260, block_size=8, n_layer=1, n_head=1, n_embd=4), seed=0)
    return model, tokenizer, AdamW(model.params)


def assert_saved(run_dir, step, weights):
    """The checkpoint ``find_checkpoint`` picks in ``run_dir`` holds this trainer step and these weights."""
    checkpoint = find_checkpoint(run_dir)
    assert read_trainer_state(checkpoint)["step"] == step
    np.testing.assert_array_equal(GPT.from_pretrained(checkpoint).flat_params, weights)


def save_then_change(run_dir, parts):
    """Save ``parts`` as step 1, then change the model's weights; returns the saved weights."""
    model, tokenizer, optimizer = parts
    save_checkpoint(run_dir, model, tokenizer, optimizer, {"step": 1})
    saved = model.flat_params.copy()
    model.flat_params += 1.0
    return saved


def test_a_crash_while_writing_leaves_the_previous_checkpoint(tmp_path, parts, monkeypatch):
    model, tokenizer, optimizer = parts
    before = save_then_change(tmp_path, parts)

    def crash(path):
        raise OSError("disk full")

    monkeypatch.setattr(optimizer, "save", crash)  # the weights are written, the optimizer state fails
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path, model, tokenizer, optimizer, {"step": 2})
    assert_saved(tmp_path, 1, before)
    assert sorted(os.listdir(tmp_path)) == ["checkpoint"]  # the half-written copy is gone


def test_a_crash_between_the_renames_leaves_a_loadable_checkpoint(tmp_path, parts, monkeypatch):
    model, tokenizer, optimizer = parts
    before = save_then_change(tmp_path, parts)
    real_rename = os.rename

    def rename_then_die(source, target):
        if source.endswith(".tmp"):
            raise KeyboardInterrupt  # killed after checkpoint -> checkpoint.old, before .tmp -> checkpoint
        real_rename(source, target)

    with monkeypatch.context() as patch:
        patch.setattr(os, "rename", rename_then_die)
        with pytest.raises(KeyboardInterrupt):
            save_checkpoint(tmp_path, model, tokenizer, optimizer, {"step": 2})
    assert not (tmp_path / "checkpoint").exists()
    assert_saved(tmp_path, 1, before)
    assert model_directory(tmp_path) == str(tmp_path / "checkpoint.old")

    save_checkpoint(tmp_path, model, tokenizer, optimizer, {"step": 3})  # the next save recovers
    assert sorted(os.listdir(tmp_path)) == ["checkpoint"]
    assert_saved(tmp_path, 3, model.flat_params)


def test_a_killed_save_leaves_debris_that_is_ignored_then_cleared(tmp_path, parts):
    model, tokenizer, optimizer = parts
    save_checkpoint(tmp_path, model, tokenizer, optimizer, {"step": 1})
    debris = tmp_path / "checkpoint.tmp"
    debris.mkdir()
    (debris / "model.safetensors").write_bytes(b"half a file")
    assert find_checkpoint(tmp_path) == str(tmp_path / "checkpoint")
    save_checkpoint(tmp_path, model, tokenizer, optimizer, {"step": 2})
    assert sorted(os.listdir(tmp_path)) == ["checkpoint"]
    assert_saved(tmp_path, 2, model.flat_params)


def test_load_model_and_tokenizer_checks_the_vocabularies_fit_the_direction(tmp_path, parts):
    model, tokenizer, optimizer = parts  # both of 260 ids
    save_checkpoint(tmp_path / "run", model, tokenizer, optimizer, {"step": 1})
    directory, loaded, loaded_tokenizer = load_model_and_tokenizer(tmp_path / "run", "encode")
    assert directory == str(tmp_path / "run" / "checkpoint")
    np.testing.assert_array_equal(loaded.flat_params, model.flat_params)
    assert loaded_tokenizer.encode("x = 1") == tokenizer.encode("x = 1")
    byte_vocab = {bytes([b]): b for b in range(256)}
    BPETokenizer(byte_vocab, []).save(tmp_path / "small")  # 256 ids
    BPETokenizer(byte_vocab, [], {f"<|{i}|>": 256 + i for i in range(5)}).save(tmp_path / "large")  # 261 ids
    # encoding needs every tokenizer id to be a model id; decoding every model id to be a tokenizer id
    load_model_and_tokenizer(tmp_path / "run", "encode", tmp_path / "small")
    with pytest.raises(ValueError, match="large has 261 ids but the model in .* only 260: text could encode"):
        load_model_and_tokenizer(tmp_path / "run", "encode", tmp_path / "large")
    load_model_and_tokenizer(tmp_path / "run", "decode", tmp_path / "large")
    with pytest.raises(ValueError, match="has 260 token ids but the tokenizer in .*small only 256: sampled ids"):
        load_model_and_tokenizer(tmp_path / "run", "decode", tmp_path / "small")
    with pytest.raises(ValueError, match="direction must be 'encode' or 'decode', got 'both'"):
        load_model_and_tokenizer(tmp_path / "run", "both")
