"""Damaged and hostile files: each file of a real (tiny) checkpoint, cut short, bytes flipped,
deleted or replaced by another file's content, gives one line naming it from the command
line (never a traceback), and a run directory that was to be written is left as it was."""

import os
import pickle
import shutil

import numpy as np
import pytest

from numpyllm import __main__ as cli
from numpyllm import hub
from numpyllm.data import load_tokens
from numpyllm.optim import AdamW
from numpyllm.train import train

from tiny_run import tiny_overrides, write_corpus

MODEL_FILES = ["config.json", "model.safetensors", "vocab.json", "merges.txt"]
RUN_FILES = ["checkpoint/optimizer.npz", "checkpoint/trainer_state.json", "tokens.npy", "log.csv"]
# Damage that no reader may accept, and damage a reader may find harmless (a flipped float
# in a weight, a deleted tokens.npy or log.csv that a resume writes anew).
TRUNCATIONS = [0, 1, 7, 9, 0.5, -1]
FLIPS = [0, 8, 0.5, -2]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("damage")
    corpus = write_corpus(root / "corpus.txt", n_functions=120)
    assert train(root / "run", overrides=tiny_overrides(corpus, max_steps=4, eval_interval=2)) == 0
    return root / "run"


def _offset(position, size):
    return int(size * position) if isinstance(position, float) else position % max(size, 1)


def damage(path, kind, arg, other):
    data = path.read_bytes()
    if kind == "truncate":
        path.write_bytes(data[:_offset(arg, len(data))] if arg != -1 else data[:-1])
    elif kind == "flip":
        i = _offset(arg, len(data))
        path.write_bytes(data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1:])
    elif kind == "delete":
        path.unlink()
    else:  # replace with another file's content
        path.write_bytes(other.read_bytes())


