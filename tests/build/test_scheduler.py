"""Tiled Gram builds on Ray actors into zarr equal the monolithic kernel_fn, and resume.

Tolerances. With Erf (smooth) the tiled and monolithic kernels differ only by the order
of float64 reductions in differently shaped XLA programs: relative 1e-12 leaves a
1000x margin over the measured 1e-15. With ReLU the arc-cosine of a self-pair, whose
cosine is 1 up to round-off, turns an ulp (1e-16) into ~sqrt(1e-16) = 1e-8 in the
angle; the NTK of the ReLU CNN gets relative differences of 5e-10 there, so those
entries are held to 1e-7. Values that share a tile shape are compared bit for bit.
"""
import dataclasses

import numpy as np
import pytest
import zarr

from builds import CNN, EQUIVARIANT, images, read_blocks, reference_kernel_fn
from raygram._neural_tangents import x64
from raygram.config import TilingOptions
from raygram.build.lease import BuildLease
from raygram.build.scheduler import build_fingerprint, build_gram, check_build, cluster_capacity
from raygram.errors import BuildError, StoreLocked
from raygram.store.gram_store import GramStore
from raygram.store.plan import Tile, TilePlan
from raygram.build.worker import check_gpus, jax_env

N, M = 11, 5


def monolithic(architecture, x, x_test):
    kernel_fn = reference_kernel_fn(architecture)
    train, test = kernel_fn(x, None, ("nngp", "ntk")), kernel_fn(x_test, x, ("nngp", "ntk"))
    test_diag = {k: np.array([kernel_fn(p[None], None, k)[0, 0] for p in x_test])
                 for k in ("nngp", "ntk")}
    return {(k, b): np.asarray(v) for k in ("nngp", "ntk")
            for b, v in (("train_train", getattr(train, k)), ("test_train", getattr(test, k)),
                         ("test_diag", test_diag[k]))}


@pytest.mark.parametrize("architecture, tile_size, workers", [
    (EQUIVARIANT, 4, 2), (EQUIVARIANT, 3, 1), (EQUIVARIANT, 16, 1), (CNN, 5, 2), (CNN, 2, 1)],
    ids=["gcnn-t4-w2", "gcnn-t3-w1", "gcnn-t16-w1", "cnn-t5-w2", "cnn-t2-w1"])
def test_tiled_build_equals_monolithic_kernel(ray_address, tmp_path, architecture, tile_size, workers):
    x, x_test = images(N), images(M, seed=1)
    report = build_gram(tmp_path / "gram", architecture, x, x_test, progress=False, tiling=TilingOptions(tile_size=tile_size, workers=workers))
    store = GramStore(tmp_path / "gram")
    got, want = read_blocks(store), monolithic(architecture, x, x_test)
    rtol = 1e-12 if architecture is EQUIVARIANT else 1e-7
    for key, value in want.items():
        assert got[key].shape == value.shape  # the padding of ragged tiles is not stored
        np.testing.assert_allclose(got[key], value, rtol=rtol, atol=rtol * np.abs(value).max(),
                                   err_msg=str(key))
    for kind in ("nngp", "ntk"):
        full = got[(kind, "train_train")]
        np.testing.assert_array_equal(full, full.T)
    assert report.tiles_computed == report.tiles_total == len(list(store.plan.tiles()))
    assert sum(w["tiles"] for w in report.workers) == report.tiles_computed
    assert len(report.workers) == workers  # (a worker still compiling when the tiles ran out gets none)


