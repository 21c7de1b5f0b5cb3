"""BERT tokenizer directories: ``vocab.txt`` + ``tokenizer_config.json``, or ``tokenizer.json``.

A directory in the format ``transformers.BertTokenizer`` has always read holds

- ``vocab.txt``: one token per line, the line number (from 0) is its id;
- ``tokenizer_config.json``: ``do_lower_case``, ``strip_accents``, ``tokenize_chinese_chars``,
  the special tokens' text (``unk_token``, ``pad_token``, ``cls_token``, ``sep_token``,
  ``mask_token``), ``clean_up_tokenization_spaces``;
- ``special_tokens_map.json``: the special tokens again (older transformers read them there).

transformers >= 5 saves only ``tokenizer.json`` (Hugging Face ``tokenizers``' serialization:
the WordPiece model's vocab, the BertNormalizer's options, the added tokens) next to
``tokenizer_config.json``. ``read_bert_dir`` prefers ``tokenizer.json`` when present, as
transformers does, and returns keyword arguments for ``WordPieceTokenizer``.

Depends only on the standard library and ``fileio``.
"""

import pathlib

from .fileio import atomic_write, read_json_object, write_json_object

__all__ = ["SPECIAL_TOKEN_NAMES", "read_bert_dir", "write_bert_dir"]

VOCAB_FILE = "vocab.txt"
CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_FILE = "special_tokens_map.json"
TOKENIZER_FILE = "tokenizer.json"

# the keyword / config names of the five special tokens and BERT's spelling of them
SPECIAL_TOKEN_NAMES = {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]",
                       "sep_token": "[SEP]", "mask_token": "[MASK]"}


def read_bert_dir(directory):
    """Read a BERT tokenizer directory -> keyword arguments for ``WordPieceTokenizer(**kwargs)``.

    Returns a dict with ``vocab`` (dict str -> id) and those of the basic tokenizer's
    options (``lowercase``, ``strip_accents``, ``tokenize_chinese_chars``, ``clean_text``),
    the special tokens' text by name, ``max_input_chars_per_word``,
    ``clean_up_tokenization_spaces`` and ``added_tokens`` (from a ``tokenizer.json``:
    further never-split tokens, as (text, special) pairs) that the directory sets.

    Where both say something, ``tokenizer_config.json`` wins over ``tokenizer.json``, as
    in transformers >= 5 (its BertTokenizer rebuilds the normalizer from the config's
    ``do_lower_case``, ``strip_accents``, ``tokenize_chinese_chars`` and takes only the
    vocabulary from tokenizer.json); an option the config leaves out comes from
    tokenizer.json's BertNormalizer (transformers would use BERT's default instead).

    Raises FileNotFoundError when the directory has neither ``tokenizer.json`` nor
    ``vocab.txt``, and ValueError naming the file for content this tokenizer cannot
    honour (a model other than WordPiece, normalized added tokens, ...).
    """
    directory = pathlib.Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"tokenizer directory {str(directory)!r} does not exist")
    if (directory / TOKENIZER_FILE).is_file():
        kwargs = _read_tokenizer_json(directory / TOKENIZER_FILE)
    elif (directory / VOCAB_FILE).is_file():
        kwargs = {"vocab": _read_vocab_txt(directory / VOCAB_FILE)}
    else:
        raise FileNotFoundError(
            f"{str(directory)!r} has neither {TOKENIZER_FILE} nor {VOCAB_FILE}: it is not a BERT tokenizer directory"
        )
    config_path = directory / CONFIG_FILE
    config = read_json_object(config_path, "a JSON object of tokenizer options") if config_path.is_file() else {}
    special_path = directory / SPECIAL_TOKENS_FILE
    special_map = read_json_object(special_path, "a JSON object name -> token") if special_path.is_file() else {}
    for name in SPECIAL_TOKEN_NAMES:
        for source, path in ((config, config_path), (special_map, special_path)):
            if name in source:
                kwargs[name] = _token_text(source[name], name, path)
                break
    for key, option, types in (("do_lower_case", "lowercase", (bool,)),
                               ("strip_accents", "strip_accents", (bool, type(None))),
                               ("tokenize_chinese_chars", "tokenize_chinese_chars", (bool,)),
                               ("clean_up_tokenization_spaces", "clean_up_tokenization_spaces", (bool,))):
        if key in config:
            kwargs[option] = config[key]
            if not isinstance(config[key], types):
                raise ValueError(f"{config_path}: {key} must be {' or '.join(t.__name__ for t in types)}, "
                                 f"got {config[key]!r}")
    return kwargs


def _token_text(value, name, path):
    """A special token as a config stores it: its text, or an AddedToken object with "content"."""
    if isinstance(value, dict):
        value = value.get("content")
    if not isinstance(value, str) or not value:
        raise ValueError(f"{path}: {name} must be a non-empty string (or an object with one as 'content'), "
                         f"got {value!r}")
    return value


