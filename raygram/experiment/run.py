"""Experiments end to end: config -> data -> one Gram store per kernel -> solves -> MLflow.

This module only orchestrates; each step lives in its stage: `raygram.data.prepare_data`
(splits and features), `raygram.kernels.architecture.check_architecture` (shape checks),
`raygram.build.build_gram` (tiles), `raygram.solve.predict` (regression),
`raygram.experiment.selection` (ridge choice), `raygram.experiment.tracking` and `plots`
(MLflow). Every check that needs no write runs first (`prepare`: config, data,
architectures, tracking; `check_stores`: each store's location, fingerprint, lease and
the Ray cluster's resources), so bad input leaves no store and no MLflow run behind.
One parent MLflow run per experiment and one nested run per (kernel, kind, training size,
seed). Re-running an interrupted experiment resumes its unfinished parent run when both
the config hash and the data hash match (the same config on other data starts a new run):
stores resume without recomputing a stored tile and finished nested runs are read back,
not redone.

Training times: `solver.times: auto` (the default) chooses them per kernel and kind from
the spectrum of the training Gram at the largest training size, so that the curves run
from the untrained prediction to convergence (`spectral_times`); every record also carries
its time in normalised units, λ_max·τ. With `data.seeds` everything above runs once per
seed (its own split and stores) and summaries report mean ± standard error.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time

import numpy as np

from raygram.build import BuildReport, build_gram
from raygram.build.scheduler import build_fingerprint, check_build, check_resources, open_store
from raygram.config import AUTO_TIMES, Config, check_allocation, input_checks
from raygram.data import Data, LinearBaseline, prepare_data
from raygram.errors import ConfigError, FingerprintMismatch, StoreError
from raygram.experiment.plots import experiment_figures
from raygram.experiment.tracking import (CONFIG_HASH_TAG, DATA_HASH_TAG, check_experiment_name, check_tracking_uri,
                                         code_version, config_hash, data_hash, find_run, finished_child_runs,
                                         log_config, log_dataset, log_records, log_summary, set_experiment,
                                         solver_metrics, tracking_uri)
from raygram.kernels.architecture import check_architecture
from raygram.solve import GramSource, one_hot_targets, predict
from raygram.store import GramStore, describe_difference

__all__ = ["prepare", "prepare_all", "check_stores", "connect_ray", "run_experiment", "build_kernel",
           "spectral_times", "solve_kernel", "AUTO_TIME_POINTS", "AUTO_FIRST", "AUTO_LAST", "AUTO_SPAN"]

# Fingerprint fields a finished store may differ in from what a config would build and still
# serve its solves: the tiling and the package versions do not change the kernel's values.
SOLVE_IGNORES = ("tile_size", "versions")
# `solver.times: auto`: this many log-spaced finite times (and inf), from λ_max·τ = AUTO_FIRST to
# (λ_min + ρ)·τ = AUTO_LAST, spanning at most AUTO_SPAN (see `spectral_times`).
AUTO_TIME_POINTS, AUTO_FIRST, AUTO_LAST, AUTO_SPAN = 10, 0.1, 10.0, 1e10
INFINITE_ONLY = ("cholesky", "cg")  # methods that compute t = inf only
SKETCH_SIZE, SKETCH_SEED = 8, 20261202  # prediction sketches (`_sketch`)
MAX_TAG_LENGTH = 5000


def prepare(config: Config, *, solve: bool = True, seed: int | None = None) -> Data:
    """Every check of the config and its data that needs no store, then one seed's data.

    Loads and splits the data and checks each kernel's architecture against the data's
    input shape; for experiments that will be solved, also refuses data without targets
    (a build-only `npy` source), checks the tracking URI (a real connection for servers)
    and the experiment name, and that the targets and predictions fit the solver's memory.

    Args:
      config: the validated config.
      solve: the experiment will be solved and tracked, not only built.
      seed: which of `config.data.all_seeds` to prepare; None: the first.

    Raises:
      ConfigError: bad input, or (TrackingUnavailable) an unreachable tracking server; raised before
        anything is written.
    """
    seed = config.data.all_seeds[0] if seed is None else seed
    _check_tracking(config, solve)
    return _prepare_seed(config, seed, solve)


def prepare_all(config: Config, *, solve: bool = True) -> dict[int, Data]:
    """`prepare` for every seed of the experiment (`data.seeds`, else `data.seed`).

    Args:
      config: the validated config.
      solve: the experiment will be solved and tracked, not only built.

    Returns:
      {seed: Data}, in the order of `config.data.all_seeds`.

    Raises:
      ConfigError: as `prepare`, for any seed, before anything is written.
    """
    _check_tracking(config, solve)
    return {seed: _prepare_seed(config, seed, solve) for seed in config.data.all_seeds}


def _check_tracking(config: Config, solve: bool) -> None:
    if solve and config.build_only:
        raise ConfigError("data.source: npy data has no targets to solve for; use `raygram build`, or a "
                          "labelled source")
    if solve:
        check_tracking_uri(tracking_uri(config.tracking.uri))
        check_experiment_name(config.tracking.experiment)


def _prepare_seed(config: Config, seed: int, solve: bool) -> Data:
    data = prepare_data(config.data.for_seed(seed))
    for name, kernel in config.kernels.items():
        check_architecture(kernel.architecture, data.x_train.shape[1:], config.kinds, config.dtype,
                           where=f"kernels.{name}.architecture")
    if solve and data.task == "classification":
        _check_targets(config, data)
    return data


def _check_targets(config: Config, data: Data) -> None:
    """The one-hot targets (n, C) and the predictions (kinds, R, T, M, C) must fit the solver's budget."""
    n, classes, m = max(config.data.train_sizes), data.classes, len(data.x_test)
    times = AUTO_TIME_POINTS + 1 if config.solver.times == AUTO_TIMES else len(config.solver.times)
    means = len(config.kinds) * len(config.solver.diag_reg) * times * m
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


