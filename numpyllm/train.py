"""The training loop: a GPT on text, with checkpoints that resume exactly.

``train(out, preset, overrides)`` sets up or resumes a run directory and trains:
AdamW, linear warmup then cosine decay, global-norm clipping, a tqdm bar, log.csv and
loss.png, atomic checkpoints every ``checkpoint_interval`` steps, bit-exact resume,
Ctrl-C saving and a stop on a non-finite loss. ``TrainConfig`` holds every setting and
``PRESETS`` the named starting points. The command line (``numpyllm.cli.train``) turns
each TrainConfig field into a flag.

Under ``mpiexec -n K`` the same loop is data-parallel through the hooks of
``numpyllm.distributed`` (``world.shard``, ``world.mean``, ``world.is_root``, ...): each
rank takes its slice of the one-process batch and every rank applies the same update.
"""

import dataclasses
import math
import os
import shutil
import signal
import sys
import tempfile
import threading
import time

import numpy as np

from . import attention, distributed
from ._checks import check_int, check_real
from .checkpoint import CHECKPOINT_DIR

__all__ = ["TrainConfig", "PRESETS", "RESUMABLE", "make_config", "check_config", "flag", "train"]


def _option(default, help, **argparse_kwargs):
    return dataclasses.field(default=default, metadata=dict(help=help, **argparse_kwargs))


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Every setting of a run; the defaults are the tiny preset. Each field is a --flag."""

    # data and tokenizer
    data: tuple = _option(None, "text files to train on (default: this Python's standard library "
                                "source files, no download)", nargs="+", metavar="FILE")
    corpus_bytes: int = _option(3_000_000, "use the first N bytes of the default corpus (0: all of it)")
    tokenizer: str = _option(None, "directory with vocab.json + merges.txt to use instead of training "
                                   "a BPE on the corpus", metavar="DIR")
    vocab_size: int = _option(2048, "vocabulary size of the BPE trained on the corpus")
    init: str = _option(None, "fine-tune from this model: a numpyllm run or checkpoint directory, or "
                              "a Hugging Face GPT-2 directory (config.json + model.safetensors)", metavar="DIR")
    val_fraction: float = _option(0.1, "fraction of the tokens held out for validation")
    # model
    n_layer: int = _option(2, "transformer blocks")
    n_head: int = _option(4, "attention heads per block")
    n_embd: int = _option(128, "embedding width (a multiple of --n-head)")
    block_size: int = _option(128, "context length: tokens per training window")
    dtype: str = _option("float32", "parameter and compute dtype", choices=("float32", "float64"))
    attention_backend: str = _option("auto", "attention implementation (auto: the compiled kernel "
                                             "when built)", choices=attention.BACKENDS)
    # optimisation
    batch_size: int = _option(16, "windows per step")
    max_steps: int = _option(400, "optimizer steps in all")
    lr: float = _option(3e-3, "peak learning rate")
    min_lr: float = _option(None, "final learning rate of the cosine decay (default: --lr / 10)")
    warmup_steps: int = _option(20, "steps of linear warmup")
    weight_decay: float = _option(0.1, "AdamW decoupled weight decay (2-D weights only)")
    beta1: float = _option(0.9, "AdamW first-moment decay")
    beta2: float = _option(0.95, "AdamW second-moment decay")
    grad_clip: float = _option(1.0, "clip the global gradient norm to this (0: no clipping)")
    # bookkeeping
    eval_interval: int = _option(50, "validate every N steps (and at the end)")
    eval_steps: int = _option(8, "validation batches per evaluation (the same windows each time)")
    checkpoint_interval: int = _option(100, "save a checkpoint every N steps (and at the end)")
    log_interval: int = _option(10, "print a line every N steps when there is no progress bar")
    seed: int = _option(0, "seeds the initial weights and the training batches")


PRESETS = {
    "tiny": TrainConfig(),
    "small": TrainConfig(
        corpus_bytes=0, vocab_size=8192, n_layer=6, n_head=6, n_embd=384, block_size=256, batch_size=32,
        max_steps=5000, lr=1e-3, warmup_steps=100, eval_interval=250, eval_steps=20, checkpoint_interval=500,
    ),
    "gpt2": TrainConfig(  # the 124M shape; a BPE that big wants far more text than the stdlib: see --tokenizer
        corpus_bytes=0, vocab_size=50257, n_layer=12, n_head=12, n_embd=768, block_size=1024, batch_size=8,
        max_steps=20000, lr=6e-4, warmup_steps=700, eval_interval=500, eval_steps=20, checkpoint_interval=1000,
    ),
}

# Options a --resume may change: they alter neither the model nor the batches already drawn.
RESUMABLE = ("max_steps", "eval_interval", "eval_steps", "checkpoint_interval", "log_interval",
              "attention_backend")
_SHAPE_FIELDS = ("vocab_size", "n_layer", "n_head", "n_embd")  # come from the checkpoint with --init
_POSITIVE_INTS = ("vocab_size", "n_layer", "n_head", "n_embd", "block_size", "batch_size", "max_steps",
                  "eval_interval", "eval_steps", "checkpoint_interval", "log_interval")
_NON_NEGATIVE_INTS = ("corpus_bytes", "warmup_steps", "seed")
_TOKENS_FILE, _LOG_FILE, _PLOT_FILE = "tokens.npy", "log.csv", "loss.png"
_SHARED_TOKENIZER_DIR = "tokenizer.shared"  # under MPI, while the ranks start


def flag(name):
    """The command-line flag of a TrainConfig field: max_steps -> --max-steps."""
    return "--" + name.replace("_", "-")


def check_config(config):
    """Raise TypeError / ValueError naming the flag of the first setting of a wrong type or out of range."""
    for name in _POSITIVE_INTS + _NON_NEGATIVE_INTS:
        check_int(getattr(config, name), flag(name), 1 if name in _POSITIVE_INTS else 0)
    check_real(config.lr, "--lr", 0, low_inclusive=False)
    check_real(config.min_lr, "--min-lr", 0, config.lr, high_inclusive=True, optional=True)
    check_real(config.weight_decay, "--weight-decay", 0)
    check_real(config.beta1, "--beta1", 0, 1)
    check_real(config.beta2, "--beta2", 0, 1)
    check_real(config.grad_clip, "--grad-clip", 0, hint="0: no clipping")
    check_real(config.val_fraction, "--val-fraction", 0, 1, low_inclusive=False)
    if config.warmup_steps > config.max_steps:
        raise ValueError(f"--warmup-steps ({config.warmup_steps}) must be <= --max-steps ({config.max_steps})")
    if config.n_embd % config.n_head:
        raise ValueError(f"--n-embd ({config.n_embd}) must be a multiple of --n-head ({config.n_head})")


def make_config(preset="tiny", **overrides):
    """The preset's TrainConfig with ``overrides`` (field=value) applied, checked.

    The preset's warmup is cut to max_steps unless warmup_steps is overridden too.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    config = dataclasses.replace(PRESETS[preset], **overrides)
    if "warmup_steps" not in overrides:  # a short run given by --max-steps alone still works
        config = dataclasses.replace(config, warmup_steps=min(config.warmup_steps, config.max_steps))
    check_config(config)
    return config


