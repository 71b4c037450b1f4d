"""Kernel regression from a stored Gram: the infinitely wide network's test predictions.

Follows `neural_tangents.predict.gradient_descent_mse_ensemble` (and `gp_inference`
at t = ∞) exactly, for the Gram blocks of a `GramStore` or arrays in memory, so that
a Gram too large for neural-tangents' dense algebra gives the same numbers. With the
shift ρ (ρ = diag_reg · trace(K_dd) / N, or ρ = diag_reg with
`diag_reg_absolute_scale`), A = K_dd + ρI and τ = learning_rate · t / y_train.size:

    f_t(λ) = (1 − e^{−max(λ, 0) τ}) / λ          (f_∞(λ) = 1 / λ)
    mean_t  = K_td f_t(A) y
    NNGP:  var_t = k_tt − diag(K_td f_{2t}(A) K_dt)
    NTK:   var_t = k_tt + diag(B_tᵀ K_dd B_t) − 2 diag(Θ_td f_t(A) K_dt),  B_t = f_t(A) Θ_dt

(K: NNGP, Θ: NTK; for "nngp" every kernel is K). `diag_reg` always names the relative
(or, with `diag_reg_absolute_scale`, absolute) setting; `shift` names ρ, the value
actually added to the diagonal. f(A) is applied by one of the methods of
`raygram.solve.methods.METHODS`, all applying it to several right-hand sides at once:

- "cholesky": dask blocked Cholesky (t = ∞), in core;
- "eigh": one eigendecomposition of K_dd serves every t and every ridge, in core;
- "cg": block PCG with a Nyström preconditioner (t = ∞), out of core;
- "lanczos": one Krylov basis per ridge serves every t, out of core.

"auto" takes an in-core method when its working set fits `memory_budget`. Nothing wrong is
read: a store's tiles are checked as they are read (`CorruptTile`), arrays are checked by
`GramSource.from_arrays` (`ConfigError`), and eigh and lanczos refuse a kernel singular to
round-off where the answer needs its inverse (`SolveError` at zero ridge, a warning at a
ridge > 0; see `base.check_spectrum`).
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Sequence

import numpy as np

from raygram.config import KINDS, SolverOptions
from raygram.errors import ConfigError
from raygram.solve.base import Method
from raygram.solve.methods import choose_method
from raygram.solve.metrics import classification_metrics, regression_metrics
from raygram.solve.source import GramSource

__all__ = ["Prediction", "predict", "response"]

TASKS = ("regression", "classification")


@dataclasses.dataclass
class Prediction:
    """Test predictions per kind, ridge and training time.

    Attributes:
      diag_reg: the ridges `solver.diag_reg`, shape (R,).
      times: the training times `solver.times`, shape (T,) (inf: infinite time).
      mean: {kind: predictions (R, T, M, K)} for y_train (N, K) (K = 1 for y_train (N,)).
      variance: {kind: predictive variances (R, T, M)}, or None without
        `compute_variance`.
      info: how it was computed: "method", "working_set_bytes", "memory_budget_bytes",
        and per kind the method's record ("cg" / "lanczos" runs, "condition_bound").
    """

    diag_reg: np.ndarray
    times: np.ndarray
    mean: dict[str, np.ndarray]
    variance: dict[str, np.ndarray] | None
    info: dict

    def evaluate(self, targets, task: str = "regression") -> list[dict]:
        """Scores of every (kind, ridge, time), as plain records.

        Args:
          targets: "regression": y_test, shape (M,) or (M, K); "classification":
            integer labels, shape (M,).
          task: "regression" (metrics `mae`, `rmse` in the targets' units, by
            `regression_metrics`) or "classification" (`accuracy` of the argmax, by
            `classification_metrics`).

        Returns:
          One record per kind, ridge and time, in that order:
          {"kind": str, "diag_reg": float, "t": float, metric: float, ...}; "diag_reg"
          and "t" are the record's single ridge and time.

        Raises:
          ConfigError: an unknown task, or targets that do not match the M test points.
        """
        if task not in TASKS:
            raise ConfigError(f"task must be 'regression' or 'classification', got {task!r}")
        targets = np.asarray(targets)
        m = next(iter(self.mean.values())).shape[2]
        if targets.shape[0] != m or (task == "classification" and targets.ndim != 1):
            raise ConfigError(f"{task} targets must have {m} rows" + (" of integer labels" if task ==
                              "classification" else "") + f", got shape {targets.shape}")
        score = regression_metrics if task == "regression" else classification_metrics
        return [{"kind": kind, "diag_reg": float(reg), "t": float(t), **score(mean[r, i], targets)}
                for kind, mean in self.mean.items()
                for r, reg in enumerate(self.diag_reg) for i, t in enumerate(self.times)]


def response(t: float, scale: float, shift: float):
    """f_t on eigenvalues λ of the unshifted K_dd, as neural-tangents evaluates it.

    Args:
      t: training time (inf: infinite time, f = 1 / (λ + ρ)).
      scale: learning_rate / y_train.size (τ = t · scale).
      shift: ρ, the value added to K_dd's diagonal.

    Returns:
      f mapping eigenvalues λ (k,) to f_t(λ + ρ) (k,).
    """
    def f(lam):
        lam = np.asarray(lam, float) + shift
        if np.isinf(t):
            return 1.0 / lam
        positive = np.maximum(lam, 0.0)
        tau = t * scale
        small = positive * tau < 1e-8
        # (1 − e^{−λτ}) / λ → τ as λτ → 0; the series keeps it finite and exact there.
        return np.where(small, tau * (1 - positive * tau / 2),
                        -np.expm1(-positive * tau) / np.where(small, 1.0, np.abs(lam)))
    return f


def predict(source, y_train, solver: SolverOptions | None = None, *, kinds: Sequence[str] = KINDS,
            **settings) -> Prediction:
    """Mean (and variance) of the infinitely wide network on the test points of `source`.

    Every combination of `solver.diag_reg` (R,) and `solver.times` (T,) comes from one
    factorisation, eigendecomposition or preconditioner per kind (`SolverOptions`).

    Args:
      source: a `GramSource`, or a finished `GramStore`, with the train Gram K_dd
        (N, N), the test×train block K_td (M, N) and the test self-kernels (M,) of
        `kinds` (and of "nngp" when computing variances).
      y_train: training targets, shape (N,) or (N, K).
      solver: the solver settings (YAML section `solver`); None: `SolverOptions()`.
      kinds: the kernels to predict with, names from ("nngp", "ntk").
      **settings: `SolverOptions` fields replacing those of `solver`, each checked as
        in the YAML, e.g. ``times=[1.0, math.inf], diag_reg=[1e-4, 1e-2],
        compute_variance=True``. numpy arrays and scalars are read as lists and
        numbers.

    Returns:
      A `Prediction`: means (R, T, M, K) and, with `compute_variance`, variances
      (R, T, M) per kind.

    Raises:
      ConfigError: bad settings, kinds, targets or source, before any work.
      MemoryBudgetExceeded: the method's working set exceeds `memory_budget`, before
        any work.
      IllConditioned, NotConverged: the solve failed (increase diag_reg).
      SolveError: at zero ridge, the kernel is singular to round-off where the answer
        needs its inverse (`raygram.solve.base.check_spectrum`; eigh and lanczos; at a
        ridge > 0 a `SingularRidgeWarning` instead).
      CorruptTile: a tile of the store is missing or fails its checksum.
      StoreError: the store is incomplete or damaged.
    """
    from raygram.store.gram_store import GramStore

    options = _options(solver, settings)
    if isinstance(source, GramStore):
        source = GramSource.from_store(source)
    kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds)
    if not kinds or any(k not in KINDS for k in kinds):
        raise ConfigError(f"kinds must be names from {KINDS}, got {kinds!r}")
    source.require(sorted(set(kinds) | ({"nngp"} if options.compute_variance else set())), test=True)
    y = _check_targets(y_train, source.n)
    budget = options.memory_budget
    if budget is None:
        import psutil

        budget = psutil.virtual_memory().available // 2
    if options.scheduler == "ray":
        import ray

        if not ray.is_initialized():
            raise ConfigError('solver.scheduler: "ray" needs a connected Ray cluster: call ray.init() first')
    method, need = choose_method(options, n=source.n, outputs=y.shape[1],
                                 columns=2 * source.m if options.compute_variance else 0,
                                 chunk=source.chunk, budget=budget)
    info = {"method": method.name, "working_set_bytes": need, "memory_budget_bytes": int(budget)}
    means, variances = {}, {}
    with _compute_context(*method.threads(options), options.scheduler):
        for kind in kinds:
            prepared = method.prepare(source, kind, options, info.setdefault(kind, {}))
            means[kind], variances[kind] = _predict_kind(source, prepared, kind, y, options)
    return Prediction(np.asarray(options.diag_reg, float), np.asarray(options.times, float), means,
                      variances if options.compute_variance else None, info)


def _options(solver: SolverOptions | None, settings: dict) -> SolverOptions:
    """`solver` (default `SolverOptions()`) with `settings` replacing its fields, checked."""
    if solver is None:
        solver = SolverOptions()
    if not isinstance(solver, SolverOptions):
        raise ConfigError(f"solver must be a SolverOptions (SolverOptions.from_mapping reads a mapping), "
                          f"got {type(solver).__name__}")
    names = {field.name for field in dataclasses.fields(SolverOptions)}
    unknown = sorted(set(settings) - names)
    if unknown:
        raise ConfigError(f"solver: unknown setting(s) {unknown}; allowed: {sorted(names)}")
    plain = {key: value.tolist() if isinstance(value, (np.ndarray, np.generic)) else value
             for key, value in settings.items()}
    solver = dataclasses.replace(solver, **plain) if plain else solver
    if isinstance(solver.times, str):  # "auto" is an experiment's choice, made from its training Gram
        raise ConfigError("solver.times: predict needs the training times as numbers (\"auto\" is chosen by "
                          "raygram run from the kernel's spectrum)")
    return solver


def _check_targets(y_train, n: int) -> np.ndarray:
    """y_train as a float array (N, K); ConfigError unless it has N rows of finite values."""
    y = np.asarray(y_train, dtype=float)
    y = y[:, None] if y.ndim == 1 else y
    if y.ndim != 2 or y.shape[0] != n:
        raise ConfigError(f"y_train must have shape ({n},) or ({n}, outputs) to match the {n} training "
                          f"points of the Gram, got {np.shape(y_train)}")
    if not np.isfinite(y).all():
        raise ConfigError(f"y_train has {int((~np.isfinite(y)).sum())} non-finite values")
    return y


@contextlib.contextmanager
def _compute_context(blas: int, workers: int, scheduler: str | None):
    """BLAS thread limit, dask thread count and (if given) the dask scheduler for a solve."""
    import dask
    from threadpoolctl import threadpool_limits

    if scheduler == "ray":
        from ray.util.dask import ray_dask_get

        scheduler = ray_dask_get
    settings = {"num_workers": workers} | ({"scheduler": scheduler} if scheduler is not None else {})
    with threadpool_limits(limits=blas, user_api="blas"), dask.config.set(settings):
        yield


def _predict_kind(source: GramSource, method: Method, kind: str, y: np.ndarray,
                  options: SolverOptions) -> tuple[np.ndarray, np.ndarray | None]:
    """Means (R, T, M, K) and variances (R, T, M) (or None) of one kind."""
    m, n = source.m, source.n
    diag_regs, times = options.diag_reg, options.times
    scale = options.learning_rate / y.size
    trace = float(source.diagonal(kind).sum())
    mean = np.empty((len(diag_regs), len(times), m, y.shape[1]))
    variance = np.empty((len(diag_regs), len(times), m)) if options.compute_variance else None
    if options.compute_variance:  # read once, used for every ridge
        nngp_tt = source.self_kernel("nngp")
        nngp_dt = _test_columns(source, "nngp")
        columns = nngp_dt if kind == "nngp" else np.concatenate([_test_columns(source, kind), nngp_dt], axis=1)
    for r, diag_reg in enumerate(diag_regs):
        shift = diag_reg if options.diag_reg_absolute_scale else diag_reg * trace / n
        f_t = [response(t, scale, shift) for t in times]
        for i, solved in enumerate(method.apply(y, f_t, shift)):
            mean[r, i] = source.cross_matmat(kind, solved)
        if not options.compute_variance:
            continue
        if kind == "nngp":
            f_2t = [response(2 * t, scale, shift) for t in times]
            for i, solved in enumerate(method.apply(columns, f_2t, shift)):
                variance[r, i] = nngp_tt - source.cross_rowdot("nngp", solved)
        else:
            for i, solved in enumerate(method.apply(columns, f_t, shift)):
                b_t, c_t = solved[:, :m], solved[:, m:]
                quadratic = np.einsum("nm,nm->m", b_t, source.matmat("nngp", b_t))
                variance[r, i] = nngp_tt + quadratic - 2 * source.cross_rowdot(kind, c_t)
    return mean, variance


def _test_columns(source: GramSource, kind: str) -> np.ndarray:
    """K_dt (N, M): the test×train block transposed, as right-hand sides."""
    return np.ascontiguousarray(np.asarray(source.test_train[kind][...]).T)
