"""Token files, document separators, the train/val split, the batch sampler and evaluation windows."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from numpyllm import BPETokenizer
from numpyllm.corpus import stdlib_corpus_files
from numpyllm.data import (
    BatchSampler,
    document_ids,
    load_tokens,
    sequential_batches,
    split_tokens,
    text_files,
    token_dtype,
    write_tokens,
)


def test_token_dtype_is_uint16_while_every_id_fits():
    assert token_dtype(2**16) == np.dtype("<u2")  # ids 0..65535
    assert token_dtype(2**16 + 1) == np.dtype("<u4")
    with pytest.raises(ValueError, match="vocab_size must be >= 1, got 0"):
        token_dtype(0)
    with pytest.raises(TypeError, match="vocab_size must be an int >= 1, got float"):
        token_dtype(300.0)


@pytest.mark.parametrize("vocab_size", [300, 70_000])
def test_write_tokens_streams_chunks_into_a_memory_mapped_npy(tmp_path, vocab_size):
    rng = np.random.default_rng(0)
    chunks = [rng.integers(0, vocab_size, size=n) for n in (5, 0, 1000, 1)]
    path = tmp_path / "tokens.npy"
    count = write_tokens(path, iter(chunks), vocab_size)
    tokens = load_tokens(path)
    assert count == 1006
    assert isinstance(tokens, np.memmap) and tokens.dtype == token_dtype(vocab_size)
    np.testing.assert_array_equal(tokens, np.concatenate(chunks))
    assert [p.name for p in tmp_path.iterdir()] == ["tokens.npy"]  # no temporary file left behind


def test_write_tokens_rejects_out_of_range_ids_and_keeps_the_old_file(tmp_path):
    path = tmp_path / "tokens.npy"
    write_tokens(path, [np.arange(10)], 10)
    with pytest.raises(ValueError, match=r"chunks\[1\] entries must be in \[0, 10\), got 10"):
        write_tokens(path, [np.arange(5), np.arange(11)], 10)
    with pytest.raises(TypeError, match=r"chunks\[0\] must be an integer array of token ids, got dtype float64"):
        write_tokens(path, [np.ones(3)], 10)
    with pytest.raises(ValueError, match=r"chunks\[1\] must be 1-D, got shape \(1, 2\)"):
        write_tokens(path, [[], [[1, 2]]], 10)  # an empty list is no chunk of the wrong type
    np.testing.assert_array_equal(load_tokens(path), np.arange(10))


def test_document_ids_put_the_separator_between_documents():
    tokenizer = BPETokenizer.train(["print('hello world')\n"] * 3, vocab_size=270)
    texts = ["a = 1\n", "", "print('hello')\n", "b = 2"]
    chunks = list(document_ids(texts, tokenizer))
    assert len(chunks) == 3  # the empty text yields nothing
    assert tokenizer.decode(np.concatenate(chunks).tolist()) == "a = 1\n<|endoftext|>print('hello')\n<|endoftext|>b = 2"


def test_split_tokens_takes_validation_from_the_end_without_copying():
    tokens = np.arange(100, dtype=np.uint16)
    train, val = split_tokens(tokens, 0.1, min_tokens=5)
    np.testing.assert_array_equal(train, np.arange(90))
    np.testing.assert_array_equal(val, np.arange(90, 100))
    assert np.shares_memory(train, tokens) and np.shares_memory(val, tokens)
    with pytest.raises(ValueError, match="100 tokens: 90 for training and 10 for validation"):
        split_tokens(tokens, 0.1, min_tokens=11)
    with pytest.raises(ValueError, match=r"val_fraction must be in \(0, 1\), got 1"):
        split_tokens(tokens, 1, min_tokens=5)
    with pytest.raises(TypeError, match=r"val_fraction must be a real number in \(0, 1\), got str"):
        split_tokens(tokens, "0.1", min_tokens=5)


@given(n=st.integers(2, 60), block_size=st.integers(1, 8), batch_size=st.integers(1, 4))
def test_batch_sampler_draws_whole_windows_with_shifted_targets(n, block_size, batch_size):
    tokens = np.arange(n + block_size, dtype=np.uint16)  # token value = its position
    x, y = BatchSampler(tokens, batch_size, block_size, seed=n).sample()
    assert x.shape == y.shape == (batch_size, block_size) and x.dtype == np.int64
    starts = x[:, :1]
    np.testing.assert_array_equal(x, starts + np.arange(block_size))  # consecutive tokens
    np.testing.assert_array_equal(y, x + 1)  # each target is the next token
    assert starts.min() >= 0 and (y[:, -1] < len(tokens)).all()


def test_batch_sampler_reaches_every_start():
    tokens = np.arange(8, dtype=np.uint16)
    sampler = BatchSampler(tokens, batch_size=50, block_size=5, seed=0)
    starts = np.concatenate([sampler.sample()[0][:, 0] for _ in range(4)])
    assert set(starts.tolist()) == {0, 1, 2}  # windows of 6 fit at 0, 1, 2


def test_batch_sampler_state_restores_the_same_batches():
    tokens = np.arange(1000, dtype=np.uint16)
    sampler = BatchSampler(tokens, 4, 8, seed=3)
    sampler.sample()
    saved = sampler.state
    expected = [sampler.sample() for _ in range(3)]
    restored = BatchSampler(tokens, 4, 8, seed=99)
    restored.state = saved
    for (x, y), (x_expected, y_expected) in zip((restored.sample() for _ in range(3)), expected):
        np.testing.assert_array_equal(x, x_expected)
        np.testing.assert_array_equal(y, y_expected)
    first = BatchSampler(tokens, 4, 8, seed=3).sample()[0]
    assert not np.array_equal(first, BatchSampler(tokens, 4, 8, seed=4).sample()[0])


def test_batch_sampler_rejects_bad_arguments():
    tokens = np.arange(10)
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        BatchSampler(tokens, 0, 4, seed=0)
    with pytest.raises(TypeError, match="block_size must be an int >= 1, got float 4.0"):
        BatchSampler(tokens, 2, 4.0, seed=0)
    with pytest.raises(ValueError, match="at least block_size \\+ 1 = 11 entries"):
        BatchSampler(tokens, 2, 10, seed=0)
    with pytest.raises(ValueError, match="seed must be >= 0, got -1"):
        BatchSampler(tokens, 2, 4, seed=-1)
    with pytest.raises(TypeError, match="seed must be an int >= 0, got bool True"):
        BatchSampler(tokens, 2, 4, seed=True)


@given(n=st.integers(2, 80), block_size=st.integers(1, 9), batch_size=st.integers(1, 5))
def test_sequential_batches_predict_every_token_but_the_first_once(n, block_size, batch_size):
    tokens = np.arange(n, dtype=np.uint16)
    batches = list(sequential_batches(tokens, block_size, batch_size))
    inputs = np.concatenate([x.ravel() for x, _ in batches])
    targets = np.concatenate([y.ravel() for _, y in batches])
    np.testing.assert_array_equal(targets, np.arange(1, n))
    np.testing.assert_array_equal(inputs, np.arange(n - 1))
    for x, y in batches:
        assert x.shape == y.shape and x.shape[1] <= block_size and x.shape[0] <= batch_size
    with pytest.raises(ValueError, match="at least 2 tokens"):
        list(sequential_batches(tokens[:1], block_size, batch_size))


def test_text_files_checks_paths_and_defaults_to_the_stdlib(tmp_path):
    text = tmp_path / "a.txt"
    text.write_text("hi")
    assert text_files([str(text)]) == [text]
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        text_files([text, tmp_path / "missing.txt"])
    with pytest.raises(IsADirectoryError, match="is a directory"):
        text_files([tmp_path])
    with pytest.raises(ValueError, match="no data files"):
        text_files([])
    stdlib = text_files(None, max_bytes=1)
    assert len(stdlib) == 1 and stdlib[0].suffix == ".py"


@pytest.mark.parametrize("max_bytes, error", [(0, ValueError), (-5, ValueError), (1.5, TypeError), ("1MB", TypeError)])
def test_stdlib_corpus_rejects_a_bad_max_bytes(max_bytes, error):
    with pytest.raises(error, match=r"max_bytes must be (an int )?>= 1 or None"):
        stdlib_corpus_files(max_bytes)
