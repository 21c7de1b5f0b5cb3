"""GPT-2's tokenizer files: ``vocab.json`` and ``merges.txt``, read and written.

GPT-2 stores byte-level tokens as text by mapping each byte to one printable
character (the byte-to-unicode table below), so a token is a JSON string and a
merge is a line ``"left right"`` with no spaces inside either side (the space
byte is written ``Ġ``, U+0120). ``merges.txt`` starts with a ``#version: 0.2``
header line (GPT-2's own file and Hugging Face ``tokenizers`` both write it).
Special tokens such as ``<|endoftext|>`` are stored in ``vocab.json`` as their
literal text; they are the entries that are neither a single byte nor the
result of a merge.

In memory a token is ``bytes``. Depends only on the standard library.
"""

import json
import pathlib

from .fileio import atomic_write, read_json_object

__all__ = ["byte_to_unicode", "read_gpt2_files", "write_gpt2_files"]

VOCAB_FILE = "vocab.json"
MERGES_FILE = "merges.txt"
MERGES_HEADER = "#version: 0.2"


def byte_to_unicode():
    """GPT-2's table byte -> printable character, as a list of 256 one-char strings.

    Bytes that are printable and not whitespace (33..126, 161..172, 174..255) stand
    for themselves; the other 68 bytes, in increasing order, take U+0100, U+0101, ...
    """
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    table = [""] * 256
    for byte in printable:
        table[byte] = chr(byte)
    others = [byte for byte in range(256) if not table[byte]]
    for offset, byte in enumerate(others):
        table[byte] = chr(256 + offset)
    return table


_BYTE_TO_CHAR = byte_to_unicode()
_CHAR_TO_BYTE = {char: byte for byte, char in enumerate(_BYTE_TO_CHAR)}


def _token_to_text(token):
    """bytes -> GPT-2's printable form."""
    return "".join([_BYTE_TO_CHAR[byte] for byte in token])


def _text_to_token(text):
    """GPT-2's printable form -> bytes, or None when a character is outside the table."""
    try:
        return bytes([_CHAR_TO_BYTE[char] for char in text])
    except KeyError:
        return None


def read_gpt2_files(directory):
    """Read ``vocab.json`` and ``merges.txt`` from ``directory``.

    Returns
    -------
    vocab : dict bytes -> int
        The byte-level tokens: all 256 single bytes and every merge's result.
    merges : list of (bytes, bytes)
        In rank order (line order of merges.txt).
    special_tokens : dict str -> int
        The other vocab.json entries, by their literal text.

    Raises FileNotFoundError naming a missing file and ValueError naming the file,
    the line or entry, and what is wrong with it.
    """
    directory = pathlib.Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"tokenizer directory {str(directory)!r} does not exist")
    vocab_path, merges_path = directory / VOCAB_FILE, directory / MERGES_FILE
    for path in (vocab_path, merges_path):
        if not path.is_file():
            raise FileNotFoundError(
                f"{str(path)!r} is missing: a GPT-2 tokenizer needs {VOCAB_FILE} and {MERGES_FILE}"
            )
    entries = _read_vocab_json(vocab_path)
    merge_texts = _read_merges_txt(merges_path)

    vocab, leftover = {}, dict(entries)
    for byte, char in enumerate(_BYTE_TO_CHAR):
        if char not in entries:
            raise ValueError(f"{vocab_path}: no entry for byte 0x{byte:02x} ({char!r}); byte-level BPE needs all 256")
        vocab[bytes([byte])] = leftover.pop(char)
    merges = []
    for line_number, left_text, right_text in merge_texts:
        pair = []
        for text in (left_text, right_text, left_text + right_text):
            token = _text_to_token(text)
            if token is None or text not in entries:
                raise ValueError(f"{merges_path}:{line_number}: token {text!r} is not in {VOCAB_FILE}")
            vocab[token] = entries[text]
            leftover.pop(text, None)
            pair.append(token)
        merges.append((pair[0], pair[1]))
    return vocab, merges, leftover


def _read_vocab_json(path):
    """vocab.json -> dict str -> int, checked: string keys, non-negative unique int ids."""
    entries = read_json_object(path, "a JSON object token -> id")
    seen = {}
    for text, token_id in entries.items():
        if type(token_id) is not int or token_id < 0:
            raise ValueError(f"{path}: id of {text!r} must be a non-negative integer, got {token_id!r}")
        if token_id in seen:
            raise ValueError(f"{path}: id {token_id} is used by both {seen[token_id]!r} and {text!r}")
        seen[token_id] = text
    return entries


def _read_merges_txt(path):
    """merges.txt -> list of (line_number, left, right); skips the #version header and blank lines."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not a UTF-8 text file ({error})") from None
    merges = []
    for line_number, line in enumerate(lines, start=1):
        if (line_number == 1 and line.startswith("#version")) or not line:
            continue
        parts = line.split(" ")
        if len(parts) != 2 or not all(parts):
            raise ValueError(f"{path}:{line_number}: expected two tokens separated by one space, got {line!r}")
        merges.append((line_number, parts[0], parts[1]))
    return merges


def write_gpt2_files(directory, vocab, merges, special_tokens):
    """Write ``vocab.json`` and ``merges.txt`` into ``directory`` (created if needed), atomically.

    vocab : dict bytes -> int, the byte-level tokens
    merges : list of (bytes, bytes) in rank order
    special_tokens : dict str -> int

    Raises ValueError when a special token's text equals a byte-level token's printable
    form: both would need the same vocab.json key.
    """
    entries = {_token_to_text(token): token_id for token, token_id in vocab.items()}
    clashes = [token for token in special_tokens if token in entries]
    if clashes:
        raise ValueError(f"special token {clashes[0]!r} is spelled like a byte-level token in {VOCAB_FILE}")
    entries.update(special_tokens)
    entries = dict(sorted(entries.items(), key=lambda entry: entry[1]))
    lines = [MERGES_HEADER] + [f"{_token_to_text(left)} {_token_to_text(right)}" for left, right in merges]
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with atomic_write(directory / VOCAB_FILE, "w") as f:
        f.write(json.dumps(entries, ensure_ascii=False, indent=0) + "\n")
    with atomic_write(directory / MERGES_FILE, "w") as f:
        f.write("\n".join(lines) + "\n")
