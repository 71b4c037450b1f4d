"""Experiments tracked on a real `mlflow server` over HTTP, and the pre-flight that guards them.

An MLflow 3.17 server answers GET /health for any Host header and without credentials, but
refuses API calls from a Host outside its `--allowed-hosts` (403) and, with an auth app,
without credentials (401). `raygram run` must find that out with one real API call before
it builds a Gram or creates an MLflow run, and say so in one line (exit 2).

One server per module (start-up runs the SQLite migrations: 10-20 s or more on a loaded
machine), on its own free port on 127.0.0.1, with a SQLite backend and served artifacts in a
temporary folder, allowing only the Host `127.0.0.1:<port>` (so `localhost:<port>` reaches
the same server through a Host it refuses). MLflow's basic-auth app (`--app-name
basic-auth`) needs Flask-WTF, which raygram does not install: the 401 case uses a small
stand-in on 127.0.0.1 that answers every request 401 as that app does without credentials.
"""
from __future__ import annotations

import http.server
import os
import pathlib
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pytest
import yaml

from builds import stop_process_group

BIN = pathlib.Path(sys.executable).parent
START_TIMEOUT_S = 180  # migrations on a loaded 2-core machine
RUN_TIMEOUT_S = 600
API = "/api/2.0/mlflow/experiments/search?max_results=1"

CONFIG = {
    "name": "mlflow-server-test",
    "data": {"source": "digits", "train_sizes": [10, 20], "test_size": 20, "seed": 0},
    "kernels": {"mlp": {"architecture": ["Flatten", {"Dense": {"out_dim": 8}}, "Relu", {"Dense": {"out_dim": 1}}]}},
    "kinds": ["ntk"],
    "solver": {"diag_reg": [1.0e-3], "times": [10.0, "inf"]},
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _clean_env() -> dict:
    """The test session's environment (Ray token auth included) without MLflow settings of the user's."""
    return {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """Port of an `mlflow server` on 127.0.0.1 that allows only the Host 127.0.0.1:<port>."""
    folder = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    log = open(folder / "server.log", "wb")
    server = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}", "--serve-artifacts",
         "--artifacts-destination", str(folder / "artifacts"), "--allowed-hosts", f"127.0.0.1:{port}"],
        cwd=folder, env=_clean_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while server.poll() is None and time.monotonic() < deadline:
            try:  # an API call, not /health: the first one after a start can take long
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{API}", timeout=60) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                time.sleep(1)
        else:
            log.flush()
            pytest.fail(f"mlflow server did not start: {(folder / 'server.log').read_text()[-3000:]}")
        yield port
    finally:
        stop_process_group(server, timeout=60)
        log.close()


def _raygram_run(tmp_path, uri: str, experiment: str, ray_address: str | None, env: dict | None = None):
    """`raygram run` of the tiny CONFIG in `tmp_path`, tracked at `uri`."""
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump({**CONFIG, "store": str(tmp_path / "stores"),
                                    "tracking": {"uri": uri, "experiment": experiment}}))
    args = [str(BIN / "raygram"), "run", str(path), "-q"]
    if ray_address:
        args += ["--set", f"ray.address={ray_address}"]
    return subprocess.run(args, cwd=tmp_path, env=env or _clean_env(), capture_output=True, text=True,
                          timeout=RUN_TIMEOUT_S)


def test_run_over_http_lands_on_the_server_with_metrics_and_artifacts(mlflow_server, ray_address, tmp_path):
    from mlflow import MlflowClient

    uri = f"http://127.0.0.1:{mlflow_server}"
    out = _raygram_run(tmp_path, uri, "server-test", ray_address)
    assert out.returncode == 0, out.stderr[-3000:]
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("server-test")
    assert experiment is not None and experiment.artifact_location.startswith("mlflow-artifacts:")
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert parent.info.status == "FINISHED" and f"MLflow run {parent.info.run_id}" in out.stdout
    assert parent.data.params["data.source"] == "digits"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert {c.data.params.get("train_size") for c in children} == {"10", "20"}  # one kernel, one kind
    assert all(c.info.status == "FINISHED" and any(k.startswith("accuracy") for k in c.data.metrics)
               for c in children), [c.data.metrics for c in children]
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {"config.yaml", "records.json"}
    local = client.download_artifacts(parent.info.run_id, "config.yaml", str(tmp_path / "downloaded"))
    config = yaml.safe_load(pathlib.Path(local).read_text())
    assert config["kernels"] == CONFIG["kernels"]
    # Artifacts went through the server into its --artifacts-destination, not into this folder.
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "mlartifacts").exists()


def _assert_refused_before_anything(out, tmp_path, pattern: str) -> None:
    assert out.returncode == 2, out.stderr[-3000:]
    assert out.stderr.startswith("raygram: error: ") and out.stderr.count("\n") == 1, out.stderr
    assert pattern in out.stderr, out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["experiment.yaml"]  # no store, no mlruns


def test_a_host_the_server_does_not_allow_is_refused_before_any_work(mlflow_server, tmp_path):
    """http://localhost:<port> reaches the server, which answers /health but refuses the API (403)."""
    from mlflow import MlflowClient

    with urllib.request.urlopen(f"http://localhost:{mlflow_server}/health", timeout=30) as answer:
        assert answer.status == 200  # what the old /health pre-flight saw
    out = _raygram_run(tmp_path, f"http://localhost:{mlflow_server}", "refused-host-test", None)
    _assert_refused_before_anything(out, tmp_path, f"refuses the Host header 'localhost:{mlflow_server}'")
    assert "--allowed-hosts" in out.stderr
    assert MlflowClient(f"http://127.0.0.1:{mlflow_server}").get_experiment_by_name("refused-host-test") is None


class _Unauthorized(http.server.BaseHTTPRequestHandler):
    """MLflow's basic-auth app without credentials: 401 with a Basic challenge for every API call."""

    def do_GET(self):
        self.send_response(200 if self.path == "/health" else 401)
        if self.path != "/health":
            self.send_header("WWW-Authenticate", 'Basic realm="mlflow"')
        self.end_headers()
        self.wfile.write(b"OK" if self.path == "/health" else b"You are not authenticated.")

    do_POST = do_GET

    def log_message(self, *args):
        pass


def test_a_server_that_demands_credentials_is_refused_before_any_work(tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Unauthorized)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        env = {**_clean_env(), "MLFLOW_TRACKING_USERNAME": "alice", "MLFLOW_TRACKING_PASSWORD": "wrong-pw-77"}
        out = _raygram_run(tmp_path, f"http://127.0.0.1:{server.server_address[1]}", "auth-test", None, env)
    finally:
        server.shutdown()
        server.server_close()
    _assert_refused_before_anything(out, tmp_path, "401 Unauthorized")
    assert "MLFLOW_TRACKING_USERNAME" in out.stderr and "wrong-pw-77" not in out.stderr
