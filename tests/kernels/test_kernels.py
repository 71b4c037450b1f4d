"""Analytic kernels: fast paths equal the paper's full recursion, invariance, and reductions."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from raygram._neural_tangents import stax, x64
from raygram.kernels import GroupConv, GroupPool, LiftingConv, general_serial, get_group, serial, transform_images

ATOL = 1e-12  # float64 round-off on O(1) kernel values, same algebra in another order
# The orbit path sums in another order through arc-cosine kernels, which lose half their
# digits where cos θ -> 1 (an input against itself): agreement to ~√eps there.
ORBIT_RTOL = 1e-8


def assert_close(a, b, atol=ATOL, rtol=1e-11):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=atol)


def body(group, padding="SAME", covariance="relative", nonlin=stax.Relu):
    return [LiftingConv(4, (3, 3), group=group, padding=padding, W_std=1.4, b_std=0.2,
                        covariance=covariance), nonlin(),
            GroupConv(4, (3, 3), group=group, padding=padding, W_std=1.1, b_std=0.3), stax.Erf()]


@pytest.fixture(scope="module")
def xs():
    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    return jax.random.normal(k1, (3, 7, 7, 2)), jax.random.normal(k2, (2, 7, 7, 2))


@pytest.mark.parametrize("group,padding", list(itertools.product(["C4", "D4"], ["SAME", "VALID", "CIRCULAR"])))
def test_relative_blocks_are_the_full_covariance(xs, group, padding):
    """The |G| carried blocks reproduce every entry K(g, p; g', p') = D_{g g'^-1}(p, p')."""
    x1, x2 = xs
    g = get_group(group)
    rel = stax.serial(*body(group, padding))[2](x1, x2)
    full = stax.serial(*body(group, padding, "full"))[2](x1, x2)
    for name in ("nngp", "ntk"):
        r, f = getattr(rel, name), getattr(full, name)
        assert r.shape[-2:] == (g.order, 1) and f.shape[-2:] == (g.order, g.order)
        for a in range(g.order):
            for b in range(g.order):
                assert_close(r[..., g.table[a, g.inverse[b]], 0], f[..., a, b])
    # self-covariances: the relative form keeps block e, which is the full diagonal
    for a in range(g.order):
        assert_close(rel.cov1[..., 0, 0], full.cov1[..., a, a])


@pytest.mark.parametrize("group", ["C4", "D4"])
@pytest.mark.parametrize("head", ["linear", "nonlinear"])
def test_fast_and_general_paths_equal_full_recursion(xs, group, head):
    x1, x2 = xs
    tail = ([stax.Dense(1, W_std=0.9, b_std=0.1)] if head == "linear" else
            [stax.Dense(3, b_std=0.1), stax.Relu(), stax.Dense(1, W_std=0.9, b_std=0.1)])
    reference = stax.serial(*body(group, covariance="full"), GroupPool(), *tail)[2]
    layers = body(group) + [GroupPool()] + tail
    fast = serial(*layers)[2]
    # a GroupConv with standard parameterisation has no CNN twin: general recursion
    general_layers = list(layers)
    general_layers[2] = GroupConv(4, (3, 3), group=group, W_std=1.1, b_std=0.3,
                                  parameterization="standard")
    general_reference = list(general_layers)
    general_reference[0] = body(group, covariance="full")[0]
    for a, b in [(x1, x2), (x1, None)]:
        ref = reference(a, b, ("nngp", "ntk"))
        got = fast(a, b, ("nngp", "ntk"))
        assert_close(got.nngp, ref.nngp, rtol=ORBIT_RTOL)
        assert_close(got.ntk, ref.ntk, rtol=ORBIT_RTOL)
        assert_close(fast(a, b, "nngp"), ref.nngp, rtol=ORBIT_RTOL)
        got = serial(*general_layers)[2](a, b, ("nngp", "ntk"))
        want = stax.serial(*general_reference)[2](a, b, ("nngp", "ntk"))
        assert_close(got.nngp, want.nngp)
        assert_close(got.ntk, want.ntk, atol=1e-10)
    full_kernel = fast(x1, x2)
    ref_kernel = reference(x1, x2)
    for name in ("cov1", "cov2", "nngp", "ntk"):
        assert_close(getattr(full_kernel, name), getattr(ref_kernel, name), rtol=ORBIT_RTOL)


@pytest.mark.parametrize("group", ["C4", "D4"])
def test_kernel_invariance(xs, group):
    """K(g·x, h·x') = K(x, x') for every g, h, for the fast and the general path."""
    x1, x2 = xs
    g = get_group(group)
    layers = body(group) + [GroupPool(), stax.Dense(1, b_std=0.1)]
    for kernel_fn in (serial(*layers)[2], stax.serial(*layers)[2]):
        base = kernel_fn(x1, x2, ("nngp", "ntk"))
        for a in range(g.order):
            for b in range(g.order):
                moved = kernel_fn(transform_images(x1, g, a), transform_images(x2, g, b),
                                  ("nngp", "ntk"))
                assert_close(moved.nngp, base.nngp)
                assert_close(moved.ntk, base.ntk)
    # a CNN is not invariant on the same inputs (the check above can fail)
    cnn = stax.serial(stax.Conv(4, (3, 3), padding="SAME"), stax.Relu(), stax.GlobalAvgPool())[2]
    assert not np.allclose(cnn(x1, transform_images(x2, g, 1), "nngp"), cnn(x1, x2, "nngp"))


@pytest.mark.parametrize("parameterization", ["ntk", "standard"])
@pytest.mark.parametrize("padding", ["SAME", "VALID", "CIRCULAR"])
def test_trivial_group_reduces_to_stax_conv(xs, parameterization, padding):
    x1, x2 = xs
    kw = dict(padding=padding, W_std=1.3, parameterization=parameterization)
    ours = stax.serial(LiftingConv(5, (3, 3), group="trivial", b_std=0.2, **kw), stax.Relu(),
                       GroupConv(5, (3, 3), group="trivial", b_std=0.1, **kw))
    theirs = stax.serial(stax.Conv(5, (3, 3), b_std=0.2, **kw), stax.Relu(),
                         stax.Conv(5, (3, 3), b_std=0.1, **kw))
    k_ours, k_theirs = ours[2](x1, x2), theirs[2](x1, x2)
    if k_theirs.is_reversed:
        k_theirs = k_theirs.reverse()
    for name in ("nngp", "ntk", "cov1", "cov2"):
        assert_close(getattr(k_ours, name)[..., 0, 0], getattr(k_theirs, name))
    # apply_fn: same weights (no bias: neural-tangents' Conv bias is untied over space)
    nobias = dict(kw, b_std=None)
    ours = stax.serial(LiftingConv(5, (3, 3), group="trivial", **nobias), stax.Relu(),
                       GroupConv(5, (3, 3), group="trivial", **nobias))
    theirs = stax.serial(stax.Conv(5, (3, 3), **nobias), stax.Relu(), stax.Conv(5, (3, 3), **nobias))
    _, params = theirs[0](jax.random.PRNGKey(1), x1.shape)
    (w1, _), _, (w2, _) = params
    our_params = [(w1, None), (), (w2[:, :, None], None)]
    assert_close(ours[1](our_params, x1)[..., 0, :], theirs[1](params, x1))


@pytest.mark.parametrize("group", ["C4", "D4"])
def test_lifting_only_network_has_ntk_equal_to_nngp(xs, group):
    """The first layer's NTK starts from zero, not from the input covariance."""
    x1, x2 = xs
    lift = dict(group=group, W_std=1.7, b_std=0.4)
    for layers in ([LiftingConv(3, (3, 3), **lift)],
                   [LiftingConv(3, (3, 3), **lift), GroupPool()],
                   [LiftingConv(3, (3, 3), covariance="full", **lift), GroupPool()]):
        k = stax.serial(*layers)[2](x1, x2, ("nngp", "ntk"))
        np.testing.assert_array_equal(k.ntk, k.nngp)
    k = stax.serial(*body(group)[:3])[2](x1, x2, ("nngp", "ntk"))  # two layers: NTK != NNGP
    assert not np.allclose(k.ntk, k.nngp, rtol=1e-3)


