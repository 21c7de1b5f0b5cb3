"""Checks for arguments: an int at least some minimum, a real number in an interval, token ids.

One convention everywhere the library takes a count, a seed, a hyper-parameter or ids:

- the wrong type (bool, a str, a float where an int is wanted, ...) -> TypeError;
- the right type but out of range (or NaN) -> ValueError;
- the message names the argument, says what was expected and what came, e.g.
  ``top_k must be >= 1 or None, got 0`` or ``lr must be a real number in [0.0, inf), got str 'fast'``.

bool is refused although it subclasses int: ``seed=True`` is a mistake, not 1. NumPy
scalars (np.int64, np.float32) are accepted; the checks return plain int / float.
"""

import math
import numbers
import reprlib

import numpy as np

__all__ = ["check_int", "check_real", "check_token_ids"]


def _got(value):
    """What came, for a TypeError: the type and a short repr (an array's repr is cut)."""
    return f"{type(value).__name__} {reprlib.repr(value)}"


def check_int(value, name, minimum, optional=False, hint=None):
    """Return ``value`` as an int after checking it is an integer >= ``minimum``.

    optional: None is accepted too (and returned). hint: a few words on the bound or a
    special value, added to the message in parentheses. Raises TypeError for a bool or
    a non-integral type (3.0 included), ValueError for an integer below ``minimum``.
    """
    if value is None and optional:
        return None
    expected = f">= {minimum}" + (" or None" if optional else "") + (f" ({hint})" if hint else "")
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int {expected}, got {_got(value)}")
    if value < minimum:
        raise ValueError(f"{name} must be {expected}, got {value}")
    return int(value)


def check_real(value, name, low=-math.inf, high=math.inf, *, low_inclusive=True, high_inclusive=False,
               optional=False, hint=None):
    """Return ``value`` as a float after checking it is a real number between ``low`` and ``high``.

    The interval is half-open by default, [low, high) as in ``range``, so with the
    default ``high`` an infinite value is refused; ``low_inclusive`` / ``high_inclusive``
    close or open either end (``high=math.inf, high_inclusive=True`` admits infinity).
    NaN lies in no interval. optional: None is accepted too (and returned). hint: as
    for ``check_int``. Raises TypeError for a bool or a non-real type, ValueError for a
    value outside.
    """
    if value is None and optional:
        return None
    interval = f"{'[' if low_inclusive else '('}{low}, {high}{']' if high_inclusive else ')'}"
    interval += (" or None" if optional else "") + (f" ({hint})" if hint else "")
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number in {interval}, got {_got(value)}")
    above_low = value >= low if low_inclusive else value > low
    below_high = value <= high if high_inclusive else value < high
    if not (above_low and below_high):  # both False for NaN
        raise ValueError(f"{name} must be in {interval}, got {value}")
    return float(value)


def check_token_ids(ids, name, vocab_size, low=0):
    """Return ``ids`` as an ndarray after checking it holds integer token ids in [low, vocab_size).

    ids: array-like of any shape (the caller checks the shape). low: None admits every
    negative value (targets: the loss ignores them, -1 and Hugging Face's -100 alike). Raises TypeError for a non-integer dtype and ValueError
    naming the first id outside the range. An empty array passes whatever its dtype
    (``np.asarray([])`` is float64 but holds no id of the wrong type).
    """
    ids = np.asarray(ids)
    if ids.size == 0:
        return ids
    if ids.dtype.kind not in "iu":
        raise TypeError(f"{name} must be an integer array of token ids, got dtype {ids.dtype}")
    if low is None:
        if ids.max() >= vocab_size:
            bad = ids[ids >= vocab_size].flat[0]
            raise ValueError(f"{name} entries must be < {vocab_size} (negative: ignored), got {bad}")
    elif ids.min() < low or ids.max() >= vocab_size:  # two reductions; the mask only on failure
        bad = ids[(ids < low) | (ids >= vocab_size)].flat[0]
        raise ValueError(f"{name} entries must be in [{low}, {vocab_size}), got {bad}")
    return ids
