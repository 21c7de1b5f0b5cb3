"""One flat parameter buffer with a named view per tensor, shared by every model family.

All of a model's parameters live in one 1-D array and ``params[name]`` is a view into
it (llm.c's layout); gradients and the optimizer's moments mirror it, so zeroing, an
AdamW step, a norm or a checkpoint is one vector operation. Depends on NumPy only.
"""

import math

__all__ = ["DTYPES", "flat_views", "flat_span"]

DTYPES = ("float32", "float64")  # the dtypes a model computes in


def flat_views(buffer, shapes):
    """{name: view} of consecutive slices of the 1-D ``buffer``, reshaped to ``shapes``.

    buffer: 1-D array of exactly Σ prod(shape) elements; shapes: [(name, shape), ...].
    Writing into a view writes into ``buffer``, so one vector operation on the buffer
    (zeroing, an optimizer step, a norm) covers every tensor.
    """
    sizes = [math.prod(shape) for _, shape in shapes]
    if buffer.ndim != 1 or buffer.size != sum(sizes):
        raise ValueError(f"buffer must be 1-D with {sum(sizes)} elements for these shapes, got shape {buffer.shape}")
    views, offset = {}, 0
    for (name, shape), size in zip(shapes, sizes):
        views[name] = buffer[offset: offset + size].reshape(shape)
        offset += size
    return views


def flat_span(buffer, shapes, names):
    """The 1-D view of ``buffer`` over the tensors ``names``, which lie back to back in ``shapes``.

    buffer, shapes: as for ``flat_views``; names: consecutive entries of ``shapes``. Lets a
    model treat tensors stored apart (BERT's query, key and value weights) as one stacked
    array without copying: ``flat_span(...).reshape(3 * C, C)``.
    """
    starts, sizes, offset = {}, {}, 0
    for name, shape in shapes:
        starts[name], sizes[name] = offset, math.prod(shape)
        offset += sizes[name]
    start = starts[names[0]]
    for previous, name in zip(names, names[1:]):
        if starts[name] != starts[previous] + sizes[previous]:
            raise ValueError(f"{name!r} does not follow {previous!r} in the flat buffer")
    return buffer[start: starts[names[-1]] + sizes[names[-1]]]
