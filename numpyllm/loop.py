"""The one training loop every objective shares: GPT next-token, BERT masked-LM, classification.

``run_training(task, out, preset, overrides)`` sets up (or with ``resume`` continues) a
run directory and trains: AdamW, linear warmup then cosine decay, global-norm
clipping, a tqdm bar, log.csv and loss.png, atomic checkpoints every
``checkpoint_interval`` steps, bit-exact resume, Ctrl-C saving and a stop on a
non-finite loss. What differs between objectives comes from two small objects:

    task       (one per command)  command, config_class, presets, and
               check_new(config, overrides)          refuse bad combinations before any output
               inputs(config)                        read / check the input files, before any output
               new_model(out, config, inputs, progress) -> (config, model, tokenizer)
               load_model(checkpoint, config)        -> (model, tokenizer) of a saved run
               objective(out, config, model, tokenizer, inputs, progress) -> an objective
    objective  (the data and the loss)
               max_steps, eval_interval              how long, how often to validate
               val_columns                           the log.csv columns ``validate`` fills
               best                                  None, or (column, "max" | "min"): keep OUT/best/
               state                                 JSON-able batch-order state (get and set)
               sample() -> batch;  loss_and_grads(model, batch) -> (loss, grads);  tokens(batch)
               scored(batch) -> int                  how many targets the batch's loss averages over
                                                     (needed only under MPI)
               validate(model) -> (metrics dict, one-line summary);  describe() -> str

A checkpoint holds the model (its save_pretrained: a classifier's labels are in its
config.json), the tokenizer, the optimizer and the trainer state (the step, the
objective's ``state``, the config).

``LoopConfig`` holds the settings every objective has (optimisation, bookkeeping);
each command's config class adds its own. Each field is a --flag (``numpyllm.cli.options``).

Under ``mpiexec -n K`` the same loop is data-parallel through the hooks of
``numpyllm.distributed`` (``world.shard``, ``world.mean``, ``world.is_root``, ...): rank
0 sets the run up and the others read it from OUT; each rank takes its slice of the
one-process batch and every rank applies the same update; rank 0 validates, prints and
writes.
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

from . import distributed
from ._checks import check_int, check_real
from .checkpoint import BEST_DIR, CHECKPOINT_DIR, TRAINER_STATE_FILE
from .memory import retain_freed_memory

__all__ = ["option", "LoopConfig", "flag", "configure", "run_training"]

_SHARED_DIR = "shared.tmp"  # under MPI, rank 0's new model and tokenizer while the others load them


def option(default, help, minimum=None, **argparse_kwargs):
    """A config field: its default, its --help text, for an int its smallest value, and argparse extras."""
    return dataclasses.field(default=default, metadata=dict(help=help, minimum=minimum, argparse=argparse_kwargs))


def flag(name):
    """The command-line flag of a config field: max_steps -> --max-steps."""
    return "--" + name.replace("_", "-")


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    """The settings of the loop itself. Subclasses add data, model and step-budget fields and
    the class attributes RESUMABLE (options a --resume may change) and SHAPE_FIELDS (the
    model shape, which --init brings)."""

    batch_size: int = option(16, "examples per step", minimum=1)
    lr: float = option(3e-3, "peak learning rate")
    min_lr: float = option(None, "final learning rate of the cosine decay (default: --lr / 10)")
    warmup_steps: int = option(20, "steps of linear warmup", minimum=0)
    weight_decay: float = option(0.1, "AdamW decoupled weight decay (2-D weights only)")
    beta1: float = option(0.9, "AdamW first-moment decay")
    beta2: float = option(0.95, "AdamW second-moment decay")
    grad_clip: float = option(1.0, "clip the global gradient norm to this (0: no clipping)")
    checkpoint_interval: int = option(100, "save a checkpoint every N steps (and at the end)", minimum=1)
    log_interval: int = option(10, "print a line every N steps when there is no progress bar", minimum=1)
    seed: int = option(0, "seeds the initial weights and the training batches", minimum=0)

    RESUMABLE = ("checkpoint_interval", "log_interval")
    SHAPE_FIELDS = ()

    def check(self):
        """Raise TypeError / ValueError naming the flag of the first setting of a wrong type or out of range."""
        counts = [field for field in dataclasses.fields(self) if field.metadata["minimum"] is not None]
        for field in sorted(counts, key=lambda field: -field.metadata["minimum"]):  # counts, then offsets
            check_int(getattr(self, field.name), flag(field.name), field.metadata["minimum"])
        check_real(self.lr, "--lr", 0, low_inclusive=False)
        check_real(self.min_lr, "--min-lr", 0, self.lr, high_inclusive=True, optional=True)
        check_real(self.weight_decay, "--weight-decay", 0)
        check_real(self.beta1, "--beta1", 0, 1)
        check_real(self.beta2, "--beta2", 0, 1)
        check_real(self.grad_clip, "--grad-clip", 0, hint="0: no clipping")


def configure(presets, preset, overrides):
    """The preset's config with ``overrides`` (field=value) applied, checked.

    The preset's warmup is cut to max_steps (when the config has one) unless
    warmup_steps is overridden too, so a short run given by --max-steps alone works.
    """
    if preset not in presets:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(presets)}")
    config = dataclasses.replace(presets[preset], **overrides)
    if "warmup_steps" not in overrides and hasattr(config, "max_steps"):
        config = dataclasses.replace(config, warmup_steps=min(config.warmup_steps, config.max_steps))
    config.check()
    return config


# --------------------------------------------------------------------------- setting up a run


@dataclasses.dataclass
class _Run:
    """What the loop trains and what a checkpoint saves."""

    out: str
    config: LoopConfig
    model: object
    tokenizer: object
    optimizer: object
    step: int = 0
    elapsed_seconds: float = 0.0
    sampler_state: dict = None
    best_value: float = None

    def save(self, objective, name=CHECKPOINT_DIR):
        from .checkpoint import save_checkpoint

        trainer_state = {
            "step": self.step,
            "elapsed_seconds": self.elapsed_seconds,
            "sampler_state": objective.state,
            "best_value": self.best_value,
            "train_config": dataclasses.asdict(self.config),
        }
        return save_checkpoint(self.out, self.model, self.tokenizer, self.optimizer, trainer_state, name=name)


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


def _new_run(task, out, preset, overrides, progress, world):
    from .checkpoint import find_checkpoint

    config = configure(task.presets, preset, overrides)
    world.check_divisible(config.batch_size, flag("batch_size"))
    shape = [flag(name) for name in config.SHAPE_FIELDS if name in overrides]
    if getattr(config, "init", None) and shape:
        raise ValueError(f"{', '.join(shape)} cannot be combined with --init: the model's shape comes "
                         "from the checkpoint it starts from")
    task.check_new(config, overrides)
    existing = find_checkpoint(out)
    if existing is not None:
        raise ValueError(f"--out {out!r} already holds a training checkpoint ({existing}); "
                         "pass --resume to continue it, or choose another --out")
    inputs = task.inputs(config)  # a missing or malformed file fails before any output
    _print_config(task.command, config, out)
    if world.is_root:
        config, model, tokenizer = task.new_model(out, config, inputs, progress)
    config = world.share(config if world.is_root else None)
    if world.size > 1:
        model, tokenizer = _share_model(task, out, config, model if world.is_root else None,
                                        tokenizer if world.is_root else None, world)
    return _Run(out, config, model, tokenizer, _optimizer(model, config)), inputs


def _share_model(task, out, config, model, tokenizer, world):
    """Rank 0's new ``model`` and ``tokenizer`` on every rank, through OUT/shared.tmp/: rank 0
    saves them there, the others wait, then load them (``task.load_model``); rank 0 removes it."""
    directory = os.path.join(out, _SHARED_DIR)
    if world.is_root:
        shutil.rmtree(directory, ignore_errors=True)  # left by a job that died here
        model.save_pretrained(directory)
        tokenizer.save(directory)
    world.barrier()
    if not world.is_root:
        model, tokenizer = task.load_model(directory, config)
    world.barrier()
    if world.is_root:
        shutil.rmtree(directory)
    return model, tokenizer

LOG_FILE = "log.csv"


def _resumed_run(task, out, overrides, world):
    """The run saved in OUT's checkpoint, with the few options a resume may change."""
    from .checkpoint import OPTIMIZER_FILE, find_checkpoint, read_trainer_state
    from .runlog import read_log

    checkpoint = find_checkpoint(out)
    if checkpoint is None:
        raise FileNotFoundError(f"--resume: --out {out!r} has no training checkpoint to continue "
                                f"(no {CHECKPOINT_DIR}/{TRAINER_STATE_FILE})")
    resumable = task.config_class.RESUMABLE
    fixed = sorted(set(overrides) - set(resumable))
    if fixed:
        raise ValueError(f"--resume continues the saved configuration; {', '.join(map(flag, fixed))} cannot "
                         f"change (only {', '.join(map(flag, resumable))} can)")
    state_path = os.path.join(checkpoint, TRAINER_STATE_FILE)
    state = read_trainer_state(checkpoint)
    try:
        saved = dict(state["train_config"])
        if saved.get("data") is not None and isinstance(saved["data"], list):
            saved["data"] = tuple(saved["data"])
        config = task.config_class(**{**saved, **overrides})
        step, elapsed, sampler_state = state["step"], state["elapsed_seconds"], state["sampler_state"]
        best_value = state.get("best_value")
        check_int(step, "step", 0)
        check_real(elapsed, "elapsed_seconds", 0, math.inf)
        if not isinstance(sampler_state, dict):
            raise TypeError(f"sampler_state must be an object, got {type(sampler_state).__name__}")
        config.check()
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{state_path} is not a trainer state this version can continue "
                         f"({type(error).__name__}: {error})") from None
    world.check_divisible(config.batch_size, flag("batch_size"))
    if step >= getattr(config, "max_steps", step + 1):
        raise ValueError(f"the checkpoint is at step {step} and --max-steps is {config.max_steps}; "
                         "pass a larger --max-steps to train further")
    log_path = os.path.join(out, LOG_FILE)
    if os.path.isfile(log_path):
        read_log(log_path)  # a damaged log fails here, before anything in OUT is written
    model, tokenizer = task.load_model(checkpoint, config)
    optimizer = _optimizer(model, config)
    optimizer.load(os.path.join(checkpoint, OPTIMIZER_FILE))
    if optimizer.step_count != step:
        raise ValueError(f"{os.path.join(checkpoint, OPTIMIZER_FILE)} has taken {optimizer.step_count} steps but "
                         f"{state_path} says {step}: the two files are from different checkpoints")
    inputs = task.inputs(config)
    _print_config(task.command, config, out)
    print(f"resuming {checkpoint} at step {step}")
    return _Run(out, config, model, tokenizer, optimizer, step, elapsed, sampler_state, best_value), inputs


