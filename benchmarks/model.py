"""GPT training speed: numpyllm beside transformers + torch on the same weights, in one run.

    python -m benchmarks.model              # 6 layers, 6 heads, n_embd 384, vocab 4096, B=8, T=256, float32
    python -m benchmarks.model --quick      # fewer repeats, Cython attention only
    python -m benchmarks.model --profile    # then cProfile one numpyllm training step: where the time goes

Rows: numpyllm with each attention backend, and transformers' GPT2LMHeadModel (its
default SDPA attention) in torch. Each gets the same float32 weights, batch and targets.
The floor row is no model: it runs only the step's weight matrix products at the step's
shapes (each linear layer's forward x @ W and backward dy @ Wᵀ and xᵀ dy, the tied head
included; not attention's own products) with ``numpyllm.layers.matmul``, the call the step
makes (kernels/gemm.h where it runs, else NumPy's BLAS), so "% of floor" says how close a
step comes to the time its dense products alone take here. Where gemm.h runs, a second row
times the same products with NumPy's @ (BLAS) into preallocated outputs, for comparison.
"forward+backward" is the loss and every parameter gradient; "training step" adds
AdamW (lr 3e-4, betas (0.9, 0.95), eps 1e-8, weight decay 0.1 on 2-D tensors only,
the same rule for both). Measurements interleave the rows round by round, so machine
load hits all of them alike; the first round is a warm-up; the table shows medians.
"""

import argparse
import cProfile
import io
import os
import pstats
import time

import numpy as np

import numpyllm
from numpyllm import GPT, GPTConfig, attention, layers
from numpyllm.gpt import config_to_hf
from numpyllm.memory import retain_freed_memory

from ._timing import (cpu_flags, format_machine, interleaved_medians, limited_threads, linear_products, machine_info,
                      markdown_table, usable_cores)

PACKAGES = ("numpy", "torch", "transformers", "threadpoolctl")
FLOOR = "floor: weight products only (no model)"
BLAS_FLOOR = "the same products with NumPy's @ (BLAS)"
LINEAR_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
ADAMW = dict(lr=3e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)


def numpyllm_runner(config, backend, flat_params, idx, targets):
    """(forward+backward, training step) callables for a numpyllm GPT with these weights."""
    model = GPT(config, attention_backend=backend)
    model.flat_params[:] = flat_params
    optimizer = numpyllm.AdamW(model.params, **ADAMW)

    def forward_backward():
        return model.loss_and_grads(idx, targets)[0]

    def training_step():
        loss, grads = model.loss_and_grads(idx, targets)
        optimizer.step(grads)
        return loss

    return forward_backward, training_step


def torch_adamw(torch, model, adamw):
    """torch.optim.AdamW over ``model``'s parameters with numpyllm's rule: weight decay on 2-D tensors only.

    adamw: dict of lr, betas, eps, weight_decay (as numpyllm.AdamW takes them).
    """
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": adamw["weight_decay"]},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=adamw["lr"], betas=adamw["betas"], eps=adamw["eps"])


def torch_runner(config, params, idx, targets):
    """The same two callables for transformers' GPT2LMHeadModel holding ``params``."""
    import torch
    import transformers

    hf_config = transformers.GPT2Config(**config_to_hf(config), bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(hf_config).train()
    model.load_state_dict({"transformer." + name: torch.from_numpy(p.copy()) for name, p in params.items()},
                          strict=False)  # lm_head.weight is tied to wte
    optimizer = torch_adamw(torch, model, ADAMW)
    idx_t, targets_t = torch.from_numpy(idx), torch.from_numpy(targets).reshape(-1)

    def forward_backward():
        model.zero_grad(set_to_none=True)
        logits = model(idx_t).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, config.vocab_size), targets_t, ignore_index=-1)
        loss.backward()
        return loss.item()

    def training_step():
        loss = forward_backward()
        optimizer.step()
        return loss

    return forward_backward, training_step