# --------------------------------------------------------------------------- setting up a run


@dataclasses.dataclass
class _Run:
    """What the loop trains and what a checkpoint saves."""

    out: str
    config: TrainConfig
    model: object
    tokenizer: object
    optimizer: object
    step: int = 0
    elapsed_seconds: float = 0.0
    sampler_state: dict = None

    def save(self, sampler):
        from .checkpoint import save_checkpoint

        trainer_state = {
            "step": self.step,
            "elapsed_seconds": self.elapsed_seconds,
            "sampler_state": sampler.state,
            "train_config": dataclasses.asdict(self.config),
        }
        return save_checkpoint(self.out, self.model, self.tokenizer, self.optimizer, trainer_state)


def _prepare_out_dir(out):
    """Create ``out`` and prove it writable, with one clear error otherwise."""
    try:
        os.makedirs(out, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as error:
        raise OSError(f"--out {out!r} is not a writable directory: {error.strerror or error}") from None


def _optimizer(model, config):
    from .optim import AdamW

    return AdamW(model.params, lr=config.lr, betas=(config.beta1, config.beta2), weight_decay=config.weight_decay)


def _encode_corpus(out, config, files, tokenizer, progress):
    """Encode the run's text ``files`` into OUT/tokens.npy; return the file's path."""
    from tqdm.auto import tqdm

    from .corpus import read_texts
    from .data import document_ids, write_tokens

    # A seeded shuffle, so the held-out tail is a random sample of the files, not the last ones by name.
    files = [files[i] for i in np.random.default_rng(config.seed).permutation(len(files))]
    path = os.path.join(out, _TOKENS_FILE)
    started = time.perf_counter()
    texts = read_texts(tqdm(files, desc="encoding", unit=" files", disable=not progress, leave=False))
    count = write_tokens(path, document_ids(texts, tokenizer), tokenizer.vocab_size)
    if count == 0:
        raise ValueError(f"the corpus has no text: {len(files)} file(s), all empty"
                         + (f" ({', '.join(map(str, config.data))})" if config.data else ""))
    print(f"encoded {count:,} tokens from {len(files)} files into {path} "
          f"({time.perf_counter() - started:.1f} s)")
    return path


def _corpus_files(config):
    """The run's text files: --data, or the stdlib's source cut to --corpus-bytes (0: all)."""
    from .data import text_files

    return text_files(config.data, config.corpus_bytes or None)


def _corpus_description(config):
    if config.data:
        return f"{len(config.data)} file(s): " + ", ".join(config.data[:3]) + (" ..." if len(config.data) > 3 else "")
    size = f"the first {config.corpus_bytes:,} bytes" if config.corpus_bytes else "all"
    return f"the Python standard library's source files ({size})"


def _new_run(out, config, files, progress, world):
    """Fresh run on the text ``files``: tokenizer (given, from --init, or trained), model
    (new or --init), optimizer. Under MPI rank 0 alone makes the tokenizer and encodes the
    corpus; the others wait, then build the model's shape (train() broadcasts its weights)."""
    from .gpt import GPT
    from .tokenizer import BPETokenizer

    if world.is_root:
        config, model, tokenizer = _new_model(out, config, files, progress)
    config, model_config = world.share((config, model.config) if world.is_root else None)
    if not world.is_root:
        model = GPT(model_config, seed=config.seed, attention_backend=config.attention_backend)
    tokenizer = _share_tokenizer(out, tokenizer if world.is_root else None, BPETokenizer, world)
    return _Run(out, config, model, tokenizer, _optimizer(model, config))


def _share_tokenizer(out, tokenizer, tokenizer_class, world):
    """Rank 0's ``tokenizer`` on every rank, through OUT/tokenizer.shared/ (rank 0 saves it there,
    the others wait, then load it with ``tokenizer_class.from_pretrained``; rank 0 then removes it)."""
    if world.size == 1:
        return tokenizer
    directory = os.path.join(out, _SHARED_TOKENIZER_DIR)
    if world.is_root:
        tokenizer.save(directory)
    world.barrier()
    if not world.is_root:
        tokenizer = tokenizer_class.from_pretrained(directory)
    world.barrier()
    if world.is_root:
        shutil.rmtree(directory)
    return tokenizer


def _new_model(out, config, files, progress):
    """(config, model, tokenizer) of a fresh run, with OUT/tokens.npy written."""
    from .checkpoint import load_model_and_tokenizer
    from .corpus import read_texts
    from .gpt import GPT, GPTConfig
    from .tokenizer import BPETokenizer

    if config.init:
        _, model, tokenizer = load_model_and_tokenizer(config.init, "encode", config.tokenizer,
                                                       attention_backend=config.attention_backend, dtype=config.dtype)
        if config.block_size > model.config.block_size:
            raise ValueError(f"--block-size {config.block_size} exceeds the --init model's {model.config.block_size}")
        config = dataclasses.replace(config, **{name: getattr(model.config, name) for name in _SHAPE_FIELDS})
    else:
        if config.tokenizer:
            tokenizer = BPETokenizer.from_pretrained(config.tokenizer)
        else:
            started = time.perf_counter()
            tokenizer = BPETokenizer.train(read_texts(files), config.vocab_size, progress=progress)
            print(f"trained a BPE tokenizer of {tokenizer.vocab_size} tokens on {len(files)} files "
                  f"({time.perf_counter() - started:.1f} s)")
        config = dataclasses.replace(config, vocab_size=tokenizer.vocab_size)
        model_config = GPTConfig(vocab_size=tokenizer.vocab_size, block_size=config.block_size,
                                 n_layer=config.n_layer, n_head=config.n_head, n_embd=config.n_embd,
                                 dtype=config.dtype)
        model = GPT(model_config, seed=config.seed, attention_backend=config.attention_backend)
    _encode_corpus(out, config, files, tokenizer, progress)
    return config, model, tokenizer


def _resumed_run(out, overrides, progress, world):
    """The run saved in OUT's checkpoint, with the few options a resume may change."""
    from .checkpoint import OPTIMIZER_FILE, find_checkpoint, load_model_and_tokenizer, read_trainer_state

    checkpoint = find_checkpoint(out)
    if checkpoint is None:
        raise FileNotFoundError(f"--resume: --out {out!r} has no training checkpoint to continue")
    fixed = sorted(set(overrides) - set(RESUMABLE))
    if fixed:
        raise ValueError(f"--resume continues the saved configuration; {', '.join(map(flag, fixed))} cannot "
                         f"change (only {', '.join(map(flag, RESUMABLE))} can)")
    state = read_trainer_state(checkpoint)
    try:
        saved = dict(state["train_config"])
        saved["data"] = tuple(saved["data"]) if saved["data"] is not None else None
        config = TrainConfig(**{**saved, **overrides})
        step, elapsed, sampler_state = state["step"], state["elapsed_seconds"], state["sampler_state"]
    except (KeyError, TypeError) as error:
        raise ValueError(f"{checkpoint} has a trainer state this version cannot read ({error})") from None
    check_config(config)
    world.check_divisible(config.batch_size, flag("batch_size"))
    if step >= config.max_steps:
        raise ValueError(f"the checkpoint is at step {step} and --max-steps is {config.max_steps}; "
                         "pass a larger --max-steps to train further")
    _, model, tokenizer = load_model_and_tokenizer(checkpoint, "encode", attention_backend=config.attention_backend,
                                                   dtype=config.dtype)
    optimizer = _optimizer(model, config)
    optimizer.load(os.path.join(checkpoint, OPTIMIZER_FILE))
    if world.is_root and not os.path.isfile(os.path.join(out, _TOKENS_FILE)):  # deleted: encode them again
        _encode_corpus(out, config, _corpus_files(config), tokenizer, progress)
    world.barrier()
    print(f"resuming {checkpoint} at step {step}")
    return _Run(out, config, model, tokenizer, optimizer, step, elapsed, sampler_state)


def _print_config(config, out):
    """The settings, one per line (nanoGPT style), before any work starts."""
    print(f"numpyllm train -> {out}")
    for field in dataclasses.fields(TrainConfig):
        value = getattr(config, field.name)
        shown = _corpus_description(config) if field.name == "data" else value
        print(f"  {field.name:<20} = {shown}")


def _print_summary(run, train_tokens, val_tokens, world):
    from .attention import available_backends

    model = run.model
    backend = model.attention_backend
    if backend == "auto":
        backend = "auto -> " + ("cython" if "cython" in available_backends() else "numpy")
    print(f"model: {model.num_params:,} parameters ({model.config.n_layer} layers, {model.config.n_embd} wide, "
          f"vocab {model.config.vocab_size}), {model.config.dtype}, attention {backend}; "
          f"tokens: {len(train_tokens):,} train, {len(val_tokens):,} validation")
    if world.size > 1:
        print(f"{world.describe()}: {run.config.batch_size // world.size} of the {run.config.batch_size} "
              "windows of every batch on each")


# --------------------------------------------------------------------------- the loop


class _StopOnInterrupt:
    """While active, Ctrl-C (SIGINT) asks the loop to stop after the current step instead of
    raising mid-update, so the saved checkpoint is consistent. A second Ctrl-C raises as usual."""

    def __enter__(self):
        self.requested = False
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\nCtrl-C: stopping after this step to save a checkpoint (press again to quit without saving)",
              file=sys.stderr)

    def __exit__(self, *exc_info):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def train(out, preset="tiny", overrides=None, *, resume=False, progress=False):
    """Run (or with ``resume`` continue) a training run in ``out``; return the exit status.

    0: finished max_steps. 130: stopped by Ctrl-C after saving a checkpoint. 1: stopped
    by a non-finite loss or gradient, the last good checkpoint kept. Bad settings and
    files raise ValueError / TypeError / OSError (``python -m numpyllm`` prints them as one line).
    Under ``mpiexec -n K`` every rank calls this and rank 0 alone prints and writes; an
    exception on any rank ends the whole job instead (see ``numpyllm.distributed``).
    """
    world = distributed.world()
    with world.training():
        return _train(world, os.fspath(out), preset, dict(overrides or {}), resume, progress and world.is_root)


