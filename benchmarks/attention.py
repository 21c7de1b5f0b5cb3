"""Attention speed and memory: numpyllm's NumPy reference, its Cython kernel and PyTorch, side by side.

    python -m benchmarks.attention                  # B=1, H=12, d=64, float32, N = 256 ... 4096, causal and not
    python -m benchmarks.attention --quick          # about 10 seconds
    python -m benchmarks.attention --decode         # Nq = 1 against a KV cache of Nk keys
    python -m benchmarks.attention --memory-n 16384 # the kernel's forward + backward memory at one large N

After the size sweep, a padded batch (B=4, keys right-padded to twice their real length,
``key_lengths=``; torch gets the equivalent boolean mask) is timed against the same
batch unpadded: the kernel skips padded key blocks, so it should cost its real length.

For every problem, the backends' forwards are timed side by side in the same run, their
repeats interleaved (so a change of the machine's speed reaches them all), then their
backwards: ``numpy`` and ``cython`` are ``numpyllm.attention.forward/backward``
with that backend, ``torch`` is ``torch.nn.functional.scaled_dot_product_attention``
with autograd. Results are checked against the first backend measured (the reference
when it runs) and the largest relative difference is shown.
"""

import argparse
import contextlib
import dataclasses
import io
import json
import os
import sys
import textwrap
import time

import numpy as np

import numpyllm
from numpyllm import attention
from numpyllm.fileio import atomic_write

from ._timing import (
    PeakRSS,
    format_machine,
    interleaved_medians,
    machine_info,
    markdown_table,
    measure_side_by_side,
    peak_rss_unsupported_reason,
    run_in_fresh_process,
    usable_cores,
)

DEFAULT_SIZES = (256, 512, 1024, 2048, 4096)
QUICK_SIZES = (256, 512, 1024)
PASSES = ("forward", "backward")
PACKAGES = ("numpy", "scipy", "torch", "threadpoolctl")  # versions printed with the machine
WARM_UP_N_CAP = 1024  # memory warm-up calls use N <= this; one-time costs do not depend on N
PADDED_BATCH = 4  # the padded-batch comparison's B
PADDED_REAL_LENGTH, QUICK_PADDED_REAL_LENGTH = 1024, 256  # its real (unpadded) length
NUMPY_MAX_SCORE_BYTES = 2**29  # the padded comparison runs the reference only up to this score matrix

FLOP_CONVENTION = (
    "GFLOP/s counts forward FLOPs = 4·B·H·d·P, where P is the number of (query, key) pairs the mask "
    "lets through (Nq·Nk; Nq·(Nq+1)/2 for causal Nq = Nk, i.e. about half; Nk for causal Nq = 1), "
    "and backward FLOPs = 2.5 × forward."
)
MEMORY_METHOD = (
    "Peak extra memory is the growth of resident memory (Linux VmHWM, reset by writing 5 to "
    "/proc/self/clear_refs, after gc and malloc_trim) during one call, minus the call's outputs "
    "(out + lse forward, dq + dk + dv backward). Each backend and problem gets a fresh child process "
    "(forked from a clean multiprocessing forkserver that has only imported the modules) and one "
    "warm-up call (N capped at 1024) first, so thread pools and BLAS buffers are not counted. "
    "Resident memory sees every allocation, including the kernel's C-level malloc, which tracemalloc "
    "would miss. Resolution: a few pages."
)
TORCH_METHOD = (
    "torch: forward with requires_grad inputs (the training forward, which saves what its backward "
    "needs, as numpyllm's forward does); backward times only .backward() on a graph built outside the "
    "timer, afresh for every call."
)


# --------------------------------------------------------------------------- problems


