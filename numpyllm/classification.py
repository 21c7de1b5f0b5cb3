"""Fine-tuning a BERT sequence classifier on labelled text: the objective and its run.

Data: ``--data`` (and ``--val``) files as ``numpyllm.labelled`` reads them, or with no
--data the standard-library task (``numpyllm.stdlib_task``); without --val a seeded
``--val-fraction`` of the training file is held out. The label set comes from the
training file; a checkpoint's config.json keeps it as ``id2label`` / ``label2id``
(with ``num_labels`` and ``problem_type``), as transformers does.

Each epoch visits the training examples in a seeded order of its own
(``default_rng([seed, epoch])``); a batch is tokenized and padded to its longest
sequence (at most ``--max-length``). After every epoch the whole validation set is
scored: loss, accuracy and macro-F1 (regression: loss = MSE and Pearson r), and the
best model by macro-F1 (regression: by loss) is kept in OUT/best/.
"""

import dataclasses
import math
import time

import numpy as np

from . import attention
from ._checks import check_real
from .labelled import Labels, read_examples
from .loop import LoopConfig, option

__all__ = ["ClassifierConfig", "PRESETS", "predict", "read_labels", "TASK"]

_VAL_BATCH = 64


@dataclasses.dataclass(frozen=True)
class ClassifierConfig(LoopConfig):
    """Every setting of a classifier run; each field is a --flag."""

    data: str = option(None, "training file: .csv, .tsv (a header row) or .jsonl with columns text, "
                             "[text_pair,] label (default: the standard-library task, see --help)", metavar="FILE")
    val: str = option(None, "validation file of the same form (default: hold out --val-fraction of --data)",
                      metavar="FILE")
    text_column: str = option("text", "the column holding the text")
    text_pair_column: str = option(None, "the column holding the second text of a pair (default: text_pair "
                                         "when the file has it)")
    label_column: str = option("label", "the column holding the label")
    val_fraction: float = option(0.1, "fraction of --data held out when there is no --val")
    init: str = option(None, "start from this BERT: a train-mlm or train-classifier run or checkpoint, or a "
                             "Hugging Face BERT directory; its tokenizer comes along", metavar="DIR")
    tokenizer: str = option(None, "WordPiece directory (vocab.txt) for a fresh encoder instead of training one "
                                  "on the training texts", metavar="DIR")
    vocab_size: int = option(4096, "vocabulary size of the WordPiece trained on the training texts", minimum=1)
    hidden_size: int = option(128, "encoder width of a fresh model", minimum=1)
    num_hidden_layers: int = option(2, "encoder layers of a fresh model", minimum=1)
    num_attention_heads: int = option(4, "attention heads per layer of a fresh model", minimum=1)
    intermediate_size: int = option(512, "MLP width of a fresh model", minimum=1)
    max_length: int = option(64, "tokens per example at most ([CLS] and [SEP] included; longer ones are cut)",
                             minimum=3)
    epochs: int = option(4, "passes over the training examples", minimum=1)
    dtype: str = option("float32", "parameter and compute dtype of a fresh model", choices=("float32", "float64"))
    attention_backend: str = option("auto", "attention implementation (auto: the compiled kernel when built)",
                                    choices=attention.BACKENDS)

    RESUMABLE = ("epochs", "checkpoint_interval", "log_interval", "attention_backend")
    SHAPE_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")

    def check(self):
        super().check()
        check_real(self.val_fraction, "--val-fraction", 0, 1, low_inclusive=False)
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"--hidden-size ({self.hidden_size}) must be a multiple of "
                             f"--num-attention-heads ({self.num_attention_heads})")

    def describe_field(self, name, value):
        if name == "data" and value is None:
            return "the standard-library task (which package a docstring or comment comes from)"
        return value


PRESETS = {
    # From scratch on a few thousand short texts: a 2 x 128 encoder, 6 epochs.
    "tiny": ClassifierConfig(batch_size=32, lr=1e-3, warmup_steps=50, weight_decay=0.01, beta2=0.98, epochs=6,
                             checkpoint_interval=1000, log_interval=20),
    # Fine-tuning a pretrained BERT (--init): BERT's own recipe.
    "finetune": ClassifierConfig(batch_size=32, lr=5e-5, warmup_steps=50, weight_decay=0.01, beta2=0.999, epochs=3,
                                 checkpoint_interval=1000, log_interval=20, max_length=128),
}


# --------------------------------------------------------------------------- labels in config.json


def _label_fields(labels):
    """The BertConfig fields of a label set: num_labels, problem_type, id2label, label2id."""
    if labels.regression:
        return dict(num_labels=1, problem_type="regression", id2label={0: "LABEL_0"}, label2id={"LABEL_0": 0})
    return dict(num_labels=labels.num_labels, problem_type="single_label_classification",
                id2label=dict(enumerate(labels.names)), label2id={name: i for i, name in enumerate(labels.names)})


