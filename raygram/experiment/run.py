"""Experiments end to end: config -> data -> one Gram store per kernel -> solves -> MLflow.

This module only orchestrates; each step lives in its stage: `raygram.data.prepare_data`
(splits and features), `raygram.kernels.architecture.check_architecture` (shape checks),
`raygram.build.build_gram` (tiles), `raygram.solve.predict` (regression),
`raygram.experiment.selection` (ridge choice), `raygram.experiment.tracking` and `plots`
(MLflow). Every check that needs no write runs first (`prepare`: config, data,
architectures, tracking; `check_stores`: each store's location, fingerprint, lease and
the Ray cluster's resources), so bad input leaves no store and no MLflow run behind.
One parent MLflow run per experiment and one nested run per (kernel,
training size). Re-running an interrupted experiment resumes its unfinished parent run
(same config hash): stores resume without recomputing a stored tile and finished nested
runs are read back, not redone.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time

import numpy as np

from raygram.build import BuildReport, build_gram
from raygram.build.scheduler import build_fingerprint, check_build, check_resources, open_store
from raygram.config import Config, check_allocation, input_checks
from raygram.data import Data, LinearBaseline, prepare_data
from raygram.errors import ConfigError, FingerprintMismatch, StoreError
from raygram.experiment.plots import experiment_figures
from raygram.experiment.tracking import (CONFIG_HASH_TAG, check_experiment_name, check_tracking_uri, code_version,
                                         config_hash, find_run, finished_child_runs, log_config, log_records,
                                         set_experiment, solver_metrics, tracking_uri)
from raygram.kernels.architecture import check_architecture
from raygram.solve import GramSource, one_hot_targets, predict
from raygram.store import GramStore, describe_difference

__all__ = ["prepare", "check_stores", "connect_ray", "run_experiment", "build_kernel",
           "solve_kernel"]

# Fingerprint fields a finished store may differ in from what a config would build and still
# serve its solves: the tiling and the package versions do not change the kernel's values.
SOLVE_IGNORES = ("tile_size", "versions")


def prepare(config: Config, *, solve: bool = True) -> Data:
    """Every check of the config and its data that needs no store, then the experiment's data.

    Loads and splits the data and checks each kernel's architecture against the data's
    input shape; for experiments that will be solved, also refuses data without targets
    (a build-only `npy` source), checks the tracking URI (a real connection for servers)
    and the experiment name, and that the targets and predictions fit the solver's memory.

    Args:
      config: the validated config.
      solve: the experiment will be solved and tracked, not only built.

    Raises:
      ConfigError: bad input, or (TrackingUnavailable) an unreachable tracking server; raised before
        anything is written.
    """
    if solve and config.build_only:
        raise ConfigError("data.source: npy data has no targets to solve for; use `raygram build`, or a "
                          "labelled source")
    if solve:
        check_tracking_uri(tracking_uri(config.tracking.uri))
        check_experiment_name(config.tracking.experiment)
    data = prepare_data(config.data)
    for name, kernel in config.kernels.items():
        check_architecture(kernel.architecture, data.x_train.shape[1:], config.kinds, config.dtype,
                           where=f"kernels.{name}.architecture")
    if solve and data.task == "classification":
        _check_targets(config, data)
    return data


def _check_targets(config: Config, data: Data) -> None:
    """The one-hot targets (n, C) and the predictions (kinds, R, T, M, C) must fit the solver's budget."""
    n, classes, m = max(config.data.train_sizes), data.classes, len(data.x_test)
    means = len(config.kinds) * len(config.solver.diag_reg) * len(config.solver.times) * m
    check_allocation(8 * classes * (n + means), f"{classes} classes: targets ({n}, {classes}) and predictions "
                     f"({means}, {classes})", "data (labels)", budget=config.solver.memory_budget)


def connect_ray(config: Config) -> None:
    """Join `config.ray.address` (else RAY_ADDRESS, else a local instance) unless Ray is initialised.

    Quietly: no "Started a local Ray instance" line and no warning about forking a process
    that runs JAX threads (Ray forks only to exec its own processes).

    Args:
      config: the validated config (its `ray.address`).
    """
    import logging
    import warnings

    import ray

    if not ray.is_initialized():
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called", category=RuntimeWarning)
            ray.init(address=config.ray.address, log_to_driver=False, include_dashboard=False,
                     logging_level=logging.WARNING)


