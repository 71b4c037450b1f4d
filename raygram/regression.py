"""Kernel regression from a stored Gram: the infinitely wide network's predictions.

Follows `neural_tangents.predict.gradient_descent_mse_ensemble` (and `gp_inference`
at t = ∞) exactly, for the Gram blocks of a `GramStore` or arrays in memory. With
A = K_dd + ρ I (ρ = diag_reg · trace(K_dd) / N, or diag_reg with
`diag_reg_absolute_scale`) and τ = learning_rate · t / y_train.size:

    f_t(λ) = (1 − e^{−max(λ, 0) τ}) / λ          (f_∞(λ) = 1 / λ)
    mean_t  = K_td f_t(A) y
    NNGP:  var_t = k_tt − diag(K_td f_{2t}(A) K_dt)
    NTK:   var_t = k_tt + diag(B_tᵀ K_dd B_t) − 2 diag(Θ_td f_t(A) K_dt),  B_t = f_t(A) Θ_dt

(K: NNGP, Θ: NTK; for "nngp" every kernel is K). Methods, all applying f(A) to several
right-hand sides at once:

- "cholesky": dask blocked Cholesky (t = ∞, one ridge), in core;
- "eigh": one eigendecomposition of K_dd serves every t and every ridge, in core;
- "cg": block PCG with a Nyström preconditioner (t = ∞), out of core;
- "lanczos": one Krylov basis serves every t and every ridge, out of core.

"auto" takes an in-core method when its working set fits `memory_budget`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
from typing import Sequence

import numpy as np

from .blocked_cholesky import DaskCholesky
from .gram_source import GramSource
from .lanczos import lanczos_functions
from .pcg import NystromPreconditioner, block_cg, rp_cholesky

KINDS = ("nngp", "ntk")
BOOKKEEPING = 8 * 2**20  # dask graphs, zarr reads in flight, Python objects (measured <= 3.1 MB at N = 2000)
CORES = os.cpu_count() or 1
METHODS = ("auto", "cholesky", "eigh", "cg", "lanczos")


@dataclasses.dataclass
class Prediction:
    """Test predictions per kind, ridge and time.

    `mean[kind]` has shape (R, T, M, K) and `variance[kind]` (R, T, M) for the ridges
    `diag_reg` (R,) and times `t` (T,; inf for infinite time); `info` says how each
    was computed (method, iterations, residuals, memory).
    """

    diag_reg: np.ndarray
    t: np.ndarray
    mean: dict[str, np.ndarray]
    variance: dict[str, np.ndarray] | None
    info: dict

    def evaluate(self, targets, task: str = "regression") -> list[dict]:
        """One plain record per (kind, ridge, time): {"kind", "diag_reg", "t", metric: value}.

        "regression": `targets` are y_test (M,) or (M, K); metrics MAE and RMSE in their units.
        "classification": `targets` are integer labels (M,); metric accuracy of the argmax.
        """
        if task not in ("regression", "classification"):
            raise ValueError(f"task must be 'regression' or 'classification', got {task!r}")
        targets = np.asarray(targets)
        m = next(iter(self.mean.values())).shape[2]
        if targets.shape[0] != m or (task == "classification" and targets.ndim != 1):
            raise ValueError(f"{task} targets must have {m} rows" + (" of integer labels" if task ==
                             "classification" else "") + f", got shape {targets.shape}")
        score = regression_metrics if task == "regression" else classification_metrics
        return [{"kind": kind, "diag_reg": float(reg), "t": float(t), **score(mean[r, i], targets)}
                for kind, mean in self.mean.items()
                for r, reg in enumerate(self.diag_reg) for i, t in enumerate(self.t)]


def _as_sequence(value, name: str) -> np.ndarray:
    array = np.atleast_1d(np.asarray(value, dtype=float))
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{name} must be a number or a non-empty list of numbers, got {value!r}")
    if np.isnan(array).any() or (array < 0).any():
        raise ValueError(f"{name} must be >= 0 (and not NaN), got {array.tolist()}")
    return array


def _check_targets(y_train, n: int) -> np.ndarray:
    y = np.asarray(y_train, dtype=float)
    y = y[:, None] if y.ndim == 1 else y
    if y.ndim != 2 or y.shape[0] != n:
        raise ValueError(f"y_train must have shape ({n},) or ({n}, outputs) to match the {n} training "
                         f"points of the Gram, got {np.shape(y_train)}")
    if not np.isfinite(y).all():
        raise ValueError(f"y_train has {int((~np.isfinite(y)).sum())} non-finite values")
    return y


def response(t: float, scale: float, ridge: float):
    """f_t on eigenvalues λ of K_dd (shifted by the ridge), as neural-tangents evaluates it."""
    def f(lam):
        lam = np.asarray(lam, float) + ridge
        if np.isinf(t):
            return 1.0 / lam
        positive = np.maximum(lam, 0.0)
        tau = t * scale
        small = positive * tau < 1e-8
        # (1 − e^{−λτ}) / λ → τ as λτ → 0; the series keeps it finite and exact there.
        return np.where(small, tau * (1 - positive * tau / 2),
                        -np.expm1(-positive * tau) / np.where(small, 1.0, np.abs(lam)))
    return f


def _working_set(n: int, outputs: int, columns: int, method: str, chunk: int, steps: int, rank: int,
                 workers: int) -> int:
    """Bytes a method holds at once (float64) for `outputs` targets and `columns` variance RHS.

    Test blocks are streamed tile by tile; the variance right-hand sides K_dt are held.
    """
    rhs = outputs + columns
    vectors = BOOKKEEPING + 8 * n * 5 * rhs  # right-hand sides, solutions, work vectors (CG: x, r, z, p, A p)
    # a matmat task holds its slab (chunk, N) as read and as a product operand, its (N, R)
    # partial product; the tree sum holds up to 4 partials per running task
    streaming = 8 * workers * (2 * chunk * max(n, chunk) + 6 * n * rhs)
    if method == "cholesky":
        return 4 * 8 * n * n + vectors + streaming  # K as read, K + ρI, the factor, LAPACK's copy
    if method == "eigh":
        return 4 * 8 * n * n + vectors + streaming  # K, eigenvectors, LAPACK workspace (2 N²)
    if method == "lanczos":
        return vectors + streaming + 8 * n * rhs * (steps + 1)  # the Krylov basis
    return vectors + streaming + 4 * 8 * n * min(rank, n)  # preconditioner: F, U, and the SVD's copy and work


def choose_method(method: str, infinite_only: bool, ridges: int, n: int, outputs: int, columns: int,
                  budget: int, chunk: int, steps: int, rank: int, workers: int) -> str:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method != "auto":
        if method in ("cholesky", "cg") and not infinite_only:
            raise ValueError(f"method {method!r} gives infinite-time predictions only; use 'eigh' or "
                             "'lanczos' for finite t")
        return method
    in_core = "cholesky" if infinite_only and ridges == 1 else "eigh"
    if _working_set(n, outputs, columns, in_core, chunk, steps, rank, workers) <= budget:
        return in_core
    return "cg" if infinite_only and ridges == 1 else "lanczos"


class _Spectral:
    """f(K_dd + ρI) @ B for one kind by the chosen method."""

    def __init__(self, source: GramSource, kind: str, method: str, tol: float, max_iterations: int,
                 preconditioner_rank: int, info: dict):
        self.source, self.kind, self.method = source, kind, method
        self.tol, self.max_iterations, self.rank = tol, max_iterations, preconditioner_rank
        self.info = info
        self.eigen = None
        self.factors = {}
        self.low_rank = None  # K ≈ F Fᵀ for the CG preconditioner; one per kind, shared by every ridge
        self.diagonal = source.diagonal(kind)
        self.trace = float(self.diagonal.sum())
        if method == "eigh":
            values, vectors = np.linalg.eigh(source.dense(kind))
            self.eigen = values, vectors

    def ridge(self, diag_reg: float, absolute: bool) -> float:
        return diag_reg if absolute else diag_reg * self.trace / self.source.n

    def apply(self, rhs: np.ndarray, functions: Sequence, ridge: float) -> list[np.ndarray]:
        """[f(K_dd) @ rhs for f in functions]; each f already includes the ridge shift."""
        if self.method == "eigh":
            values, vectors = self.eigen
            projected = vectors.T @ rhs
            return [vectors @ (f(values)[:, None] * projected) for f in functions]
        if self.method == "cholesky":
            if ridge not in self.factors:
                self.factors[ridge] = DaskCholesky(self.source.to_dask(self.kind), ridge)
                self.info["condition_bound"] = self.factors[ridge].condition_bound
            x = self.factors[ridge].solve(rhs)
            return [x for _ in functions]  # t = ∞ only: every function is 1/λ
        if self.method == "cg":
            if self.low_rank is None:
                self.low_rank = rp_cholesky(self.diagonal, lambda index: self.source.rows(self.kind, index),
                                            self.rank)
            if ridge not in self.factors:
                self.factors[ridge] = NystromPreconditioner(self.low_rank, ridge)
            x, cg = block_cg(lambda v: self.source.matmat(self.kind, v) + ridge * v, rhs,
                             self.factors[ridge], tol=self.tol, maxiter=self.max_iterations)
            self.info.setdefault("cg", []).append(dataclasses.asdict(cg))
            return [x for _ in functions]
        out, lanczos = lanczos_functions(lambda v: self.source.matmat(self.kind, v), rhs, functions,
                                         tol=self.tol, max_steps=self.max_iterations)
        self.info.setdefault("lanczos", []).append(dataclasses.asdict(lanczos))
        return out


def _threads(blas_threads: int | None, method: str) -> tuple[int, int]:
    """BLAS threads and dask threads, their product <= cores.

    Default: eigh is one LAPACK call and gets every core as BLAS threads; the other
    methods are dask task graphs (blocks of the factorisation, tile rows of K @ X), which
    run faster as one task per core with single-threaded BLAS (N = 8192 Cholesky on
    2 cores: 3.9 s vs 4.7 s with one task at a time on 2 BLAS threads).
    """
    default = CORES if method == "eigh" else 1
    blas = max(1, min(blas_threads or default, CORES))
    return blas, max(1, CORES // blas)


@contextlib.contextmanager
def _compute_context(blas: int, workers: int, scheduler):
    """BLAS thread limit, dask thread count and (if given) the dask scheduler for a solve."""
    import dask
    from threadpoolctl import threadpool_limits

    if scheduler == "ray":
        from ray.util.dask import ray_dask_get

        scheduler = ray_dask_get
    settings = {"num_workers": workers} | ({"scheduler": scheduler} if scheduler is not None else {})
    with threadpool_limits(limits=blas, user_api="blas"), dask.config.set(settings):
        yield


def predict(source, y_train, *, t=math.inf, kinds: Sequence[str] = KINDS, diag_reg=0.0,
            diag_reg_absolute_scale: bool = False, learning_rate: float = 1.0,
            compute_variance: bool = True, method: str = "auto", memory_budget: int | None = None,
            tol: float = 1e-10, max_iterations: int = 1000, preconditioner_rank: int = 256,
            blas_threads: int | None = None, scheduler=None) -> Prediction:
    """Mean (and variance) of the infinitely wide network on the test points of `source`.

    `source` is a `GramSource` or a finished `GramStore`; `y_train` (N,) or (N, K);
    `t` and `diag_reg` a number or a list (every combination is returned; t = inf is
    infinite training time). `scheduler`: the dask scheduler for the store reads and
    blocked algebra ("ray" runs them as tasks on the connected Ray cluster; default:
    dask's active one, threads). Raises ValueError on bad input before any work.
    """
    from .store import GramStore

    if isinstance(source, GramStore):
        source = GramSource.from_store(source)
    kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds)
    if not kinds or any(k not in KINDS for k in kinds):
        raise ValueError(f"kinds must be names from {KINDS}, got {kinds!r}")
    needed = set(kinds) | ({"nngp"} if compute_variance else set())
    source.require(sorted(needed), test=True)
    y = _check_targets(y_train, source.n)
    ridges = _as_sequence(diag_reg, "diag_reg")
    times = _as_sequence(t, "t")
    if not learning_rate > 0:
        raise ValueError(f"learning_rate must be > 0, got {learning_rate}")
    if memory_budget is None:
        import psutil

        memory_budget = psutil.virtual_memory().available // 2
    if scheduler == "ray":
        import ray

        if not ray.is_initialized():
            raise ValueError('scheduler="ray" needs a connected Ray cluster: call ray.init() first')
    infinite_only = bool(np.isinf(times).all())
    columns = 2 * source.m if compute_variance else 0
    most_workers = _threads(blas_threads, "cg")[1]
    chosen = choose_method(method, infinite_only, len(ridges), source.n, y.shape[1], columns,
                           memory_budget, source.chunk, max_iterations, preconditioner_rank, most_workers)
    blas, workers = _threads(blas_threads, chosen)
    need = _working_set(source.n, y.shape[1], columns, chosen, source.chunk, max_iterations,
                        preconditioner_rank, workers)
    if need > memory_budget:
        raise MemoryError(f"method {chosen!r} needs about {need / 2**20:.0f} MiB, more than the memory "
                          f"budget of {memory_budget / 2**20:.0f} MiB" + (
                              "; fewer Lanczos steps (max_iterations) or compute_variance=False need less"
                              if chosen == "lanczos" else ""))
    info = {"method": chosen, "working_set_bytes": need, "memory_budget_bytes": int(memory_budget)}
    scale = learning_rate / y.size
    means, variances = {}, {}
    with _compute_context(blas, workers, scheduler):
        for kind in kinds:
            spectral = _Spectral(source, kind, chosen, tol, max_iterations, preconditioner_rank,
                                 info.setdefault(kind, {}))
            means[kind], variances[kind] = _predict_kind(source, spectral, kind, y, ridges, times, scale,
                                                         diag_reg_absolute_scale, compute_variance)
    return Prediction(ridges, times, means, variances if compute_variance else None, info)


def _predict_kind(source, spectral, kind, y, ridges, times, scale, absolute, compute_variance):
    m = source.m
    mean = np.empty((len(ridges), len(times), m, y.shape[1]))
    variance = np.empty((len(ridges), len(times), m)) if compute_variance else None
    if compute_variance:  # read once, used for every ridge
        nngp_tt = source.self_kernel("nngp")
        nngp_dt = _test_columns(source, "nngp")
        columns = nngp_dt if kind == "nngp" else np.concatenate([_test_columns(source, kind), nngp_dt], axis=1)
    for r, diag_reg in enumerate(ridges):
        ridge = spectral.ridge(diag_reg, absolute)
        f_t = [response(t, scale, ridge) for t in times]
        for i, solved in enumerate(spectral.apply(y, f_t, ridge)):
            mean[r, i] = source.cross_matmat(kind, solved)
        if not compute_variance:
            continue
        if kind == "nngp":
            f_2t = [response(2 * t, scale, ridge) for t in times]
            for i, solved in enumerate(spectral.apply(columns, f_2t, ridge)):
                variance[r, i] = nngp_tt - source.cross_rowdot("nngp", solved)
        else:
            for i, solved in enumerate(spectral.apply(columns, f_t, ridge)):
                b_t, c_t = solved[:, :m], solved[:, m:]
                quadratic = np.einsum("nm,nm->m", b_t, source.matmat("nngp", b_t))
                variance[r, i] = nngp_tt + quadratic - 2 * source.cross_rowdot(kind, c_t)
    return mean, variance


def _test_columns(source: GramSource, kind: str) -> np.ndarray:
    """K_dt (N, M): the test×train block transposed, as right-hand sides."""
    return np.ascontiguousarray(np.asarray(source.test_train[kind][...]).T)


def regression_metrics(mean: np.ndarray, y_test: np.ndarray) -> dict[str, float]:
    """MAE and RMSE in the targets' units."""
    error = np.asarray(mean) - np.asarray(y_test).reshape(np.shape(mean))
    return {"mae": float(np.abs(error).mean()), "rmse": float(np.sqrt((error ** 2).mean()))}


def one_hot_targets(labels, classes: int) -> np.ndarray:
    """Centred one-hot targets (N, classes): 1 − 1/C for the label, −1/C elsewhere (rows sum to 0)."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.min() < 0 or labels.max() >= classes:
        raise ValueError(f"labels must be integers in [0, {classes}), got range "
                         f"[{labels.min()}, {labels.max()}]")
    return (labels[:, None] == np.arange(classes)) - 1.0 / classes


def classification_metrics(mean: np.ndarray, labels) -> dict[str, float]:
    """Accuracy of argmax predictions."""
    return {"accuracy": float((np.argmax(mean, axis=-1) == np.asarray(labels)).mean())}
