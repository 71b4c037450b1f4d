"""`raygram check-convergence`: finite-width Monte-Carlo kernels against the analytic ones, in MLflow.

The computation is `raygram.kernels.convergence.convergence_errors`; this module runs it
for one kernel of an experiment config and records the errors per width, a plot and
the code version as an MLflow run of the config's experiment.
"""
from __future__ import annotations

from raygram.config import Config
from raygram.data import Data
from raygram.experiment.plots import convergence_plot
from raygram.experiment.tracking import code_version, set_experiment, tracking_uri
from raygram.kernels.convergence import convergence_errors

__all__ = ["track_convergence"]


def track_convergence(config: Config, data: Data, kernel: str, widths: list[int], networks: int, points: int,
                      out: str | None = None) -> tuple[list[dict], str]:
    """Monte-Carlo vs analytic kernel errors against width for one kernel, logged as an MLflow run.

    Args:
      config: the validated config (architecture, kinds, seed, tracking).
      data: the experiment's arrays; the first `points` training inputs are used.
      kernel: a name from `config.kernels`.
      widths: hidden widths of the finite networks.
      networks: random networks per width.
      points: training inputs the kernels are compared on.
      out: also write the plot to this PNG file.

    Returns:
      (errors, run_id): one record per (width, kind) {"width", "kind", "error", "error_std"}.
    """
    import matplotlib.pyplot as plt
    import mlflow

    errors = convergence_errors(config.kernels[kernel].architecture, data.x_train[:points], widths,
                                networks, seed=config.data.all_seeds[0], kinds=tuple(config.kinds))
    set_experiment(config.tracking.experiment, tracking_uri(config.tracking.uri))
    with mlflow.start_run(run_name=f"{kernel} convergence") as run:
        mlflow.set_tags({"raygram.kernel": kernel, "raygram.check": "convergence", **code_version()})
        mlflow.log_params({"kernel": kernel, "widths": widths, "networks": networks, "points": points})
        for e in errors:
            mlflow.log_metric(f"convergence/{e['kind']}/error", e["error"], step=e["width"])
        figure = convergence_plot(errors, f"{config.name}: {kernel}, finite width vs analytic kernel")
        mlflow.log_figure(figure, "plots/convergence.png")
        if out:
            figure.savefig(out, dpi=100)
        plt.close(figure)
        mlflow.log_dict(errors, "convergence.json")
    return errors, run.info.run_id
