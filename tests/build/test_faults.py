"""Gram builds under faults: killed driver, killed worker, failing tile, corrupt chunk, bad input."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml

from builds import CNN, EQUIVARIANT, images, read_blocks, snapshot
from raygram.config import TilingOptions
from raygram.build.lease import LOCK_KEY, BuildLease
from raygram.build.scheduler import build_gram
from raygram.errors import ConfigError, FingerprintMismatch, LeaseLost, StoreError, StoreLocked, TileFailed
from raygram.store.gram_store import GramStore
from raygram.store.plan import Tile

N, M = 11, 5


def raygram_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "raygram.cli", *args], capture_output=True, text=True,
                          env=env, timeout=600)


@pytest.fixture(scope="module")
def finished(ray_address, tmp_path_factory):
    """A finished CNN build (tile size 3) and its values, the reference for the fault tests."""
    path = tmp_path_factory.mktemp("finished") / "gram"
    x, x_test = images(N), images(M, seed=1)
    build_gram(path, CNN, x, x_test, progress=False, tiling=TilingOptions(tile_size=3, workers=2))
    return x, x_test, read_blocks(GramStore(path))


def assert_same_values(store, reference):
    got = read_blocks(store)
    assert got.keys() == reference.keys()
    for key, value in reference.items():
        np.testing.assert_array_equal(got[key], value, err_msg=str(key))


def test_driver_killed_mid_build_resumes_bit_identically(ray_address, tmp_path):
    """SIGKILL the driver, rerun: nothing written is recomputed; only in-flight tiles run twice."""
    x = images(60, size=10, seed=3)
    np.save(tmp_path / "x.npy", x)
    workers, max_inflight = 2, 2
    config = {"name": "killed", "kernels": {"gcnn": {"architecture": EQUIVARIANT}}, "store": str(tmp_path),
              "data": {"source": "npy", "path": str(tmp_path / "x.npy"), "standardize": False},
              "kinds": ["nngp", "ntk"], "tiling": {"tile_size": 4, "workers": workers, "max_inflight": max_inflight}}
    (tmp_path / "build.yaml").write_text(yaml.safe_dump(config))
    env = dict(os.environ, RAY_ADDRESS=ray_address)
    log = open(tmp_path / "driver.log", "w+")
    driver = subprocess.Popen([sys.executable, "-m", "raygram.cli", "build", str(tmp_path / "build.yaml"),
                               "-q", "-v"], stdout=log, stderr=subprocess.STDOUT, env=env)
    store = GramStore(tmp_path / "gcnn")
    deadline = time.time() + 300
    while time.time() < deadline and driver.poll() is None:
        if store.exists() and len(store.written_tiles()) >= 4:
            break
        time.sleep(0.05)
    assert driver.poll() is None, "the driver finished before it could be killed:\n" + open(log.name).read()
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    log.seek(0)
    dispatched = set(re.findall(r"dispatch (\S+) to worker", log.read()))
    # What was written before the kill is intact. Workers outlive their driver for a moment,
    # so a tile may be caught mid-write: values without their checksum, which is not written
    # (the resume recomputes it) and is the only problem allowed.
    problems = store.verify()
    assert all(p.startswith("checksum chunk missing") for p in problems.values()), problems
    assert len(problems) <= workers * max_inflight, problems
    written = store.written_tiles()
    total = len(list(store.plan.tiles()))
    assert 4 <= len(written) < total
    computed = []
    report = build_gram(tmp_path / "gcnn", EQUIVARIANT, x, progress=False,
                        on_tile=lambda r: computed.append(r["tile"]), tiling=TilingOptions(workers=workers))
    twice = {str(t) for t in computed} & dispatched
    assert not set(computed) & written, "a tile already in the store was recomputed"
    assert len(twice) <= workers * max_inflight, f"computed twice: {sorted(twice)}"
    assert report.tiles_computed + report.tiles_skipped == total
    build_gram(tmp_path / "whole", EQUIVARIANT, x, progress=False, tiling=TilingOptions(tile_size=4, workers=workers))
    assert_same_values(store, read_blocks(GramStore(tmp_path / "whole")))


def test_killed_worker_is_replaced_and_build_completes(finished, tmp_path):
    x, x_test, reference = finished
    killed = []

    def kill_first_worker(result):
        if not killed:
            killed.append(result["pid"])
            os.kill(result["pid"], signal.SIGKILL)

    report = build_gram(tmp_path / "gram", CNN, x, x_test, progress=False,
                        on_tile=kill_first_worker, tiling=TilingOptions(tile_size=3, workers=2))
    assert killed and any(w["died"] for w in report.workers)
    assert len(report.workers) == 3  # two workers and the replacement of the killed one
    assert_same_values(GramStore(tmp_path / "gram"), reference)


def test_tile_failing_repeatedly_stops_the_build_naming_it(ray_address, tmp_path):
    # 1e30 is a finite float32, but its square overflows: every tile touching point 7 is inf.
    x = images(N).reshape(N, -1).astype(np.float32)
    x[7] = 1e30
    architecture = [{"Dense": {"out_dim": 1}}, "Relu", {"Dense": {"out_dim": 1}}]
    with pytest.raises(TileFailed, match=r"tile train_train\[0,1\] failed 2 times.*non-finite"):
        build_gram(tmp_path / "gram", architecture, x, dtype="float32", progress=False, tiling=TilingOptions(tile_size=4, workers=1, max_attempts=2, max_inflight=1))
    store = GramStore(tmp_path / "gram")
    assert Tile("train_train", 0, 0) in store.written_tiles()
    assert BuildLease(store).holder() is None  # the failed build released its lease


def test_verify_finds_corrupt_and_missing_tiles_and_rebuild_repairs_only_them(finished, tmp_path):
    x, x_test, reference = finished
    build_gram(tmp_path / "gram", CNN, x, x_test, progress=False, tiling=TilingOptions(tile_size=3, workers=1))
    root = tmp_path / "gram"
    # Silent corruption: a valid chunk with other values (tile (0, 0)'s bytes in tile (1, 2)).
    (root / "ntk/train_train/c/1/2").write_bytes((root / "ntk/train_train/c/0/0").read_bytes())
    (root / "nngp/test_train/c/1/3").unlink()
    store = GramStore(root)
    problems = store.verify()
    assert problems == {Tile("train_train", 1, 2): "ntk chunk checksum mismatch",
                        Tile("test_train", 1, 3): "nngp chunk missing"}
    out = raygram_cli("verify", str(root))
    assert out.returncode == 1
    assert "BAD train_train[1,2]" in out.stdout and "BAD test_train[1,3]" in out.stdout
    computed = []
    report = build_gram(root, CNN, x, x_test, verify=True, progress=False,
                        on_tile=lambda r: computed.append(r["tile"]), tiling=TilingOptions(workers=1))
    assert sorted(computed) == sorted(problems) and report.repaired == ["test_train[1,3]", "train_train[1,2]"]
    assert store.verify() == {}
    assert_same_values(store, reference)
    assert raygram_cli("verify", str(root)).returncode == 0


def test_status_command_reports_completeness(finished, tmp_path):
    x, x_test, _ = finished
    build_gram(tmp_path / "gram", CNN, x, x_test, progress=False, tiling=TilingOptions(tile_size=3, workers=1))
    store = GramStore(tmp_path / "gram")
    store.forget_tiles([Tile("train_train", 0, 1), Tile("test_diag", 1)])
    out = raygram_cli("status", str(tmp_path / "gram"))
    assert out.returncode == 0, out.stderr
    assert "18/20 tiles (incomplete)" in out.stdout
    assert re.search(r"train_train\s+9/10", out.stdout) and re.search(r"test_diag\s+1/2", out.stdout)
    status = json.loads(raygram_cli("status", str(tmp_path / "gram"), "--json").stdout)
    assert status["blocks"]["test_diag"]["entries_done"] == 3 and not status["complete"]
    missing = raygram_cli("status", str(tmp_path / "nothing"))
    assert missing.returncode == 2 and "no Gram store" in missing.stderr
    assert not (tmp_path / "nothing").exists()


@pytest.fixture
def built(finished, tmp_path):
    """A finished store of the same configuration as `finished`, and a snapshot of its files."""
    x, x_test, _ = finished
    build_gram(tmp_path / "gram", CNN, x, x_test, progress=False, tiling=TilingOptions(tile_size=3, workers=1))
    return tmp_path / "gram", x, x_test, snapshot(tmp_path / "gram")


@pytest.mark.parametrize("change, message", [
    ({"architecture": EQUIVARIANT}, "architecture"),
    ({"x_train": "other"}, "x_train"),
    ({"kinds": ["ntk"]}, "kinds"),
    ({"tiling": TilingOptions(tile_size=4)}, "tile_size"),
    ({"dtype": "float32"}, "dtype"),
])
def test_store_of_another_configuration_is_refused_untouched(built, change, message):
    path, x, x_test, before = built
    kwargs = {"architecture": CNN, "x_train": x, "x_test": x_test, "progress": False, **change}
    if change.get("x_train") == "other":
        kwargs["x_train"] = x + 1e-9
    with pytest.raises(FingerprintMismatch, match=rf"another configuration(.|\n)*{message}:"):
        build_gram(path, **kwargs)
    assert snapshot(path) == before


def test_concurrent_build_is_refused_and_stale_lease_taken_over(built):
    path, x, x_test, before = built
    store = GramStore(path)
    store.forget_tiles([Tile("train_train", 0, 0)])
    before = snapshot(path)
    with BuildLease(store):
        during = snapshot(path)
        with pytest.raises(StoreLocked, match=f"pid {os.getpid()}"):
            build_gram(path, CNN, x, x_test, progress=False)
        assert snapshot(path) == during
    assert snapshot(path) == before
    # A lease left by a process that no longer exists (a killed build) is taken over at once.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    record = json.loads(BuildLease(store)._record())
    store.set_bytes(LOCK_KEY, json.dumps(dict(record, pid=int(dead), token="dead")).encode())
    report = build_gram(path, CNN, x, x_test, progress=False, tiling=TilingOptions(workers=1))
    assert report.tiles_computed == 1 and BuildLease(store).holder() is None


def test_unwritable_store_path_is_a_clear_error(ray_address, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(StoreError, match="cannot write to the store"):
        build_gram(blocker / "gram", CNN, images(N), progress=False, tiling=TilingOptions(tile_size=4, workers=1))
    assert blocker.read_text() == "not a folder"


@pytest.mark.parametrize("bad, message", [
    ("nan_train", r"x_train has 1 non-finite values .* index \(3, 2, 1, 0\)"),
    ("inf_test", "x_test has 1 non-finite"),
    ("shape", r"x_test points have shape \(5, 5, 1\), x_train points \(6, 6, 1\)"),
    ("kinds", "kinds must be distinct names"),
    ("tile", r"tiling.tile_size: must be an integer >= 1 or null, got 0"),
    ("layer", r"architecture layer 1 \(Rleu\): unknown layer"),
    ("gpus", "tiling.gpus_per_worker: each worker asks for 1 GPUs but the Ray cluster has 0"),
    ("complex", "x_train must hold real numbers .* would lose their imaginary part"),
    ("width", r"architecture\[0\].Conv.out_chan: must be an integer >= 1, got -1"),
])
def test_bad_input_is_refused_before_touching_the_store(built, bad, message):
    path, x, x_test, before = built
    kwargs = {"architecture": CNN, "x_train": x.copy(), "x_test": x_test.copy(), "progress": False}
    if bad == "nan_train":
        kwargs["x_train"][3, 2, 1, 0] = np.nan
    elif bad == "inf_test":
        kwargs["x_test"][0, 0, 0, 0] = np.inf
    elif bad == "shape":
        kwargs["x_test"] = images(M, size=5)
    elif bad == "kinds":
        kwargs["kinds"] = ["ntk", "ntk"]
    elif bad == "gpus":
        kwargs["tiling"] = TilingOptions(gpus_per_worker=1)
    elif bad == "complex":
        kwargs["x_train"] = x + 1j * x
    elif bad == "width":
        kwargs["architecture"] = [{"Conv": {**CNN[0]["Conv"], "out_chan": -1}}, *CNN[1:]]
    elif bad != "tile":
        kwargs["architecture"] = [CNN[0], "Rleu"]

    def build(where):
        if bad == "tile":  # the option object refuses it when constructed, before build_gram runs
            kwargs["tiling"] = TilingOptions(tile_size=0)
        return build_gram(where, **kwargs)

    if bad != "gpus":  # resources are checked only when there is work to do; this store is complete
        with pytest.raises(ConfigError, match=message):
            build(path)
        assert snapshot(path) == before
    with pytest.raises(ConfigError, match=message):
        build(path.parent / "new")
    assert not (path.parent / "new").exists()


def test_build_only_config_errors(tmp_path):
    """Build-only configs (source npy) share the experiment schema: bad ones exit 2 with nothing written."""
    (tmp_path / "x.npy").write_bytes(b"not numpy")

    def config(data_path, **extra):
        return {"name": "g", "data": {"source": "npy", "path": str(tmp_path / data_path)},
                "kernels": {"cnn": {"architecture": CNN}}, "store": str(tmp_path / "g"), **extra}

    cases = {
        "missing.yaml": None,
        "unknown.yaml": config("x.npy", tiling={"tile": 3}),
        "nofile.yaml": config("absent.npy"),
        "badnpy.yaml": config("x.npy"),
        "sizes.yaml": {**config("x.npy"), "data": {**config("x.npy")["data"], "train_sizes": [3]}},
    }
    expected = {"missing.yaml": "does not exist", "unknown.yaml": r"tiling: unknown key\(s\) \['tile'\]",
                "nofile.yaml": "data.path: .*absent.npy does not exist", "badnpy.yaml": "not a readable .npy",
                "sizes.yaml": "source npy .* leave train_sizes and test_size out"}
    for name, content in cases.items():
        if content is not None:
            (tmp_path / name).write_text(yaml.safe_dump(content))
        out = raygram_cli("build", str(tmp_path / name))
        assert out.returncode == 2 and re.search(expected[name], out.stderr), (name, out.stderr)
        assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    np.save(tmp_path / "x.npy", images(4))
    (tmp_path / "solve.yaml").write_text(yaml.safe_dump(config("x.npy")))
    out = raygram_cli("run", str(tmp_path / "solve.yaml"))
    assert out.returncode == 2 and "npy data has no targets" in out.stderr, out.stderr
    assert not (tmp_path / "g").exists()


def test_build_stops_when_its_lease_is_taken_over(finished, tmp_path):
    x, x_test, _ = finished
    path = tmp_path / "gram"

    taken = []

    def take_lease(result):
        if not taken:  # another build (token "other") takes the lease; the renewal notices
            store = GramStore(path)
            record = json.loads(store.get_bytes(LOCK_KEY))
            store.set_bytes(LOCK_KEY, json.dumps(dict(record, token="other")).encode())
            taken.append(True)
            time.sleep(1.0)

    with pytest.raises(LeaseLost, match="taken over by another build"):
        build_gram(path, CNN, x, x_test,
                   progress=False, on_tile=take_lease, tiling=TilingOptions(tile_size=3, workers=1, max_inflight=1, lease_ttl=0.6))
    assert json.loads(GramStore(path).get_bytes(LOCK_KEY))["token"] == "other"  # not deleted by the loser
