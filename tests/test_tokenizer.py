"""Byte-level BPE: round trips, training against a recount-from-scratch reference, GPT-2 files,
and Hugging Face `tokenizers` / `transformers` as the oracle for encoding."""

import codecs
import json
import os
import random
import string
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from numpyllm import BPETokenizer
from numpyllm.bpe_files import byte_to_unicode
from numpyllm.corpus import read_texts, stdlib_corpus_files
from numpyllm.tokenizer import GPT2_SPLIT_PATTERN

regex = pytest.importorskip("regex", reason="GPT-2's pre-tokenization pattern needs the regex package")

EOT = "<|endoftext|>"

# Characters that stress a byte-level tokenizer: multi-byte UTF-8 of every length, emoji with
# modifiers and joiners, CJK, combining marks, control characters, unusual whitespace.
TRICKY_CHARS = [
    "😀", "👍🏽", "👩‍💻", "🇫🇷", "漢", "字", "日本", "한", "é", "e\u0301", "\u0301", "\u0308",
    "\x00", "\x01", "\x1b", "\x7f", "\t", "\n", "\r\n", " ", "  ", "\u00a0", "\u3000", "\u2028",
    "\ufeff", "\U0010ffff", "'s", "'ll", "123", "½", "Ωmega", "<|", "|>", EOT,
]
text_strategy = st.one_of(
    st.text(),
    st.lists(st.sampled_from(TRICKY_CHARS) | st.text(max_size=3), max_size=30).map("".join),
)


@pytest.fixture(scope="module")
def corpus():
    """(training texts, held-out text): real Python source, disjoint files."""
    files = stdlib_corpus_files()
    train_files = files[:40]
    held_out = "".join(read_texts(files[-6:]))
    return list(read_texts(train_files)), held_out


@pytest.fixture(scope="module")
def trained(corpus):
    texts, _ = corpus
    return BPETokenizer.train(texts, vocab_size=700, special_tokens=(EOT,), progress=False)


# --------------------------------------------------------------------------- reference trainer


def reference_merges(texts, n_new_tokens, min_frequency):
    """Textbook BPE training: recount every pair over all words before each merge.

    Same rules as BPETokenizer.train: most frequent pair, ties to the smallest
    (left bytes, right bytes); a merge whose result already exists adds no token.
    """
    counts = Counter(piece.encode("utf-8") for text in texts for piece in regex.findall(GPT2_SPLIT_PATTERN, text))
    words = {tuple(bytes([byte]) for byte in word): count for word, count in counts.items()}
    known = {bytes([byte]) for byte in range(256)}
    merges = []
    while len(known) - 256 < n_new_tokens:
        pair_counts = Counter()
        for word, count in words.items():
            for pair in zip(word, word[1:]):
                pair_counts[pair] += count
        if not pair_counts:
            break
        best = min(pair_counts, key=lambda pair: (-pair_counts[pair], pair))
        if pair_counts[best] < min_frequency:
            break
        merges.append(best)
        known.add(best[0] + best[1])
        words = {merge_all(word, best): count for word, count in words.items()}
    return merges


def merge_all(word, pair):
    out, i = [], 0
    while i < len(word):
        if word[i : i + 2] == pair:
            out.append(pair[0] + pair[1])
            i += 2
        else:
            out.append(word[i])
            i += 1
    return tuple(out)


@given(texts=st.lists(st.text(alphabet="ab c\n'é", max_size=40), max_size=8), vocab_size=st.integers(256, 300),
       min_frequency=st.integers(1, 3))
def test_training_matches_recounting_reference(texts, vocab_size, min_frequency):
    # a tiny alphabet makes ties, overlapping pairs ("aaaa") and repeated results ("a"+"bc" vs "ab"+"c") common
    tok = BPETokenizer.train(texts, vocab_size, special_tokens=(), min_frequency=min_frequency, progress=False)
    assert tok.merges == reference_merges(texts, vocab_size - 256, min_frequency)


