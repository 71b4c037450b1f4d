"""MLflow tracking helpers against a real SQLite MLflow store (result plots: test_plots.py).

One store per module: creating a SQLite store runs MLflow's migrations (~6 s). Its
experiment keeps artifacts under the same temporary folder (not ./mlruns).
"""
from __future__ import annotations

import http.server
import os
import math
import socket
import threading
import time

import mlflow
import pytest
import yaml
from mlflow.tracking import MlflowClient

from raygram.errors import ConfigError, TrackingUnavailable
from raygram.experiment import tracking

EXPERIMENT = "raygram-tracking-test"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """(tracking URI, experiment id) of a fresh SQLite store, set through the environment and as
    mlflow's current URI (a run elsewhere in the session may have set another one globally)."""
    folder = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    previous = mlflow.get_tracking_uri()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mlflow.set_tracking_uri(uri)
        experiment_id = MlflowClient().create_experiment(
            EXPERIMENT, artifact_location=(folder / "artifacts").as_uri())
        mp.setenv("MLFLOW_EXPERIMENT_ID", experiment_id)
        mlflow.set_experiment(experiment_id=experiment_id)  # overrides an experiment another test made active
        yield uri, experiment_id
    mlflow.set_tracking_uri(previous)


@pytest.fixture
def client(store):
    yield MlflowClient()
    while mlflow.active_run() is not None:
        mlflow.end_run()


CONFIG = {
    "name": "c4-mnist",
    "architecture": [{"LiftingConv": {"out_chan": 8, "filter_shape": [3, 3], "group": "C4"}},
                     "Relu", "GroupPool", {"Dense": {"out_dim": 1}}],
    "solver": {"diag_reg": [0.001, 0.1], "t": None, "kinds": ["nngp", "ntk"], "options": {}},
    "notes": "x" * 7000,
}


def test_flatten_params_paths_and_limits():
    flat = tracking.flatten_params(CONFIG)
    assert flat["architecture.0.LiftingConv.filter_shape.1"] == "3"
    assert flat["architecture.1"] == "Relu"
    assert flat["solver.diag_reg.0"] == "0.001"
    assert flat["solver.t"] == "None" and flat["solver.options"] == "{}"
    assert len(flat["notes"]) == 6000
    assert tracking.flatten_params({"a": {"b=c": 1}}, prefix="cfg") == {"cfg.a.b_c": "1"}
    with pytest.raises(ValueError, match="mapping"):
        tracking.flatten_params(["not", "a", "dict"])


def test_log_config_round_trips(client, store):
    with pytest.raises(RuntimeError, match="active run"):
        tracking.log_config(CONFIG)
    with mlflow.start_run() as run:
        tracking.log_config(CONFIG)
    params = client.get_run(run.info.run_id).data.params
    assert params == tracking.flatten_params(CONFIG)
    assert params["architecture.0.LiftingConv.group"] == "C4"
    text = mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/config.yaml")
    assert yaml.safe_load(text) == CONFIG


def test_log_records_names_and_values(client):
    records = [{"kind": kind, "diag_reg": reg, "t": t, "accuracy": acc, "mae": 0.5 * acc}
               for kind, reg, t, acc in [("ntk", 1e-3, math.inf, 0.9), ("ntk", 1e-3, 10.0, 0.7),
                                         ("nngp", 0.1, math.inf, 0.8)]]
    with mlflow.start_run() as run:
        tracking.log_records(records)
        tracking.log_records([{"kernel": "c4=gcnn/v1", "t": 1e-5, "rmse": 2.0}])
        for size, acc in ((100, 0.6), (1000, 0.75)):
            tracking.log_records([{"kind": "ntk", "train_size": size, "accuracy": acc}],
                                 step_key="train_size")
        with pytest.raises(ValueError, match="twice"):
            tracking.log_records([{"kind": "ntk", "rmse": 1.0}, {"kind": "ntk", "rmse": 2.0}])
        with pytest.raises(ValueError, match="integer"):
            tracking.log_records([{"kind": "ntk", "t": 1.5, "rmse": 1.0}], step_key="t")
        tracking.log_records([{"kind": "k" * 300, "rmse": 3.0}])
    metrics = client.get_run(run.info.run_id).data.metrics
    long_name = next(name for name in metrics if name.startswith("rmse/kkk"))
    assert len(long_name) <= 250
    assert metrics == {
        "accuracy/ntk/diag_reg_0.001/t_inf": 0.9, "mae/ntk/diag_reg_0.001/t_inf": 0.45,
        "accuracy/ntk/diag_reg_0.001/t_10": 0.7, "mae/ntk/diag_reg_0.001/t_10": 0.35,
        "accuracy/nngp/diag_reg_0.1/t_inf": 0.8, "mae/nngp/diag_reg_0.1/t_inf": 0.4,
        "rmse/c4_gcnn_v1/t_1e-05": 2.0, "accuracy/ntk": 0.75, long_name: 3.0,
    }
    history = client.get_metric_history(run.info.run_id, "accuracy/ntk")
    assert sorted((m.step, m.value) for m in history) == [(100, 0.6), (1000, 0.75)]


