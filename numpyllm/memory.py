"""Keep the memory a training step frees for the next step (glibc's malloc only).

A NumPy training step allocates its activations and gradients afresh and frees them at
the end. glibc's malloc hands arrays over its mmap threshold (at most 32 MB) straight
back to the kernel when they are freed, and trims the top of its heap once more than its
trim threshold lies free there, so the next step asks the kernel for the same memory
again and faults every page of it in once more: ~45,000 page faults and 0.3 s of system
time per step of ``benchmarks.model``'s GPT (6 × 384, B = 8, T = 256, a (B, T, 4096)
logits array of 34 MB and a 49 MB gradient buffer among them), about 7% of its CPU time.
``retain_freed_memory`` turns both off, so a step reuses the pages of the step before.

It is process-wide and not undone, so the library never calls it on import: the training
loop (``numpyllm.loop.run_training``) calls it, and the benchmarks that time training
steps call it as the loop would. The process then keeps up to its peak working set
(plus ``limit_bytes`` of free heap) until it ends.
"""

import ctypes
import sys

# mallopt's parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def retain_freed_memory(limit_bytes=1 << 30):
    """Ask glibc's malloc to keep freed memory for reuse; return whether it agreed.

    Large arrays come from the heap instead of fresh mappings (M_MMAP_MAX = 0) and up
    to ``limit_bytes`` of free memory stays at the top of the heap (M_TRIM_THRESHOLD).
    Elsewhere than Linux with glibc it does nothing and returns False.
    """
    if not isinstance(limit_bytes, int) or not 0 < limit_bytes < 2**31:
        raise ValueError(f"limit_bytes must be an int in [1, 2**31), got {limit_bytes!r}")
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # glibc's; musl has none
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, limit_bytes) == 1
