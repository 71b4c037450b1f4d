"""Kernel regression from Gram blocks equals neural_tangents.predict on the same kernels.

Tolerance: 1e-8 relative (to the largest magnitude of each output), as the issue asks;
both sides are float64 linear algebra on the same matrices, so only round-off separates them.
"""
import math

import numpy as np
import pytest

from raygram._neural_tangents import nt, stax
from raygram.gram_source import GramSource
from raygram.regression import predict

N, M, OUTPUTS = 24, 7, 3
TIMES = [0.1, 3.0, 100.0, math.inf]


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N + M, 6))
    x_train, x_test = x[:N], x[N:]
    y = rng.normal(size=(N, OUTPUTS))
    kernel_fn = stax.serial(stax.Dense(8, W_std=1.5, b_std=0.1), stax.Erf(), stax.Dense(1, b_std=0.1))[2]
    train = kernel_fn(x_train, None, ("nngp", "ntk"))
    test = kernel_fn(x_test, x_train, ("nngp", "ntk"))
    diag = {k: np.array([kernel_fn(p[None], None, k)[0, 0] for p in x_test]) for k in ("nngp", "ntk")}
    source = GramSource.from_arrays({k: getattr(train, k) for k in ("nngp", "ntk")},
                                    {k: getattr(test, k) for k in ("nngp", "ntk")}, diag, chunk=5)
    return kernel_fn, x_train, x_test, y, source


def reference(kernel_fn, x_train, x_test, y, t, diag_reg, learning_rate=1.0):
    predict_fn = nt.predict.gradient_descent_mse_ensemble(kernel_fn, x_train, y, learning_rate=learning_rate,
                                                          diag_reg=diag_reg)
    out = predict_fn(t=None if math.isinf(t) else t, x_test=x_test, get=("nngp", "ntk"), compute_cov=True)
    return {k: (np.asarray(getattr(out, k).mean), np.diagonal(np.asarray(getattr(out, k).covariance)))
            for k in ("nngp", "ntk")}


def assert_close(got, want, what):
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-8 * np.abs(want).max(), err_msg=what)


@pytest.mark.parametrize("method", ["eigh", "lanczos"])
def test_finite_and_infinite_time_match_neural_tangents(problem, method):
    kernel_fn, x_train, x_test, y, source = problem
    got = predict(source, y, t=TIMES, diag_reg=1e-3, learning_rate=0.5, method=method)
    assert got.info["method"] == method
    for i, t in enumerate(TIMES):
        want = reference(kernel_fn, x_train, x_test, y, t, 1e-3, learning_rate=0.5)
        for kind in ("nngp", "ntk"):
            assert_close(got.mean[kind][0, i], want[kind][0], f"{kind} mean t={t}")
            assert_close(got.variance[kind][0, i], want[kind][1], f"{kind} variance t={t}")


@pytest.mark.parametrize("method", ["cholesky", "cg"])
def test_infinite_time_solvers_match_gp_inference(problem, method):
    kernel_fn, x_train, x_test, y, source = problem
    got = predict(source, y, diag_reg=1e-2, method=method, tol=1e-12)
    want = reference(kernel_fn, x_train, x_test, y, math.inf, 1e-2)
    for kind in ("nngp", "ntk"):
        assert_close(got.mean[kind][0, 0], want[kind][0], f"{kind} mean")
        assert_close(got.variance[kind][0, 0], want[kind][1], f"{kind} variance")


def test_limits_in_time(problem):
    _, _, _, y, source = problem
    got = predict(source, y, t=[0.0, 1e-9, 1e7, math.inf], diag_reg=1e-2, method="eigh")
    for kind in ("nngp", "ntk"):
        mean = got.mean[kind][0]
        assert np.abs(mean[0]).max() == 0 and np.abs(mean[1]).max() < 1e-8 * np.abs(mean[3]).max()
        np.testing.assert_allclose(mean[2], mean[3], rtol=0, atol=1e-8 * np.abs(mean[3]).max())
        # Variance starts at the prior k(x, x) and shrinks with training.
        prior = source.self_kernel("nngp")
        assert_close(got.variance[kind][0, 0], prior, f"{kind} prior variance")
        assert (got.variance[kind][0, 3] < prior).all()


def test_ridge_sweep_reuses_one_factorisation(problem):
    kernel_fn, x_train, x_test, y, source = problem
    ridges = [1e-4, 1e-2, 1.0]
    for method in ("eigh", "lanczos"):
        got = predict(source, y, t=[2.0, math.inf], diag_reg=ridges, method=method)
        for r, diag_reg in enumerate(ridges):
            for i, t in enumerate([2.0, math.inf]):
                want = reference(kernel_fn, x_train, x_test, y, t, diag_reg)
                for kind in ("nngp", "ntk"):
                    assert_close(got.mean[kind][r, i], want[kind][0], f"{method} {kind} ridge {diag_reg} t={t}")


def test_evaluation_records_for_regression_and_classification(problem):
    """Plain records per (kind, ridge, t), checked against metrics computed by hand."""
    from raygram.regression import one_hot_targets

    _, _, _, y, source = problem
    out = predict(source, y, t=[1.0, math.inf], diag_reg=[1e-3, 1e-1], compute_variance=False)
    y_test = np.random.default_rng(3).normal(size=(M, OUTPUTS))
    records = out.evaluate(y_test)
    assert len(records) == 2 * 2 * 2 and {r["kind"] for r in records} == {"nngp", "ntk"}
    last = records[-1]
    error = out.mean["ntk"][1, 1] - y_test
    assert (last["kind"], last["diag_reg"], last["t"]) == ("ntk", 1e-1, math.inf)
    assert last["mae"] == pytest.approx(np.abs(error).mean(), rel=1e-14)
    assert last["rmse"] == pytest.approx(np.sqrt((error ** 2).mean()), rel=1e-14)

    labels = np.arange(N) % OUTPUTS
    targets = one_hot_targets(labels, OUTPUTS)
    np.testing.assert_allclose(targets.sum(axis=1), 0, atol=1e-15)
    assert (targets.argmax(axis=1) == labels).all() and targets.max() == pytest.approx(1 - 1 / OUTPUTS)
    classes = predict(source, targets, compute_variance=False)
    test_labels = np.array([0, 1, 2, 0, 1, 2, 0])
    accuracy = classes.evaluate(test_labels, task="classification")[0]["accuracy"]
    assert accuracy == pytest.approx((classes.mean["nngp"][0, 0].argmax(axis=1) == test_labels).mean())
    with pytest.raises(ValueError, match="labels must be integers in"):
        one_hot_targets(np.array([0, 3]), OUTPUTS)
    with pytest.raises(ValueError, match="classification targets must have 7 rows of integer labels"):
        classes.evaluate(targets[:M], task="classification")
    with pytest.raises(ValueError, match="task must be"):
        classes.evaluate(test_labels, task="ranking")
