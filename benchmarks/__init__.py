"""Speed benchmarks (``python -m benchmarks.<name> --help``)."""

import numpyllm  # noqa: F401  first, so its OpenBLAS setting reaches NumPy (numpyllm._blas_threads)
