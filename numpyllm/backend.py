"""Which implementation runs the element-wise layers and the optimizer: NumPy or compiled kernels.

    from numpyllm import backend
    backend.set_backend("numpy")    # the NumPy reference written in layers.py and optim.py
    backend.set_backend("cython")   # the kernels of numpyllm._layers (RuntimeError if not built)
    backend.set_backend("auto")     # the kernels when built, else the reference (the default)
    with backend.using("numpy"): ...    # the same, for one block

One process-wide setting, read at every call by ``numpyllm.layers`` (layernorm, both GELU
forms, softmax cross-entropy, linear's bias gradient) and ``numpyllm.optim`` (AdamW,
clip_grad_norm). Every model composed of those functions follows it without code of its
own, and the caches the two implementations return are interchangeable (a kernel forward's
cache feeds a reference backward and vice versa). The kernels take float32 and float64
arrays of one dtype; anything else runs the reference whatever the setting. Both agree
to rounding: float64 to ~1e-12, float32 to ~1e-5 of the output's scale (tests/test_layer_kernels.py).

Attention is not governed by this setting: ``numpyllm.attention`` takes a backend argument
per call (and a GPT its ``attention_backend``).

Depends on NumPy only; the kernel module is imported lazily and optionally.
"""

import contextlib
import warnings

import numpy as np

__all__ = ["BACKENDS", "set_backend", "get_backend", "using", "available_backends", "kernel"]

BACKENDS = ("numpy", "cython", "auto")
_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

_setting = "auto"
_kernel = None  # numpyllm._layers, once imported
_kernel_error = None  # why it could not be imported
_warned_fallback = False


def _load_kernel():
    """Import numpyllm._layers once; remember the error if it is not built."""
    global _kernel, _kernel_error
    if _kernel is None and _kernel_error is None:
        try:
            from . import _layers
        except ImportError as exc:
            _kernel_error = exc
        else:
            _kernel = _layers
    return _kernel


def available_backends():
    """``("numpy",)``, or ``("numpy", "cython")`` when the kernels are built."""
    return ("numpy", "cython") if _load_kernel() is not None else ("numpy",)


def set_backend(name):
    """Select the implementation for every later call; returns the previous setting.

    name: "numpy", "cython" or "auto". "cython" raises RuntimeError here, at once, when
    the kernels are not built.
    """
    global _setting
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    if name == "cython" and _load_kernel() is None:
        raise RuntimeError(
            "backend 'cython' was requested but the compiled layer kernels numpyllm._layers could "
            f"not be imported ({_kernel_error}). Build them with a C compiler "
            "(python setup.py build_ext --inplace, or pip install .) or use 'numpy'."
        )
    previous, _setting = _setting, name
    return previous


def get_backend():
    """The current setting: "numpy", "cython" or "auto"."""
    return _setting


@contextlib.contextmanager
def using(name):
    """``set_backend(name)`` inside the block; the previous setting returns after it."""
    previous = set_backend(name)
    try:
        yield
    finally:
        set_backend(previous)


def kernel(*arrays):
    """The kernel module to run a layer on ``arrays``, or None for the NumPy reference.

    None when the setting is "numpy", when "auto" finds no kernels (warning once), or when
    the arrays are not all ndarrays of one float32/float64 dtype.
    """
    global _warned_fallback
    if _setting == "numpy":
        return None
    module = _load_kernel()
    if module is None:
        if not _warned_fallback:
            warnings.warn(f"numpyllm's compiled layer kernels are unavailable ({_kernel_error}); "
                          "the layers and the optimizer use the slower NumPy reference.",
                          RuntimeWarning, stacklevel=3)
            _warned_fallback = True
        return None
    dtype = arrays[0].dtype if isinstance(arrays[0], np.ndarray) else None
    if dtype not in _FLOAT_DTYPES or not all(isinstance(a, np.ndarray) and a.dtype == dtype for a in arrays):
        return None
    return module
