"""BERT fine-tuning speed: numpyllm's BertForSequenceClassification beside transformers + torch, in one run.

    python -m benchmarks.bert              # 4 layers x 256, 4 heads, intermediate 1024, vocab 30522,
                                           # B=16, T=128 with ~30% right padding, float32
    python -m benchmarks.bert --quick      # fewer rounds
    python -m benchmarks.bert --profile    # then cProfile one numpyllm training step

Rows: numpyllm (its default attention backend) and transformers' BertForSequenceClassification
(its default SDPA attention) in torch, with the same float32 weights, batch, padding mask,
token types and labels. "training step" is the loss, every gradient and an AdamW update
(lr 2e-5, betas (0.9, 0.999), eps 1e-8, weight decay 0.01 on 2-D tensors only, the same
rule for both; no dropout in either, so both compute the same function); "inference" is the
logits alone (torch under no_grad). Tokens/s count the real tokens only (attention_mask
== 1), not the padding. Measurements interleave the rows round by round, so machine load
hits all of them alike; the first round is a warm-up; the table shows medians.
"""

import argparse

import numpy as np

import numpyllm
from numpyllm import BertConfig, BertForSequenceClassification
from numpyllm.bert import config_to_hf

from ._timing import format_machine, interleaved_medians, limited_threads, machine_info, markdown_table
from .model import add_thread_and_profile_arguments, apply_malloc_setting, openblas_kernel_note, profile_step, torch_adamw

PACKAGES = ("numpy", "torch", "transformers", "threadpoolctl")
ADAMW = dict(lr=2e-5, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)


