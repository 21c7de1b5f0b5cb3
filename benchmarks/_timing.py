"""Shared helpers for the benchmarks: timing, peak memory, the machine, markdown tables.

- ``measure(run, setup=...)``: warm-up, then the median of repeated wall-clock times
  (``time.perf_counter``), with ``setup`` kept outside the timer; ``measure_side_by_side``
  does it for several runners, their repeats interleaved.
- ``interleaved_medians(runners, rounds, setups=None, settle_seconds=0.0)``: several implementations timed side by side,
  each once per round, so a change in the machine's load hits them all alike.
- ``PeakRSS``: the peak growth of this process's resident memory during a block, read
  from Linux's ``VmHWM`` after resetting it through ``/proc/self/clear_refs``. Resident
  memory sees every allocation (NumPy, torch, a C extension's raw ``malloc``), which
  ``tracemalloc`` does not. ``run_in_fresh_process`` runs such a measurement in a fresh
  child process, so the parent's heap cannot hide or inflate it.
- ``limited_threads(n)``: BLAS/OpenMP (threadpoolctl) and torch limited to ``n`` threads in a block.
- ``machine_info`` / ``format_machine`` (the CPU, its family/model and vector extensions, the
  BLAS libraries and the CPU kernels they chose), ``markdown_table``.

Depends only on the standard library (and threadpoolctl and torch when present;
``limited_threads`` needs threadpoolctl).
"""

import concurrent.futures
import contextlib
import ctypes
import ctypes.util
import dataclasses
import gc
import importlib.metadata
import math
import multiprocessing
import os
import platform
import statistics
import time

from numpyllm import attention, backend

# Load numpyllm's compiled kernels at import, before any benchmark imports torch or limits
# threads: they load the one OpenMP runtime the process shares with torch, and with it the
# PASSIVE wait policy numpyllm asks for (numpyllm._extension) — loaded after torch, it
# would spin, and the two sides of a comparison would not run under one policy — and
# scipy's BLAS, which a thread limit set before it is loaded would not reach.
attention.available_backends(), backend.available_backends()

# --------------------------------------------------------------------------- timing


@dataclasses.dataclass
class Timing:
    """Seconds per call: the median over repeats, and every repeat's value."""

    median: float
    samples: list
    calls_per_repeat: int


def measure(run, *, repeats, setup=lambda: None, min_seconds=0.0, max_calls=10_000):
    """Time ``run(state)``; ``state = setup()`` is built before the timer starts (default: None).

    ``measure_side_by_side`` with one runner: returns (Timing, the last call's result).
    """
    return measure_side_by_side({None: (run, setup)}, repeats=repeats, min_seconds=min_seconds,
                                max_calls=max_calls)[None]


