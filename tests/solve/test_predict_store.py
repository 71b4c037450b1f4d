"""Kernel regression read from a real Gram store: in core, out of core, bad input, ill-conditioning."""
import math
import re

import numpy as np
import pytest

from builds import EQUIVARIANT, images, reference_kernel_fn
from raygram._neural_tangents import nt
from raygram.build.scheduler import build_gram
from raygram.config import TilingOptions
from raygram.errors import (CorruptTile, IllConditioned, NotConverged, SolveError)
from raygram.solve import GramSource, predict
from raygram.store.gram_store import GramStore

N, M, TILE = 30, 8, 7
LARGE = 2000
GRAM_BYTES = 8 * LARGE * LARGE


@pytest.fixture(scope="module")
def stored(ray_address, tmp_path_factory):
    path = tmp_path_factory.mktemp("regression") / "gram"
    x, x_test = images(N, seed=4), images(M, seed=5)
    build_gram(path, EQUIVARIANT, x, x_test, tiling=TilingOptions(tile_size=TILE, workers=2), progress=False)
    y = np.random.default_rng(6).normal(size=(N, 2))
    return GramStore(path, read_only=True), x, x_test, y


def test_store_predictions_match_neural_tangents(stored):
    store, x, x_test, y = stored
    times = [0.5, 50.0, math.inf]
    got = predict(store, y, times=times, diag_reg=1e-4, method="eigh", compute_variance=True)
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
    build_gram(path, mlp, x[:LARGE], x[LARGE:], tiling=TilingOptions(tile_size=100, workers=2), progress=False)
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
    and Lanczos reaches 1e-10 well within its step limit (asserted below); at t = ∞ (1/λ)
    CG with the preconditioner is the out-of-core method. The first solve imports modules
    (code objects that tracemalloc counts); the measured solves come after it.
    """
    store, y = larger
    times = [30.0, 300.0, math.inf]
    budget = int(0.6 * GRAM_BYTES)
    in_core = predict(store, y, times=times, diag_reg=1e-3, method="eigh", compute_variance=True)
    infinite, cg_peak = _peak_bytes(lambda: predict(store, y, times=math.inf, diag_reg=1e-3, memory_budget=budget,
                                                    preconditioner_rank=32, compute_variance=False))
    assert infinite.info["method"] == "cg" and cg_peak <= infinite.info["working_set_bytes"] <= budget
    with_variance = predict(store, y, times=math.inf, diag_reg=1e-3, method="cg", preconditioner_rank=64,
                            compute_variance=True)
    cg = infinite.info["ntk"]["cg"][0]
    assert cg["residuals"][-1] <= 1e-10 and cg["residuals"][0] == 1.0 and cg["iterations"] == len(cg["residuals"]) - 1
    finite_mean, lanczos_peak = _peak_bytes(lambda: predict(store, y, times=times[:2], diag_reg=1e-3,
                                                            max_iterations=100, memory_budget=budget,
                                                            compute_variance=False))
    assert finite_mean.info["method"] == "lanczos"
    assert lanczos_peak <= finite_mean.info["working_set_bytes"] <= budget
    finite = predict(store, y, times=times[:2], diag_reg=1e-3, max_iterations=200, method="lanczos",
                     compute_variance=True)
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
        threads = predict(store, y, times=t, diag_reg=1e-3, method=method, preconditioner_rank=8,
                          compute_variance=True)
        on_ray = predict(store, y, times=t, diag_reg=1e-3, method=method, preconditioner_rank=8,
                         compute_variance=True, scheduler="ray")
        for kind in ("nngp", "ntk"):
            np.testing.assert_allclose(on_ray.mean[kind], threads.mean[kind], rtol=1e-12, atol=0)
            np.testing.assert_allclose(on_ray.variance[kind], threads.variance[kind], rtol=1e-10, atol=0)


def test_cholesky_and_cg_agree_to_the_cg_tolerance(stored):
    store, _, _, y = stored
    chol = predict(store, y, times=math.inf, diag_reg=1e-3, method="cholesky", compute_variance=True)
    for tol in (1e-6, 1e-11):
        cg = predict(store, y, times=math.inf, diag_reg=1e-3, method="cg", tol=tol, preconditioner_rank=8,
                     compute_variance=True)
        for kind in ("nngp", "ntk"):
            error = np.abs(cg.mean[kind] - chol.mean[kind]).max() / np.abs(chol.mean[kind]).max()
            # The error of the solution is at most cond(A) times the residual; here cond < 1e3.
            assert error < 1e3 * tol, (kind, tol, error)
    assert "condition_bound" in chol.info["ntk"]


def test_preconditioner_cuts_cg_iterations():
    """On inputs of low dimension the kernel's spectrum decays and plain CG slows down;
    a rank-64 Nyström preconditioner cuts the iterations to less than half."""
    from raygram.kernels.architecture import network

    kernel_fn = network([{"Dense": {"out_dim": 16, "W_std": 1.5, "b_std": 0.1}}, "Erf", {"Dense": {"out_dim": 1}}])[2]
    x = np.random.default_rng(8).normal(size=(1510, 4))
    train, test = kernel_fn(x[:1500], None, ("nngp", "ntk")), kernel_fn(x[1500:], x[:1500], ("nngp", "ntk"))
    source = GramSource.from_arrays({"ntk": np.asarray(train.ntk)}, {"ntk": np.asarray(test.ntk)},
                                    {"ntk": np.ones(10)})
    y = np.random.default_rng(9).normal(size=(1500, 2))
    runs = {rank: predict(source, y, kinds="ntk", times=math.inf, diag_reg=1e-3, method="cg",
                          preconditioner_rank=rank,
                          compute_variance=False, max_iterations=3000) for rank in (0, 64)}
    iterations = {rank: run.info["ntk"]["cg"][0]["iterations"] for rank, run in runs.items()}
    assert iterations[64] < iterations[0] / 2, iterations
    np.testing.assert_allclose(runs[64].mean["ntk"], runs[0].mean["ntk"], rtol=0,
                               atol=1e-7 * np.abs(runs[0].mean["ntk"]).max())


def test_ill_conditioned_kernel_without_ridge_is_reported(ray_address, tmp_path):
    x = images(10, seed=7)
    x[5] = x[2]  # a repeated training point: the Gram is singular
    build_gram(tmp_path / "gram", EQUIVARIANT, x, images(3), tiling=TilingOptions(tile_size=4, workers=1),
               progress=False)
    store = GramStore(tmp_path / "gram")
    y = np.arange(10.0)
    with pytest.raises(IllConditioned, match="increase diag_reg"):
        predict(store, y, times=math.inf, diag_reg=0.0, method="cholesky", compute_variance=True)
    with pytest.raises(NotConverged, match="did not converge in 30 iterations"):
        predict(store, y, times=math.inf, diag_reg=0.0, method="cg", max_iterations=30, tol=1e-12,
                preconditioner_rank=0, compute_variance=True)
    for method in ("eigh", "lanczos"):
        with pytest.raises(SolveError, match=r"^the kernel is singular; use diag_reg > 0$"):
            predict(store, y, times=math.inf, diag_reg=0.0, method=method, compute_variance=True)
    # With a ridge every method answers, and the spectral ones agree with the factorisation.
    chol = predict(store, y, times=math.inf, diag_reg=1e-3, method="cholesky", compute_variance=True)
    assert np.isfinite(chol.mean["ntk"]).all()
    for method in ("eigh", "lanczos"):
        got = predict(store, y, times=math.inf, diag_reg=1e-3, method=method, compute_variance=True)
        for kind in ("nngp", "ntk"):
            # cond(K + ρI) < 1e5 here: float64 solves agree far below 1e-8 of the largest value
            np.testing.assert_allclose(got.mean[kind], chol.mean[kind], rtol=0,
                                       atol=1e-8 * np.abs(chol.mean[kind]).max(), err_msg=f"{method} {kind}")


def flipped(data: bytes) -> bytes:
    """`data` with its middle byte inverted."""
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1:]


VALUES, SUMS = "ntk/train_train/c/1/3", "tiles/train_train/c/1/3/0"  # tile (1, 3): rows 7:14, columns 21:28
DAMAGE = {"deleted data chunk": lambda store: store.delete_key(VALUES),
          "flipped byte": lambda store: store.set_bytes(VALUES, flipped(store.get_bytes(VALUES))),
          "deleted checksum chunk": lambda store: store.delete_key(SUMS)}


@pytest.mark.parametrize("how", DAMAGE)
@pytest.mark.parametrize("method, t", [("cholesky", math.inf), ("eigh", math.inf), ("cg", math.inf),
                                       ("lanczos", 50.0)])
def test_damaged_store_is_refused_by_every_method(stored, tmp_path, how, method, t):
    """A tile of the train Gram damaged three ways: every method stops with CorruptTile naming it
    (never NaN predictions, a wrong accuracy, or a Cholesky asking for a larger ridge)."""
    import shutil

    store, _, _, y = stored
    root = tmp_path / "copy"
    shutil.copytree(store.url, root)
    DAMAGE[how](GramStore(root))
    with pytest.raises(CorruptTile, match=rf"^tile train_train\[1,3\] of the store {re.escape(str(root))} is "
                                          r"corrupt \(.*\); run `raygram build --verify`"):
        predict(GramStore(root, read_only=True), y, times=t, diag_reg=1e-3, method=method, kinds="ntk",
                preconditioner_rank=8, compute_variance=False)
