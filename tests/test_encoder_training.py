"""train-mlm, train-classifier, classify and fill-mask: the masking recipe, the shared loop's
guarantees for each objective, a classifier that learns, and one clear line for each user mistake."""

import csv
import json
import math

import numpy as np
import pytest
from scipy import stats

from numpyllm import WordPieceTokenizer
from numpyllm.__main__ import main
from numpyllm.checkpoint import find_checkpoint, read_trainer_state
from numpyllm.classification import TASK as CLASSIFIER
from numpyllm.labelled import Labels, read_examples
from numpyllm.loop import run_training
from numpyllm.mlm import TASK as MLM
from numpyllm.mlm import continuation_ids, mask_tokens, special_ids
from numpyllm.runlog import read_log
from numpyllm.stdlib_task import stdlib_examples

from test_cli import _one_error_line
from test_train import _stop_after
from tiny_run import tiny_overrides, write_corpus

TINY_BERT = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                 vocab_size=200, attention_backend="numpy")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus") / "corpus.txt")


@pytest.fixture(scope="module")
def two_packages(tmp_path_factory):
    """A small real task: does a stdlib docstring or comment come from email or asyncio? (train.csv, val.csv)"""
    train, val = stdlib_examples()
    directory = tmp_path_factory.mktemp("task")
    for examples, name, n in ((train, "train.csv", 400), (val, "val.csv", 120)):
        by_label = {label: [text for text, l in zip(examples.texts, examples.labels) if l == label][:n // 2]
                    for label in ("asyncio", "email")}
        rows = [(text, label) for pair in zip(*(by_label[l] for l in by_label)) for text, label in zip(pair, by_label)]
        with open(directory / name, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["text", "label"])
            writer.writerows(rows)
    return directory / "train.csv", directory / "val.csv"


def _mlm_overrides(corpus, **changes):
    overrides = dict(data=(str(corpus),), block_size=16, max_position_embeddings=32, batch_size=4, max_steps=12,
                     warmup_steps=2, lr=1e-2, eval_interval=6, eval_steps=2, checkpoint_interval=100,
                     **TINY_BERT)
    overrides.update(changes)
    return overrides


def _classifier_overrides(data, val, **changes):
    overrides = dict(data=str(data), val=str(val), batch_size=16, epochs=2, warmup_steps=2, lr=3e-3,
                     max_length=24, checkpoint_interval=100,
                     **TINY_BERT)
    overrides.update(changes)
    return overrides


# --------------------------------------------------------------------------- masking


@pytest.fixture(scope="module")
def tokenizer():
    return WordPieceTokenizer.train(["return value of the function", "functional values returned"] * 20,
                                    vocab_size=60)


def test_masking_chooses_15_percent_then_splits_80_10_10_and_never_a_special(tokenizer):
    rng = np.random.default_rng(0)
    specials = special_ids(tokenizer)
    ids = rng.integers(0, tokenizer.vocab_size, size=(400, 64))
    ids[:, 0], ids[:, -1], ids[:, -8:-1] = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id
    inputs, labels = mask_tokens(ids, rng, vocab_size=tokenizer.vocab_size, mask_id=tokenizer.mask_token_id,
                                 specials=specials)
    chosen = labels >= 0
    assert not chosen[np.isin(ids, specials)].any()
    np.testing.assert_array_equal(labels[chosen], ids[chosen])
    np.testing.assert_array_equal(inputs[~chosen], ids[~chosen])
    n_candidates = int((~np.isin(ids, specials)).sum())
    assert abs(chosen.sum() / n_candidates - 0.15) < 4 * math.sqrt(0.15 * 0.85 / n_candidates)
    masked = inputs[chosen] == tokenizer.mask_token_id
    kept = (inputs[chosen] == ids[chosen]) & ~masked
    random = ~masked & ~kept
    # a random replacement equal to the original counts as kept: expected 10% + 10% / n_ordinary
    n_ordinary = tokenizer.vocab_size - len(specials)
    expected = np.array([0.8, 0.1 * (1 - 1 / n_ordinary), 0.1 + 0.1 / n_ordinary]) * chosen.sum()
    observed = [masked.sum(), random.sum(), kept.sum()]
    assert stats.chisquare(observed, expected).pvalue > 1e-3, observed
    assert not np.isin(inputs[chosen][random], specials).any()  # random replacements are ordinary tokens


def test_whole_word_masking_chooses_every_piece_of_a_word(tokenizer):
    continuation = continuation_ids(tokenizer)
    assert continuation.any() and not continuation[special_ids(tokenizer)].any()
    batch = tokenizer(["functional values returned function"] * 300)["input_ids"]
    _, labels = mask_tokens(batch, np.random.default_rng(1), vocab_size=tokenizer.vocab_size,
                            mask_id=tokenizer.mask_token_id, specials=special_ids(tokenizer), continuation=continuation)
    chosen = labels >= 0
    pieces = continuation[batch]  # a ## piece is chosen exactly when the token before it is
    np.testing.assert_array_equal(chosen[:, 1:][pieces[:, 1:]], chosen[:, :-1][pieces[:, 1:]])
    assert 0 < chosen.mean() < 0.5


# --------------------------------------------------------------------------- the shared loop, per objective


def _task_and_settings(objective, corpus, two_packages):
    if objective == "mlm":
        return MLM, _mlm_overrides(corpus, checkpoint_interval=5)
    return CLASSIFIER, _classifier_overrides(*two_packages, checkpoint_interval=5, epochs=1)


@pytest.mark.parametrize("objective", ["mlm", "classifier"])
def test_ctrl_c_then_resume_is_bit_identical(tmp_path, corpus, two_packages, monkeypatch, objective):
    task, settings = _task_and_settings(objective, corpus, two_packages)
    assert run_training(task, tmp_path / "straight", overrides=settings) == 0
    with monkeypatch.context() as patch:
        _stop_after(patch, 7)
        assert run_training(task, tmp_path / "resumed", overrides=settings) == 130
    assert read_trainer_state(find_checkpoint(tmp_path / "resumed"))["step"] == 7
    assert run_training(task, tmp_path / "resumed", resume=True) == 0
    weights = [np.load(tmp_path / run / "checkpoint" / "optimizer.npz") for run in ("straight", "resumed")]
    for name in weights[0].files:
        np.testing.assert_array_equal(weights[1][name], weights[0][name])
    logs = [[row["train_loss"] for row in read_log(tmp_path / run / "log.csv")] for run in ("straight", "resumed")]
    assert logs[0] == logs[1]


@pytest.mark.parametrize("objective", ["mlm", "classifier"])
def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, corpus, two_packages, monkeypatch,
                                                                  capsys, objective):
    task, settings = _task_and_settings(objective, corpus, two_packages)
    calls = []
    real = task.objective

    def objective_with_nan(*args):
        made = real(*args)
        original = made.loss_and_grads

        def loss_and_grads(model, batch):
            calls.append(None)
            loss, grads = original(model, batch)
            return (math.nan if len(calls) == 8 else loss), grads

        made.loss_and_grads = loss_and_grads
        return made

    monkeypatch.setattr(task, "objective", objective_with_nan)
    assert run_training(task, tmp_path, overrides=settings) == 1
    assert "loss nan" in capsys.readouterr().err
    assert read_trainer_state(find_checkpoint(tmp_path))["step"] == 5