def test_training_on_real_text_matches_reference(corpus):
    texts = corpus[0][:3]
    tok = BPETokenizer.train(texts, vocab_size=300, special_tokens=(), progress=False)
    assert len(tok.merges) >= 44
    assert tok.merges == reference_merges(texts, 44, 2)


# --------------------------------------------------------------------------- training


def test_train_fills_vocab_and_puts_special_tokens_last(trained):
    assert trained.vocab_size == 700
    assert trained.special_tokens == {EOT: 699}
    assert len(trained.merges) >= 700 - 256 - 1


def test_train_does_not_depend_on_text_order_or_container(corpus, tmp_path):
    texts = corpus[0][:10]
    paths = []
    for index, text in enumerate(texts):
        paths.append(tmp_path / f"doc{index}.py")
        paths[-1].write_text(text, encoding="utf-8")
    from_generator = BPETokenizer.train(read_texts(paths), vocab_size=400, progress=False)
    reversed_list = BPETokenizer.train(texts[::-1], vocab_size=400, progress=False)
    assert from_generator.merges == reversed_list.merges
    assert len(from_generator.merges) == 400 - 256 - 1


def test_train_accepts_a_single_string():
    tok = BPETokenizer.train("low lower lowest " * 20, vocab_size=260, special_tokens=(), progress=False)
    assert tok.merges[:2] == [(b"l", b"o"), (b"lo", b"w")]


def test_train_cuts_special_token_text_out_of_the_corpus():
    tok = BPETokenizer.train([f"abc{EOT}abc"] * 50, vocab_size=300, min_frequency=1, progress=False)
    learned = {left + right for left, right in tok.merges}
    assert b"abc" in learned
    assert not any(b"|" in token or b"<" in token for token in learned)


def test_train_stops_early_when_pairs_run_out():
    tok = BPETokenizer.train(["ab ab ab"], vocab_size=1000, special_tokens=(EOT,), progress=False)
    assert tok.merges == [(b"a", b"b"), (b" ", b"ab")]
    assert tok.vocab_size == 256 + 2 + 1
    assert tok.special_tokens == {EOT: 258}


def test_train_with_progress_bar_runs(capsys):
    tok = BPETokenizer.train(["abc abc abd"] * 3, vocab_size=260, special_tokens=(), progress=True)
    assert tok.vocab_size == 260
    assert "learning merges" in capsys.readouterr().err


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(vocab_size=256), ValueError, r"vocab_size must be >= 257 \(256 byte tokens \+ 1 special token\(s\)\), got 256"),
        (dict(vocab_size=300.0), TypeError, r"vocab_size must be an int >= 257 \(256 byte tokens \+ 1 special token\(s\)\), got float"),
        (dict(vocab_size=300, special_tokens=EOT), TypeError, "special_tokens"),
        (dict(vocab_size=300, special_tokens=("a", "a")), ValueError, "repeats"),
        (dict(vocab_size=300, special_tokens=("",)), ValueError, "special_tokens"),
        (dict(vocab_size=300, min_frequency=0), ValueError, "min_frequency must be >= 1, got 0"),
        (dict(vocab_size=300, min_frequency="2"), TypeError, "min_frequency must be an int >= 1, got str"),
    ],
)
def test_train_rejects_bad_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        BPETokenizer.train(["some text"], **kwargs)


def test_train_rejects_non_str_texts_and_surrogates():
    with pytest.raises(TypeError, match="got int"):
        BPETokenizer.train(42, vocab_size=300)
    with pytest.raises(TypeError, match="item 1 is bytes"):
        BPETokenizer.train(["fine", b"bytes"], vocab_size=300)
    with pytest.raises(ValueError, match="surrogate"):
        BPETokenizer.train(["bad \ud800 text"], vocab_size=300)


# --------------------------------------------------------------------------- encode / decode


