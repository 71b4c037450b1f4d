"""Tile plans: which fixed-shape tiles make up the Gram blocks of a build.

Three blocks, each tiled with one tile size t:

- ``train_train`` (N, N): symmetric, so only tiles (i, j) with i <= j;
- ``test_train`` (M, N): every tile;
- ``test_diag`` (M,): k(x, x) of each test point (for predictive variances).

Every tile is computed at the full shape t (the ragged last tile's inputs are padded by
repeating their last row), so one compiled executable serves all tiles of a kind; only
the real (n_i, n_j) part is stored.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Iterator

import numpy as np

BLOCKS = ("train_train", "test_train", "test_diag")


@dataclasses.dataclass(frozen=True, order=True)
class Tile:
    """Tile (i, j) of a block (j = 0 for ``test_diag``)."""

    block: str
    i: int
    j: int = 0

    @property
    def index(self) -> tuple[int, ...]:
        """Position in the block's tile grid: (i,) for test_diag, else (i, j)."""
        return (self.i,) if self.block == "test_diag" else (self.i, self.j)

    @property
    def id(self) -> str:
        return f"{self.block}[{self.i}]" if self.block == "test_diag" else f"{self.block}[{self.i},{self.j}]"

    def __str__(self) -> str:
        return self.id


@dataclasses.dataclass(frozen=True)
class TilePlan:
    """The tiles of a build over N training and M test points with tile size t."""

    n_train: int
    n_test: int
    tile_size: int

    def __post_init__(self):
        if self.n_train < 1 or self.n_test < 0:
            raise ValueError(f"need n_train >= 1 and n_test >= 0, got {self.n_train} and {self.n_test}")
        if self.tile_size < 1:
            raise ValueError(f"tile_size must be a positive integer, got {self.tile_size}")

    def grid(self, n: int) -> int:
        """Number of tiles along an axis of length n."""
        return math.ceil(n / self.tile_size)

    @property
    def blocks(self) -> tuple[str, ...]:
        return BLOCKS if self.n_test else BLOCKS[:1]

    def block_shape(self, block: str) -> tuple[int, ...]:
        return {"train_train": (self.n_train, self.n_train),
                "test_train": (self.n_test, self.n_train),
                "test_diag": (self.n_test,)}[block]

    def block_grid(self, block: str) -> tuple[int, ...]:
        return tuple(self.grid(n) for n in self.block_shape(block))

    def tiles(self, block: str | None = None) -> Iterator[Tile]:
        """Tiles of one block (all blocks if None), row by row."""
        for name in (self.blocks if block is None else (block,)):
            grid = self.block_grid(name)
            if name == "test_diag":
                yield from (Tile(name, i) for i in range(grid[0]))
            else:
                first_j = (lambda i: i) if name == "train_train" else (lambda i: 0)
                yield from (Tile(name, i, j) for i in range(grid[0]) for j in range(first_j(i), grid[1]))

    def span(self, index: int, n: int) -> tuple[int, int]:
        """[start, stop) of tile `index` along an axis of length n."""
        start = index * self.tile_size
        return start, min(start + self.tile_size, n)

    def region(self, tile: Tile) -> tuple[slice, ...]:
        """Where a tile's real values go in its block's array."""
        shape = self.block_shape(tile.block)
        grid = self.block_grid(tile.block)
        if not all(0 <= k < g for k, g in zip(tile.index, grid)):
            raise IndexError(f"tile {tile} is outside the {grid} tile grid of {tile.block}")
        rows = slice(*self.span(tile.i, shape[0]))
        return (rows,) if tile.block == "test_diag" else (rows, slice(*self.span(tile.j, shape[1])))

    def entries(self, tile: Tile) -> int:
        """Number of stored values in a tile."""
        return math.prod(s.stop - s.start for s in self.region(tile))

    def total_entries(self) -> int:
        return sum(self.entries(t) for t in self.tiles())

    def padded_rows(self, x: np.ndarray, index: int) -> np.ndarray:
        """Rows of tile `index` of x, padded to t rows by repeating the last real row."""
        start, stop = self.span(index, len(x))
        rows = x[start:stop]
        if stop - start == self.tile_size:
            return rows
        return np.concatenate([rows, np.repeat(rows[-1:], self.tile_size - (stop - start), axis=0)])

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def balanced_tile_size(n: int, largest: int, min_grid: int = 1) -> int:
    """Tile size <= `largest` that splits n into at least `min_grid` tiles with the least padding."""
    if largest < 1:
        raise ValueError(f"largest tile size must be >= 1, got {largest}")
    grid = max(math.ceil(n / largest), min(min_grid, n))
    return math.ceil(n / grid)


def fit_tile_size(sizes, peak_bytes, budget: int, n: int) -> int:
    """Largest tile size (<= n) whose modelled peak memory fits `budget` bytes.

    Memory of a kernel tile is modelled as a + b·t + c·t² (per-pair covariances grow
    with t², per-input ones with t), fitted exactly through XLA's figures at three sizes.
    """
    model = np.poly1d(np.polyfit(np.asarray(sizes, float), np.asarray(peak_bytes, float), 2))
    if model(1) > budget:
        raise MemoryError(f"one kernel entry needs about {model(1) / 2**20:.0f} MiB, more than the "
                          f"{budget / 2**20:.0f} MiB a worker may use; give workers more memory "
                          "(fewer workers per device) or shrink the network")
    low, high = 1, n
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if model(mid) <= budget * (1 + 1e-9) else (low, mid - 1)
    return low