# --------------------------------------------------------------------------- learning


def test_classifier_learns_a_small_real_task_above_chance(tmp_path, two_packages):
    assert run_training(CLASSIFIER, tmp_path, overrides=_classifier_overrides(*two_packages, epochs=3)) == 0
    accuracies = [row["val_accuracy"] for row in read_log(tmp_path / "log.csv") if row["val_accuracy"] is not None]
    labels = read_examples(two_packages[1]).labels
    majority = max(labels.count(name) for name in set(labels)) / len(labels)
    assert max(accuracies) > majority + 0.1, (accuracies, majority)
    config = json.loads((tmp_path / "best" / "config.json").read_text())
    assert config["id2label"] == {"0": "asyncio", "1": "email"}


# --------------------------------------------------------------------------- files


def test_labelled_files_in_every_format_read_alike(tmp_path):
    (tmp_path / "a.csv").write_text('text,label\n"one, two",x\nthree,y\n')
    (tmp_path / "a.tsv").write_text("text\tlabel\none, two\tx\nthree\ty\n")
    (tmp_path / "a.jsonl").write_text('{"text": "one, two", "label": "x"}\n\n{"text": "three", "label": "y"}\n')
    for suffix in ("csv", "tsv", "jsonl"):
        examples = read_examples(tmp_path / f"a.{suffix}")
        assert examples.texts == ["one, two", "three"] and examples.labels == ["x", "y"] and examples.pairs is None
    assert Labels.from_values([2, 10, 1]).names == ["1", "2", "10"]  # integers sort by value
    assert Labels.from_values(["0.5", "1", "2.25"]).regression
    assert Labels.from_values(["b", "a"]).names == ["a", "b"]


