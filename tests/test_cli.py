"""``python -m numpyllm train`` and ``eval``: one clear error line for each user mistake, and a run end to end."""

import math
import re
import subprocess
import sys

import numpy as np
import pytest

from numpyllm import GPT, BPETokenizer
from numpyllm.__main__ import main
from numpyllm.data import document_ids
from numpyllm.evaluate import evaluate_tokens
from numpyllm.metrics import perplexity

from tiny_run import tiny_overrides, write_corpus

ROOT = __file__.rsplit("/tests/", 1)[0]


def _flags(overrides):
    """--flag value ... for a dict of TrainConfig overrides."""
    argv = []
    for name, value in overrides.items():
        argv.append("--" + name.replace("_", "-"))
        argv.extend(value if isinstance(value, tuple) else [str(value)])
    return argv


def _run(*argv):
    """Run ``python -m numpyllm argv`` in a fresh process from the repository root."""
    return subprocess.run([sys.executable, "-m", "numpyllm", *map(str, argv)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def _main(*argv):
    """``python -m numpyllm argv`` in this process (argv may hold paths); returns the exit status."""
    return main([str(arg) for arg in argv])


def _one_error_line(capsys, command):
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"numpyllm {command}: error: "), err
    return lines[0]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus") / "corpus.txt")


def test_train_with_a_missing_data_file(tmp_path, capsys):
    assert _main("train", "--out", tmp_path / "run", "--data", tmp_path / "missing.txt") == 2
    assert "missing.txt' does not exist" in _one_error_line(capsys, "train")


def test_train_on_an_empty_corpus(tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert _main("train", "--out", tmp_path / "run", *_flags(tiny_overrides(empty))) == 2
    assert "the corpus has no text: 1 file(s), all empty" in _one_error_line(capsys, "train")


def test_train_into_an_unwritable_out_dir(tmp_path, corpus, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")  # a directory cannot be made below a regular file, even by root
    assert _main("train", "--out", blocker / "run", "--data", corpus) == 2
    assert "is not a writable directory: Not a directory" in _one_error_line(capsys, "train")


def test_train_with_an_unknown_preset(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _main("train", "--preset", "huge", "--out", tmp_path)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "argument --preset: invalid choice: 'huge' (choose from" in err.strip().splitlines()[-1]


def test_train_with_a_bad_setting(tmp_path, capsys):
    assert _main("train", "--out", tmp_path, "--warmup-steps", "10", "--max-steps", "5") == 2
    assert "--warmup-steps (10) must be <= --max-steps (5)" in _one_error_line(capsys, "train")


def test_eval_with_a_missing_model_or_data(tmp_path, corpus, capsys):
    assert _main("eval", "--model", tmp_path / "nothing", "--data", corpus) == 2
    assert "nothing' does not exist" in _one_error_line(capsys, "eval")
    (tmp_path / "empty").mkdir()
    assert _main("eval", "--model", tmp_path / "empty", "--data", corpus) == 2
    assert "has no config.json and no training checkpoint" in _one_error_line(capsys, "eval")
    assert _main("eval", "--model", tmp_path, "--data", tmp_path / "missing.txt") == 2
    assert "missing.txt' does not exist" in _one_error_line(capsys, "eval")


def test_train_help_names_the_default_corpus():
    result = _run("train", "--help")
    assert result.returncode == 0
    assert "standard library" in result.stdout and "--resume" in result.stdout


def test_train_then_eval_end_to_end(tmp_path, corpus):
    out = tmp_path / "run"
    trained = _run("train", "--out", out, "--no-progress", *_flags(tiny_overrides(corpus, max_steps=12)))
    assert trained.returncode == 0, trained.stderr
    assert re.search(r"done: 12 steps in \d+ s; val loss \d+\.\d+ -> \d+\.\d+", trained.stdout)
    assert (out / "checkpoint" / "model.safetensors").is_file() and (out / "tokens.npy").is_file()

    held_out = tmp_path / "held_out.txt"
    held_out.write_text("def omega_beta(x, y):\n    return x * 3 + y\n" * 5)
    evaluated = _run("eval", "--model", out, "--data", held_out)
    assert evaluated.returncode == 0, evaluated.stderr
    match = re.fullmatch(r"loss (\d+\.\d+) perplexity (\d+\.\d+)\n", evaluated.stdout)
    assert match, evaluated.stdout
    loss, perplexity = map(float, match.groups())
    # The same number computed in this process from the checkpoint.
    model = GPT.from_pretrained(out / "checkpoint")
    tokenizer = BPETokenizer.from_pretrained(out / "checkpoint")
    tokens = np.concatenate(list(document_ids([held_out.read_text()], tokenizer)))
    expected, count = evaluate_tokens(model, tokens)
    assert count == len(tokens) - 1
    assert loss == pytest.approx(expected, abs=1e-4)
    assert perplexity == pytest.approx(math.exp(loss), rel=1e-3)


def test_perplexity_is_exp_of_the_loss_and_inf_past_overflow():
    assert perplexity(0.0) == 1.0 and perplexity(2.0) == math.exp(2.0)
    assert perplexity(800.0) == math.inf  # math.exp would raise OverflowError


def test_eval_bleu_and_rouge_score_greedy_continuations(tmp_path, capsys):
    from numpyllm import GPTConfig
    from numpyllm.metrics import bleu, rouge

    text = "the cat sat on the mat and the dog ran after the cat, " * 20
    tokenizer = BPETokenizer.train([text], vocab_size=280)
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=16), seed=1)
    model.save_pretrained(tmp_path)
    tokenizer.save(tmp_path)
    data = tmp_path / "held_out.txt"
    data.write_text(text)
    assert _main("eval", "--model", tmp_path, "--data", data, "--bleu", "--rouge", "--prompt-tokens", "6",
                 "--continuation-tokens", "5", "--max-samples", "3") == 0
    out = capsys.readouterr()
    match = re.fullmatch(r"loss \S+ perplexity \S+ bleu (\S+) rouge1 (\S+) rouge2 (\S+) rougeL (\S+)\n", out.out)
    assert match, out.out
    assert "greedy continuations of 3 samples (6 prompt + 5 continuation tokens)" in out.err
    # the same numbers from first principles: 3 windows of 11 tokens, first, middle and last
    tokens = np.concatenate(list(document_ids([text], tokenizer)))
    n = len(tokens) // 11
    starts = [11 * i for i in (0, round((n - 1) / 2), n - 1)]
    hypotheses = [tokenizer.decode(model.generate(tokens[None, s:s + 6], 5, temperature=0)[0, 6:]) for s in starts]
    references = [tokenizer.decode(tokens[s + 6:s + 11]) for s in starts]
    expected = [bleu(hypotheses, references), *rouge(hypotheses, references).values()]
    assert [float(x) for x in match.groups()] == pytest.approx(expected, abs=1e-4)
    assert _main("eval", "--model", tmp_path, "--data", data, "--bleu", "--prompt-tokens", "600") == 2
    assert "too few for one window of 600 prompt + 600 continuation tokens" in _one_error_line(capsys, "eval")
