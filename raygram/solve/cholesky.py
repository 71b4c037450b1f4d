"""In-core infinite-time solves: blocked Cholesky with dask, for any N.

dask's own Cholesky needs equal square chunks, so A (N, N) is rechunked into g×g
blocks of side c = ceil(N / g) and padded to g·c with an identity block:
chol([[A, 0], [0, I]]) = [[L, 0], [0, I]], and the padded solve returns A⁻¹B exactly in
its first N rows. `CholeskyMethod` is the solver method "cholesky": one factorisation
of K_dd + ρI per ridge, reused by the mean and the variance right-hand sides.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np

from raygram.config import SolverOptions
from raygram.errors import IllConditioned
from raygram.solve.base import Method

__all__ = ["DaskCholesky", "CholeskyMethod", "BLOCK"]

BLOCK = 2048  # factorisation block size: large enough for BLAS, few enough tasks for dask


def _add_to_diagonal(block: np.ndarray, value: float, ones: int, block_info=None) -> np.ndarray:
    """block + value·I on a diagonal block of the (g·c)² matrix; padding rows (index >= N) get 1."""
    (r0, r1), (c0, _) = block_info[0]["array-location"]
    if r0 != c0:
        return block
    out = block.copy()
    index = np.arange(r0, r1)
    out[index - r0, index - r0] += np.where(index < ones, value, 1.0)
    return out


def _regularised_padded(a, shift: float, c: int, g: int):
    """[[A + shift·I, 0], [0, I]] in (g·c)² with c×c chunks."""
    n = a.shape[0]
    pad = g * c - n
    a = a.rechunk(c)
    if pad:
        import dask.array as da

        a = da.pad(a, ((0, pad), (0, pad))).rechunk(c)
    return a.map_blocks(_add_to_diagonal, shift, n, dtype=a.dtype)


class DaskCholesky:
    """L with A + shift·I = L Lᵀ, factorised blockwise by dask; `solve(B)` gives (A + shift·I)⁻¹ B.

    Args:
      a: dask array (N, N), symmetric positive semi-definite (e.g. `GramSource.to_dask`).
      shift: ρ >= 0 added to the diagonal.
      block: the largest block side of the factorisation.

    Attributes:
      condition_bound: (max pivot / min pivot)², a lower bound on cond(A + shift·I).

    Raises:
      IllConditioned: the factorisation fails, or its pivots say the matrix is
        numerically singular (condition bound beyond 1 / (100 eps)).
    """

    def __init__(self, a, shift: float, block: int = BLOCK):
        import dask.array as da

        n = a.shape[0]
        self.n = n
        self.g = math.ceil(n / block)
        self.c = math.ceil(n / self.g)
        padded = _regularised_padded(a, shift, self.c, self.g)
        try:
            self.lower = da.linalg.cholesky(padded, lower=True).persist()
            pivots = da.diagonal(self.lower)[:n].compute()
        except np.linalg.LinAlgError as e:
            raise IllConditioned(
                f"the regularised train kernel is not positive definite ({e}); increase diag_reg") from None
        if not np.all(np.isfinite(pivots)) or pivots.min() <= 0:
            raise IllConditioned("the regularised train kernel is not positive definite; increase diag_reg")
        # cond(A) >= (max pivot / min pivot)²; beyond 1/(100·eps) solves lose every digit.
        self.condition_bound = float((pivots.max() / pivots.min()) ** 2)
        if self.condition_bound > 1 / (100 * np.finfo(pivots.dtype).eps):
            raise IllConditioned(
                f"the regularised train kernel is numerically singular (condition number >= "
                f"{self.condition_bound:.1e}); increase diag_reg")

    def solve(self, b: np.ndarray) -> np.ndarray:
        """(A + shift·I)⁻¹ b.

        Args:
          b: right-hand sides, shape (N,) or (N, R).

        Returns:
          The solution, of b's shape.
        """
        import dask.array as da

        vector = b.ndim == 1
        b = b[:, None] if vector else b
        padded = np.zeros((self.g * self.c, b.shape[1]), np.result_type(b, self.lower.dtype))
        padded[:self.n] = b
        rhs = da.from_array(padded, chunks=(self.c, b.shape[1]))
        y = da.linalg.solve_triangular(self.lower, rhs, lower=True)
        x = da.linalg.solve_triangular(self.lower.T, y, lower=False).compute()[:self.n]
        return x[:, 0] if vector else x


class CholeskyMethod(Method):
    """Solver method "cholesky": (K_dd + ρI)⁻¹ B by `DaskCholesky`, one factor per ridge (t = ∞)."""

    name = "cholesky"
    infinite_time_only = True
    in_core = True
    memory_hint = "an out-of-core method (cg) needs less"

    def __init__(self, source, kind: str, options: SolverOptions, info: dict):
        super().__init__(source, kind, options, info)
        self.factors: dict[float, DaskCholesky] = {}

    @classmethod
    def own_bytes(cls, n: int, rhs: int, options: SolverOptions) -> int:
        # K as read, K + ρI, the factor, and LAPACK's copy
        return 4 * 8 * n * n

    def apply(self, rhs: np.ndarray, functions: Sequence[Callable[[np.ndarray], np.ndarray]],
              shift: float) -> list[np.ndarray]:
        if shift not in self.factors:
            self.factors[shift] = DaskCholesky(self.source.to_dask(self.kind), shift)
            self.info["condition_bound"] = self.factors[shift].condition_bound
        x = self.factors[shift].solve(rhs)
        return [x for _ in functions]  # t = ∞ only: every function is 1 / (λ + ρ)