def snapshot(directory):
    return {p.relative_to(directory): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def run_cli(argv, capsys):
    status = cli.main(argv)  # any exception escaping here fails the test with its traceback
    err = capsys.readouterr().err.strip().splitlines()
    return status, err[-1] if err else ""


CASES = ([("truncate", t) for t in TRUNCATIONS] + [("flip", f) for f in FLIPS]
         + [("delete", None), ("replace", None)])


def _must_fail(name, kind):
    if kind in ("truncate", "replace"):
        return not (kind == "truncate" and name in ("log.csv", "merges.txt", "vocab.json"))
    return kind == "delete" and name not in ("tokens.npy", "log.csv")


@pytest.mark.parametrize("name", MODEL_FILES)
@pytest.mark.parametrize("kind, arg", CASES)
def test_damaged_model_file_is_named_by_generate(run_dir, tmp_path, capsys, name, kind, arg):
    model = tmp_path / "model"
    shutil.copytree(run_dir / "checkpoint", model)
    others = [n for n in MODEL_FILES if n != name]
    damage(model / name, kind, arg, model / others[MODEL_FILES.index(name) % len(others)])
    status, line = run_cli(["generate", "--model", str(model), "--prompt", "def", "--max-new-tokens", "2",
                            "--temperature", "0"], capsys)
    if status != 0:
        assert status == 2 and name in line, line
        assert line.startswith("numpyllm generate: error:")
    else:
        assert not _must_fail(name, kind) or (kind == "truncate" and arg == -1 and name.endswith(".json"))


@pytest.mark.parametrize("name", RUN_FILES)
@pytest.mark.parametrize("kind, arg", CASES)
def test_damaged_run_file_is_named_by_resume_and_the_run_is_intact(run_dir, tmp_path, capsys, name, kind, arg):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    other = run / ("checkpoint/config.json" if name != "checkpoint/config.json" else "log.csv")
    damage(run / name, kind, arg, other)
    before = snapshot(run)
    status, line = run_cli(["train", "--resume", "--out", str(run), "--max-steps", "5", "--no-progress"], capsys)
    if status != 0:
        assert status == 2 and os.path.basename(name) in line, line
        assert snapshot(run) == before, "a resume that failed changed the run directory"
    else:
        assert not _must_fail(os.path.basename(name), kind) or (kind == "truncate" and arg == -1)


BERT_FILES = ["config.json", "model.safetensors", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"]


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    from numpyllm import BertConfig, BertForMaskedLM, WordPieceTokenizer

    directory = tmp_path_factory.mktemp("bert")
    tokenizer = WordPieceTokenizer.train(["the cat sat on the mat", "a dog ran in the park"] * 5, vocab_size=60,
                                         progress=False)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=12, max_position_embeddings=16)
    BertForMaskedLM(config, seed=0).save_pretrained(directory)
    tokenizer.save(directory)
    return directory


@pytest.mark.parametrize("name", BERT_FILES)
@pytest.mark.parametrize("kind, arg", CASES)
def test_damaged_bert_file_is_named_by_fill_mask(bert_dir, tmp_path, capsys, name, kind, arg):
    model = tmp_path / "model"
    shutil.copytree(bert_dir, model)
    others = [n for n in BERT_FILES if n != name]
    damage(model / name, kind, arg, model / others[BERT_FILES.index(name) % len(others)])
    status, line = run_cli(["fill-mask", "--model", str(model), "--text", "the [MASK] sat"], capsys)
    if status != 0:
        assert status == 2 and name in line, line
    else:  # the optional files may go or be another JSON object; a flipped weight, a last newline lost: valid
        assert (name in ("tokenizer_config.json", "special_tokens_map.json") and kind in ("delete", "replace")) \
            or kind == "flip" or (kind == "truncate" and arg == -1)


def test_tokenizer_json_of_the_wrong_shape_is_named(tmp_path):
    from numpyllm import WordPieceTokenizer

    for content in ('{"model": [1]}', '{"model": {"type": "WordPiece"}, "pre_tokenizer": "x"}', "[[[[" * 50000):
        (tmp_path / "tokenizer.json").write_text(content)
        with pytest.raises(ValueError, match="tokenizer.json"):
            WordPieceTokenizer.from_pretrained(tmp_path)


# --------------------------------------------------------------------------- hostile files


class _RunsCode:
    """Unpickling this calls os.system: what a loader that runs code would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
def test_pytorch_weights_that_would_run_code_are_refused(run_dir, tmp_path, writer):
    torch = pytest.importorskip("torch", reason="reading pytorch_model.bin needs torch")
    model = tmp_path / "model"
    shutil.copytree(run_dir / "checkpoint", model)
    (model / "model.safetensors").unlink()
    marker = tmp_path / "ran"
    hostile = {"wte.weight": _RunsCode(marker)}
    with open(model / "pytorch_model.bin", "wb") as f:
        torch.save(hostile, f) if writer == "torch.save" else pickle.dump(hostile, f, protocol=2)
    with pytest.raises(ValueError, match="pytorch_model.bin is not a readable PyTorch state dict"):
        hub.read_weights(model)
    assert not marker.exists()
    pickle.loads(pickle.dumps(_RunsCode(marker)))  # the same object unpickled without weights_only runs code:
    assert marker.exists()                          # so the test above would see it


def test_pickled_optimizer_state_and_tokens_are_refused(tmp_path):
    marker = tmp_path / "ran"
    params = {"w": np.zeros((2, 2))}
    state = tmp_path / "optimizer.npz"
    np.savez(state, step=np.array(0), exp_avg=np.array([_RunsCode(marker)], dtype=object))
    with pytest.raises(ValueError, match="optimizer.npz is not this optimizer's saved state"):
        AdamW(params).load(state)
    tokens = tmp_path / "tokens.npy"
    np.save(tokens, np.array([_RunsCode(marker)], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="tokens.npy is not a .npy token array"):
        load_tokens(tokens)
    assert not marker.exists()
    np.load(tokens, allow_pickle=True)  # what allow_pickle=False prevents
    assert marker.exists()


def test_safetensors_header_claiming_data_past_the_end_is_refused_before_reading(run_dir, tmp_path):
    import json

    model = tmp_path / "model"
    shutil.copytree(run_dir / "checkpoint", model)
    header = json.dumps({"wte.weight": {"dtype": "F32", "shape": [1 << 20, 1 << 20],
                                        "data_offsets": [0, 4 << 40]}}).encode()
    (model / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 64)
    with pytest.raises(ValueError, match="model.safetensors is truncated: tensor 'wte.weight' ends at byte"):
        hub.read_weights(model)


def test_config_claiming_a_far_larger_model_is_refused_before_listing_it(run_dir, tmp_path):
    import json

    model = tmp_path / "model"
    shutil.copytree(run_dir / "checkpoint", model)
    config = json.loads((model / "config.json").read_text())
    config["n_layer"] = 10**9
    (model / "config.json").write_text(json.dumps(config))
    from numpyllm import GPT

    with pytest.raises(ValueError, match=r"config.json describes a model of [\d,]+ parameters but"):
        GPT.from_pretrained(model)


@pytest.mark.parametrize("field", ["num_hidden_layers", "intermediate_size", "vocab_size"])
def test_bert_config_claiming_a_far_larger_model_is_refused_before_allocating_it(bert_dir, tmp_path, field):
    import json

    from numpyllm import BertForMaskedLM

    model = tmp_path / "model"
    shutil.copytree(bert_dir, model)
    config = json.loads((model / "config.json").read_text())
    config[field] = 10**9
    (model / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"config.json describes a model of [\d,]+ parameters but .* holds only"):
        BertForMaskedLM.from_pretrained(model)


def test_shard_names_cannot_leave_the_directory(run_dir, tmp_path):
    import json

    model = tmp_path / "model"
    shutil.copytree(run_dir / "checkpoint", model)
    (model / "model.safetensors").rename(tmp_path / "outside.safetensors")
    (model / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"wte.weight": "../outside.safetensors"}}))
    with pytest.raises(ValueError, match="shards must be files beside the index"):
        hub.read_weights(model)
