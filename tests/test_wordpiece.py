"""WordPiece: the two stages' properties, training, files, and transformers' BertTokenizerFast /
Hugging Face `tokenizers` as the oracle for every id, token type, mask and decoded text."""

import inspect
import json
import random
import unicodedata

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from numpyllm import WordPieceTokenizer
from numpyllm.corpus import read_texts, stdlib_corpus_files
from numpyllm.wordpiece import truncated_lengths, wordpiece_split
from numpyllm.wordpiece_basic import BasicTokenizer, is_dropped, is_punctuation, is_whitespace

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

# Hard cases: accents, CJK, emoji, control and zero-width characters, odd whitespace, special-token text.
HARD_TEXTS = [
    "Héllo, wörld! Ünïcödé façade naïve Ærøskøbing",
    "ΣΑΣ σας ὈΔΥΣΣΕΎΣ İstanbul ǅemal ß ﬁ",
    "日本語のテキストと中文文本,还有한국어 텍스트",
    "emoji 😀👍🏽👩‍💻🇫🇷 and ♥ ★ ☃",
    "control\x00chars\x01\x1b\x7f here\ufffd and \x0b\x0c\x1c\x85 too",
    "zero\u200bwidth\u200d joiner\u2060 and \ufeffBOM\u00ad soft hyphen",
    "tabs\tand\nnewlines\r\nand\u00a0nbsp\u3000ideographic\u2028line\u2029para",
    "a" * 99 + " " + "b" * 100 + " " + "c" * 101 + " " + "supercalifragilisticexpialidocious" * 3,
    "literal [MASK] and [mask] and x[MASK]y and [CLS][SEP] [PAD] [UNK] [MASK",
    "don't won't I'm you've we're it's do not 's ' t",
    "a.b,c;d:e!f?g(h)i[j]k{l}m<n>o/p\\q|r~s`t^u_v-w+x=y*z&$#@%\"'",
    "‘quotes’ “double” «guillemets» — dash – en ‥ … ¿¡ ・ 、。",
    "",
    "   ",
    "\x00\x01",
]


def docstrings():
    """Real English prose: the docstrings of a few standard-library modules and their members."""
    import collections
    import json as json_module
    import pathlib
    import re
    import textwrap

    texts = []
    for module in (collections, json_module, pathlib, re, textwrap, inspect, random):
        texts.append(module.__doc__ or "")
        for _, member in inspect.getmembers(module):
            if (inspect.isfunction(member) or inspect.isclass(member)) and inspect.getdoc(member):
                texts.append(inspect.getdoc(member))
    return texts


@pytest.fixture(scope="module")
def corpus():
    """(training texts, held-out texts): Python source plus docstrings; disjoint."""
    files = stdlib_corpus_files()
    docs = docstrings()
    return list(read_texts(files[:25])) + docs[::2], list(read_texts(files[-3:])) + docs[1::2] + HARD_TEXTS


@pytest.fixture(scope="module")
def trained(corpus):
    return WordPieceTokenizer.train(corpus[0], vocab_size=900, progress=False)


@pytest.fixture(scope="module")
def bert_fast():
    """transformers' BertTokenizerFast class (skips without transformers)."""
    transformers = pytest.importorskip("transformers", reason="transformers is the oracle for BERT's tokenizer")
    return transformers.BertTokenizerFast


@pytest.fixture(scope="module")
def saved_pair(trained, bert_fast, tmp_path_factory):
    """Our trained tokenizer and BertTokenizerFast loaded from the directory it saved."""
    directory = tmp_path_factory.mktemp("ours")
    trained.save(directory)
    return trained, bert_fast.from_pretrained(directory)


def hf_batch(hf, texts, pairs=None, **kwargs):
    return hf(texts, pairs, return_tensors="np", **kwargs)


def assert_same_batch(ours, hf, texts, pairs=None, **kwargs):
    mine = ours(texts, pairs, **kwargs)
    kwargs.setdefault("max_length", 128)
    kwargs.setdefault("truncation", True)
    kwargs.setdefault("padding", "longest")
    theirs = hf_batch(hf, texts, pairs, **kwargs)
    for key in ("input_ids", "token_type_ids", "attention_mask"):
        assert mine[key].dtype == np.int64
        np.testing.assert_array_equal(mine[key], theirs[key], err_msg=key)