def check_stores(config: Config, data: Data, *, build: bool = True, verify: bool = False) -> dict:
    """Every check of the experiment's stores, before anything is written or an MLflow run exists.

    With `build`, each kernel's store passes `check_build` (location, fingerprint, lease)
    and then, if any has work to do, the Ray cluster's resources are checked (joining it
    with `connect_ray` first). Without (`raygram solve`), each store must exist, be
    complete and hold what the config would build: the same architecture, kinds, dtype
    and inputs (x_train and x_test, hence the same data, split, seed and transforms); its
    tile size and package versions may differ.

    Args:
      config: the validated config.
      data: the experiment's arrays (`prepare`).
      build: the stores will be built (or resumed) first.
      verify: the builds will re-check every stored tile first (`build_gram`'s verify).

    Returns:
      The data the stores hold: {"x_train": {"shape", "dtype", "sha256"}, "x_test": ...}.

    Raises:
      StoreError, FingerprintMismatch, StoreLocked, ConfigError: the stores cannot be used.
    """
    if not build:
        held = [_check_finished(config, data, kernel) for kernel in config.kernels]
    else:
        checks = [check_build(config.kernel_store(kernel), options.architecture, data.x_train, data.x_test,
                              kinds=config.kinds, dtype=config.dtype, tiling=config.tiling,
                              storage_options=config.storage_options or None, verify=verify, resources=False)
                  for kernel, options in config.kernels.items()]
        if any(check.work for check in checks):
            connect_ray(config)
            check_resources(config.tiling)
        held = [check.fingerprint for check in checks]
    return {key: held[-1][key] for key in ("x_train", "x_test")}


def _check_finished(config: Config, data: Data, kernel: str) -> dict:
    """The fingerprint of a complete store that holds what the config would build."""
    gram = open_store(config.kernel_store(kernel), config.storage_options or None, read_only=True)
    if not gram.exists():
        raise StoreError(f"no Gram store at {gram.url}: build it first (raygram build / raygram run)")
    wanted = build_fingerprint(config.kernels[kernel].architecture, data.x_train, data.x_test,
                               kinds=config.kinds, dtype=config.dtype)
    stored = gram.fingerprint
    compared = [{k: v for k, v in f.items() if k not in SOLVE_IGNORES} for f in (stored, wanted)]
    if compared[0] != compared[1]:
        inputs = any(compared[0].get(k) != compared[1].get(k) for k in ("x_train", "x_test"))
        raise FingerprintMismatch(
            f"the store at {gram.url} was built for other settings than this config's; refusing to solve from it.\n"
            f"{describe_difference(*compared)}" + ("\n(the inputs differ: other data, split, seed, transform or "
                                                   "standardisation)" if inputs else ""))
    status = gram.status()
    if not status["complete"]:
        raise StoreError(f"the store at {gram.url} is incomplete ({status['tiles_done']}/{status['tiles_total']} "
                         "tiles); finish it first (raygram build)")
    return stored


def build_kernel(config: Config, data: Data, kernel: str, *, progress: bool = True,
                 verify: bool = False) -> BuildReport:
    """Build (or resume) one kernel's store at <store>/<kernel>.

    Args:
      config: the validated config (kinds, dtype, tiling, storage_options).
      data: the experiment's arrays.
      kernel: a name from `config.kernels`.
      progress: show the build's progress bar.
      verify: first re-check stored tiles and recompute bad ones (`build_gram`'s verify).
    """
    return build_gram(config.kernel_store(kernel), config.kernels[kernel].architecture, data.x_train,
                      data.x_test, kinds=config.kinds, dtype=config.dtype, tiling=config.tiling,
                      storage_options=config.storage_options or None, verify=verify, progress=progress)


