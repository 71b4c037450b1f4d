"""`Method`: the one interface of the solver methods, and the memory model they share.

`predict` needs, for each kind, f(K_dd + ρI) @ B for a few blocks of right-hand sides
B (the targets, the variance columns) and a few functions f (one per training time).
The methods differ in how they get it (a factorisation, an eigendecomposition, Krylov
iterations) and in what they hold in memory while doing so. Each is one class in its
own module (`cholesky`, `eigh`, `cg`, `lanczos`) deriving from `Method`;
`raygram.solve.methods` collects them in the registry `METHODS` and lets "auto" choose
among them by their working sets, so `predict` holds no per-method branches. The
algorithms (`DaskCholesky`, `block_cg`, `rp_cholesky`, `lanczos_functions`) know
nothing of this interface: the classes are thin adapters around them.
"""
from __future__ import annotations

import abc
import os
import warnings
from typing import Callable, ClassVar, Sequence

import numpy as np

from raygram.config import SolverOptions
from raygram.errors import SolveError

__all__ = ["Method", "shared_working_set", "check_spectrum", "SingularRidgeWarning", "BOOKKEEPING", "CORES"]

# Bytes held besides arrays: dask graphs, zarr reads in flight, Python objects.
BOOKKEEPING = 8 * 2**20
CORES = os.cpu_count() or 1


def shared_working_set(n: int, rhs: int, chunk: int, workers: int) -> int:
    """Bytes every method holds (float64) besides its own factors or bases.

    Args:
      n: training points N.
      rhs: right-hand sides solved together: target outputs plus variance columns.
      chunk: side of a stored tile (rows of K per dask task).
      workers: dask tasks running at once.

    Returns:
      Bookkeeping, plus the right-hand sides, solutions and work vectors (N, rhs) (CG
      holds five: x, r, z, p, A p), plus per running task a slab (chunk, N) of K as read
      and as a product operand and six arrays (N, rhs): its partial product and the
      partials the tree sum holds.
      Test blocks are streamed tile by tile and not counted.
    """
    vectors = BOOKKEEPING + 8 * n * 5 * rhs
    streaming = 8 * workers * (2 * chunk * max(n, chunk) + 6 * n * rhs)
    return vectors + streaming


class SingularRidgeWarning(RuntimeWarning):
    """K_dd + ρI is singular to round-off at a ridge ρ > 0: the predictions at that ridge are not reliable."""


def check_spectrum(smallest: float, largest: float, n: int, dtype, shift: float,
                   functions: Sequence[Callable[[np.ndarray], np.ndarray]]) -> None:
    """Refuse f(K_dd + ρI) when K_dd + ρI is singular to round-off where f needs it to be regular.

    An eigenvalue of K (N, N) computed in floating point is uncertain by about
    round-off = N · eps · λ_max: eigh is backward stable with an error bound p(N) · eps ·
    ‖K‖₂, p(N) at most of order N, and Lanczos's products K @ X carry errors of the same
    bound; eps is that of K's dtype, whose rounding K's values already carry. Refused:

    - λ_min + ρ < −round-off: K + ρI has a negative eigenvalue beyond round-off (a
      kernel is positive semi-definite);
    - |f(λ)| · round-off >= 1 at λ_min or λ_max for some f: there a change of λ by its
      round-off changes f(λ) by 100% or more, so the result is round-off. For f = 1 /
      (λ + ρ) (t = ∞) that is λ_min + ρ <= round-off; a finite-time f_t <= τ is refused
      only when τ · round-off >= 1 (a singular kernel at finite t is fine).

    Args:
      smallest: the smallest computed eigenvalue of K_dd (or Ritz value), unshifted.
      largest: the largest.
      n: N, the side of K_dd.
      dtype: K_dd's dtype (its eps sets the round-off).
      shift: ρ >= 0, added to K_dd's diagonal.
      functions: the f applied, each mapping unshifted eigenvalues (k,) to f(λ) (k,)
        with the shift inside, monotone in λ on the spectrum (as every f_t is).

    Raises:
      SolveError: "the kernel is singular; use diag_reg > 0" at ρ = 0. At ρ > 0 the same
        condition warns (`SingularRidgeWarning`, asking for a larger diag_reg) instead: a
        sweep over ridges must not stop at its smallest one.
    """
    round_off = n * np.finfo(dtype).eps * max(abs(largest), abs(smallest))
    ends = np.array([smallest, largest], float)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        worst = max((float(np.abs(f(ends)).max()) for f in functions), default=0.0)
    if smallest + shift < -round_off or not np.isfinite(worst) or worst * round_off >= 1:
        if shift == 0:
            raise SolveError("the kernel is singular; use diag_reg > 0")
        # A ridge sweep keeps going (the validation split sets such a ridge aside), but says so.
        warnings.warn(f"the kernel plus the ridge {shift:.1e} is singular to round-off (smallest eigenvalue "
                      f"{smallest + shift:.1e}); its predictions are not reliable: use a larger diag_reg",
                      SingularRidgeWarning, stacklevel=2)


