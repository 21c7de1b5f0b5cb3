"""Data-parallel training speed: ``numpyllm train`` on K MPI processes × T BLAS threads each.

    python -m benchmarks.distributed            # the tiny preset's model and batch, 3 interleaved rounds
    python -m benchmarks.distributed --quick    # a smoke run: a one-block model, 1 round

Each row is a real training run (``python -m numpyllm train``; under ``mpiexec -n K``
for K > 1) with OMP_NUM_THREADS=T, from the same tokenizer and corpus; tokens/s is the
median over its steps (after the first few) of the global batch's tokens divided by
the step's time, as log.csv records it. The rows run interleaved, round after round,
so load on a shared machine hits each alike; the table shows the median of the rounds'
medians. Rows: K=1 with every core's thread, K=1 with one thread, and K processes of
cores // K threads (K = 2, and K = cores when that is more); --quick runs the first and
the K = 2 rows only.

"communication" is what a step of K = 2 spends in MPI, timed alone under mpiexec -n 2:
``world.mean`` (the in-place Allreduce of a flat gradient buffer of the model's size
plus that of the loss and count) and ``world.any`` (the Ctrl-C vote), with both ranks
ready, so it excludes waiting for the slower rank. Needs mpi4py and mpiexec.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from ._timing import format_machine, machine_info, markdown_table, usable_cores

PACKAGES = ("numpy", "mpi4py", "mpich", "threadpoolctl")
SKIPPED_STEPS = 3  # the first steps pay one-time costs (thread pools, page faults)
_QUICK_MODEL = dict(n_layer=1, n_head=2, n_embd=32, block_size=32, batch_size=8, vocab_size=300)


def _train_command(k, out, settings):
    launcher = [] if k == 1 else [_mpiexec(), "-n", str(k)]
    flags = [f"--{name.replace('_', '-')}={value}" for name, value in settings.items()]
    return [*launcher, sys.executable, "-m", "numpyllm", "train", "--out", out, "--no-progress", *flags]


def _mpiexec():
    path = shutil.which("mpiexec", path=os.pathsep.join([os.path.dirname(sys.executable), os.environ["PATH"]]))
    if path is None:
        raise SystemExit("benchmarks.distributed: no mpiexec found (pip install mpi4py mpich)")
    return path


def _run(command, threads=None):
    env = dict(os.environ)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    job = subprocess.run(command, env=env, capture_output=True, text=True)
    if job.returncode != 0:
        raise SystemExit(f"benchmarks.distributed: {' '.join(command)} failed:\n{job.stderr}")
    return job.stdout


def _tokens_per_second(out):
    """The median tokens/s of a run's steps after SKIPPED_STEPS, from its log.csv."""
    from numpyllm.runlog import read_log

    rates = [row["tokens_per_second"] for row in read_log(os.path.join(out, "log.csv"))
             if row["tokens_per_second"] is not None and row["step"] > SKIPPED_STEPS]
    return statistics.median(rates)


