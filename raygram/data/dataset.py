"""`Data`: the arrays of one experiment, as every data source hands them to the experiment."""
from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["Data"]


@dataclasses.dataclass
class Data:
    """Arrays of one experiment.

    Attributes:
      x_train: training inputs (n_max, ...), n_max the largest training size.
      x_test: validation then test inputs (V + M, ...); the first `validation` rows
        choose the ridge.
      fingerprint: {"name", "shape", "sha256", ...}: what the data is (store fingerprints
        hash the arrays themselves; this describes the source for tracking).
      task: "classification", "regression" or None (build-only data without targets).
      validation: V, the number of validation rows at the start of x_test.
      labels_train, labels_test: int class labels (n_max,), (V + M,) for classification.
      classes: the number of classes.
      molecules_train, molecules_test: QM9 molecules in the order of the rows.
    """

    x_train: np.ndarray
    x_test: np.ndarray | None
    fingerprint: dict
    task: str | None = "classification"
    validation: int = 0
    labels_train: np.ndarray | None = None
    labels_test: np.ndarray | None = None
    classes: int | None = None
    molecules_train: list | None = None
    molecules_test: list | None = None