def _read_vocab_txt(path):
    """vocab.txt -> dict token -> line number; a repeated token or an empty line is an error."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not a UTF-8 text file ({error})") from None
    lines = text.split("\n")  # only "\n" ends a line, as iterating over the file does
    if lines[-1] == "":
        lines.pop()
    vocab = {}
    for line_number, token in enumerate(lines):
        if not token:
            raise ValueError(f"{path}:{line_number + 1}: empty line (every line is a token)")
        if token in vocab:
            raise ValueError(f"{path}:{line_number + 1}: token {token!r} repeats line {vocab[token] + 1}")
        vocab[token] = line_number
    return vocab


def _read_tokenizer_json(path):
    """tokenizer.json (a WordPiece model with BERT's normalizer and pre-tokenizer) -> keyword arguments."""
    data = read_json_object(path, "a tokenizers serialization")
    try:
        return _tokenizer_json_options(data, path)
    except (AttributeError, KeyError, TypeError) as error:  # a field of the wrong JSON type, a missing one
        raise ValueError(f"{path}: not a tokenizers WordPiece serialization ({type(error).__name__}: {error})") from None


def _tokenizer_json_options(data, path):
    model = data.get("model") or {}
    if model.get("type") != "WordPiece":
        raise ValueError(f"{path}: model type must be 'WordPiece', got {model.get('type')!r}")
    if model.get("continuing_subword_prefix", "##") != "##":
        raise ValueError(f"{path}: continuing_subword_prefix must be '##', got {model['continuing_subword_prefix']!r}")
    pre_tokenizer = data.get("pre_tokenizer") or {}
    if pre_tokenizer.get("type") != "BertPreTokenizer":
        raise ValueError(f"{path}: pre_tokenizer must be BertPreTokenizer, got {pre_tokenizer.get('type')!r}")
    normalizer = data.get("normalizer")
    if normalizer is None:  # no normalization at all
        normalizer = {"clean_text": False, "handle_chinese_chars": False, "strip_accents": False, "lowercase": False}
    elif normalizer.get("type") != "BertNormalizer":
        raise ValueError(f"{path}: normalizer must be BertNormalizer or null, got {normalizer.get('type')!r}")
    vocab = model.get("vocab")
    if not isinstance(vocab, dict):
        raise ValueError(f"{path}: model.vocab must be an object token -> id")
    vocab = dict(vocab)
    added_tokens = []
    for entry in data.get("added_tokens") or []:
        flags = [flag for flag in ("normalized", "lstrip", "rstrip", "single_word") if entry.get(flag)]
        if flags:
            raise ValueError(f"{path}: added token {entry.get('content')!r} sets {', '.join(flags)}, "
                             "which this tokenizer does not support")
        vocab.setdefault(entry["content"], entry["id"])
        added_tokens.append((entry["content"], bool(entry.get("special"))))
    return {
        "vocab": vocab,
        "unk_token": model.get("unk_token", "[UNK]"),
        "max_input_chars_per_word": model.get("max_input_chars_per_word", 100),
        "clean_text": normalizer.get("clean_text", True),
        "tokenize_chinese_chars": normalizer.get("handle_chinese_chars", True),
        "strip_accents": normalizer.get("strip_accents"),
        "lowercase": normalizer.get("lowercase", True),
        "added_tokens": added_tokens,
    }


def write_bert_dir(directory, id_to_token, options, special_tokens):
    """Write ``vocab.txt``, ``tokenizer_config.json`` and ``special_tokens_map.json`` into ``directory``.

    id_to_token : list of str, the vocabulary in id order (no token may contain a newline)
    options : dict with lowercase, strip_accents, tokenize_chinese_chars, clean_up_tokenization_spaces
    special_tokens : dict name -> text, for the five names of ``SPECIAL_TOKEN_NAMES``

    Raises ValueError for a token that cannot be a line of vocab.txt.
    """
    for token_id, token in enumerate(id_to_token):
        if not token or any(char in token for char in "\n\r"):
            raise ValueError(f"token {token_id} ({token!r}) cannot be a line of {VOCAB_FILE}")
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with atomic_write(directory / VOCAB_FILE, "w") as f:
        f.write("\n".join(id_to_token) + "\n")
    config = {
        "tokenizer_class": "BertTokenizer",
        "do_lower_case": options["lowercase"],
        "strip_accents": options["strip_accents"],
        "tokenize_chinese_chars": options["tokenize_chinese_chars"],
        "clean_up_tokenization_spaces": options["clean_up_tokenization_spaces"],
        **special_tokens,
    }
    write_json_object(directory / CONFIG_FILE, config)
    write_json_object(directory / SPECIAL_TOKENS_FILE, dict(special_tokens))