def _print_config(command, config, out):
    """The settings, one per line (nanoGPT style), before any work starts."""
    print(f"numpyllm {command} -> {out}")
    describe = getattr(config, "describe_field", lambda name, value: value)
    for field in dataclasses.fields(config):
        print(f"  {field.name:<20} = {describe(field.name, getattr(config, field.name))}")


def _print_summary(run, objective, world):
    from .attention import available_backends

    model = run.model
    backend = getattr(model, "attention_backend", "auto")
    if backend == "auto":
        backend = "auto -> " + ("cython" if "cython" in available_backends() else "numpy")
    n_params = sum(p.size for p in model.params.values())
    dtype = next(iter(model.params.values())).dtype
    print(f"model: {type(model).__name__}, {n_params:,} parameters, {dtype}, attention {backend}; "
          f"{objective.describe()}")
    if world.size > 1:
        print(f"{world.describe()}: {run.config.batch_size // world.size} of the {run.config.batch_size} "
              "examples of every batch on each")


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


def _zeros(model):
    """A zero gradient of ``model``: views into one flat buffer laid out as its parameters."""
    from .params import flat_views

    return flat_views(np.zeros_like(model.flat_params), [(name, p.shape) for name, p in model.params.items()])


def _is_better(value, best_value, direction):
    if value is None or not math.isfinite(value):
        return False
    return best_value is None or (value > best_value if direction == "max" else value < best_value)