def communication_seconds(n_params, dtype, repeats):
    """Seconds of one step's MPI calls on a gradient of ``n_params`` (run under mpiexec): the
    median of 5 timed batches of ``repeats`` back-to-back calls, after a warm-up batch."""
    from numpyllm.distributed import world
    from numpyllm.params import flat_views

    ranks = world()
    grads = flat_views(np.ones(n_params, dtype=dtype), [("all", (n_params,))])  # as loss_and_grads returns them
    samples = []
    for _ in range(6):  # the first is a warm-up
        ranks.barrier()  # the ranks leave it up to a poll interval apart: many calls amortize that
        start = time.perf_counter()
        for _ in range(repeats):
            ranks.mean(1.0, 1, grads)
            ranks.any(False)
        samples.append((time.perf_counter() - start) / repeats)
    return statistics.median(samples[1:])


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m benchmarks.distributed", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--quick", action="store_true", help="a one-block model, 1 round, 12 steps a run, rows K=1 and K=2 only")
    add("--rounds", type=int, help="interleaved rounds (default 3; 1 with --quick)")
    add("--steps", type=int, help="optimizer steps per run (default 40; 12 with --quick)")
    add("--preset", default="tiny", help="the model, batch and corpus of this train preset (default tiny)")
    add("--corpus-bytes", type=int, default=1_000_000, help="of the default corpus (default 1,000,000)")
    add("--data", metavar="FILE", help="a text file to train on instead of the default corpus")
    add("--communication-worker", nargs=3, metavar=("N_PARAMS", "DTYPE", "REPEATS"), help=argparse.SUPPRESS)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.communication_worker:
        n_params, dtype, repeats = args.communication_worker
        seconds = communication_seconds(int(n_params), dtype, int(repeats))
        if os.environ.get("PMI_RANK", "0") == "0" and os.environ.get("OMPI_COMM_WORLD_RANK", "0") == "0":
            print(json.dumps({"seconds": seconds}))
        return None
    from numpyllm import GPT, GPTConfig
    from numpyllm.train import make_config

    rounds = args.rounds or (1 if args.quick else 3)
    steps = args.steps or (12 if args.quick else 40)
    cores = usable_cores()
    rows = [(1, cores), (2, max(1, cores // 2))]
    if not args.quick:
        rows[1:1] = [(1, 1)]
        rows += [(cores, 1)] if cores > 2 else []
    config = make_config(args.preset, **(_QUICK_MODEL if args.quick else {}))
    model = dict(n_layer=config.n_layer, n_head=config.n_head, n_embd=config.n_embd,
                 block_size=config.block_size, batch_size=config.batch_size)
    settings = dict(preset=args.preset, corpus_bytes=args.corpus_bytes, max_steps=steps, eval_interval=steps,
                    eval_steps=1, checkpoint_interval=steps, **model, **({"data": args.data} if args.data else {}))

    print("# Data-parallel training benchmark (numpyllm train under mpiexec)\n")
    print(format_machine(machine_info(PACKAGES)))
    with tempfile.TemporaryDirectory(prefix="numpyllm-bench-") as tmp:
        base = os.path.join(tmp, "tokenizer-run")  # trains the BPE once; every row reuses it
        _run(_train_command(1, base, {**settings, "vocab_size": config.vocab_size, "max_steps": 1,
                                            "warmup_steps": 0, "eval_interval": 1, "checkpoint_interval": 1}))
        settings["tokenizer"] = os.path.join(base, "checkpoint")
        rates = {row: [] for row in rows}
        for round_index in range(rounds):
            for k, threads in rows:
                out = os.path.join(tmp, f"k{k}-t{threads}-r{round_index}")
                _run(_train_command(k, out, settings), threads)
                rates[k, threads].append(_tokens_per_second(out))
                shutil.rmtree(out)
        gpt = GPT(GPTConfig(vocab_size=config.vocab_size, block_size=config.block_size, n_layer=config.n_layer,
                            n_head=config.n_head, n_embd=config.n_embd), seed=0)
    communication = json.loads(_run([_mpiexec(), "-n", "2", sys.executable, "-m", "benchmarks.distributed",
                                     "--communication-worker", str(gpt.num_params), config.dtype,
                                     str(10 if args.quick else 100)], threads=1))["seconds"]

    tokens = config.batch_size * config.block_size
    print(f"\n{args.preset} preset's model: {config.n_layer} layers, n_embd {config.n_embd}, vocab "
          f"{config.vocab_size}, {gpt.num_params:,} parameters, {config.dtype}; global batch {config.batch_size} "
          f"× {config.block_size} = {tokens:,} tokens; {steps} steps a run; median over steps > {SKIPPED_STEPS}, "
          f"then over {rounds} interleaved round(s).\n")
    reference = statistics.median(rates[1, cores])
    table = []
    for k, threads in rows:
        rate = statistics.median(rates[k, threads])
        table.append([k, threads, k * threads, f"{rate:,.0f}", f"{min(rates[k, threads]):,.0f}–"
                      f"{max(rates[k, threads]):,.0f}", f"{tokens / rate * 1e3:.0f}", f"{rate / reference:.2f}"])
    print(markdown_table(["processes K", "threads each", "cores used", "tokens/s", "range over rounds",
                          "step ms", f"vs K=1 × {cores} threads"], table))
    step_seconds = tokens / statistics.median(rates[2, max(1, cores // 2)])
    print(f"\ncommunication per step at K=2 (Allreduce of {gpt.num_params:,} {config.dtype} gradients, "
          f"{gpt.num_params * np.dtype(config.dtype).itemsize / 1e6:.1f} MB, and two scalars' votes): "
          f"{communication * 1e3:.2f} ms, {100 * communication / step_seconds:.1f}% of a K=2 step")
    return {"rates": {f"{k}x{t}": r for (k, t), r in rates.items()}, "communication_seconds": communication}


if __name__ == "__main__":
    main()
