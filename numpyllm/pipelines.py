"""One-line use: ``numpyllm.pipeline(task, model=DIR)(inputs, **options)``, as transformers' ``pipeline``.

Three tasks, each a class whose call returns what transformers' pipeline of the same
task returns for the same directory (the same lists and dicts, tokens, labels and scores):

- "text-generation" (a GPT-2 directory): ``[{"generated_text": prompt + continuation}]``;
- "fill-mask" (a BERT masked-LM directory): per [MASK], the ``top_k`` most likely tokens
  as ``{"score", "token", "token_str", "sequence"}``, best first;
- "text-classification" (a BERT classifier directory): ``{"label", "score"}`` dicts.

DIR is a model directory (numpyllm's or Hugging Face's, tokenizer files beside the
weights) or a training run's directory (``numpyllm.checkpoint.model_directory``). Options
given to ``pipeline`` are defaults for every call; a call's own options win. Which kind
of model DIR holds is read from its config.json (model_type and architectures) before any
weight is loaded, so a wrong directory fails at once, naming the task and what it holds.

The scoring helpers (``mask_predictions``, ``label_scores``, ``ranked_labels``) are
shared with the ``fill-mask`` and ``classify`` commands. Needs NumPy only.
"""

import os
import warnings

import numpy as np

from ._checks import check_int, check_real

__all__ = ["pipeline", "TASKS", "TextGenerationPipeline", "FillMaskPipeline", "TextClassificationPipeline",
           "mask_predictions", "label_scores", "ranked_labels", "softmax"]


def softmax(logits):
    """Softmax over the last axis of ``logits``, shifted by the row maximum."""
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


# --------------------------------------------------------------------------- fill-mask


def mask_predictions(model, tokenizer, ids, top_k=5, target_ids=None):
    """For each [MASK] in ``ids`` (1-D, [CLS] ... [SEP]), its ``top_k`` most likely tokens, best first.

    target_ids: None, or the candidate token ids (probabilities stay those of the whole
    vocabulary's softmax; top_k is cut to their number). Returns one list per [MASK], in
    order, of dicts {"score", "token", "token_str", "sequence"}: the probability, the id,
    the token decoded alone, and the text with it in place of its [MASK] (special tokens
    dropped when the text has one [MASK], kept otherwise, as transformers does).
    Raises ValueError when ``ids`` holds no [MASK] or is longer than the model takes.
    """
    ids = np.asarray(ids, dtype=np.int64)
    positions = np.flatnonzero(ids == tokenizer.mask_token_id)
    if positions.size == 0:
        raise ValueError(f"the text holds no mask token ({tokenizer.special_tokens['mask_token']}) to fill")
    longest = model.config.max_position_embeddings
    if ids.size > longest:
        raise ValueError(f"the text is {ids.size} tokens long; the model takes at most {longest}")
    probabilities = softmax(model(ids[None, :])[0, positions])  # (masks, V)
    candidates = np.arange(probabilities.shape[1]) if target_ids is None else np.asarray(target_ids)
    probabilities = probabilities[:, candidates]
    top_k = min(top_k, candidates.size)
    single = positions.size == 1
    results = []
    for position, row in zip(positions, probabilities):
        best = np.argsort(-row, kind="stable")[:top_k]
        predictions = []
        for index in best:
            token_id = int(candidates[index])
            filled = ids.copy()
            filled[position] = token_id
            filled = filled[filled != tokenizer.pad_token_id]
            predictions.append({"score": float(row[index]), "token": token_id,
                                "token_str": tokenizer.decode([token_id], skip_special_tokens=False),
                                "sequence": tokenizer.decode(filled, skip_special_tokens=single)})
        results.append(predictions)
    return results


def _target_ids(tokenizer, targets):
    """The ids of ``targets`` (a str or list of str); a word outside the vocabulary stands for
    its first WordPiece token (with a warning), one with no token is dropped (with a warning)."""
    targets = [targets] if isinstance(targets, str) else list(targets)
    vocab, ids = tokenizer.vocab, []
    for target in targets:
        if target in vocab:
            ids.append(vocab[target])
            continue
        pieces = tokenizer.tokenize(target)
        if not pieces:
            warnings.warn(f"fill-mask target {target!r} has no token in the vocabulary; ignoring it", stacklevel=3)
            continue
        warnings.warn(f"fill-mask target {target!r} is not in the vocabulary; using its first token {pieces[0]!r}",
                      stacklevel=3)
        ids.append(tokenizer.convert_tokens_to_ids(pieces[:1])[0])
    if not ids:
        raise ValueError(f"targets must name at least one token, got {targets!r}")
    return sorted(set(ids))