def make_batch(config, batch, seq, padding, seed=0):
    """input_ids, token_type_ids, attention_mask, labels: a right-padded batch with about ``padding``
    of its positions padding (row lengths uniform around (1 - padding)·T; one row full)."""
    rng = np.random.default_rng(seed)
    shortest = max(1, round((1 - 2 * padding) * seq))
    lengths = rng.integers(shortest, seq + 1, batch)
    lengths[0] = seq
    mask = (np.arange(seq) < lengths[:, None]).astype(np.int64)
    ids = rng.integers(1, config.vocab_size, (batch, seq)) * mask  # 0 = [PAD] under the padding
    types = (np.arange(seq) >= lengths[:, None] // 2).astype(np.int64) * mask  # sentence A, then B
    labels = rng.integers(0, config.num_labels, batch)
    return ids, types, mask, labels


def numpyllm_runner(reference, inputs):
    """(training step, inference) callables for a numpyllm model with ``reference``'s weights."""
    model = BertForSequenceClassification(reference.config, attention_backend=reference.attention_backend)
    model.flat_params[:] = reference.flat_params
    optimizer = numpyllm.AdamW(model.params, **ADAMW)
    ids, types, mask, labels = inputs

    def training_step():
        loss, grads = model.loss_and_grads(ids, labels, types, mask)
        optimizer.step(grads)
        return loss

    def inference():
        return model(ids, types, mask)

    return training_step, inference


def torch_runner(reference, inputs):
    """The same two callables for transformers' BertForSequenceClassification holding ``reference``'s weights."""
    import torch
    import transformers

    hf_config = transformers.BertConfig(**config_to_hf(reference.config, "BertForSequenceClassification"))
    hf_config.hidden_dropout_prob = hf_config.attention_probs_dropout_prob = 0.0  # numpyllm has no dropout
    model = transformers.BertForSequenceClassification(hf_config)
    missing, unexpected = model.load_state_dict(
        {name: torch.from_numpy(p.copy()) for name, p in reference.params.items()}, strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    optimizer = torch_adamw(torch, model, ADAMW)
    ids, types, mask, labels = (torch.from_numpy(a) for a in inputs)

    def training_step():
        model.train()
        model.zero_grad(set_to_none=True)
        loss = model(input_ids=ids, token_type_ids=types, attention_mask=mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        return loss.item()

    def inference():
        model.eval()
        with torch.no_grad():
            return model(input_ids=ids, token_type_ids=types, attention_mask=mask).logits.numpy()

    return training_step, inference


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bert", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--quick", action="store_true", help="2 timed rounds")
    add("--rounds", type=int, help="timed rounds after the warm-up (default 7; 2 with --quick)")
    add("--batch", type=int, default=16, help="B (default 16)")
    add("--seq", type=int, default=128, help="T (default 128)")
    add("--padding", type=float, default=0.3, help="fraction of the batch's positions that are padding (default 0.3)")
    add("--layers", type=int, default=4)
    add("--hidden", type=int, default=256)
    add("--heads", type=int, default=4)
    add("--intermediate", type=int, default=1024)
    add("--vocab", type=int, default=30522)
    add("--no-torch", action="store_true", help="numpyllm only")
    add_thread_and_profile_arguments(add)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    malloc_note = apply_malloc_setting(args)
    rounds = args.rounds or (2 if args.quick else 7)
    config = BertConfig(vocab_size=args.vocab, hidden_size=args.hidden, num_hidden_layers=args.layers,
                        num_attention_heads=args.heads, intermediate_size=args.intermediate,
                        max_position_embeddings=max(512, args.seq))
    inputs = make_batch(config, args.batch, args.seq, args.padding)
    reference = BertForSequenceClassification(config, seed=0)
    runners, notes = {"numpyllm": numpyllm_runner(reference, inputs)}, []
    if not args.no_torch:
        try:
            runners["transformers + torch"] = torch_runner(reference, inputs)
        except ImportError as error:
            notes.append(f"torch/transformers not importable ({error}): no torch row")
    machine = machine_info(PACKAGES)
    notes += [note for note in [openblas_kernel_note(machine["thread_pools"]), malloc_note] if note]
    backend = numpyllm.attention.KERNEL.resolve(reference.attention_backend)
    real_tokens = int(inputs[2].sum())

    print("# BERT sequence-classification benchmark\n")
    print(format_machine(machine))
    for note in notes:
        print(f"- {note}")
    print(f"\nnum_hidden_layers={config.num_hidden_layers}, hidden_size={config.hidden_size}, "
          f"heads={config.num_attention_heads}, intermediate={config.intermediate_size}, vocab={config.vocab_size}, "
          f"B={args.batch}, T={args.seq}, {real_tokens} real tokens of {inputs[2].size} "
          f"({100 * (1 - real_tokens / inputs[2].size):.0f}% padding), float32, {reference.num_params:,} parameters; "
          f"numpyllm attention: {backend}; {args.threads} threads; median of {rounds} interleaved rounds after a "
          "warm-up. Tokens/s count real (non-padding) tokens.\n")
    calls = {(name, kind): call for name, pair in runners.items() for kind, call in enumerate(pair)}
    with limited_threads(args.threads, user_api="blas"):
        timings = interleaved_medians(calls, rounds)
    medians = {key: timing.median for key, timing in timings.items()}
    torch_step = medians.get(("transformers + torch", 0))
    torch_inference = medians.get(("transformers + torch", 1))
    rows = []
    for name in runners:
        step, inference = medians[name, 0], medians[name, 1]
        rows.append([name, f"{step * 1e3:.0f}", f"{real_tokens / step:.0f}",
                     f"{torch_step / step:.2f}" if torch_step else "-",
                     f"{inference * 1e3:.0f}", f"{real_tokens / inference:.0f}",
                     f"{torch_inference / inference:.2f}" if torch_inference else "-",
                     f"{timings[name, 0].first_result:.6f}"])
    print(markdown_table(["implementation", "train step ms", "train tok/s", "vs torch (train)", "inference ms",
                          "inference tok/s", "vs torch (inference)", "first loss"], rows))
    if args.profile:
        profile_step({"numpyllm": (None, runners["numpyllm"][0])}, args.threads, args.top)  # (_, training step)
    return {name: dict(training_step_s=medians[name, 0], inference_s=medians[name, 1],
                       first_loss=timings[name, 0].first_result, real_tokens=real_tokens) for name in runners}


if __name__ == "__main__":
    main()
