"""Out-of-core matrix functions f(A)·B by Lanczos, every column of B at once (method "lanczos").

For A symmetric positive semi-definite and a column b, k Lanczos steps give an
orthonormal basis Q_k of the Krylov space and the tridiagonal T_k = Q_kᵀ A Q_k; then
f(A) b ≈ ‖b‖ Q_k f(T_k) e₁. One basis serves every f: every training time t (and,
since A is the unshifted K with the shift inside f, any ridge). Columns run independent
recurrences that share one `matmat` per step; the basis is kept for full
reorthogonalisation, in one array allocated for `max_steps` (N·R·(max_steps + 1)
values; only the pages of steps taken are touched). The iteration stops when the
approximations of all functions change by less than `tol` (relative) over
`check_every` steps: the stated accuracy.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np

from raygram.config import SolverOptions
from raygram.errors import NotConverged
from raygram.solve.base import Method, check_spectrum

__all__ = ["LanczosInfo", "lanczos_functions", "LanczosMethod"]


@dataclasses.dataclass
class LanczosInfo:
    """How a `lanczos_functions` run went.

    Attributes:
      steps: Lanczos steps taken (matmat calls).
      changes: the largest relative change of the approximations at each check.
      ritz_range: the smallest and largest eigenvalue of the tridiagonals T_k (over the
        columns with a nonzero right-hand side) the result came from, approximating
        those of A; None when every column of b is zero.
    """

    steps: int
    changes: list[float]
    ritz_range: tuple[float, float] | None = None


def lanczos_functions(matmat: Callable[[np.ndarray], np.ndarray], b: np.ndarray,
                      functions: Sequence[Callable[[np.ndarray], np.ndarray]], tol: float = 1e-10,
                      max_steps: int = 500, check_every: int = 5) -> tuple[list[np.ndarray], LanczosInfo]:
    """[f(A) @ b for f in functions], from one Krylov basis per column of b.

    Args:
      matmat: `matmat(X)` returns A @ X for X (N, R), A symmetric positive semi-definite.
      b: right-hand sides, shape (N, R).
      functions: each maps eigenvalues (k,) of A (of T_k) to values (k,).
      tol: stop when every approximation changes by at most this, relative to its
        largest magnitude, between checks.
      max_steps: the most Lanczos steps (the basis holds N·R·(max_steps + 1) values).
      check_every: steps between convergence checks.

    Returns:
      ([f(A) @ b (N, R) per function], a `LanczosInfo`).

    Raises:
      NotConverged: `tol` not reached in `max_steps` steps.
    """
    n, r = b.shape
    norms = np.linalg.norm(b, axis=0)
    safe = np.where(norms == 0, 1.0, norms)
    basis = np.empty((max_steps + 1, n, r), np.result_type(b, np.float64))
    q = basis[0] = b / safe
    alphas, betas = [], []
    previous = None
    changes = []
    done = norms == 0  # columns whose Krylov space became invariant (a zero column at once)
    length = np.zeros(r, int)  # steps of each column's own recurrence, up to its invariance
    for step in range(1, max_steps + 1):
        w = matmat(q)
        alpha = (q * w).sum(axis=0)
        stack = basis[:step]  # (k, N, R), a view
        w = w - np.einsum("knr,kr->nr", stack, np.einsum("knr,nr->kr", stack, w))
        w = w - np.einsum("knr,kr->nr", stack, np.einsum("knr,nr->kr", stack, w))
        beta = np.linalg.norm(w, axis=0)
        alphas.append(alpha)
        length += ~done
        done |= beta <= 1e-13 * np.maximum(np.abs(np.stack(alphas)).max(axis=0), 1e-300)
        last = step == max_steps or done.all()
        if step % check_every == 0 or last:
            current, ritz = _evaluate(np.stack(alphas), np.stack(betas) if betas else np.zeros((0, r)),
                                      stack, norms, functions, length)
            if previous is not None:
                change = max(float(np.abs(c - p).max() / max(np.abs(c).max(), 1e-300))
                             for c, p in zip(current, previous))
                changes.append(change)
                if change <= tol:
                    return current, LanczosInfo(step, changes, ritz)
            if done.all():
                return current, LanczosInfo(step, changes, ritz)
            previous = current
        betas.append(beta)
        q = basis[step] = np.where(done, 0.0, w / np.where(beta == 0, 1.0, beta))
    raise NotConverged(f"Lanczos did not reach relative accuracy {tol:.0e} in {max_steps} steps "
                       f"(last change {changes[-1] if changes else float('nan'):.1e}); raise max_steps "
                       "or the ridge")


def _evaluate(alphas, betas, basis, norms, functions, length):
    """(‖b‖ Q_k f(T_k) e₁ for each function, (smallest, largest) Ritz value or None); basis (k, N, R).

    Column c's tridiagonal is its first length[c] steps (after its Krylov space became
    invariant its basis vectors are zero and contribute nothing).
    """
    k, r = alphas.shape
    coefficients = np.zeros((len(functions), k, r))  # f(T_k) e₁ per function and column
    ritz = []
    for column in range(r):
        steps = int(length[column])
        if steps == 0:
            continue
        off = betas[:steps - 1, column]
        theta, s = np.linalg.eigh(np.diag(alphas[:steps, column]) + np.diag(off, 1) + np.diag(off, -1))
        ritz += [theta[0], theta[-1]]
        for i, f in enumerate(functions):
            coefficients[i, :steps, column] = norms[column] * (s @ (f(theta) * s[0]))
    bounds = (float(min(ritz)), float(max(ritz))) if ritz else None
    return [np.einsum("knr,kr->nr", basis, c) for c in coefficients], bounds


class LanczosMethod(Method):
    """Solver method "lanczos": f(K_dd) B by `lanczos_functions`, every time t from one basis.

    Each call of `apply` (one ridge, one block of right-hand sides) builds one Krylov
    basis of K_dd and is recorded in `info["lanczos"]`; its extreme Ritz values go through
    `check_spectrum` (a kernel singular to round-off raises `SolveError` at zero ridge and
    warns at a ridge > 0).
    """

    name = "lanczos"
    infinite_time_only = False
    in_core = False
    memory_hint = "fewer Lanczos steps (max_iterations) or compute_variance=False need less"

    @classmethod
    def own_bytes(cls, n: int, rhs: int, options: SolverOptions) -> int:
        # the Krylov basis
        return 8 * n * rhs * (options.max_iterations + 1)

    def apply(self, rhs: np.ndarray, functions: Sequence[Callable[[np.ndarray], np.ndarray]],
              shift: float) -> list[np.ndarray]:
        out, lanczos = lanczos_functions(lambda v: self.source.matmat(self.kind, v), rhs, functions,
                                         tol=self.options.tol, max_steps=self.options.max_iterations)
        self.info.setdefault("lanczos", []).append(dataclasses.asdict(lanczos))
        if lanczos.ritz_range is not None:
            check_spectrum(*lanczos.ritz_range, self.source.n, self.source.dtype, shift, functions)
        return out