# --------------------------------------------------------------------------- classification


def label_scores(logits, config, function_to_apply=None):
    """Scores (N, num_labels) from classifier logits, as transformers' text-classification computes them.

    function_to_apply: "softmax", "sigmoid" or "none"; None picks by the config as
    transformers does: none for problem_type "regression", sigmoid for
    "multi_label_classification" or a single label, else softmax.
    """
    if function_to_apply is None:
        if config.problem_type == "regression":
            function_to_apply = "none"
        elif config.problem_type == "multi_label_classification" or config.num_labels == 1:
            function_to_apply = "sigmoid"
        else:
            function_to_apply = "softmax"
    functions = {"softmax": softmax, "sigmoid": lambda x: 1 / (1 + np.exp(-x)), "none": lambda x: x}
    if function_to_apply not in functions:
        raise ValueError(f"function_to_apply must be one of {sorted(functions)} or None, got {function_to_apply!r}")
    return functions[function_to_apply](np.asarray(logits))


def ranked_labels(scores, id2label, top_k=1):
    """[{"label", "score"}, ...] for one row of scores, highest first (ties: lower id first);
    top_k=None keeps every label."""
    order = np.argsort(-scores, kind="stable")
    return [{"label": id2label[int(i)], "score": float(scores[i])} for i in order[:top_k]]


# --------------------------------------------------------------------------- the pipelines


class _Pipeline:
    """Holds the model, its tokenizer and the defaults given to ``pipeline``."""

    task = None

    def __init__(self, model, tokenizer, **defaults):
        self.model, self.tokenizer = model, tokenizer
        self.defaults = defaults
        self._options(dict(defaults))  # a bad default fails now, not at the first call

    def _options(self, options):
        raise NotImplementedError

    def __call__(self, inputs, **options):
        settings = self._options({**self.defaults, **options})
        if isinstance(inputs, (list, tuple)):
            if not inputs:
                raise ValueError(f"{self.task}: inputs must hold at least one text, got an empty list")
            return [self._one(item, settings) for item in inputs]
        return self._one(inputs, settings)

    def _one(self, item, settings):
        raise NotImplementedError


def _unknown(task, options, known):
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise TypeError(f"{task} pipeline got unknown option(s) {unknown}; it takes {sorted(known)}")


def _check_text(item, task, what="a str"):
    if not isinstance(item, str):
        raise TypeError(f"{task}: each input must be {what}, got {type(item).__name__} {item!r:.60}")
    return item