def run_training(task, out, preset="tiny", overrides=None, *, resume=False, progress=False):
    """Run (or with ``resume`` continue) ``task``'s training in ``out``; return the exit status.

    0: finished max_steps. 130: stopped by Ctrl-C after saving a checkpoint. 1: stopped
    by a non-finite loss or gradient, the last good checkpoint kept. Bad settings and
    files raise ValueError / TypeError / OSError (``python -m numpyllm`` prints them as one line).
    Under ``mpiexec -n K`` every rank calls this and rank 0 alone prints and writes; an
    exception on any rank ends the whole job instead (see ``numpyllm.distributed``).
    """
    retain_freed_memory()  # each step reuses the last one's pages (see numpyllm.memory)
    world = distributed.world()
    with world.training():
        return _run_training(world, task, os.fspath(out), preset, dict(overrides or {}), resume,
                             progress and world.is_root)


def _run_training(world, task, out, preset, overrides, resume, progress):
    from tqdm.auto import tqdm

    from . import schedule
    from .optim import clip_grad_norm
    from .runlog import LOOP_COLUMNS, RunLog, plot_losses, read_log

    _prepare_out_dir(out)
    if resume:
        run, inputs = _resumed_run(task, out, overrides, world)
    else:
        run, inputs = _new_run(task, out, preset, overrides, progress, world)
    world.broadcast_(run.model.flat_params)
    config = run.config
    if world.is_root:  # first: it may encode the corpus (a resume whose tokens.npy was deleted)
        objective = task.objective(out, config, run.model, run.tokenizer, inputs, progress)
    world.barrier()
    if not world.is_root:
        objective = task.objective(out, config, run.model, run.tokenizer, inputs, progress)
    if world.size > 1 and getattr(objective, "scored", None) is None:
        raise ValueError(f"numpyllm {task.command} cannot run under MPI yet: its objective does not "
                         "count the targets its loss averages over (scored)")
    if run.sampler_state is not None:
        try:
            objective.state = run.sampler_state
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{os.path.join(out, CHECKPOINT_DIR, TRAINER_STATE_FILE)}: its sampler_state "
                             f"does not fit this run ({type(error).__name__}: {error})") from None
    max_steps, eval_interval = objective.max_steps, objective.eval_interval
    if config.warmup_steps > max_steps:
        if resume or "warmup_steps" in overrides:
            raise ValueError(f"--warmup-steps ({config.warmup_steps}) must be <= the run's {max_steps} steps")
        config = run.config = dataclasses.replace(config, warmup_steps=max_steps)  # the preset's, cut to a short run
    if resume and run.step >= max_steps:
        raise ValueError(f"the checkpoint is at step {run.step} and the run has {max_steps} steps; "
                         "pass a larger --epochs to train further")
    lr_schedule = dict(max_lr=config.lr, min_lr=config.lr / 10 if config.min_lr is None else config.min_lr,
                       warmup_steps=config.warmup_steps, max_steps=max_steps)
    _print_summary(run, objective, world)

    columns = LOOP_COLUMNS[:2] + tuple(objective.val_columns) + LOOP_COLUMNS[2:]
    log_path = os.path.join(out, LOG_FILE)
    log = RunLog(log_path, columns, keep_until_step=run.step if resume else None) if world.is_root else None
    bar = tqdm(total=max_steps, initial=run.step, unit="step", dynamic_ncols=True, disable=not progress)
    saved_step = run.step if resume else None

    def validate():  # on rank 0; the others wait for its metrics
        metrics, line = world.share(objective.validate(run.model) if world.is_root else None)
        bar.write(f"step {run.step}: {line}")
        if objective.best is not None:
            column, direction = objective.best
            if _is_better(metrics[column], run.best_value, direction):
                run.best_value = metrics[column]
                save(BEST_DIR)
                bar.write(f"  best {column} so far: saved {os.path.join(out, BEST_DIR)}")
        return metrics

    def record(**row):
        if world.is_root:
            log.write(**row)

    def save(name=CHECKPOINT_DIR):
        world.check_same(run.model.flat_params, "the parameters")
        if world.is_root:
            run.save(objective, name=name)
        world.barrier()  # the others wait for the checkpoint

    status = 0
    loop_started = time.perf_counter() - run.elapsed_seconds
    try:
        with _StopOnInterrupt() as interrupt:
            if not resume:
                record(step=0, elapsed_seconds=0.0, **validate())
            while run.step < max_steps and not world.any(interrupt.requested):
                step_started = time.perf_counter()
                lr = schedule.lr_at(run.step, **lr_schedule)
                batch = objective.sample()
                if world.size == 1:
                    loss, grads = objective.loss_and_grads(run.model, batch)
                else:  # this rank's rows; then the global batch's mean loss and gradient on every rank
                    shard = world.shard(batch)
                    scored = objective.scored(shard)
                    # A rank with nothing to score (a short last batch) adds zero.
                    loss, grads = objective.loss_and_grads(run.model, shard) if scored else (0.0, _zeros(run.model))
                    loss = world.mean(loss, scored, grads)
                grad_norm = clip_grad_norm(grads, config.grad_clip or math.inf)
                if not (math.isfinite(loss) and math.isfinite(grad_norm)):
                    kept = (f"the last good checkpoint (step {saved_step}) is in {os.path.join(out, CHECKPOINT_DIR)}"
                            if saved_step is not None else "no checkpoint had been saved yet")
                    bar.write(f"numpyllm {task.command}: error: loss {loss}, gradient norm {grad_norm} at step "
                              f"{run.step + 1}; stopped without saving: {kept}. Try a lower --lr.", file=sys.stderr)
                    status = 1
                    break
                run.optimizer.step(grads, lr=lr)
                run.step += 1
                tokens_per_second = objective.tokens(batch) / (time.perf_counter() - step_started)
                run.elapsed_seconds = time.perf_counter() - loop_started
                row = dict(step=run.step, train_loss=loss, lr=lr, grad_norm=grad_norm,
                           tokens_per_second=tokens_per_second, elapsed_seconds=run.elapsed_seconds)
                if run.step % eval_interval == 0 or run.step == max_steps:
                    row.update(validate())
                record(**row)
                bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}", tok_s=f"{tokens_per_second:,.0f}", refresh=False)
                bar.update(1)
                if not progress and run.step % config.log_interval == 0:
                    print(f"step {run.step}/{max_steps} | loss {loss:.4f} | lr {lr:.2e} | "
                          f"grad norm {grad_norm:.3f} | {tokens_per_second:,.0f} tok/s", flush=True)
                if run.step % config.checkpoint_interval == 0 or run.step == max_steps:
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
            plot_path = os.path.join(out, "loss.png")
            plotted = plot_losses(log_path, plot_path)
    if status == 0 and world.is_root:
        summary = f"done: {run.step} steps in {run.elapsed_seconds:.0f} s"
        val_losses = [row["val_loss"] for row in read_log(log_path) if row["val_loss"] is not None]
        if len(val_losses) >= 2:
            summary += f"; val loss {val_losses[0]:.3f} -> {val_losses[-1]:.3f}"
        print(summary)
        if objective.best is not None and run.best_value is not None:
            print(f"best {objective.best[0]} {run.best_value:.4f}: {os.path.join(out, BEST_DIR)}")
        print(f"checkpoint: {os.path.join(out, CHECKPOINT_DIR)}; log: {log_path}"
              + (f"; plot: {plot_path}" if plotted else " (pip install matplotlib for a plot)"))
    return status
