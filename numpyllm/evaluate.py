"""Scoring a model on token ids: the mean next-token cross-entropy.

``mean_loss`` averages the loss over batches, ``evaluate_tokens`` cuts 1-D token ids
into non-overlapping windows of the model's block size (every token but the first is
predicted once, with as much context as its window gives). Its perplexity is
``numpyllm.metrics.perplexity``; the command line is ``numpyllm.cli.eval``.
"""

from .layers import cross_entropy_forward

__all__ = ["mean_loss", "evaluate_tokens"]

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