@given(text=text_strategy)
def test_decode_inverts_encode(trained, text):
    ids = trained.encode(text)
    assert all(0 <= token_id < trained.vocab_size for token_id in ids)
    assert trained.decode(ids) == text
    assert trained.decode(trained.encode(text, allowed_special="all")) == text


@pytest.mark.parametrize("text", ["", " ", "   \n\t  \n", "\n" * 50, "x" * 10_000, "é" * 10_000, "🙂" * 2_500])
def test_edge_cases_round_trip(trained, text):
    ids = trained.encode(text)
    assert (ids == []) == (text == "")
    assert trained.decode(ids) == text


def reference_encode(merges, text):
    """GPT-2's encoding rule read literally, as byte tokens: in each pre-token, merge every
    occurrence (left to right) of the lowest-ranked pair present, until no pair is a merge."""
    rank = {pair: index for index, pair in reversed(list(enumerate(merges)))}
    tokens = []
    for piece in regex.findall(GPT2_SPLIT_PATTERN, text):
        word = tuple(bytes([byte]) for byte in piece.encode("utf-8"))
        while present := [pair for pair in zip(word, word[1:]) if pair in rank]:
            word = merge_all(word, min(present, key=rank.get))
        tokens.extend(word)
    return tokens


@pytest.fixture(scope="module")
def small_alphabet_tokenizer():
    """Merges learned from runs and mixes of "a", "b", "é" (2 bytes): chains such as
    a+a, aa+aa, aaaa+aa, bb+b, so long pieces take many merges and overlaps abound."""
    rng = random.Random(0)
    words = ["".join(rng.choice("aabé") for _ in range(rng.randint(1, 30))) for _ in range(300)]
    words += [rng.choice("abé") * rng.randint(1, 40) for _ in range(300)]
    return BPETokenizer.train(" ".join(words), vocab_size=256 + 150, special_tokens=(), progress=False)


small_alphabet_text = st.one_of(
    st.text(alphabet="abé ", max_size=300),
    st.lists(st.tuples(st.sampled_from("abé "), st.integers(1, 60)), max_size=10).map(
        lambda runs: "".join(char * count for char, count in runs)
    ),
)


@given(text=small_alphabet_text)
@settings(max_examples=200)
def test_encode_matches_the_scan_and_merge_reference(small_alphabet_tokenizer, text):
    tok = small_alphabet_tokenizer
    assert [tok.decode_bytes([token_id]) for token_id in tok.encode(text)] == reference_encode(tok.merges, text)


@pytest.mark.parametrize(
    "merges, text, expected",
    [
        ([(b"a", b"a")], "aaa", [b"aa", b"a"]),  # overlapping occurrences: the leftmost merges
        ([(b"a", b"a")], "aaaaa", [b"aa", b"aa", b"a"]),
        ([(b"a", b"a"), (b"aa", b"a")], "aaaa", [b"aa", b"aa"]),  # every a+a goes before any aa+a
        ([(b"a", b"a"), (b"aa", b"a")], "aaa", [b"aaa"]),
        ([(b"b", b"a"), (b"a", b"a")], "aaba", [b"aa", b"ba"]),  # rank, not position, decides
    ],
)
def test_overlapping_and_chained_merges(merges, text, expected):
    vocab = {**BYTES, **{left + right: 256 + index for index, (left, right) in enumerate(merges)}}
    tok = BPETokenizer(vocab, merges)
    assert reference_encode(merges, text) == expected
    assert tok.encode(text) == [vocab[token] for token in expected]


def test_a_100k_letter_pretoken_round_trips(trained):
    # a single pre-token: merging must not rescan the whole piece per merge
    doubled = next(left for left, right in trained.merges if left == right and len(left) == 1 and left.isalpha())
    random_letters = "".join(random.Random(0).choices(string.ascii_letters, k=100_000))
    for text in (random_letters, "ab" * 50_000, doubled.decode() * 100_000):
        assert len(regex.findall(GPT2_SPLIT_PATTERN, text)) == 1
        ids = trained.encode(text)
        assert len(ids) < len(text)
        assert trained.decode(ids) == text


