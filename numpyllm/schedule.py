"""The learning-rate schedule: linear warmup, then cosine decay to a floor.

For the step about to be taken, ``step`` = 0, 1, 2, ... (W = warmup_steps, S = max_steps):

    lr(step) = max_lr · (step + 1) / W                                   step < W
    lr(step) = min_lr + ½ (1 + cos(π · (step - W) / (S - W))) · (max_lr - min_lr)   W <= step < S
    lr(step) = min_lr                                                    step >= S

The first step already gets a non-zero rate (max_lr / W) and the warmup reaches
max_lr on step W - 1; the cosine starts at max_lr on step W and would reach min_lr
on step S. A pure function of the step, so a resumed run needs no schedule state.
"""

import math

from ._checks import check_int

__all__ = ["lr_at"]


def lr_at(step, *, max_lr, min_lr, warmup_steps, max_steps):
    """The learning rate of step ``step`` (0-based); see the module docstring for the formula."""
    for name, value in (("step", step), ("warmup_steps", warmup_steps), ("max_steps", max_steps)):
        check_int(value, name, 0)
    if warmup_steps > max_steps:
        raise ValueError(f"warmup_steps must be <= max_steps, got {warmup_steps} > {max_steps}")
    if not 0 <= min_lr <= max_lr:
        raise ValueError(f"learning rates must satisfy 0 <= min_lr <= max_lr, got min_lr={min_lr}, max_lr={max_lr}")
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    if step >= max_steps:
        return min_lr
    progress = (step - warmup_steps) / (max_steps - warmup_steps)  # in [0, 1)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (max_lr - min_lr)