def test_nested_runs_and_find_run(client, store):
    _, experiment_id = store
    tags = {"raygram.experiment": "mnist-sweep", "raygram.fingerprint": "it's-abc"}
    assert tracking.find_run(EXPERIMENT, tags) is None
    with mlflow.start_run() as older:
        mlflow.set_tags(tags)
    time.sleep(0.01)  # start times are in milliseconds
    with mlflow.start_run() as parent:
        mlflow.set_tags(tags)
        with mlflow.start_run(nested=True) as child:
            mlflow.set_tags(tags)
            tracking.log_records([{"kind": "ntk", "accuracy": 0.5}])
    assert client.get_run(child.info.run_id).data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert client.get_run(child.info.run_id).data.metrics == {"accuracy/ntk": 0.5}
    assert older.info.run_id != parent.info.run_id
    assert tracking.find_run(EXPERIMENT, tags) == parent.info.run_id
    assert tracking.find_run(EXPERIMENT, {"raygram.experiment": "mnist-sweep"}) == parent.info.run_id
    assert tracking.find_run(EXPERIMENT, {**tags, "raygram.fingerprint": "other"}) is None
    assert tracking.find_run("no-such-experiment", tags) is None
    assert tracking.find_run(EXPERIMENT, tags, unfinished_only=True) is None
    # A run left RUNNING by a killed driver, or one that failed, is the one to resume.
    time.sleep(0.01)
    interrupted = client.create_run(experiment_id, tags=tags)
    assert tracking.find_run(EXPERIMENT, tags) == interrupted.info.run_id
    assert tracking.find_run(EXPERIMENT, tags, unfinished_only=True) == interrupted.info.run_id
    time.sleep(0.01)
    with mlflow.start_run() as failed:
        mlflow.set_tags(tags)
        mlflow.end_run(status="FAILED")
    assert tracking.find_run(EXPERIMENT, tags, unfinished_only=True) == failed.info.run_id


def test_tracking_uri_precedence(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    local = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert tracking.tracking_uri(None) == tracking.DEFAULT_TRACKING_URI == local
    assert tracking.tracking_uri("") == local
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    assert tracking.tracking_uri(None) == "http://tracking.example:5000"
    assert tracking.tracking_uri("sqlite:///runs/m.db") == f"sqlite:///{tmp_path / 'runs' / 'm.db'}"
    assert tracking.tracking_uri("sqlite:////abs/m.db") == "sqlite:////abs/m.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///env.db")
    assert tracking.tracking_uri(None) == f"sqlite:///{tmp_path / 'env.db'}"
    assert list(tmp_path.iterdir()) == []


