"""What an experiment reports: the split that chose the ridge and time, mean ± standard error over
seeds, the results table (text, Markdown, HTML, `raygram report`), the MLflow shape that MLflow's
own charts need, resuming only a run of the same data, and bad input for the new settings."""
from __future__ import annotations

import math
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from raygram import load_config
from raygram.cli.main import main
from raygram.experiment import selection, tracking
from raygram.experiment.run import AUTO_FIRST, AUTO_TIME_POINTS, _extreme_eigenvalues
from raygram.solve import GramSource

ROOT = pathlib.Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "configs" / "quickstart.yaml"
BIN = pathlib.Path(sys.executable).parent
MLP = "[Flatten, {Dense: {out_dim: 1, W_std: 1.5, b_std: 0.1}}, Relu, {Dense: {out_dim: 1}}]"


def _record(kernel="k", kind="ntk", n=10, seed=0, reg=1e-3, step=0, t=1.0, test=0.5, validation=None):
    record = {"kernel": kernel, "kind": kind, "train_size": n, "seed": seed, "diag_reg": reg, "t": t,
              "time_step": step, "time": t / 2, "accuracy": test}
    if validation is not None:
        record["validation_accuracy"] = validation
    return record


def test_the_ridge_and_time_are_chosen_on_validation_and_reported_as_such():
    records = [_record(reg=1e-3, step=0, t=1.0, test=0.9, validation=0.5),
               _record(reg=1e-1, step=0, t=1.0, test=0.6, validation=0.7),
               _record(reg=1e-3, step=1, t=math.inf, test=0.8, validation=0.6),
               _record(reg=1e-1, step=1, t=math.inf, test=0.7, validation=0.6)]
    assert selection.selection_split(records, "classification") == "validation"
    (chosen,) = selection.selected(records, "classification")
    assert (chosen["diag_reg"], chosen["t"], chosen["accuracy"]) == (1e-1, 1.0, 0.6)  # not the best test value
    assert len(selection.validated(records, "classification")) == 2  # one ridge per time
    rows, notes = selection.summary_rows(records, "classification")
    assert rows[0]["mean"] == 0.6 and rows[0]["selected_by"] == "validation" and math.isnan(rows[0]["error"])
    assert "chosen on the validation split" in notes[0] and len(notes) == 1
    text = selection.summary_table(records, "classification")
    assert "0.600" in text and "validation" in text and "optimistic" not in text


def test_without_a_validation_split_the_table_says_test_optimistic_and_warns():
    records = [_record(reg=1e-3, test=0.9), _record(reg=1e-1, test=0.6)]
    assert selection.selection_split(records, "classification") == "test"
    rows, notes = selection.summary_rows(records, "classification")
    assert rows[0]["mean"] == 0.9 and rows[0]["selected_by"] == "test — optimistic"
    assert notes[1].startswith("warning: no validation split")
    for fmt in ("text", "markdown", "html"):
        table = selection.summary_table(records, "classification", fmt)
        assert "test — optimistic" in table and "warning: no validation split" in table, fmt
    assert selection.summary_table(records, "classification", "markdown").startswith("| kernel | kind |")
    assert "<table>" in selection.summary_table(records, "classification", "html")
    with pytest.raises(ValueError, match="format"):
        selection.summary_table(records, "classification", "latex")


def test_seeds_give_mean_and_standard_error():
    records = [_record(seed=s, test=a, validation=a) for s, a in ((0, 0.5), (1, 0.7), (2, 0.9))]
    rows, notes = selection.summary_rows(records, "classification")
    (row,) = rows
    assert row["seeds"] == 3 and row["mean"] == pytest.approx(0.7)
    assert row["error"] == pytest.approx(np.std([0.5, 0.7, 0.9], ddof=1) / math.sqrt(3))
    assert "mean ± standard error over seeds [0, 1, 2]" in notes[0]
    assert "0.700 ± 0.115" in selection.summary_table(records, "classification")
    assert selection.mean_and_error([0.3])[0] == 0.3 and math.isnan(selection.mean_and_error([0.3])[1])


def test_regression_summary_has_the_linear_baseline_per_size():
    records = [{**_record(seed=s, n=n, test=0), "mae": 2.0 + s, "validation_mae": 1.0, "baseline_mae": 5.0 + s}
               for s in (0, 1) for n in (10, 20)]
    for r in records:
        del r["accuracy"]
    rows, _ = selection.summary_rows(records, "regression")
    linear = [r for r in rows if r["kernel"] == "per-element linear"]
    assert [r["train_size"] for r in linear] == [10, 20] and linear[0]["mean"] == 5.5 and linear[0]["seeds"] == 2