def assert_same_tokens(ours, hf, texts):
    for text in texts:
        ids = ours.encode(text)
        assert ids == hf(text)["input_ids"], text
        assert ours.tokenize(text) == hf.tokenize(text), text
        for skip in (True, False):
            assert ours.decode(ids, skip_special_tokens=skip) == hf.decode(ids, skip_special_tokens=skip), text


# --------------------------------------------------------------------------- the basic stage

def assigned_text(**kwargs):
    """Text of characters Python's unicodedata knows (lowercasing of unknown ones is left to Rust's tables)."""
    return st.text(st.characters(blacklist_categories=("Cs", "Cn"), blacklist_characters="\U00011938"), **kwargs)


tricky_text = st.one_of(
    assigned_text(),
    st.lists(st.sampled_from(HARD_TEXTS[:12] + SPECIALS + [" ", "##", "Σ", "é", "e\u0301"]) | assigned_text(max_size=4),
             max_size=12).map("".join),
)


@given(tricky_text)
def test_basic_split_keeps_every_character_but_whitespace_and_dropped(text):
    words = BasicTokenizer(lowercase=False, strip_accents=False).split(text)
    assert "".join(words) == "".join(char for char in text if not is_dropped(char) and not is_whitespace(char))
    for word in words:
        assert not any(map(is_whitespace, word))
        assert len(word) == 1 or not any(map(is_punctuation, word))


@given(st.text(st.characters(codec="utf-8"), max_size=12), st.sets(st.text(min_size=1, max_size=4), max_size=30))
def test_wordpiece_split_is_greedy_longest_match_first(word, pieces):
    vocab = {"[UNK]": 0}
    for piece in pieces:
        vocab.setdefault(piece, len(vocab))
        vocab.setdefault("##" + piece, len(vocab))
    ids = wordpiece_split(word, vocab, 0)
    # reference: the textbook loop, no length bound
    expected, start = [], 0
    while start < len(word):
        candidates = [end for end in range(start + 1, len(word) + 1)
                      if (word[start:end] if start == 0 else "##" + word[start:end]) in vocab]
        if not candidates:
            expected = [0]
            break
        end = max(candidates)
        expected.append(vocab[word[start:end] if start == 0 else "##" + word[start:end]])
        start = end
    assert list(ids) == expected
    if ids != (0,):
        id_to_token = {token_id: token for token, token_id in vocab.items()}
        assert "".join(id_to_token[i].removeprefix("##") if n else id_to_token[i] for n, i in enumerate(ids)) == word


@settings(max_examples=25)
@given(tricky_text)
def test_tokenize_loses_no_character_when_the_vocab_covers_it(text):
    """With every character in the vocabulary (plain and ##), the pieces spell the cleaned text exactly."""
    chars = sorted(set(BasicTokenizer(lowercase=False).normalize(text)) - {" "})
    tok = WordPieceTokenizer(SPECIALS + chars + ["##" + char for char in chars], lowercase=False,
                             strip_accents=False, max_input_chars_per_word=10_000)
    pieces = [token.removeprefix("##") for token in tok.tokenize(text)]
    assert "[UNK]" not in pieces or "[UNK]" in text
    assert "".join(pieces) == "".join(char for char in text if not is_dropped(char) and not is_whitespace(char))


def assert_basic_matches_tokenizers(text, lowercase, strip_accents):
    tokenizers = pytest.importorskip("tokenizers", reason="Hugging Face tokenizers is the oracle")
    normalizer = tokenizers.normalizers.BertNormalizer(lowercase=lowercase, strip_accents=strip_accents)
    expected = [word for word, _ in tokenizers.pre_tokenizers.BertPreTokenizer().pre_tokenize_str(
        normalizer.normalize_str(text))]
    assert BasicTokenizer(lowercase=lowercase, strip_accents=strip_accents).split(text) == expected


BASIC_OPTIONS = [(True, None), (False, None), (False, True), (True, False)]


@pytest.mark.parametrize("lowercase, strip_accents", BASIC_OPTIONS)
@given(text=tricky_text)
def test_basic_matches_tokenizers_on_arbitrary_text(lowercase, strip_accents, text):
    assert_basic_matches_tokenizers(text, lowercase, strip_accents)