def measure_side_by_side(runners, *, repeats, min_seconds=0.0, max_calls=10_000):
    """Time several runners ({name: (run, setup)}, each timed as ``run(setup())``, the state
    built before the timer starts) in interleaved repeats; returns {name: (Timing, last result)}.

    One warm-up call of each first (it pays one-time costs: thread pools, lazy imports, page
    faults). Then ``repeats`` rounds; in each, every runner in turn times enough back-to-back
    calls to last about ``min_seconds`` (so microsecond calls are not lost in timer noise), and
    a repeat's value is its time divided by its call count. As in ``interleaved_medians``, a
    change of the machine's speed during the run reaches every runner in the same rounds.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    calls, results, samples = {}, {}, {name: [] for name in runners}
    for name, (run, setup) in runners.items():
        state = setup()
        start = time.perf_counter()
        results[name] = run(state)
        warm_up_seconds = time.perf_counter() - start
        calls[name] = min(max_calls, max(1, math.ceil(min_seconds / max(warm_up_seconds, 1e-9))))
    for _ in range(repeats):
        for name, (run, setup) in runners.items():
            states = [setup() for _ in range(calls[name])]
            start = time.perf_counter()
            for state in states:
                results[name] = run(state)
            samples[name].append((time.perf_counter() - start) / calls[name])
            del states
    return {name: (Timing(statistics.median(samples[name]), samples[name], calls[name]), results[name])
            for name in runners}


@dataclasses.dataclass
class RoundsTiming:
    """One runner over interleaved rounds: the median and every timed round's seconds,
    and the result of its first call (the warm-up) and of its last."""

    median: float
    samples: list
    first_result: object
    last_result: object


def interleaved_medians(runners, rounds, setups=None, settle_seconds=0.0):
    """Time ``runners`` ({name: call()}) side by side; returns {name: RoundsTiming}.

    ``setups`` ({name: setup()}, optional): a runner named there is called as
    ``call(setup())``, its state built before the timer starts (e.g. an autograd
    graph for a backward), afresh for every call. ``settle_seconds``: idle time, untimed,
    before every call (for threads of the previous call that still spin, such as OpenBLAS's).

    Round 0 is a warm-up (it pays one-time costs: thread pools, lazy imports, caches),
    then ``rounds`` timed rounds. Every round calls each runner once, in the dict's
    order, and times that one call (``time.perf_counter``). Interleaving is the point:
    when the machine's load changes during a run (another process, clock throttling),
    every runner sees the change in the same rounds, so their medians stay comparable;
    timing one runner's repeats after another's would charge the change to whichever
    ran then. Meant for calls long enough (milliseconds and up) to time one at a time;
    ``measure`` batches shorter ones.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    samples = {name: [] for name in runners}
    first_result, last_result = {}, {}
    setups = setups or {}
    for round_index in range(rounds + 1):
        for name, run in runners.items():
            arguments = (setups[name](),) if name in setups else ()
            if settle_seconds:
                time.sleep(settle_seconds)
            start = time.perf_counter()
            last_result[name] = run(*arguments)
            seconds = time.perf_counter() - start
            first_result.setdefault(name, last_result[name])
            if round_index > 0:
                samples[name].append(seconds)
    return {
        name: RoundsTiming(statistics.median(samples[name]), samples[name], first_result[name], last_result[name])
        for name in runners
    }


# --------------------------------------------------------------------------- memory

_CLEAR_REFS = "/proc/self/clear_refs"
_STATUS = "/proc/self/status"


def _status_bytes(field):
    """A ``kB`` field of /proc/self/status (e.g. VmRSS, VmHWM) in bytes."""
    with open(_STATUS) as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{_STATUS} has no field {field}")


def _malloc_trim():
    """Hand glibc's freed heap pages back to the kernel, so a later peak is not hidden
    by memory an earlier call freed but the process still holds."""
    libc_name = ctypes.util.find_library("c")
    if libc_name:
        trim = getattr(ctypes.CDLL(libc_name), "malloc_trim", None)
        if trim is not None:
            trim(0)


def _reset_peak_rss():
    """Reset VmHWM, the resident-memory high-water mark, to the current resident size."""
    with open(_CLEAR_REFS, "w") as clear_refs:
        clear_refs.write("5")


def peak_rss_unsupported_reason():
    """None when ``PeakRSS`` works here, else why not (a sentence)."""
    try:
        _reset_peak_rss()
        _status_bytes("VmHWM")
    except (OSError, RuntimeError) as exc:
        return f"cannot reset the resident-memory high-water mark ({exc})"
    return None


class PeakRSS:
    """Peak resident-memory growth inside a ``with`` block, in bytes (``.extra_bytes``).

    On entry: collect garbage, trim the C heap, reset VmHWM to the current resident
    size (writing "5" to /proc/self/clear_refs) and remember that size. On exit:
    ``extra_bytes = VmHWM - that size``: the most memory the block held at once beyond
    what existed before it, including what it returns. Page-granular (4 KiB; 2 MiB for
    transparent huge pages).
    """

    def __enter__(self):
        gc.collect()
        _malloc_trim()
        _reset_peak_rss()
        self.start_bytes = _status_bytes("VmRSS")
        return self

    def __exit__(self, *exc_info):
        self.extra_bytes = _status_bytes("VmHWM") - self.start_bytes
        return False


def run_in_fresh_process(function, *args, preload=()):
    """``function(*args)`` in a new child process with a heap of its own; returns its result.

    The child is forked from a multiprocessing "forkserver", a clean process that has
    only imported ``preload`` (module names, e.g. ("numpy", "torch")), so each child
    starts without the parent's heap and without paying those imports again.
    ``function`` must be importable at module level (it is pickled by name).
    """
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(preload))  # takes effect when the server first starts
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(function, *args).result()


# --------------------------------------------------------------------------- machine


@contextlib.contextmanager
def limited_threads(n_threads, user_api=None):
    """Inside the block, threadpoolctl's pools (all of them, or those of ``user_api``, e.g.
    "blas") and torch, when it imports, use ``n_threads`` threads; the previous counts return after."""
    from threadpoolctl import threadpool_limits

    try:
        import torch
    except ImportError:
        torch = None
    previous = torch.get_num_threads() if torch else None
    with threadpool_limits(limits=n_threads, user_api=user_api):
        if torch:
            torch.set_num_threads(n_threads)
        try:
            yield
        finally:
            if torch:
                torch.set_num_threads(previous)


def usable_cores():
    """Cores this process may run on (the affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


# Instruction-set flags of /proc/cpuinfo that decide which BLAS and kernel code paths run.
_ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile")


def _first_cpu_fields():
    """The first processor's block of /proc/cpuinfo as {key: value}; {} where Linux has none."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                if not key.strip():
                    break  # the first processor's block is enough
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


def cpu_flags():
    """The CPU's feature flags ("avx2", "avx512f", ...), an empty set where Linux does not say them."""
    return set(_first_cpu_fields().get("flags", "").split())


