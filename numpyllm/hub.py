"""Checkpoints in the Hugging Face GPT-2 directory format.

A checkpoint directory holds

    config.json          GPT2Config keys (model_type "gpt2", vocab_size, n_positions, n_embd,
                         n_layer, n_head, ...) plus numpyllm's own "numpyllm_dtype"
    model.safetensors    tensors named "transformer.<name>", metadata {"format": "pt"}

which is what ``transformers.GPT2LMHeadModel.save_pretrained`` writes and loads.
Parameter names are GPT-2's without the "transformer." prefix ("wte.weight",
"h.0.attn.c_attn.weight", ...) and weights keep GPT-2's Conv1D layout (in, out), so
nothing is transposed. The LM head is tied to "wte.weight" and not stored.

Reading also accepts: names with or without the "transformer." prefix (OpenAI's own
GPT-2 files on the Hub have none), sharded safetensors (model.safetensors.index.json),
pytorch_model.bin when torch is installed, float16/bfloat16 tensors (converted), and
the old non-parameter attention-mask buffers "h.<i>.attn.bias"/"h.<i>.attn.masked_bias"
(dropped). safetensors is imported inside the functions that need it; torch only to
read pytorch_model.bin. The expected tensors come from ``numpyllm.model.param_shapes``.
"""

import json
import os
import re

import numpy as np

from .fileio import atomic_write, read_json_object
from .model import _DTYPES, GPTConfig, param_shapes

__all__ = ["read_checkpoint", "write_checkpoint", "CONFIG_NAME", "WEIGHTS_NAME"]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
TORCH_WEIGHTS_NAME = "pytorch_model.bin"

_PREFIX = "transformer."
_MASK_BUFFER = re.compile(r"h\.\d+\.attn\.(bias|masked_bias)")  # causal-mask buffers, not parameters


# --------------------------------------------------------------------------- config.json


def config_from_hf(hf_config, dtype=None):
    """Build a ``GPTConfig`` from a parsed GPT-2 config.json, rejecting what numpyllm cannot compute.

    dtype: "float32"/"float64" to load as; None takes config.json's "numpyllm_dtype",
    else float32 (Hugging Face's float16/bfloat16 checkpoints are widened).
    """
    model_type = hf_config.get("model_type")
    if model_type != "gpt2":
        raise ValueError(f"config.json has model_type {model_type!r}; numpyllm reads GPT-2 checkpoints ('gpt2')")
    sizes = {}
    for key in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head"):
        value = hf_config.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"config.json must have {key!r} as a positive int, got {value!r}")
        sizes[key] = value
    # Settings GPT-2 may vary but numpyllm's model does not: each must have GPT-2's default.
    fixed = {
        "activation_function": ("gelu_new", "gelu_pytorch_tanh"),  # both the tanh approximation
        "layer_norm_epsilon": (1e-5,),
        "n_inner": (None, 4 * sizes["n_embd"]),
        "scale_attn_weights": (True,),
        "scale_attn_by_inverse_layer_idx": (False,),
        "add_cross_attention": (False,),
        "tie_word_embeddings": (True,),
    }
    for key, supported in fixed.items():
        value = hf_config.get(key, supported[0])
        if value not in supported:
            raise ValueError(f"config.json has {key}={value!r}; numpyllm supports only {list(supported)}")
    if dtype is None:
        dtype = hf_config.get("numpyllm_dtype", "float32")
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {_DTYPES}, got {dtype!r}")
    return GPTConfig(
        vocab_size=sizes["vocab_size"],
        block_size=sizes["n_positions"],
        n_layer=sizes["n_layer"],
        n_head=sizes["n_head"],
        n_embd=sizes["n_embd"],
        dtype=dtype,
    )


def config_to_hf(config):
    """The config.json dict for ``config``: a GPT2Config that transformers loads as this model."""
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": config.vocab_size,
        "n_positions": config.block_size,
        "n_ctx": config.block_size,  # the older name of n_positions, still read by old tools
        "n_embd": config.n_embd,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_inner": None,  # 4 * n_embd
        "activation_function": "gelu_new",
        "layer_norm_epsilon": 1e-5,
        "initializer_range": 0.02,
        # numpyllm trains without dropout; zeros make a transformers fine-tune behave the same.
        "attn_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "resid_pdrop": 0.0,
        "scale_attn_weights": True,
        "tie_word_embeddings": True,
        "use_cache": True,
        "dtype": config.dtype,
        "numpyllm_dtype": config.dtype,
    }


