"""OpenBLAS's idle threads, told to sleep soon after a product instead of spinning for 0.1 s.

After every threaded product OpenBLAS's worker threads keep polling for the next one for
2^28 CPU cycles (about 0.1 s) before they sleep. numpyllm's compiled kernels (attention,
layernorm, GELU, AdamW) run on OpenMP threads between those products, and on a machine
with as many cores as threads the polling workers take half of each core from them: on
2 cores of an AMD EPYC (Zen 3) a causal attention forward (B = 8, H = 6, T = 256) took
23 ms right after a product and 11 ms without one before it. With 2^18 cycles (about
0.1 ms) the kernels lose at most that much per product, and the workers still stay awake
across the microseconds between back-to-back products (the decoding's matrix-vector
products), so those do not pay a wake-up each.

OpenBLAS reads OPENBLAS_THREAD_TIMEOUT (the power of two; it clamps it to [4, 30]) once, when
a library that links it loads: NumPy's copy at ``import numpy``, SciPy's when the attention
kernel first loads. ``import numpyllm`` imports this module first, so the setting reaches
NumPy's OpenBLAS only when numpyllm is imported before NumPy (``python -m numpyllm`` and the
benchmarks are); otherwise set it in the environment. A value already set is kept.
"""

import os

THREAD_TIMEOUT_POWER = 18

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", str(THREAD_TIMEOUT_POWER))