@pytest.mark.parametrize("lowercase, strip_accents", BASIC_OPTIONS)
@pytest.mark.parametrize("text", HARD_TEXTS)
def test_basic_matches_tokenizers_on_hard_cases(lowercase, strip_accents, text):
    assert_basic_matches_tokenizers(text, lowercase, strip_accents)


def test_basic_matches_tokenizers_on_sampled_code_points():
    """tokenizers' BertNormalizer + BertPreTokenizer and ours agree, character by character
    (every 97th code point and all of the ranges where Unicode versions differ)."""
    tokenizers = pytest.importorskip("tokenizers", reason="Hugging Face tokenizers is the oracle")
    from numpyllm import wordpiece_basic

    codes = set(range(0, 0x110000, 97))
    for name in dir(wordpiece_basic):
        if name.startswith("_TOKENIZERS_"):
            for first, last in getattr(wordpiece_basic, name):
                codes.update(range(first, last + 1))
    pre = tokenizers.pre_tokenizers.BertPreTokenizer()
    for lowercase, strip_accents in ((True, None), (False, None), (False, True)):
        normalizer = tokenizers.normalizers.BertNormalizer(lowercase=lowercase, strip_accents=strip_accents)
        basic = BasicTokenizer(lowercase=lowercase, strip_accents=strip_accents)
        for code in sorted(codes):
            char = chr(code)
            if 0xD800 <= code <= 0xDFFF or unicodedata.category(char) == "Cn" or code == 0x11938:
                continue
            text = "Ab" + char + "c"
            assert basic.split(text) == [w for w, _ in pre.pre_tokenize_str(normalizer.normalize_str(text))], hex(code)


# --------------------------------------------------------------------------- training

def test_train_puts_special_tokens_first_and_respects_vocab_size(trained, corpus):
    assert trained.vocab_size == 900
    assert trained.convert_ids_to_tokens(range(5)) == SPECIALS
    assert (trained.pad_token_id, trained.unk_token_id, trained.cls_token_id, trained.sep_token_id,
            trained.mask_token_id) == (0, 1, 2, 3, 4)
    tokens = trained.convert_ids_to_tokens(range(trained.vocab_size))
    assert len(set(tokens)) == len(tokens)
    # every training word is covered: no [UNK] in the training text
    for text in corpus[0][:5]:
        assert trained.unk_token_id not in trained.encode(text)


def test_train_is_deterministic_and_independent_of_text_order(corpus):
    texts = corpus[0][:12]
    first = WordPieceTokenizer.train(texts, vocab_size=300, progress=False)
    shuffled = list(texts)
    random.Random(1).shuffle(shuffled)
    second = WordPieceTokenizer.train(iter(shuffled), vocab_size=300, progress=False)
    assert first.vocab == second.vocab


def test_train_merges_the_most_frequent_pair_first():
    # (a, ##b) occurs 4 times, (c, ##d) twice, (##b, ##c) and (##c, ##d) once: below min_frequency=2
    tok = WordPieceTokenizer.train("ab " * 3 + "abcd cd cd", vocab_size=20, progress=False)
    assert tok.convert_ids_to_tokens(range(5, tok.vocab_size)) == ["##b", "##c", "##d", "a", "c", "ab", "cd"]
    assert tok.tokenize("abcd") == ["ab", "##c", "##d"]


def test_train_stops_at_min_frequency_and_cuts_special_token_text():
    tok = WordPieceTokenizer.train("xyz [MASK] xyz", vocab_size=100, min_frequency=3, progress=False)
    assert tok.convert_ids_to_tokens(range(tok.vocab_size)) == SPECIALS + ["##y", "##z", "x"]


def test_train_keeps_the_most_frequent_alphabet_when_it_does_not_fit():
    tok = WordPieceTokenizer.train("aaa b c", vocab_size=7, progress=False)
    assert tok.convert_ids_to_tokens([5, 6]) == ["##a", "a"]
    assert tok.tokenize("b") == ["[UNK]"]


def test_train_with_progress_bar_runs(capsys):
    WordPieceTokenizer.train(["hello world"] * 3, vocab_size=30, progress=True)
    assert "counting words" in capsys.readouterr().err


# --------------------------------------------------------------------------- against transformers

