"""Kernel regression from Gram blocks equals neural_tangents.predict on the same kernels.

Tolerance: 1e-8 relative (to the largest magnitude of each output), as the issue asks;
both sides are float64 linear algebra on the same matrices, so only round-off separates them.
"""
import dataclasses
import math

import numpy as np
import pytest

from raygram._neural_tangents import nt, stax
from raygram.config import METHODS as METHOD_NAMES
from raygram.errors import ConfigError, MemoryBudgetExceeded, SolveError
from raygram.solve import METHODS, GramSource, Method, SolverOptions, one_hot_targets, predict
from raygram.solve.base import SingularRidgeWarning, check_spectrum
from raygram.solve.methods import choose_method
from raygram.solve.predict import response

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
    got = predict(source, y, times=TIMES, diag_reg=1e-3, learning_rate=0.5, method=method, compute_variance=True)
    assert got.info["method"] == method
    for i, t in enumerate(TIMES):
        want = reference(kernel_fn, x_train, x_test, y, t, 1e-3, learning_rate=0.5)
        for kind in ("nngp", "ntk"):
            assert_close(got.mean[kind][0, i], want[kind][0], f"{kind} mean t={t}")
            assert_close(got.variance[kind][0, i], want[kind][1], f"{kind} variance t={t}")


@pytest.mark.parametrize("method", ["cholesky", "cg"])
def test_infinite_time_solvers_match_gp_inference(problem, method):
    kernel_fn, x_train, x_test, y, source = problem
    got = predict(source, y, times=math.inf, diag_reg=1e-2, method=method, tol=1e-12, compute_variance=True)
    want = reference(kernel_fn, x_train, x_test, y, math.inf, 1e-2)
    for kind in ("nngp", "ntk"):
        assert_close(got.mean[kind][0, 0], want[kind][0], f"{kind} mean")
        assert_close(got.variance[kind][0, 0], want[kind][1], f"{kind} variance")


def test_limits_in_time(problem):
    _, _, _, y, source = problem
    got = predict(source, y, times=[0.0, 1e-9, 1e7, math.inf], diag_reg=1e-2, method="eigh", compute_variance=True)
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
        got = predict(source, y, times=[2.0, math.inf], diag_reg=ridges, method=method, compute_variance=True)
        for r, diag_reg in enumerate(ridges):
            for i, t in enumerate([2.0, math.inf]):
                want = reference(kernel_fn, x_train, x_test, y, t, diag_reg)
                for kind in ("nngp", "ntk"):
                    assert_close(got.mean[kind][r, i], want[kind][0], f"{method} {kind} ridge {diag_reg} t={t}")


def test_evaluation_records_for_regression_and_classification(problem):
    """Plain records per (kind, ridge, t), checked against metrics computed by hand."""
    _, _, _, y, source = problem
    out = predict(source, y, times=[1.0, math.inf], diag_reg=[1e-3, 1e-1], compute_variance=False)
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
    classes = predict(source, targets, times=math.inf, diag_reg=0.0, compute_variance=False)
    test_labels = np.array([0, 1, 2, 0, 1, 2, 0])
    accuracy = classes.evaluate(test_labels, task="classification")[0]["accuracy"]
    assert accuracy == pytest.approx((classes.mean["nngp"][0, 0].argmax(axis=1) == test_labels).mean())
    with pytest.raises(ConfigError, match="labels must be integers in"):
        one_hot_targets(np.array([0, 3]), OUTPUTS)
    with pytest.raises(ConfigError, match="classification targets must have 7 rows of integer labels"):
        classes.evaluate(targets[:M], task="classification")
    with pytest.raises(ConfigError, match="task must be"):
        classes.evaluate(test_labels, task="ranking")