def matrix_products_runner(model, n_rows, numpy_products=False):
    """A call running every weight product of one training step of ``model`` on ``n_rows`` = B·T
    rows: for each linear layer (each block's four, then the tied head) y = x @ W, dx = dy @ Wᵀ and
    dW = xᵀ dy, on random operands: through numpyllm's linear_forward and linear_backward (no bias),
    or with NumPy's @ into outputs allocated once (``numpy_products``)."""
    rng = np.random.default_rng(0)
    dtype = model.config.dtype
    weights = [model.block_params(i)[name] for i in range(model.config.n_layer) for name in LINEAR_WEIGHTS]
    weights.append(model.params["wte.weight"].T)  # the tied head: (C, V)
    products = []
    for w in weights:
        n_in, n_out = w.shape
        x = rng.standard_normal((n_rows, n_in)).astype(dtype)
        dy = rng.standard_normal((n_rows, n_out)).astype(dtype)
        y, dx, dw = np.empty((n_rows, n_out), dtype), np.empty((n_rows, n_in), dtype), np.empty((n_in, n_out), dtype)
        products.append((x, w, dy, y, dx, dw))

    def run_numpy():
        for x, w, dy, y, dx, dw in products:
            np.matmul(x, w, out=y)  # forward
            np.matmul(dy, w.T, out=dx)  # backward, input gradient
            if w.shape[0] >= w.shape[1]:  # backward, weight gradient (OpenBLAS's faster layout)
                np.matmul(x.T, dy, out=dw)
            else:
                np.matmul(dy.T, x, out=dw.T)

    if numpy_products:
        return run_numpy
    caches = [layers.linear_forward(x, w)[1] for x, w, *_ in products]

    def run_numpyllm():  # the linear layers' own calls, without a bias
        for (x, w, dy, *_), cache in zip(products, caches):
            layers.linear_forward(x, w)
            layers.linear_backward(dy, cache)

    return run_numpyllm


def gemm_runs():
    """Whether the linear layers' float32 products are kernels/gemm.h's here (else NumPy's BLAS)."""
    return linear_products() == "avx512"


def make_runners(args, reference, idx, targets):
    """{row name: (forward_backward, training_step)}, each holding ``reference``'s weights,
    and notes on rows left out."""
    config = reference.config
    runners, notes = {}, []
    backends = [b for b in ("cython", "numpy") if b in attention.available_backends()]
    if "cython" not in backends:
        notes.append("numpyllm's Cython attention kernel is not built: numpy attention only")
    if args.quick and "cython" in backends:
        backends = ["cython"]
    for backend in backends:
        runners[f"numpyllm ({backend} attention)"] = numpyllm_runner(
            config, backend, reference.flat_params, idx, targets)
    try:
        runners["transformers + torch"] = torch_runner(config, reference.params, idx, targets)
    except ImportError as error:
        notes.append(f"torch/transformers not importable ({error}): no torch row")
    products = matrix_products_runner(reference, idx.size)
    runners[FLOOR] = (products, products)  # no optimizer: the floor of both measurements
    if gemm_runs():
        blas = matrix_products_runner(reference, idx.size, numpy_products=True)
        runners[BLAS_FLOOR] = (blas, blas)
    return runners, notes


def time_rounds(runners, rounds, threads):
    """Median seconds of each (row, measurement) over ``rounds`` interleaved rounds after one warm-up,
    and each row's first loss (before any optimizer step); BLAS and torch use ``threads`` threads."""
    calls = {(name, kind): call for name, pair in runners.items() for kind, call in enumerate(pair)}
    with limited_threads(threads, user_api="blas"):
        timings = interleaved_medians(calls, rounds)
    first_loss = {name: timings[name, 0].first_result for name in runners if name not in (FLOOR, BLAS_FLOOR)}  # warm-up fwd+bwd
    return {key: timing.median for key, timing in timings.items()}, first_loss


def profile_step(runners, threads, top):
    """cProfile one numpyllm training step (the first numpyllm row); the top functions by own time."""
    name, (_, training_step) = next((n, r) for n, r in runners.items() if n.startswith("numpyllm"))
    profiler = cProfile.Profile()
    with limited_threads(threads, user_api="blas"):
        training_step()  # warm-up
        start = time.perf_counter()
        profiler.runcall(training_step)
        total = time.perf_counter() - start
    stats = pstats.Stats(profiler, stream=io.StringIO())
    rows = []
    for (filename, line, function), (_, calls, own, cumulative, _) in stats.stats.items():
        where = f"{filename.rsplit('/', 1)[-1]}:{line} {function}" if line else function
        rows.append((own, cumulative, calls, where))
    rows.sort(reverse=True)
    table = [(where, calls, f"{own * 1e3:.0f}", f"{100 * own / total:.1f}", f"{cumulative * 1e3:.0f}")
             for own, cumulative, calls, where in rows[:top]]
    print(f"\n## Profile of one training step: {name}, {total * 1e3:.0f} ms under cProfile\n")
    print("Own time excludes callees; NumPy operators (@, +, *) run inside the Python function that "
          "uses them and count as its own time.\n")
    print(markdown_table(["function", "calls", "own ms", "own %", "cumulative ms"], table))