class _FakeMlflow(http.server.BaseHTTPRequestHandler):
    """Answers the pre-flight's API call as an MLflow server would, by the first path segment:
    /mlflow/ 200 with MLflow's JSON, /auth/ 401, /perm/ 403 (a user without permission),
    /host/ 403 (the Host check, MLflow's own text), /html/ 200 with a web page, /busy/ 503;
    every path's /health answers 200 "OK" as MLflow does for any Host. Records each request."""

    requests: list = []
    ANSWERS = {
        "mlflow": (200, "application/json", '{"experiments": []}'),
        "auth": (401, "application/json", '{"error_code": "UNAUTHENTICATED", "message": "You are not authenticated."}'),
        "perm": (403, "application/json", '{"error_code": "PERMISSION_DENIED", "message": "Permission denied"}'),
        "host": (403, "text/plain", "Invalid Host header - possible DNS rebinding attack detected"),
        "html": (200, "text/html", "<html>a login page</html>"),
        "busy": (503, "text/plain", "try later"),
    }

    def do_GET(self):
        type(self).requests.append((self.path, self.headers.get("Host"), self.headers.get("Authorization")))
        prefix, _, rest = self.path.lstrip("/").partition("/")
        if rest == "health":
            status, kind, body = 200, "text/plain", "OK"
        elif rest.startswith("api/2.0/mlflow/experiments/search?") and prefix in self.ANSWERS:
            status, kind, body = self.ANSWERS[prefix]
        else:
            status, kind, body = 404, "text/plain", "no"
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_mlflow():
    """Port of a local HTTP server that answers the pre-flight call like an MLflow server (`_FakeMlflow`)."""
    _FakeMlflow.requests = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FakeMlflow)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def no_mlflow_credentials(monkeypatch):
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN",
                 "MLFLOW_TRACKING_AUTH", "MLFLOW_TRACKING_AWS_SIGV4"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", "/nonexistent")  # no ~/.mlflow/credentials


def test_check_tracking_uri(monkeypatch, tmp_path, fake_mlflow, no_mlflow_credentials):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    monkeypatch.setattr(tracking, "CONNECT_TIMEOUT_S", 0.5)
    (tmp_path / "notes.txt").write_text("not a database")
    server = f"http://127.0.0.1:{fake_mlflow}"
    refused = {
        "databricks-x://host": (ConfigError, "tracking.uri: unsupported scheme"),
        f"sqlite:///{tmp_path / 'missing' / 'mlflow.db'}": (ValueError, "does not exist"),
        "sqlite://": (ValueError, "in-memory"),
        f"sqlite:///{tmp_path / 'notes.txt'}": (ValueError, "not a SQLite database"),
        f"http://127.0.0.1:{_closed_port()}": (TrackingUnavailable, "unreachable: .*Connection refused"),
        f"{server}/other": (ValueError, "404, so this is not an MLflow tracking server"),
        f"{server}/html": (ValueError, "not an MLflow tracking server"),
        f"{server}/auth": (ConfigError, "refused no credentials \\(401 Unauthorized.*MLFLOW_TRACKING_USERNAME"),
        "http://127.0.0.1:99999": (ConfigError, "not a valid URL"),
        f"{server}/perm": (ConfigError, "403 Forbidden.*lacks permission"),
        f"{server}/host": (ConfigError, f"refuses the Host header '127.0.0.1:{fake_mlflow}'.*--allowed-hosts"),
        f"{server}/busy": (TrackingUnavailable, "answered 503"),
        "http://:5000": (ConfigError, "names no host"),
        f"postgresql://user@127.0.0.1:{_closed_port()}/db": (TrackingUnavailable, "unreachable"),
        "mlruns": (ValueError, "MLFLOW_ALLOW_FILE_STORE"),
        (tmp_path / "store").as_uri(): (ValueError, "MLFLOW_ALLOW_FILE_STORE"),
    }
    for uri, (error, message) in refused.items():
        with pytest.raises(error, match=message) as info:
            tracking.check_tracking_uri(uri)
        assert "\n" not in str(info.value)
    # /health alone passes nothing: every refused server path above answers it with 200.
    assert not [p for p, _, _ in _FakeMlflow.requests if p.endswith("/health")]
    # One request per check, no retries (503 is one MLflow's client would retry).
    assert [p.split("/")[1] for p, _, _ in _FakeMlflow.requests] == ["other", "html", "auth", "perm", "host", "busy"]
    tracking.check_tracking_uri(f"sqlite:///{tmp_path / 'new.db'}")
    tracking.check_tracking_uri(f"{server}/mlflow/")
    assert _FakeMlflow.requests[-1] == ("/mlflow/api/2.0/mlflow/experiments/search?max_results=1",
                                        f"127.0.0.1:{fake_mlflow}", None)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    tracking.check_tracking_uri((tmp_path / "store").as_uri())
    with pytest.raises(ValueError, match="does not exist"):
        tracking.check_tracking_uri(str(tmp_path / "missing" / "mlruns"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_pre_flight_sends_mlflows_credentials_and_refuses_them_in_the_uri(monkeypatch, fake_mlflow,
                                                                          no_mlflow_credentials):
    """Basic auth from MLFLOW_TRACKING_USERNAME/PASSWORD, else a bearer MLFLOW_TRACKING_TOKEN, as
    MLflow's client sends them; a URI with credentials is refused without echoing them."""
    import base64

    server = f"http://127.0.0.1:{fake_mlflow}/mlflow"
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "bearer-secret-7")
    tracking.check_tracking_uri(server)
    assert _FakeMlflow.requests[-1][2] == "Bearer bearer-secret-7"
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "pw-secret-9")
    tracking.check_tracking_uri(server)
    assert _FakeMlflow.requests[-1][2] == "Basic " + base64.b64encode(b"alice:pw-secret-9").decode()
    with pytest.raises(ConfigError, match=r"refused the credentials \(401 Unauthorized") as info:
        tracking.check_tracking_uri(f"http://127.0.0.1:{fake_mlflow}/auth")
    assert "pw-secret-9" not in str(info.value)
    calls = len(_FakeMlflow.requests)
    for uri in (f"http://alice:pw-secret-9@127.0.0.1:{fake_mlflow}/mlflow", f"https://alice@127.0.0.1:{fake_mlflow}"):
        with pytest.raises(ConfigError, match="must not carry credentials.*MLFLOW_TRACKING_PASSWORD") as info:
            tracking.check_tracking_uri(uri)
        assert "pw-secret-9" not in str(info.value) and "alice" not in str(info.value)
    assert len(_FakeMlflow.requests) == calls  # refused before any request


