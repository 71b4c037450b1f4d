"""Experiments end to end on a real local Ray cluster, real zarr stores and a real SQLite MLflow store:
the quickstart (small), resuming an interrupted `raygram run`, `ray job submit`, check-convergence."""
import os
import pathlib
import signal
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest

from raygram import load_config
from raygram.experiment import run_experiment
from raygram.experiment.selection import OptimisticSelection
from raygram.experiment.tracking import CONFIG_HASH_TAG, config_hash

ROOT = pathlib.Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "configs" / "quickstart.yaml"
BIN = pathlib.Path(sys.executable).parent
SMALL = ["data.train_sizes=[20, 60]", "data.test_size=60"]


@pytest.fixture(scope="module")
def tracking(tmp_path_factory):
    """One SQLite MLflow store for the module (creating one runs migrations, ~6 s)."""
    folder = tmp_path_factory.mktemp("mlflow")
    return f"sqlite:///{folder}/mlflow.db"


def _runs(uri, experiment_name, parent=None):
    import mlflow

    client = mlflow.MlflowClient(uri)
    found = client.get_experiment_by_name(experiment_name)
    if found is None:
        return []
    runs = client.search_runs([found.experiment_id])
    return [r for r in runs if (r.data.tags.get("mlflow.parentRunId") == parent)]


def _png_has_content(path):
    from PIL import Image

    image = np.asarray(Image.open(path).convert("RGB"), dtype=float)
    assert image.shape[0] >= 200 and image.shape[1] >= 300, image.shape
    assert image.std() > 10 and len(np.unique(image.reshape(-1, 3), axis=0)) > 20


