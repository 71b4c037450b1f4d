"""Lanczos matrix functions f(A) B against the same functions applied through np.linalg.eigh."""
import numpy as np
import pytest

from raygram.errors import NotConverged
from raygram.solve.lanczos import LanczosInfo, lanczos_functions

RIDGE, TAU = 0.1, 3.0


def ridge_inverse(lam):
    return 1.0 / (lam + RIDGE)


def gradient_flow(lam):
    """(1 − e^(−λτ)) / λ, the finite-time gradient-descent filter (τ at λ → 0)."""
    lam = np.asarray(lam, float)
    small = np.abs(lam) < 1e-300
    return np.where(small, TAU, -np.expm1(-lam * TAU) / np.where(small, 1.0, lam))


def spd(eigenvalues, seed=0):
    n = len(eigenvalues)
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(n, n)))
    a = (q * eigenvalues) @ q.T
    return (a + a.T) / 2


def apply_eigh(a, f, b):
    lam, v = np.linalg.eigh(a)
    return v @ (f(lam)[:, None] * (v.T @ b))


def relative_error(got, want):
    return np.abs(got - want).max() / np.abs(want).max()


def test_functions_equal_their_eigh_values():
    """Eigenvalues in [1e-2, 10]: for f = 1/(λ+0.1), cond(A + 0.1) ≈ 92 and the Lanczos (= CG)
    error falls by ≈ (√92 − 1)/(√92 + 1) ≈ 0.81 per step, ≈ 0.35 per check of 5 steps; a change
    below tol = 1e-10 over the last 5 steps thus bounds the remaining error by ≈ tol · 0.35 / 0.65.
    The asserted 1e-8 leaves ×100 over that estimate (float64 round-off here is ≈ 1e-14; the
    measured errors are 2e-14 and 5e-15, reached in 50 < n steps)."""
    n = 60
    a = spd(np.geomspace(1e-2, 10.0, n), seed=1)
    b = np.random.default_rng(2).normal(size=(n, 3))
    calls = []

    def matmat(q):
        calls.append(q.shape)
        return a @ q

    (inverse, flow), info = lanczos_functions(matmat, b, [ridge_inverse, gradient_flow], tol=1e-10)
    assert isinstance(info, LanczosInfo)
    assert calls == [(n, 3)] * info.steps  # one shared matmat of all columns per step
    assert inverse.shape == flow.shape == (n, 3)
    assert relative_error(inverse, apply_eigh(a, ridge_inverse, b)) <= 1e-8
    assert relative_error(flow, apply_eigh(a, gradient_flow, b)) <= 1e-8
    # The ridge inverse is the solution of (A + ρI) x = b.
    assert relative_error(inverse, np.linalg.solve(a + RIDGE * np.eye(n), b)) <= 1e-8
    assert info.changes[-1] <= 1e-10


def test_stops_early_once_converged():
    """n = 200 but a well-conditioned spectrum [1, 10]: cond(A + 0.1) ≈ 9.2, error ≈ 0.5 per step,
    so ≈ 35 steps reach 1e-10 (measured: 40); the loop must stop at the first check whose change
    is below tol, far before n."""
    n, check = 200, 5
    a = spd(np.linspace(1.0, 10.0, n), seed=3)
    b = np.random.default_rng(4).normal(size=(n, 2))
    out, info = lanczos_functions(lambda q: a @ q, b, [ridge_inverse, gradient_flow], tol=1e-10,
                                  max_steps=n, check_every=check)
    assert info.steps < n // 4, info.steps
    assert info.steps % check == 0 and len(info.changes) == info.steps // check - 1
    assert info.changes[-1] <= 1e-10 < min(info.changes[:-1])
    for got, f in zip(out, (ridge_inverse, gradient_flow)):
        assert relative_error(got, apply_eigh(a, f, b)) <= 1e-8


def test_few_distinct_eigenvalues_end_in_an_invariant_subspace():
    """With 3 distinct eigenvalues each Krylov space has dimension 3: exact after 3 steps."""
    n = 30
    a = spd(np.repeat([0.5, 2.0, 7.0], n // 3), seed=5)
    b = np.random.default_rng(6).normal(size=(n, 2))
    out, info = lanczos_functions(lambda q: a @ q, b, [ridge_inverse, gradient_flow], tol=1e-15,
                                  check_every=5)
    assert info.steps == 3
    for got, f in zip(out, (ridge_inverse, gradient_flow)):
        assert relative_error(got, apply_eigh(a, f, b)) <= 1e-12


def test_zero_column_gives_zero():
    n = 40
    a = spd(np.geomspace(0.1, 5.0, n), seed=7)
    b = np.zeros((n, 2))
    b[:, 0] = np.random.default_rng(8).normal(size=n)
    (inverse,), _ = lanczos_functions(lambda q: a @ q, b, [ridge_inverse], tol=1e-12)
    assert np.isfinite(inverse).all() and (inverse[:, 1] == 0).all()
    assert relative_error(inverse[:, 0], apply_eigh(a, ridge_inverse, b[:, :1])[:, 0]) <= 1e-9


def test_not_converged_within_max_steps():
    n = 80
    a = spd(np.geomspace(1e-6, 1.0, n), seed=9)
    b = np.random.default_rng(10).normal(size=(n, 1))
    with pytest.raises(NotConverged, match="did not reach relative accuracy 1e-12 in 10 steps"):
        lanczos_functions(lambda q: a @ q, b, [lambda lam: 1.0 / (lam + 1e-8)], tol=1e-12, max_steps=10)


def test_ritz_range_and_unshifted_inverse_with_a_zero_column():
    """f = 1/λ without a ridge: a zero column (or one whose Krylov space closed early) contributes
    nothing, not 0 · f(0) = NaN; the Ritz range is the spectrum's, here reached exactly."""
    n = 30
    a = spd(np.repeat([0.5, 2.0, 7.0], n // 3), seed=11)
    b = np.zeros((n, 2))
    b[:, 0] = np.random.default_rng(12).normal(size=n)
    (inverse,), info = lanczos_functions(lambda q: a @ q, b, [lambda lam: 1.0 / lam], tol=1e-14)
    assert np.isfinite(inverse).all() and (inverse[:, 1] == 0).all()
    assert relative_error(inverse[:, :1], np.linalg.solve(a, b[:, :1])) <= 1e-12
    np.testing.assert_allclose(info.ritz_range, (0.5, 7.0), rtol=1e-12)
    _, empty = lanczos_functions(lambda q: a @ q, np.zeros((n, 1)), [lambda lam: 1.0 / lam])
    assert empty.ritz_range is None
