"""Hugging Face checkpoint directories, format only: config.json and the weight files.

A checkpoint directory holds

    config.json                     the model family's configuration (its ``model_type``)
    model.safetensors               tensors by state-dict name, metadata {"format": "pt"}
    (or model.safetensors.index.json and its shards, or pytorch_model.bin)

which is what transformers' ``save_pretrained`` writes and ``from_pretrained`` reads.
This module knows the files, not the models: each model family (``numpyllm.gpt``,
``numpyllm.bert``) maps its own config fields and tensor names onto these functions,
so nothing here imports a model. Reading accepts sharded safetensors, float16/bfloat16
tensors (returned as stored, bfloat16 widened to float32 since NumPy has no bfloat16)
and pytorch_model.bin when torch is installed (tensors only, never pickled code).
safetensors is imported inside the functions that need it; torch only for .bin files.
"""

import json
import os

import numpy as np

from .fileio import atomic_write, read_json_object

__all__ = ["read_config", "read_weights", "weights_file", "check_param_shapes", "write_pretrained",
           "CONFIG_NAME", "WEIGHTS_NAME"]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
TORCH_WEIGHTS_NAME = "pytorch_model.bin"


def read_config(directory, description, model_type=None):
    """The parsed config.json of checkpoint ``directory`` (a dict), or a FileNotFoundError/ValueError.

    description: what the JSON object should be, for the error message ("a GPT-2 configuration object").
    model_type: the ``model_type`` the file must name ("gpt2", "bert"), or None to accept any.
    """
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"checkpoint directory {directory!r} does not exist")
    config_path = os.path.join(directory, CONFIG_NAME)
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"checkpoint directory {directory!r} has no {CONFIG_NAME}")
    config = read_json_object(config_path, description)
    if model_type is not None and config.get("model_type") != model_type:
        raise ValueError(f"{config_path} has model_type {config.get('model_type')!r}, expected {model_type!r} "
                         f"({description})")
    return config


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


def weights_file(directory):
    """The path of the weights in ``directory``: model.safetensors, else its shard index, else pytorch_model.bin."""
    for name in (WEIGHTS_NAME, WEIGHTS_INDEX_NAME, TORCH_WEIGHTS_NAME):
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(
        f"no weights in checkpoint directory {directory!r}: expected {WEIGHTS_NAME}, "
        f"{WEIGHTS_INDEX_NAME} or {TORCH_WEIGHTS_NAME}"
    )


def read_weights(directory):
    """{name: ndarray} as stored, from model.safetensors, its shards, or pytorch_model.bin (see weights_file)."""
    path = weights_file(directory)
    if path.endswith(WEIGHTS_INDEX_NAME):
        weight_map = read_json_object(path, 'an object with a "weight_map"').get("weight_map")
        if not isinstance(weight_map, dict):
            raise ValueError(f'{path} must map tensor names to shard files under "weight_map"')
        shard_names = sorted(set(map(str, weight_map.values())))
        tensors = {}
        for shard_name in shard_names:
            tensors.update(_read_safetensors(os.path.join(directory, shard_name)))
        return tensors
    if path.endswith(TORCH_WEIGHTS_NAME):
        return _read_torch_bin(path)
    return _read_safetensors(path)


def check_param_shapes(tensors, expected, source):
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


def write_pretrained(directory, hf_config, tensors):
    """Write ``tensors`` ({state-dict name: ndarray}) and ``hf_config`` (a dict) as a checkpoint directory.

    Writes model.safetensors (metadata {"format": "pt"}, which transformers requires) and
    config.json, creating the directory if missing. Both files are written completely to
    temp files first, then renamed into place, weights first: a save that fails or is
    killed before the renames leaves the previous checkpoint as it was. Only a crash
    between the two renames leaves the new weights beside the old config.json (for a
    model of the same shape that is the new checkpoint; otherwise reading it names the
    mis-shaped tensors).
    """
    safetensors = _import_safetensors()
    stored = {name: np.ascontiguousarray(tensor) for name, tensor in tensors.items()}
    weights_bytes = safetensors.numpy.save(stored, metadata={"format": "pt"})
    config_text = json.dumps(hf_config, indent=2, sort_keys=True) + "\n"
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    # Nested so both temp files are complete before either rename; the inner (weights) renames first.
    with atomic_write(os.path.join(directory, CONFIG_NAME), "w") as config_file:
        with atomic_write(os.path.join(directory, WEIGHTS_NAME)) as weights_file:
            config_file.write(config_text)
            weights_file.write(weights_bytes)