@dataclasses.dataclass(frozen=True)
class Problem:
    """One attention shape: q (batch, heads, n_q, head_dim), k and v (batch, heads, n_k, head_dim)."""

    batch: int
    heads: int
    n_q: int
    n_k: int
    head_dim: int
    dtype: str
    causal: bool
    key_length: object = None  # int: every batch's keys right-padded past it (key_lengths=); None: no padding

    def visible_pairs(self):
        """(query, key) pairs the masks let through: bottom-right causal row i sees
        min(Nk, i + Nk - Nq + 1) keys, summed over i (all Nq·Nk pairs without the mask);
        padding (not combined with causal here) leaves Nq·key_length."""
        if self.key_length is not None:
            return self.n_q * self.key_length
        if not self.causal:
            return self.n_q * self.n_k
        return self.n_q * self.n_k - self.n_q * (self.n_q - 1) // 2

    def flops(self, pass_name):
        """FLOPs of one call (see FLOP_CONVENTION)."""
        forward = 4 * self.batch * self.heads * self.head_dim * self.visible_pairs()
        return forward if pass_name == "forward" else 2.5 * forward

    def output_bytes(self, pass_name):
        """Bytes a call returns: out (B,H,Nq,d) and lse (B,H,Nq) float64, or dq, dk, dv."""
        itemsize = np.dtype(self.dtype).itemsize
        rows_q, rows_k = self.batch * self.heads * self.n_q, self.batch * self.heads * self.n_k
        if pass_name == "forward":
            return rows_q * self.head_dim * itemsize + rows_q * 8
        return (rows_q + 2 * rows_k) * self.head_dim * itemsize

    def score_matrix_bytes(self):
        """One (B, H, Nq, Nk) score matrix: what an N×N implementation holds, several times."""
        return self.batch * self.heads * self.n_q * self.n_k * np.dtype(self.dtype).itemsize

    def inputs(self, seed=0):
        """Standard-normal q, k, v and dout, C-contiguous, in the problem's dtype."""
        rng = np.random.default_rng(seed)
        q_shape = (self.batch, self.heads, self.n_q, self.head_dim)
        kv_shape = (self.batch, self.heads, self.n_k, self.head_dim)
        shapes = (q_shape, kv_shape, kv_shape, q_shape)
        return tuple(rng.standard_normal(shape, dtype=np.float64).astype(self.dtype) for shape in shapes)

    def key_lengths(self):
        """The ``key_lengths=`` argument: (B,) ints, or None."""
        return None if self.key_length is None else np.full(self.batch, self.key_length, dtype=np.int64)

    def label(self):
        padding = "" if self.key_length is None else f" key_lengths={self.key_length}"
        return f"Nq={self.n_q} Nk={self.n_k}{padding} {'causal' if self.causal else 'full'}"


# --------------------------------------------------------------------------- backends


@dataclasses.dataclass
class Call:
    """What to time: ``run(setup())``; ``outputs(result)`` gives NumPy arrays to compare."""

    run: object
    outputs: object
    setup: object = lambda: None


class NumpyllmBackend:
    """``numpyllm.attention`` with backend "numpy" (the reference) or "cython" (the kernel).

    Threads: the kernel gets ``num_threads=``; the reference's BLAS is limited with
    threadpoolctl (the kernel pins BLAS to one thread inside itself).
    """

    def __init__(self, name, threads):
        self.name = name
        self.threads = threads

    @contextlib.contextmanager
    def thread_limit(self):
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=self.threads, user_api="blas"):
            yield

    def _forward(self, problem, q, k, v):
        return attention.forward(q, k, v, problem.causal, key_lengths=problem.key_lengths(), backend=self.name,
                                 num_threads=self.threads)

    def call(self, pass_name, problem, arrays):
        q, k, v, dout = arrays
        if pass_name == "forward":
            return Call(run=lambda _: self._forward(problem, q, k, v), outputs=lambda result: [result[0]])
        out, lse = self._forward(problem, q, k, v)
        return Call(
            run=lambda _: attention.backward(
                dout, q, k, v, out, lse, problem.causal, key_lengths=problem.key_lengths(), backend=self.name,
                num_threads=self.threads,
            ),
            outputs=list,
        )


def _torch_is_causal(problem):
    """torch's ``is_causal`` is top-left aligned, numpyllm's bottom-right: they agree for
    Nq == Nk, and for Nq == 1 bottom-right means "every key", i.e. no mask."""
    if problem.causal and problem.key_length is not None:
        raise ValueError(f"the torch comparison does not combine causal with padding, got {problem.label()}")
    if not problem.causal or problem.n_q == 1:
        return False
    if problem.n_q == problem.n_k:
        return True
    raise ValueError(f"torch comparison needs Nq == Nk or Nq == 1 for causal attention, got {problem.label()}")


