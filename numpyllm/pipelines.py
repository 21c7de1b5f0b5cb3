"""One-line use: ``numpyllm.pipeline(task, model=DIR)(inputs, ...)`` as transformers' ``pipeline``.

    pipeline("text-generation", model=DIR)("The world is", max_new_tokens=30)
        -> [{"generated_text": "The world is ..."}]
    pipeline("fill-mask", model=DIR)("Paris is the [MASK] of France.")
        -> [{"score", "token", "token_str", "sequence"}, ...]   best first, top_k=5
    pipeline("text-classification", model=DIR)("What a great film!")
        -> [{"label": "...", "score": ...}]

DIR is a model directory on disk (numpyllm's or Hugging Face's, never downloaded) or a
training run's directory. Outputs have transformers' format for the same task and
directory, and the same tokens, labels and scores (generation greedy unless
``do_sample=True``). A directory whose model is of the wrong kind for the task (a BERT
for text generation, a classifier for fill-mask) raises ValueError naming both.
"""

import os

import numpy as np

__all__ = ["pipeline", "TASKS"]

# task -> (model_type, architectures that can serve it)
TASKS = {
    "text-generation": ("gpt2", ("GPT2LMHeadModel",)),
    "fill-mask": ("bert", ("BertForMaskedLM", "BertForPreTraining")),
    "text-classification": ("bert", ("BertForSequenceClassification",)),
}


def pipeline(task, model, **options):
    """The callable for ``task`` (one of TASKS) over the model directory ``model``.

    options: attention_backend ("auto", "numpy", "cython"), passed to from_pretrained.
    """
    from .checkpoint import model_directory
    from .hub import read_config

    if task not in TASKS:
        raise ValueError(f"task must be one of {list(TASKS)}, got {task!r}")
    if not isinstance(model, (str, os.PathLike)):
        raise TypeError(f"model must be a directory path, got {type(model).__name__}")
    directory = model_directory(model)
    config = read_config(directory, "a model configuration object")
    model_type, architectures = TASKS[task]
    found = config.get("architectures") or []
    if config.get("model_type") != model_type or (found and not set(found) & set(architectures)):
        raise ValueError(f"pipeline({task!r}) needs a {' or '.join(architectures)} (model_type {model_type!r}), "
                         f"but {os.path.join(directory, 'config.json')} holds model_type "
                         f"{config.get('model_type')!r}, architectures {found}")
    factory = {"text-generation": TextGeneration, "fill-mask": FillMask,
               "text-classification": TextClassification}[task]
    return factory(directory, config, **options)


_BEST_ONLY = object()  # text-classification called without top_k


