"""Kernel regression with stored Gram matrices: `predict` and what it takes and gives.

    from raygram.solve import GramSource, SolverOptions, predict

    out = predict(store, y_train, SolverOptions(times=(1.0, math.inf)), diag_reg=[1e-4, 1e-2])
    records = out.evaluate(y_test)

`predict` reads the train, test×train and test-diagonal blocks of a `GramSource` (a
`GramStore` or arrays), applies one solver method of the registry `METHODS` (cholesky,
eigh, cg, lanczos; "auto" chooses by memory) and returns a `Prediction`, scored by the
metrics here. The method modules (`cholesky`, `eigh`, `cg`, `lanczos`) hold the
algorithms; `base.Method` is their one interface.
"""
from raygram.config import SolverOptions
from raygram.solve.base import Method
from raygram.solve.methods import METHODS
from raygram.solve.metrics import classification_metrics, one_hot_targets, regression_metrics
from raygram.solve.predict import Prediction, predict
from raygram.solve.source import GramSource

__all__ = [
    "predict",
    "Prediction",
    "GramSource",
    "SolverOptions",
    "METHODS",
    "Method",
    "one_hot_targets",
    "regression_metrics",
    "classification_metrics",
]
