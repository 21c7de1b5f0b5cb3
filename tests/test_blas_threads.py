"""numpyllm._blas_threads: imported before NumPy, numpyllm keeps OpenBLAS's idle threads from spinning."""
import os
import subprocess
import sys

import pytest

# Child process (OpenBLAS reads the setting when NumPy loads it): a threaded product, then the
# CPU time the process burns while its main thread sleeps 0.1 s (the idle workers' polling).
CHILD = """
import resource, sys, time
if sys.argv[1] == "numpyllm-first":
    import numpyllm
import numpy as np
def cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
a = np.ones((1024, 1024), dtype=np.float32)
a @ a
a @ a
before = cpu_seconds()
time.sleep(0.1)
print(cpu_seconds() - before)
"""


def idle_cpu_seconds(mode):
    env = {name: value for name, value in os.environ.items() if name != "OPENBLAS_THREAD_TIMEOUT"}
    env.update(OPENBLAS_NUM_THREADS="2", OMP_NUM_THREADS="2")
    out = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True, check=True, env=env)
    return float(out.stdout)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2 if hasattr(os, "sched_getaffinity") else True,
                    reason="OpenBLAS runs worker threads only with two or more usable cores (Linux)")
def test_openblas_workers_sleep_after_a_product_when_numpyllm_is_imported_first():
    # By default the one worker polls through the whole sleep (~0.1 s of CPU); with numpyllm's
    # 2^18-cycle timeout it sleeps within a millisecond.
    assert idle_cpu_seconds("numpy-alone") > 0.04
    assert idle_cpu_seconds("numpyllm-first") < 0.02


def test_a_timeout_the_user_set_is_kept():
    env = dict(os.environ, OPENBLAS_THREAD_TIMEOUT="25")
    code = "import numpyllm, os; print(os.environ['OPENBLAS_THREAD_TIMEOUT'])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == "25"