def check_stores(config: Config, data: Data, *, build: bool = True, verify: bool = False,
                 seed: int | None = None) -> dict:
    """Every check of one seed's stores, before anything is written or an MLflow run exists.

    With `build`, each kernel's store passes `check_build` (location, fingerprint, lease)
    and then, if any has work to do, the Ray cluster's resources are checked (joining it
    with `connect_ray` first). Without (`raygram solve`), each store must exist, be
    complete and hold what the config would build: the same architecture, kinds, dtype
    and inputs (x_train and x_test, hence the same data, split, seed and transforms); its
    tile size and package versions may differ.

    Args:
      config: the validated config.
      data: the seed's arrays (`prepare`).
      build: the stores will be built (or resumed) first.
      verify: the builds will re-check every stored tile first (`build_gram`'s verify).
      seed: the seed `data` was prepared with; None: the first of `config.data.all_seeds`.

    Returns:
      The data the stores hold: {"x_train": {"shape", "dtype", "sha256"}, "x_test": ...}.

    Raises:
      StoreError, FingerprintMismatch, StoreLocked, ConfigError: the stores cannot be used.
    """
    seed = config.data.all_seeds[0] if seed is None else seed
    if not build:
        held = [_check_finished(config, data, kernel, seed) for kernel in config.kernels]
    else:
        checks = [check_build(config.kernel_store(kernel, seed), options.architecture, data.x_train, data.x_test,
                              kinds=config.kinds, dtype=config.dtype, tiling=config.tiling,
                              storage_options=config.storage_options or None, verify=verify, resources=False)
                  for kernel, options in config.kernels.items()]
        if any(check.work for check in checks):
            connect_ray(config)
            check_resources(config.tiling)
        held = [check.fingerprint for check in checks]
    return {key: held[-1][key] for key in ("x_train", "x_test")}