def _cpu_model():
    """The CPU's name, with its family/model numbers and vector extensions where Linux says them,
    e.g. "Intel(R) Xeon(R) Processor (family 6, model 143; avx2 avx512f amx_tile)": a virtual
    machine's name can be generic, the numbers and flags are not."""
    fields = _first_cpu_fields()
    name = fields.get("model name") or platform.processor() or platform.machine()
    if "cpu family" not in fields:
        return name
    flags = set(fields.get("flags", "").split())
    isa = " ".join(flag for flag in _ISA_FLAGS if flag in flags) or "no AVX2"
    return f"{name} (family {fields['cpu family']}, model {fields.get('model', '?')}; {isa})"


def blas_kernels(thread_pools):
    """One phrase per BLAS library loaded, e.g. "numpy.libs/libscipy_openblas64_-...so: openblas
    0.3.31 with SkylakeX kernels": the library, its implementation (threadpoolctl's internal_api)
    and the CPU kernels it chose (its architecture)."""
    if isinstance(thread_pools, str):
        return [thread_pools]
    return [f"{pool['library']}: {pool['internal_api']} {pool['version']}"
            + (f" with {pool['architecture']} kernels" if pool.get("architecture") else "")
            for pool in thread_pools if pool["user_api"] == "blas"]


def machine_info(packages=("numpy",)):
    """What a reader needs to judge a timing: CPU, cores, load, versions, BLAS libraries.

    ``packages`` are looked up by distribution name without importing them. The BLAS
    list (threadpoolctl) covers libraries already loaded into this process.
    """
    versions = {"python": platform.python_version()}
    for name in packages:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        thread_pools = "threadpoolctl not installed"
    else:
        keys = ("user_api", "internal_api", "version", "architecture", "num_threads")
        thread_pools = [
            {
                "library": os.path.join(*pool["filepath"].split(os.sep)[-2:]),  # e.g. numpy.libs/libopenblas...
                **{key: pool.get(key) for key in keys},
            }
            for pool in threadpool_info()
        ]
    return {
        "cpu": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cores": usable_cores(),
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "versions": versions,
        "thread_pools": thread_pools,
        "attention_tiles": attention.KERNEL.module.tile_products() if "cython" in attention.available_backends()
        else "kernel not built",
        "linear_products": linear_products(),
    }


def linear_products():
    """What runs the linear layers' float32 products: "avx512" (kernels/gemm.h), "blas", or
    "kernels not built"."""
    return backend.KERNEL.module.matrix_products() if "cython" in backend.available_backends() else "kernels not built"


_BLAS_ENVIRONMENT = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS", "OPENBLAS_THREAD_TIMEOUT",
                     "OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS")


_TILE_PRODUCTS = {"avx512": "avx512 (kernels/tiles.h, register-blocked)", "blas": "blas (sgemm per tile)"}
_LINEAR_PRODUCTS = {"avx512": "avx512 (kernels/gemm.h)", "blas": "blas (NumPy's @)"}


def format_machine(info):
    """``machine_info()`` as markdown bullet lines."""
    versions = ", ".join(f"{name} {version}" for name, version in info["versions"].items())
    lines = [
        f"- CPU: {info['cpu']}; {info['logical_cpus']} logical CPUs, {info['usable_cores']} usable; "
        f"1-min load average {info['load_average_1min']:.2f} (a loaded machine makes timings noisy)",
        f"- BLAS: {'; '.join(blas_kernels(info['thread_pools'])) or 'none loaded'}"
        + "".join(f"; {name}={os.environ[name]} in the environment" for name in _BLAS_ENVIRONMENT
                  if name in os.environ),
        f"- Versions: {versions}",
        f"- numpyllm attention kernel's float32 tiles: {_TILE_PRODUCTS.get(info['attention_tiles'], info['attention_tiles'])}",
        f"- numpyllm linear layers' float32 products: "
        f"{_LINEAR_PRODUCTS.get(info['linear_products'], info['linear_products'])}",
    ]
    pools = info["thread_pools"]
    if isinstance(pools, str):
        lines.append(f"- Thread pools: {pools}")
    else:
        for pool in pools:
            described = ", ".join(f"{key} {value}" for key, value in pool.items() if value is not None)
            lines.append(f"- Thread pool: {described}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- output


def markdown_table(headers, rows):
    """A markdown table with padded columns; cells are converted with ``str``."""
    cells = [[str(cell) for cell in row] for row in rows]
    widths = [max(len(str(header)), *(len(row[i]) for row in cells)) for i, header in enumerate(headers)]

    def line(values):
        return "| " + " | ".join(value.ljust(width) for value, width in zip(values, widths)) + " |"

    return "\n".join([line(headers), line(["-" * width for width in widths]), *(line(row) for row in cells)])
