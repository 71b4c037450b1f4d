"""Out-of-core solves: block preconditioned conjugate gradients with a Nyström preconditioner.

`A = K + μ I` is only touched through `K @ X` (one pass over the stored tiles per
iteration, shared by all right-hand sides) and, to build the preconditioner, through
the diagonal of K and r of its rows, chosen by block randomly pivoted Cholesky
(Chen, Epperly, Tropp, Webber 2022): K ≈ F Fᵀ with F (N, r). With F = U Σ Vᵀ and
λ = σ², the Nyström preconditioner (Frangella, Tropp, Udell 2023) is

    P⁻¹ = U diag((λ_r + μ) / (λ + μ)) Uᵀ + (I − U Uᵀ).
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np


class NotConverged(np.linalg.LinAlgError):
    """CG did not reach the tolerance: the kernel is too ill-conditioned for the ridge given."""


@dataclasses.dataclass
class CGInfo:
    """Iterations and the largest relative residual ‖b − A x‖ / ‖b‖ over columns, per iteration."""

    iterations: int
    residuals: list[float]
    preconditioner_rank: int


def rp_cholesky(diagonal: np.ndarray, rows: Callable[[np.ndarray], np.ndarray], rank: int,
                block: int = 32, seed: int = 0) -> np.ndarray:
    """F (N, ≤rank) with K ≈ F Fᵀ by block randomly pivoted Cholesky.

    `diagonal` is diag(K) (N,); `rows(index)` returns K[index, :]. Each round samples
    `block` pivots with probability ∝ the residual diagonal, and keeps the directions of
    the pivot block above round-off.
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
    """P⁻¹ for A = K + μI from a low-rank factor K ≈ F Fᵀ."""

    def __init__(self, factor: np.ndarray, mu: float):
        self.rank = factor.shape[1]
        if self.rank:
            u, sigma, _ = np.linalg.svd(factor, full_matrices=False)
            lam = sigma ** 2
            self.u = u
            self.scale = (lam[-1] + mu) / (lam + mu) - 1.0

    def __call__(self, r: np.ndarray) -> np.ndarray:
        if not self.rank:
            return r
        return r + self.u @ (self.scale[:, None] * (self.u.T @ r))


def block_cg(matmat: Callable[[np.ndarray], np.ndarray], b: np.ndarray, precondition=None,
             tol: float = 1e-10, maxiter: int = 1000) -> tuple[np.ndarray, CGInfo]:
    """X with A X = B for all columns of B (N, R) at once; A is given by `matmat`.

    Each column runs its own CG recurrence; columns share one `matmat` per iteration.
    Raises `NotConverged` (with the residual history) after `maxiter` iterations.
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