def read_labels(directory):
    """The Labels kept in a classifier directory's config.json (id2label, problem_type)."""
    from .hub import read_config

    config = read_config(directory, "a BERT configuration object")
    if config.get("problem_type") == "regression" or config.get("num_labels") == 1:
        return Labels([], True)
    id2label = {int(key): value for key, value in config.get("id2label", {}).items()}
    if not id2label:
        id2label = {i: f"LABEL_{i}" for i in range(config.get("num_labels", 2))}
    return Labels.from_id2label(id2label, False)


# --------------------------------------------------------------------------- the objective


def _encode(tokenizer, examples, index, max_length):
    texts = [examples.texts[i] for i in index]
    pairs = [examples.pairs[i] for i in index] if examples.pairs is not None else None
    return tokenizer(texts, text_pairs=pairs, max_length=max_length, padding="longest", truncation=True)


def predict(model, tokenizer, examples, max_length, batch_size=_VAL_BATCH):
    """The model's logits (N, num_labels) for every example, in batches padded to their longest."""
    logits = []
    for first in range(0, len(examples), batch_size):
        batch = _encode(tokenizer, examples, range(first, min(first + batch_size, len(examples))), max_length)
        logits.append(model(batch["input_ids"], token_type_ids=batch["token_type_ids"],
                            attention_mask=batch["attention_mask"]))
    return np.concatenate(logits)


def score(logits, targets, labels):
    """(metrics, line): loss and accuracy + macro-F1, or for regression loss (MSE) and Pearson r."""
    from .label_metrics import accuracy, macro_f1, mean_squared_error, pearson_r
    from .layers import cross_entropy_forward

    if labels.regression:
        mse = mean_squared_error(targets, logits[:, 0])
        r = pearson_r(targets, logits[:, 0])
        return {"val_loss": mse, "val_pearson": r}, f"val MSE {mse:.4f}, Pearson r {r:.4f}"
    loss, _ = cross_entropy_forward(logits[:, None, :], np.asarray(targets)[:, None])
    predicted = logits.argmax(axis=1)
    acc, f1 = accuracy(targets, predicted), macro_f1(targets, predicted, labels.num_labels)
    return ({"val_loss": loss, "val_accuracy": acc, "val_macro_f1": f1},
            f"val loss {loss:.4f}, accuracy {acc:.1%}, macro-F1 {f1:.4f}")


class _Classification:
    """Shuffled epochs of padded batches; whole-validation-set scores after each epoch."""

    def __init__(self, config, tokenizer, inputs):
        self.train, self.val, self.labels = inputs
        self.tokenizer, self.config = tokenizer, config
        dtype = np.float64 if self.labels.regression else np.int64
        self.train_targets = np.asarray(self.labels.encode(self.train), dtype=dtype)
        self.val_targets = np.asarray(self.labels.encode(self.val), dtype=dtype)
        self.steps_per_epoch = math.ceil(len(self.train) / config.batch_size)
        self.max_steps, self.eval_interval = config.epochs * self.steps_per_epoch, self.steps_per_epoch
        if self.labels.regression:
            self.val_columns, self.best = ("val_loss", "val_pearson"), ("val_loss", "min")
        else:
            self.val_columns, self.best = ("val_loss", "val_accuracy", "val_macro_f1"), ("val_macro_f1", "max")
        self.state = {"epoch": 0, "position": 0}

    @property
    def state(self):
        return {"epoch": self._epoch, "position": self._position}

    @state.setter
    def state(self, value):
        self._epoch, self._position = value["epoch"], value["position"]
        self._order = np.random.default_rng([self.config.seed, self._epoch]).permutation(len(self.train))

    def sample(self):
        if self._position >= len(self.train):
            self.state = {"epoch": self._epoch + 1, "position": 0}
        index = self._order[self._position:self._position + self.config.batch_size]
        self._position += len(index)
        return _encode(self.tokenizer, self.train, index, self.config.max_length), self.train_targets[index]

    def loss_and_grads(self, model, batch):
        inputs, targets = batch
        return model.loss_and_grads(inputs["input_ids"], targets, token_type_ids=inputs["token_type_ids"],
                                    attention_mask=inputs["attention_mask"])

    def tokens(self, batch):
        return int(batch[0]["attention_mask"].sum())

    def scored(self, batch):  # the loss's mean: over labels >= 0 (classes), over every value (regression)
        targets = batch[1]
        return int((targets >= 0).sum()) if targets.dtype.kind in "iu" else targets.size

    def validate(self, model):
        return score(predict(model, self.tokenizer, self.val, self.config.max_length), self.val_targets, self.labels)

    def describe(self):
        what = "regression" if self.labels.regression else f"{self.labels.num_labels} labels"
        return (f"{what}; examples: {len(self.train):,} train ({self.train.path}), {len(self.val):,} validation "
                f"({self.val.path}); {self.steps_per_epoch} steps per epoch")


