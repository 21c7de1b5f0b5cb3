"""Scoring a model on token ids: the mean next-token cross-entropy, BLEU and ROUGE of its continuations.

``mean_loss`` averages the loss over batches, ``evaluate_tokens`` cuts 1-D token ids
into non-overlapping windows of the model's block size (every token but the first is
predicted once, with as much context as its window gives). ``continuation_windows`` and
``continuation_scores`` score the model's greedy continuations of held-out text against
the true text. Perplexity is ``numpyllm.metrics.perplexity``; the command line is
``numpyllm.cli.eval``.
"""

import numpy as np

from .layers import cross_entropy_forward

__all__ = ["mean_loss", "evaluate_tokens", "continuation_windows", "continuation_scores"]

_LOGITS_BUDGET = 1 << 24  # default batch: about this many logits per forward pass


def mean_loss(model, batches):
    """The mean cross-entropy over every target of ``batches``, an iterable of (x, y) (b, t) arrays.

    Each batch's mean loss is weighted by its number of targets, so batches of different
    sizes average correctly. Forward passes only. Returns (loss, number of targets).
    """
    total, count = 0.0, 0
    for x, y in batches:
        loss, _ = cross_entropy_forward(model(x), y)
        total += loss * y.size
        count += y.size
    if count == 0:
        raise ValueError("no batches to evaluate")
    return total / count, count


def evaluate_tokens(model, tokens, batch_size=None):
    """(mean loss, number of targets) of ``model`` on the 1-D ``tokens`` (see the module docstring)."""
    from .data import sequential_batches

    block_size = model.config.block_size
    if batch_size is None:
        batch_size = max(1, _LOGITS_BUDGET // (block_size * model.config.vocab_size))
    return mean_loss(model, sequential_batches(tokens, block_size, batch_size))


def continuation_windows(tokens, prompt_tokens, continuation_tokens, max_samples):
    """(prompts (S, P), continuations (S, C)): S <= max_samples non-overlapping windows of
    P + C consecutive tokens, evenly spaced over the 1-D ``tokens``, each cut into its first
    P tokens and the C after them. Raises ValueError when ``tokens`` holds no whole window."""
    width = prompt_tokens + continuation_tokens
    n_windows = len(tokens) // width
    if n_windows == 0:
        raise ValueError(f"the data has {len(tokens)} tokens: too few for one window of {prompt_tokens} prompt + "
                         f"{continuation_tokens} continuation tokens")
    picked = np.unique(np.linspace(0, n_windows - 1, min(max_samples, n_windows)).round().astype(np.int64))
    windows = np.asarray(tokens[:n_windows * width]).reshape(n_windows, width)[picked]
    return windows[:, :prompt_tokens], windows[:, prompt_tokens:]


def continuation_scores(model, tokenizer, prompts, continuations, batch_size=16):
    """BLEU and ROUGE of the model's greedy continuations of ``prompts`` against the true ones.

    prompts (S, P), continuations (S, C) int arrays (``continuation_windows``). Each prompt
    is continued greedily by C tokens; the generated and the true tokens are decoded to
    text (special tokens dropped) and scored: the hypotheses against the references, by
    ``numpyllm.metrics.bleu`` and ``rouge``. Returns {"bleu", "rouge1", "rouge2", "rougeL",
    "samples"}.
    """
    from .metrics import bleu, rouge

    special = set(tokenizer.special_tokens.values())

    def text(ids):
        return tokenizer.decode([int(i) for i in ids if int(i) not in special])

    n_new = continuations.shape[1]
    hypotheses = []
    for first in range(0, len(prompts), batch_size):
        rows = model.generate(prompts[first:first + batch_size], n_new, temperature=0)
        hypotheses += [text(row[prompts.shape[1]:]) for row in rows]
    references = [text(row) for row in continuations]
    return {"bleu": bleu(hypotheses, [references]), **rouge(hypotheses, [references]), "samples": len(hypotheses)}
