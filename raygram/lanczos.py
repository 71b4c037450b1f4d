"""Out-of-core matrix functions f(A)·B by Lanczos, for every column of B at once.

For A symmetric positive semi-definite and a column b, k Lanczos steps give an
orthonormal basis Q_k of the Krylov space and the tridiagonal T_k = Q_kᵀ A Q_k; then
f(A) b ≈ ‖b‖ Q_k f(T_k) e₁. One basis serves every f (every time t, every ridge
shift). Columns run independent recurrences that share one `matmat` per step; the
basis is kept for full reorthogonalisation, in one array allocated for `max_steps`
(N·R·(max_steps + 1) values; only the pages of steps taken are touched). The iteration stops when
the approximations of all functions change by less than `tol` (relative) over
`check_every` steps: the stated accuracy.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np

from .pcg import NotConverged


@dataclasses.dataclass
class LanczosInfo:
    steps: int
    changes: list[float]  # largest relative change of the approximations at each check


def lanczos_functions(matmat: Callable[[np.ndarray], np.ndarray], b: np.ndarray,
                      functions: Sequence[Callable[[np.ndarray], np.ndarray]], tol: float = 1e-10,
                      max_steps: int = 500, check_every: int = 5) -> tuple[list[np.ndarray], LanczosInfo]:
    """[f(A) @ b for f in functions] for b (N, R); each f maps eigenvalues (k,) to values (k,)."""
    n, r = b.shape
    norms = np.linalg.norm(b, axis=0)
    safe = np.where(norms == 0, 1.0, norms)
    basis = np.empty((max_steps + 1, n, r), np.result_type(b, np.float64))
    q = basis[0] = b / safe
    alphas, betas = [], []
    previous = None
    changes = []
    done = np.zeros(r, bool)  # columns whose Krylov space became invariant
    for step in range(1, max_steps + 1):
        w = matmat(q)
        alpha = (q * w).sum(axis=0)
        stack = basis[:step]  # (k, N, R), a view
        w = w - np.einsum("knr,kr->nr", stack, np.einsum("knr,nr->kr", stack, w))
        w = w - np.einsum("knr,kr->nr", stack, np.einsum("knr,nr->kr", stack, w))
        beta = np.linalg.norm(w, axis=0)
        alphas.append(alpha)
        done |= beta <= 1e-13 * np.maximum(np.abs(np.stack(alphas)).max(axis=0), 1e-300)
        last = step == max_steps or done.all()
        if step % check_every == 0 or last:
            current = _evaluate(np.stack(alphas), np.stack(betas) if betas else np.zeros((0, r)),
                                stack, norms, functions)
            if previous is not None:
                change = max(float(np.abs(c - p).max() / max(np.abs(c).max(), 1e-300))
                             for c, p in zip(current, previous))
                changes.append(change)
                if change <= tol:
                    return current, LanczosInfo(step, changes)
            if done.all():
                return current, LanczosInfo(step, changes)
            previous = current
        betas.append(beta)
        q = basis[step] = np.where(done, 0.0, w / np.where(beta == 0, 1.0, beta))
    raise NotConverged(f"Lanczos did not reach relative accuracy {tol:.0e} in {max_steps} steps "
                       f"(last change {changes[-1] if changes else float('nan'):.1e}); raise max_steps "
                       "or the ridge")


def _evaluate(alphas, betas, basis, norms, functions):
    """‖b‖ Q_k f(T_k) e₁ for each column and function; basis (k, N, R)."""
    k, r = alphas.shape
    coefficients = np.empty((len(functions), k, r))  # f(T_k) e₁ per function and column
    for column in range(r):
        t = np.diag(alphas[:, column])
        if k > 1:
            off = betas[:k - 1, column]
            t += np.diag(off, 1) + np.diag(off, -1)
        theta, s = np.linalg.eigh(t)
        for i, f in enumerate(functions):
            coefficients[i, :, column] = norms[column] * (s @ (f(theta) * s[0]))
    return [np.einsum("knr,kr->nr", basis, c) for c in coefficients]