def _split(examples, fraction, seed):
    """(train, val): a seeded ``fraction`` of ``examples`` held out."""
    order = np.random.default_rng(seed).permutation(len(examples))
    n_val = max(1, int(round(fraction * len(examples))))
    if n_val >= len(examples):
        raise ValueError(f"{examples.path} has {len(examples)} example(s): too few to hold out "
                         f"--val-fraction {fraction} for validation; give --val")

    def subset(index, suffix):
        index = sorted(index)

        def pick(values):
            return None if values is None else [values[i] for i in index]

        return type(examples)(f"{examples.path} ({suffix})", pick(examples.texts), pick(examples.pairs),
                              pick(examples.labels), pick(examples.lines))

    return subset(order[n_val:], "train"), subset(order[:n_val], "held out")


class _ClassifierTask:
    command = "train-classifier"
    config_class = ClassifierConfig
    presets = PRESETS

    def check_new(self, config, overrides):
        if config.val and not config.data:
            raise ValueError("--val needs --data (the default task brings its own validation set)")

    def inputs(self, config):
        """(train, val, labels): the examples read and checked before anything is written."""
        from .stdlib_task import stdlib_examples

        columns = dict(text_column=config.text_column, text_pair_column=config.text_pair_column,
                       label_column=config.label_column)
        if config.data is None:
            train, val = stdlib_examples(seed=config.seed)
        else:
            train = read_examples(config.data, **columns)
            if config.val:
                val = read_examples(config.val, **columns)
                if (val.pairs is None) != (train.pairs is None):
                    raise ValueError(f"{config.val}: {'no' if val.pairs is None else 'a'} text pair column, "
                                     f"unlike {config.data}")
            else:
                train, val = _split(train, config.val_fraction, config.seed)
        labels = Labels.from_values(train.labels)
        if not labels.regression and labels.num_labels < 2:
            raise ValueError(f"{train.path}: every example has the label {labels.names[0]!r}; "
                             "a classifier needs at least two")
        labels.encode(val)  # an unseen label fails here, naming its line
        return train, val, labels

    def new_model(self, out, config, inputs, progress):
        from .bert import BertConfig, BertForSequenceClassification
        from .checkpoint import load_bert_and_tokenizer
        from .wordpiece import WordPieceTokenizer

        train, _, labels = inputs
        if config.init:
            # an MLM checkpoint gets a fresh classifier of the run's size (one warning names it)
            _, model, tokenizer = load_bert_and_tokenizer(config.init, BertForSequenceClassification, config.tokenizer,
                                                          "--init", attention_backend=config.attention_backend,
                                                          seed=config.seed, **_label_fields(labels))
            if config.max_length > model.config.max_position_embeddings:
                raise ValueError(f"--max-length {config.max_length} exceeds the --init model's "
                                 f"max_position_embeddings {model.config.max_position_embeddings}")
            config = dataclasses.replace(config, **{name: getattr(model.config, name) for name in config.SHAPE_FIELDS})
            return config, model, tokenizer
        if config.tokenizer:
            tokenizer = WordPieceTokenizer.from_pretrained(config.tokenizer)
        else:
            started = time.perf_counter()
            texts = train.texts + (train.pairs or [])
            tokenizer = WordPieceTokenizer.train(texts, vocab_size=config.vocab_size, progress=progress)
            print(f"trained a WordPiece tokenizer of {tokenizer.vocab_size} tokens on {len(texts):,} texts "
                  f"({time.perf_counter() - started:.1f} s)")
        model_config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=config.hidden_size,
                                  num_hidden_layers=config.num_hidden_layers,
                                  num_attention_heads=config.num_attention_heads,
                                  intermediate_size=config.intermediate_size,
                                  max_position_embeddings=max(config.max_length, 128), dtype=config.dtype,
                                  **_label_fields(labels))
        config = dataclasses.replace(config, vocab_size=tokenizer.vocab_size)
        model = BertForSequenceClassification(model_config, seed=config.seed, attention_backend=config.attention_backend)
        return config, model, tokenizer

    def load_model(self, checkpoint, config):
        from .bert import BertForSequenceClassification
        from .checkpoint import load_bert_and_tokenizer

        _, model, tokenizer = load_bert_and_tokenizer(checkpoint, BertForSequenceClassification, flag="--resume",
                                                      attention_backend=config.attention_backend)
        return model, tokenizer

    def objective(self, out, config, model, tokenizer, inputs, progress):
        return _Classification(config, tokenizer, inputs)


TASK = _ClassifierTask()