class TorchBackend:
    """``torch.nn.functional.scaled_dot_product_attention`` with autograd (see TORCH_METHOD)."""

    name = "torch"

    def __init__(self, threads):
        import torch

        self.torch = torch
        self.threads = threads

    @contextlib.contextmanager
    def thread_limit(self):
        previous = self.torch.get_num_threads()
        self.torch.set_num_threads(self.threads)
        try:
            yield
        finally:
            self.torch.set_num_threads(previous)

    def call(self, pass_name, problem, arrays):
        q, k, v, dout = arrays
        is_causal = _torch_is_causal(problem)
        mask = None
        if problem.key_length is not None:  # (B, 1, 1, Nk), True = attend: key_lengths as a boolean mask
            lengths = self.torch.from_numpy(problem.key_lengths())
            mask = self.torch.arange(problem.n_k) < lengths[:, None, None, None]

        def sdpa(*inputs, is_causal):
            return self.torch.nn.functional.scaled_dot_product_attention(*inputs, attn_mask=mask, is_causal=is_causal)

        def leaves():
            """Fresh leaf tensors sharing q, k, v's memory, with no gradient yet."""
            return [self.torch.from_numpy(x).requires_grad_() for x in (q, k, v)]

        if pass_name == "forward":
            inputs = leaves()
            return Call(
                run=lambda _: sdpa(*inputs, is_causal=is_causal), outputs=lambda out: [out.detach().numpy()]
            )

        def graph():
            inputs = leaves()
            return inputs, sdpa(*inputs, is_causal=is_causal)

        dout_tensor = self.torch.from_numpy(dout)

        def backward(graph_state):
            inputs, out = graph_state
            out.backward(dout_tensor)
            return [tensor.grad for tensor in inputs]

        return Call(setup=graph, run=backward, outputs=lambda grads: [grad.numpy() for grad in grads])


def problem_of(record):
    """The Problem a measurement record (dict) was taken on."""
    return Problem(**{field.name: record[field.name] for field in dataclasses.fields(Problem)})


def make_backend(name, threads):
    return TorchBackend(threads) if name == "torch" else NumpyllmBackend(name, threads)


def max_relative_difference(outputs, reference):
    """max |a - b| / max |b| over pairs of arrays (the difference relative to the result's scale)."""
    worst = 0.0
    for ours, theirs in zip(outputs, reference):
        theirs = np.asarray(theirs, dtype=np.float64)
        scale = max(float(np.max(np.abs(theirs))), np.finfo(np.float64).tiny)
        worst = max(worst, float(np.max(np.abs(np.asarray(ours, dtype=np.float64) - theirs))) / scale)
    return worst


# --------------------------------------------------------------------------- measuring


def time_problems(problems, backend_names, threads, repeats, min_seconds, progress):
    """Time every (problem, pass, backend); return one record (dict) per measurement.

    A pass's backends are timed side by side (``measure_side_by_side``: their repeats
    interleaved), each under its thread limit (all set to ``threads`` at once: they are
    different libraries' settings)."""
    backends = [make_backend(name, threads) for name in backend_names]
    records = []
    for problem in problems:
        arrays = problem.inputs()
        for pass_name in passes_for(problem):
            with contextlib.ExitStack() as limits:
                for backend in backends:
                    limits.enter_context(backend.thread_limit())
                calls = {backend.name: backend.call(pass_name, problem, arrays) for backend in backends}
                measured = measure_side_by_side({name: (call.run, call.setup) for name, call in calls.items()},
                                                repeats=repeats, min_seconds=min_seconds)
            reference = None
            for backend in backends:
                timing, result = measured[backend.name]
                outputs = calls[backend.name].outputs(result)
                if reference is None:
                    reference = (backend.name, outputs)
                record = dict(
                    dataclasses.asdict(problem),
                    backend=backend.name,
                    threads=threads,
                    pass_name=pass_name,
                    median_ms=timing.median * 1e3,
                    samples_ms=[seconds * 1e3 for seconds in timing.samples],
                    calls_per_repeat=timing.calls_per_repeat,
                    gflops=problem.flops(pass_name) / timing.median / 1e9,
                    compared_with=reference[0],
                    max_rel_diff=max_relative_difference(outputs, reference[1]),
                )
                records.append(record)
                progress(
                    f"{backend.name:>6} {problem.label()} {pass_name} {threads} thr: "
                    f"{record['median_ms']:.3f} ms (median of {repeats} x {timing.calls_per_repeat} calls)"
                )
            del calls, measured, result, outputs
    return records


def passes_for(problem):
    """Decoding (Nq = 1) is inference: forward only. Training shapes: forward and backward."""
    return ("forward",) if problem.n_q == 1 else PASSES