def test_options_object_and_keyword_settings_agree(problem):
    """`predict(source, y, options)` and `predict(source, y, **settings)` are one thing; settings
    replace the object's fields (each under its YAML name) and leave the object as it was."""
    _, _, _, y, source = problem
    options = SolverOptions(method="eigh", times=(1.0, math.inf), diag_reg=(1e-4, 1e-2), compute_variance=True)
    from_object = predict(source, y, options)
    from_settings = predict(source, y, method="eigh", times=np.array([1.0, math.inf]), diag_reg=[1e-4, 1e-2],
                            compute_variance=True)
    overridden = predict(source, y, options, diag_reg=np.float64(1e-2), times=[math.inf])
    assert options.diag_reg == (1e-4, 1e-2) and options.times == (1.0, math.inf)
    assert from_object.diag_reg.tolist() == [1e-4, 1e-2] and from_object.times.tolist() == [1.0, math.inf]
    assert overridden.diag_reg.tolist() == [1e-2] and overridden.times.tolist() == [math.inf]
    for kind in ("nngp", "ntk"):
        np.testing.assert_allclose(from_settings.mean[kind], from_object.mean[kind], rtol=1e-13, atol=0)
        np.testing.assert_allclose(from_settings.variance[kind], from_object.variance[kind], rtol=1e-13, atol=0)
        np.testing.assert_allclose(overridden.mean[kind][0, 0], from_object.mean[kind][1, 1], rtol=1e-13, atol=0)
        np.testing.assert_allclose(overridden.variance[kind][0, 0], from_object.variance[kind][1, 1], rtol=1e-13,
                                   atol=0)


def test_defaults_are_the_yaml_defaults(problem):
    """No settings: SolverOptions() (diag_reg 1e-4, t = inf, no variance), solved by Cholesky in core."""
    kernel_fn, x_train, x_test, y, source = problem
    got = predict(source, y)
    assert got.diag_reg.tolist() == [1e-4] and got.times.tolist() == [math.inf] and got.variance is None
    assert got.info["method"] == "cholesky"
    want = reference(kernel_fn, x_train, x_test, y, math.inf, 1e-4)
    for kind in ("nngp", "ntk"):
        assert_close(got.mean[kind][0, 0], want[kind][0], f"{kind} mean")


@pytest.mark.parametrize("solver, settings, message", [
    (None, {"ridge": 1e-3}, r"solver: unknown setting\(s\) \['ridge'\]"),
    (None, {"t": 1.0}, r"solver: unknown setting\(s\) \['t'\]"),
    (None, {"diag_reg": [1e-3, -1.0]}, r"solver\.diag_reg\[1\]: must be >= 0"),
    (None, {"times": "soon"}, r"solver\.times\[0\]: must be a number or 'inf'"),
    (None, {"learning_rate": 0}, r"solver\.learning_rate: must be > 0"),
    (None, {"method": "qr"}, r"solver\.method: must be one of"),
    (SolverOptions(method="cg"), {"times": [1.0, math.inf]}, "infinite-time predictions only"),
    ({"method": "eigh"}, {}, "solver must be a SolverOptions"),
    (SolverOptions(times="auto"), {}, r"solver\.times: predict needs the training times as numbers"),
    (None, {"times": "auto"}, r"solver\.times: predict needs the training times as numbers"),
])
def test_bad_settings_are_config_errors_naming_the_key(problem, solver, settings, message):
    _, _, _, y, source = problem
    with pytest.raises(ConfigError, match=message):
        predict(source, y, solver, **settings)


def test_registry_holds_one_method_per_configurable_name():
    assert set(METHODS) | {"auto"} == set(METHOD_NAMES)
    for name, method in METHODS.items():
        assert issubclass(method, Method) and method.name == name
    assert {name for name, method in METHODS.items() if method.infinite_time_only} == {"cholesky", "cg"}
    assert {name for name, method in METHODS.items() if method.in_core} == {"cholesky", "eigh"}


def test_auto_chooses_by_times_ridges_and_working_set(problem):
    """t = inf with one ridge: a solve (in core if it fits, else CG); otherwise a spectral method.
    The chosen working set is what `info` reports and what the budget is checked against."""
    kernel_fn, x_train, x_test, y, source = problem
    sizes = {"n": N, "outputs": OUTPUTS, "columns": 0, "chunk": source.chunk}
    options = SolverOptions(diag_reg=(1e-2,), preconditioner_rank=8, tol=1e-12)
    cg = METHODS["cg"]
    budget = cg.working_set(N, OUTPUTS, 0, source.chunk, options, cg.threads(options)[1])
    assert choose_method(options, **sizes, budget=2**40)[0] is METHODS["cholesky"]
    assert choose_method(options, **sizes, budget=budget) == (cg, budget)
    for spectral in (dataclasses.replace(options, times=(1.0, math.inf)),
                     dataclasses.replace(options, diag_reg=(1e-3, 1e-2))):
        assert choose_method(spectral, **sizes, budget=2**40)[0] is METHODS["eigh"]
    with pytest.raises(MemoryBudgetExceeded, match="more than the memory budget"):
        choose_method(options, **sizes, budget=budget - 1)
    got = predict(source, y, options, memory_budget=budget)
    assert got.info["method"] == "cg" and got.info["working_set_bytes"] == budget
    want = reference(kernel_fn, x_train, x_test, y, math.inf, 1e-2)
    for kind in ("nngp", "ntk"):
        assert_close(got.mean[kind][0, 0], want[kind][0], f"{kind} mean")


