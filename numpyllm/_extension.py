"""An optional compiled extension of numpyllm: imported once, on first use, and why it is missing kept.

Both kernels (``numpyllm._attention``, ``numpyllm._layers``) are optional: a build
without a C compiler still runs on the NumPy references. ``CompiledModule`` is the one
place that imports such a module, remembers the ImportError, maps a backend name
("numpy", "cython", "auto") to the implementation that will run, and warns once when
"auto" falls back. Depends on nothing but the standard library.
"""

import importlib
import os
import warnings

__all__ = ["BACKENDS", "CompiledModule"]

BACKENDS = ("numpy", "cython", "auto")


class CompiledModule:
    """The extension ``numpyllm.<name>``, described to users as ``what`` ("attention kernel")."""

    def __init__(self, name, what):
        self.name, self.what = name, what
        self.module = None  # the imported module, once loaded
        self.error = None  # the ImportError, when it could not be imported
        self.warned_fallback = False

    def load(self):
        """The module, imported on the first call; None (and ``error`` set) when it is not built."""
        if self.module is None and self.error is None:
            # Idle OpenMP threads spin by default, taking the cores from the BLAS threads that
            # run between the kernels' parallel regions (2 cores, tiny GPT training step:
            # 6,150 tok/s spinning, 15,800 passive). libgomp reads this once, when the first
            # kernel loads it; a policy the user set is kept.
            os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
            try:
                self.module = importlib.import_module(f"numpyllm.{self.name}")
            except ImportError as exc:
                self.error = exc
        return self.module

    def available_backends(self):
        """``("numpy",)``, or ``("numpy", "cython")`` when the module is built."""
        return ("numpy", "cython") if self.load() is not None else ("numpy",)

    def resolve(self, backend, argument="backend"):
        """Map ``backend`` to "numpy" or "cython": "cython" raises RuntimeError when the module is
        not built, "auto" then falls back to "numpy" with one RuntimeWarning per process."""
        if backend not in BACKENDS:
            raise ValueError(f"{argument} must be one of {BACKENDS}, got {backend!r}")
        if backend == "numpy":
            return "numpy"
        if self.load() is not None:
            return "cython"
        if backend == "cython":
            raise RuntimeError(
                f"{argument}='cython' was requested but numpyllm's compiled {self.what} numpyllm.{self.name} "
                f"could not be imported ({self.error}). Reinstall numpyllm with a C compiler "
                f"(pip install ., or python setup.py build_ext --inplace) or use {argument}='numpy'."
            )
        if not self.warned_fallback:
            warnings.warn(f"numpyllm's compiled {self.what} is unavailable ({self.error}); "
                          f"{argument}='auto' uses the slower NumPy reference.", RuntimeWarning, stacklevel=4)
            self.warned_fallback = True
        return "numpy"
