"""Kernel regression read from a real Gram store: in core, out of core, bad input, ill-conditioning."""
import math

import numpy as np
import pytest

from builds import EQUIVARIANT, images, reference_kernel_fn
from raygram._neural_tangents import nt
from raygram.blocked_cholesky import IllConditioned
from raygram.gram_source import GramSource
from raygram.pcg import NotConverged
from raygram.regression import predict
from raygram.scheduler import build_gram
from raygram.store import GramStore, StoreError
from raygram.tiling import Tile

N, M, TILE = 30, 8, 7
LARGE = 2000
GRAM_BYTES = 8 * LARGE * LARGE


@pytest.fixture(scope="module")
def stored(ray_address, tmp_path_factory):
    path = tmp_path_factory.mktemp("regression") / "gram"
    x, x_test = images(N, seed=4), images(M, seed=5)
    build_gram(path, EQUIVARIANT, x, x_test, tile_size=TILE, workers=2, progress=False)
    y = np.random.default_rng(6).normal(size=(N, 2))
    return GramStore(path, read_only=True), x, x_test, y


def test_store_predictions_match_neural_tangents(stored):
    store, x, x_test, y = stored
    times = [0.5, 50.0, math.inf]
    got = predict(store, y, t=times, diag_reg=1e-4, method="eigh")
    predict_fn = nt.predict.gradient_descent_mse_ensemble(reference_kernel_fn(EQUIVARIANT), x, y, diag_reg=1e-4)
    for i, t in enumerate(times):
        want = predict_fn(t=None if math.isinf(t) else t, x_test=x_test, get=("nngp", "ntk"), compute_cov=True)
        for kind in ("nngp", "ntk"):
            mean, cov = getattr(want, kind)
            np.testing.assert_allclose(got.mean[kind][0, i], mean, rtol=0, atol=1e-8 * np.abs(mean).max())
            np.testing.assert_allclose(got.variance[kind][0, i], np.diagonal(cov), rtol=0,
                                       atol=1e-8 * np.abs(np.diagonal(cov)).max())


@pytest.fixture(scope="module")
def larger(ray_address, tmp_path_factory):
    """A cheap MLP kernel on 2000 points in 100-point tiles: the Gram (32 MB) outweighs the solver's
    working set when the solve streams it (one tile row per dask thread)."""
    path = tmp_path_factory.mktemp("larger") / "gram"
    x = np.random.default_rng(8).normal(size=(LARGE + 10, 36))
    mlp = [{"Dense": {"out_dim": 16, "W_std": 1.5, "b_std": 0.1}}, "Erf", {"Dense": {"out_dim": 1}}]
    build_gram(path, mlp, x[:LARGE], x[LARGE:], tile_size=100, workers=2, progress=False)
    return GramStore(path, read_only=True), np.random.default_rng(9).normal(size=(LARGE, 2))


def _peak_bytes(fn):
    """Result of fn() and the peak of Python and numpy allocations while it ran (tracemalloc)."""
    import tracemalloc

    tracemalloc.start()
    try:
        out = fn()
        return out, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_out_of_core_matches_in_core_within_a_budget_below_the_gram(larger):
    """CG (t = ∞) and Lanczos (finite t) against one in-core eigendecomposition, under a memory
    budget of 0.6 x the Gram that the solver's stated working set respects and its measured
    peak allocation (numpy arrays, zarr reads, dask graphs) stays under.

    Lanczos is used at finite times only: there f_t is smooth on the kernel's spectrum
    and a few dozen steps reach 1e-10; at t = ∞ (1/λ) CG with the preconditioner is the
    out-of-core method. The first solve imports modules (tens of MB of code objects that
    tracemalloc counts); the measured solves come after it.
    """
    store, y = larger
    times = [30.0, 300.0, math.inf]
    budget = int(0.6 * GRAM_BYTES)
    in_core = predict(store, y, t=times, diag_reg=1e-3, method="eigh")
    infinite, cg_peak = _peak_bytes(lambda: predict(store, y, diag_reg=1e-3, memory_budget=budget,
                                                    preconditioner_rank=32, compute_variance=False))
    assert infinite.info["method"] == "cg" and cg_peak <= infinite.info["working_set_bytes"] <= budget
    with_variance = predict(store, y, diag_reg=1e-3, method="cg", preconditioner_rank=64)
    cg = infinite.info["ntk"]["cg"][0]
    assert cg["residuals"][-1] <= 1e-10 and cg["residuals"][0] == 1.0 and cg["iterations"] == len(cg["residuals"]) - 1
    finite_mean, lanczos_peak = _peak_bytes(lambda: predict(store, y, t=times[:2], diag_reg=1e-3,
                                                            max_iterations=100, memory_budget=budget,
                                                            compute_variance=False))
    assert finite_mean.info["method"] == "lanczos"
    assert lanczos_peak <= finite_mean.info["working_set_bytes"] <= budget
    finite = predict(store, y, t=times[:2], diag_reg=1e-3, max_iterations=200, method="lanczos")
    for kind in ("nngp", "ntk"):
        for got, want in ((infinite.mean[kind][0, 0], in_core.mean[kind][0, 2]),
                          (with_variance.variance[kind][0, 0], in_core.variance[kind][0, 2]),
                          (finite_mean.mean[kind][0], in_core.mean[kind][0, :2]),
                          (finite.variance[kind][0], in_core.variance[kind][0, :2])):
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-8 * np.abs(want).max(), err_msg=kind)
    assert finite.info["ntk"]["lanczos"][0]["steps"] < 200