def _softmax(row):
    shifted = np.exp(row - row.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


class TextGeneration:
    """Continue each prompt; ``__call__(text or list of texts, **generate options)``.

    max_new_tokens / max_length (prompt + new, transformers' default 20 when neither
    is given), num_return_sequences, return_full_text (default True: the prompt and its
    continuation), do_sample (default False: greedy), temperature, top_k (50 when
    sampling, as transformers), top_p, seed. Generation stops at config.json's
    eos_token_id when the model has it; special tokens are left out of the text.
    """

    def __init__(self, directory, config, attention_backend="auto"):
        from .checkpoint import load_model_and_tokenizer

        self.directory, self.model, self.tokenizer = load_model_and_tokenizer(directory, "decode",
                                                                              attention_backend=attention_backend)
        eos = config.get("eos_token_id")
        self.stop_tokens = [eos] if isinstance(eos, int) and 0 <= eos < self.model.config.vocab_size else None

    def __call__(self, inputs, max_new_tokens=None, max_length=None, num_return_sequences=1,
                 return_full_text=True, do_sample=False, temperature=1.0, top_k=None, top_p=None, seed=None):
        from ._checks import check_int

        check_int(num_return_sequences, "num_return_sequences", 1)
        if not do_sample and num_return_sequences > 1:
            raise ValueError("num_return_sequences > 1 needs do_sample=True: greedy search gives one sequence")
        texts = [inputs] if isinstance(inputs, str) else list(inputs)
        results = []
        for text in texts:
            prompt = self.tokenizer.encode(text)
            if max_new_tokens is not None:
                n_new = check_int(max_new_tokens, "max_new_tokens", 0)
            else:
                n_new = max(0, check_int(20 if max_length is None else max_length, "max_length", 1) - len(prompt))
            idx = np.array([prompt] * num_return_sequences)
            out = self.model.generate(idx, n_new, temperature=temperature if do_sample else 0,
                                      top_k=(50 if top_k is None else top_k) if do_sample else None,
                                      top_p=top_p if do_sample else None, seed=seed, stop_tokens=self.stop_tokens)
            results.append([{"generated_text": self._text(text, prompt, row.tolist(), return_full_text)}
                            for row in out])
        return results[0] if isinstance(inputs, str) else results

    def _text(self, text, prompt, ids, return_full_text):
        """As transformers: the decoded sequence minus the decoded prompt, after the prompt text."""
        special = set(self.tokenizer.special_tokens.values())
        decoded = self.tokenizer.decode([i for i in ids if i not in special])
        new = decoded[len(self.tokenizer.decode([i for i in prompt if i not in special])):]
        return text + new if return_full_text else new


class _BertPipeline:
    model_class_name = None

    def __init__(self, directory, config, attention_backend="auto"):
        from . import bert
        from .checkpoint import load_bert_and_tokenizer

        self.directory, self.model, self.tokenizer = load_bert_and_tokenizer(
            directory, getattr(bert, self.model_class_name), attention_backend=attention_backend)

    def _encode(self, text, pair=None):
        """One example as the model takes it: (1, T) ids, token types and mask."""
        batch = self.tokenizer([text], None if pair is None else [pair],
                               max_length=self.model.config.max_position_embeddings, truncation=True)
        return batch["input_ids"], batch["token_type_ids"], batch["attention_mask"]


class FillMask(_BertPipeline):
    """The likeliest tokens for the [MASK] of each text; ``__call__(text(s), top_k=5, targets=None)``.

    One [MASK]: a list of {"score", "token", "token_str", "sequence"}, best first; several:
    one such list per [MASK] (their sequences keep the special tokens, as transformers').
    targets: a token or list of them to score instead of the whole vocabulary (a target
    that is not a vocabulary token is replaced by its first WordPiece).
    """

    model_class_name = "BertForMaskedLM"

    def __call__(self, inputs, top_k=5, targets=None):
        from ._checks import check_int

        check_int(top_k, "top_k", 1)
        candidates = None if targets is None else self._target_ids(targets)
        texts = [inputs] if isinstance(inputs, str) else list(inputs)
        results = [self._fill(text, top_k, candidates) for text in texts]
        return results[0] if isinstance(inputs, str) else results

    def _target_ids(self, targets):
        targets = [targets] if isinstance(targets, str) else list(targets)
        vocab = self.tokenizer.vocab
        ids = []
        for target in targets:
            if target in vocab:
                ids.append(vocab[target])
            else:
                pieces = self.tokenizer.tokenize(target)
                if not pieces:
                    raise ValueError(f"target {target!r} is no token of the tokenizer in {self.directory}")
                ids.append(vocab[pieces[0]])
        return np.unique(ids)

    def _fill(self, text, top_k, candidates):
        ids, types, mask = self._encode(text)
        positions = np.flatnonzero(ids[0] == self.tokenizer.mask_token_id)
        if positions.size == 0:
            raise ValueError(f"no [MASK] in the input {text!r} (the tokenizer's mask token is "
                             f"{self.tokenizer.convert_ids_to_tokens([self.tokenizer.mask_token_id])[0]!r})")
        logits = self.model(ids, token_type_ids=types, attention_mask=mask)[0]  # (T, V)
        single = positions.size == 1
        per_mask = []
        for position in positions:
            probabilities = _softmax(logits[position].astype(np.float64))
            pool = np.arange(probabilities.size) if candidates is None else candidates
            best = pool[np.argsort(-probabilities[pool], kind="stable")[:top_k]]
            rows = []
            for token_id in best:
                filled = ids[0].copy()
                filled[position] = token_id
                rows.append({"score": float(probabilities[token_id]), "token": int(token_id),
                             "token_str": self.tokenizer.decode([int(token_id)], skip_special_tokens=False),
                             "sequence": self.tokenizer.decode(filled.tolist(), skip_special_tokens=single)})
            per_mask.append(rows)
        return per_mask[0] if single else per_mask


class TextClassification(_BertPipeline):
    """Labels with scores; ``__call__(inputs, top_k=...)``, inputs a text, a {"text", "text_pair"}
    dict, or a list of them.

    Without top_k, as transformers: the best {"label", "score"} of each input (a text alone
    gives a list of one, a dict alone the dict itself, a list one dict per input). With
    top_k=k (or None: every label), each input gives a list of its k best. Scores are the
    softmax of the logits, or their sigmoid for one label or multi-label problems
    (transformers' default function_to_apply).
    """

    model_class_name = "BertForSequenceClassification"

    def __call__(self, inputs, top_k=_BEST_ONLY):
        from ._checks import check_int

        best_only = top_k is _BEST_ONLY
        if not best_only:
            check_int(top_k, "top_k", 1, optional=True)
        single = isinstance(inputs, (str, dict))
        results = [self._classify(example, 1 if best_only else top_k, best_only)
                   for example in ([inputs] if single else list(inputs))]
        if single:
            return [results[0]] if best_only and isinstance(inputs, str) else results[0]
        return results

    def _classify(self, example, top_k, best_only):
        text, pair = (example.get("text"), example.get("text_pair")) if isinstance(example, dict) else (example, None)
        if not isinstance(text, str) or not (pair is None or isinstance(pair, str)):
            raise TypeError(f"each input must be a str or a dict with a str 'text' (and 'text_pair'), got {example!r}")
        logits = self.model(*self._encode(text, pair))[0].astype(np.float64)
        config = self.model.config
        sigmoid = config.num_labels == 1 or config.problem_type == "multi_label_classification"
        scores = 1 / (1 + np.exp(-logits)) if sigmoid else _softmax(logits)
        rows = [{"label": config.id2label[int(i)], "score": float(scores[i])}
                for i in np.argsort(-scores, kind="stable")[:top_k]]
        return rows[0] if best_only else rows