class TextGenerationPipeline(_Pipeline):
    """Continue prompts with a GPT: ``gen(prompt or [prompts], **options)``.

    Options (transformers' pipeline names and defaults):
      max_new_tokens (default 256, unless max_length is given), max_length (prompt +
      new tokens), do_sample (default True), temperature (0.7), top_k (50), top_p (1.0),
      seed (numpyllm's: the same seed gives the same samples), num_return_sequences (1;
      more needs do_sample), return_full_text (True: the prompt, then the continuation).
    Generation stops early at the model's end-of-text token (config.json's eos_token_id,
    GPT-2's 50256 when absent, if the model has that id), which the text leaves out.
    Returns [{"generated_text": ...}, ...] (num_return_sequences dicts) for a prompt, a
    list of those for a list of prompts.
    """

    task = "text-generation"
    _KNOWN = ("max_new_tokens", "max_length", "do_sample", "temperature", "top_k", "top_p", "seed",
              "num_return_sequences", "return_full_text")

    def __init__(self, model, tokenizer, eos_token_id=None, **defaults):
        self.eos_token_id = eos_token_id
        super().__init__(model, tokenizer, **defaults)

    def _options(self, options):
        from .generation import check_sampling

        _unknown(self.task, options, self._KNOWN)
        settings = dict(max_new_tokens=check_int(options.get("max_new_tokens"), "max_new_tokens", 0, optional=True),
                        max_length=check_int(options.get("max_length"), "max_length", 1, optional=True),
                        seed=check_int(options.get("seed"), "seed", 0, optional=True),
                        n=check_int(options.get("num_return_sequences", 1), "num_return_sequences", 1),
                        full_text=bool(options.get("return_full_text", True)))
        if settings["max_new_tokens"] is None and settings["max_length"] is None:
            settings["max_new_tokens"] = 256
        if options.get("do_sample", True):
            temperature = check_real(options.get("temperature", 0.7), "temperature", 0, low_inclusive=False,
                                     hint="do_sample=False for greedy")
            settings["sampling"] = check_sampling(temperature, options.get("top_k", 50), options.get("top_p", 1.0))
        elif settings["n"] > 1:
            raise ValueError(f"num_return_sequences={settings['n']} needs do_sample=True: greedy decoding "
                             "gives one continuation")
        else:
            settings["sampling"] = (0.0, None, None)
        return settings

    def _one(self, prompt, settings):
        prompt = _check_text(prompt, self.task)
        ids = self.tokenizer.encode(prompt, allowed_special="all")
        if not ids:
            raise ValueError(f"{self.task}: the prompt is empty; the model needs at least one token to continue")
        vocab_size = self.model.config.vocab_size
        outside = [i for i in ids if i >= vocab_size]
        if outside:
            raise ValueError(f"{self.task}: the prompt encodes to token id {outside[0]}, outside the model's "
                             f"vocabulary [0, {vocab_size})")
        new = settings["max_new_tokens"]
        if new is None:
            new = settings["max_length"] - len(ids)
            if new < 1:
                raise ValueError(f"max_length={settings['max_length']} leaves no room after the prompt's "
                                 f"{len(ids)} tokens; raise it or give max_new_tokens")
        temperature, top_k, top_p = settings["sampling"]
        rows = self.model.generate(np.array([ids] * settings["n"]), new, temperature=temperature, top_k=top_k,
                                   top_p=top_p, seed=settings["seed"], stop_tokens=self.eos_token_id)
        special = set(self.tokenizer.special_tokens.values())
        results = []
        for row in rows:
            text = self.tokenizer.decode([int(i) for i in row[len(ids):] if int(i) not in special])
            results.append({"generated_text": prompt + text if settings["full_text"] else text})
        return results


class FillMaskPipeline(_Pipeline):
    """Fill the [MASK] of texts with a BERT masked LM: ``fill(text or [texts], top_k=5, targets=None)``.

    For a text with one [MASK]: a list of ``top_k`` dicts {"score", "token", "token_str",
    "sequence"}, best first; with several: one such list per [MASK]; for a list of texts,
    a list of those (a list of one text: that text's result, as transformers does).
    targets: a token or list of tokens to rank instead of the whole vocabulary.
    """

    task = "fill-mask"

    def _options(self, options):
        _unknown(self.task, options, ("top_k", "targets"))
        targets = options.get("targets")
        return dict(top_k=check_int(options.get("top_k", 5), "top_k", 1),
                    target_ids=None if targets is None else _target_ids(self.tokenizer, targets))

    def __call__(self, inputs, **options):
        results = super().__call__(inputs, **options)
        return results[0] if isinstance(inputs, (list, tuple)) and len(inputs) == 1 else results

    def _one(self, text, settings):
        ids = self.tokenizer.encode(_check_text(text, self.task))
        results = mask_predictions(self.model, self.tokenizer, ids, settings["top_k"], settings["target_ids"])
        return results[0] if len(results) == 1 else results


