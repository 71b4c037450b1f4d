"""SO(3) layers: grids, equivariance, fast vs direct kernels, Monte-Carlo, scaling, errors.

Monte-Carlo tolerances (measured on this set-up, fixed seeds): one network of width w
scatters about 1.3/√w relative to the analytic kernel (the lifting output of a channel
has only B²·C random coefficients): 5-6% at width 512, while the mean of 64 such
networks is within 0.4-0.8%, so the estimator is unbiased to that level. A finite
network whose mean kernel were only proportional to the analytic one (a fan-in or
filter normalisation off by a factor) would be off by ≥ 25%. The tests use 16 (NNGP) or
8 (NTK) networks at width 256: ensemble errors 1.3% / 1.8% against the bound 0.1; the
mean single-network error falls 5× (NNGP, widths 8 -> 256) and 3.4× (NTK, 16 -> 256),
like 1/√width, against the bound 1.5.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from raygram._neural_tangents import nt, stax
from raygram.kernels import S2Lifting, SO3Conv, SO3Pool, so3_serial
from raygram.kernels import so3_grid as grid

TOLERANCE = 0.1


def rel_err(a, b):
    return float(jnp.linalg.norm(jnp.asarray(a) - b) / jnp.linalg.norm(b))


def signal(seed, n, L, degree, channels=2):
    """Band-limited S² signals (degree < `degree`) on the grid of bandwidth L, and a rotator.

    Returns (x (n, 2L, 2L, C), rotate) with rotate(g) = the signals g·f, (g·f)(x) = f(g⁻¹x).
    """
    coef = np.random.default_rng(seed).normal(size=(n, channels, degree * degree))
    pts = grid.s2_points(L)

    def rotate(g):
        y = grid.real_sph_harm(degree, pts @ g)          # y(g⁻¹ x) for x on the grid
        return jnp.asarray(np.einsum("jka,nca->njkc", y, coef))

    return rotate(np.eye(3)), rotate


def so3_values(f, band, rotations):
    """Values at `rotations` (M, 3, 3) of maps f (N, 2L, 2L, 2L, C) band-limited below `band`."""
    L = f.shape[1] // 2
    w = grid.so3_weights(L)
    d_grid = grid.so3_grid_wigner(L, band)
    d_at = grid.wigner_d_real(band, rotations)
    out = 0.
    for l in range(band):
        coef = np.einsum("abg,abgij,nabgc->ncij", w, d_grid[l], np.asarray(f))
        out = out + (2 * l + 1) * np.einsum("ncij,mij->nmc", coef, d_at[l])
    return out


def rotated_grid(L, g):
    """g⁻¹ R for every grid rotation R, (G, 3, 3)."""
    return np.einsum("ba,...bc->...ac", g, grid.so3_rotations(L)).reshape(-1, 3, 3)


# ----------------------------------------------------------------------------- grids


@pytest.mark.parametrize("L", [2, 4])
def test_harmonics_and_wigner_are_orthonormal_on_the_grids(L):
    y = grid.s2_grid_harmonics(L, L)
    gram = np.einsum("jk,jka,jkb->ab", grid.s2_weights(L), y, y)
    np.testing.assert_allclose(gram, np.eye(L * L), atol=1e-12)
    w, d = grid.so3_weights(L), grid.so3_grid_wigner(L, L)
    for l in range(L):
        for l2 in range(L):
            m = np.einsum("abg,abgij,abgkl->ijkl", w, d[l], d[l2])
            want = np.einsum("ik,jl->ijkl", np.eye(2 * l + 1), np.eye(2 * l + 1)) / (2 * l + 1)
            np.testing.assert_allclose(m, want if l == l2 else 0 * m, atol=1e-12)


def test_wigner_is_a_representation_acting_on_harmonics():
    r = grid.random_rotations(0, 2)
    x = grid.s2_points(3).reshape(-1, 3)
    d0, d1, d01 = (grid.wigner_d_real(4, m) for m in (r[0], r[1], r[0] @ r[1]))
    y, y_rot = grid.real_sph_harm(4, x), grid.real_sph_harm(4, x @ r[0].T)
    for l in range(4):
        s = slice(l * l, (l + 1) ** 2)
        np.testing.assert_allclose(d01[l], d0[l] @ d1[l], atol=1e-12)
        np.testing.assert_allclose(y_rot[:, s], y[:, s] @ d0[l].T, atol=1e-12)
    np.testing.assert_allclose(grid.so3_grid_wigner(2, 2)[1],
                               grid.wigner_d_real(2, grid.so3_rotations(2))[1], atol=1e-12)


# ----------------------------------------------------------------------- equivariance


@pytest.mark.parametrize("with_conv", [False, True])
def test_lifting_and_conv_are_equivariant_to_round_off_on_band_limited_signals(with_conv):
    x, rotate = signal(0, 2, 3, 3)
    layers = [S2Lifting(4, bandwidth=3, b_std=0.2)]
    layers += [SO3Conv(3, filter_bandwidth=2, b_std=0.1)] if with_conv else []
    init_fn, apply_fn, _ = stax.serial(*layers)
    params = init_fn(jax.random.PRNGKey(0), x.shape)[1]
    g = grid.random_rotations(1, 1)[0]
    out = apply_fn(params, x)
    out_rot = np.asarray(apply_fn(params, rotate(g))).reshape(2, -1, out.shape[-1])
    want = so3_values(out, 3, rotated_grid(3, g))   # out(g⁻¹ R)
    np.testing.assert_allclose(out_rot, want, atol=1e-10 * np.abs(want).max())


def equivariance_errors(L):
    """(relative error of SO3Conv feature maps under g, of pooled outputs), at grid bandwidth L."""
    x, rotate = signal(2, 2, 3, 3)
    layers = [S2Lifting(8, bandwidth=L, filter_bandwidth=2, b_std=0.1), stax.Erf(),
              SO3Conv(8, filter_bandwidth=2, W_std=1.5, b_std=0.1)]
    init_fn, apply_fn, _ = stax.serial(*layers)
    pool_apply = stax.serial(*layers, stax.Erf(), SO3Pool())[1]
    params = init_fn(jax.random.PRNGKey(3), x.shape)[1]
    g = grid.random_rotations(4, 1)[0]
    fmap = so3_values(apply_fn(params, x), 2, rotated_grid(L, g))
    fmap_rot = np.asarray(apply_fn(params, rotate(g))).reshape(fmap.shape)
    pool_params = list(params) + [(), ()]
    pooled, pooled_rot = pool_apply(pool_params, x), pool_apply(pool_params, rotate(g))
    return rel_err(fmap_rot, fmap), rel_err(pooled_rot, pooled)


def test_conv_equivariance_and_pool_invariance_improve_with_bandwidth():
    """Exact in the continuum; on the grid the quadrature of Erf(·) errs, less at larger L."""
    coarse, fine = equivariance_errors(2), equivariance_errors(4)
    assert fine[0] < 0.05 and fine[1] < 0.05, fine
    assert fine[0] < coarse[0] / 5 and fine[1] < coarse[1] / 5, (coarse, fine)


def kernel_invariance_error(L, combine):
    x1, rot1 = signal(5, 2, 3, 2)
    x2, rot2 = signal(6, 3, 3, 2)
    kernel_fn = combine(S2Lifting(1, bandwidth=L, filter_bandwidth=2, W_std=1.5, b_std=0.2),
                        stax.Erf(), SO3Conv(1, filter_bandwidth=2, W_std=1.3), stax.Relu(),
                        SO3Pool(), stax.Dense(1, W_std=1.1, b_std=0.1))[2]
    g1, g2 = grid.random_rotations(7, 2)
    k, k_rot = kernel_fn(x1, x2, ("nngp", "ntk")), kernel_fn(rot1(g1), rot2(g2), ("nngp", "ntk"))
    return max(rel_err(k_rot.nngp, k.nngp), rel_err(k_rot.ntk, k.ntk))


@pytest.mark.parametrize("combine,bandwidths", [(so3_serial, (2, 4)), (stax.serial, (2, 3))])
def test_kernels_are_invariant_under_independent_rotations(combine, bandwidths):
    coarse, fine = (kernel_invariance_error(L, combine) for L in bandwidths)
    assert coarse < 2e-2 and fine < coarse / 3, (coarse, fine)


# ------------------------------------------------------------------ fast vs direct


def fast_and_direct(layers, x1, x2, get=("nngp", "ntk"), quadrature="pairs"):
    return (so3_serial(*layers, quadrature=quadrature)[2](x1, x2, get),
            stax.serial(*layers)[2](x1, x2, get))


FIELDS = ("nngp", "ntk", "cov1", "cov2")


@pytest.mark.parametrize("quadrature", ["pairs", "relative"])
def test_fast_path_equals_direct_without_nonlinearity(quadrature):
    x1, x2 = signal(8, 2, 3, 3)[0], signal(9, 3, 3, 3)[0] + 0.1
    for parameterization in ("ntk", "standard"):
        layers = [S2Lifting(2, bandwidth=3, W_std=1.5, b_std=0.3,
                            parameterization=parameterization),
                  stax.Dense(5, W_std=0.9, b_std=0.2, parameterization=parameterization),
                  SO3Conv(3, bandwidth=2, filter_bandwidth=2, W_std=0.8, b_std=0.1,
                          parameterization=parameterization),
                  SO3Pool(), stax.Dense(1, W_std=1.2), stax.Erf()]
        fast, direct = fast_and_direct(layers, x1, x2, FIELDS, quadrature)
        for name in FIELDS:
            np.testing.assert_allclose(getattr(fast, name), getattr(direct, name), rtol=1e-12)


def nonlinear_stack(L, parameterization="ntk", second=stax.Relu):
    return [S2Lifting(1, bandwidth=L, filter_bandwidth=2, W_std=1.5, b_std=0.3,
                      parameterization=parameterization), stax.Erf(),
            SO3Conv(1, filter_bandwidth=2, W_std=1.3, b_std=0.2, parameterization=parameterization),
            second(), SO3Conv(1, filter_bandwidth=2, W_std=0.9, b_std=0.1, parameterization=parameterization),
            stax.Erf(),
            SO3Pool(), stax.Dense(1, W_std=1.2, b_std=0.1), stax.Erf()]


@pytest.mark.parametrize("L,parameterization,second", [(2, "ntk", stax.Relu), (3, "standard", stax.Gelu)])
def test_pairs_quadrature_equals_direct_with_nonlinearities(L, parameterization, second):
    """The default fast path evaluates the direct recursion's own double quadrature: the same
    values to round-off through Erf/ReLU/GELU, two group convolutions, both parameterisations."""
    x1 = jax.random.normal(jax.random.PRNGKey(0), (2, 2 * L, 2 * L, 2))
    x2 = jax.random.normal(jax.random.PRNGKey(1), (3, 2 * L, 2 * L, 2))
    fast, direct = fast_and_direct(nonlinear_stack(L, parameterization, second), x1, x2, FIELDS)
    for name in FIELDS:
        np.testing.assert_allclose(getattr(fast, name), getattr(direct, name), rtol=1e-11)


def test_relative_quadrature_converges_to_direct_with_nonlinearities():
    """The single quadrature over relative rotations and the direct double quadrature discretise
    the same Haar integrals of F∘k; their gap decays fast with L/B (measured 1.6e-4, 6.4e-6, 9.9e-7)."""
    x1 = jax.random.normal(jax.random.PRNGKey(0), (2, 6, 6, 2))
    x2 = jax.random.normal(jax.random.PRNGKey(1), (3, 6, 6, 2))
    gaps = []
    for L in (2, 3, 4):
        fast, direct = fast_and_direct(nonlinear_stack(L), x1, x2, quadrature="relative")
        gaps.append(max(rel_err(fast.nngp, direct.nngp), rel_err(fast.ntk, direct.ntk)))
    assert 1e-6 < gaps[0] < 1e-3 and gaps[1] < gaps[0] / 10 and gaps[2] < min(gaps[1] / 3, 3e-6), gaps


@pytest.mark.parametrize("quadrature", ["pairs", "relative"])
def test_fast_path_without_x2_matches_its_cross_form(quadrature):
    x = jax.random.normal(jax.random.PRNGKey(2), (3, 6, 6, 2))
    kernel_fn = so3_serial(S2Lifting(1, bandwidth=2), stax.Erf(), SO3Conv(1), stax.Erf(),
                           SO3Pool(), stax.Dense(1), stax.Relu(), quadrature=quadrature)[2]
    k_none, k_cross = kernel_fn(x, None, ("nngp", "ntk")), kernel_fn(x, x, ("nngp", "ntk"))
    np.testing.assert_allclose(k_none.nngp, k_cross.nngp, rtol=1e-12)
    np.testing.assert_allclose(k_none.ntk, k_cross.ntk, rtol=1e-12)


# ------------------------------------------------------------------------ scaling


@pytest.mark.parametrize("fast", [False, True])
def test_w_std_scales_every_kernel_field(fast):
    x1 = jax.random.normal(jax.random.PRNGKey(3), (2, 6, 6, 2))
    x2 = jax.random.normal(jax.random.PRNGKey(4), (2, 6, 6, 2))
    combine = so3_serial if fast else stax.serial
    get = ("nngp", "ntk", "cov1", "cov2")

    def kern(w_lift, w_conv):
        return combine(S2Lifting(1, bandwidth=2, W_std=w_lift), stax.Relu(),
                       SO3Conv(1, W_std=w_conv), SO3Pool())[2](x1, x2, get)

    base, lift2, conv2 = kern(1.3, 0.7), kern(2.6, 0.7), kern(1.3, 1.4)
    for name in get:   # Relu is 1-homogeneous: doubling either W_std gives ×4 everywhere
        np.testing.assert_allclose(getattr(lift2, name), 4 * getattr(base, name), rtol=1e-10)
        np.testing.assert_allclose(getattr(conv2, name), 4 * getattr(base, name), rtol=1e-10)


@pytest.mark.parametrize("fast", [False, True])
def test_ntk_equals_nngp_when_only_the_lifting_is_parameterised(fast):
    x1 = jax.random.normal(jax.random.PRNGKey(5), (2, 6, 6, 2))
    x2 = jax.random.normal(jax.random.PRNGKey(6), (3, 6, 6, 2))
    combine = so3_serial if fast else stax.serial
    kernel_fn = combine(S2Lifting(3, bandwidth=2, W_std=1.7, b_std=0.4), SO3Pool())[2]
    k = kernel_fn(x1, x2, ("nngp", "ntk"))
    np.testing.assert_allclose(k.ntk, k.nngp, rtol=1e-12)
    k = S2Lifting(3, bandwidth=2, W_std=1.7, b_std=0.4)[2](x1, x2, ("nngp", "ntk"))
    np.testing.assert_allclose(k.ntk, k.nngp, rtol=1e-12)


# --------------------------------------------------------------------- Monte Carlo

NNGP_RUNS = ((8, 16), (256, 16))
NTK_RUNS = ((16, 8), (256, 8))


def body(width):
    return [S2Lifting(width, bandwidth=2, W_std=1.5, b_std=0.3), stax.Erf(),
            SO3Conv(width, W_std=1.3, b_std=0.2), stax.Relu(), SO3Pool()]


def check_convergence(x, runs, layers_of, get, estimator, seed):
    errors = []
    for width, networks in runs:
        init_fn, apply_fn, kernel_fn = stax.serial(*layers_of(width))
        analytic = kernel_fn(x, None, get)
        estimate = estimator(init_fn, apply_fn, width)
        keys = jax.random.split(jax.random.PRNGKey(width + seed), networks)
        estimates = [estimate(k) for k in keys]
        single = sum(rel_err(e, analytic) for e in estimates) / len(estimates)
        errors.append((single, rel_err(jnp.mean(jnp.stack(estimates), 0), analytic)))
    (small, _), (large, ensemble) = errors
    assert large < small / 1.5 and ensemble < TOLERANCE, errors


@pytest.fixture(scope="module")
def x_mc():
    return jax.random.normal(jax.random.PRNGKey(0), (3, 6, 6, 2))


def test_nngp_matches_monte_carlo(x_mc):
    def estimator(init_fn, apply_fn, width):
        apply = jax.jit(apply_fn)

        def estimate(key):
            z = apply(init_fn(key, x_mc.shape)[1], x_mc)
            return z @ z.T / width
        return estimate

    check_convergence(x_mc, NNGP_RUNS, body, "nngp", estimator, seed=0)


def test_ntk_matches_monte_carlo(x_mc):
    def estimator(init_fn, apply_fn, width):
        ntk_fn = jax.jit(nt.empirical_ntk_fn(apply_fn, trace_axes=(-1,)))
        return lambda key: ntk_fn(x_mc, None, init_fn(key, x_mc.shape)[1])

    check_convergence(x_mc, NTK_RUNS, lambda w: body(w) + [stax.Dense(1, W_std=1.2, b_std=0.1)],
                      "ntk", estimator, seed=1)


def test_fast_kernels_of_the_monte_carlo_network(x_mc):
    """The default fast path gives the Monte-Carlo-checked direct kernel to round-off (the NTK
    to 1e-8: ReLU's derivative kernel, arccos of the correlation, turns round-off at the
    self-pairs' correlation 1 into ~√eps; measured 2e-10); the relative quadrature, without
    oversampling (B = L = 2), is within ~0.1%."""
    layers = body(1) + [stax.Dense(1, W_std=1.2, b_std=0.1)]
    fast, direct = fast_and_direct(layers, x_mc, None)
    assert rel_err(fast.nngp, direct.nngp) < 1e-12 and rel_err(fast.ntk, direct.ntk) < 1e-8
    fast = so3_serial(*layers, quadrature="relative")[2](x_mc, None, ("nngp", "ntk"))
    assert rel_err(fast.nngp, direct.nngp) < 5e-3 and rel_err(fast.ntk, direct.ntk) < 5e-3


# ---------------------------------------------------------------------- bad input


def test_bad_inputs_raise_clear_errors():
    x = jnp.zeros((2, 6, 6, 2))
    with pytest.raises(ValueError, match="filter_bandwidth 4 exceeds"):
        S2Lifting(2, bandwidth=3, filter_bandwidth=4)[0](jax.random.PRNGKey(0), x.shape)
    with pytest.raises(ValueError, match="filter_bandwidth 3 exceeds"):
        S2Lifting(2, bandwidth=2, filter_bandwidth=3)[2](x, None, "nngp")
    with pytest.raises(ValueError, match="filter_bandwidth 3 exceeds"):
        so3_serial(S2Lifting(2, bandwidth=2, filter_bandwidth=3), SO3Pool())[2](x, None, "nngp")
    with pytest.raises(ValueError, match="quadrature must be one of"):
        so3_serial(S2Lifting(2), SO3Pool(), quadrature="midpoint")
    with pytest.raises(ValueError, match="Driscoll-Healy"):
        S2Lifting(2)[0](jax.random.PRNGKey(0), (2, 6, 5, 2))
    with pytest.raises(ValueError, match="SO\\(3\\) feature maps"):
        SO3Conv(2)[0](jax.random.PRNGKey(0), x.shape)
    with pytest.raises(ValueError, match="SO\\(3\\) feature maps"):
        stax.serial(SO3Conv(2), SO3Pool())[2](x, None, "nngp")
    with pytest.raises(ValueError, match="in_chan mismatch"):
        init_fn, apply_fn, _ = S2Lifting(2)
        apply_fn(init_fn(jax.random.PRNGKey(0), (1, 6, 6, 3))[1], x)
    with pytest.raises(ValueError, match="parameterization"):
        SO3Conv(2, parameterization="mean_field")
    with pytest.raises(ValueError, match="filter_bandwidth must be an int >= 1 or None"):
        SO3Conv(2, filter_bandwidth=0)


def test_architecture_spec_picks_the_quadrature():
    from raygram.kernels.architecture import network

    x = jax.random.normal(jax.random.PRNGKey(7), (2, 4, 4, 2))
    spec = [{"S2Lifting": {"out_chan": 1}}, "Erf", {"SO3Conv": {"out_chan": 1}}, "Erf"]
    layers = [S2Lifting(1), stax.Erf(), SO3Conv(1), stax.Erf(), SO3Pool()]
    for quadrature in ("pairs", "relative"):
        got = network(spec + [{"SO3Pool": {"quadrature": quadrature}}])[2](x, None, "ntk")
        want = so3_serial(*layers, quadrature=quadrature)[2](x, None, "ntk")
        np.testing.assert_allclose(got, want, rtol=1e-13)
    default = network(spec + ["SO3Pool"])[2](x, None, "ntk")
    np.testing.assert_allclose(default, stax.serial(*layers)[2](x, None, "ntk"), rtol=1e-12)
    assert rel_err(got, default) > 1e-7   # the relative quadrature is a different discretisation
    with pytest.raises(ValueError, match="SO3Pool: quadrature must be one of"):
        network(spec + [{"SO3Pool": {"quadrature": "midpoint"}}])
