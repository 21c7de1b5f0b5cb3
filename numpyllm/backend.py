"""Which implementation runs the element-wise layers and the optimizer: NumPy or compiled kernels.

    from numpyllm import backend
    backend.set_backend("numpy")    # the NumPy reference written in layers.py and optim.py
    backend.set_backend("cython")   # the kernels of numpyllm._layers (RuntimeError if not built)
    backend.set_backend("auto")     # the kernels when built, else the reference (the default)
    with backend.using("numpy"): ...    # the same, for one block

One process-wide setting, read at every call by ``numpyllm.layers`` (layernorm, both GELU
forms, softmax cross-entropy, linear's bias gradient, and linear's float32 products where
``numpyllm._layers.matrix_products()`` is "avx512": CPUs with AVX-512) and
``numpyllm.optim`` (AdamW, clip_grad_norm). Every model composed of those functions follows it without code of its
own, and the caches the two implementations return are interchangeable (a kernel forward's
cache feeds a reference backward and vice versa). The kernels take float32 and float64
arrays of one dtype; anything else runs the reference whatever the setting. Both agree
to rounding: float64 to ~1e-12, float32 to ~1e-5 of the output's scale (tests/test_layer_kernels.py).

Attention is not governed by this setting: ``numpyllm.attention`` takes a backend argument
per call (and a GPT its ``attention_backend``).

Depends on NumPy only; the kernel module is imported lazily and optionally.
"""

import contextlib

import numpy as np

from ._extension import BACKENDS, CompiledModule

__all__ = ["BACKENDS", "set_backend", "get_backend", "using", "available_backends", "kernel"]

_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

_setting = "auto"
KERNEL = CompiledModule("_layers", "layer kernels")


def available_backends():
    """``("numpy",)``, or ``("numpy", "cython")`` when the kernels are built."""
    return KERNEL.available_backends()


def set_backend(name):
    """Select the implementation for every later call; returns the previous setting.

    name: "numpy", "cython" or "auto". "cython" raises RuntimeError here, at once, when
    the kernels are not built.
    """
    global _setting
    if name != "auto":
        KERNEL.resolve(name)  # raises for an unknown name, or for "cython" when the kernels are not built
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
    if KERNEL.resolve(_setting) == "numpy":
        return None
    module = KERNEL.module
    dtype = arrays[0].dtype if isinstance(arrays[0], np.ndarray) else None
    if dtype not in _FLOAT_DTYPES or not all(isinstance(a, np.ndarray) and a.dtype == dtype for a in arrays):
        return None
    return module