@pytest.mark.parametrize("content, suffix, message", [
    ("", "csv", "is empty: no header row"),
    ("text,label\n", "csv", "has no examples"),
    ("words,label\nhi,x\n", "csv", "line 2: no column 'text' (columns: words, label)"),
    ('{"text": "hi", "label": "x"}\n{"text": oops}\n', "jsonl", "line 2: not JSON"),
    ('{"text": "hi", "label": "x"}\n{"text": "ho"}\n', "jsonl", "line 2: field 'label' is missing"),
    ("text,label\nhi,x,extra\n", "csv", "line 2: 3 fields, the header has 2"),
    ("text\tlabel\n\tx\n", "tsv", "line 2: field 'text' must be a non-empty string"),
    ("text,label\nhi,x\n", "txt", "unknown format '.txt'"),
])
def test_a_malformed_file_is_named_with_its_line_and_field(tmp_path, capsys, content, suffix, message):
    path = tmp_path / f"data.{suffix}"
    path.write_text(content)
    assert main(["train-classifier", "--out", str(tmp_path / "run"), "--data", str(path)]) == 2
    line = _one_error_line(capsys, "train-classifier")
    assert str(path) in line and message in line, line
    assert not (tmp_path / "run" / "checkpoint").exists()


# --------------------------------------------------------------------------- the commands end to end


def _flags(overrides):
    argv = []
    for name, value in overrides.items():
        argv.append("--" + name.replace("_", "-"))
        argv.extend(map(str, value) if isinstance(value, tuple) else [str(value)])
    return argv