def test_ray_cluster_as_the_dask_scheduler(stored):
    """scheduler="ray" runs the store reads and blocked algebra as Ray tasks: same answers."""
    store, _, _, y = stored
    for method, t in (("cholesky", math.inf), ("cg", math.inf), ("lanczos", 50.0)):
        threads = predict(store, y, t=t, diag_reg=1e-3, method=method, preconditioner_rank=8)
        on_ray = predict(store, y, t=t, diag_reg=1e-3, method=method, preconditioner_rank=8, scheduler="ray")
        for kind in ("nngp", "ntk"):
            np.testing.assert_allclose(on_ray.mean[kind], threads.mean[kind], rtol=1e-12, atol=0)
            np.testing.assert_allclose(on_ray.variance[kind], threads.variance[kind], rtol=1e-10, atol=0)


def test_cholesky_and_cg_agree_to_the_cg_tolerance(stored):
    store, _, _, y = stored
    chol = predict(store, y, diag_reg=1e-3, method="cholesky")
    for tol in (1e-6, 1e-11):
        cg = predict(store, y, diag_reg=1e-3, method="cg", tol=tol, preconditioner_rank=8)
        for kind in ("nngp", "ntk"):
            error = np.abs(cg.mean[kind] - chol.mean[kind]).max() / np.abs(chol.mean[kind]).max()
            # The error of the solution is at most cond(A) times the residual; here cond < 1e3.
            assert error < 1e3 * tol, (kind, tol, error)
    assert "condition_bound" in chol.info["ntk"]


def test_preconditioner_cuts_cg_iterations():
    """On inputs of low dimension the kernel's spectrum decays and plain CG slows down;
    a rank-64 Nyström preconditioner cuts the iterations (measured 1262 -> 420)."""
    from raygram.architecture import network

    kernel_fn = network([{"Dense": {"out_dim": 16, "W_std": 1.5, "b_std": 0.1}}, "Erf", {"Dense": {"out_dim": 1}}])[2]
    x = np.random.default_rng(8).normal(size=(1510, 4))
    train, test = kernel_fn(x[:1500], None, ("nngp", "ntk")), kernel_fn(x[1500:], x[:1500], ("nngp", "ntk"))
    source = GramSource.from_arrays({"ntk": np.asarray(train.ntk)}, {"ntk": np.asarray(test.ntk)},
                                    {"ntk": np.ones(10)})
    y = np.random.default_rng(9).normal(size=(1500, 2))
    runs = {rank: predict(source, y, kinds="ntk", diag_reg=1e-3, method="cg", preconditioner_rank=rank,
                          compute_variance=False, max_iterations=3000) for rank in (0, 64)}
    iterations = {rank: run.info["ntk"]["cg"][0]["iterations"] for rank, run in runs.items()}
    assert iterations[64] < iterations[0] / 2, iterations
    np.testing.assert_allclose(runs[64].mean["ntk"], runs[0].mean["ntk"], rtol=0,
                               atol=1e-7 * np.abs(runs[0].mean["ntk"]).max())


def test_ill_conditioned_kernel_without_ridge_is_reported(ray_address, tmp_path):
    x = images(10, seed=7)
    x[5] = x[2]  # a repeated training point: the Gram is singular
    build_gram(tmp_path / "gram", EQUIVARIANT, x, images(3), tile_size=4, workers=1, progress=False)
    store = GramStore(tmp_path / "gram")
    y = np.arange(10.0)
    with pytest.raises(IllConditioned, match="increase diag_reg"):
        predict(store, y, diag_reg=0.0, method="cholesky")
    with pytest.raises(NotConverged, match="did not converge in 30 iterations"):
        predict(store, y, diag_reg=0.0, method="cg", max_iterations=30, tol=1e-12, preconditioner_rank=0)
    assert np.isfinite(predict(store, y, diag_reg=1e-3, method="cholesky").mean["ntk"]).all()


@pytest.mark.parametrize("change, message", [
    ({"y_train": np.zeros(N - 1)}, r"y_train must have shape \(30,\)"),
    ({"y_train": np.full(N, np.nan)}, "non-finite"),
    ({"diag_reg": -1e-3}, "diag_reg must be >= 0"),
    ({"t": [1.0, -2.0]}, "t must be >= 0"),
    ({"kinds": ["ntk", "gp"]}, "kinds must be names"),
    ({"method": "qr"}, "method must be one of"),
    ({"method": "cholesky", "t": 1.0}, "infinite-time predictions only"),
    ({"memory_budget": 10, "method": "eigh"}, "more than the memory budget"),
])
def test_bad_input_is_refused(stored, change, message):
    store, _, _, y = stored
    kwargs = {"y_train": y, **change}
    with pytest.raises((ValueError, MemoryError), match=message):
        predict(store, **kwargs)


def test_incomplete_store_is_refused(stored, tmp_path):
    import shutil

    store, _, _, y = stored
    shutil.copytree(store.url, tmp_path / "copy")
    GramStore(tmp_path / "copy").forget_tiles([Tile("train_train", 1, 3)])
    with pytest.raises(StoreError, match="incomplete: 1 tiles not written"):
        predict(GramStore(tmp_path / "copy"), y)
    with pytest.raises(StoreError, match="incomplete"):
        GramSource.from_store(GramStore(tmp_path / "copy"))
