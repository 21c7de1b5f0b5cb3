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
import math
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


# bytes per element of each safetensors dtype numpyllm reads (F8 and complex types are refused)
_SAFETENSORS_ITEMSIZE = {"BOOL": 1, "U8": 1, "I8": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
                         "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
_MAX_HEADER_BYTES = 100_000_000  # the safetensors library's own limit


def _safetensors_header(path, raw_file):
    """The validated JSON header of the open safetensors file ``path``: {name: entry}.

    A safetensors file is: 8-byte little-endian header length N, N bytes of JSON giving
    each tensor's dtype, shape and byte range [begin, end) in the data that follows. The
    header is checked against the file's size before anything is allocated from it: N
    within the file, every dtype known, every shape a list of non-negative ints whose
    byte count equals end - begin, and every range inside the data without overlapping
    another. Raises ValueError naming ``path`` and what is wrong.
    """
    size = os.fstat(raw_file.fileno()).st_size
    if size < 8:
        raise ValueError(f"{path} is not a safetensors file: {size} bytes, shorter than its 8-byte header length")
    header_length = int.from_bytes(raw_file.read(8), "little")
    if header_length > min(size - 8, _MAX_HEADER_BYTES):
        raise ValueError(f"{path} is truncated or not a safetensors file: its header claims {header_length} "
                         f"bytes, the file has {size - 8} after the length")
    try:
        header = json.loads(raw_file.read(header_length))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise ValueError(f"{path} has a damaged safetensors header ({error})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path}: the safetensors header must be a JSON object, got {type(header).__name__}")
    header.pop("__metadata__", None)
    data_size = size - 8 - header_length
    ranges = []
    for name, entry in header.items():
        where = f"{path}: tensor {name!r}"
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise ValueError(f"{where} must have exactly dtype, shape and data_offsets, got {entry!r}")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if dtype not in _SAFETENSORS_ITEMSIZE:
            raise ValueError(f"{where} has dtype {dtype!r}; numpyllm reads {sorted(_SAFETENSORS_ITEMSIZE)}")
        if not isinstance(shape, list) or not all(type(n) is int and n >= 0 for n in shape):
            raise ValueError(f"{where} has shape {shape!r}, expected a list of non-negative ints")
        if (not isinstance(offsets, list) or len(offsets) != 2 or not all(type(n) is int for n in offsets)
                or not 0 <= offsets[0] <= offsets[1]):
            raise ValueError(f"{where} has data_offsets {offsets!r}, expected [begin, end] with 0 <= begin <= end")
        if offsets[1] > data_size:
            raise ValueError(f"{path} is truncated: tensor {name!r} ends at byte {offsets[1]} of the data, "
                             f"which has {data_size} bytes")
        nbytes = math.prod(shape) * _SAFETENSORS_ITEMSIZE[dtype]
        if nbytes != offsets[1] - offsets[0]:
            raise ValueError(f"{where}: shape {shape} of {dtype} is {nbytes} bytes but data_offsets "
                             f"{offsets} hold {offsets[1] - offsets[0]}")
        ranges.append((offsets[0], offsets[1], name))
    ranges.sort()
    for (_, end, first), (begin, _, second) in zip(ranges, ranges[1:]):
        if begin < end:
            raise ValueError(f"{path}: tensors {first!r} and {second!r} overlap in the data")
    return header, 8 + header_length


def _read_bfloat16(raw_file, data_start, entry):
    """Decode one bfloat16 tensor straight from an open safetensors file (NumPy has no bfloat16).

    bfloat16 is the top 16 bits of a float32, so shifting the raw uint16 left by 16
    gives the exact float32 value. ``entry`` is the tensor's validated header entry.
    """
    begin, end = entry["data_offsets"]
    raw_file.seek(data_start + begin)
    raw = np.frombuffer(raw_file.read(end - begin), dtype="<u2")
    return (raw.astype(np.uint32) << 16).view(np.float32).reshape(entry["shape"])


def _read_safetensors(path):
    """{name: ndarray} of one .safetensors file, bfloat16 widened to float32.

    The header is validated first (``_safetensors_header``); only then does the
    safetensors library read the tensors. Any error names ``path``.
    """
    safetensors = _import_safetensors()
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file {path!r} does not exist")
    with open(path, "rb") as raw_file:
        header, data_start = _safetensors_header(path, raw_file)
        try:
            with safetensors.safe_open(path, framework="np") as f:
                return {name: _read_bfloat16(raw_file, data_start, entry) if entry["dtype"] == "BF16"
                        else f.get_tensor(name) for name, entry in header.items()}
        except safetensors.SafetensorError as error:  # what the checks above do not cover
            raise ValueError(f"{path} is not a readable safetensors file ({error})") from None


def _read_torch_bin(path):
    """{name: ndarray} of a pytorch_model.bin state dict (needs torch; loads tensors only).

    ``weights_only=True``: torch's restricted unpickler builds tensors and plain
    containers and refuses anything else, so a file cannot run code. Whatever torch
    raises for a damaged or hostile file (its errors have no common class) becomes a
    ValueError naming ``path``.
    """
    try:
        import torch
    except ImportError as error:
        raise ImportError(f"{path} is a PyTorch file and reading it needs torch (pip install torch); "
                          f"a {WEIGHTS_NAME} file needs only safetensors") from error
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 -- UnpicklingError, RuntimeError, EOFError, ... (see above)
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"{path} is not a readable PyTorch state dict ({type(error).__name__}: {reason})") from None
    if not isinstance(state, dict):
        raise ValueError(f"{path} must hold a state dict (name -> tensor), got a {type(state).__name__}")
    tensors = {}
    for name, tensor in state.items():
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(f"{path}: entry {name!r} is a {type(tensor).__name__}, expected a tensor")
        if tensor.dtype == torch.bfloat16:
            tensor = tensor.float()
        tensors[name] = tensor.detach().numpy()
    return tensors