def test_store_layout_fingerprint_and_lazy_reads(ray_address, tmp_path):
    x, x_test = images(N), images(M, seed=1)
    build_gram(tmp_path / "gram", EQUIVARIANT, x, x_test, kinds=["ntk"],
               progress=False, tiling=TilingOptions(tile_size=4, workers=1))
    group = zarr.open_group(tmp_path / "gram", mode="r")
    assert group.metadata.zarr_format == 3
    assert sorted(group["ntk"].array_keys()) == ["test_diag", "test_train", "train_train"]
    train = group["ntk/train_train"]
    assert train.shape == (N, N) and train.chunks == (4, 4) and train.shards is None
    assert np.isnan(train.fill_value)
    fingerprint = group.attrs["raygram"]["fingerprint"]
    assert set(fingerprint) >= {"architecture", "kinds", "dtype", "x_train", "x_test", "tile_size", "versions"}
    assert fingerprint["kinds"] == ["ntk"] and fingerprint["tile_size"] == 4
    assert fingerprint["x_train"]["shape"] == [N, 6, 6, 1]
    # Below-diagonal tiles of the symmetric block are never stored: they read as the fill value.
    assert np.isnan(train[8:, :4]).all()
    store = GramStore(tmp_path / "gram", read_only=True)
    full = store.gram("ntk")
    dense = full[...]
    np.testing.assert_array_equal(full[2:9, 1:10], dense[2:9, 1:10])
    np.testing.assert_array_equal(full[9, :], dense[9])
    assert full[7, 3] == dense[3, 7]
    writable = GramStore(tmp_path / "gram")
    assert writable.array("ntk", "train_train").config.write_empty_chunks
    # A tile equal to the fill value is still stored: written and unwritten stay distinguishable.
    writable.delete_key("ntk/test_diag/c/1")
    writable.write_tile(Tile("test_diag", 1), {"ntk": np.full(1, np.nan)})
    assert "ntk/test_diag/c/1" in writable.list_keys("ntk/test_diag/c/")
    with pytest.raises(IndexError, match=r"tile test_diag\[2\] is outside"):
        writable.write_tile(Tile("test_diag", 2), {"ntk": np.full(1, np.nan)})
    lazy = store.to_dask("ntk")
    assert lazy.chunks == ((4, 4, 3), (4, 4, 3))
    np.testing.assert_array_equal(lazy.compute(), dense)
    np.testing.assert_array_equal(store.to_dask("ntk", "test_train").compute(), group["ntk/test_train"][...])
    # The in-place mirrored read and the one-read-per-tile product agree with the sliced view.
    np.testing.assert_array_equal(full.dense(), dense)
    np.testing.assert_array_equal(full.dense(), full.dense().T)
    x = np.random.default_rng(0).normal(size=(N, 3))
    np.testing.assert_allclose(full.matmat(x).compute(), dense @ x, rtol=1e-13, atol=1e-13 * np.abs(dense).max())


def test_rerun_skips_stored_tiles_and_gives_identical_values(ray_address, tmp_path):
    x, x_test = images(N), images(M, seed=1)
    build_gram(tmp_path / "whole", CNN, x, x_test, progress=False, tiling=TilingOptions(tile_size=3, workers=2))

    class Stop(Exception):
        pass

    seen = []

    def stop_after_three(result):
        seen.append(result["tile"])
        if len(seen) == 3:
            raise Stop

    with pytest.raises(Stop):
        build_gram(tmp_path / "gram", CNN, x, x_test, progress=False,
                   on_tile=stop_after_three, tiling=TilingOptions(tile_size=3, workers=2))
    store = GramStore(tmp_path / "gram")
    written = store.written_tiles()
    status = store.status()
    assert 3 <= len(written) < status["tiles_total"] and not status["complete"]
    with pytest.raises(Exception, match="incomplete"):
        store.gram("ntk")
    computed = []
    report = build_gram(tmp_path / "gram", CNN, x, x_test, progress=False,
                        on_tile=lambda r: computed.append(r["tile"]), tiling=TilingOptions(workers=1))
    assert report.tiles_skipped == len(written)
    assert set(computed) == set(store.plan.tiles()) - written
    for key, value in read_blocks(GramStore(tmp_path / "whole")).items():
        np.testing.assert_array_equal(read_blocks(store)[key], value, err_msg=str(key))
    again = build_gram(tmp_path / "gram", CNN, x, x_test, progress=False)
    assert again.tiles_computed == 0 and again.workers == []