def test_saved_directory_loads_in_transformers_and_encodes_identically(saved_pair, corpus):
    ours, hf = saved_pair
    _, held_out = corpus
    assert_same_tokens(ours, hf, held_out[3:40] + HARD_TEXTS)
    assert hf.vocab_size == ours.vocab_size and hf.pad_token_id == ours.pad_token_id


@pytest.mark.parametrize("kwargs", [
    {}, {"max_length": 16}, {"max_length": 7, "padding": "max_length"}, {"max_length": 200, "padding": "max_length"},
    {"truncation": False, "max_length": None}, {"truncation": False, "max_length": 512, "padding": "max_length"},
])
def test_batches_match_transformers(saved_pair, corpus, kwargs):
    ours, hf = saved_pair
    texts = [text[:300] for text in corpus[1][3:11]] + HARD_TEXTS[:8]
    assert_same_batch(ours, hf, texts, **kwargs)
    assert_same_batch(ours, hf, texts, texts[::-1], **kwargs)


def test_pairs_longer_than_max_length_truncate_longest_first_as_transformers(saved_pair):
    ours, hf = saved_pair
    texts, pairs, n_max = [], [], []
    for n_first in range(0, 7):
        for n_second in range(0, 7):
            texts.append(" ".join(["a"] * n_first))
            pairs.append(" ".join(["b"] * n_second))
    for max_length in range(3, 15):
        assert_same_batch(ours, hf, texts, pairs, max_length=max_length)
        n_max.append(max_length)
    assert_same_batch(ours, hf, texts, max_length=2)
    for n_first, n_second, budget in [(5, 4, 3), (4, 5, 3), (2, 2, 3), (9, 1, 4)]:
        kept = truncated_lengths(n_first, n_second, budget)
        assert sum(kept) == budget and kept[0] <= n_first and kept[1] <= n_second


def test_a_transformers_trained_vocab_loads_here(corpus, bert_fast, tmp_path):
    """tokenizers' own WordPiece trainer on local text, saved as vocab.txt and as tokenizer.json,
    loads here and encodes as BertTokenizerFast does (uncased and cased)."""
    tokenizers = pytest.importorskip("tokenizers", reason="Hugging Face tokenizers trains the oracle vocabulary")
    texts, held_out = corpus
    for lowercase in (True, False):
        hf_trainer = tokenizers.BertWordPieceTokenizer(lowercase=lowercase)
        hf_trainer.train_from_iterator(texts, vocab_size=700, show_progress=False)
        vocab_dir = tmp_path / f"vocab_{lowercase}"
        vocab_dir.mkdir()
        hf_trainer.save_model(str(vocab_dir))
        (vocab_dir / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": lowercase}))
        hf = bert_fast.from_pretrained(vocab_dir)
        ours = WordPieceTokenizer.from_pretrained(vocab_dir)
        assert_same_tokens(ours, hf, held_out[3:20] + HARD_TEXTS)
        assert_same_batch(ours, hf, held_out[3:9], held_out[9:15], max_length=32)
        # transformers >= 5 saves only tokenizer.json (+ tokenizer_config.json)
        json_dir = tmp_path / f"json_{lowercase}"
        hf.save_pretrained(json_dir)
        from_json = WordPieceTokenizer.from_pretrained(json_dir)
        assert from_json.vocab == ours.vocab
        assert_same_tokens(from_json, bert_fast.from_pretrained(json_dir), HARD_TEXTS)


@pytest.mark.parametrize("config_lowercase", [True, False])
def test_tokenizer_config_wins_over_tokenizer_json_as_in_transformers(saved_pair, bert_fast, tmp_path, config_lowercase):
    """transformers >= 5 rebuilds the normalizer from tokenizer_config.json; tokenizer.json gives the vocabulary."""
    _, hf = saved_pair
    hf.save_pretrained(tmp_path)
    tokenizer_json = json.loads((tmp_path / "tokenizer.json").read_text())
    tokenizer_json["normalizer"].update(lowercase=not config_lowercase, strip_accents=not config_lowercase)
    (tmp_path / "tokenizer.json").write_text(json.dumps(tokenizer_json))
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({**config, "do_lower_case": config_lowercase}))
    assert_same_tokens(WordPieceTokenizer.from_pretrained(tmp_path), bert_fast.from_pretrained(tmp_path),
                       HARD_TEXTS[:3] + ["Mixed CASE Text"])