def test_encoding_compresses_real_text(trained, corpus):
    _, held_out = corpus
    ids = trained.encode(held_out)
    assert trained.decode(ids) == held_out
    assert len(ids) < 0.5 * len(held_out.encode("utf-8"))


def test_special_token_text_is_ordinary_unless_allowed(trained):
    eot_id = trained.special_tokens[EOT]
    text = f"end{EOT}start"
    plain = trained.encode(text)
    assert eot_id not in plain
    assert trained.decode(plain) == text
    allowed = trained.encode(text, allowed_special="all")
    assert allowed == trained.encode("end") + [eot_id] + trained.encode("start")
    assert trained.encode(text, allowed_special={EOT}) == allowed
    assert trained.decode([eot_id]) == EOT


def test_longest_special_token_wins():
    tok = BPETokenizer.train(["abc"], vocab_size=258, special_tokens=("<a>", "<a><b>"), progress=False)
    assert tok.encode("<a><b><a>", allowed_special="all") == [tok.special_tokens["<a><b>"], tok.special_tokens["<a>"]]


def test_encode_rejects_bad_input(trained):
    with pytest.raises(ValueError, match="surrogate"):
        trained.encode("ok \udc80 not ok")
    with pytest.raises(TypeError, match="text must be a str"):
        trained.encode(b"bytes")
    with pytest.raises(ValueError, match="not a special token"):
        trained.encode("x", allowed_special={"<|unknown|>"})
    for bad in (EOT, None, 3):
        with pytest.raises(TypeError, match="allowed_special"):
            trained.encode("x", allowed_special=bad)


def test_decode_of_a_partial_character(trained):
    euro = "€".encode("utf-8")  # 3 bytes; byte tokens have id = byte value
    assert trained.decode_bytes([euro[0], euro[1]]) == euro[:2]
    assert trained.decode([euro[0], euro[1]]) == "\ufffd"
    with pytest.raises(UnicodeDecodeError):
        trained.decode([euro[0], euro[1]], errors="strict")
    with pytest.raises(ValueError, match="errors"):
        trained.decode([1], errors="no-such-handler")


@given(text=text_strategy)
@settings(max_examples=20)
def test_streaming_decode_token_by_token(trained, text):
    decoder = codecs.getincrementaldecoder("utf-8")()
    pieces = [decoder.decode(trained.decode_bytes([token_id])) for token_id in trained.encode(text)]
    assert "".join(pieces) + decoder.decode(b"", final=True) == text


def test_decode_accepts_numpy_ids(trained):
    ids = trained.encode("numpy ids")
    assert trained.decode(np.array(ids, dtype=np.int32)) == "numpy ids"
    assert trained.decode([np.int64(i) for i in ids]) == "numpy ids"


def test_decode_rejects_unknown_ids(trained):
    n = trained.vocab_size
    for bad in (n, -1, 10**9):
        with pytest.raises(ValueError, match=f"unknown token id {bad}"):
            trained.decode([1, 2, bad])
    for bad in (1.0, "a", None):
        with pytest.raises(TypeError, match="ids must be integers"):
            trained.decode([1, bad])


# --------------------------------------------------------------------------- files


def test_byte_to_unicode_table_is_printable_and_one_to_one():
    table = byte_to_unicode()
    assert len(set(table)) == 256
    assert all(char.isprintable() and not char.isspace() for char in table)
    assert table[ord("A")] == "A" and table[ord(" ")] == "\u0120" and table[ord("\n")] == "\u010a"