def test_tile_size_from_memory_model(ray_address, tmp_path):
    x = images(40)
    report = build_gram(tmp_path / "gram", EQUIVARIANT, x, progress=False, tiling=TilingOptions(workers=1))
    store = GramStore(tmp_path / "gram")
    # Memory allows far more than 40 points per tile here, so the size comes from the
    # grid rule (at least 32 points per tile, the least padding): two tiles of 20.
    assert report.tile_size == store.fingerprint["tile_size"] == 20
    want = reference_kernel_fn(EQUIVARIANT)(x, None, "ntk")
    np.testing.assert_allclose(store.gram("ntk")[...], want, rtol=1e-12, atol=0)


def test_float32_build_with_progress_bar(ray_address, tmp_path, capsys):
    x, x_test = images(N).astype(np.float32), images(M, seed=1).astype(np.float32)
    build_gram(tmp_path / "gram", CNN, x, x_test, dtype="float32", tiling=TilingOptions(tile_size=4, workers=1))
    bar = capsys.readouterr().err
    total = TilePlan(N, M, 4).total_entries()
    assert "tiles 14/14" in bar and "entries/s" in bar and f"{total}/{total}" in bar
    store = GramStore(tmp_path / "gram")
    got = store.gram("ntk")[...]
    assert got.dtype == np.float32
    with x64(False):
        want = np.asarray(reference_kernel_fn(CNN)(x, None, "ntk"))
    assert want.dtype == np.float32
    # float32 round-off (1e-7), amplified to ~sqrt(1e-7) = 3e-4 on ReLU self-pairs.
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3 * np.abs(want).max())
    assert store.status()["complete"] and not store.verify()
    assert Tile("test_diag", 1) in store.written_tiles()


