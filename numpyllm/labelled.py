"""Labelled text files for classification: .csv, .tsv (a header row) or .jsonl (one object a line).

Columns: ``text``, optionally ``text_pair``, and ``label`` (other names by argument).
Labels are strings, integers, or numbers with a fraction (then the task is a
regression): ``Labels.from_values`` decides, and maps each class to an id (sorted: by
value when every label is an integer, else as strings). Every error is one ValueError
naming the file, the line and the field. Depends on the standard library only.
"""

import csv
import dataclasses
import json
import math
import os

__all__ = ["Examples", "Labels", "read_examples", "FORMATS"]

FORMATS = (".csv", ".tsv", ".jsonl")


@dataclasses.dataclass
class Examples:
    """The examples of one file: parallel lists, ``lines[i]`` the line example i ends on."""

    path: str
    texts: list
    pairs: list  # or None: no text_pair column
    labels: list  # raw values (str, int or float), or None: no label column
    lines: list

    def __len__(self):
        return len(self.texts)


def _number(value):
    """``value`` as an int or a float when it reads as one (a CSV cell or a JSON number), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value
    try:
        return int(value)
    except ValueError:
        pass
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


@dataclasses.dataclass
class Labels:
    """The label set of a training file: ``names`` (id -> label string), or regression."""

    names: list  # [] for regression
    regression: bool

    @classmethod
    def from_values(cls, values):
        """Regression when every label is a number and one has a fraction; else the sorted classes."""
        numbers = [_number(value) for value in values]
        if all(n is not None for n in numbers) and any(isinstance(n, float) and not n.is_integer() for n in numbers):
            return cls([], True)
        if all(n is not None for n in numbers):  # integers (maybe written 1.0): by value
            return cls([str(int(n)) for n in sorted(set(numbers))], False)
        return cls(sorted({str(value) for value in values}), False)

    @classmethod
    def from_id2label(cls, id2label, regression):
        return cls([id2label[i] for i in range(len(id2label))], regression)

    @property
    def num_labels(self):
        return 1 if self.regression else len(self.names)

    def _key(self, value):
        number = _number(value)
        return str(int(number)) if number is not None and float(number).is_integer() else str(value)

    def encode(self, examples):
        """The labels of ``examples`` as ids (a list of int) or, for regression, floats.

        Raises ValueError naming the file and line of a label the set does not hold.
        """
        if self.regression:
            encoded = []
            for value, line in zip(examples.labels, examples.lines):
                number = _number(value)
                if number is None:
                    raise ValueError(f"{examples.path} line {line}: field 'label' is {value!r}; "
                                     "this regression model needs a number")
                encoded.append(float(number))
            return encoded
        ids = {name: i for i, name in enumerate(self.names)}
        encoded = []
        for value, line in zip(examples.labels, examples.lines):
            key = self._key(value)
            if key not in ids:
                shown = ", ".join(self.names[:10]) + (" ..." if len(self.names) > 10 else "")
                raise ValueError(f"{examples.path} line {line}: label {key!r} was not among the training "
                                 f"labels ({shown})")
            encoded.append(ids[key])
        return encoded


def _rows(path, kind):
    """Yield (line number, dict of the row's fields) and finally check there was a header."""
    if kind == ".jsonl":
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as error:
                    raise ValueError(f"{path} line {number}: not JSON ({error.msg} at column {error.colno})") from None
                if not isinstance(row, dict):
                    raise ValueError(f"{path} line {number}: a JSON object is needed, got a {type(row).__name__}")
                yield number, row
        return
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t" if kind == ".tsv" else ",")
        header = next(reader, None)
        if header is None:
            raise ValueError(f"{path} is empty: no header row")
        for row in reader:
            if not row:
                continue
            if len(row) != len(header):
                raise ValueError(f"{path} line {reader.line_num}: {len(row)} fields, the header has {len(header)}")
            yield reader.line_num, dict(zip(header, row))


def read_examples(path, text_column="text", text_pair_column=None, label_column="label", need_labels=True):
    """The examples of the labelled file ``path`` (see the module docstring).

    text_pair_column: None reads a ``text_pair`` column when there is one; a name makes
    that column required. need_labels: False allows a file without the label column
    (classify: predictions only). Raises FileNotFoundError / ValueError naming the file,
    line and field: an unknown extension, no header, a missing column or field, an empty
    text, a line that is not JSON, no examples.
    """
    path = os.fspath(path)
    kind = os.path.splitext(path)[1].lower()
    if kind not in FORMATS:
        raise ValueError(f"{path}: unknown format {kind or '(no extension)'!r}; use {', '.join(FORMATS)}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file")
    examples = Examples(path, [], [], [], [])
    pair_column, label_wanted = text_pair_column, label_column
    try:
        for index, (line, row) in enumerate(_rows(path, kind)):
            if index == 0:  # the first row fixes which optional columns the file has
                if pair_column is None and "text_pair" in row:
                    pair_column = "text_pair"
                if not need_labels and label_column not in row:
                    label_wanted = None
                for name in (text_column, text_pair_column, label_wanted):
                    if name is not None and name not in row:
                        raise ValueError(f"{path} line {line}: no column {name!r} (columns: {', '.join(map(str, row))})")
            for name in (text_column, pair_column, label_wanted):
                if name is not None and row.get(name) is None:
                    raise ValueError(f"{path} line {line}: field {name!r} is missing")
            text = row[text_column]
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"{path} line {line}: field {text_column!r} must be a non-empty string, got {text!r}")
            examples.texts.append(text)
            if pair_column is not None:
                if not isinstance(row[pair_column], str):
                    raise ValueError(f"{path} line {line}: field {pair_column!r} must be a string")
                examples.pairs.append(row[pair_column])
            if label_wanted is not None:
                label = row[label_wanted]
                if isinstance(label, bool) or not isinstance(label, (str, int, float)) or label == "":
                    raise ValueError(f"{path} line {line}: field {label_wanted!r} must be a string or a "
                                     f"number, got {label!r}")
                examples.labels.append(label)
            examples.lines.append(line)
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    if not examples.texts:
        raise ValueError(f"{path} has no examples")
    if pair_column is None:
        examples.pairs = None
    if label_wanted is None:
        examples.labels = None
    return examples
