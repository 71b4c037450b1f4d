"""Out-of-core infinite-time solves: block preconditioned conjugate gradients (solver method "cg").

`A = K + μI` (μ: the shift ρ of `predict`) is only touched through `K @ X` (one pass
over the stored tiles per iteration, shared by all right-hand sides) and, to build the
preconditioner, through the diagonal of K and r of its rows, chosen by block randomly
pivoted Cholesky (Chen, Epperly, Tropp, Webber 2022): K ≈ F Fᵀ with F (N, r). With
F = U Σ Vᵀ and λ = σ², the Nyström preconditioner (Frangella, Tropp, Udell 2023) is

    P⁻¹ = U diag((λ_r + μ) / (λ + μ)) Uᵀ + (I − U Uᵀ).

Memory grows with N·r, not N², which is what makes the method out of core; one F per
kind serves every ridge (only the cheap P⁻¹ depends on μ).
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np

from raygram.config import SolverOptions
from raygram.errors import NotConverged
from raygram.solve.base import Method

__all__ = ["CGInfo", "rp_cholesky", "NystromPreconditioner", "block_cg", "CGMethod"]


@dataclasses.dataclass
class CGInfo:
    """How a `block_cg` run went.

    Attributes:
      iterations: iterations run (matmat calls).
      residuals: the largest relative residual ‖b − A x‖ / ‖b‖ over the columns, before
        the first iteration and after each (iterations + 1 values).
      preconditioner_rank: rank of the preconditioner used (0: none).
    """

    iterations: int
    residuals: list[float]
    preconditioner_rank: int


def rp_cholesky(diagonal: np.ndarray, rows: Callable[[np.ndarray], np.ndarray], rank: int,
                block: int = 32, seed: int = 0) -> np.ndarray:
    """F with K ≈ F Fᵀ by block randomly pivoted Cholesky.

    Each round samples `block` pivots with probability ∝ the residual diagonal and keeps
    the directions of the pivot block above round-off; it stops at `rank` columns or
    when the residual diagonal has vanished.

    Args:
      diagonal: diag(K), shape (N,).
      rows: `rows(index)` returns K[index, :], shape (len(index), N), for integer
        indices (k,).
      rank: the largest number of columns of F.
      block: pivots sampled per round.
      seed: seed of the pivot sampling.

    Returns:
      F, shape (N, r) with r <= min(rank, N), in Fortran order.
    """
    rng = np.random.default_rng(seed)
    n = len(diagonal)
    residual = np.clip(np.asarray(diagonal, float).copy(), 0, None)
    total = residual.sum()
    # filled block of columns by block of columns; Fortran order keeps column slices contiguous for BLAS
    factor = np.empty((n, min(rank, n)), order="F")
    kept = 0
    while kept < factor.shape[1] and residual.sum() > 1e-12 * total:
        size = min(block, factor.shape[1] - kept, int(np.count_nonzero(residual)))
        pivots = np.unique(rng.choice(n, size=size, replace=False, p=residual / residual.sum()))
        g = rows(pivots).astype(float)
        g -= factor[pivots, :kept] @ factor[:, :kept].T
        h = g[:, pivots]
        values, vectors = np.linalg.eigh((h + h.T) / 2)
        keep = values > 1e-10 * max(values.max(), 0) if values.max() > 0 else np.zeros_like(values, bool)
        if not keep.any():
            break
        new = factor[:, kept:kept + int(keep.sum())]
        np.matmul(g.T, vectors[:, keep] / np.sqrt(values[keep]), out=new)
        kept += new.shape[1]
        residual = np.clip(residual - (new ** 2).sum(axis=1), 0, None)
        residual[pivots] = 0
    return factor[:, :kept]


class NystromPreconditioner:
    """P⁻¹ for A = K + μI from a low-rank factor K ≈ F Fᵀ; calling it applies P⁻¹.

    Args:
      factor: F, shape (N, r) (e.g. from `rp_cholesky`); r = 0 gives the identity.
      mu: μ >= 0, the shift of A.

    Calling it with residuals r (N, R) returns P⁻¹ r (N, R).
    """

    def __init__(self, factor: np.ndarray, mu: float):
        self.rank = factor.shape[1]
        if self.rank:
            u, sigma, _ = np.linalg.svd(factor, full_matrices=False)
            lam = sigma ** 2
            self.u = u
            self.scale = (lam[-1] + mu) / (lam + mu) - 1.0

    def __call__(self, r: np.ndarray) -> np.ndarray:
        """P⁻¹ r for residuals r, shape (N, R) (or (N,))."""
        if not self.rank:
            return r
        return r + self.u @ (self.scale[:, None] * (self.u.T @ r))


def block_cg(matmat: Callable[[np.ndarray], np.ndarray], b: np.ndarray, precondition=None,
             tol: float = 1e-10, maxiter: int = 1000) -> tuple[np.ndarray, CGInfo]:
    """X with A X = B for all columns of B at once, A symmetric positive definite.

    Each column runs its own CG recurrence; columns share one `matmat` per iteration.

    Args:
      matmat: `matmat(X)` returns A @ X for X (N, R).
      b: right-hand sides B, shape (N,) or (N, R).
      precondition: P⁻¹ as a callable on (N, R) (e.g. a `NystromPreconditioner`);
        None: no preconditioner.
      tol: the largest relative residual ‖b − A x‖ / ‖b‖ over columns to stop at.
      maxiter: the most iterations.

    Returns:
      (X, info): X of b's shape, and a `CGInfo` with the residual history.

    Raises:
      NotConverged: the residual is above `tol` after `maxiter` iterations.
    """
    vector = b.ndim == 1
    b = b[:, None] if vector else b
    precondition = precondition or (lambda r: r)
    norms = np.linalg.norm(b, axis=0)
    norms[norms == 0] = 1.0
    x = np.zeros_like(b, dtype=float)
    r = b.astype(float).copy()
    z = precondition(r)
    p = z.copy()
    rz = (r * z).sum(axis=0)
    residuals = [float((np.linalg.norm(r, axis=0) / norms).max())]
    active = residuals[0] > tol
    iterations = 0
    while active and iterations < maxiter:
        ap = matmat(p)
        curvature = (p * ap).sum(axis=0)
        alpha = rz / np.where(curvature == 0, 1, curvature)
        x += alpha * p
        r -= alpha * ap
        iterations += 1
        relative = np.linalg.norm(r, axis=0) / norms
        residuals.append(float(relative.max()))
        if relative.max() <= tol:
            break
        z = precondition(r)
        rz_new = (r * z).sum(axis=0)
        p = z + (rz_new / np.where(rz == 0, 1, rz)) * p
        rz = rz_new
    info = CGInfo(iterations, residuals, getattr(precondition, "rank", 0))
    if residuals[-1] > tol:
        raise NotConverged(
            f"CG did not converge in {iterations} iterations: relative residual {residuals[-1]:.2e} > "
            f"tolerance {tol:.0e}; the kernel is too ill-conditioned for this ridge (increase diag_reg) "
            "or allow more iterations")
    return (x[:, 0] if vector else x), info


class CGMethod(Method):
    """Solver method "cg": (K_dd + ρI)⁻¹ B by `block_cg` with a Nyström preconditioner (t = ∞).

    The low-rank factor (rank `options.preconditioner_rank`) is built once per kind on
    the first solve and shared by every ridge; each solve is recorded in `info["cg"]`.
    """

    name = "cg"
    infinite_time_only = True
    in_core = False
    memory_hint = "a lower preconditioner_rank or compute_variance=False needs less"

    def __init__(self, source, kind: str, options: SolverOptions, info: dict):
        super().__init__(source, kind, options, info)
        self.low_rank = None  # K ≈ F Fᵀ, built on the first solve
        self.preconditioners: dict[float, NystromPreconditioner] = {}

    @classmethod
    def own_bytes(cls, n: int, rhs: int, options: SolverOptions) -> int:
        # the preconditioner: F, U, and the SVD's copy and work
        return 4 * 8 * n * min(options.preconditioner_rank, n)

    def apply(self, rhs: np.ndarray, functions: Sequence[Callable[[np.ndarray], np.ndarray]],
              shift: float) -> list[np.ndarray]:
        source, kind = self.source, self.kind
        if self.low_rank is None:
            self.low_rank = rp_cholesky(source.diagonal(kind), lambda index: source.rows(kind, index),
                                        self.options.preconditioner_rank)
        if shift not in self.preconditioners:
            self.preconditioners[shift] = NystromPreconditioner(self.low_rank, shift)
        x, cg = block_cg(lambda v: source.matmat(kind, v) + shift * v, rhs, self.preconditioners[shift],
                         tol=self.options.tol, maxiter=self.options.max_iterations)
        self.info.setdefault("cg", []).append(dataclasses.asdict(cg))
        return [x for _ in functions]  # t = ∞ only: every function is 1 / (λ + ρ)
