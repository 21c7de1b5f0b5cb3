"""Data-parallel training over MPI: the world of processes a training loop runs in.

``world()`` is the only entry point. Started by ``mpiexec -n K`` (K > 1) it returns an
``MPIWorld`` over MPI.COMM_WORLD; otherwise a ``World`` of one process whose methods
change nothing, and mpi4py is never imported. A loop written against the World API
runs unchanged on one process or K:

    with world.training():                      only rank 0 prints; an exception on any
                                                rank aborts the whole job (no hang)
    world.check_divisible(batch_size, "--batch-size")
    state = world.share(state)                  rank 0's setup (tokenizer, config) for all
    world.broadcast_(model.flat_params)         every rank starts from rank 0's weights
    batch_r = world.shard(batch)                rank r's rows r·B/K .. (r+1)·B/K - 1 of every
                                                array of a global batch every rank drew alike
                                                (B not a multiple of K: r·B//K .., within one)
    loss = world.mean(loss_r, n_r, grads)       the global batch's mean loss and gradient
    if world.is_root: write files; world.barrier()
    while not world.any(interrupted): ...       every rank stops at the same step

The arithmetic of ``mean``: rank r's loss and gradient are means over its n_r scored
targets (negative targets are ignored), so with N = Σ n_r

    loss = Σ_r n_r · loss_r / N            grads = Σ_r (n_r / N) · grads_r

which is the one-process mean over the same N targets, up to rounding. The gradient
sum is one in-place Allreduce of the flat buffer the grads dict is a view of (every
model's ``loss_and_grads`` returns such views); the two scalars go in a second, tiny one.

The processes must see one file system (the run directory, --data, --init): rank 0
writes the encoded corpus and the checkpoints there and the others read them. Each
rank gets cores_per_node // ranks_per_node BLAS / OpenMP threads unless
OMP_NUM_THREADS or a BLAS's own variable is set. Depends on NumPy; on mpi4py,
threadpoolctl and this package's kernel loaders (attention, backend) only under mpiexec.
"""

import contextlib
import os
import sys
import time
import traceback
import zlib

import numpy as np

__all__ = ["LAUNCHER_SIZE_VARIABLES", "launched_size", "world", "World", "MPIWorld"]

