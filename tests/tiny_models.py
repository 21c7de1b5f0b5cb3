"""A tiny GPT shape and a model with non-trivial weights, shared by the model, checkpoint and generation tests."""

import numpy as np

from numpyllm import GPT

TINY = dict(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=8)


def perturbed_model(config, seed, backend="numpy", scale=0.1):
    """A model whose every parameter (biases and layernorm gains too) is non-trivial."""
    model = GPT(config, seed=seed, attention_backend=backend)
    model.flat_params += np.random.default_rng(seed).normal(0.0, scale, model.flat_params.size)
    return model