def openblas_kernel_note(thread_pools):
    """A hint when NumPy's OpenBLAS runs AVX2 ("Haswell") kernels on a CPU with AVX-512 (e.g. AMD
    Zen 4, which OpenBLAS 0.3.31 does not recognise), else None. Matrix products are most of a step.

    thread_pools: ``machine_info()["thread_pools"]``.
    """
    if isinstance(thread_pools, str):  # threadpoolctl is not installed: nothing to tell
        return None
    numpy_blas = [pool for pool in thread_pools if pool["internal_api"] == "openblas" and "numpy" in pool["library"]]
    if not ("avx512f" in cpu_flags() and numpy_blas and numpy_blas[0]["architecture"] == "Haswell"):
        return None
    note = "NumPy's OpenBLAS uses its Haswell (AVX2) kernels on this AVX-512 CPU"
    forced = os.environ.get("OPENBLAS_CORETYPE")
    if forced:  # some images set it: then it, not OpenBLAS's CPU detection, picked the kernels
        return (f"{note} because OPENBLAS_CORETYPE={forced} is set; "
                "unset it (or set SkylakeX) for the AVX-512 ones")
    return f"{note}; OPENBLAS_CORETYPE=SkylakeX in the environment selects the AVX-512 ones"


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m benchmarks.model", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--quick", action="store_true", help="2 timed rounds and numpyllm with the Cython kernel only")
    add("--rounds", type=int, help="timed rounds after the warm-up (default 5; 2 with --quick)")
    add("--batch", type=int, default=8, help="B (default 8)")
    add("--seq", type=int, default=256, help="T, also block_size (default 256)")
    add("--n-layer", type=int, default=6)
    add("--n-head", type=int, default=6)
    add("--n-embd", type=int, default=384)
    add("--vocab", type=int, default=4096)
    add_thread_and_profile_arguments(add)
    return parser


def add_thread_and_profile_arguments(add):
    """--threads, --profile and --top, for the training-step benchmarks (add: parser.add_argument)."""
    add("--threads", type=int, default=usable_cores(),
        help="BLAS threads (threadpoolctl) and torch.set_num_threads (default: usable cores, %(default)s)")
    add("--profile", action="store_true", help="also cProfile one numpyllm training step")
    add("--top", type=int, default=20, help="functions listed by --profile (default 20)")
    add("--malloc-defaults", action="store_true",
        help="leave glibc's malloc as it is; by default freed memory is retained for the next step, as "
             "numpyllm's training loop does (numpyllm.memory), for every row alike")


def apply_malloc_setting(args):
    """Retain freed memory as the training loop does, unless --malloc-defaults; a note for the table."""
    if args.malloc_defaults:
        return "malloc: glibc's defaults (--malloc-defaults)"
    if retain_freed_memory():
        return "malloc: freed memory retained between steps (numpyllm.memory, as numpyllm's training loop does; every row shares the process)"
    return "malloc: the platform's defaults (not glibc)"


def main(argv=None):
    args = build_parser().parse_args(argv)
    malloc_note = apply_malloc_setting(args)
    rounds = args.rounds or (2 if args.quick else 5)
    config = GPTConfig(vocab_size=args.vocab, block_size=args.seq, n_layer=args.n_layer, n_head=args.n_head,
                       n_embd=args.n_embd)
    rng = np.random.default_rng(0)
    idx = rng.integers(0, config.vocab_size, (args.batch, args.seq))
    targets = rng.integers(0, config.vocab_size, (args.batch, args.seq))
    reference = GPT(config, seed=0)
    runners, notes = make_runners(args, reference, idx, targets)
    machine = machine_info(PACKAGES)
    notes += [note for note in [openblas_kernel_note(machine["thread_pools"]), malloc_note] if note]

    print("# GPT training-step benchmark\n")
    print(format_machine(machine))
    for note in notes:
        print(f"- {note}")
    print(f"\nn_layer={config.n_layer}, n_head={config.n_head}, n_embd={config.n_embd}, "
          f"vocab={config.vocab_size}, B={args.batch}, T={args.seq}, float32, {reference.num_params:,} "
          f"parameters; {args.threads} threads; median of {rounds} interleaved rounds after a warm-up.\n")
    medians, first_loss = time_rounds(runners, rounds, args.threads)
    tokens = args.batch * args.seq
    torch_step = medians.get(("transformers + torch", 1))
    floor = medians[FLOOR, 1]
    rows = []
    for name in runners:
        fb, step = medians[name, 0], medians[name, 1]
        rows.append([name, f"{fb * 1e3:.0f}", f"{tokens / fb:.0f}", f"{step * 1e3:.0f}", f"{tokens / step:.0f}",
                     f"{torch_step / step:.2f}" if torch_step else "-", f"{100 * floor / step:.0f}%",
                     f"{first_loss[name]:.6f}" if name in first_loss else "-"])
    print(markdown_table(["implementation", "fwd+bwd ms", "fwd+bwd tok/s", "train step ms", "train step tok/s",
                          "speed vs torch (step)", "% of floor (step)", "first loss"], rows))
    if args.profile:
        profile_step(runners, args.threads, args.top)
    return {name: dict(forward_backward_s=medians[name, 0], training_step_s=medians[name, 1],
                       first_loss=first_loss.get(name)) for name in runners}


if __name__ == "__main__":
    main()
