"""The README's Python example runs as written."""

import pathlib
import re

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def python_block(heading, index=0):
    """The first (or ``index``-th) ```python block after ``heading`` in the README."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index(heading):]
    return re.findall(r"```python\n(.*?)```", section, re.DOTALL)[index]


def test_library_tour_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # it writes a checkpoint directory
    namespace = {}
    exec(compile(python_block("## The library in 30 lines"), "README.md", "exec"), namespace)
    assert namespace["out"].shape == (1, len(namespace["ids"]) * 2 + 20)
    assert (tmp_path / "ckpt" / "config.json").is_file()


def test_one_line_section_runs(tmp_path, monkeypatch):
    """The "One line" example on tiny saved directories (tests/test_pipelines.py builds them)."""
    import warnings

    from test_pipelines import build_directories

    monkeypatch.chdir(tmp_path)
    build_directories(tmp_path / "runs")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fill-mask targets outside the tiny vocabulary warn
        exec(compile(python_block("## One line"), "README.md", "exec"), {})


def test_attention_example_runs():
    namespace = {}
    exec(compile(python_block("## Attention\n"), "README.md", "exec"), namespace)
    assert namespace["dk4"].shape == (2, 4, 1024, 64)