def solve_kernel(config: Config, data: Data, kernel: str, train_size: int) -> tuple[list[dict], dict]:
    """Scored records of one kernel at one training size, and the solver's info.

    Args:
      config: the validated config (its `solver` options go to `predict` as they are).
      data: the experiment's arrays.
      kernel: a name from `config.kernels`.
      train_size: n, the prefix of the training set to solve with.

    Returns:
      (records, info): one record per (kind, diag_reg, t) with the test metric (and the
      validation metric when there is a validation split), and `Prediction.info`.
    """
    store = GramStore(config.kernel_store(kernel), config.storage_options or None, read_only=True)
    source = GramSource.from_store(store, n_train=train_size)
    if data.task == "classification":
        targets = one_hot_targets(data.labels_train[:train_size], data.classes)
        truth, extra = data.labels_test, {}
    else:
        baseline = LinearBaseline().fit(data.molecules_train[:train_size])  # training molecules only
        targets = baseline.residuals_kcal(data.molecules_train[:train_size])
        truth = baseline.residuals_kcal(data.molecules_test)  # MAE of residuals = MAE of U0 (kcal/mol)
        extra = {"baseline_mae": float(np.abs(truth[data.validation:]).mean())}
    out = predict(source, targets, config.solver, kinds=config.kinds)
    v = data.validation
    test = dataclasses.replace(out, mean={k: m[:, :, v:] for k, m in out.mean.items()})
    records = [{"kernel": kernel, "train_size": train_size, **r, **extra}
               for r in test.evaluate(truth[v:], task=data.task)]
    if v:
        validation = dataclasses.replace(out, mean={k: m[:, :, :v] for k, m in out.mean.items()})
        for record, checked in zip(records, validation.evaluate(truth[:v], task=data.task)):
            record.update({f"validation_{k}": checked[k] for k in ("accuracy", "mae", "rmse") if k in checked})
    return records, out.info


def run_experiment(config: Config, data: Data | None = None, *, build: bool = True,
                   progress: bool = True) -> dict:
    """Build (unless `build=False`: the stores must be complete), solve and track an experiment.

    Args:
      config: the validated config (`raygram.load_config`).
      data: the experiment's arrays; default `prepare(config)` (which also checks the
        tracking URI, the experiment name, the architectures and the targets' memory).
      build: build or resume every kernel's store first.
      progress: show the builds' progress bars.

    Returns:
      {"run_id": the parent MLflow run, "records": every scored record,
      "reports": {kernel: BuildReport}, "task": "classification" | "regression"}.

    Raises:
      ConfigError, StoreError, FingerprintMismatch, StoreLocked: bad input (`prepare`,
        `check_stores`), before any store is written or any MLflow run is created.
      BuildError, SolveError, MemoryBudgetExceeded: a failure while running.
    """
    import matplotlib.pyplot as plt
    import mlflow

    with input_checks():  # nothing is written (no store, no MLflow run) before these pass
        data = prepare(config) if data is None else data
        held = check_stores(config, data, build=build)
        if config.solver.scheduler == "ray":
            connect_ray(config)
    uri = tracking_uri(config.tracking.uri)
    experiment = set_experiment(config.tracking.experiment, uri)
    plain = config.public_dict()  # credentials redacted
    digest = config_hash(plain)
    resumed = find_run(experiment.name, {CONFIG_HASH_TAG: digest}, unfinished_only=True)
    client = mlflow.MlflowClient()
    with mlflow.start_run(run_id=resumed, run_name=None if resumed else config.name) as parent:
        if resumed is None:
            log_config(plain)
            mlflow.set_tags({CONFIG_HASH_TAG: digest, "raygram.store": plain["store"], **code_version(),
                             "raygram.data": json.dumps({**data.fingerprint, **held})})
        mlflow.set_tag("raygram.resumed", str(resumed is not None).lower())
        started = time.perf_counter()
        done = finished_child_runs(client, experiment.experiment_id, parent.info.run_id)
        records, reports = [], {}
        for kernel in config.kernels:
            if build:
                reports[kernel] = build_kernel(config, data, kernel, progress=progress)
                mlflow.log_metrics({f"build/{kernel}/{k}": float(v) for k, v in reports[kernel].metrics().items()
                                    if isinstance(v, (int, float)) and math.isfinite(v)})
            for size in sorted(config.data.train_sizes):
                if (kernel, size) in done:
                    records += mlflow.artifacts.load_dict(done[(kernel, size)].info.artifact_uri + "/records.json")
                    continue
                with mlflow.start_run(run_name=f"{kernel} n={size}", nested=True):
                    mlflow.set_tags({"raygram.kernel": kernel, "raygram.train_size": str(size)})
                    mlflow.log_params({"kernel": kernel, "train_size": size})
                    solved, info = solve_kernel(config, data, kernel, size)
                    log_records([{k: v for k, v in r.items() if k not in ("kernel", "train_size")}
                                 for r in solved])
                    mlflow.log_metrics(solver_metrics(info))
                    mlflow.log_dict(solved, "records.json")
                    records += solved
        mlflow.log_dict(records, "records.json")
        for name, figure in experiment_figures(config.name, records, data.task).items():
            mlflow.log_figure(figure, name)
            plt.close(figure)
        mlflow.log_metric("experiment_seconds", time.perf_counter() - started)
        return {"run_id": parent.info.run_id, "records": records, "reports": reports, "task": data.task}