def test_quickstart_records_params_metrics_plots_and_equivariance_wins(ray_address, tracking, tmp_path):
    """Small quickstart: rotated-test accuracy of the C4 GCNN beats the CNN's; the augmented CNN's
    predictions are the GCNN's (the paper's theorem), so their accuracies are equal everywhere and
    the plots say so. Default (auto) times run from chance to convergence."""
    import mlflow

    config = load_config(QUICKSTART, SMALL + [f"store={tmp_path}/stores", f"tracking.uri={tracking}",
                                                  "tracking.experiment=quickstart-test"])
    assert config.solver.times == "auto"
    with pytest.warns(OptimisticSelection, match="no validation split"):
        result = run_experiment(config, progress=False)
    assert result["selected_by"] == "test — optimistic"
    records = result["records"]
    best = {(r["kernel"], r["kind"], r["t"]): r["accuracy"] for r in records if r["train_size"] == 60}
    for kind in ("ntk", "nngp"):
        assert best[("c4_gcnn", kind, np.inf)] > best[("cnn", kind, np.inf)] + 0.05, best
    for r in records:
        twin = next(q for q in records if q["kernel"] == "c4_gcnn" and all(
            q[k] == r[k] for k in ("kind", "train_size", "time_step", "diag_reg")))
        if r["kernel"] == "cnn_augmented":  # equal kernels: equal spectra, so equal auto times
            assert r["t"] == pytest.approx(twin["t"], rel=1e-9) and r["accuracy"] == twin["accuracy"], (r, twin)
            assert np.allclose(r["prediction_sketch"], twin["prediction_sketch"], rtol=1e-9)
    for kernel in config.kernels:  # from chance (10 classes) at λ_max·τ = 0.1 to convergence
        for kind in ("ntk", "nngp"):
            curve = sorted((r for r in records if (r["kernel"], r["kind"], r["train_size"]) == (kernel, kind, 60)),
                           key=lambda r: r["time_step"])
            assert len(curve) == 11 and curve[0]["time"] == pytest.approx(0.1, rel=0.01)
            assert curve[0]["accuracy"] <= 0.2 and curve[-2]["accuracy"] == pytest.approx(curve[-1]["accuracy"],
                                                                                          abs=1 / 60)

    client = mlflow.MlflowClient(tracking)
    parent = client.get_run(result["run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.params["data.source"] == "digits" and parent.data.params["data.test_transform"] == "C4"
    assert parent.data.tags["raygram.store"] == f"{tmp_path}/stores" and parent.data.tags["raygram.version"]
    assert parent.data.tags[CONFIG_HASH_TAG] == config_hash(config.to_dict())
    assert parent.data.metrics["build/c4_gcnn/tiles_computed"] > 0
    assert parent.data.tags["raygram.selected_by"] == "test — optimistic"
    children = _runs(tracking, "quickstart-test", parent=result["run_id"])
    assert sorted((c.data.tags["raygram.kernel"], c.data.params["kind"], c.data.params["train_size"])
                  for c in children) == sorted((k, kind, str(n)) for k in config.kernels for kind in ("ntk", "nngp")
                                               for n in (20, 60))
    child = next(c for c in children if c.data.tags["raygram.kernel"] == "c4_gcnn"
                 and c.data.params["train_size"] == "60" and c.data.params["kind"] == "ntk")
    assert any(name.startswith("accuracy/ntk/") for name in child.data.metrics)
    assert child.data.params["selected_by"] == "test — optimistic" and "accuracy" in child.data.metrics
    artifacts = {a.path for a in client.list_artifacts(result["run_id"], "plots")}
    assert "plots/accuracy_vs_train_size_ntk_reg0.001.png" in artifacts
    assert "plots/accuracy_vs_time_ntk_reg0.001.png" in artifacts
    assert {a.path for a in client.list_artifacts(result["run_id"])} >= {"config.yaml", "records.json", "plots",
                                                                        "results.md", "results.html"}
    local = client.download_artifacts(result["run_id"], "plots/accuracy_vs_train_size_ntk_reg0.001.png",
                                      str(tmp_path))
    _png_has_content(local)

    # `raygram solve` of the finished experiment: a new run from the stores, nothing rebuilt.
    again = run_experiment(config, build=False, progress=False)
    assert again["run_id"] != result["run_id"] and again["records"] == records


def _raygram(args, env, **kwargs):
    return subprocess.Popen([str(BIN / "raygram"), *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def test_interrupted_run_resumes_build_and_mlflow_run(ray_address, tracking, tmp_path):
    """`raygram run` SIGKILLed after its first nested run finished (while the next kernel builds):
    the rerun continues the same parent run (same config and data), keeps the finished nested run,
    redoes the rest, recomputes no stored tile; every (kernel, kind, size) ends with exactly one
    finished nested run."""
    env = dict(os.environ)
    args = ["run", str(QUICKSTART), "-q", "--set", f"ray.address={ray_address}", "--set", f"store={tmp_path}/s",
            "--set", f"tracking.uri={tracking}", "--set", "tracking.experiment=resume-test",
            "--set", "data.train_sizes=[20]", "--set", "data.test_size=40"]
    first = _raygram(args, env)
    deadline = time.time() + 400
    while time.time() < deadline and first.poll() is None:
        parents = _runs(tracking, "resume-test")
        if parents and any(c.info.status == "FINISHED" for c in _runs(tracking, "resume-test", parents[0].info.run_id)):
            break
        time.sleep(0.2)
    assert first.poll() is None, first.communicate()
    first.send_signal(signal.SIGKILL)
    first.wait()
    (parent,) = _runs(tracking, "resume-test")
    assert parent.info.status == "RUNNING"
    finished_before = [c.info.run_id for c in _runs(tracking, "resume-test", parent.info.run_id)
                       if c.info.status == "FINISHED"]
    second = _raygram(args, env)
    out, err = second.communicate(timeout=600)
    assert second.returncode == 0, err
    (resumed,) = _runs(tracking, "resume-test")
    assert resumed.info.run_id == parent.info.run_id and resumed.info.status == "FINISHED"
    assert resumed.data.tags["raygram.resumed"] == "true"
    children = [c for c in _runs(tracking, "resume-test", parent.info.run_id) if c.info.status == "FINISHED"]
    assert sorted((c.data.tags["raygram.kernel"], c.data.tags["raygram.kind"]) for c in children) == [
        (k, kind) for k in ("c4_gcnn", "cnn", "cnn_augmented") for kind in ("nngp", "ntk")]
    assert set(finished_before) <= {c.info.run_id for c in children}
    assert resumed.data.metrics["build/cnn/tiles_computed"] == 0  # its build had finished before the kill


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ray_job_submit_runs_the_quickstart_on_a_local_head(tmp_path):
    """`ray start --head` on 127.0.0.1, `ray job submit` of jobs/run_experiment.py: same MLflow record."""
    env = dict(os.environ)
    port, dashboard = _free_port(), _free_port()
    # Agents' default ports (52365, ...) may be held by the session's own Ray instance: pick free ones.
    agents = [f"--{name}={_free_port()}" for name in ("dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                                                      "runtime-env-agent-port", "metrics-export-port",
                                                      "ray-client-server-port", "node-manager-port",
                                                      "object-manager-port")]
    temp = tempfile.mkdtemp(prefix="rj", dir="/tmp")
    head = subprocess.Popen([str(BIN / "ray"), "start", "--head", "--block", f"--port={port}",
                             "--node-ip-address=127.0.0.1", f"--dashboard-port={dashboard}",
                             "--dashboard-host=127.0.0.1", "--include-dashboard=true", "--num-cpus=2",
                             f"--temp-dir={temp}", "--disable-usage-stats", *agents],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    try:
        address = f"http://127.0.0.1:{dashboard}"
        command = [str(BIN / "ray"), "job", "submit", "--address", address, "--",
                   sys.executable, str(ROOT / "jobs" / "run_experiment.py"), str(QUICKSTART), "-q",
                   "--set", f"store={tmp_path}/stores", "--set", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
                   "--set", "tracking.experiment=job-test", "--set", "data.train_sizes=[16]",
                   "--set", "data.test_size=32"]
        for _ in range(60):  # the head's job agent comes up some seconds after `ray start` returns
            job = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
            if "No available agent" not in job.stderr and "Connection refused" not in job.stderr:
                break
            time.sleep(1)
        assert job.returncode == 0 and "succeeded" in job.stdout, job.stdout[-3000:] + job.stderr[-3000:]
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        head.wait(timeout=120)
    (parent,) = _runs(uri, "job-test")
    assert parent.info.status == "FINISHED" and parent.data.params["data.source"] == "digits"
    children = _runs(uri, "job-test", parent.info.run_id)
    assert {(c.data.tags["raygram.kernel"], c.data.tags["raygram.kind"]) for c in children} == {
        (k, kind) for k in ("c4_gcnn", "cnn", "cnn_augmented") for kind in ("nngp", "ntk")}
    assert all("accuracy" in c.data.metrics for c in children)


def test_check_convergence_command_logs_a_falling_error_and_a_plot(tmp_path, tracking):
    out = subprocess.run([str(BIN / "raygram"), "check-convergence", str(QUICKSTART), "--kernel", "c4_gcnn",
                          "--widths", "4,64", "--networks", "3", "--points", "3", "--out", str(tmp_path / "c.png"),
                          "--set", f"tracking.uri={tracking}", "--set", "tracking.experiment=convergence-test",
                          "--set", f"store={tmp_path}/s"],
                         env=dict(os.environ), capture_output=True, text=True,
                         timeout=600, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    errors = {}
    for line in out.stdout.splitlines():
        if line.startswith("width"):
            _, width, kind, *_, error, _, _ = line.split()
            errors[(int(width), kind)] = float(error)
    for kind in ("ntk", "nngp"):
        assert errors[(64, kind)] < errors[(4, kind)], errors
    _png_has_content(tmp_path / "c.png")
    (run,) = _runs(tracking, "convergence-test")
    assert run.data.tags["raygram.check"] == "convergence"


def test_qm9_so3_kernel_beats_the_mlp_kernel_which_beats_the_linear_baseline(ray_address, tracking, tmp_path):
    """configs/qm9.yaml at the sizes CI affords (grid bandwidth 2, 40 and 120 training molecules,
    80 held out, fixed seed): per-atom networks summed over atoms, U0 minus the per-element fit of
    each training set, MAE in kcal/mol, ridge chosen on the validation split. At every size and for
    NTK and NNGP, the SO(3) kernel's MAE < the MLP kernel's < the per-element linear baseline's
    (measured: SO(3) 8.6 / 5.7, MLP 17.3 / 14.3, linear 17.7 / 16.5 for the NTK at 40 / 120)."""
    import mlflow

    from raygram.experiment import validated

    config = load_config(ROOT / "configs" / "qm9.yaml", [
        "data.train_sizes=[40, 120]", "data.validation_size=40", "data.test_size=80",
        "data.options={bandwidth: 2, molecules: 2000, elements: [H, C, N, O]}", f"store={tmp_path}/stores",
        f"tracking.uri={tracking}", "tracking.experiment=qm9-test"])
    result = run_experiment(config, progress=False)
    records = result["records"]
    assert {r["kernel"] for r in records} == {"so3", "mlp"} and all(r["mae"] > 0 for r in records)
    assert len(records) == 2 * 2 * 2 * len(config.solver.diag_reg)  # kernels x sizes x kinds x ridges
    chosen = validated(records, "regression")
    assert len(chosen) == 2 * 2 * 2
    for r in chosen:
        same = [q for q in records if (q["kernel"], q["kind"], q["train_size"]) ==
                (r["kernel"], r["kind"], r["train_size"])]
        assert r["validation_mae"] == min(q["validation_mae"] for q in same)
    mae = {(r["kernel"], r["kind"], r["train_size"]): r["mae"] for r in chosen}
    baseline = {r["train_size"]: r["baseline_mae"] for r in records}
    for kind in ("ntk", "nngp"):
        for size in (40, 120):
            assert mae[("so3", kind, size)] < mae[("mlp", kind, size)] < baseline[size], (kind, size, mae, baseline)
        assert mae[("so3", kind, 120)] < mae[("so3", kind, 40)], mae
    client = mlflow.MlflowClient(tracking)
    plots = {a.path for a in client.list_artifacts(result["run_id"], "plots")}
    assert "plots/mae_vs_train_size_ntk_validated.png" in plots
    children = _runs(tracking, "qm9-test", parent=result["run_id"])
    assert {c.data.tags.get("raygram.kernel") for c in children} >= {"so3", "mlp"}
    assert any(k.startswith("mae/ntk/") for c in children for k in c.data.metrics)