@pytest.mark.parametrize("group", ["C4", "D4"])
def test_float32_matches_float64(xs, group):
    x1, x2 = xs
    layers = body(group) + [GroupPool(), stax.Dense(1)]
    for kernel_fn in (serial(*layers)[2], stax.serial(*layers)[2]):
        k64 = kernel_fn(x1, x2, "ntk")
        with x64(False):
            k32 = kernel_fn(np.float32(x1), np.float32(x2), "ntk")
        assert k32.dtype == jnp.float32 and k64.dtype == jnp.float64
        np.testing.assert_allclose(k32, k64, rtol=1e-5)


def test_serial_composes_inside_stax_and_under_jit(xs):
    x1, x2 = xs
    layers = body("C4") + [GroupPool(), stax.Dense(1)]
    fast = jax.jit(serial(*layers)[2], static_argnames="get")
    assert_close(fast(x1, x2, get="ntk"), stax.serial(*layers)[2](x1, x2, "ntk"), rtol=ORBIT_RTOL)
    # our layers inside stax.parallel / FanInSum
    par = stax.serial(stax.FanOut(2), stax.parallel(stax.serial(*layers), stax.serial(*layers)),
                      stax.FanInSum())
    assert_close(par[2](x1, x2, "nngp"), 2 * stax.serial(*layers)[2](x1, x2, "nngp"))