class Method(abc.ABC):
    """f(K_dd + ρI) @ B for one kind of one `GramSource`, by one method.

    A subclass sets the class attributes and implements `working_set` and `apply`;
    `prepare` (by default the constructor) does the work shared by every ridge and time
    of a kind, e.g. an eigendecomposition, and returns the instance whose `apply`
    `predict` calls.

    Class attributes:
      name: the method's name in `SolverOptions.method` and in the registry `METHODS`.
      infinite_time_only: True when the method solves (K + ρI) X = B rather than
        evaluating f, so it serves t = ∞ only (every f is 1 / (λ + ρ)).
      in_core: True when the method holds K (N, N) in memory; False when it only
        streams K's stored tiles (out of core).
      blas_all_cores: True for a method that is one LAPACK call (it gets every core as
        BLAS threads); False for dask task graphs (one single-threaded task per core).
      memory_hint: what to change when the working set exceeds the budget.
    """

    name: ClassVar[str]
    infinite_time_only: ClassVar[bool]
    in_core: ClassVar[bool]
    blas_all_cores: ClassVar[bool] = False
    memory_hint: ClassVar[str] = ""

    def __init__(self, source, kind: str, options: SolverOptions, info: dict):
        self.source, self.kind, self.options, self.info = source, kind, options, info

    @classmethod
    def prepare(cls, source, kind: str, options: SolverOptions, info: dict) -> "Method":
        """The method ready to apply f(K_dd + ρI) for one kind.

        Args:
          source: the `GramSource` holding K_dd (N, N) of `kind`.
          kind: "nngp" or "ntk".
          options: the solver settings (tolerance, iterations, preconditioner rank, ...).
          info: a dict the method records into (iterations, residuals, condition bound).

        Returns:
          An instance whose `apply` computes f(K_dd + ρI) @ B.
        """
        return cls(source, kind, options, info)

    @classmethod
    def working_set(cls, n: int, outputs: int, columns: int, chunk: int, options: SolverOptions,
                    workers: int) -> int:
        """Bytes (float64) the method holds at once: what every method holds (`shared_working_set`)
        plus its own (`own_bytes`).

        Args:
          n: training points N.
          outputs: target outputs K of y_train (N, K).
          columns: variance right-hand sides (0 without variances).
          chunk: side of a stored tile.
          options: the solver settings (`max_iterations`, `preconditioner_rank`).
          workers: dask tasks running at once (`threads(options)[1]`).

        Returns:
          The working set in bytes, compared with the memory budget.
        """
        return shared_working_set(n, outputs + columns, chunk, workers) + cls.own_bytes(n, outputs + columns, options)

    @classmethod
    @abc.abstractmethod
    def own_bytes(cls, n: int, rhs: int, options: SolverOptions) -> int:
        """Bytes of what this method holds beyond `shared_working_set` (its factor, basis, ...).

        Args:
          n: training points N.
          rhs: right-hand sides R (target outputs plus variance columns).
          options: the solver settings (`max_iterations`, `preconditioner_rank`).
        """

    @abc.abstractmethod
    def apply(self, rhs: np.ndarray, functions: Sequence[Callable[[np.ndarray], np.ndarray]],
              shift: float) -> list[np.ndarray]:
        """[f(K_dd) @ rhs for f in functions].

        Args:
          rhs: right-hand sides B, shape (N, R).
          functions: each maps eigenvalues λ (k,) of the unshifted K_dd to f(λ) (k,),
            with the shift already inside, e.g. 1 / (λ + ρ).
          shift: ρ >= 0, the absolute value added to K_dd's diagonal (in the kernel's
            units); infinite-time-only methods solve (K_dd + ρI) X = B with it.

        Returns:
          One array (N, R) per function.
        """

    @classmethod
    def threads(cls, options: SolverOptions) -> tuple[int, int]:
        """BLAS threads and dask threads for this method, their product at most the cores.

        Args:
          options: `options.blas_threads` (None: every core for a single LAPACK call,
            else 1).

        Returns:
          (blas_threads, dask_workers).
        """
        default = CORES if cls.blas_all_cores else 1
        blas = max(1, min(options.blas_threads or default, CORES))
        return blas, max(1, CORES // blas)