def _read_shards(index_path):
    """{name: ndarray} of a sharded checkpoint: the index's weight_map and every shard it names.

    The shard names must be plain file names beside the index (no path can lead out of
    the directory), and each shard must hold exactly the tensors the index maps to it.
    """
    directory = os.path.dirname(index_path)
    weight_map = read_json_object(index_path, 'an object with a "weight_map"').get("weight_map")
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise ValueError(f'{index_path} must map tensor names to shard file names under "weight_map"')
    tensors = {}
    for shard_name in sorted(set(weight_map.values())):
        if os.path.basename(shard_name) != shard_name or shard_name in ("", ".", ".."):
            raise ValueError(f"{index_path} names the shard {shard_name!r}; shards must be files beside the index")
        shard_path = os.path.join(directory, shard_name)
        if not os.path.isfile(shard_path):
            raise FileNotFoundError(f"{index_path} names the shard {shard_name!r}, which does not exist")
        shard = _read_safetensors(shard_path)
        mapped = {name for name, owner in weight_map.items() if owner == shard_name}
        if set(shard) != mapped:
            raise ValueError(f"{shard_path} does not match {index_path}: it holds "
                             f"{sorted(set(shard) - mapped)[:5]} not mapped to it and lacks "
                             f"{sorted(mapped - set(shard))[:5]}")
        tensors.update(shard)
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


def check_model_fits_weights(directory, claimed, tensors):
    """Refuse a config.json whose model needs more than twice the values its weight files hold.

    claimed: the parameter count config.json describes (a lower bound is enough); tensors:
    what ``read_weights`` returned. Called before the model is allocated, so a config that
    claims a huge model fails here instead of by allocating it. (Twice, not equal: a
    checkpoint may lack a head that loading initializes fresh.)
    """
    stored = sum(np.size(tensor) for tensor in tensors.values())
    if claimed > 2 * stored:
        raise ValueError(f"{os.path.join(os.fspath(directory), CONFIG_NAME)} describes a model of {claimed:,} "
                         f"parameters but {weights_file(os.fspath(directory))} holds only {stored:,} values")


def read_weights(directory):
    """{name: ndarray} as stored, from model.safetensors, its shards, or pytorch_model.bin (see weights_file).

    A damaged, truncated or hostile file raises ValueError naming it, before any array
    larger than the file is allocated; a missing shard, FileNotFoundError.
    """
    path = weights_file(directory)
    if path.endswith(WEIGHTS_INDEX_NAME):
        return _read_shards(path)
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
