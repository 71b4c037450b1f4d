"""Experiment configs: validation, overrides, and bad input refused by the CLI with nothing written."""
import math
import os
import pathlib
import subprocess
import sys

import pytest
import yaml

from raygram import config as experiment
from raygram.cli.main import main
from raygram.config import SolverOptions, TilingOptions
from raygram.errors import ConfigError

ROOT = pathlib.Path(__file__).resolve().parents[1]
QUICKSTART = yaml.safe_load((ROOT / "configs" / "quickstart.yaml").read_text())


def test_quickstart_resolves_with_defaults_and_overrides(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = experiment.validate(QUICKSTART, ["data.train_sizes=[10, 20]", "solver.diag_reg=1e-2",
                                              "tiling.workers=1", "solver.memory_budget=2GiB"])
    assert config.data.train_sizes == (10, 20) and config.solver.diag_reg == (1e-2,)
    assert config.solver.times == "auto" and config.solver.memory_budget == 2 * 2**30  # times left out: auto
    assert config.store == str(tmp_path / "raygram-runs/quickstart/stores")
    assert config.tracking.experiment == "raygram-quickstart" and config.tiling.max_attempts == 3
    assert set(config.kernels) == {"cnn", "c4_gcnn", "cnn_augmented"}
    assert isinstance(config.tiling, TilingOptions) and isinstance(config.solver, SolverOptions)
    assert config.tiling == TilingOptions(workers=1)  # every other key at its default
    assert experiment.validate(config.to_dict()) == config  # the plain form round-trips
    for name in ("configs/mnist_rotated.yaml", "configs/pathmnist.yaml", "configs/nct_crc_he.yaml",
                 "configs/qm9.yaml"):
        raw = yaml.safe_load((ROOT / name).read_text())
        if raw["data"]["source"] not in ("mnist", "qm9"):
            raw["data"]["path"] = str(tmp_path)
        assert experiment.validate(raw).name, name


def test_option_objects_check_themselves_like_yaml_keys():
    """The same check runs for a YAML key and for the keyword of the same name in Python."""
    with pytest.raises(ConfigError, match=r"tiling.tile_size: must be an integer >= 1 or null, got True"):
        TilingOptions(tile_size=True)
    with pytest.raises(ConfigError, match=r"tiling.tile_size: must be an integer >= 1 or null, got True"):
        experiment.validate(QUICKSTART, ["tiling.tile_size=true"])
    with pytest.raises(ConfigError, match=r"solver.tol: must be > 0, got -1"):
        SolverOptions(tol=-1)
    with pytest.raises(ConfigError, match=r"solver.memory_budget: must be a positive number of bytes"):
        SolverOptions(memory_budget=-5)
    assert SolverOptions(diag_reg=0.5, times=["inf", 3]).diag_reg == (0.5,)
    assert SolverOptions(times=["inf", 3]).times == (math.inf, 3.0)
    assert SolverOptions(memory_budget="1.5KiB").memory_budget == 1536


def test_print_config_prints_the_resolved_config_and_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = main(["run", str(ROOT / "configs" / "quickstart.yaml"), "--print-config", "--set", "tiling.workers=2"])
    printed = yaml.safe_load(capsys.readouterr().out)
    assert code == 0 and list(tmp_path.iterdir()) == []
    assert printed["tiling"]["workers"] == 2 and printed["solver"]["tol"] == 1e-10
    assert printed["store"] == str(tmp_path / "raygram-runs/quickstart/stores")
    assert experiment.validate(printed).to_dict() == printed


def test_ray_jobs_refuse_relative_paths(tmp_path):
    with pytest.raises(ConfigError, match="store: 'runs/x' is relative; in a Ray job"):
        experiment.validate({**QUICKSTART, "store": "runs/x", "tracking": {"uri": "sqlite:////tmp/m.db"}},
                            relative_paths=False)
    with pytest.raises(ConfigError, match="tracking.uri: a Ray job needs an absolute tracking URI"):
        experiment.validate({**QUICKSTART, "store": str(tmp_path)}, ["tracking.uri=sqlite:///mlflow.db"],
                            relative_paths=False)


def _config_file(tmp_path, change=None, text=None):
    config = yaml.safe_load(yaml.safe_dump(QUICKSTART))
    config["store"] = str(tmp_path / "stores")
    config["tracking"] = {"uri": f"sqlite:///{tmp_path}/mlflow.db", "experiment": "bad-input"}
    config["data"]["train_sizes"] = [10]
    config["data"]["test_size"] = 10
    if change:
        change(config)
    path = tmp_path / "experiment.yaml"
    path.write_text(text if text is not None else yaml.safe_dump(config))
    return path


def _set(path, value):
    def change(config):
        node = config
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return change


BAD = {
    "unknown key": (_set(["solver", "ridge"], 1.0), [], r"solver: unknown key\(s\) \['ridge'\]; allowed:"),
    "unknown top key": (_set(["epochs"], 3), [], r"unknown key\(s\) \['epochs'\]"),
    "wrong type": (_set(["data", "test_size"], "many"), [], "data.test_size: must be an integer >= 1"),
    "missing key": (lambda c: c["data"].pop("train_sizes"), [], "data.train_sizes: required key is missing"),
    "unknown source": (_set(["data", "source"], "cifar"), [], "data.source: must be one of"),
    "missing data file": (lambda c: c["data"].update(source="npz", path="nowhere/x.npz"), [],
                          "data.path: .*nowhere/x.npz does not exist"),
    "unknown layer": (_set(["kernels", "cnn", "architecture"], ["Conv2", {"Dense": {"out_dim": 1}}]), [],
                      "unknown layer 'Conv2'"),
    "incompatible layer order": (_set(["kernels", "cnn", "architecture"],
                                      [{"GroupConv": {"out_chan": 1, "filter_shape": [3, 3], "group": "C4"}},
                                       "GroupPool", {"Dense": {"out_dim": 1}}]), [],
                                 "kernels.cnn.architecture: does not accept inputs of shape"),
    "no readout": (_set(["kernels", "cnn", "architecture"],
                        [{"Conv": {"out_chan": 1, "filter_shape": [3, 3], "padding": "SAME"}}]), [],
                   "must end in one output per input"),
    "augmentation not last": (_set(["kernels", "cnn", "architecture"],
                                   [{"FullAugmentation": {"group": "C4"}}, "GlobalAvgPool",
                                    {"Dense": {"out_dim": 1}}]), [], "must be the last entry"),
    "AtomSum not first": (_set(["kernels", "cnn", "architecture"], ["Flatten", "AtomSum", {"Dense": {"out_dim": 1}}]),
                          [], "AtomSum\\): takes no arguments and must be the first entry"),
    "qm9 unknown option": (lambda c: c["data"].update(source="qm9", options={"size": 3}, test_transform=None), [],
                           r"data.options: unknown key\(s\) \['size'\] for source qm9"),
    "training size too large": (_set(["data", "train_sizes"], [5000]), [],
                                "largest training size 5000 plus validation_size 0 and test_size 10 "
                                "exceeds the 1797 examples"),
    "negative ridge": (None, ["solver.diag_reg=[-1]"], r"solver.diag_reg\[0\]: must be >= 0"),
    "negative time": (None, ["solver.times=[1, -2]"], r"solver.times\[1\]: must be >= 0"),
    "unknown kind": (None, ["kinds=[gp]"], r"kinds\[0\]: must be one of \['nngp', 'ntk'\]"),
    "unknown group": (None, ["data.test_transform=C5"], "data.test_transform: "),
    "bad memory size": (None, ["solver.memory_budget=lots"], "solver.memory_budget: must be a number of bytes"),
    "bad override": (None, ["solver.diag_reg"], "override 'solver.diag_reg' must look like key.path=value"),
    "unreachable tracking": (None, ["tracking.uri=http://127.0.0.1:9"], "127.0.0.1:9"),
    "tracking folder missing": (None, ["tracking.uri=sqlite:////nonexistent/dir/mlflow.db"], "/nonexistent/dir"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_one_line_error_nonzero_exit_nothing_written(case, tmp_path, capsys, monkeypatch):
    change, overrides, message = BAD[case]
    monkeypatch.chdir(tmp_path)
    path = _config_file(tmp_path, change)
    before = sorted(p.name for p in tmp_path.iterdir())
    code = main(["run", str(path), "-q"] + [a for o in overrides for a in ("--set", o)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("raygram: error: ") and err.count("\n") == 1, err
    assert __import__("re").search(message, err), err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_bad_files_from_the_command_line(tmp_path):
    """The installed `raygram` command: missing file and invalid YAML exit 2 with one line."""
    raygram = pathlib.Path(sys.executable).parent / "raygram"
    env = dict(os.environ)
    missing = subprocess.run([raygram, "run", str(tmp_path / "none.yaml")], capture_output=True, text=True,
                             env=env, cwd=tmp_path, timeout=300)
    assert missing.returncode == 2 and "config file" in missing.stderr and "does not exist" in missing.stderr
    broken = _config_file(tmp_path, text="name: [unclosed\n")
    invalid = subprocess.run([raygram, "run", str(broken)], capture_output=True, text=True, env=env,
                             cwd=tmp_path, timeout=300)
    assert invalid.returncode == 2 and "is not valid YAML" in invalid.stderr
    assert invalid.stderr.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["experiment.yaml"]


def test_credentials_are_redacted_and_never_echoed(tmp_path):
    secret = "s3cr3t-value-42"
    raw = {**QUICKSTART, "store": "s3://bucket/runs",
           "storage_options": {"endpoint_url": "http://127.0.0.1:9", "Secret_Access_Key": secret, "anon": False,
                               "client_kwargs": {"region_name": "eu", "aws_session_token": secret + "-t"},
                               "profile": None}}
    config = experiment.validate(raw)
    public = config.public_dict()["storage_options"]
    assert public == {"endpoint_url": "http://127.0.0.1:9", "Secret_Access_Key": "***", "anon": False,
                      "client_kwargs": {"region_name": "eu", "aws_session_token": "***"}, "profile": None}
    assert config.storage_options["Secret_Access_Key"] == secret and secret not in repr(config)
    assert config.secrets() == {secret, secret + "-t"}
    assert experiment.redact_text(f"failed with {secret}-t and {secret}", config.secrets()) == "failed with *** and ***"
    assert experiment.redact_config({"store": "s3://user:pw-1234@host/b"})["store"] == "s3://user:***@host/b"
    with pytest.raises(ConfigError) as caught:
        experiment.validate({**raw, "storage_options": secret})
    assert secret not in str(caught.value) and "storage_options: must be a mapping" in str(caught.value)
    with pytest.raises(ConfigError) as caught:
        experiment.validate(raw, [f"storage_options.client_kwargs.aws_secret_access_key=[{secret}"])
    assert secret not in str(caught.value) and "value *** is not valid YAML" in str(caught.value)
    with pytest.raises(ConfigError, match="storage_options: fsspec options are for object-store URLs"):
        experiment.validate({**raw, "store": str(tmp_path)})


def test_widths_paths_and_allocations_are_checked(tmp_path):
    with pytest.raises(ConfigError, match=r"kernels.cnn.architecture\[0\].Conv.out_chan: must be an integer >= 1, "
                                          "got -1"):
        experiment.validate(QUICKSTART, ["kernels.cnn.architecture=[{Conv: {out_chan: -1, filter_shape: [3, 3]}}, "
                                         "GlobalAvgPool, {Dense: {out_dim: 1}}]"])
    with pytest.raises(ConfigError, match=r"net\[1\].Dense.out_dim: must be an integer >= 1, got 2.5"):
        experiment.check_widths(["Flatten", {"Dense": {"out_dim": 2.5}}], "net")
    experiment.check_widths(["Relu", {"Dense": {"out_dim": 3}}, {"Dense": None}])  # other shapes are left alone
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    with pytest.raises(ConfigError, match="data.path: .*loop: Too many levels of symbolic links"):
        experiment.check_exists(str(tmp_path / "loop"), "data.path")
    with pytest.raises(ConfigError, match="data.path: .*: File name too long"):
        experiment.check_exists(str(tmp_path / ("x" * 300)), "data.path")
    with pytest.raises(ConfigError, match="data.path: .*absent does not exist"):
        experiment.check_exists(str(tmp_path / "absent"), "data.path")
    with pytest.raises(ConfigError, match=r"data: the targets \(10\^9\) would take 7.45 GiB, more than the 1 GiB"):
        experiment.check_allocation(8 * 10**9, "the targets (10^9)", "data", budget=2**30)
    experiment.check_allocation(2**30, "a GiB", "data", budget=2**30)


def test_input_checks_turn_reading_errors_into_one_config_error(tmp_path):
    with pytest.raises(ConfigError, match="Is a directory"):
        with experiment.input_checks():
            open(tmp_path)
    with pytest.raises(ConfigError, match="^solver.tol"):  # raygram's own errors pass unchanged
        with experiment.input_checks():
            SolverOptions(tol=0)
