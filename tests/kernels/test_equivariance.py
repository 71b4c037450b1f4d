"""Finite networks: feature maps transform by the group action, pooled outputs are invariant."""
import itertools

import jax
import numpy as np
import pytest

from raygram._neural_tangents import stax
from raygram.kernels import GroupConv, GroupPool, LiftingConv, get_group, transform_feature_maps, transform_images

CASES = list(itertools.product(["C4", "D4"], ["SAME", "VALID", "CIRCULAR"]))


def network(group, padding, k):
    return stax.serial(
        LiftingConv(3, (k, k), group=group, padding=padding, b_std=0.1), stax.Relu(),
        GroupConv(4, (k, k), group=group, padding=padding, b_std=0.1), stax.Erf(),
        GroupConv(2, (k, k), group=group, padding=padding, b_std=0.1))


@pytest.mark.parametrize("group,padding", CASES)
def test_feature_maps_are_equivariant(group, padding):
    g = get_group(group)
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 9, 9, 2))
    init_fn, apply_fn, _ = network(group, padding, 3)
    _, params = init_fn(jax.random.PRNGKey(1), x.shape)
    out = apply_fn(params, x)
    assert out.shape[3] == g.order
    for h in range(g.order):
        moved = apply_fn(params, transform_images(x, g, h))
        np.testing.assert_allclose(moved, transform_feature_maps(out, g, h), rtol=0, atol=1e-12)
    # a non-trivial element really moves the feature maps (the check above can fail)
    assert np.abs(transform_feature_maps(out, g, 1) - out).max() > 1e-3


@pytest.mark.parametrize("group", ["C4", "D4"])
def test_even_filters_with_valid_padding_are_equivariant(group):
    g = get_group(group)
    x = jax.random.normal(jax.random.PRNGKey(2), (1, 8, 8, 1))
    init_fn, apply_fn, _ = network(group, "VALID", 2)
    _, params = init_fn(jax.random.PRNGKey(3), x.shape)
    out = apply_fn(params, x)
    for h in range(g.order):
        np.testing.assert_allclose(apply_fn(params, transform_images(x, g, h)),
                                   transform_feature_maps(out, g, h), rtol=0, atol=1e-12)


@pytest.mark.parametrize("group", ["C4", "D4"])
def test_pooled_output_is_invariant(group):
    g = get_group(group)
    x = jax.random.normal(jax.random.PRNGKey(4), (3, 7, 7, 1))
    init_fn, apply_fn, _ = stax.serial(LiftingConv(8, (3, 3), group=group),
                                       stax.Relu(), GroupConv(8, (3, 3), group=group), stax.Relu(),
                                       GroupPool(), stax.Dense(2))
    _, params = init_fn(jax.random.PRNGKey(5), x.shape)
    out = apply_fn(params, x)
    for h in range(g.order):
        np.testing.assert_allclose(apply_fn(params, transform_images(x, g, h)), out, rtol=0, atol=1e-12)