# --------------------------------------------------------------------------- weight files


def _import_safetensors():
    try:
        import safetensors.numpy
    except ImportError as error:
        raise ImportError("reading and writing model.safetensors needs the safetensors package: "
                          "pip install safetensors") from error
    return safetensors


def _read_bfloat16(raw_file, data_start, entry):
    """Decode one bfloat16 tensor straight from an open safetensors file (NumPy has no bfloat16).

    A safetensors file is: 8-byte little-endian header length, a JSON header giving each
    tensor's dtype, shape and byte range (``entry``), then the data from ``data_start``.
    bfloat16 is the top 16 bits of a float32, so shifting the raw uint16 left by 16
    gives the exact float32 value.
    """
    begin, end = entry["data_offsets"]
    raw_file.seek(data_start + begin)
    raw = np.frombuffer(raw_file.read(end - begin), dtype="<u2")
    return (raw.astype(np.uint32) << 16).view(np.float32).reshape(entry["shape"])


def _read_safetensors(path):
    """{name: ndarray} of one .safetensors file, bfloat16 widened to float32."""
    safetensors = _import_safetensors()
    tensors = {}
    with safetensors.safe_open(path, framework="np") as f, open(path, "rb") as raw_file:
        header_length = int.from_bytes(raw_file.read(8), "little")
        header = json.loads(raw_file.read(header_length))  # once per file, not per bfloat16 tensor
        for name in f.keys():
            if header[name]["dtype"] == "BF16":
                tensors[name] = _read_bfloat16(raw_file, 8 + header_length, header[name])
            else:
                tensors[name] = f.get_tensor(name)
    return tensors


def _read_torch_bin(path):
    """{name: ndarray} of a pytorch_model.bin state dict (needs torch; loads tensors only)."""
    try:
        import torch
    except ImportError as error:
        raise ImportError(f"{path} is a PyTorch file and reading it needs torch (pip install torch); "
                          f"a {WEIGHTS_NAME} file needs only safetensors") from error
    state = torch.load(path, map_location="cpu", weights_only=True)
    tensors = {}
    for name, tensor in state.items():
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(f"{path}: entry {name!r} is a {type(tensor).__name__}, expected a tensor")
        if tensor.dtype == torch.bfloat16:
            tensor = tensor.float()
        tensors[name] = tensor.detach().numpy()
    return tensors


def _read_weights(directory):
    """{name: ndarray} as stored, from model.safetensors, its shards, or pytorch_model.bin."""
    single = os.path.join(directory, WEIGHTS_NAME)
    index = os.path.join(directory, WEIGHTS_INDEX_NAME)
    torch_bin = os.path.join(directory, TORCH_WEIGHTS_NAME)
    if os.path.isfile(single):
        return _read_safetensors(single)
    if os.path.isfile(index):
        weight_map = read_json_object(index, 'an object with a "weight_map"').get("weight_map")
        if not isinstance(weight_map, dict):
            raise ValueError(f'{index} must map tensor names to shard files under "weight_map"')
        shard_names = sorted(set(map(str, weight_map.values())))
        tensors = {}
        for shard_name in shard_names:
            tensors.update(_read_safetensors(os.path.join(directory, shard_name)))
        return tensors
    if os.path.isfile(torch_bin):
        return _read_torch_bin(torch_bin)
    raise FileNotFoundError(
        f"no weights in checkpoint directory {directory!r}: expected {WEIGHTS_NAME}, "
        f"{WEIGHTS_INDEX_NAME} or {TORCH_WEIGHTS_NAME}"
    )


