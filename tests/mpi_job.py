"""A training job with one injected fault, for tests/test_distributed.py to run under mpiexec.

    mpiexec -n K python tests/mpi_job.py FAULT RANK STEP  TRAIN-ARGS...

FAULT happens on rank RANK only, while optimizer step STEP (1-based) runs, then the
job continues as ``python -m numpyllm train TRAIN-ARGS...``:

    interrupt   Ctrl-C (SIGINT) arrives on that rank alone
    raise       the rank raises RuntimeError
    diverge     the rank's weights drift by one rounding error (the ranks no longer agree)
"""

import signal
import sys

import numpy as np
from mpi4py import MPI

import numpyllm.schedule
from numpyllm import AdamW
from numpyllm.__main__ import main


def inject(fault, step):
    """Patch the once-per-step schedule (or the optimizer) so ``fault`` happens during ``step``."""
    lr_at = numpyllm.schedule.lr_at

    def lr_with_fault(index, **schedule):
        if index == step - 1:
            if fault == "interrupt":
                signal.raise_signal(signal.SIGINT)
            elif fault == "raise":
                raise RuntimeError(f"injected fault on rank {MPI.COMM_WORLD.Get_rank()}")
        return lr_at(index, **schedule)

    adamw_step = AdamW.step

    def drifting_step(self, grads, lr=None):
        adamw_step(self, grads, lr)
        if self.step_count == step:
            first = next(iter(self.params.values()))
            first.flat[0] = np.nextafter(first.flat[0], np.inf)

    numpyllm.schedule.lr_at = lr_with_fault
    if fault == "diverge":
        AdamW.step = drifting_step


if __name__ == "__main__":
    fault, rank, step, *train_args = sys.argv[1:]  # train_args: --out DIR ... as for numpyllm train
    if fault not in ("interrupt", "raise", "diverge"):
        sys.exit(f"unknown fault {fault!r}")
    if MPI.COMM_WORLD.Get_rank() == int(rank):
        inject(fault, int(step))
    sys.exit(main(["train", *train_args]))
