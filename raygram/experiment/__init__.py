"""Experiments: a config's data, kernels, builds and solves, recorded in MLflow.

- `run_experiment`, `prepare` (run.py): orchestration only.
- `validated`, `summary_table` (selection.py): the ridge chosen on the validation split.
- tracking.py: where runs go (checked before work), configs and records as MLflow params,
  metrics and artifacts, resuming an interrupted run.
- plots.py: figures of the test metric against training size and time.
- `track_convergence` (convergence.py): finite-width vs analytic kernels, recorded.
"""
from raygram.experiment.convergence import track_convergence
from raygram.experiment.run import build_kernel, prepare, run_experiment, solve_kernel
from raygram.experiment.selection import METRIC, summary_table, validated

__all__ = ["run_experiment", "prepare", "build_kernel", "solve_kernel", "track_convergence",
           "METRIC", "validated", "summary_table"]