def _check_param_shapes(tensors, expected, source):
    """Raise naming every missing, unexpected and mis-shaped tensor of ``tensors``."""
    missing = [name for name in expected if name not in tensors]
    if missing:
        raise ValueError(f"{source} is missing tensors {missing}")
    unexpected = sorted(set(tensors) - set(expected))
    if unexpected:
        raise ValueError(f"{source} has unexpected tensors {unexpected}")
    misshaped = [
        f"{name}: expected {expected[name]}, got {np.shape(tensors[name])}"
        for name in expected
        if np.shape(tensors[name]) != tuple(expected[name])
    ]
    if misshaped:
        raise ValueError(f"{source} has tensors of the wrong shape for its config: " + "; ".join(misshaped))
    for name in expected:
        dtype = np.asarray(tensors[name]).dtype
        if dtype.kind != "f":
            raise TypeError(f"{source}: tensor {name!r} must be floating point, got {dtype}")


def _params_from_stored(tensors, expected, source):
    """Map stored names to numpyllm's: strip "transformer.", drop mask buffers, check the tied head."""
    params = {}
    lm_head = None
    for stored_name, tensor in tensors.items():
        name = stored_name[len(_PREFIX):] if stored_name.startswith(_PREFIX) else stored_name
        if _MASK_BUFFER.fullmatch(name):
            continue
        if name == "lm_head.weight":
            lm_head = tensor
            continue
        params[name] = tensor
    _check_param_shapes(params, expected, source)
    if lm_head is not None and not np.array_equal(lm_head, params["wte.weight"]):
        raise ValueError(f"{source}: lm_head.weight differs from wte.weight; numpyllm ties the LM head "
                         "to the token embedding and cannot load an untied one")
    return params


# --------------------------------------------------------------------------- public API


def read_checkpoint(directory, dtype=None):
    """Read a GPT-2 checkpoint directory -> (config: GPTConfig, params: dict[str, ndarray]).

    ``params`` holds every parameter by numpyllm's name (GPT-2's without "transformer."),
    in the Conv1D layout (in, out), as C-contiguous arrays of ``config.dtype`` (copied only to convert).
    dtype: "float32"/"float64" to load as; None takes config.json's "numpyllm_dtype",
    else float32. Raises FileNotFoundError for a missing directory or file, ValueError
    for a config that is not GPT-2 or a setting numpyllm does not compute, and for
    missing, unexpected or mis-shaped tensors (each named).
    """
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"checkpoint directory {directory!r} does not exist")
    config_path = os.path.join(directory, CONFIG_NAME)
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"checkpoint directory {directory!r} has no {CONFIG_NAME}")
    config = config_from_hf(read_json_object(config_path, "a GPT-2 configuration object"), dtype)
    expected = dict(param_shapes(config))
    params = _params_from_stored(_read_weights(directory), expected, f"checkpoint {directory!r}")
    return config, {name: np.ascontiguousarray(params[name], dtype=config.dtype) for name in expected}


def write_checkpoint(directory, config, params):
    """Write ``params`` and ``config`` as a GPT-2 checkpoint directory (created if missing).

    Writes model.safetensors (tensors "transformer.<name>" in ``config.dtype``, metadata
    {"format": "pt"} which transformers requires) and config.json. Both files are written
    completely to temp files first, then renamed into place, weights first: a save that
    fails or is killed before the renames leaves the previous checkpoint as it was. Only
    a crash between the two renames leaves the new weights beside the old config.json
    (for a model of the same shape that is the new checkpoint; otherwise reading it
    names the mis-shaped tensors).
    """
    if not isinstance(config, GPTConfig):
        raise TypeError(f"config must be a GPTConfig, got {type(config).__name__}")
    expected = dict(param_shapes(config))
    if not isinstance(params, dict):
        raise TypeError(f"params must be a dict of name -> numpy.ndarray, got {type(params).__name__}")
    _check_param_shapes(params, expected, "params")
    safetensors = _import_safetensors()
    stored = {_PREFIX + name: np.ascontiguousarray(params[name], dtype=config.dtype) for name in expected}
    weights_bytes = safetensors.numpy.save(stored, metadata={"format": "pt"})
    config_text = json.dumps(config_to_hf(config), indent=2, sort_keys=True) + "\n"
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    # Nested so both temp files are complete before either rename; the inner (weights) renames first.
    with atomic_write(os.path.join(directory, CONFIG_NAME), "w") as config_file:
        with atomic_write(os.path.join(directory, WEIGHTS_NAME)) as weights_file:
            config_file.write(config_text)
            weights_file.write(weights_bytes)