def _train(world, out, preset, overrides, resume, progress):
    from tqdm.auto import tqdm

    from .checkpoint import find_checkpoint
    from .data import BatchSampler, load_tokens, split_tokens
    from .evaluate import mean_loss, perplexity
    from .optim import clip_grad_norm
    from .params import flat_buffer
    from .runlog import RunLog, plot_losses, read_log
    from .schedule import lr_at

    _prepare_out_dir(out)
    if resume:
        run = _resumed_run(out, overrides, progress, world)
        _print_config(run.config, out)
    else:
        config = make_config(preset, **overrides)
        shape = [flag(name) for name in _SHAPE_FIELDS if name in overrides]
        if config.init and shape:
            raise ValueError(f"{', '.join(shape)} cannot be combined with --init: the model's shape comes "
                             "from the checkpoint it starts from")
        world.check_divisible(config.batch_size, flag("batch_size"))
        existing = find_checkpoint(out)
        if existing is not None:
            raise ValueError(f"--out {out!r} already holds a training checkpoint ({existing}); "
                             "pass --resume to continue it, or choose another --out")
        files = _corpus_files(config)  # a missing file fails before any output
        _print_config(config, out)
        run = _new_run(out, config, files, progress, world)
    world.broadcast_(run.model.flat_params)
    config = run.config
    train_tokens, val_tokens = split_tokens(load_tokens(os.path.join(out, _TOKENS_FILE)),
                                            config.val_fraction, config.block_size + 1)
    sampler = BatchSampler(train_tokens, config.batch_size, config.block_size, seed=config.seed)
    if run.sampler_state is not None:
        sampler.state = run.sampler_state
    # The same validation windows at every evaluation, from their own generator.
    val_sampler = BatchSampler(val_tokens, config.batch_size, config.block_size, seed=config.seed + 1)
    val_batches = [tuple(map(world.shard, val_sampler.sample())) for _ in range(config.eval_steps)]
    schedule = dict(max_lr=config.lr, min_lr=config.lr / 10 if config.min_lr is None else config.min_lr,
                    warmup_steps=config.warmup_steps, max_steps=config.max_steps)
    _print_summary(run, train_tokens, val_tokens, world)

    log_path = os.path.join(out, _LOG_FILE)
    log = RunLog(log_path, keep_until_step=run.step if resume else None) if world.is_root else None
    bar = tqdm(total=config.max_steps, initial=run.step, unit="step", dynamic_ncols=True, disable=not progress)
    saved_step = run.step if resume else None

    def validate():
        loss = world.mean(*mean_loss(run.model, val_batches))
        val_perplexity = perplexity(loss)
        bar.write(f"step {run.step}: val loss {loss:.4f}, perplexity {val_perplexity:.2f}")
        return {"val_loss": loss, "val_perplexity": val_perplexity}

    def record(**row):
        if world.is_root:
            log.write(**row)

    def save():
        world.check_same(run.model.flat_params, "the parameters")
        if world.is_root:
            run.save(sampler)
        world.barrier()  # the others wait for the checkpoint

    status = 0
    loop_started = time.perf_counter() - run.elapsed_seconds
    try:
        with _StopOnInterrupt() as interrupt:
            if not resume:
                record(step=0, elapsed_seconds=0.0, **validate())
            while run.step < config.max_steps and not world.any(interrupt.requested):
                step_started = time.perf_counter()
                lr = lr_at(run.step, **schedule)
                x, y = sampler.sample()
                x_rank, y_rank = world.shard(x), world.shard(y)  # this rank's rows of the batch
                loss, grads = run.model.loss_and_grads(x_rank, y_rank)
                loss = world.mean(loss, np.count_nonzero(y_rank >= 0), flat_buffer(grads))  # negatives: ignored
                grad_norm = clip_grad_norm(grads, config.grad_clip or math.inf)
                if not (math.isfinite(loss) and math.isfinite(grad_norm)):
                    kept = (f"the last good checkpoint (step {saved_step}) is in {os.path.join(out, CHECKPOINT_DIR)}"
                            if saved_step is not None else "no checkpoint had been saved yet")
                    bar.write(f"numpyllm train: error: loss {loss}, gradient norm {grad_norm} at step "
                              f"{run.step + 1}; stopped without saving: {kept}. Try a lower --lr.", file=sys.stderr)
                    status = 1
                    break
                run.optimizer.step(grads, lr=lr)
                run.step += 1
                tokens_per_second = x.size / (time.perf_counter() - step_started)
                run.elapsed_seconds = time.perf_counter() - loop_started
                row = dict(step=run.step, train_loss=loss, lr=lr, grad_norm=grad_norm,
                           tokens_per_second=tokens_per_second, elapsed_seconds=run.elapsed_seconds)
                if run.step % config.eval_interval == 0 or run.step == config.max_steps:
                    row.update(validate())
                record(**row)
                bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}", tok_s=f"{tokens_per_second:,.0f}", refresh=False)
                bar.update(1)
                if not progress and run.step % config.log_interval == 0:
                    print(f"step {run.step}/{config.max_steps} | loss {loss:.4f} | lr {lr:.2e} | "
                          f"grad norm {grad_norm:.3f} | {tokens_per_second:,.0f} tok/s", flush=True)
                if run.step % config.checkpoint_interval == 0 or run.step == config.max_steps:
                    save()
                    saved_step = run.step
            if world.any(interrupt.requested):
                if saved_step != run.step:
                    save()
                bar.write(f"stopped at step {run.step}; checkpoint saved in {os.path.join(out, CHECKPOINT_DIR)}; "
                          f"continue with --resume --out {out}")
                status = 130
    finally:
        bar.close()
        if world.is_root:
            log.close()
            plotted = plot_losses(log_path, os.path.join(out, _PLOT_FILE))
    if status == 0 and world.is_root:
        summary = f"done: {run.step} steps in {run.elapsed_seconds:.0f} s"
        val_losses = [row["val_loss"] for row in read_log(log_path) if row["val_loss"] is not None]
        if len(val_losses) >= 2:
            summary += f"; val loss {val_losses[0]:.3f} -> {val_losses[-1]:.3f}"
        print(summary)
        print(f"checkpoint: {os.path.join(out, CHECKPOINT_DIR)}; log: {log_path}"
              + (f"; plot: {os.path.join(out, _PLOT_FILE)}" if plotted else " (pip install matplotlib for a plot)"))
    return status
