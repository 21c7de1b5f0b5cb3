"""Central finite differences for the gradient checks of tests/test_layers.py and tests/test_model.py.

Checks run in float64 on a random subset of each tensor's entries (every entry of a
large tensor would cost two forward passes each).
"""

import numpy as np

STEP = 1e-6  # truncation error ~STEP² · f''' stays tiny even where layernorm over 2 channels is sharply curved;
#             rounding error ~1e-16 · |f| / STEP is accounted for in gradient_error
RTOL = 1e-6  # DESIGN.md: backward matches central differences to ~1e-6 relative


def numerical_gradient(f, x, flat_indices, step=STEP):
    """∂f/∂x at the given flat indices of ``x`` by central differences (f() - scalar).

    x is perturbed in place, one entry at a time, and restored exactly.
    """
    flat = x.reshape(-1)
    assert np.shares_memory(flat, x), "x must be contiguous so its entries can be perturbed in place"
    grad = np.empty(len(flat_indices))
    for n, i in enumerate(flat_indices):
        saved = flat[i]
        flat[i] = saved + step
        f_plus = f()
        flat[i] = saved - step
        f_minus = f()
        flat[i] = saved
        grad[n] = (f_plus - f_minus) / (2 * step)
    return grad


def gradient_error(f, x, analytic, rng, n_entries=12, step=STEP):
    """Compare ``analytic`` (the full gradient of f() with respect to x) with central differences.

    Returns (error, allowed_slack): error is the largest |analytic - numerical| over random
    entries of x divided by max |analytic| over the whole tensor (not per entry: entries
    whose true gradient is ~0 would make a per-entry ratio meaningless); allowed_slack is
    the rounding noise of the differences themselves, about machine-eps · |f| / step,
    on the same relative scale (it only matters when the whole gradient is tiny).
    """
    assert analytic.shape == x.shape, f"gradient shape {analytic.shape} != input shape {x.shape}"
    picks = rng.choice(x.size, size=min(n_entries, x.size), replace=False)
    numeric = numerical_gradient(f, x, picks, step)
    rounding_noise = 100 * np.finfo(np.float64).eps * max(abs(f()), 1.0) / step
    scale = max(float(np.max(np.abs(analytic))), rounding_noise)
    error = float(np.max(np.abs(analytic.reshape(-1)[picks] - numeric)))
    return error / scale, rounding_noise / scale


def assert_gradient_matches(f, x, analytic, rng, name, n_entries=12, rtol=RTOL):
    """Assert the analytic gradient of f() with respect to x matches central differences."""
    error, slack = gradient_error(f, x, analytic, rng, n_entries)
    assert error <= rtol + slack, f"gradient of {name}: relative error {error:.2e} > {rtol:.0e} + {slack:.0e}"