def _check_finished(config: Config, data: Data, kernel: str, seed: int) -> dict:
    """The fingerprint of a complete store that holds what the config would build."""
    gram = open_store(config.kernel_store(kernel, seed), config.storage_options or None, read_only=True)
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
                 verify: bool = False, seed: int | None = None) -> BuildReport:
    """Build (or resume) one kernel's store at `config.kernel_store(kernel, seed)`.

    Args:
      config: the validated config (kinds, dtype, tiling, storage_options).
      data: the seed's arrays.
      kernel: a name from `config.kernels`.
      progress: show the build's progress bar.
      verify: first re-check stored tiles and recompute bad ones (`build_gram`'s verify).
      seed: the seed `data` was prepared with; None: the first of `config.data.all_seeds`.
    """
    seed = config.data.all_seeds[0] if seed is None else seed
    return build_gram(config.kernel_store(kernel, seed), config.kernels[kernel].architecture, data.x_train,
                      data.x_test, kinds=config.kinds, dtype=config.dtype, tiling=config.tiling,
                      storage_options=config.storage_options or None, verify=verify, progress=progress)


def _outputs(data: Data) -> int:
    """K, the number of target columns: one-hot classes, or one regression target."""
    return data.classes if data.task == "classification" else 1


def _extreme_eigenvalues(source: GramSource, kind: str, budget: int | None) -> tuple[float, float | None]:
    """(λ_max, λ_min) of the training Gram; λ_min None when the Gram is too large to hold.

    In memory (`eigvalsh`) when N² float64 values fit `budget` (None: half the free
    memory), else λ_max alone by Lanczos (`scipy.sparse.linalg.eigsh` on `source.matmat`,
    which reads the stored tiles once per step; a Gram's top eigenvalue is well separated,
    so few steps are needed).
    """
    n = source.n
    if budget is None:
        import psutil

        budget = psutil.virtual_memory().available // 2
    if 8 * n * n <= budget:
        values = np.linalg.eigvalsh(np.asarray(source.dense(kind), np.float64))
        return float(values[-1]), float(values[0])
    from scipy.sparse.linalg import LinearOperator, eigsh

    operator = LinearOperator((n, n), matvec=lambda v: source.matmat(kind, v.reshape(n, -1)).ravel(),
                              matmat=lambda x: source.matmat(kind, x), dtype=np.float64)
    return float(eigsh(operator, k=1, which="LA", tol=1e-3, return_eigenvectors=False)[0]), None