def measure_memory(backend_name, problem, threads):
    """In this process: {pass_name: (peak extra bytes, seconds)} of one call per pass.

    Meant for a fresh process (``run_in_fresh_process``): one per backend and problem.
    """
    backend = make_backend(backend_name, threads)
    warm_up = dataclasses.replace(
        problem, n_q=min(problem.n_q, WARM_UP_N_CAP), n_k=min(problem.n_k, WARM_UP_N_CAP)
    )
    arrays, warm_up_arrays = problem.inputs(), warm_up.inputs()
    per_pass = {}
    with backend.thread_limit():
        for pass_name in passes_for(problem):
            warm_up_call = backend.call(pass_name, warm_up, warm_up_arrays)
            warm_up_call.run(warm_up_call.setup())
            del warm_up_call
            call = backend.call(pass_name, problem, arrays)
            state = call.setup()
            with PeakRSS() as peak:
                start = time.perf_counter()
                result = call.run(state)
                seconds = time.perf_counter() - start
            per_pass[pass_name] = (max(0, peak.extra_bytes - problem.output_bytes(pass_name)), seconds)
            del call, state, result
    return per_pass


def memory_in_fresh_process(backend_name, problem, threads, all_backends):
    """``measure_memory`` in a fresh child process.

    The children fork from one clean server that imports, once per run, what any of
    ``all_backends`` (this run's backends) needs, so a child costs milliseconds.
    """
    # Not this module itself: under `python -m` the child imports it as __main__.
    preload = ["numpy", "numpyllm.attention"]
    if "torch" in all_backends:
        preload.append("torch")
    return run_in_fresh_process(measure_memory, backend_name, problem, threads, preload=preload)


def add_memory(records, problems, backend_names, threads, progress):
    """Measure each backend's memory, one fresh process per problem; store it in ``records``."""
    index = {(r["backend"], r["threads"], r["pass_name"], problem_of(r)): r for r in records}
    for problem in problems:
        for name in backend_names:
            per_pass = memory_in_fresh_process(name, problem, threads, backend_names)
            for pass_name, (extra, _) in per_pass.items():
                index[name, threads, pass_name, problem]["peak_extra_mb"] = extra / 2**20
                progress(f"{name:>6} {problem.label()} {pass_name}: peak extra memory {extra / 2**20:.2f} MiB")


# --------------------------------------------------------------------------- output


def fmt(value):
    """A number with about three significant digits; "—" when absent."""
    if value is None:
        return "—"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def _by_row(records):
    """Group records into table rows keyed (Nq, Nk, causal, pass) -> {backend: record}, in order."""
    rows = {}
    for record in records:
        key = (record["n_q"], record["n_k"], record["causal"], record["pass_name"])
        rows.setdefault(key, {})[record["backend"]] = record
    return rows


def _ratio(by_backend, numerator, denominator):
    if numerator in by_backend and denominator in by_backend:
        return by_backend[numerator]["median_ms"] / by_backend[denominator]["median_ms"]
    return None


RATIOS = (("cython", "torch"), ("numpy", "cython"))


def time_table(records, backend_names):
    """Markdown: medians (ms), the ratios that apply, GFLOP/s, and the check against the reference."""
    ratios = [pair for pair in RATIOS if set(pair) <= set(backend_names)]
    headers = ["Nq", "Nk", "causal", "pass"]
    headers += [f"{name} ms" for name in backend_names]
    headers += [f"{a}/{b}" for a, b in ratios]
    headers += [f"{name} GFLOP/s" for name in backend_names]
    headers += ["max rel diff"]
    rows = []
    for (n_q, n_k, causal, pass_name), by_backend in _by_row(records).items():
        row = [n_q, n_k, "yes" if causal else "no", pass_name]
        row += [fmt(by_backend[name]["median_ms"]) for name in backend_names]
        row += [fmt(_ratio(by_backend, a, b)) for a, b in ratios]
        row += [fmt(by_backend[name]["gflops"]) for name in backend_names]
        compared = [record["max_rel_diff"] for record in by_backend.values() if record["compared_with"] != record["backend"]]
        row += [f"{max(compared):.1e}" if compared else "—"]  # "—": one backend, nothing to compare with
        rows.append(row)
    return markdown_table(headers, rows)