class TextClassificationPipeline(_Pipeline):
    """Label texts with a BERT classifier: ``classify(text or {"text", "text_pair"} or a list of them)``.

    Options: top_k (transformers' default: only the best label, and a str input gives a
    one-item list; an int gives that many labels best first, None every label),
    function_to_apply ("softmax", "sigmoid", "none"; default by the config, see
    ``label_scores``). Texts longer than the model takes are cut ("longest_first").
    Returns, as transformers' pipeline: without top_k, [{"label", "score"}] for a str and
    one dict per input for a list or a pair; with top_k, a list of dicts per input (for a
    str: that list, or [that list] when top_k was given to ``pipeline`` only).
    """

    task = "text-classification"

    def _options(self, options):
        _unknown(self.task, options, ("top_k", "function_to_apply"))
        top_k = options.get("top_k", 1)
        top_k = check_int(top_k, "top_k", 1, optional=True)
        return dict(top_k=top_k, function=options.get("function_to_apply"))

    def __call__(self, inputs, **options):
        settings = self._options({**self.defaults, **options})
        ranked = "top_k" in self.defaults or "top_k" in options  # a list of dicts per input
        many = isinstance(inputs, (list, tuple))
        items = list(inputs) if many else [inputs]
        if not items:
            raise ValueError(f"{self.task}: inputs must hold at least one text, got an empty list")
        texts, pairs = zip(*(self._text_and_pair(item) for item in items))
        scores = label_scores(self._logits(list(texts), list(pairs)), self.model.config, settings["function"])
        id2label = self.model.config.id2label
        if ranked:
            results = [ranked_labels(row, id2label, settings["top_k"]) for row in scores]
        else:
            results = [ranked_labels(row, id2label, 1)[0] for row in scores]
        if many:
            return results
        # transformers wraps a str's result in a list unless this call names top_k (even when
        # pipeline() set it: then a list holding the ranked list)
        return [results[0]] if isinstance(inputs, str) and "top_k" not in options else results[0]

    def _text_and_pair(self, item):
        if isinstance(item, dict):
            if set(item) - {"text", "text_pair"} or "text" not in item:
                raise ValueError(f"{self.task}: a text pair is a dict {{'text': ..., 'text_pair': ...}}, "
                                 f"got the keys {sorted(item)}")
            pair = item.get("text_pair")
            return _check_text(item["text"], self.task), None if pair is None else _check_text(pair, self.task)
        return _check_text(item, self.task, "a str or a {'text', 'text_pair'} dict"), None

    def _logits(self, texts, pairs):
        """Logits (N, num_labels), one text (or pair) at a time, as transformers' pipeline runs them."""
        longest = self.model.config.max_position_embeddings
        rows = []
        for text, pair in zip(texts, pairs):
            batch = self.tokenizer([text], text_pairs=None if pair is None else [pair], max_length=longest,
                                   padding="longest", truncation=True)
            rows.append(self.model(batch["input_ids"], token_type_ids=batch["token_type_ids"],
                                   attention_mask=batch["attention_mask"])[0])
        return np.stack(rows)


# --------------------------------------------------------------------------- pipeline()

# task -> (what it needs, the model_type, the architectures that serve it)
TASKS = {
    "text-generation": ("a GPT-2 language model", "gpt2", ("GPT2LMHeadModel",)),
    "fill-mask": ("a BERT masked-LM model", "bert", ("BertForMaskedLM", "BertForPreTraining")),
    "text-classification": ("a BERT sequence classifier", "bert", ("BertForSequenceClassification",)),
}


def _check_kind(task, directory):
    """Raise ValueError unless ``directory``'s config.json holds a model for ``task``."""
    from .hub import read_config

    config = read_config(directory, "a model configuration object")
    needs, model_type, architectures = TASKS[task]
    held_type, held = config.get("model_type"), config.get("architectures") or []
    if held_type == model_type and (not held or set(held) & set(architectures)):
        return config
    what = f"{'/'.join(held) or 'a model'} (model_type {held_type!r})"
    raise ValueError(f"pipeline({task!r}) needs {needs} ({' or '.join(architectures)}), but "
                     f"{os.path.join(directory, 'config.json')} holds {what}")


def pipeline(task, model, tokenizer=None, attention_backend="auto", **defaults):
    """The pipeline for ``task`` on the model directory ``model``; see the module docstring.

    task: "text-generation", "fill-mask" or "text-classification". model: a directory (or
    a training run's). tokenizer: a directory with the tokenizer files (default: the
    model's). defaults: call options every call starts from (e.g. max_new_tokens=30).
    Raises ValueError for an unknown task or a directory holding another kind of model,
    FileNotFoundError for missing files.
    """
    from .checkpoint import load_bert_and_tokenizer, load_model_and_tokenizer, model_directory

    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; the tasks are {', '.join(map(repr, TASKS))}")
    directory = model_directory(model)
    config = _check_kind(task, directory)
    if task == "text-generation":
        _, gpt, bpe = load_model_and_tokenizer(directory, "decode", tokenizer, attention_backend=attention_backend)
        eos = config.get("eos_token_id", 50256)  # GPT2Config's default
        eos = eos if isinstance(eos, int) and 0 <= eos < gpt.config.vocab_size else None
        return TextGenerationPipeline(gpt, bpe, eos_token_id=eos, **defaults)
    from .bert import BertForMaskedLM, BertForSequenceClassification

    model_class, pipeline_class = {"fill-mask": (BertForMaskedLM, FillMaskPipeline),
                                   "text-classification": (BertForSequenceClassification,
                                                           TextClassificationPipeline)}[task]
    _, bert, wordpiece = load_bert_and_tokenizer(directory, model_class, tokenizer, flag="model",
                                                 attention_backend=attention_backend)
    return pipeline_class(bert, wordpiece, **defaults)
