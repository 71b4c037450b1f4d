"""Blocked Cholesky solves with dask for any N (dask's own needs equal square chunks).

A (N, N) is rechunked into g×g blocks of size c = ceil(N / g) and padded to g·c with an
identity block: chol([[A, 0], [0, I]]) = [[L, 0], [0, I]], so the padded solve returns
A⁻¹B exactly in its first N rows. Used when A fits the memory budget.
"""
from __future__ import annotations

import math

import numpy as np

BLOCK = 2048  # factorisation block size: large enough for BLAS, few enough tasks for dask


class IllConditioned(np.linalg.LinAlgError):
    """The (regularised) kernel is not numerically positive definite."""


def _add_to_diagonal(block: np.ndarray, value: float, ones: int, block_info=None) -> np.ndarray:
    """block + value·I on a diagonal block of the (g·c)² matrix; padding rows (index >= N) get 1."""
    (r0, r1), (c0, _) = block_info[0]["array-location"]
    if r0 != c0:
        return block
    out = block.copy()
    index = np.arange(r0, r1)
    out[index - r0, index - r0] += np.where(index < ones, value, 1.0)
    return out


def _regularised_padded(a, reg: float, c: int, g: int):
    """[[A + reg·I, 0], [0, I]] in (g·c)² with c×c chunks."""
    n = a.shape[0]
    pad = g * c - n
    a = a.rechunk(c)
    if pad:
        import dask.array as da

        a = da.pad(a, ((0, pad), (0, pad))).rechunk(c)
    return a.map_blocks(_add_to_diagonal, reg, n, dtype=a.dtype)


class DaskCholesky:
    """L with A + reg·I = L Lᵀ, factorised blockwise by dask; `solve(B)` gives (A + reg·I)⁻¹ B.

    `a` is a dask array (N, N) (e.g. `GramSource.to_dask`). Raises `IllConditioned`
    when the factorisation fails or its pivots say the matrix is numerically singular.
    """

    def __init__(self, a, reg: float, block: int = BLOCK):
        import dask.array as da

        n = a.shape[0]
        self.n = n
        self.g = math.ceil(n / block)
        self.c = math.ceil(n / self.g)
        padded = _regularised_padded(a, reg, self.c, self.g)
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
        """(A + reg·I)⁻¹ b for b (N,) or (N, R)."""
        import dask.array as da

        vector = b.ndim == 1
        b = b[:, None] if vector else b
        padded = np.zeros((self.g * self.c, b.shape[1]), np.result_type(b, self.lower.dtype))
        padded[:self.n] = b
        rhs = da.from_array(padded, chunks=(self.c, b.shape[1]))
        y = da.linalg.solve_triangular(self.lower, rhs, lower=True)
        x = da.linalg.solve_triangular(self.lower.T, y, lower=False).compute()[:self.n]
        return x[:, 0] if vector else x
