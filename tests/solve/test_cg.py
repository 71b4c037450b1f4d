"""Block PCG, randomly pivoted Cholesky and the Nyström preconditioner against dense numpy."""
import numpy as np
import pytest

from raygram.errors import NotConverged, SolveError
from raygram.solve.cg import CGInfo, NystromPreconditioner, block_cg, rp_cholesky


def spd(eigenvalues, seed=0):
    """Q diag(eigenvalues) Qᵀ with a random orthogonal Q (exactly symmetric)."""
    n = len(eigenvalues)
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(n, n)))
    a = (q * eigenvalues) @ q.T
    return (a + a.T) / 2


def relative_errors(x, reference):
    return np.linalg.norm(x - reference, axis=0) / np.linalg.norm(reference, axis=0)


def test_block_cg_solves_every_column():
    n, cond, tol = 50, 1e3, 1e-10
    a = spd(np.geomspace(1.0, cond, n))
    b = np.random.default_rng(1).normal(size=(n, 4))
    calls = []

    def matmat(p):
        calls.append(p.shape)
        return a @ p

    x, info = block_cg(matmat, b, tol=tol)
    assert isinstance(info, CGInfo) and info.preconditioner_rank == 0
    # One shared matmat of all columns per iteration; the history has the start plus one per iteration.
    assert calls == [(n, 4)] * info.iterations and len(info.residuals) == info.iterations + 1
    assert info.residuals[0] == 1.0 and info.residuals[-1] <= tol < info.residuals[-2]
    # The reported residual is the true one, up to the drift of the recursive residual.
    true_residual = np.linalg.norm(b - a @ x, axis=0) / np.linalg.norm(b, axis=0)
    assert true_residual.max() <= 10 * tol
    # ‖x − x*‖ / ‖x*‖ <= cond(A) · ‖b − A x‖ / ‖b‖ <= cond · tol (·10 for the drift above).
    assert relative_errors(x, np.linalg.solve(a, b)).max() <= 10 * cond * tol


def test_vector_right_hand_side_and_zero_column():
    n = 30
    a = spd(np.linspace(1.0, 10.0, n), seed=2)
    b = np.random.default_rng(3).normal(size=n)
    x, info = block_cg(lambda p: a @ p, b, tol=1e-12)
    assert x.shape == (n,)
    np.testing.assert_allclose(x, np.linalg.solve(a, b), rtol=0, atol=10 * 10 * 1e-12 * np.abs(x).max())
    # A zero right-hand side converges at once to zero without poisoning the other columns.
    b2 = np.stack([b, np.zeros(n)], axis=1)
    x2, _ = block_cg(lambda p: a @ p, b2, tol=1e-12)
    assert np.isfinite(x2).all() and (x2[:, 1] == 0).all()
    np.testing.assert_allclose(x2[:, 0], x, rtol=0, atol=1e-13 * np.abs(x).max())
    zero, info = block_cg(lambda p: a @ p, np.zeros((n, 2)))
    assert (zero == 0).all() and info.iterations == 0


def test_not_converged_when_maxiter_is_too_small():
    n = 60
    a = spd(np.geomspace(1e-4, 1.0, n), seed=4)
    b = np.random.default_rng(5).normal(size=(n, 2))
    with pytest.raises(NotConverged, match="did not converge in 3 iterations") as caught:
        block_cg(lambda p: a @ p, b, tol=1e-10, maxiter=3)
    assert isinstance(caught.value, SolveError) and isinstance(caught.value, np.linalg.LinAlgError)
    with pytest.raises(NotConverged, match="did not converge in 0 iterations"):
        block_cg(lambda p: a @ p, b, maxiter=0)


def test_rp_cholesky_is_exact_on_a_low_rank_matrix():
    n, r = 40, 5
    g = np.random.default_rng(6).normal(size=(n, r))
    k = g @ g.T
    rows_read = []

    def rows(index):
        rows_read.extend(index.tolist())
        return k[index]

    for rank, block in ((r, 32), (10, 4), (n, 3)):
        rows_read.clear()
        f = rp_cholesky(np.diag(k), rows, rank, block=block, seed=1)
        assert f.shape == (n, r), (rank, block)
        np.testing.assert_allclose(f @ f.T, k, rtol=0, atol=1e-10 * np.abs(k).max())
        assert len(rows_read) <= 2 * r + block  # stops once the residual diagonal vanishes


