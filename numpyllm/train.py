"""Training a GPT on text: the next-token objective on the shared loop (``numpyllm.loop``).

``train(out, preset, overrides)`` sets up or resumes a run directory and trains a GPT
on random windows of the encoded corpus; everything the loop does (AdamW, warmup +
cosine, clipping, the bar, log.csv and loss.png, atomic checkpoints, bit-exact resume,
Ctrl-C saving, the non-finite-loss stop) is ``numpyllm.loop``'s. ``TrainConfig`` holds
every setting and ``PRESETS`` the named starting points. The command line
(``numpyllm.cli.train``) turns each TrainConfig field into a flag.
"""

import dataclasses
import functools
import os
import time

from .loop import configure, flag, option, run_training
from .textrun import TOKENS_FILE, CorpusConfig, CorpusTask, encode_corpus

__all__ = ["TrainConfig", "PRESETS", "RESUMABLE", "make_config", "flag", "train", "TASK"]


@dataclasses.dataclass(frozen=True)
class TrainConfig(CorpusConfig):
    """Every setting of a GPT run; the defaults are the tiny preset. Each field is a --flag."""

    tokenizer: str = option(None, "directory with vocab.json + merges.txt to use instead of training "
                                  "a BPE on the corpus", metavar="DIR")
    vocab_size: int = option(2048, "vocabulary size of the BPE trained on the corpus", minimum=1)
    init: str = option(None, "fine-tune from this model: a numpyllm run or checkpoint directory, or "
                             "a Hugging Face GPT-2 directory (config.json + model.safetensors)", metavar="DIR")
    n_layer: int = option(2, "transformer blocks", minimum=1)
    n_head: int = option(4, "attention heads per block", minimum=1)
    n_embd: int = option(128, "embedding width (a multiple of --n-head)", minimum=1)

    SHAPE_FIELDS = ("vocab_size", "n_layer", "n_head", "n_embd")  # come from the checkpoint with --init

    def check(self):
        super().check()
        if self.n_embd % self.n_head:
            raise ValueError(f"--n-embd ({self.n_embd}) must be a multiple of --n-head ({self.n_head})")


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
RESUMABLE = TrainConfig.RESUMABLE


def make_config(preset="tiny", **overrides):
    """The preset's TrainConfig with ``overrides`` (field=value) applied, checked.

    The preset's warmup is cut to max_steps unless warmup_steps is overridden too.
    """
    return configure(PRESETS, preset, overrides)


class _NextToken:
    """The objective: random windows of the token file, next-token cross-entropy, validation
    loss and perplexity on fixed windows drawn from their own generator."""

    val_columns = ("val_loss", "val_perplexity")
    best = None

    def __init__(self, out, config, tokenizer, files, progress):
        from .data import BatchSampler, load_tokens, split_tokens

        self.max_steps, self.eval_interval = config.max_steps, config.eval_interval
        if not os.path.isfile(os.path.join(out, TOKENS_FILE)):  # a resume whose tokens.npy was deleted
            _encode(out, config, files, tokenizer, progress)
        self.train_tokens, self.val_tokens = split_tokens(load_tokens(os.path.join(out, TOKENS_FILE), tokenizer.vocab_size),
                                                          config.val_fraction, config.block_size + 1)
        self.sampler = BatchSampler(self.train_tokens, config.batch_size, config.block_size, seed=config.seed)
        # The same validation windows at every evaluation, from their own generator.
        val_sampler = BatchSampler(self.val_tokens, config.batch_size, config.block_size, seed=config.seed + 1)
        self.val_batches = [val_sampler.sample() for _ in range(config.eval_steps)]

    @property
    def state(self):
        return self.sampler.state

    @state.setter
    def state(self, value):
        self.sampler.state = value

    def sample(self):
        return self.sampler.sample()

    def loss_and_grads(self, model, batch):
        x, y = batch
        return model.loss_and_grads(x, y)

    def tokens(self, batch):
        return batch[0].size

    def scored(self, batch):
        return int((batch[1] >= 0).sum())  # negative targets are not scored

    def validate(self, model):
        from .evaluate import mean_loss
        from .metrics import perplexity

        loss, _ = mean_loss(model, self.val_batches)
        val_perplexity = perplexity(loss)
        return ({"val_loss": loss, "val_perplexity": val_perplexity},
                f"val loss {loss:.4f}, perplexity {val_perplexity:.2f}")

    def describe(self):
        return f"tokens: {len(self.train_tokens):,} train, {len(self.val_tokens):,} validation"


def _encode(out, config, files, tokenizer, progress):
    from .data import document_ids

    encode_corpus(out, config, files, functools.partial(document_ids, tokenizer=tokenizer),
                  tokenizer.vocab_size, progress)


class _GPTTask(CorpusTask):
    command = "train"
    config_class = TrainConfig
    presets = PRESETS

    def new_model(self, out, config, files, progress):
        """Tokenizer (given, from --init, or trained) and model (new or --init); the corpus encoded."""
        from .checkpoint import load_model_and_tokenizer
        from .corpus import read_texts
        from .gpt import GPT, GPTConfig
        from .tokenizer import BPETokenizer

        if config.init:
            _, model, tokenizer = load_model_and_tokenizer(config.init, "encode", config.tokenizer,
                                                           attention_backend=config.attention_backend,
                                                           dtype=config.dtype)
            if config.block_size > model.config.block_size:
                raise ValueError(f"--block-size {config.block_size} exceeds the --init model's "
                                 f"{model.config.block_size}")
            config = dataclasses.replace(config, **{name: getattr(model.config, name) for name in config.SHAPE_FIELDS})
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
        _encode(out, config, files, tokenizer, progress)
        return config, model, tokenizer

    def load_model(self, checkpoint, config):
        from .checkpoint import load_model_and_tokenizer

        _, model, tokenizer = load_model_and_tokenizer(checkpoint, "encode", attention_backend=config.attention_backend,
                                                       dtype=config.dtype)
        return model, tokenizer

    def objective(self, out, config, model, tokenizer, files, progress):
        return _NextToken(out, config, tokenizer, files, progress)


TASK = _GPTTask()


def train(out, preset="tiny", overrides=None, *, resume=False, progress=False):
    """Run (or with ``resume`` continue) a GPT training run in ``out``; return the exit status.

    0: finished max_steps. 130: stopped by Ctrl-C after saving a checkpoint. 1: stopped
    by a non-finite loss or gradient, the last good checkpoint kept. Bad settings and
    files raise ValueError / TypeError / OSError (``python -m numpyllm`` prints them as one line).
    """
    return run_training(TASK, out, preset, overrides, resume=resume, progress=progress)
