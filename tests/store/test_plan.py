"""Tile plans: every stored entry covered exactly once, padding, tile-size choice."""
import numpy as np
import pytest

from raygram.store.plan import Tile, TilePlan, balanced_tile_size, fit_tile_size


@pytest.mark.parametrize("n, m, t", [(1, 0, 1), (11, 5, 4), (12, 7, 3), (10, 3, 16), (33, 1, 8)])
def test_tiles_cover_upper_triangle_test_block_and_diagonal_once(n, m, t):
    plan = TilePlan(n, m, t)
    cover = {b: np.zeros(plan.block_shape(b), int) for b in plan.blocks}
    for tile in plan.tiles():
        cover[tile.block][plan.region(tile)] += 1
    upper = np.triu(np.ones((n, n), bool))
    # Upper triangle exactly once; below the diagonal only inside diagonal tiles.
    assert (cover["train_train"][upper] == 1).all()
    tile_row = np.arange(n) // t
    in_diagonal_tile = tile_row[:, None] == tile_row[None, :]
    assert (cover["train_train"][~upper] == in_diagonal_tile[~upper]).all()
    if m:
        assert (cover["test_train"] == 1).all() and (cover["test_diag"] == 1).all()
    else:
        assert plan.blocks == ("train_train",)
    assert plan.total_entries() == sum(c.sum() for c in cover.values())


def test_symmetric_block_needs_only_upper_tiles():
    plan = TilePlan(100, 0, 10)
    assert len(list(plan.tiles())) == 10 * 11 // 2


def test_ragged_tile_is_padded_with_its_last_row():
    x = np.arange(10.0)[:, None]
    plan = TilePlan(10, 0, 4)
    np.testing.assert_array_equal(plan.padded_rows(x, 0)[:, 0], [0, 1, 2, 3])
    np.testing.assert_array_equal(plan.padded_rows(x, 2)[:, 0], [8, 9, 9, 9])
    assert plan.region(Tile("train_train", 2, 2)) == (slice(8, 10), slice(8, 10))
    assert plan.entries(Tile("train_train", 0, 2)) == 8


def test_balanced_tile_size_pads_least():
    assert balanced_tile_size(1000, 64) == 63  # 16 tiles of 63 = 1008, not 16 of 64 = 1024
    assert balanced_tile_size(100, 1000, min_grid=4) == 25
    assert balanced_tile_size(3, 1000, min_grid=16) == 1
    with pytest.raises(ValueError):
        balanced_tile_size(10, 0)


def test_fit_tile_size_inverts_the_quadratic_memory_model():
    def model(t):
        return 1000 + 50 * t + 8 * t * t

    sizes = (2, 4, 8)
    budget = model(37)
    assert fit_tile_size(sizes, [model(t) for t in sizes], budget, n=10_000) == 37
    assert fit_tile_size(sizes, [model(t) for t in sizes], budget, n=20) == 20
    with pytest.raises(MemoryError, match="one kernel entry"):
        fit_tile_size(sizes, [model(t) for t in sizes], 500, n=100)


def test_bad_plans_are_refused():
    with pytest.raises(ValueError, match="tile_size"):
        TilePlan(10, 0, 0)
    with pytest.raises(ValueError, match="n_train"):
        TilePlan(0, 0, 4)