def memory_table(records, backend_names):
    """Markdown: peak extra memory (MiB) per backend, next to one score matrix's size."""
    headers = ["Nq", "Nk", "causal", "pass"] + [f"{name} MiB" for name in backend_names] + ["one Nq×Nk matrix MiB"]
    rows = []
    for (n_q, n_k, causal, pass_name), by_backend in _by_row(records).items():
        row = [n_q, n_k, "yes" if causal else "no", pass_name]
        row += [fmt(by_backend[name].get("peak_extra_mb")) for name in backend_names]
        row += [fmt(problem_of(next(iter(by_backend.values()))).score_matrix_bytes() / 2**20)]
        rows.append(row)
    return markdown_table(headers, rows)


def scaling_table(records, thread_counts):
    """Markdown: each backend's median at each thread count and the speed-up."""
    low, high = thread_counts
    headers = ["Nq", "Nk", "causal", "pass", "backend", f"{low} thread ms", f"{high} threads ms", "speed-up"]
    at = {
        (r["n_q"], r["n_k"], r["causal"], r["pass_name"], r["backend"], r["threads"]): r["median_ms"]
        for r in records
    }
    rows = []
    for n_q, n_k, causal, pass_name, backend, threads in at:
        if threads != low:
            continue
        slow = at[n_q, n_k, causal, pass_name, backend, low]
        fast = at[n_q, n_k, causal, pass_name, backend, high]
        rows.append([n_q, n_k, "yes" if causal else "no", pass_name, backend, fmt(slow), fmt(fast), fmt(slow / fast)])
    return markdown_table(headers, rows)


def padded_problems(args):
    """The real batch, its keys right-padded to twice the length, and queries padded too.

    Padded query rows are still computed (the contract defines their output: attention
    over the real keys), so the last costs twice the real batch, not four times.
    """
    real = QUICK_PADDED_REAL_LENGTH if args.quick else PADDED_REAL_LENGTH
    shape = dict(batch=PADDED_BATCH, heads=args.heads, head_dim=args.head_dim, dtype=args.dtype, causal=False)
    return [
        Problem(n_q=real, n_k=real, **shape),
        Problem(n_q=real, n_k=2 * real, key_length=real, **shape),
        Problem(n_q=2 * real, n_k=2 * real, key_length=real, **shape),
    ]


def time_padded(problems, backend_names, threads, rounds, progress):
    """Every (problem, pass, backend) of the padded comparison in interleaved rounds
    (``interleaved_medians``): the ratios to the real batch are taken between calls
    timed minutes apart otherwise, on a machine whose load changes. The reference runs
    only where its score matrix is at most NUMPY_MAX_SCORE_BYTES. One record per call."""
    backends = {name: make_backend(name, threads) for name in backend_names}
    calls, setups = {}, {}
    for problem in problems:
        arrays = problem.inputs()
        for pass_name in passes_for(problem):
            for name, backend in backends.items():
                if name == "numpy" and problem.score_matrix_bytes() > NUMPY_MAX_SCORE_BYTES:
                    continue
                call = backend.call(pass_name, problem, arrays)
                key = (problem, pass_name, name)
                calls[key], setups[key] = call, call.setup

    progress(f"padded batch: {len(calls)} calls in {rounds} interleaved rounds after a warm-up round")
    with contextlib.ExitStack() as limits:  # every backend's limit is the same thread count
        for backend in backends.values():
            limits.enter_context(backend.thread_limit())
        timings = interleaved_medians({key: call.run for key, call in calls.items()}, rounds, setups)
    records, reference = [], {}
    for (problem, pass_name, name), timing in timings.items():
        outputs = calls[problem, pass_name, name].outputs(timing.last_result)
        first_name, first_outputs = reference.setdefault((problem, pass_name), (name, outputs))
        records.append(dict(
            dataclasses.asdict(problem), backend=name, threads=threads, pass_name=pass_name,
            median_ms=timing.median * 1e3, samples_ms=[seconds * 1e3 for seconds in timing.samples],
            calls_per_repeat=1, gflops=problem.flops(pass_name) / timing.median / 1e9,
            compared_with=first_name, max_rel_diff=max_relative_difference(outputs, first_outputs),
        ))
        progress(f"{name:>6} {problem.label()} {pass_name}: {timing.median * 1e3:.3f} ms")
    return records


