"""`raygram report [RUN_ID]`: an experiment's results table, read back from the tracking server.

The table is the one `raygram run` prints and logs as results.md / results.html: the
test metric per kernel, kind and training size at the ridge and time chosen on the
validation split (or on the test split, marked optimistic), mean ± standard error over
seeds. It is rebuilt from the run's records.json artifact, so runs logged before the
table artifact existed are reported too. Without a RUN_ID, the latest finished parent run
of the experiment (--experiment, else the config's tracking.experiment; neither: of any
experiment at the tracking URI) is reported.
Reading creates nothing: a SQLite tracking file that does not exist is bad input, not a
new empty database.
"""
from __future__ import annotations

import argparse
import os

from raygram.errors import ConfigError


def report_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `report`.

    Args:
      parser: the command's sub-parser.
    """
    parser.add_argument("run_id", nargs="?", metavar="RUN_ID",
                        help="the parent MLflow run of an experiment (default: the experiment's latest finished one)")
    parser.add_argument("--config", help="config YAML whose tracking.uri and tracking.experiment to use")
    parser.add_argument("--tracking-uri", help="tracking URI (default: the config's, else MLFLOW_TRACKING_URI, "
                                               "else ./mlflow.db)")
    parser.add_argument("--experiment", help="MLflow experiment (default: the config's tracking.experiment, "
                                             "else any)")
    parser.add_argument("--format", choices=("text", "markdown", "html"), default="text", help="table format")


def _uri(args, config) -> str:
    """The tracking URI to read, checked without creating anything."""
    from raygram.experiment.tracking import check_tracking_uri, sqlite_file, tracking_uri

    uri = tracking_uri(args.tracking_uri or (config.tracking.uri if config is not None else None))
    if uri.lower().startswith("sqlite"):
        path = sqlite_file(uri)
        if path is None or not os.path.isfile(path):
            raise ConfigError(f"tracking URI {uri!r}: no MLflow database there (give --tracking-uri, or run "
                              "`raygram report` where `raygram run` wrote mlflow.db)")
    check_tracking_uri(uri)
    return uri


def _latest(client, experiment_name: str | None):
    """The newest finished top-level run that `raygram run` logged, in the named experiment (None: in any)."""
    from mlflow.entities import ViewType

    from raygram.experiment.tracking import CONFIG_HASH_TAG

    if experiment_name is None:
        ids = [e.experiment_id for e in client.search_experiments()]
    else:
        experiment = client.get_experiment_by_name(experiment_name)
        if experiment is None:
            raise ConfigError(f"--experiment: no MLflow experiment {experiment_name!r} at this tracking URI")
        ids = [experiment.experiment_id]
    runs = client.search_runs(ids, "attributes.status = 'FINISHED'", run_view_type=ViewType.ACTIVE_ONLY,
                              max_results=1000, order_by=["attributes.start_time DESC"]) if ids else []
    for run in runs:
        if "mlflow.parentRunId" not in run.data.tags and CONFIG_HASH_TAG in run.data.tags:
            return run
    where = f"experiment {experiment_name!r}" if experiment_name else "this tracking URI"
    raise ConfigError(f"{where} has no finished experiment run to report")


def report(args) -> int:
    """`raygram report`: print an experiment run's results table (see the module docstring).

    Args:
      args: the parsed arguments (`report_arguments`).

    Returns:
      0; a bad run id, experiment or tracking URI raises ConfigError (one line, exit 2).
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    from raygram.config import input_checks, load_config
    from raygram.experiment.selection import summary_table

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # stdout/stderr: the table only
    config = None
    if args.config:
        with input_checks():
            config = load_config(args.config)
    uri = _uri(args, config)
    client = mlflow.MlflowClient(uri)
    if args.run_id:
        try:
            run = client.get_run(args.run_id)
        except MlflowException:
            raise ConfigError(f"RUN_ID: no MLflow run {args.run_id!r} at {uri}") from None
        if "mlflow.parentRunId" in run.data.tags:
            raise ConfigError(f"RUN_ID: {args.run_id} is a nested run; report its parent "
                              f"{run.data.tags['mlflow.parentRunId']}")
    else:
        run = _latest(client, args.experiment or (config.tracking.experiment if config is not None else None))
    try:
        records = mlflow.artifacts.load_dict(run.info.artifact_uri.rstrip("/") + "/records.json")
    except (MlflowException, OSError, ValueError):
        raise ConfigError(f"RUN_ID: run {run.info.run_id} has no records.json: not an experiment run of "
                          "`raygram run`") from None
    if not records:
        raise ConfigError(f"run {run.info.run_id} holds no results")
    task = run.data.tags.get("raygram.task") or ("classification" if "accuracy" in records[0] else "regression")
    experiment = client.get_experiment(run.info.experiment_id).name
    print(f"run {run.info.run_id} ({run.info.run_name}, experiment {experiment}, {run.info.status.lower()})")
    print(summary_table(records, task, args.format), end="" if args.format != "text" else "\n")
    return 0