@pytest.fixture(scope="module")
def singular(problem):
    """The problem's kernel on training inputs with a repeated point: K is singular (rank N - 1)."""
    kernel_fn, x_train, x_test, y, _ = problem
    x = x_train.copy()
    x[5] = x[2]
    train, test = kernel_fn(x, None, ("nngp", "ntk")), kernel_fn(x_test, x, ("nngp", "ntk"))
    diag = {k: np.array([kernel_fn(p[None], None, k)[0, 0] for p in x_test]) for k in ("nngp", "ntk")}
    source = GramSource.from_arrays({k: getattr(train, k) for k in ("nngp", "ntk")},
                                    {k: getattr(test, k) for k in ("nngp", "ntk")}, diag, chunk=5)
    return kernel_fn, x, x_test, y, source


@pytest.mark.parametrize("method", ["eigh", "lanczos"])
def test_singular_kernel_without_ridge_is_refused_at_infinite_time(singular, method):
    kernel_fn, x, x_test, y, source = singular
    with pytest.raises(SolveError, match=r"^the kernel is singular; use diag_reg > 0$"):
        predict(source, y, times=math.inf, diag_reg=0.0, method=method, compute_variance=False)
    with pytest.raises(SolveError, match="the kernel is singular"):  # t = inf among finite times
        predict(source, y, times=[1.0, math.inf], diag_reg=0.0, method=method, compute_variance=False)
    # With a ridge, and at finite times without one, the solve is well defined: neural-tangents agrees.
    for t, diag_reg in ((math.inf, 1e-3), (3.0, 0.0), (100.0, 0.0)):
        got = predict(source, y, times=t, diag_reg=diag_reg, method=method, compute_variance=True)
        want = reference(kernel_fn, x, x_test, y, t, diag_reg)
        for kind in ("nngp", "ntk"):
            assert_close(got.mean[kind][0, 0], want[kind][0], f"{method} {kind} mean t={t} ridge {diag_reg}")
            assert_close(got.variance[kind][0, 0], want[kind][1], f"{method} {kind} variance t={t}")


def test_check_spectrum_bounds():
    """The round-off of a spectrum [λ_min, λ_max] of N = 100 float64 eigenvalues is 100 · eps · λ_max."""
    eps, n = np.finfo(float).eps, 100
    round_off = n * eps * 2.0
    inverse = response(math.inf, 1.0, 0.0)
    check_spectrum(1e-6, 2.0, n, np.float64, 0.0, [inverse])  # regular
    check_spectrum(1.01 * round_off, 2.0, n, np.float64, 0.0, [inverse])  # just above round-off
    for smallest in (0.99 * round_off, 0.0, -0.5 * round_off, -1e-3):
        with pytest.raises(SolveError, match=r"^the kernel is singular; use diag_reg > 0$"):
            check_spectrum(smallest, 2.0, n, np.float64, 0.0, [inverse])
    check_spectrum(0.0, 2.0, n, np.float64, 1e-8, [response(math.inf, 1.0, 1e-8)])  # a ridge regularises
    with pytest.warns(SingularRidgeWarning, match=r"plus the ridge 1.0e-20 is singular to round-off \(smallest "
                                                  r"eigenvalue 1.0e-20\); .* use a larger diag_reg"):
        check_spectrum(0.0, 2.0, n, np.float64, 1e-20, [response(math.inf, 1.0, 1e-20)])
    # Finite time: f_t <= τ, refused only where τ · round-off >= 1; a negative eigenvalue beyond round-off always.
    check_spectrum(0.0, 2.0, n, np.float64, 0.0, [response(10.0, 1.0, 0.0)])
    with pytest.raises(SolveError):
        check_spectrum(0.0, 2.0, n, np.float64, 0.0, [response(2.0 / round_off, 1.0, 0.0)])
    with pytest.raises(SolveError):
        check_spectrum(-1e-3, 2.0, n, np.float64, 0.0, [response(10.0, 1.0, 0.0)])
    # float32 kernels carry float32 round-off.
    with pytest.raises(SolveError):
        check_spectrum(1e-9, 2.0, n, np.float32, 0.0, [inverse])
