"""Generation speed: numpyllm's KV-cached ``GPT.generate`` beside transformers' ``generate``.

    python -m benchmarks.generate                 # 6 layers, 6 heads, 384 wide, vocab 4096, block 128
    python -m benchmarks.generate --threads 1     # BLAS / torch threads (default 2)
    python -m benchmarks.generate --quick         # 2 layers, 3 rounds

Both generate greedily (temperature 0 / do_sample=False) ``--new-tokens`` tokens from the
same random ``--prompt-tokens``-token prompt with the same float32 weights (numpyllm's
initialisation, handed to transformers through ``save_pretrained``). Each row is the
median over interleaved rounds of one whole ``generate`` call (prefill included) in the
same run; tokens/s = new tokens / that median. Each timed call starts after SETTLE_SECONDS
idle: by default OpenBLAS's worker threads spin for ~0.1 s after a call (measured: 0.107 s of
CPU while the caller sleeps), so without the pause the row after a BLAS-heavy one (the floor,
the layer functions) would share the cores with them. (numpyllm, imported first here, makes
them sleep after ~0.1 ms, numpyllm._blas_threads; the pause covers a timeout set otherwise.)
The numpyllm rows differ only in the attention backend: "auto" (the default: the compiled
kernel when built), "numpy" and "cython". With the layer kernels built (numpyllm.backend), "auto" and "cython" run each
decoding step and a prompt of up to 16 tokens as one call of numpyllm._layers.DecodeStep (every
layer, attention and the tied head in one OpenMP region, no BLAS), while "numpy" runs the
layer functions one by one. The last column says whether a row's tokens equal the first row's.

The "weight products only" row is a floor, not a generator: per new token it multiplies one
row by every weight matrix a decoding step multiplies (each block's four, then the tied
head), with NumPy and nothing else. Batch-1 decoding must read all the weights once per
token, so a NumPy decoder of this model cannot run faster than that row on this machine.
"""

import argparse
import sys
import tempfile

import numpy as np

from numpyllm import GPT, GPTConfig, attention

from ._timing import format_machine, interleaved_medians, limited_threads, machine_info, markdown_table

FULL = dict(vocab_size=4096, block_size=128, n_layer=6, n_head=6, n_embd=384)
QUICK = dict(FULL, n_layer=2)
WEIGHT_PRODUCTS = "floor: weight products only (no generator)"
SETTLE_SECONDS = 0.2  # idle before each timed call, untimed: BLAS threads of the previous row stop spinning


def numpyllm_runner(model, backend, prompt, new_tokens):
    """A greedy numpyllm generate with the given attention backend (the model is shared)."""

    def run():
        model.attention_backend = backend
        return model.generate(prompt, new_tokens, temperature=0)

    return run


def weight_products_runner(model, new_tokens):
    """new_tokens times: a row (1, n_in) @ every weight matrix a decoding step multiplies."""
    matrices = [w for i in range(model.config.n_layer) for w in model.block_params(i).values() if w.ndim == 2]
    matrices.append(model.params["wte.weight"].T)  # the tied head: (C, V)
    rows = {n_in: np.ones((1, n_in), dtype=model.config.dtype) for n_in in {w.shape[0] for w in matrices}}

    def run():
        for _ in range(new_tokens):
            for w in matrices:
                rows[w.shape[0]] @ w

    return run


def transformers_runner(directory, prompt, new_tokens):
    """A greedy transformers generate on the checkpoint in ``directory``, or None without transformers."""
    try:
        import torch
        import transformers
    except ImportError:
        return None
    transformers.logging.set_verbosity_error()  # its note on GPT-2's default bos/eos ids, not ours to fix
    transformers.logging.disable_progress_bar()
    model = transformers.GPT2LMHeadModel.from_pretrained(directory).eval()
    ids = torch.from_numpy(prompt)
    mask = torch.ones_like(ids)

    def run():
        with torch.no_grad():
            out = model.generate(ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                 do_sample=False, pad_token_id=0)
        return out.numpy()

    return run


def run_benchmark(config, prompt_tokens, new_tokens, rounds):
    """[(name, median seconds per generate call, tokens)] for each implementation, timed
    side by side in interleaved rounds after a warm-up round (``_timing.interleaved_medians``)."""
    model = GPT(config, seed=0)
    prompt = np.random.default_rng(0).integers(0, config.vocab_size, size=(1, prompt_tokens))
    runners = {}
    for backend in ["auto", "numpy"] + (["cython"] if "cython" in attention.available_backends() else []):
        runners[f"numpyllm (attention {backend})"] = numpyllm_runner(model, backend, prompt, new_tokens)
    with tempfile.TemporaryDirectory() as directory:
        model.save_pretrained(directory)
        hf = transformers_runner(directory, prompt, new_tokens)
    if hf is not None:
        runners["transformers GPT2LMHeadModel"] = hf
    runners[WEIGHT_PRODUCTS] = weight_products_runner(model, new_tokens)
    timings = interleaved_medians(runners, rounds, settle_seconds=SETTLE_SECONDS)
    return [(name, timing.median, timing.last_result) for name, timing in timings.items()]


def format_results(results, new_tokens):
    reference_seconds = next((seconds for name, seconds, _ in results if name.startswith("transformers")), None)
    first_tokens = results[0][2]
    rows = []
    for name, seconds, tokens in results:
        speedup = f"{reference_seconds / seconds:.2f}×" if reference_seconds else "n/a"
        same = "n/a" if name == WEIGHT_PRODUCTS else "yes" if np.array_equal(tokens, first_tokens) else "NO"
        rows.append([name, f"{new_tokens / seconds:.0f}", f"{1e3 * seconds / new_tokens:.2f}", speedup, same])
    return markdown_table(["implementation", "tokens/s", "ms/token", "vs transformers", "same tokens"], rows)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.generate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="BLAS, OpenMP and torch threads (default 2)")
    parser.add_argument("--prompt-tokens", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds (default 7)")
    parser.add_argument("--quick", action="store_true", help="2 layers, 3 rounds")
    args = parser.parse_args(argv)
    config = GPTConfig(**(QUICK if args.quick else FULL))
    rounds = 3 if args.quick else args.rounds
    if args.prompt_tokens + args.new_tokens > config.block_size:
        parser.error(f"--prompt-tokens + --new-tokens must be <= block_size {config.block_size} "
                     "(transformers cannot generate past it)")

    with limited_threads(args.threads):
        results = run_benchmark(config, args.prompt_tokens, args.new_tokens, rounds)
        info = machine_info(packages=("numpy", "torch", "transformers"))
    print(f"## Greedy generation: {args.new_tokens} new tokens from a {args.prompt_tokens}-token prompt\n")
    print(f"Model: {config.n_layer} layers, {config.n_head} heads, n_embd {config.n_embd}, "
          f"vocab {config.vocab_size}, block {config.block_size}, float32; {args.threads} threads; "
          f"median of {rounds} interleaved rounds of one generate call each (prefill included).\n")
    print(format_results(results, args.new_tokens))
    print()
    print(format_machine(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
