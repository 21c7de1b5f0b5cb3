"""Scores of predicted labels: accuracy, macro-F1 and the confusion matrix; MSE and Pearson r for regression.

Needs only NumPy. ``y_true`` / ``y_pred`` are 1-D arrays of the same length: class ids
(ints in [0, n_classes)) or, for regression, real values.
"""

import numpy as np

__all__ = ["confusion_matrix", "accuracy", "macro_f1", "mean_squared_error", "pearson_r"]


def confusion_matrix(y_true, y_pred, n_classes):
    """(n_classes, n_classes) int64 counts: row = the true class, column = the predicted one."""
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(y_true), np.asarray(y_pred)), 1)
    return matrix


def accuracy(y_true, y_pred):
    """The fraction of predictions equal to the truth."""
    return float(np.mean(np.asarray(y_true) == np.asarray(y_pred)))


def macro_f1(y_true, y_pred, n_classes):
    """The unweighted mean over the classes present (in y_true or y_pred) of F1 = 2·TP / (2·TP + FP + FN)."""
    matrix = confusion_matrix(y_true, y_pred, n_classes)
    tp = np.diag(matrix)
    fp_plus_fn = matrix.sum(axis=0) + matrix.sum(axis=1) - 2 * tp
    present = (matrix.sum(axis=0) + matrix.sum(axis=1)) > 0
    return float(np.mean(2 * tp[present] / (2 * tp[present] + fp_plus_fn[present])))


def mean_squared_error(y_true, y_pred):
    return float(np.mean((np.asarray(y_true, dtype=np.float64) - np.asarray(y_pred, dtype=np.float64)) ** 2))


def pearson_r(y_true, y_pred):
    """Pearson's correlation coefficient; NaN when either side is constant."""
    a = np.asarray(y_true, dtype=np.float64) - np.mean(y_true)
    b = np.asarray(y_pred, dtype=np.float64) - np.mean(y_pred)
    denominator = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denominator) if denominator > 0 else float("nan")