def test_worker_jax_memory_settings(monkeypatch):
    single = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    assert jax_env(0) == {"JAX_PLATFORMS": "cpu", "XLA_FLAGS": single}
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_max_isa=AVX2")  # the driver's flags come first
    assert jax_env(0)["XLA_FLAGS"] == "--xla_cpu_max_isa=AVX2 " + single
    assert jax_env(0, num_cpus=4) == {"JAX_PLATFORMS": "cpu"}
    assert jax_env(1) == {"XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
    # Four actors on one GPU: each may take 0.9 x 1/4 of it, allocated on demand.
    assert jax_env(0.25) == {"XLA_PYTHON_CLIENT_PREALLOCATE": "false", "XLA_PYTHON_CLIENT_MEM_FRACTION": "0.225"}


def test_tile_size_is_capped_at_n_and_workers_at_the_tiles(ray_address, tmp_path):
    """A tile_size far above N would pad every tile to its size; more workers than tiles would idle."""
    x = images(5)
    check = check_build(tmp_path / "gram", CNN, x, tiling=TilingOptions(tile_size=10**6, workers=8))
    assert check.work and not (tmp_path / "gram").exists()  # the checks write nothing
    report = build_gram(tmp_path / "gram", CNN, x, progress=False, tiling=TilingOptions(tile_size=10**6, workers=8))
    store = GramStore(tmp_path / "gram")
    assert report.tile_size == store.fingerprint["tile_size"] == 5
    assert store.array("ntk", "train_train").chunks == (5, 5)
    assert report.tiles_computed == 1 and len(report.workers) == 1
    done = check_build(tmp_path / "gram", CNN, x, tiling=TilingOptions(tile_size=10**6))
    assert not done.work and done.fingerprint == {**store.fingerprint, "tile_size": 0}
    assert build_fingerprint(CNN, x) == done.fingerprint
    np.testing.assert_allclose(store.gram("ntk")[...], reference_kernel_fn(CNN)(x, None, "ntk"), rtol=1e-7,
                               atol=1e-7 * np.abs(store.gram("ntk")[...]).max())  # ReLU self-pairs: module docstring


def test_gpu_check_refuses_a_gpu_that_jax_cannot_see(monkeypatch):
    """A worker given GPUs whose JAX sees only CPUs stops the build, unless RAYGRAM_EMULATED_GPUS=1."""
    check_gpus([], {"cpu"}, {})  # a CPU worker
    check_gpus(["0"], {"gpu"}, {})
    check_gpus(["0"], {"cpu"}, {"RAYGRAM_EMULATED_GPUS": "1"})
    with pytest.raises(BuildError, match=r"was given GPU\(s\) \['0'\] by Ray, but JAX there sees only \['cpu'\] "
                                         r"devices: install JAX with GPU support .* set RAYGRAM_EMULATED_GPUS=1"):
        check_gpus(["0"], {"cpu"}, {})
    monkeypatch.setenv("RAYGRAM_EMULATED_GPUS", "1")  # the driver's opt-out reaches GPU workers
    assert jax_env(1)["RAYGRAM_EMULATED_GPUS"] == "1" and "RAYGRAM_EMULATED_GPUS" not in jax_env(0)


def test_report_counts_tiles_per_node(ray_address, tmp_path):
    x = images(N)
    report = build_gram(tmp_path / "gram", CNN, x, progress=False, tiling=TilingOptions(tile_size=4, workers=2))
    assert len(report.nodes) == 1  # the session's local instance is one node
    (node, entry), = report.nodes.items()
    assert report.tiles_per_node == {node: report.tiles_computed}
    assert 1 <= entry["workers"] <= 2  # a worker still compiling when the tiles ran out has no node yet
    assert not entry["lost"] and not entry["unavailable"]
    assert report.metrics()["nodes"] == 1
    assert report.summary().startswith(f"{report.tiles_computed} tiles computed, 0 already stored (")
    assert "\n" not in report.summary()  # per-node lines only for several nodes
    several = dataclasses.replace(report, nodes={
        "a" * 56: {"ip": "10.0.0.5", "host": "h1", "tiles": 4, "workers": 1, "lost": False},
        "b" * 56: {"ip": "10.0.0.6", "host": "h2", "tiles": 2, "workers": 1, "lost": True}})
    assert several.summary().splitlines()[1:] == ["  node 10.0.0.5 (aaaaaaaa): 4 tiles, 1 worker(s)",
                                                  "  node 10.0.0.6 (bbbbbbbb): 2 tiles, 1 worker(s), left during the build"]


def test_capacity_is_counted_node_by_node(monkeypatch):
    nodes = [{"NodeID": "h", "Alive": True, "Resources": {"CPU": 1}},
             {"NodeID": "w1", "Alive": True, "Resources": {"CPU": 4, "GPU": 1}},
             {"NodeID": "w2", "Alive": True, "Resources": {"CPU": 4, "GPU": 1}},
             {"NodeID": "gone", "Alive": False, "Resources": {"CPU": 4, "GPU": 8}}]
    monkeypatch.setattr("ray.nodes", lambda: nodes)
    assert cluster_capacity(1, 1) == 2 and cluster_capacity(1, 0.25) == 8 and cluster_capacity(1, 2) == 0
    assert cluster_capacity(1, 0) == 9 and cluster_capacity(2, 0) == 4


def test_a_locked_store_is_refused_as_store_locked(ray_address, tmp_path, monkeypatch):
    """StoreLocked from taking the lease reaches the caller as it is (it is an OSError too)."""
    def taken(self):
        raise StoreLocked("another build took the lease of the store just now")

    monkeypatch.setattr(BuildLease, "acquire", taken)
    with pytest.raises(StoreLocked, match="^another build took the lease of the store just now$"):
        build_gram(tmp_path / "gram", CNN, images(N), progress=False, tiling=TilingOptions(tile_size=4, workers=1))