def spectral_times(config: Config, data: Data, kernel: str, seed: int | None = None) -> dict[str, dict]:
    """Training times and the time unit of each kind, from the kernel's training Gram at the largest size.

    The normalised time of a record is `time = learning_rate · t · λ_max / (N · K)`:
    neural-tangents' gradient-flow time τ = learning_rate · t / (N · K) (N the largest
    training size, K the outputs: classes, or 1 for regression) in units of the time
    constant 1/λ_max of the Gram's top eigenmode. A mode of eigenvalue λ (plus the
    ridge's shift ρ) has converged to 1 − e^{−(λ+ρ)τ} of its infinite-time value.

    With `solver.times: auto`, AUTO_TIME_POINTS log-spaced times from λ_max·τ = AUTO_FIRST
    (every mode still near zero: the prediction is near its start) to (λ_min + ρ_min)·τ =
    AUTO_LAST (every mode converged; ρ_min the smallest ridge's shift), and t = inf; the
    span is at least one decade (a well-conditioned Gram) and at most AUTO_SPAN (a
    singular Gram without ridge). Where the Gram is too large to hold, λ_min is not
    computed and ρ_min alone bounds the last time (later than needed, never earlier).
    Methods that compute t = inf only (cholesky, cg) get t = inf alone.

    Args:
      config: the validated config (solver: times, diag_reg, learning_rate, method).
      data: the seed's arrays (for K).
      kernel: a name from `config.kernels`; its store must be complete.
      seed: the seed of the store; None: the first of `config.data.all_seeds`.

    Returns:
      {kind: {"times": tuple of t (explicit times as given), "lambda_max": λ_max,
      "unit": λ_max · learning_rate / (N · K), the factor from t to the normalised time}}.
    """
    seed = config.data.all_seeds[0] if seed is None else seed
    solver, n = config.solver, max(config.data.train_sizes)
    store = GramStore(config.kernel_store(kernel, seed), config.storage_options or None, read_only=True)
    source = GramSource.from_store(store, n_train=n)
    out = {}
    for kind in config.kinds:
        largest, smallest = _extreme_eigenvalues(source, kind, solver.memory_budget)
        unit = solver.learning_rate * largest / (n * _outputs(data))
        times = solver.times
        if times == AUTO_TIMES:
            times = (math.inf,)
            if solver.method not in INFINITE_ONLY:
                ridge = min(solver.diag_reg) * (1.0 if solver.diag_reg_absolute_scale
                                                else float(source.diagonal(kind).sum()) / n)
                floor = max(smallest or 0.0, 0.0) + ridge
                last = AUTO_LAST * largest / floor if floor > 0 else math.inf
                last = min(max(last, 10 * AUTO_FIRST), AUTO_FIRST * AUTO_SPAN)
                normalised = np.geomspace(AUTO_FIRST, last, AUTO_TIME_POINTS)
                times = tuple(float(f"{s / unit:.3g}") for s in normalised) + (math.inf,)
        out[kind] = {"times": tuple(times), "lambda_max": largest, "unit": unit}
    return out


def _sketch(prediction: np.ndarray) -> list[float]:
    """SKETCH_SIZE fixed random projections of a prediction array: equal (to round-off) for equal
    predictions, different otherwise; what plots compare to call two kernels' predictions identical."""
    flat = np.asarray(prediction, np.float64).ravel()
    projection = np.random.default_rng(SKETCH_SEED).standard_normal((SKETCH_SIZE, flat.size))
    return [float(v) for v in projection @ flat]


def solve_kernel(config: Config, data: Data, kernel: str, train_size: int, *, kind: str | None = None,
                 times: dict | None = None, seed: int | None = None) -> tuple[list[dict], dict]:
    """Scored records of one kernel at one training size (one kind, or every kind), and the solver's info.

    Args:
      config: the validated config (its `solver` options go to `predict`, with the times of
        `times`).
      data: the seed's arrays.
      kernel: a name from `config.kernels`.
      train_size: n, the prefix of the training set to solve with.
      kind: "nngp" or "ntk"; None: every kind of the config.
      times: `spectral_times(config, data, kernel, seed)`, if already computed.
      seed: the seed of `data` and of the store; None: the first of `config.data.all_seeds`.

    Returns:
      (records, info): one record per (kind, diag_reg, t): {"kernel", "train_size", "seed",
      "kind", "diag_reg", "t", "time_step" (the index of t), "time" (normalised, see
      `spectral_times`), the test metric, the validation metric when there is a
      validation split, "baseline_mae" (regression), "prediction_sketch" (`_sketch` of the
      test predictions)}, and `Prediction.info` per kind.
    """
    seed = config.data.all_seeds[0] if seed is None else seed
    times = spectral_times(config, data, kernel, seed) if times is None else times
    store = GramStore(config.kernel_store(kernel, seed), config.storage_options or None, read_only=True)
    source = GramSource.from_store(store, n_train=train_size)
    if data.task == "classification":
        targets = one_hot_targets(data.labels_train[:train_size], data.classes)
        truth, extra = data.labels_test, {}
    else:
        baseline = LinearBaseline().fit(data.molecules_train[:train_size])  # training molecules only
        targets = baseline.residuals_kcal(data.molecules_train[:train_size])
        truth = baseline.residuals_kcal(data.molecules_test)  # MAE of residuals = MAE of U0 (kcal/mol)
        extra = {"baseline_mae": float(np.abs(truth[data.validation:]).mean())}
    v, records, info = data.validation, [], {}
    for one in (config.kinds if kind is None else (kind,)):
        solver = dataclasses.replace(config.solver, times=times[one]["times"])
        out = predict(source, targets, solver, kinds=(one,))
        info[one] = out.info
        test = dataclasses.replace(out, mean={k: m[:, :, v:] for k, m in out.mean.items()})
        scored = test.evaluate(truth[v:], task=data.task)
        for r, record in enumerate(scored):  # in the order kind, ridge, time
            ridge, step = divmod(r, len(out.times))
            record.update({"time_step": step, "time": record["t"] * times[one]["unit"],
                           "prediction_sketch": _sketch(test.mean[one][ridge, step])})
        if v:
            validation = dataclasses.replace(out, mean={k: m[:, :, :v] for k, m in out.mean.items()})
            for record, checked in zip(scored, validation.evaluate(truth[:v], task=data.task)):
                record.update({f"validation_{k}": checked[k] for k in ("accuracy", "mae", "rmse") if k in checked})
        records += [{"kernel": kernel, "train_size": train_size, "seed": seed, **r, **extra} for r in scored]
    return records, info


