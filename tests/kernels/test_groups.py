"""Group tables: axioms, and the action on images is the exact pixel permutation."""
import numpy as np
import pytest

from raygram.kernels import GROUP_NAMES, get_group, transform_images

ORDERS = {"trivial": 1, "C2": 2, "C4": 4, "D1": 2, "D2": 4, "D4": 8}


@pytest.mark.parametrize("name", GROUP_NAMES)
def test_group_axioms(name):
    g = get_group(name)
    assert g.order == ORDERS[name]
    assert np.array_equal(g.matrices[0], np.eye(2))
    n = g.order
    for a in range(n):
        assert sorted(g.table[a]) == list(range(n))  # Latin square: closure + cancellation
        assert g.table[a, g.inverse[a]] == 0
        for b in range(n):
            assert np.array_equal(g.matrices[a] @ g.matrices[b], g.matrices[g.table[a, b]])


def test_c4_and_d4_act_by_rot90_and_flips():
    x = np.random.default_rng(0).normal(size=(2, 6, 6, 3))
    c4 = get_group("C4")
    rotated = {tuple(np.round(transform_images(x, c4, g)[0, :, :, 0], 12).ravel()) for g in range(4)}
    expected = {tuple(np.round(np.rot90(x[0, :, :, 0], k), 12).ravel()) for k in range(4)}
    assert rotated == expected
    d4 = get_group("D4")
    images = {tuple(np.round(transform_images(x, d4, g)[0, :, :, 0], 12).ravel()) for g in range(8)}
    expected |= {tuple(np.round(np.fliplr(np.rot90(x[0, :, :, 0], k)), 12).ravel()) for k in range(4)}
    assert images == expected


@pytest.mark.parametrize("name", ["C4", "D4"])
def test_transform_images_is_a_left_action(name):
    g = get_group(name)
    x = np.random.default_rng(1).normal(size=(1, 5, 5, 1))
    for a in range(g.order):
        for b in range(g.order):
            lhs = transform_images(transform_images(x, g, b), g, a)
            np.testing.assert_array_equal(lhs, transform_images(x, g, g.table[a, b]))


def test_aliases():
    assert get_group("p4") is get_group("C4")
    assert get_group("p4m") is get_group("D4")
    assert get_group("C1") is get_group("trivial")
