"""In-core spectral solves: one eigendecomposition of K_dd serves every time and every ridge.

With K_dd = V diag(λ) Vᵀ, f(K_dd) B = V diag(f(λ)) Vᵀ B for any function f, so the
finite-time responses f_t and every ridge shift come from one `numpy.linalg.eigh` per
kind. It is one LAPACK call, so it runs on every core as BLAS threads. Before applying
f, `check_spectrum` refuses a kernel that is singular to round-off where f needs its
inverse (t = ∞ at zero ridge: "the kernel is singular; use diag_reg > 0").
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from raygram.config import SolverOptions
from raygram.solve.base import Method, check_spectrum

__all__ = ["EighMethod"]


class EighMethod(Method):
    """Solver method "eigh": f(K_dd) B = V diag(f(λ)) Vᵀ B from one eigendecomposition per kind."""

    name = "eigh"
    infinite_time_only = False
    in_core = True
    blas_all_cores = True
    memory_hint = "an out-of-core method (lanczos) needs less"

    def __init__(self, source, kind: str, options: SolverOptions, info: dict):
        super().__init__(source, kind, options, info)
        self.values, self.vectors = np.linalg.eigh(source.dense(kind))

    @classmethod
    def own_bytes(cls, n: int, rhs: int, options: SolverOptions) -> int:
        # K, the eigenvectors, and LAPACK's workspace (2 N²)
        return 4 * 8 * n * n

    def apply(self, rhs: np.ndarray, functions: Sequence[Callable[[np.ndarray], np.ndarray]],
              shift: float) -> list[np.ndarray]:
        check_spectrum(self.values[0], self.values[-1], self.source.n, self.source.dtype, shift, functions)
        projected = self.vectors.T @ rhs
        return [self.vectors @ (f(self.values)[:, None] * projected) for f in functions]