def test_rp_cholesky_truncated_factor_leaves_a_psd_residual():
    """A partial pivoted Cholesky factor is a Nyström approximation: 0 <= K − F Fᵀ <= K."""
    n = 30
    k = spd(np.geomspace(1e-3, 1.0, n), seed=7)
    f = rp_cholesky(np.diag(k), lambda index: k[index], 8, block=4, seed=2)
    assert f.shape == (n, 8)
    residual = k - f @ f.T
    assert np.linalg.eigvalsh(residual).min() >= -1e-12
    assert np.trace(residual) < np.trace(k)
    assert np.linalg.eigvalsh(k - residual).min() >= -1e-12  # F Fᵀ is PSD as well


def test_rp_cholesky_full_rank_reconstructs():
    n = 25
    k = spd(np.geomspace(1e-2, 1.0, n), seed=8)
    f = rp_cholesky(np.diag(k), lambda index: k[index], n, block=5, seed=0)
    np.testing.assert_allclose(f @ f.T, k, rtol=0, atol=1e-10)


def test_nystrom_preconditioner_matches_its_dense_formula():
    n, r, mu = 20, 4, 1e-2
    g = np.random.default_rng(9).normal(size=(n, r))
    p = NystromPreconditioner(g, mu)
    assert p.rank == r
    lam, u = np.linalg.eigh(g @ g.T)
    lam, u = lam[-r:], u[:, -r:]  # the rank-r part
    dense = u @ np.diag((lam.min() + mu) / (lam + mu)) @ u.T + np.eye(n) - u @ u.T
    v = np.random.default_rng(10).normal(size=(n, 3))
    np.testing.assert_allclose(p(v), dense @ v, rtol=0, atol=1e-12 * np.abs(v).max())
    # With an exact factor K = G Gᵀ, P⁻¹ (K + μI) has eigenvalues λ_r + μ (on range K) and μ.
    spectrum = np.sort(np.linalg.eigvals(dense @ (g @ g.T + mu * np.eye(n))).real)
    np.testing.assert_allclose(spectrum[:n - r], mu, rtol=1e-8)
    np.testing.assert_allclose(spectrum[n - r:], lam.min() + mu, rtol=1e-8)
    empty = NystromPreconditioner(np.zeros((n, 0)), mu)
    assert empty.rank == 0 and empty(v) is v


def test_nystrom_preconditioner_cuts_iterations_on_a_decaying_spectrum():
    """Eigenvalues e^(−i/10) and ridge 1e-6 (cond 1e6): plain CG needs thousands of iterations
    (measured 2811); with the rank-100 preconditioner cond(P⁻¹A) ≈ (λ₁₀₀ + μ)/μ ≈ 46 (measured 83)."""
    n, mu, tol = 200, 1e-6, 1e-10
    k = spd(np.exp(-np.arange(n) / 10), seed=11)
    a = k + mu * np.eye(n)
    b = np.random.default_rng(12).normal(size=(n, 3))
    reference = np.linalg.solve(a, b)
    cond = np.linalg.cond(a)
    plain, plain_info = block_cg(lambda p: a @ p, b, tol=tol, maxiter=20_000)
    f = rp_cholesky(np.diag(k), lambda index: k[index], 100, block=16, seed=0)
    p = NystromPreconditioner(f, mu)
    pre, pre_info = block_cg(lambda p_: a @ p_, b, precondition=p, tol=tol, maxiter=20_000)
    assert pre_info.preconditioner_rank == f.shape[1] == 100
    assert pre_info.iterations < plain_info.iterations / 5, (pre_info.iterations, plain_info.iterations)
    assert pre_info.iterations < n
    for x in (plain, pre):  # both to cond · tol (·10 for the drift of the recursive residual)
        assert relative_errors(x, reference).max() <= 10 * cond * tol