def test_extreme_eigenvalues_in_memory_and_by_lanczos():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((60, 60))
    k = a @ a.T + np.eye(60)
    source = GramSource.from_arrays({"ntk": k})
    expected = np.linalg.eigvalsh(k)
    largest, smallest = _extreme_eigenvalues(source, "ntk", budget=None)
    assert largest == pytest.approx(expected[-1], rel=1e-12) and smallest == pytest.approx(expected[0], rel=1e-9)
    largest, smallest = _extreme_eigenvalues(source, "ntk", budget=1000)  # N² doubles do not fit
    assert largest == pytest.approx(expected[-1], rel=1e-3) and smallest is None


def test_git_commit_tag_from_the_environment_else_the_checkout(monkeypatch):
    monkeypatch.setenv("RAYGRAM_GIT_COMMIT", "0123abc")
    assert tracking.code_version()["mlflow.source.git.commit"] == "0123abc"
    monkeypatch.setenv("RAYGRAM_GIT_COMMIT", "unknown")  # the Dockerfile's default: not a commit
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    assert tracking.code_version()["mlflow.source.git.commit"] == head
    assert tracking.code_version()["raygram.git_commit"] == head


@pytest.mark.parametrize("override, message", [
    ("data.seeds=[]", r"data\.seeds: must be a list of at least 1 item"),
    ("data.seeds=[0, 0]", r"data\.seeds: must not repeat values"),
    ("data.seeds=[-1]", r"data\.seeds\[0\]: must be an integer >= 0"),
    ("solver.times=[]", r"solver\.times: must be a list of at least 1 item.*or auto"),
    ("solver.times=soon", r"solver\.times\[0\]: must be a number or 'inf'.*or auto"),
    ("solver.times=[1, -2]", r"solver\.times\[1\]: must be >= 0"),
])
def test_bad_seeds_and_times_are_one_line_exit_2_nothing_written(override, message, tmp_path, monkeypatch, capsys):
    import re

    monkeypatch.chdir(tmp_path)
    assert main(["run", str(QUICKSTART), "--set", override]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and re.search(message, err), err
    assert list(tmp_path.iterdir()) == []


def test_seed_and_seeds_together_are_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["run", str(QUICKSTART), "--set", "data.seed=3", "--set", "data.seeds=[1, 2]"]) == 2
    assert "data.seed and data.seeds: give one of them" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_report_refuses_a_bad_run_id_and_a_missing_database(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # mlflow.set_tracking_uri in other tests sets it
    assert main(["report", "--experiment", "x"]) == 2  # no ./mlflow.db: not created either
    assert "no MLflow database there" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_seeds_mlflow_charts_report_and_resume_by_data(ray_address, tmp_path):
    """Two seeds of a small experiment (two identical MLP kernels, a validation split, auto times):
    one store per seed and kernel; one nested run per (kernel, kind, size, seed) with the params
    and metrics MLflow's run-comparison charts need; learning curves on the parent with step = size;
    the data as MLflow inputs; the results table as artifacts and from `raygram report`; a run of the
    same config on other data is not resumed."""
    import mlflow

    from raygram.experiment import run_experiment

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    config = load_config(QUICKSTART, [
        "data.train_sizes=[10, 20]", "data.test_size=30", "data.validation_size=10", "data.seeds=[0, 1]",
        "data.test_transform=null", f"kernels={{mlp: {{architecture: {MLP}}}, mlp_twin: {{architecture: {MLP}}}}}",
        "solver.diag_reg=[1.0e-3, 1.0e-1]", f"store={tmp_path}/stores", f"tracking.uri={uri}",
        "tracking.experiment=seeds-test"])
    experiment = tracking.set_experiment("seeds-test", uri)
    with mlflow.start_run(run_name="same config, other data") as other:  # left unfinished
        mlflow.set_tags({tracking.CONFIG_HASH_TAG: tracking.config_hash(config.public_dict()),
                         tracking.DATA_HASH_TAG: "0000000000000000"})
    mlflow.MlflowClient(uri).set_terminated(other.info.run_id, "KILLED")

    result = run_experiment(config, progress=False)
    assert result["run_id"] != other.info.run_id and result["selected_by"] == "validation"
    assert all((tmp_path / "stores" / f"seed{s}" / k).is_dir() for s in (0, 1) for k in ("mlp", "mlp_twin"))
    records = result["records"]
    assert {r["seed"] for r in records} == {0, 1}
    for kind in ("ntk", "nngp"):  # auto times: AUTO_TIME_POINTS log-spaced from λ_max·τ = 0.1, then inf
        one = sorted((r for r in records if r["kernel"] == "mlp" and r["kind"] == kind and r["seed"] == 0
                      and r["train_size"] == 20 and r["diag_reg"] == 1e-3), key=lambda r: r["time_step"])
        assert len(one) == AUTO_TIME_POINTS + 1 and math.isinf(one[-1]["t"]) and math.isinf(one[-1]["time"])
        assert one[0]["time"] == pytest.approx(AUTO_FIRST, rel=0.01)
        assert all(a["t"] < b["t"] for a, b in zip(one, one[1:]))
        assert abs(one[-2]["accuracy"] - one[-1]["accuracy"]) <= 1 / 30  # the last finite time has converged

    client = mlflow.MlflowClient(uri)
    parent = client.get_run(result["run_id"])
    tags = parent.data.tags
    assert tags["raygram.selected_by"] == "validation" and tags[tracking.DATA_HASH_TAG] != "0000000000000000"
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    assert tags["mlflow.source.git.commit"] == os.environ.get("RAYGRAM_GIT_COMMIT", head)
    inputs = parent.inputs.dataset_inputs
    assert len(inputs) == 4 and {i.dataset.name for i in inputs} == {"digits"}
    assert sorted(t.value for i in inputs for t in i.tags if t.key == "mlflow.data.context") == \
        ["training", "training", "validation+test", "validation+test"]
    # Learning curves on the parent: one point per training size (MLflow's metric chart draws them).
    for kernel in ("mlp", "mlp_twin"):
        for kind in ("ntk", "nngp"):
            history = client.get_metric_history(result["run_id"], f"accuracy/{kernel}/{kind}")
            assert sorted(m.step for m in history) == [10, 20]
            assert len(client.get_metric_history(result["run_id"], f"accuracy_se/{kernel}/{kind}")) == 2
    # Nested runs: params and the plain metric a run-comparison chart plots (accuracy vs params.train_size).
    children = client.search_runs([experiment.experiment_id], f"tags.mlflow.parentRunId = '{result['run_id']}'")
    assert sorted((c.data.params["kernel"], c.data.params["kind"], c.data.params["train_size"], c.data.params["seed"])
                  for c in children) == sorted((k, kind, str(n), str(s)) for k in ("mlp", "mlp_twin")
                                               for kind in ("ntk", "nngp") for n in (10, 20) for s in (0, 1))
    for child in children:
        assert child.info.status == "FINISHED"
        assert 0 <= child.data.metrics["accuracy"] <= 1 and "validation_accuracy" in child.data.metrics
        assert child.data.params["selected_by"] == "validation"
    curve = client.get_metric_history(children[0].info.run_id, "accuracy_vs_time")
    assert sorted(m.step for m in curve) == list(range(AUTO_TIME_POINTS + 1))
    times = sorted(client.get_metric_history(children[0].info.run_id, "time"), key=lambda m: m.step)
    assert [m.step for m in times] == list(range(AUTO_TIME_POINTS)) and times[0].value < times[-1].value
    artifacts = {a.path for a in client.list_artifacts(result["run_id"])}
    assert {"results.md", "results.html", "records.json", "plots"} <= artifacts
    table = mlflow.artifacts.load_text(parent.info.artifact_uri + "/results.md")
    assert "± " in table and "| mlp | ntk | 20 |" in table

    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    report = subprocess.run([str(BIN / "raygram"), "report", "--tracking-uri", uri, "--experiment", "seeds-test"],
                            capture_output=True, text=True, env=env, timeout=300)
    assert report.returncode == 0, report.stderr
    assert report.stdout.startswith(f"run {result['run_id']} ") and "mlp_twin" in report.stdout
    assert "mean ± standard error over seeds [0, 1]" in report.stdout
    bad = subprocess.run([str(BIN / "raygram"), "report", "0123456789abcdef", "--tracking-uri", uri],
                         capture_output=True, text=True, env=env, timeout=300)
    assert bad.returncode == 2 and bad.stdout == "" and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    assert "no MLflow run '0123456789abcdef'" in bad.stderr