def test_save_and_load_round_trip(trained, corpus, tmp_path):
    trained.save(tmp_path / "tok")
    assert sorted(os.listdir(tmp_path / "tok")) == ["merges.txt", "vocab.json"]  # no temp files left
    merges_lines = (tmp_path / "tok" / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert merges_lines[0] == "#version: 0.2" and len(merges_lines) == 1 + len(trained.merges)
    vocab = json.loads((tmp_path / "tok" / "vocab.json").read_text(encoding="utf-8"))
    assert vocab[EOT] == trained.special_tokens[EOT] and len(vocab) == trained.vocab_size

    loaded = BPETokenizer.from_pretrained(tmp_path / "tok")
    assert loaded.merges == trained.merges and loaded.special_tokens == trained.special_tokens
    _, held_out = corpus
    assert loaded.encode(held_out) == trained.encode(held_out)


def write_files(directory, vocab=None, merges=None):
    directory.mkdir(exist_ok=True)
    if vocab is not None:
        (directory / "vocab.json").write_text(vocab if isinstance(vocab, str) else json.dumps(vocab), encoding="utf-8")
    if merges is not None:
        (directory / "merges.txt").write_text(merges, encoding="utf-8")
    return directory


BYTE_VOCAB = {char: byte for byte, char in enumerate(byte_to_unicode())}


@pytest.mark.parametrize(
    "vocab, merges, message",
    [
        ("{not json", "#version: 0.2\n", "not a UTF-8 JSON file"),
        ("[1, 2]", "#version: 0.2\n", "must hold a JSON object token -> id, got a JSON list"),
        ({**BYTE_VOCAB, "ab": "x"}, "", "non-negative integer"),
        ({**BYTE_VOCAB, "ab": 3}, "", "id 3 is used by both"),
        ({k: v for k, v in BYTE_VOCAB.items() if k != "a"}, "", "no entry for byte 0x61"),
        (BYTE_VOCAB, "#version: 0.2\na b c\n", "merges.txt:2: expected two tokens"),
        (BYTE_VOCAB, "a b\n", "merges.txt:1: token 'ab' is not in vocab.json"),
        ({**BYTE_VOCAB, "ab": 300}, "a b\n", "ids must be 0..256 without gaps"),
    ],
)
def test_from_pretrained_rejects_malformed_files(tmp_path, vocab, merges, message):
    with pytest.raises(ValueError, match=message):
        BPETokenizer.from_pretrained(write_files(tmp_path / "tok", vocab, merges))


BYTES = {bytes([byte]): byte for byte in range(256)}


@pytest.mark.parametrize(
    "vocab, merges, special_tokens, message",
    [
        ({b"a": 0}, [], {}, "all 256 single bytes; missing 0x00 and 254 more"),
        (BYTES, [(b"a", b"b")], {}, "needs token b'ab'"),
        ({**BYTES, b"ab": 258}, [(b"a", b"b")], {}, "without gaps; b'ab' has id 258"),
        ({**BYTES, b"ab": 256}, [(b"a", b"b")], {"<s>": 256}, "id 256 is used twice"),
        (BYTES, [], {"": 256}, "non-empty str"),
    ],
)
def test_constructor_rejects_inconsistent_parts(vocab, merges, special_tokens, message):
    with pytest.raises(ValueError, match=message):
        BPETokenizer(vocab, merges, special_tokens)


def test_constructor_rejects_bad_cache_size():
    with pytest.raises(ValueError, match="cache_size must be >= 0 or None, got -1"):
        BPETokenizer(BYTES, [], cache_size=-1)
    with pytest.raises(TypeError, match="cache_size must be an int >= 0 or None, got float"):
        BPETokenizer(BYTES, [], cache_size=8.0)


def test_save_refuses_a_special_token_spelled_like_a_token(tmp_path):
    tok = BPETokenizer({**BYTES, b"ab": 256}, [(b"a", b"b")], {"ab": 257})
    assert tok.encode("ab") == [256] and tok.encode("ab", allowed_special="all") == [257]
    with pytest.raises(ValueError, match="special token 'ab' is spelled like"):
        tok.save(tmp_path / "tok")
    assert not (tmp_path / "tok").exists()


def test_from_pretrained_names_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        BPETokenizer.from_pretrained(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="merges.txt"):
        BPETokenizer.from_pretrained(write_files(tmp_path / "tok", BYTE_VOCAB))


def test_from_pretrained_reads_gpt2_layout(tmp_path):
    # GPT-2's own layout: byte tokens ordered by their printable character ("!" = 0), then
    # merge results, then <|endoftext|>
    vocab = {char: index for index, char in enumerate(sorted(BYTE_VOCAB))}
    vocab.update({"he": 256, "Ġhe": 257, EOT: 258})
    tok = BPETokenizer.from_pretrained(write_files(tmp_path / "tok", vocab, "#version: 0.2\nh e\nĠ he\n"))
    assert tok.special_tokens == {EOT: 258}
    assert tok.encode(" he hex") == [257, 257, vocab["x"]]
    assert tok.decode([257, 258]) == f" he{EOT}"


# --------------------------------------------------------------------------- Hugging Face as the oracle


@pytest.fixture(scope="module")
def hf_trained(corpus, tmp_path_factory):
    tokenizers = pytest.importorskip("tokenizers", reason="interop oracle: pip install tokenizers")
    hf = tokenizers.ByteLevelBPETokenizer()
    hf.train_from_iterator(corpus[0], vocab_size=700, special_tokens=[EOT], show_progress=False)
    directory = tmp_path_factory.mktemp("hf_tokenizer")
    hf.save_model(str(directory))
    return hf, directory


def test_tokenizers_trained_files_load_and_encode_identically(hf_trained, corpus):
    hf, directory = hf_trained
    ours = BPETokenizer.from_pretrained(directory)
    assert ours.special_tokens == {EOT: hf.token_to_id(EOT)}
    _, held_out = corpus
    long_word = "".join(random.Random(1).choices(string.ascii_lowercase, k=100_000))
    for text in (held_out, "x" * 10_000, long_word, "   \n\t ", "naïve café 😀 漢字"):
        assert ours.encode(text) == hf.encode(text).ids
    assert ours.decode(hf.encode(held_out).ids) == held_out


@pytest.fixture(scope="module")
def hf_loaded_ours(trained, tmp_path_factory):
    transformers = pytest.importorskip("transformers", reason="interop oracle: pip install transformers")
    directory = tmp_path_factory.mktemp("our_tokenizer")
    trained.save(directory)
    return transformers.GPT2TokenizerFast.from_pretrained(str(directory))


def test_saved_tokenizer_loads_in_transformers_and_encodes_identically(trained, hf_loaded_ours, corpus):
    _, held_out = corpus
    assert hf_loaded_ours.encode(held_out) == trained.encode(held_out)
    assert hf_loaded_ours.convert_tokens_to_ids(EOT) == trained.special_tokens[EOT]
    # transformers turns special-token text into the special id, i.e. allowed_special="all"
    text = f"first{EOT}second"
    assert hf_loaded_ours.encode(text) == trained.encode(text, allowed_special="all")


@given(text=text_strategy)
@settings(max_examples=30)
def test_encode_matches_transformers_on_any_text(trained, hf_loaded_ours, text):
    assert trained.encode(text, allowed_special="all") == hf_loaded_ours.encode(text)


# --------------------------------------------------------------------------- corpus helper


def test_stdlib_corpus_files_are_sorted_python_sources():
    files = stdlib_corpus_files()
    assert files == sorted(files) and len(files) > 100
    assert all(path.suffix == ".py" for path in files)
    assert not any({"site-packages", "test"} & set(path.parts) for path in files)
    prefix = stdlib_corpus_files(max_bytes=100_000)
    assert prefix == files[: len(prefix)]
    assert sum(path.stat().st_size for path in prefix[:-1]) < 100_000 <= sum(path.stat().st_size for path in prefix)
    with pytest.raises(ValueError, match="max_bytes"):
        stdlib_corpus_files(max_bytes=0)