@pytest.mark.parametrize("group,padding", [("C4", "SAME"), ("D4", "VALID"), ("D4", "CIRCULAR")])
def test_general_serial_gives_the_group_recursion_one_block_at_a_time(xs, group, padding):
    """general_serial runs the relative blocks one at a time: stax.serial's values to round-off."""
    x1, x2 = xs
    linear = body(group, padding) + [GroupPool(), stax.Dense(1, W_std=0.9, b_std=0.1)]
    got_fn, want_fn = general_serial(*linear)[2], stax.serial(*linear)[2]
    for b in (x2, None):
        got, want = got_fn(x1, b, ("nngp", "ntk")), want_fn(x1, b, ("nngp", "ntk"))
        assert_close(got.nngp, want.nngp, atol=0, rtol=1e-13)
        assert_close(got.ntk, want.ntk, atol=0, rtol=1e-13)
        assert_close(got_fn(x1, b, "nngp"), want.nngp, atol=0, rtol=1e-13)
    # a nonlinear head reads the pooled self-variances: the full form has them all
    head = [stax.Dense(3, b_std=0.1), stax.Relu(), stax.Dense(1, W_std=0.9, b_std=0.1)]
    got = general_serial(*body(group, padding), GroupPool(), *head)[2](x1, x2)
    want = stax.serial(*body(group, padding, "full"), GroupPool(), *head)[2](x1, x2)
    for name in ("nngp", "ntk", "cov1", "cov2"):
        assert_close(getattr(got, name), getattr(want, name))


def test_general_serial_holds_one_relative_block():
    """XLA's peak memory of the D4 recursion: one block at a time is several times below |G|."""
    x = jax.ShapeDtypeStruct((2, 9, 9, 1), jnp.float64)

    def peak(kernel_fn):
        compiled = jax.jit(lambda a, b: kernel_fn(a, b, ("nngp", "ntk"))).lower(x, x).compile()
        mem = compiled.memory_analysis()
        if mem is None:
            pytest.skip("this backend has no memory analysis")
        return mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes

    layers = body("D4") + [GroupPool(), stax.Dense(1)]
    with x64(True):
        assert peak(stax.serial(*layers)[2]) > 3 * peak(general_serial(*layers)[2])