def test_added_tokens_of_a_tokenizer_json_are_never_split(saved_pair, bert_fast, tmp_path):
    tokenizers = pytest.importorskip("tokenizers", reason="Hugging Face tokenizers makes the added tokens")
    hf = bert_fast.from_pretrained(saved_pair[1].name_or_path)
    hf.add_tokens([tokenizers.AddedToken("<new>", normalized=False),
                   tokenizers.AddedToken("<SPEC>", normalized=False, special=True)])
    hf.save_pretrained(tmp_path)
    ours = WordPieceTokenizer.from_pretrained(tmp_path)
    assert ours.tokenize("a<new>b <SPEC> x<NEW>")[:4] == ["a", "<new>", "b", "<SPEC>"]
    assert_same_tokens(ours, bert_fast.from_pretrained(tmp_path), ["a<new>b <SPEC> x<NEW>", "hello <new> world <SPEC>"])
    with pytest.raises(ValueError, match="added tokens \\['<new>', '<SPEC>'\\] cannot be saved"):
        ours.save(tmp_path / "again")


@pytest.mark.parametrize("config", [
    {"do_lower_case": False}, {"do_lower_case": True, "strip_accents": False},
    {"do_lower_case": False, "strip_accents": True}, {"tokenize_chinese_chars": False},
    {"clean_up_tokenization_spaces": True},
])
def test_config_options_are_honoured_like_transformers(trained, bert_fast, tmp_path, config):
    trained.save(tmp_path)
    config_path = tmp_path / "tokenizer_config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), **config}))
    ours, hf = WordPieceTokenizer.from_pretrained(tmp_path), bert_fast.from_pretrained(tmp_path)
    assert_same_tokens(ours, hf, HARD_TEXTS + ["Some Mixed CASE text, don't you think? It's here ."])
    ours.save(tmp_path / "again")
    assert_same_tokens(ours, bert_fast.from_pretrained(tmp_path / "again"), HARD_TEXTS[:4])


@given(tricky_text, tricky_text)
def test_arbitrary_text_encodes_as_transformers(saved_pair, text, pair):
    ours, hf = saved_pair
    assert ours.tokenize(text) == hf.tokenize(text)
    assert_same_batch(ours, hf, [text, pair], [pair, text], max_length=24)


DECODE_VOCAB = SPECIALS + [".", "?", "!", ",", "'", "n't", "'m", "do not", "'s", "'ve", "'re", "##s", "##.", "a", "b",
                          "do", "not", "n", "t", "m", "s", "##'", "##ve", "x y"]


@example([DECODE_VOCAB.index(token) for token in ["a", "do not", "'m", "##s", "[UNK]", "'s", "n't", "'"]], True)
@given(st.lists(st.integers(0, len(DECODE_VOCAB) - 1), max_size=12), st.booleans())
def test_decode_matches_transformers_on_any_ids(bert_fast, tmp_path_factory, ids, skip):
    directory = tmp_path_factory.mktemp("decode")
    (directory / "vocab.txt").write_text("\n".join(DECODE_VOCAB) + "\n")
    ours, hf = WordPieceTokenizer.from_pretrained(directory), bert_fast.from_pretrained(directory)
    assert ours.decode(ids, skip_special_tokens=skip) == hf.decode(ids, skip_special_tokens=skip)


# --------------------------------------------------------------------------- files and bad input

def test_save_writes_the_three_files_and_round_trips(trained, tmp_path):
    trained.save(tmp_path)
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "special_tokens_map.json", "tokenizer_config.json", "vocab.txt"]
    loaded = WordPieceTokenizer.from_pretrained(tmp_path)
    assert loaded.vocab == trained.vocab
    assert loaded.tokenize(HARD_TEXTS[0]) == trained.tokenize(HARD_TEXTS[0])


def test_decode_joins_pieces_back():
    tok = WordPieceTokenizer(SPECIALS + ["un", "##aff", "##able", "!", "hello"])
    ids = tok.encode("unaffable hello!")
    assert tok.tokenize("unaffable hello!") == ["un", "##aff", "##able", "hello", "!"]
    assert tok.decode(ids) == "unaffable hello!"
    assert tok.decode(ids, skip_special_tokens=False) == "[CLS] unaffable hello! [SEP]"
    assert tok.decode(np.array(ids)) == tok.decode(ids) and tok.decode([]) == ""


