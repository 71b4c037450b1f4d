"""Bad input, from the adversarial review: one line, the right exit code, and nothing written.

Every case runs against one world: a finished Gram store, an incomplete copy of it, a
SQLite MLflow store that already holds a solved experiment, data files good and bad,
and an S3 server (moto) on 127.0.0.1. Each case goes through the command line
(`raygram.cli.main.main` in-process, a few through the installed `raygram` command) or
the API (`build_gram`, `predict`, `load_config`), and must end in ONE line naming the
problem with exit code 2 (or the error class), leave every file and folder of the world
(stores, MLflow database, artifacts) and every key of the bucket as they were, and
never show a planted credential.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import time
import types

import numpy as np
import pytest
import yaml

from conftest import BIN, bucket_keys, free_port
from raygram import build_gram, load_config, predict
from raygram.cli.main import main
from raygram.config import TilingOptions
from raygram.errors import ConfigError, FingerprintMismatch, IllConditioned, SolveError, StoreError
from raygram.solve.source import GramSource
from raygram.store.gram_store import GramStore
from raygram.store.plan import Tile

SECRET = "plantedSECRET-7Qx2"  # a credential that must never be shown
CNN = [{"Conv": {"out_chan": 1, "filter_shape": [3, 3], "padding": "SAME"}}, "Relu", "GlobalAvgPool",
       {"Dense": {"out_dim": 1}}]
LONG = "y" * 300  # longer than any file system's name limit (255 bytes)


def _config(w, **changes) -> dict:
    config = {"name": "bad", "data": {"source": "digits", "train_sizes": [10], "test_size": 10},
              "kernels": {"cnn": {"architecture": CNN}}, "kinds": ["ntk"], "store": f"{w.root}/stores",
              "tiling": {"workers": 1, "tile_size": 10},
              "tracking": {"uri": f"sqlite:///{w.root}/mlflow.db", "experiment": "bad-input"}}
    return {**config, **changes}


@pytest.fixture(scope="module")
def world(ray_address, tmp_path_factory, s3_endpoint):
    """The files every case must leave alone, built for real: `raygram build` and `raygram solve`
    of the base config succeed here (so refusals below are about the change, not the set-up)."""
    root = tmp_path_factory.mktemp("world")
    cases = tmp_path_factory.mktemp("cases")
    w = types.SimpleNamespace(root=root, cases=cases, s3=s3_endpoint, closed=free_port(), secret=SECRET)
    w.config = cases / "experiment.yaml"
    w.config.write_text(yaml.safe_dump(_config(w)))
    assert main(["build", str(w.config), "-q"]) == 0
    assert main(["solve", str(w.config), "-q"]) == 0
    w.store = root / "stores" / "cnn"
    shutil.copytree(w.store, root / "partial" / "cnn")
    GramStore(root / "partial" / "cnn").forget_tiles([Tile("test_diag", 0)])
    shutil.copytree(w.store, root / "damaged" / "cnn")
    (root / "damaged" / "cnn" / "zarr.json").write_text("{not json")
    shutil.copytree(root / "partial" / "cnn", root / "locked" / "cnn")  # work to do: a build takes the lease
    lease = root / "locked" / "cnn" / "raygram.lock"
    lease.write_bytes(b"\x00garbage, not a lease record")
    future = time.time() + 10**7  # never provably stale while the cases run (a young file is refused)
    os.utime(lease, (future, future))
    (root / "file").write_text("a file, not a folder")
    (root / "filedir").mkdir()
    (root / "filedir" / "cnn").write_text("a file where the kernel's store would go")
    os.symlink(root / "loop2", root / "loop")
    os.symlink(root / "loop", root / "loop2")
    rng = np.random.default_rng(0)
    x, labels = rng.normal(size=(24, 8, 8)), np.arange(24) % 3
    np.savez(root / "labels.npz", x=x, y=np.where(np.arange(24) == 5, 10**9, labels))
    np.savez(root / "float_labels.npz", x=x, y=np.where(np.arange(24) == 5, 1e30, labels.astype(float)))
    np.savez(root / "complex.npz", x=x + 1j, y=labels)
    np.save(root / "x.npy", x[..., None])
    np.save(root / "complex.npy", x[..., None] + 1j)
    from PIL import Image

    for name in ("a", "b"):
        (root / "images" / name).mkdir(parents=True)
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(root / "images" / name / "0.png")
    w.build_config = cases / "build.yaml"
    w.build_config.write_text(yaml.safe_dump({
        "name": "bad-build", "data": {"source": "npy", "path": str(root / "x.npy")},
        "kernels": {"cnn": {"architecture": CNN}}, "store": f"{root}/build-stores"}))
    return w


def _tree(root) -> dict[str, str]:
    """{relative path: sha256 of a file, "dir" of a folder, the target of a link} under `root`."""
    out = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            key = os.path.relpath(path, root)
            if os.path.islink(path):
                out[key] = "-> " + os.readlink(path)
            elif os.path.isdir(path):
                out[key] = "dir"
            else:
                with open(path, "rb") as f:
                    out[key] = hashlib.sha256(f.read()).hexdigest()
    return out


def s3_options(w, **extra) -> str:
    """--set value of storage_options for the moto server, with the planted credential."""
    options = {"endpoint_url": w.s3, "key": "AKIAPLANTED", "secret": w.secret,
               "client_kwargs": {"region_name": "us-east-1"}, **extra}
    return "storage_options=" + json.dumps(options)


def cli(*argv, config="config"):
    """A command line: argv items are format strings over the world (`{root}`, ...); the config
    file (`config` or `build_config`) follows the command; callables get the world."""
    def make(w):
        items = [a(w) if callable(a) else a.format(**vars(w)) for a in argv]
        return [items[0], str(getattr(w, config)), "-q"] + [x for item in items[1:] for x in ("--set", item)]
    return make


def raw(*argv):
    """A command line taken as it is (status, verify): format strings over the world."""
    return lambda w: [a(w) if callable(a) else a.format(**vars(w)) for a in argv]


def closed_s3(w) -> str:
    """JSON storage options of an S3 endpoint on a closed port of 127.0.0.1, with short timeouts."""
    return json.dumps({"endpoint_url": f"http://127.0.0.1:{w.closed}", "key": "AKIAPLANTED", "secret": w.secret,
                       "config_kwargs": {"connect_timeout": 1, "read_timeout": 1, "retries": {"max_attempts": 1}}})

# (command line, exit code, the one line's pattern)
CLI = {
    # names MLflow refuses when the run starts
    "experiment name over 500 characters": (cli("run", "tracking.experiment=" + "e" * 600), 2,
                                            "tracking.experiment: must be a non-empty name of at most 500"),
    "config name over 500 characters (the default experiment)": (
        cli("run", "name=" + "n" * 600, "tracking.experiment=null"), 2, "tracking.experiment: .* got 600 characters"),
    # paths
    "data.path a symlink loop": (cli("run", "data.source=npz", "data.path={root}/loop"), 2,
                                 "data.path: .*/loop: Too many levels of symbolic links"),
    "data.path component over 255 characters": (cli("run", "data.source=npz", "data.path={root}/" + LONG), 2,
                                                "data.path: .*: File name too long"),
    "store component over 255 characters": (cli("run", "store={root}/" + LONG), 2,
                                            "store at .*: File name too long"),
    "store is a file": (cli("run", "store={root}/file"), 2,
                        "cannot write to the store at .*/file is a file, not a folder"),
    "kernel store is a file": (cli("run", "store={root}/filedir"), 2, "filedir/cnn is a file, not a folder"),
    "store under a symlink loop": (cli("run", "store={root}/loop/stores"), 2, "Too many levels of symbolic links"),
    "unknown URL scheme": (cli("run", "store=foo://bucket/x"), 2, "cannot open the store at foo://bucket/x/cnn: .*foo"),
    "storage_options for a local store": (cli("run", "storage_options={{endpoint_url: 'http://127.0.0.1:9'}}"), 2,
                                          "storage_options: fsspec options are for object-store URLs"),
    "storage_options not a mapping (a pasted secret)": (cli("run", "storage_options=" + SECRET), 2,
                                                        "storage_options: must be a mapping .* got a str"),
    "secret in an override that is not YAML": (cli("run", "storage_options.secret=[" + SECRET), 2,
                                               r"override storage_options.secret: value \*\*\* is not valid YAML"),
    # Ray resources
    "more GPUs per worker than the cluster has": (cli("run", "store={root}/fresh", "tiling.gpus_per_worker=4"), 2,
                                                  "tiling.gpus_per_worker: each worker asks for 4 GPUs"),
    "more CPUs per worker than the cluster has": (cli("run", "store={root}/fresh", "tiling.cpus_per_worker=10000"),
                                                  2, "tiling.cpus_per_worker: each worker asks for 10000 CPUs"),
    # fingerprints
    "run with another seed into a finished store": (cli("run", "data.seed=1"), 2,
                                                   "built for another configuration.* x_train: store has"),
    "solve with another seed": (cli("solve", "data.seed=1"), 2,
                                r"built for other settings .* x_train: store has .* \(the inputs differ"),
    "solve with another architecture": (
        cli("solve", "kernels.cnn.architecture=[{{Conv: {{out_chan: 2, filter_shape: [3, 3], padding: SAME}}}}, Relu, "
                     "GlobalAvgPool, {{Dense: {{out_dim: 1}}}}]"), 2, "architecture: store has"),
    "solve with other kinds": (cli("solve", "kinds=[nngp]"), 2,
                               r'kinds: store has \["ntk"\], this build has \["nngp"\]'),
    "solve with another dtype": (cli("solve", "dtype=float32"), 2, 'dtype: store has "float64"'),
    "solve with rotated test images": (cli("solve", "data.test_transform=C4"), 2, "x_test: store has"),
    "solve with unstandardised data": (cli("solve", "data.standardize=false"), 2, "x_train: store has"),
    "solve without a store": (cli("solve", "store={root}/nothing"), 2, "no Gram store at .*/nothing/cnn"),
    "solve from an incomplete store": (cli("solve", "store={root}/partial"), 2, r"is incomplete \(\d+/\d+ tiles\)"),
    # values accepted before though wrong
    "out_chan -1": (cli("run", "kernels.cnn.architecture=[{{Conv: {{out_chan: -1, filter_shape: [3, 3]}}}}, Relu, "
                               "GlobalAvgPool, {{Dense: {{out_dim: 1}}}}]"), 2,
                    r"kernels.cnn.architecture\[0\].Conv.out_chan: must be an integer >= 1, got -1"),
    "out_dim 0": (cli("run", "kernels.cnn.architecture=[Flatten, {{Dense: {{out_dim: 0}}}}]"), 2,
                  r"kernels.cnn.architecture\[1\].Dense.out_dim: must be an integer >= 1, got 0"),
    "out_chan 0": (cli("run", "kernels.cnn.architecture=[{{Conv: {{out_chan: 0, filter_shape: [3, 3]}}}}, Relu, "
                              "GlobalAvgPool, {{Dense: {{out_dim: 1}}}}]"), 2,
                   r"kernels.cnn.architecture\[0\].Conv.out_chan: must be an integer >= 1, got 0"),
    "a filter larger than the 8x8 images with VALID padding": (
        cli("run", "kernels.cnn.architecture=[{{Conv: {{out_chan: 1, filter_shape: [9, 9], padding: VALID}}}}, Relu, "
                   "GlobalAvgPool, {{Dense: {{out_dim: 1}}}}]"), 2,
        r"kernels.cnn.architecture: layer 0 \(Conv\) gives empty outputs of shape \(0, 0, 1\) from inputs of "
        r"shape \(8, 8, 1\)"),
    "a pooling window larger than the images": (
        cli("run", "kernels.cnn.architecture=[{{Conv: {{out_chan: 1, filter_shape: [3, 3], padding: SAME}}}}, Relu, "
                   "{{AvgPool: {{window_shape: [9, 9]}}}}, GlobalAvgPool, {{Dense: {{out_dim: 1}}}}]"), 2,
        r"kernels.cnn.architecture: layer 2 \(AvgPool\) gives empty outputs"),
    "strides 0": (
        cli("run", "kernels.cnn.architecture=[{{Conv: {{out_chan: 1, filter_shape: [3, 3], strides: [0, 0]}}}}, "
                   "Relu, GlobalAvgPool, {{Dense: {{out_dim: 1}}}}]"), 2,
        r"kernels.cnn.architecture: does not accept inputs of shape \(8, 8, 1\): layer 0 \(Conv\) .*divide by zero"),
    "tile_size true": (cli("run", "tiling.tile_size=true"), 2,
                       "tiling.tile_size: must be an integer >= 1 or null, got True"),
    "negative tol": (cli("run", "solver.tol=-1"), 2, "solver.tol: must be > 0, got -1"),
    "negative memory_budget": (cli("run", "solver.memory_budget=-5"), 2,
                               "solver.memory_budget: must be a positive number of bytes"),
    # data that would exhaust the driver's memory
    "a label of 10^9": (cli("run", "data.source=npz", "data.path={root}/labels.npz"), 2,
                        r"labels must be class indices 0..C-1 with C <= 1000 .*; label 5 is 1000000000"),
    "a float label of 10^30": (cli("run", "data.source=npz", "data.path={root}/float_labels.npz"), 2,
                               "labels must be class indices 0..C-1 .* label 5 is 1e"),
    "targets over the memory budget": (cli("run", "solver.memory_budget=1KiB"), 2,
                                       r"data \(labels\): 10 classes: targets \(10, 10\) .* more than"),
    "image_folder resized to 10^7 pixels a side": (
        cli("run", "data.source=image_folder", "data.path={root}/images", "data.options={{size: 10000000}}",
            "data.train_sizes=[1]", "data.test_size=1"), 2, "image_folder: size: 2 images of 10000000x10000000"),
    "QM9 on a grid of bandwidth 10^5": (
        cli("run", "data.source=qm9", "data.test_transform=null", "data.options={{bandwidth: 100000, molecules: 60}}",
            "data.train_sizes=[10]", "data.test_size=10"), 2, "data.options.bandwidth: the signals of 20 molecules"),
    "complex images": (cli("run", "data.source=npz", "data.path={root}/complex.npz"), 2,
                       "images must be numbers, got dtype complex128"),
    # damaged stores: a zarr.json that is not zarr metadata, a lease file that is not a lease record
    "run into a store whose zarr.json is corrupt": (cli("run", "store={root}/damaged"), 2,
                                                    "damaged/cnn/zarr.json is not readable zarr group metadata"),
    "solve from a store whose zarr.json is corrupt": (cli("solve", "store={root}/damaged"), 2,
                                                      "damaged/cnn/zarr.json is not readable zarr group metadata"),
    "status of a store whose zarr.json is corrupt": (raw("status", "{root}/damaged/cnn"), 2,
                                                     "zarr.json is not readable zarr group metadata"),
    "verify a store whose zarr.json is corrupt": (raw("verify", "{root}/damaged/cnn"), 2,
                                                  "zarr.json is not readable zarr group metadata"),
    "run into a store whose lease file is corrupt": (
        cli("run", "store={root}/locked"), 2,
        r"the build lease .*/locked/cnn/raygram.lock cannot be read .* delete it now: rm .*/locked/cnn/raygram.lock$"),
    "build: a store whose lease file is corrupt": (
        cli("build", "store={root}/locked"), 2, r"cannot be read .* delete it now: rm .*/locked/cnn/raygram.lock$"),
    # object stores (moto on 127.0.0.1; a closed port for an unreachable endpoint)
    "bucket missing": (cli("run", "store=s3://nobucket/x", lambda w: s3_options(w)), 2,
                       "bucket 'nobucket' does not exist"),
    "unreachable S3 endpoint": (cli("run", "store=s3://grams/x", lambda w: "storage_options=" + closed_s3(w)), 2,
                                "cannot reach the store at s3://grams/x/cnn: EndpointConnectionError"),
    "S3 without credentials": (cli("run", "store=s3://grams/x", lambda w: f"storage_options={{endpoint_url: {w.s3}}}"),
                               2, "NoCredentialsError: Unable to locate credentials; give credentials as "
                                  "AWS_ACCESS_KEY_ID"),
    # build-only configs and the build command
    "build: dtype blah": (cli("build", "dtype=blah", config="build_config"), 2, "dtype: must be one of"),
    "build: workers two": (cli("build", "tiling.workers=two", config="build_config"), 2,
                           "tiling.workers: must be an integer >= 1 or null, got 'two'"),
    "build: a bad layer order": (
        cli("build", "kernels.cnn.architecture=[{{GroupConv: {{out_chan: 1, filter_shape: [3, 3], group: C4}}}}, "
                     "GroupPool, {{Dense: {{out_dim: 1}}}}]", config="build_config"), 2,
        "does not accept inputs of shape"),
    "build: complex .npy inputs": (cli("build", "data.path={root}/complex.npy", config="build_config"), 2,
                                   "must hold one array of real numbers .* complex128"),
    "build: the label of 10^9 exits as from run": (cli("build", "data.source=npz", "data.path={root}/labels.npz"), 2,
                                                  "labels must be class indices 0..C-1"),
    "build: store is a file": (cli("build", "store={root}/file", config="build_config"), 2, "is a file, not a folder"),
    "build: more GPUs per worker than the cluster has": (
        cli("build", "tiling.gpus_per_worker=2", config="build_config"), 2, "tiling.gpus_per_worker"),
    "check-convergence: experiment name over 500 characters": (
        cli("check-convergence", "tracking.experiment=" + "e" * 600), 2, "tracking.experiment: must be"),
    # store commands
    "status of an unreachable S3 store": (
        raw("status", "s3://grams/x", "--storage-options", closed_s3), 2, "cannot reach the store"),
    "verify a path that is a file": (raw("verify", "{root}/file"), 2, "cannot read the store at .*file is a file"),
    "status with storage_options for a local store": (
        raw("status", "{root}/stores/cnn", "--storage-options", '{{"secret": "' + SECRET + '"}}'), 2,
        "storage_options are for object-store URLs"),
    "status of a symlink loop": (raw("status", "{root}/loop"), 2, "Too many levels of symbolic links"),
}

NO_CREDENTIALS = {"AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/credentials", "AWS_CONFIG_FILE": "/nonexistent/config",
                  "AWS_EC2_METADATA_DISABLED": "true"}  # and no instance metadata lookups (169.254.169.254)


@pytest.fixture
def untouched(world):
    """Asserts after the test that the world's files, the bucket's keys and the working directory
    of the cases (where a relative path would land; `api.yaml` is the API cases' own config) are
    unchanged."""
    def cases():
        return {k: v for k, v in _tree(world.cases).items() if k != "api.yaml"}

    before, keys, here = _tree(world.root), bucket_keys(world.s3), cases()
    yield world
    assert _tree(world.root) == before
    assert bucket_keys(world.s3) == keys
    assert cases() == here


@pytest.mark.parametrize("case", list(CLI))
def test_bad_input_through_the_command_line(case, untouched, capsys, monkeypatch):
    argv, code, pattern = CLI[case]
    for key in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(key)
    for key, value in NO_CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(untouched.cases)
    assert main(argv(untouched)) == code
    out, err = capsys.readouterr()
    assert err.startswith("raygram: error: ") and err.count("\n") == 1, err
    assert re.search(pattern, err), err
    assert SECRET not in out + err


def _file(w, config) -> str:
    path = w.cases / "api.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def _images(n=4):
    return np.ones((n, 6, 6, 1))


def _kernel(asymmetric=False, nan=False, singular=False, n=6):
    """A positive definite (n, n) Gram, with one entry off its mirror, one not a number, or a repeated point."""
    x = np.random.default_rng(0).normal(size=(n, n + 2))
    if singular:
        x[5] = x[2]
    k = x @ x.T
    if asymmetric:
        k[1, 3] *= 1 + 1e-6
    if nan:
        k[2, 4] = np.nan
    return k


# (call on the world, error class, pattern of its message)
API = {
    "build_gram: complex inputs": (lambda w: build_gram(w.root / "new", CNN, _images() + 1j),
                                   ConfigError, "x_train must hold real numbers .* imaginary part"),
    "build_gram: out_chan -1": (lambda w: build_gram(w.root / "new", [{"Conv": {"out_chan": -1,
                                                                                "filter_shape": [3, 3]}},
                                                                    "Flatten", {"Dense": {"out_dim": 1}}], _images()),
                                ConfigError, r"architecture\[0\].Conv.out_chan: must be an integer >= 1"),
    "build_gram: a filter larger than the images (VALID)": (
        lambda w: build_gram(w.root / "new", [{"Conv": {"out_chan": 1, "filter_shape": [9, 9], "padding": "VALID"}},
                                              "Relu", "Flatten", {"Dense": {"out_dim": 1}}], _images()),
        ConfigError, r"architecture: layer 0 \(Conv\) gives empty outputs of shape \(0, 0, 1\)"),
    "build_gram: store is a file": (lambda w: build_gram(w.root / "file" / "gram", CNN, _images()),
                                    StoreError, "is a file, not a folder"),
    "build_gram: unknown URL scheme": (lambda w: build_gram("foo://bucket/g", CNN, _images()),
                                       StoreError, "Protocol not known"),
    "build_gram: storage_options for a local folder": (
        lambda w: build_gram(w.root / "new", CNN, _images(), storage_options={"secret": SECRET}),
        ConfigError, "storage_options are for object-store URLs"),
    "build_gram: dtype blah": (lambda w: build_gram(w.root / "new", CNN, _images(), dtype="blah"),
                               ConfigError, "dtype must be one of"),
    "build_gram: ragged inputs": (lambda w: build_gram(w.root / "new", CNN, [[1.0, 2.0], [3.0]]),
                                  ConfigError, "x_train must be an array"),
    "build_gram: kinds not a list": (lambda w: build_gram(w.root / "new", CNN, _images(), kinds=3),
                                     ConfigError, "kinds must be distinct names"),
    "build_gram: tiling as a mapping": (lambda w: build_gram(w.root / "new", CNN, _images(), tiling={"tile_size": 2}),
                                        ConfigError, "tiling must be a TilingOptions"),
    "build_gram: other inputs into a finished store": (
        lambda w: build_gram(w.store, CNN, _images(10), _images(10), kinds=["ntk"], tiling=TilingOptions(tile_size=10)),
        FingerprintMismatch, "x_train: store has"),
    "predict: targets of the wrong length": (
        lambda w: predict(GramStore(w.store, read_only=True), np.zeros(5), kinds=["ntk"]), ConfigError, "10"),
    "predict: negative tol": (lambda w: predict(GramStore(w.store, read_only=True), np.zeros(10), kinds=["ntk"],
                                                tol=-1), ConfigError, "solver.tol: must be > 0"),
    "predict: an asymmetric kernel": (
        lambda w: predict(GramSource.from_arrays({"ntk": _kernel(asymmetric=True)}, {"ntk": np.ones((2, 6))},
                                                 {"ntk": np.ones(2)}), np.zeros(6), kinds=["ntk"]),
        ConfigError, r"train\['ntk'\] is not symmetric: \|K - K.T\| reaches"),
    "predict: a NaN in the kernel": (
        lambda w: predict(GramSource.from_arrays({"ntk": _kernel(nan=True)}, {"ntk": np.ones((2, 6))},
                                                 {"ntk": np.ones(2)}), np.zeros(6), kinds=["ntk"]),
        ConfigError, r"train\['ntk'\] has 1 non-finite values"),
    "predict: diag_reg 0 on a singular kernel (eigh)": (
        lambda w: predict(GramSource.from_arrays({"ntk": _kernel(singular=True)}, {"ntk": np.ones((2, 6))},
                                                 {"ntk": np.ones(2)}), np.zeros(6), kinds=["ntk"], diag_reg=0.0,
                          times=float("inf"), compute_variance=False, method="eigh"),
        SolveError, r"^the kernel is singular; use diag_reg > 0$"),
    "predict: diag_reg 0 on a singular kernel (cholesky)": (
        lambda w: predict(GramSource.from_arrays({"ntk": _kernel(singular=True)}, {"ntk": np.ones((2, 6))},
                                                 {"ntk": np.ones(2)}), np.zeros(6), kinds=["ntk"], diag_reg=0.0,
                          times=float("inf"), compute_variance=False, method="cholesky"),
        IllConditioned, r"not positive definite .*; increase diag_reg$"),
    "load_config: storage_options a pasted secret": (
        lambda w: load_config(_file(w, _config(w, storage_options=SECRET))), ConfigError, "storage_options: must be"),
    "load_config: out_chan -1": (
        lambda w: load_config(_file(w, _config(w, kernels={"cnn": {"architecture": [
            {"Conv": {"out_chan": -1, "filter_shape": [3, 3]}}, "GlobalAvgPool", {"Dense": {"out_dim": 1}}]}}))),
        ConfigError, r"kernels.cnn.architecture\[0\].Conv.out_chan"),
    "load_config: data.path a symlink loop": (
        lambda w: load_config(_file(w, _config(w, data={"source": "npz", "path": str(w.root / "loop"),
                                                        "train_sizes": [10], "test_size": 10}))),
        ConfigError, "Too many levels of symbolic links"),
}


@pytest.mark.parametrize("case", list(API))
def test_bad_input_through_the_api(case, untouched):
    call, error, pattern = API[case]
    with pytest.raises(error) as caught:
        call(untouched)
    message = str(caught.value)
    assert re.search(pattern, " ".join(message.split())), message
    assert SECRET not in message
    # one line, except the fingerprint table (one line per differing field, joined by the CLI)
    assert "\n" not in message or isinstance(caught.value, FingerprintMismatch), message


INSTALLED = {
    "experiment name over 500 characters": cli("run", "tracking.experiment=" + "e" * 600),
    "store is a file": cli("run", "store={root}/file"),
    "unreachable S3 endpoint": CLI["unreachable S3 endpoint"][0],
}


@pytest.mark.parametrize("case", list(INSTALLED))
def test_bad_input_through_the_installed_command(case, untouched):
    """The installed `raygram` command (a process of its own, with its own local Ray): same line, same code."""
    argv = INSTALLED[case](untouched)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")} | NO_CREDENTIALS
    out = subprocess.run([str(BIN / "raygram"), *argv], capture_output=True, text=True, cwd=untouched.cases,
                         env=env, timeout=600)
    pattern = CLI[case][2] if case in CLI else ""
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith("raygram: error: ") and out.stderr.count("\n") == 1, out.stderr
    assert re.search(pattern, out.stderr), out.stderr
    assert SECRET not in out.stdout + out.stderr