def test_train_mlm_then_fill_mask_and_train_classifier_from_it(tmp_path, corpus, two_packages, capsys):
    mlm = tmp_path / "mlm"
    assert main(["train-mlm", "--out", str(mlm), "--no-progress", *_flags(_mlm_overrides(corpus))]) == 0
    rows = read_log(mlm / "log.csv")
    assert rows[-1]["val_accuracy"] is not None and rows[-1]["val_loss"] < rows[0]["val_loss"]
    capsys.readouterr()
    assert main(["fill-mask", "--model", str(mlm), "--text", "return x * [MASK] + y", "--top-k", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3
    probabilities = [float(line.split("\t")[0]) for line in lines]
    assert probabilities == sorted(probabilities, reverse=True) and 0 < sum(probabilities) <= 1.0001

    classifier = tmp_path / "classifier"
    train, val = two_packages
    assert main(["train-classifier", "--out", str(classifier), "--no-progress", "--init", str(mlm), "--data",
                 str(train), "--val", str(val), "--epochs", "1", "--max-length", "24", "--batch-size", "32"]) == 0
    capsys.readouterr()
    assert main(["classify", "--model", str(classifier), "--text", "Return the event loop."]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert sorted(line.split("\t")[0] for line in out) == ["asyncio", "email"]
    assert sum(float(line.split("\t")[1]) for line in out) == pytest.approx(1, abs=1e-3)
    assert main(["classify", "--model", str(classifier), "--data", str(val)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("examples 120 accuracy ") and "confusion matrix" in out


def test_classify_and_fill_mask_errors_are_one_line(tmp_path, corpus, two_packages, capsys):
    run = tmp_path / "run"
    assert run_training(CLASSIFIER, run, overrides=_classifier_overrides(*two_packages, epochs=1)) == 0
    capsys.readouterr()
    unseen = tmp_path / "unseen.jsonl"
    unseen.write_text('{"text": "a", "label": "asyncio"}\n{"text": "b", "label": "json"}\n')
    assert main(["classify", "--model", str(run), "--data", str(unseen)]) == 2
    assert "unseen.jsonl line 2: label 'json' was not among the training labels" in _one_error_line(capsys, "classify")
    assert main(["fill-mask", "--model", str(run), "--text", "no mask here"]) == 2
    assert "--text has no [MASK]" in _one_error_line(capsys, "fill-mask")
    gpt = tmp_path / "gpt"
    assert main(["train", "--out", str(gpt), "--no-progress", *_flags(tiny_overrides(corpus, max_steps=2))]) == 0
    capsys.readouterr()
    assert main(["train-mlm", "--out", str(tmp_path / "m"), "--data", str(corpus), "--init", str(gpt)]) == 2
    assert "has model_type 'gpt2'; this command needs a BERT" in _one_error_line(capsys, "train-mlm")
    assert main(["train-classifier", "--out", str(tmp_path / "c"), "--data", str(tmp_path / "missing.csv")]) == 2
    assert "missing.csv: no such file" in _one_error_line(capsys, "train-classifier")


def test_regression_with_text_pairs_trains_and_scores_with_mse_and_pearson(tmp_path, capsys):
    rng = np.random.default_rng(0)
    words = ["alpha", "beta", "gamma", "delta"]
    path = tmp_path / "pairs.jsonl"
    with open(path, "w") as f:
        for _ in range(64):
            n = int(rng.integers(1, 6))
            f.write(json.dumps({"text": " ".join(rng.choice(words, n)), "text_pair": "beta", "label": n / 4 + 0.01})
                    + "\n")
    run = tmp_path / "run"
    assert run_training(CLASSIFIER, run, overrides=_classifier_overrides(path, path, epochs=1)) == 0
    assert json.loads((run / "best" / "config.json").read_text())["problem_type"] == "regression"
    assert "val_pearson" in read_log(run / "log.csv")[0]
    capsys.readouterr()
    assert main(["classify", "--model", str(run), "--data", str(path)]) == 0
    assert capsys.readouterr().out.startswith("examples 64 MSE ")


def test_next_sentence_pairs_are_a_then_its_continuation_or_a_random_stretch(tmp_path, corpus):
    from numpyllm.mlm import _MaskedLM, MLMConfig

    config = MLMConfig(**_mlm_overrides(corpus, next_sentence=True, mlm_probability=1e-9, block_size=20))
    tokenizer = WordPieceTokenizer.train([corpus.read_text()], vocab_size=200)
    assert run_training(MLM, tmp_path, overrides=_mlm_overrides(corpus, next_sentence=True, max_steps=3)) == 0
    assert read_log(tmp_path / "log.csv")[-1]["val_nsp_accuracy"] is not None
    objective = _MaskedLM(str(tmp_path / "fresh"), config, tokenizer, [corpus], False)
    stream = np.asarray(objective.train_tokens, dtype=np.int64)
    inputs, labels, types, is_random = objective._batch(objective.windows, objective.masks)
    assert (labels < 0).all() and inputs.shape == types.shape == (config.batch_size, 20)
    assert 0 < is_random.sum() < config.batch_size
    for row, row_types, random_b in zip(inputs, types, is_random):
        assert row[0] == tokenizer.cls_token_id and row[-1] == tokenizer.sep_token_id
        split = int(np.flatnonzero(row_types)[0])  # first position of B
        assert row[split - 1] == tokenizer.sep_token_id and (row_types[split:] == 1).all()
        a, b = row[1:split - 1], row[split:-1]
        joined = np.concatenate([a, b])
        contiguous = any((stream[s:s + len(joined)] == joined).all() for s in range(len(stream) - len(joined)))
        assert contiguous or random_b  # a "next" pair is one stretch of the corpus


def test_classifier_fine_tunes_a_hugging_face_bert_directory(tmp_path, two_packages, tokenizer):
    transformers = pytest.importorskip("transformers", reason="builds the Hugging Face directory")
    hf_dir = tmp_path / "hf"
    config = transformers.BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=32, max_position_embeddings=64)
    transformers.BertForMaskedLM(config).save_pretrained(hf_dir)
    tokenizer.save(hf_dir)
    overrides = {k: v for k, v in _classifier_overrides(*two_packages, epochs=1).items()
                 if k not in CLASSIFIER.config_class.SHAPE_FIELDS}
    assert run_training(CLASSIFIER, tmp_path / "run", overrides={**overrides, "init": str(hf_dir)}) == 0
    tuned = transformers.BertForSequenceClassification.from_pretrained(tmp_path / "run" / "best")
    assert tuned.config.id2label == {0: "asyncio", 1: "email"}