def test_unanswered_server_times_out(monkeypatch):
    """A server that accepts the connection but never replies fails after the timeout, without retrying."""
    monkeypatch.setattr(tracking, "CONNECT_TIMEOUT_S", 0.5)
    monkeypatch.setattr(tracking, "ANSWER_TIMEOUT_S", 0.5)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        with pytest.raises(ConnectionError, match="unreachable: timed out .*0.5 s to answer, no retries"):
            tracking.check_tracking_uri(f"http://127.0.0.1:{listener.getsockname()[1]}")


def test_credentials_never_reach_mlflow_and_do_not_change_the_hash(client):
    config = {"name": "s3-run", "store": "s3://bucket/x",
              "storage_options": {"endpoint_url": "http://127.0.0.1:9", "key": "AKIA-TRACKING-KEY",
                                  "client_kwargs": {"aws_secret_access_key": "tracking-secret-99"}}}
    with mlflow.start_run() as run:
        tracking.log_config(config)
    params = client.get_run(run.info.run_id).data.params
    assert params["storage_options.key"] == "***" and params["storage_options.endpoint_url"] == "http://127.0.0.1:9"
    assert params["storage_options.client_kwargs.aws_secret_access_key"] == "***"
    logged = yaml.safe_load(mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/config.yaml"))
    assert logged["storage_options"]["client_kwargs"] == {"aws_secret_access_key": "***"}
    rotated = {**config, "storage_options": {**config["storage_options"], "key": "AKIA-ROTATED"}}
    assert tracking.config_hash(rotated) == tracking.config_hash(config)
    assert tracking.config_hash({**config, "kinds": ["ntk"]}) != tracking.config_hash(config)


def test_experiment_names_are_checked_and_kept_inside_the_artifact_folder(store, tmp_path):
    tracking.check_experiment_name("e" * 500)
    for bad in ("e" * 501, "", "  "):
        with pytest.raises(ConfigError, match="tracking.experiment: must be a non-empty name of at most 500"):
            tracking.check_experiment_name(bad)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    try:
        escaping = tracking.set_experiment("../../outside/" + "x" * 300, uri)
        plain = tracking.set_experiment("plain-name", uri)
    finally:  # the module's other tests log to the module's store and experiment
        mlflow.set_tracking_uri(store[0])
        mlflow.set_experiment(experiment_id=store[1])
    folder = os.path.realpath(tmp_path / "mlartifacts")
    location = os.path.realpath(escaping.artifact_location)
    assert os.path.dirname(location) == folder and len(os.path.basename(location)) <= 209
    assert plain.artifact_location == str(tmp_path / "mlartifacts" / "plain-name")
