"""numpyllm.memory: with freed memory retained, repeating a step's large allocations faults no new pages."""
import subprocess
import sys

import pytest

from numpyllm.memory import retain_freed_memory

# Child process (the setting is process-wide): allocate, touch and free 64 MB arrays, five times,
# and print the minor page faults of the last four rounds.
CHILD = """
import resource, sys
import numpy as np
from numpyllm.memory import retain_freed_memory
retained = retain_freed_memory() if sys.argv[1] == "retain" else None
def step():
    a = np.ones(16 << 20, dtype=np.float32)  # 64 MB: above glibc's largest mmap threshold
    b = a * 2.0
    return float(b[-1])
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):
    step()
print(retained, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(mode):
    out = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True, check=True).stdout
    retained, count = out.split()
    return retained, int(count)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc only")
def test_retained_memory_is_reused_without_page_faults():
    retained, retained_faults = faults("retain")
    _, default_faults = faults("default")
    assert retained == "True"
    # Two 64 MB arrays a round are at least 64 pages (2 MiB huge pages, which NumPy asks for;
    # 32,768 pages of 4 KiB without them): the defaults fault them in afresh every round.
    assert default_faults >= 4 * 64
    assert retained_faults < 64


def test_limit_is_checked():
    for bad in (0, -1, 2**31, 1.5, "1"):
        with pytest.raises(ValueError, match="limit_bytes must be an int"):
            retain_freed_memory(bad)
