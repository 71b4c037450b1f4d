"""Targets and scores of kernel regression: centred one-hot targets, regression and classification metrics.

Kept apart from the solver so that the experiment, `Prediction.evaluate` and users
score predictions the same way, and a classification task is kernel regression on
`one_hot_targets` scored by `classification_metrics`.
"""
from __future__ import annotations

import numpy as np

from raygram.errors import ConfigError

__all__ = ["one_hot_targets", "regression_metrics", "classification_metrics"]


def one_hot_targets(labels, classes: int) -> np.ndarray:
    """Centred one-hot regression targets for class labels.

    Args:
      labels: integer class labels, shape (N,), each in [0, classes).
      classes: the number of classes C.

    Returns:
      Targets (N, C): 1 − 1/C at the label, −1/C elsewhere (each row sums to 0).

    Raises:
      ConfigError: labels that are not one-dimensional or outside [0, classes).
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size == 0 or labels.min() < 0 or labels.max() >= classes:
        where = f"range [{labels.min()}, {labels.max()}]" if labels.size else "no labels"
        raise ConfigError(f"labels must be integers in [0, {classes}) of shape (N,), got {where} "
                          f"of shape {labels.shape}")
    return (labels[:, None] == np.arange(classes)) - 1.0 / classes


def regression_metrics(mean: np.ndarray, y_test: np.ndarray) -> dict[str, float]:
    """Mean absolute and root-mean-square error, in the targets' units.

    Args:
      mean: predictions, shape (M, K) (or (M,)).
      y_test: targets with mean's number of values, shape (M,) or (M, K).

    Returns:
      {"mae": float, "rmse": float}, averaged over every test point and output.
    """
    error = np.asarray(mean) - np.asarray(y_test).reshape(np.shape(mean))
    return {"mae": float(np.abs(error).mean()), "rmse": float(np.sqrt((error ** 2).mean()))}


def classification_metrics(mean: np.ndarray, labels) -> dict[str, float]:
    """Accuracy of the argmax over outputs.

    Args:
      mean: predictions, shape (M, C) (e.g. regression on `one_hot_targets`).
      labels: integer class labels, shape (M,).

    Returns:
      {"accuracy": float}: the fraction of test points whose largest output is their label.
    """
    return {"accuracy": float((np.argmax(mean, axis=-1) == np.asarray(labels)).mean())}
