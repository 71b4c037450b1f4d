"""Experiments: a config's data, kernels, builds and solves, recorded in MLflow.

- `run_experiment`, `prepare` (run.py): orchestration only.
- `validated`, `selected`, `summary_table` (selection.py): the ridge and time chosen on the
  validation split (or, without one, on the test split, marked optimistic); mean ± standard
  error over seeds.
- tracking.py: where runs go (checked before work), configs and records as MLflow params,
  metrics and artifacts, resuming an interrupted run.
- plots.py: figures of the test metric against training size and normalised time.
- `track_convergence` (convergence.py): finite-width vs analytic kernels, recorded.
"""
from raygram.experiment.convergence import track_convergence
from raygram.experiment.run import build_kernel, prepare, prepare_all, run_experiment, solve_kernel, spectral_times
from raygram.experiment.selection import METRIC, selected, summary_table, validated

__all__ = ["run_experiment", "prepare", "prepare_all", "build_kernel", "spectral_times", "solve_kernel",
           "track_convergence", "METRIC", "validated", "selected", "summary_table"]