def _data_tag(described: dict, data_digest: str) -> str:
    """The `raygram.data` tag: what the stores hold (the one seed's description, or one per seed), as JSON.

    Args:
      described: {seed: {data name, digests and shapes of x_train/x_test, ...}}.
      data_digest: the hash of `described`, the tag's stand-in where the JSON would be
        longer than an MLflow tag may be (never cut into invalid JSON).
    """
    text = json.dumps(next(iter(described.values())) if len(described) == 1 else described)
    return text if len(text) <= MAX_TAG_LENGTH else json.dumps({"data_hash": data_digest})


def _as_seeds(config: Config, data) -> dict[int, Data]:
    """{seed: Data} from run_experiment's `data` argument."""
    if data is None:
        return prepare_all(config)
    if isinstance(data, Data):
        if len(config.data.all_seeds) != 1:
            raise ConfigError(f"data: one Data for {len(config.data.all_seeds)} seeds; pass {{seed: Data}}")
        return {config.data.all_seeds[0]: data}
    if sorted(data) != sorted(config.data.all_seeds):
        raise ConfigError(f"data: seeds {sorted(data)} given, the config runs {list(config.data.all_seeds)}")
    return dict(data)


# Keys of a record that are not logged as metrics of its nested run: the run's own params, the
# times (their own metrics, by step) and the sketch (a list).
_NOT_METRICS = ("kernel", "train_size", "seed", "t", "time", "prediction_sketch")


def _log_child(records: list[dict], info: dict, task: str) -> None:
    """Params and metrics of one nested run (kernel, kind, train_size, seed), for MLflow's own charts.

    Every record as metrics named by kind and ridge with step = the time's index
    (`accuracy/ntk/diag_reg_0.001` at steps 0..T-1); the normalised time at each finite
    step (`time`, and neural-tangents' `t`); the test metric at the chosen ridge and time
    under the plain metric name (`accuracy`, with `validation_accuracy`), and at the
    chosen ridge against the time's index (`accuracy_vs_time`); params: kernel, kind,
    train_size, seed and the choice.

    Args:
      records: the scored records of the run (`solve_kernel`, one kind).
      info: the solver's info of that kind (`Prediction.info`).
      task: "classification" or "regression".
    """
    import mlflow

    from raygram.experiment.selection import METRIC, SELECTED_BY, selected, selection_split

    name = METRIC[task][0]
    log_records([{k: v for k, v in r.items() if k not in _NOT_METRICS} for r in records], step_key="time_step")
    chosen = selected(records, task)[0]
    split = selection_split(records, task)
    mlflow.log_params({"selected_by": SELECTED_BY[split], "diag_reg": chosen["diag_reg"], "t": chosen["t"],
                       "time": f"{chosen['time']:.4g}"})
    metrics = {name: chosen[name]}
    if split == "validation":
        metrics[f"validation_{name}"] = chosen[f"validation_{name}"]
    if "baseline_mae" in chosen:
        metrics["baseline_mae"] = chosen["baseline_mae"]
    mlflow.log_metrics(metrics)
    for r in records:
        if r["diag_reg"] == chosen["diag_reg"]:
            mlflow.log_metric(f"{name}_vs_time", r[name], step=r["time_step"])
            if math.isfinite(r["time"]):
                mlflow.log_metrics({"time": r["time"], "t": r["t"]}, step=r["time_step"])
    mlflow.log_metrics(solver_metrics(info))


