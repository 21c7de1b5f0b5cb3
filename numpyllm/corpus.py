"""A default text corpus that needs no download: this interpreter's standard library source.

The tokenizer benchmark trains on it and the training command uses it when no
``--data`` is given. Depends only on the standard library.
"""

import pathlib
import sysconfig

from ._checks import check_int

__all__ = ["stdlib_corpus_files", "read_texts"]

_SKIPPED_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}


def stdlib_corpus_files(max_bytes=None):
    """Sorted paths of the standard library's ``.py`` files, without third-party or test code.

    The root is ``sysconfig.get_paths()["stdlib"]``; any file below a directory named
    ``site-packages``, ``dist-packages``, ``test``, ``tests`` or ``idle_test`` is left out
    (third-party packages differ between machines; test dirs hold odd encodings and data).

    Parameters
    ----------
    max_bytes : int or None
        Keep the shortest prefix of the sorted list whose file sizes sum to at least
        ``max_bytes`` (all files when None or when the library is smaller).

    Returns
    -------
    list of pathlib.Path, sorted by path.
    """
    max_bytes = check_int(max_bytes, "max_bytes", 1, optional=True)
    root = pathlib.Path(sysconfig.get_paths()["stdlib"])
    files = sorted(
        path
        for path in root.rglob("*.py")
        if path.is_file() and _SKIPPED_DIRS.isdisjoint(path.relative_to(root).parts[:-1])
    )
    if max_bytes is None:
        return files
    kept, total = [], 0
    for path in files:
        if total >= max_bytes:
            break
        kept.append(path)
        total += path.stat().st_size
    return kept


def read_texts(paths):
    """Yield each file's text, one file at a time (UTF-8; undecodable bytes become U+FFFD)."""
    for path in paths:
        yield pathlib.Path(path).read_text(encoding="utf-8", errors="replace")