# What launchers export as the number of processes they started: MPICH's and Intel MPI's
# Hydra and Slurm's PMI (PMI_SIZE; Hydra also MPI_LOCALNRANKS, the count on this node),
# Open MPI, MVAPICH.
LAUNCHER_SIZE_VARIABLES = ("PMI_SIZE", "MPI_LOCALNRANKS", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
# Set by the user, these fix the thread count; the world then leaves it alone.
_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
# Errors a user can fix: printed as one line (as the command line does), exit status 2.
_USER_ERRORS = (ValueError, TypeError, OSError, ImportError)
_POLL_SECONDS = 0.002  # a waiting rank sleeps this long between checks instead of spinning
_ABORT_GRACE_SECONDS = 0.5  # between printing why a rank fails and aborting the job
_mpi_world = None  # this process's MPIWorld once made: there is one MPI.COMM_WORLD per process


def launched_size(environ=None):
    """The process count a launcher announced in ``environ`` (default os.environ); 1 if none did."""
    environ = os.environ if environ is None else environ
    sizes = [int(environ[name]) for name in LAUNCHER_SIZE_VARIABLES if environ.get(name, "").isdigit()]
    return max(sizes, default=1)


def world():
    """The processes this one trains with: an MPIWorld under ``mpiexec -n K`` (K > 1), else a World.

    Raises ImportError when a launcher started K > 1 processes but mpi4py is missing, or
    when the MPI library mpi4py loaded sees a world of one process (the launcher belongs
    to another MPI: every process would silently train its own copy of the model).
    """
    global _mpi_world
    size = launched_size()
    if size == 1:
        return World()
    if _mpi_world is not None:
        return _mpi_world
    try:
        from mpi4py import MPI
    except ImportError as error:
        raise ImportError(f"started by an MPI launcher on {size} processes, but mpi4py cannot be imported "
                          f"({error}); install it with pip install \"numpyllm[mpi]\"") from None
    if MPI.COMM_WORLD.Get_size() == 1:
        announced = ", ".join(f"{name}={os.environ[name]}" for name in LAUNCHER_SIZE_VARIABLES if name in os.environ)
        raise ImportError(
            f"the launcher started {size} processes ({announced}) but mpi4py's MPI library "
            f"({_library_name(MPI)}) sees a world of 1: each process would train "
            "its own model. Launch with the mpiexec of the MPI mpi4py uses (python -c \"import mpi4py; "
            "print(mpi4py.get_config())\"; with pip install mpich it is that package's mpiexec)")
    _mpi_world = MPIWorld(MPI)
    return _mpi_world


def _library_name(MPI):
    """The first line of the MPI library's version string, spaces squeezed: "MPICH Version: 5.0.2"."""
    return " ".join(MPI.Get_library_version().splitlines()[0].split())


class World:
    """One process: rank 0 of 1. Every method leaves its arguments as they are."""

    rank = 0
    size = 1
    is_root = True

    def describe(self):
        """A line for the run's output saying how it is parallel; None for one process."""
        return None

    @contextlib.contextmanager
    def training(self):
        """Context of a training run: under MPI, rank 0 alone writes to stdout and stderr,
        and an exception on any rank prints on that rank and aborts every rank."""
        yield

    def check_divisible(self, batch_size, name):
        """Raise ValueError unless ``batch_size`` splits evenly over the processes."""

    def shard(self, batch):
        """This rank's equal slice of the rows of ``batch``: an array, or a tuple, list or dict
        of them (each sliced alike). The whole batch, as it is, on one process."""
        return batch

    def mean(self, loss, count, grads=None):
        """The global batch's mean ``loss`` over every rank's ``count`` scored targets; with
        ``grads`` (this rank's mean gradient, a dict of views into one flat buffer) those
        become the global mean gradient, in place, identical on every rank. See the module
        docstring."""
        return loss

    def sum_(self, array):
        """Replace ``array`` by its sum over all ranks, in place (one Allreduce)."""

    def broadcast_(self, array):
        """Overwrite ``array`` on every rank with rank 0's, in place."""

    def share(self, value):
        """Rank 0's ``value`` (any picklable object) on every rank; the others wait for it."""
        return value

    def any(self, flag):
        """True on every rank when ``flag`` is true on any."""
        return flag

    def barrier(self):
        """Wait until every rank has come here; waiting ranks sleep rather than spin."""

    def check_same(self, array, what):
        """Raise RuntimeError when the ranks' copies of ``array`` differ in any bit."""


class MPIWorld(World):
    """K > 1 processes of MPI.COMM_WORLD; rank 0 is the root that writes every file."""

    def __init__(self, MPI):
        self._MPI = MPI
        self._comm = MPI.COMM_WORLD
        self.rank, self.size = self._comm.Get_rank(), self._comm.Get_size()
        self.is_root = self.rank == 0
        self._library = _library_name(MPI)
        self._threads = self._limit_threads()
        previous_hook = sys.excepthook

        def abort_on_uncaught(*exc_info):  # what escapes outside training() still ends the job
            previous_hook(*exc_info)
            sys.stderr.flush()
            time.sleep(_ABORT_GRACE_SECONDS)  # as in _abort: let the launcher forward the traceback
            self._comm.Abort(1)

        sys.excepthook = abort_on_uncaught

    def _limit_threads(self):
        """cores // ranks on this node BLAS and OpenMP threads for this rank (at least 1),
        unless the environment fixes a count; returns a description of the choice."""
        fixed = [f"{name}={os.environ[name]}" for name in _THREAD_VARIABLES if name in os.environ]
        if fixed:
            return "threads as " + ", ".join(fixed)
        from threadpoolctl import threadpool_limits

        from . import attention, backend

        for kernels in (attention, backend):  # load the compiled kernels, and with them OpenMP, so the limit
            kernels.available_backends()      # reaches OpenMP as well as the BLAS
        local = self._comm.Split_type(self._MPI.COMM_TYPE_SHARED)
        ranks_here = local.Get_size()
        local.Free()
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        threads = max(1, cores // ranks_here)
        threadpool_limits(limits=threads)  # stays in force: the returned context is never exited
        return f"{threads} BLAS thread{'s' * (threads > 1)} each"

    def describe(self):
        return f"data-parallel on {self.size} MPI processes ({self._library}), {self._threads}"

    @contextlib.contextmanager
    def training(self):
        with contextlib.ExitStack() as stack:
            if not self.is_root:  # rank 0 says it all; errors still reach the terminal (_abort)
                devnull = stack.enter_context(open(os.devnull, "w"))
                stack.enter_context(contextlib.redirect_stdout(devnull))
                stack.enter_context(contextlib.redirect_stderr(devnull))
            try:
                yield
            except (Exception, KeyboardInterrupt) as error:
                self._abort(error)

    def _abort(self, error):
        """Print ``error`` naming this rank, then end every rank of the job (MPI_Abort)."""
        stderr = sys.__stderr__
        where = f"rank {self.rank} of {self.size}"
        if isinstance(error, _USER_ERRORS):
            print(f"numpyllm: error on {where}: {error}", file=stderr)
            status = 2
        elif isinstance(error, KeyboardInterrupt):
            print(f"numpyllm: interrupted on {where}", file=stderr)
            status = 130
        else:
            print(f"numpyllm: {type(error).__name__} on {where}; aborting every rank:", file=stderr)
            traceback.print_exception(error, file=stderr)
            status = 1
        stderr.flush()
        # MPI_Abort makes the launcher kill every rank at once; on a busy machine it could do
        # so before forwarding the message just written, and the job would end unexplained.
        time.sleep(_ABORT_GRACE_SECONDS)
        self._comm.Abort(status)

    def check_divisible(self, batch_size, name):
        if batch_size % self.size:
            raise ValueError(f"{name} ({batch_size}) must be a multiple of the {self.size} MPI processes: "
                             f"each takes an equal slice of the batch (try {batch_size + -batch_size % self.size})")

    def shard(self, batch):
        if isinstance(batch, dict):
            return {key: self.shard(value) for key, value in batch.items()}
        if isinstance(batch, (tuple, list)):
            return type(batch)(self.shard(value) for value in batch)
        n = len(batch)  # rows r·n//K .. (r+1)·n//K - 1: equal for a full batch, within one for a short last one
        return batch[self.rank * n // self.size:(self.rank + 1) * n // self.size]

    def mean(self, loss, count, grads=None):
        totals = np.array([loss * count, count], dtype=np.float64)
        self._comm.Allreduce(self._MPI.IN_PLACE, totals, op=self._MPI.SUM)
        loss_sum, total = totals
        if grads is not None:
            flat_grads = _flat_buffer(grads)
            flat_grads *= count / total
            self.sum_(flat_grads)
        return float(loss_sum / total)

    def sum_(self, array):
        self._comm.Allreduce(self._MPI.IN_PLACE, array, op=self._MPI.SUM)

    def broadcast_(self, array):
        self._comm.Bcast(array, root=0)

    def share(self, value):
        self.barrier()
        return self._comm.bcast(value if self.is_root else None, root=0)

    def any(self, flag):
        return bool(self._comm.allreduce(bool(flag), op=self._MPI.LOR))

    def barrier(self):
        request = self._comm.Ibarrier()
        while not request.Test():
            time.sleep(_POLL_SECONDS)

    def check_same(self, array, what):
        checksums = self._comm.allgather(zlib.crc32(np.ascontiguousarray(array).view(np.uint8)))
        if len(set(checksums)) > 1:
            differ = [rank for rank, c in enumerate(checksums) if c != checksums[0]]
            raise RuntimeError(f"{what} on rank(s) {differ} differ from rank 0's: the ranks no longer train "
                               "one model (an Allreduce that is not bitwise identical on every rank?)")


def _flat_buffer(views):
    """The 1-D buffer behind ``views``, a {name: view} dict from ``numpyllm.params.flat_views``.

    Raises ValueError when the arrays are not views that cover one 1-D buffer exactly.
    """
    arrays = list(views.values())
    buffer = arrays[0].base if arrays else None
    if (buffer is None or buffer.ndim != 1 or any(a.base is not buffer for a in arrays)
            or sum(a.size for a in arrays) != buffer.size):
        raise ValueError("grads must be views of one flat 1-D buffer, as flat_views makes them, "
                         "for the one Allreduce of a step")
    return buffer