def _log_curves(records: list[dict], task: str) -> None:
    """The parent run's learning curves: `accuracy/<kernel>/<kind>` with step = training size, at the
    chosen ridge and time (mean over seeds; `accuracy_se/...`, the standard error, with several seeds)."""
    import mlflow

    from raygram.experiment.selection import METRIC, summary_rows

    name = METRIC[task][0]
    rows, _ = summary_rows(records, task)
    for row in rows:
        if row["kind"] == "-":
            mlflow.log_metric("baseline_mae", row["mean"], step=row["train_size"])
            continue
        mlflow.log_metric(f"{name}/{row['kernel']}/{row['kind']}", row["mean"], step=row["train_size"])
        if math.isfinite(row["error"]):
            mlflow.log_metric(f"{name}_se/{row['kernel']}/{row['kind']}", row["error"], step=row["train_size"])


def run_experiment(config: Config, data: Data | dict[int, Data] | None = None, *, build: bool = True,
                   progress: bool = True) -> dict:
    """Build (unless `build=False`: the stores must be complete), solve and track an experiment.

    One parent MLflow run; one nested run per (kernel, kind, training size, seed) with the
    params and metrics MLflow's run-comparison charts need (`_log_child`); the parent
    holds the learning curves (`_log_curves`), the data as MLflow inputs, the results
    table (results.md, results.html), every record (records.json) and the plots.

    Args:
      config: the validated config (`raygram.load_config`).
      data: the experiment's arrays: a `Data` (one seed) or {seed: Data}; default
        `prepare_all(config)` (which also checks the tracking URI, the experiment name,
        the architectures and the targets' memory).
      build: build or resume every kernel's store first.
      progress: show the builds' progress bars.

    Returns:
      {"run_id": the parent MLflow run, "records": every scored record,
      "reports": {(kernel, seed): BuildReport}, "task": "classification" | "regression",
      "selected_by": "validation" | "test — optimistic"}.

    Raises:
      ConfigError, StoreError, FingerprintMismatch, StoreLocked: bad input (`prepare`,
        `check_stores`), before any store is written or any MLflow run is created.
      BuildError, SolveError, MemoryBudgetExceeded: a failure while running.
    """
    import warnings

    import matplotlib.pyplot as plt
    import mlflow

    from raygram.experiment.selection import SELECTED_BY, OptimisticSelection, selection_split

    with input_checks():  # nothing is written (no store, no MLflow run) before these pass
        seeds = _as_seeds(config, data)
        held = {seed: check_stores(config, seeds[seed], build=build, seed=seed) for seed in seeds}
        if config.solver.scheduler == "ray":
            connect_ray(config)
    first = next(iter(seeds.values()))
    uri = tracking_uri(config.tracking.uri)
    experiment = set_experiment(config.tracking.experiment, uri)
    plain = config.public_dict()  # credentials redacted
    digest = config_hash(plain)
    described = {str(seed): {**seeds[seed].fingerprint, **held[seed]} for seed in seeds}
    data_digest = data_hash(described)
    resumed = find_run(experiment.name, {CONFIG_HASH_TAG: digest, DATA_HASH_TAG: data_digest}, unfinished_only=True)
    client = mlflow.MlflowClient()
    with mlflow.start_run(run_id=resumed, run_name=None if resumed else config.name) as parent:
        if resumed is None:
            log_config(plain)
            mlflow.set_tags({CONFIG_HASH_TAG: digest, DATA_HASH_TAG: data_digest, "raygram.store": plain["store"],
                             **code_version(), "raygram.task": first.task,
                             "raygram.data": _data_tag(described, data_digest)})
            if first.task == "classification":
                mlflow.log_param("classes", first.classes)
            for seed, one in seeds.items():
                _log_inputs(config, one, seed, held[seed])
        mlflow.set_tag("raygram.resumed", str(resumed is not None).lower())
        started = time.perf_counter()
        done = finished_child_runs(client, experiment.experiment_id, parent.info.run_id)
        records, reports = [], {}
        for seed, one in seeds.items():
            for kernel in config.kernels:
                if build:
                    report = reports[(kernel, seed)] = build_kernel(config, one, kernel, progress=progress, seed=seed)
                    prefix = f"build/{kernel}" + (f"/seed{seed}" if config.data.seeds is not None else "")
                    mlflow.log_metrics({f"{prefix}/{k}": float(v) for k, v in report.metrics().items()
                                        if isinstance(v, (int, float)) and math.isfinite(v)})
                times = None
                for kind in config.kinds:
                    for size in sorted(config.data.train_sizes):
                        key = (kernel, kind, size, seed)
                        if key in done:
                            records += mlflow.artifacts.load_dict(done[key].info.artifact_uri + "/records.json")
                            continue
                        times = spectral_times(config, one, kernel, seed) if times is None else times
                        suffix = f" seed={seed}" if config.data.seeds is not None else ""
                        with mlflow.start_run(run_name=f"{kernel} {kind} n={size}{suffix}", nested=True):
                            mlflow.set_tags({"raygram.kernel": kernel, "raygram.kind": kind,
                                             "raygram.train_size": str(size), "raygram.seed": str(seed)})
                            mlflow.log_params({"kernel": kernel, "kind": kind, "train_size": size, "seed": seed})
                            solved, info = solve_kernel(config, one, kernel, size, kind=kind, times=times, seed=seed)
                            _log_child(solved, info[kind], one.task)
                            mlflow.log_dict(solved, "records.json")
                            records += solved
        split = selection_split(records, first.task)
        if split == "test":
            warnings.warn("no validation split (data.validation_size: 0): the ridge and time are chosen on the "
                          "test set, so the reported test metric is optimistic", OptimisticSelection, stacklevel=2)
        mlflow.log_dict(records, "records.json")
        log_summary(records, first.task)
        _log_curves(records, first.task)
        chance = 1.0 / first.classes if first.task == "classification" else None
        for name, figure in experiment_figures(config.name, records, first.task, chance=chance).items():
            mlflow.log_figure(figure, name)
            plt.close(figure)
        mlflow.log_metric("experiment_seconds", time.perf_counter() - started)
        return {"run_id": parent.info.run_id, "records": records, "reports": reports, "task": first.task,
                "selected_by": SELECTED_BY[split]}


def _log_inputs(config: Config, data: Data, seed: int, held: dict) -> None:
    """The seed's training and held-out inputs as MLflow inputs (name, digest, source, shape)."""
    name = str(data.fingerprint.get("name", config.data.source))
    tags = {"seed": str(seed), "source": config.data.source}
    labels = data.task == "classification"
    log_dataset(data.x_train, data.labels_train if labels else None, name=name,
                digest=held["x_train"]["sha256"][:16], source=config.data.path, context="training", tags=tags)
    log_dataset(data.x_test, data.labels_test if labels else None, name=name,
                digest=held["x_test"]["sha256"][:16], source=config.data.path,
                context="validation+test" if data.validation else "test", tags=tags)