def test_special_token_text_is_never_split():
    tok = WordPieceTokenizer(SPECIALS + ["a", "##b", "[", "]", "m", "##a", "##s", "##k"])
    assert tok.tokenize("a[MASK]ab [mask]") == ["a", "[MASK]", "a", "##b", "[", "m", "##a", "##s", "##k", "]"]
    assert tok.encode("[MASK]", "[SEP]") == [2, 4, 3, 3, 3]


def test_long_words_become_unk():
    tok = WordPieceTokenizer(SPECIALS + ["a", "##a"], max_input_chars_per_word=5)
    assert tok.tokenize("aaaaa aaaaaa") == ["a", "##a", "##a", "##a", "##a", "[UNK]"]


@pytest.mark.parametrize("call, error, match", [
    (lambda tok: tok.tokenize(b"bytes"), TypeError, "text must be a str"),
    (lambda tok: tok.encode("a", 3), TypeError, "pair must be a str"),
    (lambda tok: tok(["a", None]), TypeError, r"texts\[1\] must be a str"),
    (lambda tok: tok("a b", max_length=1), ValueError, "max_length must be >= 2"),
    (lambda tok: tok("a", "b", max_length=2), ValueError, "max_length must be >= 3"),
    (lambda tok: tok(["a", "a a"], padding=False), ValueError, "different lengths"),
    (lambda tok: tok(["a a a"], max_length=3, truncation=False, padding="max_length"), ValueError, "more than"),
    (lambda tok: tok(["a"], padding="left"), ValueError, "padding must be"),
    (lambda tok: tok(["a"], ["b", "c"]), ValueError, "one str per text"),
    (lambda tok: tok.decode([0, 99]), ValueError, r"ids entries must be in \[0, 7\)"),
    (lambda tok: tok.decode([0.5]), TypeError, "integer"),
    (lambda tok: WordPieceTokenizer.train([b"x"], vocab_size=10), TypeError, "item 0 is bytes"),
    (lambda tok: WordPieceTokenizer.train("x", vocab_size=4), ValueError, "vocab_size must be >= 5"),
    (lambda tok: WordPieceTokenizer(["[PAD]", "[CLS]", "[SEP]", "[MASK]", "a"]), ValueError, "unk_token '\\[UNK\\]'"),
    (lambda tok: WordPieceTokenizer({"[UNK]": 3}), ValueError, "vocab ids must be"),
    (lambda tok: WordPieceTokenizer(SPECIALS + ["a", "a"]), ValueError, "token 'a' more than once"),
])
def test_bad_input_raises_a_clear_error(call, error, match):
    tok = WordPieceTokenizer(SPECIALS + ["a", "b"])
    with pytest.raises(error, match=match):
        call(tok)


def test_from_pretrained_rejects_missing_and_unsupported_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        WordPieceTokenizer.from_pretrained(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="neither tokenizer.json nor vocab.txt"):
        WordPieceTokenizer.from_pretrained(tmp_path)
    (tmp_path / "tokenizer.json").write_text(json.dumps({"model": {"type": "BPE"}}))
    with pytest.raises(ValueError, match="model type must be 'WordPiece'"):
        WordPieceTokenizer.from_pretrained(tmp_path)
    (tmp_path / "tokenizer.json").write_text(json.dumps({
        "model": {"type": "WordPiece", "vocab": {token: i for i, token in enumerate(SPECIALS)}},
        "pre_tokenizer": {"type": "BertPreTokenizer"}, "normalizer": None,
        "added_tokens": [{"id": 5, "content": "<new>", "normalized": True}]}))
    with pytest.raises(ValueError, match="added token '<new>' sets normalized"):
        WordPieceTokenizer.from_pretrained(tmp_path)
    (tmp_path / "tokenizer.json").unlink()
    (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\n[UNK]\n")
    with pytest.raises(ValueError, match="vocab.txt:3: token '\\[UNK\\]' repeats line 2"):
        WordPieceTokenizer.from_pretrained(tmp_path)
