"""Atomic file writes: a reader, or a crash, never sees half a file.

Every file numpyllm writes (checkpoints, optimizer state, tokenizer files, token
arrays, logs, plots) goes through ``atomic_write``. Depends on the standard library only.
"""

import contextlib
import os
import tempfile

__all__ = ["atomic_write"]


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