def padded_table(records, backend_names):
    """Markdown: each padded problem's medians and their ratio to the unpadded (real) batch's."""
    at = {(r["n_q"], r["n_k"], r["key_length"], r["pass_name"], r["backend"]): r for r in records}
    real = records[0]["n_q"]
    headers = ["Nq", "Nk", "key_lengths", "pass"] + [f"{name} ms" for name in backend_names]
    headers += [f"{name} × real" for name in backend_names] + ["max rel diff"]
    rows = []
    for n_q, n_k, key_length, pass_name in dict.fromkeys(key[:4] for key in at):
        chosen = [at.get((n_q, n_k, key_length, pass_name, name)) for name in backend_names]
        real_ms = [at.get((real, real, None, pass_name, name)) for name in backend_names]
        row = [n_q, n_k, key_length or "—", pass_name]
        row += [fmt(r["median_ms"]) if r else "—" for r in chosen]
        row += [fmt(r["median_ms"] / base["median_ms"]) if r and base else "—" for r, base in zip(chosen, real_ms)]
        compared = [r["max_rel_diff"] for r in chosen if r and r["compared_with"] != r["backend"]]
        row += [f"{max(compared):.1e}" if compared else "—"]
        rows.append(row)
    return markdown_table(headers, rows)


def write_plot(path, records, backend_names):
    """Time and peak extra memory against Nk, one column per mask, one line per backend and pass."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    masks = sorted({record["causal"] for record in records})
    figure, axes = plt.subplots(2, len(masks), figsize=(6 * len(masks), 8), squeeze=False)
    for column, causal in enumerate(masks):
        for color, name in enumerate(backend_names):
            for pass_name, style in zip(PASSES, ("-", "--")):
                chosen = [
                    r for r in records if (r["backend"], r["causal"], r["pass_name"]) == (name, causal, pass_name)
                ]
                if not chosen:
                    continue
                n = [r["n_k"] for r in chosen]
                line = dict(linestyle=style, marker="o", color=f"C{color}", label=f"{name} {pass_name}")
                axes[0, column].plot(n, [r["median_ms"] for r in chosen], **line)
                memory = [r.get("peak_extra_mb") for r in chosen]
                if None not in memory:
                    axes[1, column].plot(n, memory, **line)
        mask = "causal" if causal else "no mask"
        axes[0, column].set(title=f"time, {mask}", ylabel="median ms", yscale="log")
        # symlog: the kernel's extra memory is near zero, the reference's grows as N²
        axes[1, column].set_yscale("symlog", linthresh=0.1)
        axes[1, column].set(title=f"peak extra memory, {mask}", ylabel="MiB", ylim=(0, None))
        sizes = sorted({record["n_k"] for record in records})
        for axis in axes[:, column]:
            axis.set_xscale("log", base=2)
            axis.set_xticks(sizes, [str(n) for n in sizes])
            axis.set_xlabel("Nk (keys)")
            axis.grid(True, which="both", alpha=0.3)
        axes[0, column].legend(fontsize="small")  # the memory panel below uses the same lines
    first = records[0]
    figure.suptitle(
        f"attention, B={first['batch']} H={first['heads']} d={first['head_dim']} {first['dtype']}, "
        f"{first['threads']} thread(s); solid forward, dashed backward"
    )
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    with atomic_write(path) as f:
        f.write(buffer.getvalue())


# --------------------------------------------------------------------------- command line


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.attention",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(
            textwrap.fill(paragraph, width=90, break_on_hyphens=False)
            for paragraph in [
                "Timing: one warm-up call, then the median of --repeats repeats (time.perf_counter), "
                "the backends' repeats interleaved; a repeat runs enough calls to last ~50 ms (~10 ms "
                "with --quick) and reports the time per call.",
                FLOP_CONVENTION,
                MEMORY_METHOD,
                TORCH_METHOD,
                "Causal is bottom-right aligned (numpyllm's contract). The NumPy reference builds "
                "several B·H·Nq·Nk score matrices: at large N it needs GBs of memory and seconds "
                "per call (--no-numpy skips it).",
                "Backends: numpy always (unless --no-numpy); cython when numpyllm's kernel is built "
                "(if not, the output says so and the others still run); torch when it imports "
                "(unless --no-torch).",
            ]
        ),
    )
    add = parser.add_argument
    add("--quick", action="store_true", help=f"N in {QUICK_SIZES}, 3 repeats: about 10 seconds")
    add("--sizes", type=_positive_int, nargs="+", metavar="N",
        help=f"sequence lengths (default {DEFAULT_SIZES})")
    add("--causal", choices=("both", "yes", "no"), default="both", help="mask(s) to measure (default both)")
    add("--dtype", choices=("float32", "float64"), default="float32")
    add("--head-dim", type=_positive_int, default=64, metavar="D", help="d (default 64)")
    add("--batch", type=_positive_int, default=1, metavar="B", help="B (default 1)")
    add("--heads", type=_positive_int, default=12, metavar="H", help="H (default 12)")
    add("--threads", type=_positive_int, default=usable_cores(), metavar="N",
        help="threads for every backend: the kernel's num_threads=, torch.set_num_threads, the "
        "reference's BLAS via threadpoolctl (default: the usable cores, %(default)s here)")
    add("--repeats", type=_positive_int, metavar="R",
        help="timed repeats per measurement (default 5; 3 with --quick)")
    add("--no-torch", action="store_true", help="skip torch even if it is installed")
    add("--no-numpy", action="store_true", help="skip the slow NumPy reference (large N)")
    add("--no-padded", action="store_true",
        help=f"skip the padded-batch comparison (B={PADDED_BATCH}, real length {PADDED_REAL_LENGTH}, "
        f"{QUICK_PADDED_REAL_LENGTH} with --quick, keys padded to twice that)")
    add("--thread-scaling", action="store_true",
        help="time at 1 and at 2 threads (instead of --threads) and show the speed-up; memory is measured at 2")
    add("--plot", metavar="FILE.png", help="draw time and memory against N (needs matplotlib)")
    add("--json", metavar="FILE", help="write every measurement (and the machine) as JSON")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--decode", action="store_true",
                      help="the KV-cache decoding shape: one query (Nq = 1) against Nk = each of --sizes keys, "
                      "causal, forward only (generation does not run the backward)")
    mode.add_argument("--memory-n", type=_positive_int, metavar="N",
                      help="instead of the tables: the kernel's peak extra memory (and time) for one forward "
                      "and one backward at Nq = Nk = N with --causal's mask(s), e.g. 16384")
    return parser


def _progress(message):
    print(message, file=sys.stderr, flush=True)


def choose_backends(args):
    """The backends this run measures, and notes to print about the ones left out."""
    names, notes = [], []
    if not args.no_numpy:
        names.append("numpy")
    if "cython" in attention.available_backends():
        names.append("cython")
    else:
        notes.append(
            f"The Cython kernel is not built ({attention.KERNEL.error}); measuring the others. "
            "Build it with `pip install -e .`."
        )
    if not args.no_torch:
        try:
            import torch  # noqa: F401
        except ImportError:
            notes.append("torch is not installed (pip install torch): no PyTorch comparison.")
        else:
            names.append("torch")
    return names, notes


def build_problems(args, sizes):
    masks = {"both": (False, True), "yes": (True,), "no": (False,)}[args.causal]
    shape = dict(batch=args.batch, heads=args.heads, head_dim=args.head_dim, dtype=args.dtype)
    if args.decode:
        return [Problem(n_q=1, n_k=n, causal=True, **shape) for n in sizes]
    return [Problem(n_q=n, n_k=n, causal=causal, **shape) for n in sizes for causal in masks]


def run_memory_n(args, threads, progress):
    """--memory-n: the kernel alone, a fresh process per mask, one call per pass; prints a table."""
    if "cython" not in attention.available_backends():
        print(f"--memory-n measures the Cython kernel, which is not built ({attention.KERNEL.error}).")
        return []
    records, rows = [], []
    for problem in build_problems(args, [args.memory_n]):
        progress(f"memory: cython {problem.label()}, one forward and one backward in a fresh process")
        per_pass = memory_in_fresh_process("cython", problem, threads, ("cython",))
        for pass_name, (extra, seconds) in per_pass.items():
            extra_mb, one_call_ms = extra / 2**20, seconds * 1e3
            records.append(dict(dataclasses.asdict(problem), backend="cython", threads=threads,
                                pass_name=pass_name, peak_extra_mb=extra_mb, one_call_ms=one_call_ms))
            rows.append([problem.n_q, "yes" if problem.causal else "no", pass_name, fmt(extra_mb),
                         fmt(one_call_ms), fmt(problem.score_matrix_bytes() / 2**20)])
    headers = ["N", "causal", "pass", "cython peak extra MiB", "time ms (one call)", "one N×N matrix MiB"]
    print(f"## Peak extra memory of the kernel at N = {args.memory_n}\n\n{markdown_table(headers, rows)}\n")
    return records


def run_sweep(args, backend_names, thread_counts, measure_memory_here, progress):
    """The size sweep (or --decode): prints time, memory and thread-scaling tables; returns records."""
    problems = build_problems(args, args.sizes or (QUICK_SIZES if args.quick else DEFAULT_SIZES))
    repeats = args.repeats or (3 if args.quick else 5)
    min_seconds = 0.01 if args.quick else 0.05
    memory_threads = thread_counts[-1]
    records = []
    for threads in thread_counts:
        records += time_problems(problems, backend_names, threads, repeats, min_seconds, progress)
    if measure_memory_here:
        add_memory(records, problems, backend_names, memory_threads, progress)

    def plural(threads):
        return f"{threads} thread{'s' if threads > 1 else ''}"

    print(f"Median of {repeats} repeats.\n")
    for threads in thread_counts:
        chosen = [r for r in records if r["threads"] == threads]
        print(f"## Time, {plural(threads)}\n\n{time_table(chosen, backend_names)}\n")
    main_records = [r for r in records if r["threads"] == memory_threads]
    if measure_memory_here:
        print(f"## Peak extra memory, {plural(memory_threads)}\n\n{memory_table(main_records, backend_names)}\n")
    if args.thread_scaling:
        print(f"## Thread scaling\n\n{scaling_table(records, thread_counts)}\n")
    if not (args.decode or args.no_padded):
        padded = time_padded(padded_problems(args), backend_names, memory_threads, repeats, progress)
        first = padded[0]
        print(f"## Padded batch, {plural(memory_threads)}\n\nB={first['batch']}, H={first['heads']}, "
              f"d={first['head_dim']}, {first['dtype']}, no causal mask: the real batch (Nq = Nk = "
              f"{first['n_k']}), its keys right-padded to {2 * first['n_k']} with key_lengths={first['n_k']} "
              f"(torch: the equivalent boolean attn_mask), and queries padded too. × real: the time over "
              f"the real batch's, medians of {repeats} interleaved rounds. The reference runs where its "
              f"score matrix is at most {NUMPY_MAX_SCORE_BYTES // 2**20} MiB.\n\n"
              f"{padded_table(padded, backend_names)}\n")
        records += padded
    if args.plot:
        write_plot(args.plot, main_records, backend_names)
        print(f"Plot written to {args.plot}")
    return records


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.plot and args.memory_n:
        raise SystemExit("--plot draws the size sweep; it does not apply to --memory-n")
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise SystemExit("--plot needs matplotlib: pip install matplotlib (or numpyllm[plot])") from None
    thread_counts = (1, 2) if args.thread_scaling else (args.threads,)
    backend_names, notes = choose_backends(args)
    memory_unsupported = peak_rss_unsupported_reason()
    if args.memory_n and memory_unsupported:
        raise SystemExit(f"--memory-n cannot run here: {memory_unsupported}")

    machine = machine_info(PACKAGES)
    print("# Attention benchmark\n")
    print(format_machine(machine))
    print(f"- numpyllm {numpyllm.__version__} from {os.path.dirname(numpyllm.__file__)}; "
          f"backends built: {', '.join(attention.available_backends())}")
    for note in notes:
        print(f"- {note}")
    print(f"\nB={args.batch}, H={args.heads}, d={args.head_dim}, {args.dtype}; "
          f"threads {', '.join(map(str, thread_counts))}; times in ms.\n")
    print(f"{FLOP_CONVENTION}\n\n{TORCH_METHOD}\n\n"
          "max rel diff: the largest max|x - ref| / max|ref| over the results (out; dq, dk, dv), "
          "ref being the first backend in the row.\n")
    print(f"Memory is not measured here: {memory_unsupported}.\n" if memory_unsupported else f"{MEMORY_METHOD}\n")

    if args.memory_n:
        records = run_memory_n(args, thread_counts[-1], _progress)
    else:
        records = run_sweep(args, backend_names, thread_counts, not memory_unsupported, _progress)
    if args.json:
        document = dict(machine=machine, flop_convention=FLOP_CONVENTION, torch_method=TORCH_METHOD,
                        memory_method=memory_unsupported or MEMORY_METHOD, records=records)
        with atomic_write(args.json, "w") as f:
            json.dump(document, f, indent=1)
        print(f"Raw results written to {args.json}")
    return records


if __name__ == "__main__":
    main()
