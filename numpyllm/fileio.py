"""Files in and out: atomic writes, and JSON objects read with a clear error.

Every file numpyllm writes (checkpoints, optimizer state, tokenizer files, token
arrays, logs, plots) goes through ``atomic_write``: a reader, or a crash, never sees
half a file. Every JSON file it reads (config.json, vocab.json, trainer_state.json, a
weights index) holds one object and goes through ``read_json_object``; ``write_json_object``
writes one. Depends on the standard library only.
"""

import contextlib
import json
import os
import tempfile

__all__ = ["atomic_write", "read_json_object", "write_json_object"]


def read_json_object(path, what="a JSON object"):
    """The dict stored as JSON in the UTF-8 file ``path``.

    Raises FileNotFoundError for a missing file and ValueError naming the file when it
    is not UTF-8 JSON or holds something other than an object (``what`` says what
    object was expected, for the message).
    """
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:  # RecursionError: [[[[...
        raise ValueError(f"{os.fspath(path)} is not a UTF-8 JSON file ({error})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{os.fspath(path)} must hold {what}, got a JSON {type(value).__name__}")
    return value


def write_json_object(path, value):
    """Write the dict ``value`` to ``path`` as indented UTF-8 JSON (non-ASCII kept as is), atomically."""
    with atomic_write(path, "w") as f:
        f.write(json.dumps(value, ensure_ascii=False, indent=2) + "\n")


@contextlib.contextmanager
def atomic_write(path, mode="wb"):
    """Open a temporary file next to ``path``; on success it replaces ``path`` in one rename.

    Readers see the old file or the new one, never half a file: the content goes to a
    temp file in the same directory, is flushed and fsynced, then ``os.replace`` moves it
    into place. On any exception the temp file is removed and ``path`` is untouched.
    ``mode`` is "wb" (bytes) or "w" (UTF-8 text with "\\n" line ends on every OS).
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"mode must be 'wb' or 'w', got {mode!r}")
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp_path = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        text = mode == "w"
        with os.fdopen(fd, mode, encoding="utf-8" if text else None, newline="\n" if text else None) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp_path, 0o666 & ~_current_umask())  # mkstemp makes it 0600; give a normal file's mode
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp_path)
        raise


def _current_umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask
