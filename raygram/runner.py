"""Experiments end to end: data -> one Gram store per kernel (Ray) -> predictions (dask) -> MLflow.

`run_experiment(config)` takes a resolved config (`raygram.experiment.load`) and:
1. loads the data set, draws the held-out set (validation, then test) and the largest
   training set (smaller training sizes are prefixes of it, so one Gram per kernel serves
   them all); images are standardised with training statistics and the test-time group
   transform applied; QM9 molecules become padded per-atom signals on the sphere;
2. per kernel, builds (or resumes) its Gram store at <store>/<kernel>, then solves at
   every training size, ridge and time and scores the held-out set (accuracy of one-hot
   classification; MAE in kcal/mol of U0 minus the training set's per-element fit);
3. records one MLflow run per experiment with a nested run per (kernel, training size).

Re-running an interrupted experiment continues its unfinished MLflow run (same config
hash): stores resume without recomputing tiles, nested runs that finished are kept (their
records are read back), the others are redone; a finished experiment run again gets a
new run. Everything is logged from the driver.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time

import numpy as np

CONFIG_HASH_TAG = "raygram.config_hash"


@dataclasses.dataclass
class Data:
    """Arrays of one experiment. x_train (n_max, ...) and x_test (V + M, ...): the first
    `validation` rows of x_test are the validation split (ridges are chosen on it), the rest
    the test set. Classification: integer labels; regression (QM9): the molecules, whose
    targets depend on the training size through the per-element baseline."""

    x_train: np.ndarray
    x_test: np.ndarray
    fingerprint: dict
    task: str = "classification"
    validation: int = 0
    labels_train: np.ndarray | None = None
    labels_test: np.ndarray | None = None
    classes: int | None = None
    molecules_train: list | None = None
    molecules_test: list | None = None


def code_version() -> dict[str, str]:
    """raygram's package version and, from a git checkout, its commit."""
    import importlib.metadata
    import subprocess
    from pathlib import Path

    tags = {"raygram.version": importlib.metadata.version("raygram")}
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                                text=True, timeout=10)
        if commit.returncode == 0:
            tags["raygram.git_commit"] = commit.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return tags


def config_hash(config: dict) -> str:
    """SHA-256 of what determines an experiment's results (tracking settings excluded)."""
    relevant = {k: v for k, v in config.items() if k not in ("tracking", "ray")}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()[:16]


def kernel_store(config: dict, kernel: str) -> str:
    return config["store"].rstrip("/") + "/" + kernel


QM9_OPTIONS = {"bandwidth": 6, "powers": [2, 6], "beta": 0.5, "molecules": None,
               "elements": ["H", "C", "N", "O", "F"]}


def _too_many(spec: dict, available: int, name: str):
    from .config import ConfigError

    return ConfigError(f"data.train_sizes: the largest training size {max(spec['train_sizes'])} plus "
                       f"validation_size {spec['validation_size']} and test_size {spec['test_size']} "
                       f"exceeds the {available} examples of {name}")


def prepare_data(config: dict) -> Data:
    """The experiment's training, validation and test arrays (see the module docstring)."""
    from .data import split

    spec = config["data"]
    if spec["source"] == "qm9":
        return _prepare_molecules(spec)
    from .data import load_images, random_group_actions, standardize

    dataset = load_images(spec["source"], spec["path"], **spec["options"])
    n_max, held = max(spec["train_sizes"]), spec["validation_size"] + spec["test_size"]
    if n_max + held > len(dataset.labels):
        raise _too_many(spec, len(dataset.labels), dataset.name)
    train, test = split(len(dataset.labels), n_max, held, spec["seed"], labels=dataset.labels)
    test = np.random.default_rng(spec["seed"] + 2).permutation(test)  # validation: a random part of it
    x_train, x_test = dataset.x[train], dataset.x[test]
    if spec["standardize"]:
        x_train, x_test = standardize(x_train, x_test)
    if spec["test_transform"]:
        x_test = random_group_actions(x_test, spec["test_transform"], spec["seed"] + 1)
    return Data(x_train, x_test, dataset.fingerprint(), "classification", spec["validation_size"],
                dataset.labels[train], dataset.labels[test], dataset.classes)


def _prepare_molecules(spec: dict) -> Data:
    """QM9 molecules as padded per-atom signals on the sphere (N, atoms, 2L, 2L, channels + mask)."""
    from .config import ConfigError
    from .data import atom_signals, load_qm9, split
    from .kernels.atoms import pad_molecules

    unknown = sorted(set(spec["options"]) - set(QM9_OPTIONS))
    if unknown:
        raise ConfigError(f"data.options: unknown key(s) {unknown} for source qm9; allowed: {sorted(QM9_OPTIONS)}")
    if spec["path"] is not None or spec["test_transform"] is not None:
        raise ConfigError("data: source qm9 reads the qm9pack wheel; path and test_transform must be null")
    options = {**QM9_OPTIONS, **spec["options"]}
    elements = set(options["elements"])
    molecules = [m for m in load_qm9(limit=options["molecules"]) if set(m.elements) <= elements]
    n_max, held = max(spec["train_sizes"]), spec["validation_size"] + spec["test_size"]
    if n_max + held > len(molecules):
        raise _too_many(spec, len(molecules), "qm9")
    train, test = split(len(molecules), n_max, held, spec["seed"])
    test = np.random.default_rng(spec["seed"] + 2).permutation(test)
    chosen = [molecules[i] for i in train] + [molecules[i] for i in test]
    smallest = set().union(*(m.elements for m in chosen[:min(spec["train_sizes"])]))
    unseen = set().union(*(m.elements for m in chosen[n_max:])) - smallest
    if unseen:
        raise ConfigError(f"data.train_sizes: the smallest training set ({min(spec['train_sizes'])} molecules) "
                          f"has no {sorted(unseen)} but the held-out molecules do, so the per-element baseline "
                          f"cannot price them; use larger training sizes, another seed, or "
                          f"data.options.elements without {sorted(unseen)}")
    try:
        signals = [atom_signals(m, bandwidth=options["bandwidth"], powers=options["powers"], beta=options["beta"],
                                elements=tuple(options["elements"])) for m in chosen]
    except (TypeError, ValueError) as e:
        raise ConfigError(f"data.options: {e}") from None
    x = pad_molecules(signals)
    indices = [m.index for m in chosen]
    fingerprint = {"name": "qm9", "shape": list(x.shape), "options": options,
                   "sha256": hashlib.sha256(np.asarray(indices, np.int64).tobytes()).hexdigest()}
    return Data(x[:n_max], x[n_max:], fingerprint, "regression", spec["validation_size"],
                molecules_train=chosen[:n_max], molecules_test=chosen[n_max:])


def check_architectures(config: dict, data: Data) -> None:
    """Each kernel's architecture accepts the data's image shape (shape inference only, no compute).

    Catches unknown layers, bad arguments and layer orders that do not compose (e.g. a
    GroupConv before its LiftingConv, a Dense on unflattened images) before anything is written.
    """
    import jax

    from .architecture import network

    probe = jax.ShapeDtypeStruct((2,) + data.x_train.shape[1:], np.dtype(config["dtype"]))
    for name, kernel in config["kernels"].items():
        where = f"kernels.{name}.architecture"
        try:
            kernel_fn = network(kernel["architecture"])[2]
            shapes = jax.eval_shape(lambda x, f=kernel_fn: f(x, None, tuple(config["kinds"])), probe)
        except Exception as e:  # noqa: BLE001 - any failure of shape inference is a config error here
            from .config import ConfigError

            raise ConfigError(f"{where}: does not accept images of shape {data.x_train.shape[1:]}: "
                              f"{type(e).__name__}: {e}") from None
        for kind, shape in zip(config["kinds"], shapes):
            if shape.shape != (2, 2):
                from .config import ConfigError

                raise ConfigError(f"{where}: the network must end in one output per image (e.g. a final "
                                  f"Dense after pooling); its {kind} kernel has shape {shape.shape} for 2 images")


def build_kernel(config: dict, data: Data, kernel: str, progress: bool = True):
    """Build (or resume) one kernel's store at <store>/<kernel>; returns its BuildReport."""
    from .scheduler import build_gram

    tiling = config["tiling"]
    return build_gram(
        kernel_store(config, kernel), config["kernels"][kernel]["architecture"], data.x_train, data.x_test,
        kinds=config["kinds"], dtype=config["dtype"], tile_size=tiling["tile_size"], workers=tiling["workers"],
        num_cpus=tiling["cpus_per_worker"], num_gpus=tiling["gpus_per_worker"],
        max_inflight=tiling["max_inflight"], max_attempts=tiling["max_attempts"],
        storage_options=config["storage_options"] or None, progress=progress)


def solve_kernel(config: dict, data: Data, kernel: str, train_size: int) -> tuple[list[dict], dict]:
    """Scored records for one kernel at one training size, and the solver's info."""
    from .gram_source import GramSource
    from .regression import one_hot_targets, predict
    from .store import GramStore

    solver = config["solver"]
    store = GramStore(kernel_store(config, kernel), config["storage_options"] or None, read_only=True)
    source = GramSource.from_store(store, n_train=train_size)
    if data.task == "classification":
        targets = one_hot_targets(data.labels_train[:train_size], data.classes)
        truth, extra = data.labels_test, {}
    else:
        from .data import LinearBaseline

        baseline = LinearBaseline().fit(data.molecules_train[:train_size])  # training molecules only
        targets = baseline.residuals_kcal(data.molecules_train[:train_size])
        truth = baseline.residuals_kcal(data.molecules_test)  # MAE of residuals = MAE of U0 (kcal/mol)
        extra = {"baseline_mae": float(np.abs(truth[data.validation:]).mean())}
    out = predict(source, targets, t=solver["times"], kinds=config["kinds"], diag_reg=solver["diag_reg"],
                  diag_reg_absolute_scale=solver["diag_reg_absolute_scale"],
                  learning_rate=solver["learning_rate"], compute_variance=solver["compute_variance"],
                  method=solver["method"], memory_budget=solver["memory_budget"], tol=solver["tol"],
                  max_iterations=solver["max_iterations"], preconditioner_rank=solver["preconditioner_rank"],
                  scheduler=solver["scheduler"])
    v = data.validation
    test = dataclasses.replace(out, mean={k: m[:, :, v:] for k, m in out.mean.items()})
    records = [{"kernel": kernel, "train_size": train_size, **r, **extra}
               for r in test.evaluate(truth[v:], task=data.task)]
    if v:
        validation = dataclasses.replace(out, mean={k: m[:, :, :v] for k, m in out.mean.items()})
        for record, checked in zip(records, validation.evaluate(truth[:v], task=data.task)):
            record.update({f"validation_{k}": checked[k] for k in ("accuracy", "mae", "rmse") if k in checked})
    return records, out.info


METRIC = {"classification": ("accuracy", max), "regression": ("mae", min)}


def validated(records: list[dict], task: str) -> list[dict]:
    """Per (kernel, kind, train_size, t) the record of the ridge with the best validation metric
    (all records when there is no validation split)."""
    name, best = METRIC[task]
    if not records or f"validation_{name}" not in records[0]:
        return records
    groups = {}
    for r in records:
        groups.setdefault((r["kernel"], r["kind"], r["train_size"], r["t"]), []).append(r)
    sign = 1 if best is max else -1
    return [max(group, key=lambda r: sign * r[f"validation_{name}"]) for group in groups.values()]


def _solver_metrics(info: dict) -> dict[str, float]:
    metrics = {"solver/working_set_mib": info["working_set_bytes"] / 2**20}
    for kind in ("nngp", "ntk"):
        for name, runs in info.get(kind, {}).items():
            if name in ("cg", "lanczos"):
                key = "iterations" if name == "cg" else "steps"
                metrics[f"solver/{kind}/{name}_{key}"] = float(sum(r[key] for r in runs))
    return metrics


def set_experiment(name: str, uri: str):
    """`mlflow.set_experiment`, creating the experiment with its artifacts next to a SQLite
    tracking file (MLflow would put them in ./mlruns of whatever the working directory is)."""
    import os

    import mlflow

    mlflow.set_tracking_uri(uri)
    if uri.startswith("sqlite:///") and mlflow.get_experiment_by_name(name) is None:
        folder = os.path.dirname(uri[len("sqlite:///"):])
        mlflow.create_experiment(name, artifact_location=os.path.join(folder, "mlartifacts", name))
    return mlflow.set_experiment(name)


def _child_runs(client, experiment_id: str, parent_id: str) -> dict:
    """Finished nested runs of a parent: {(kernel, train_size): run}."""
    runs = client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'")
    return {(r.data.tags["raygram.kernel"], int(r.data.tags["raygram.train_size"])): r
            for r in runs if r.info.status == "FINISHED" and "raygram.kernel" in r.data.tags}


def _plots(config: dict, records: list[dict], task: str) -> dict:
    """{artifact file name: Figure}: test metric vs training size and vs t, per kind and ridge
    (one "validated" ridge per point when there is a validation split)."""
    from .plots import metric_vs_time, metric_vs_training_size

    metric = METRIC[task][0]
    chosen_records = validated(records, task)
    ridges = ["validated"] if chosen_records is not records else config["solver"]["diag_reg"]
    figures = {}
    for kind in sorted({r["kind"] for r in records}):
        for ridge in ridges:
            label = "diag_reg chosen on validation" if ridge == "validated" else f"diag_reg {ridge:g}"
            suffix = "validated" if ridge == "validated" else f"reg{ridge:g}"
            chosen = [r for r in chosen_records if r["kind"] == kind and ridge in ("validated", r["diag_reg"])]
            latest = max(r["t"] for r in chosen)
            figures[f"plots/{metric}_vs_train_size_{kind}_{suffix}.png"] = metric_vs_training_size(
                [r for r in chosen if r["t"] == latest], metric,
                f"{config['name']}: {kind.upper()} test {metric} ({label}, t = {latest:g})")
            if len({r["t"] for r in chosen}) > 1:
                largest = max(config["data"]["train_sizes"])
                figures[f"plots/{metric}_vs_time_{kind}_{suffix}.png"] = metric_vs_time(
                    [r for r in chosen if r["train_size"] == largest], metric,
                    f"{config['name']}: {kind.upper()} test {metric} vs training time (N = {largest})")
    return figures


def run_experiment(config: dict, data: Data | None = None, build: bool = True, progress: bool = True) -> dict:
    """Build (unless `build=False`: the stores must be complete), solve and track an experiment.

    Returns {"run_id", "records", "reports"}; `data` defaults to `prepare_data(config)`.
    """
    import matplotlib.pyplot as plt
    import mlflow

    from .tracking import find_run, log_config, log_records, tracking_uri

    uri = tracking_uri(config["tracking"]["uri"])
    data = prepare_data(config) if data is None else data
    experiment = set_experiment(config["tracking"]["experiment"], uri)
    digest = config_hash(config)
    resumed = find_run(experiment.name, {CONFIG_HASH_TAG: digest}, unfinished_only=True)
    client = mlflow.MlflowClient()
    with mlflow.start_run(run_id=resumed, run_name=None if resumed else config["name"]) as parent:
        if resumed is None:
            log_config(config)
            mlflow.set_tags({CONFIG_HASH_TAG: digest, "raygram.store": config["store"], **code_version(),
                             "raygram.data": json.dumps(data.fingerprint)})
        mlflow.set_tag("raygram.resumed", str(resumed is not None).lower())
        started = time.perf_counter()
        done = _child_runs(client, experiment.experiment_id, parent.info.run_id)
        records, reports = [], {}
        for kernel in config["kernels"]:
            if build:
                reports[kernel] = build_kernel(config, data, kernel, progress=progress)
                mlflow.log_metrics({f"build/{kernel}/{k}": float(v) for k, v in reports[kernel].metrics().items()
                                    if isinstance(v, (int, float)) and math.isfinite(v)})
            for size in sorted(config["data"]["train_sizes"]):
                if (kernel, size) in done:
                    records += mlflow.artifacts.load_dict(done[(kernel, size)].info.artifact_uri + "/records.json")
                    continue
                with mlflow.start_run(run_name=f"{kernel} n={size}", nested=True):
                    mlflow.set_tags({"raygram.kernel": kernel, "raygram.train_size": str(size)})
                    mlflow.log_params({"kernel": kernel, "train_size": size})
                    solved, info = solve_kernel(config, data, kernel, size)
                    log_records([{k: v for k, v in r.items() if k not in ("kernel", "train_size")}
                                 for r in solved])
                    mlflow.log_metrics(_solver_metrics(info))
                    mlflow.log_dict(solved, "records.json")
                    records += solved
        mlflow.log_dict(records, "records.json")
        for name, figure in _plots(config, records, data.task).items():
            mlflow.log_figure(figure, name)
            plt.close(figure)
        mlflow.log_metric("experiment_seconds", time.perf_counter() - started)
        return {"run_id": parent.info.run_id, "records": records, "reports": reports}


def track_convergence(config: dict, data: Data, kernel: str, widths: list[int], networks: int, points: int,
                      out: str | None = None) -> tuple[list[dict], str]:
    """Monte-Carlo vs analytic kernel errors against width for one kernel, logged as an MLflow run."""
    import matplotlib.pyplot as plt
    import mlflow

    from .convergence import convergence_errors
    from .plots import convergence_plot
    from .tracking import tracking_uri

    errors = convergence_errors(config["kernels"][kernel]["architecture"], data.x_train[:points], widths,
                                networks, seed=config["data"]["seed"], kinds=tuple(config["kinds"]))
    set_experiment(config["tracking"]["experiment"], tracking_uri(config["tracking"]["uri"]))
    with mlflow.start_run(run_name=f"{kernel} convergence") as run:
        mlflow.set_tags({"raygram.kernel": kernel, "raygram.check": "convergence", **code_version()})
        mlflow.log_params({"kernel": kernel, "widths": widths, "networks": networks, "points": points})
        for e in errors:
            mlflow.log_metric(f"convergence/{e['kind']}/error", e["error"], step=e["width"])
        figure = convergence_plot(errors, f"{config['name']}: {kernel}, finite width vs analytic kernel")
        mlflow.log_figure(figure, "plots/convergence.png")
        if out:
            figure.savefig(out, dpi=100)
        plt.close(figure)
        mlflow.log_dict(errors, "convergence.json")
    return errors, run.info.run_id
