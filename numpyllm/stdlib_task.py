"""The classifier's default task, built at run time from this Python's standard library: nothing downloaded.

Text: a docstring's first paragraph (of a module, class or function) or a comment of
at least 20 characters, whitespace collapsed, cut to 48 words. Label: the top-level
standard-library package whose source it comes from, one of ``PACKAGES`` — something
true about the text, read off its file's path. A text that occurs more than once is
kept once (and dropped when it occurs under two packages). The files are split, not
the texts: within each package, files in a seeded order go to validation while they
hold at most 1.2 × ``val_fraction`` of the package's texts (at least one file), so no file's texts are on both sides and
every package is in both. Depends on the standard library only.
"""

import ast
import io
import pathlib
import random
import sysconfig
import tokenize

from .labelled import Examples

__all__ = ["PACKAGES", "stdlib_examples"]

# Present in every CPython 3.9-3.13 build, each with hundreds of docstrings and comments.
PACKAGES = ("asyncio", "email", "http", "importlib", "logging", "multiprocessing", "unittest", "xml")
_SKIPPED_DIRS = {"test", "tests", "idle_test", "__pycache__"}
_MAX_WORDS = 48


def _short(text):
    words = text.split()
    return " ".join(words[:_MAX_WORDS])


def _texts(source):
    """The docstring paragraphs and comments of one file's ``source``, in file order."""
    texts = []
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return texts
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            docstring = ast.get_docstring(node)
            if docstring and len(docstring.split("\n\n")[0].strip()) >= 10:
                texts.append(_short(docstring.split("\n\n")[0]))
    try:
        for token in tokenize.generate_tokens(io.StringIO(source).readline):
            comment = token.string.lstrip("#").strip()
            if token.type == tokenize.COMMENT and len(comment) >= 20 and not comment.startswith(("!", "-*-")):
                texts.append(_short(comment))
    except (tokenize.TokenError, SyntaxError):
        pass
    return texts


def stdlib_examples(val_fraction=0.15, seed=0):
    """(train, val) Examples of the default task (see the module docstring); labels are package names."""
    root = pathlib.Path(sysconfig.get_paths()["stdlib"])
    found = {}  # text -> (package, is_val), in sorted file order
    ambiguous = set()
    rng = random.Random(seed)
    for package in PACKAGES:
        files = sorted(path for path in (root / package).rglob("*.py")
                       if _SKIPPED_DIRS.isdisjoint(path.relative_to(root).parts[:-1]))
        texts = {path: _texts(path.read_text(encoding="utf-8", errors="replace")) for path in files}
        val_files, n_val, n_all = set(), 0, sum(map(len, texts.values()))
        for path in rng.sample(files, len(files)):  # skipping a file that would overshoot by 20%
            if n_val + len(texts[path]) <= 1.2 * val_fraction * n_all:
                val_files.add(path)
                n_val += len(texts[path])
        if not val_files:  # every file too big (logging has three): the smallest one with text
            val_files.add(min((path for path in files if texts[path]), key=lambda path: len(texts[path])))
        for path in files:
            for text in texts[path]:
                if text in found and found[text][0] != package:
                    ambiguous.add(text)
                found.setdefault(text, (package, path in val_files))
    splits = {False: Examples("the standard-library task (train)", [], None, [], []),
              True: Examples("the standard-library task (validation)", [], None, [], [])}
    for text, (package, is_val) in found.items():
        if text not in ambiguous:
            split = splits[is_val]
            split.texts.append(text)
            split.labels.append(package)
            split.lines.append(len(split.texts))
    return splits[False], splits[True]
