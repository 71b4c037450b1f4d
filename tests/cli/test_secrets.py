"""Object-store credentials in `storage_options` never leave the process.

A key, a secret and a session token planted in a config (nested ones too) must not reach
MLflow (params, tags, config.yaml, any artifact; finished and failed runs alike),
`--print-config`, error lines or a config's repr, and must not change the config hash.
The experiment runs for real: a SQLite MLflow store, a Gram store on an S3 server (moto)
on 127.0.0.1 written by Ray workers.
"""
import json
import os
import pathlib

import mlflow
import yaml

from conftest import BUCKET
from raygram import load_config
from raygram.cli.main import main
from raygram.experiment.tracking import config_hash
from raygram.store.gram_store import GramStore

KEY, SECRET, TOKEN = "AKIAPLANTEDKEY0042", "planted-secret-Zq8xV3wT", "planted-token-Lm4wR9"
CNN = [{"Conv": {"out_chan": 1, "filter_shape": [3, 3], "padding": "SAME"}}, "Relu", "GlobalAvgPool",
       {"Dense": {"out_dim": 1}}]


def _config(tmp_path, endpoint, **changes) -> pathlib.Path:
    config = {"name": "secrets", "data": {"source": "digits", "train_sizes": [12], "test_size": 8},
              "kernels": {"cnn": {"architecture": CNN}}, "kinds": ["ntk"], "store": f"s3://{BUCKET}/secrets",
              "storage_options": {"endpoint_url": endpoint, "key": KEY, "secret": SECRET,
                                  "client_kwargs": {"region_name": "us-east-1", "aws_session_token": TOKEN}},
              "tiling": {"workers": 1, "tile_size": 6},
              "tracking": {"uri": f"sqlite:///{tmp_path}/mlflow.db", "experiment": "secrets"}, **changes}
    path = tmp_path / "secrets.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _hits(folder) -> list[str]:
    """Files under `folder` (the MLflow database included) that contain a planted credential."""
    found = []
    for root, _, files in os.walk(folder):
        for name in files:
            data = (pathlib.Path(root) / name).read_bytes()
            found += [f"{name}: {s}" for s in (KEY, SECRET, TOKEN) if s.encode() in data]
    return found


def test_credentials_are_redacted_everywhere_but_the_store_connection(ray_address, s3_endpoint, tmp_path, capsys,
                                                                      monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = _config(tmp_path, s3_endpoint)
    config = load_config(path)
    assert config.storage_options["client_kwargs"]["aws_session_token"] == TOKEN  # the store still gets them
    public = config.public_dict()["storage_options"]
    assert public == {"endpoint_url": s3_endpoint, "key": "***", "secret": "***",
                      "client_kwargs": {"region_name": "us-east-1", "aws_session_token": "***"}}
    assert SECRET not in repr(config)
    rotated = load_config(path, [f"storage_options.secret=another-{SECRET}", "storage_options.key=AKIAOTHER"])
    assert config_hash(rotated.to_dict()) == config_hash(config.to_dict())  # a new key still resumes

    assert main(["run", str(path), "--print-config"]) == 0
    printed = capsys.readouterr().out
    assert "secret: '***'" in printed and not [s for s in (KEY, SECRET, TOKEN) if s in printed]

    assert main(["run", str(path), "-q"]) == 0  # builds on S3 through the workers, solves, records
    # A run that fails after its MLflow run was created (CG stopped after one iteration).
    failing = ["--set", "solver.method=cg", "--set", "solver.max_iterations=1", "--set", "solver.tol=1e-30",
               "--set", "solver.preconditioner_rank=0"]
    assert main(["solve", str(path), "-q", *failing]) == 1
    out, err = capsys.readouterr()
    assert "raygram: failed: " in err and not [s for s in (KEY, SECRET, TOKEN) if s in out + err]

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("secrets").experiment_id],
                              "tags.mlflow.parentRunId IS NULL")
    assert sorted(r.info.status for r in runs) == ["FAILED", "FINISHED"]
    for run in runs:  # the configs were logged, redacted
        assert run.data.params["storage_options.secret"] == "***"
        assert run.data.params["storage_options.client_kwargs.aws_session_token"] == "***"
        text = mlflow.artifacts.load_text(f"{run.info.artifact_uri}/config.yaml")
        assert "endpoint_url" in text and "'***'" in text
    held = GramStore(f"s3://{BUCKET}/secrets/cnn", config.storage_options, read_only=True).fingerprint
    for run in runs:  # the data tag names the inputs the store holds
        tag = json.loads(run.data.tags["raygram.data"])
        assert tag["name"] == "digits" and (tag["x_train"], tag["x_test"]) == (held["x_train"], held["x_test"])
    assert os.listdir(tmp_path / "mlartifacts")
    assert _hits(tmp_path) == [f"secrets.yaml: {s}" for s in (KEY, SECRET, TOKEN)]  # only the config file itself
