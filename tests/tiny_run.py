"""A tiny corpus and model settings for the training tests: each run takes a fraction of a second."""

import random


def write_corpus(path, n_functions=300):
    """Write a small, very regular Python-like text (so a tiny model learns it fast) to ``path``."""
    rng = random.Random(0)
    names = ["alpha", "beta", "gamma", "delta", "omega", "sigma"]
    lines = []
    for i in range(n_functions):
        name = f"{rng.choice(names)}_{rng.choice(names)}"
        lines.append(f"def {name}(x, y):\n    return x * {i % 7} + y\n\n")
    path.write_text("".join(lines), encoding="utf-8")
    return path


def tiny_overrides(data_path, **changes):
    """TrainConfig overrides for a run of a one-block, 16-wide model on ``data_path``."""
    overrides = dict(
        data=(str(data_path),), vocab_size=300, n_layer=1, n_head=2, n_embd=16, block_size=16,
        batch_size=4, max_steps=20, warmup_steps=2, lr=1e-2, eval_interval=10, eval_steps=2,
        checkpoint_interval=100, attention_backend="numpy",
    )
    overrides.update(changes)
    return overrides
