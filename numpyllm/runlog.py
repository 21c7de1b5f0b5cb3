"""The training log: one CSV row per step, and the loss curve drawn from it.

log.csv columns (empty cell = not measured at that step):

    step              optimizer steps done
    train_loss        the training batch's loss at this step
    val_...           the objective's validation metrics, only at evaluation steps: val_loss
                      always (the mean validation loss), then e.g. val_perplexity = exp(val_loss)
                      (next-token), val_accuracy (masked-LM, classification), val_macro_f1
    lr                the learning rate this step used
    grad_norm         global gradient norm before clipping
    tokens_per_second training throughput of this step
    elapsed_seconds   training time since the run began (across resumes)

The plot needs matplotlib (``pip install matplotlib``) and is skipped without it; it
uses matplotlib's Agg canvas directly, never pyplot, so no GUI backend is touched.
"""

import csv
import math
import os

from .fileio import atomic_write

__all__ = ["LOOP_COLUMNS", "RunLog", "read_log", "plot_losses"]

# Every log's columns; the objective's validation columns go between train_loss and lr.
LOOP_COLUMNS = ("step", "train_loss", "lr", "grad_norm", "tokens_per_second", "elapsed_seconds")
_REQUIRED = ("step", "train_loss", "val_loss")


def read_log(path):
    """The rows of a log.csv as dicts: "step" an int, other columns floats or None (empty)."""
    try:
        return _read_rows(path)
    except (UnicodeDecodeError, csv.Error) as error:
        raise ValueError(f"{path} is not a UTF-8 CSV file ({error})") from None


def _read_rows(path):
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [name for name in _REQUIRED + LOOP_COLUMNS if name not in (reader.fieldnames or ())]
        if missing:
            raise ValueError(f"{path} is not a numpyllm training log: columns {reader.fieldnames}, "
                             f"missing {missing}")
        rows = []
        for row in reader:
            if None in row or None in row.values():  # DictReader's marks of extra and missing cells
                raise ValueError(f"{path}:{reader.line_num}: {len(reader.fieldnames)} cells expected, the row "
                                 "has more or fewer (a damaged or cut-short log)")
            try:
                rows.append({key: int(value) if key == "step" else (float(value) if value else None)
                             for key, value in row.items()})
            except ValueError as error:  # a cell that is not a number
                raise ValueError(f"{path}:{reader.line_num}: not a row of numbers ({error})") from None
        return rows


class RunLog:
    """Append-only CSV writer of ``columns``; each row is flushed as soon as it is written.

    columns : the header, a sequence of names (LOOP_COLUMNS with the validation ones inserted)
    keep_until_step : int or None. None starts a fresh log. An int keeps the rows of an
        existing log with step <= keep_until_step (a resumed run drops the rows logged
        after its checkpoint) and appends after them.
    """

    def __init__(self, path, columns, keep_until_step=None):
        self.path = os.fspath(path)
        self.columns = tuple(columns)
        rows = []
        if keep_until_step is not None and os.path.isfile(self.path):
            rows = [row for row in read_log(self.path) if row["step"] <= keep_until_step]
        with atomic_write(self.path, "w") as f:
            writer = csv.DictWriter(f, self.columns, lineterminator="\n")
            writer.writeheader()
            writer.writerows({key: "" if value is None else value for key, value in row.items()} for row in rows)
        self._file = open(self.path, "a", newline="", encoding="utf-8")
        self._writer = csv.DictWriter(self._file, self.columns, lineterminator="\n")

    def write(self, **values):
        """Append one row; ``values`` maps column names to numbers or None (missing = None)."""
        unknown = set(values) - set(self.columns)
        if unknown:
            raise ValueError(f"unknown log columns {sorted(unknown)}; expected some of {self.columns}")
        self._writer.writerow({key: "" if values.get(key) is None else values[key] for key in self.columns})
        self._file.flush()

    def close(self):
        self._file.close()


def plot_losses(log_path, png_path):
    """Draw train and validation loss against step from ``log_path`` into ``png_path``.

    Returns True when the PNG was written (atomically), False when matplotlib is not
    installed or the log has no rows.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return False
    rows = read_log(log_path)
    if not rows:
        return False
    figure = Figure(figsize=(7, 4.5), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for column, label, style in (("train_loss", "train (batch)", dict(alpha=0.6, linewidth=1)),
                                 ("val_loss", "validation", dict(marker="o", linewidth=2))):
        points = [(row["step"], row[column]) for row in rows if row[column] is not None and math.isfinite(row[column])]
        if points:
            steps, losses = zip(*points)
            axes.plot(steps, losses, label=label, **style)
    axes.set_xlabel("step")
    axes.set_ylabel("cross-entropy loss (nats/token)")
    axes.set_title("numpyllm training loss")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    with atomic_write(png_path) as f:
        figure.savefig(f, format="png")
    return True
