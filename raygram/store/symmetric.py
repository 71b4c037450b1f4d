"""`SymmetricGram`: the full N×N matrix, read lazily from a store that holds its upper tiles.

Entry (a, b) is read from the upper triangle: stored (a, b) when a <= b, else stored
(b, a), so the result is exactly symmetric even inside diagonal tiles. Numpy-style
slicing (ints and unit-step slices) reads only the stored tiles (i, j), i <= j, that a
slice touches (a tile below the diagonal is read as its stored mirror), so every value
comes through the store's checked reads (`raygram.store.gram_store.VerifiedBlock`); the
object also has `shape`, `dtype`, `ndim` and `chunks`, which is all
`dask.array.from_array` needs. `matmat` multiplies by the full matrix reading every
stored tile once (half the reads of a product through the full view).
"""
from __future__ import annotations

import numpy as np

__all__ = ["SymmetricGram", "index_spans"]


def index_spans(key, shape: tuple[int, ...]) -> list[tuple[int, int, bool]]:
    """The (start, stop, squeeze) of each axis that a numpy basic index selects.

    Args:
      key: an int, a unit-step slice, an Ellipsis, or a tuple of them (at most one
        Ellipsis), as in ``a[key]``.
      shape: the shape of the indexed array.

    Returns:
      One (start, stop, squeeze) triple per axis: the selected range [start, stop) and
      whether an int selected it (the axis is dropped from the result).

    Raises:
      IndexError: too many indices, an int out of bounds, a step other than 1, or an
        index that is neither an int nor a slice (arrays, None).
    """
    ndim = len(shape)
    key = key if isinstance(key, tuple) else (key,)
    ellipsis = [at for at, k in enumerate(key) if k is Ellipsis]
    if ellipsis:
        at = ellipsis[0]
        key = key[:at] + (slice(None),) * (ndim - len(key) + 1) + key[at + 1:]
    key = key + (slice(None),) * (ndim - len(key))
    if len(key) != ndim:
        raise IndexError(f"too many indices for a {ndim}-D array: {key!r}")
    spans = []
    for k, n in zip(key, shape):
        if isinstance(k, (int, np.integer)):
            i = int(k) + n if k < 0 else int(k)
            if not 0 <= i < n:
                raise IndexError(f"index {k} is out of bounds for size {n}")
            spans.append((i, i + 1, True))
        elif isinstance(k, slice):
            start, stop, step = k.indices(n)
            if step != 1:
                raise IndexError("only unit-step slices are read from a store; take [a:b] and step in numpy")
            spans.append((start, max(start, stop), False))
        else:
            raise IndexError(f"a store is indexed with ints and slices, not {type(k).__name__}")
    return spans


def _slab_times(gram: "SymmetricGram", start: int, stop: int, x: np.ndarray) -> np.ndarray:
    """The part of K @ x (N, R) that the stored tile row [start, stop) (columns start:) carries.

    With the slab [D R] (D the diagonal tile, symmetrised from its upper triangle):
    rows start:stop get D x[start:stop] + R x[stop:], rows stop: get Rᵀ x[start:stop].
    """
    n = gram.shape[0]
    slab = np.asarray(gram.upper[start:stop, start:n])
    width = stop - start
    diagonal = np.triu(slab[:, :width])
    diagonal += np.triu(diagonal, 1).T
    right = slab[:, width:]
    out = np.zeros((n, x.shape[1]), np.result_type(slab, x))
    out[start:stop] = diagonal @ x[start:stop] + right @ x[stop:]
    out[stop:] = right.T @ x[start:stop]
    return out


class SymmetricGram:
    """Symmetric view of an upper-triangle-tiled (N, N) array, or of its leading (size, size)
    block (the Gram of the first `size` training points).

    Args:
      upper: the stored block, sliced numpy-style: a `VerifiedBlock` (what
        `GramStore.gram` gives) or a zarr array; (N, N) with square `chunks` (the
        tiles), of which only the tiles (i, j), i <= j, are read.
      size: the side of the leading block to view; None: N.

    Raises:
      ValueError: `size` outside [1, N].
    """

    ndim = 2

    def __init__(self, upper, size: int | None = None):
        if size is not None and not 1 <= size <= upper.shape[0]:
            raise ValueError(f"size must be between 1 and {upper.shape[0]}, got {size}")
        self.upper = upper
        n = upper.shape[0] if size is None else size
        self.shape = (n, n)
        self.dtype = upper.dtype
        self.chunks = tuple(upper.chunks)

    def __repr__(self):
        return f"SymmetricGram(shape={self.shape}, dtype={self.dtype}, chunks={self.chunks})"

    def __getitem__(self, key) -> np.ndarray:
        (r0, r1, squeeze_r), (c0, c1, squeeze_c) = index_spans(key, self.shape)
        out = np.empty((r1 - r0, c1 - c0), self.dtype)
        step = self.chunks[0]
        if out.size:
            for a in range(r0 - r0 % step, r1, step):  # the tile rows the rows touch
                b = min(a + step, self.shape[0])
                lo, hi = max(a, r0), min(b, r1)
                out[lo - r0:hi - r0] = self._band(a, b, c0, c1)[lo - a:hi - a]
        if squeeze_r and squeeze_c:
            return out[0, 0]
        if squeeze_r or squeeze_c:
            return out[0] if squeeze_r else out[:, 0]
        return out

    def _band(self, a: int, b: int, c0: int, c1: int) -> np.ndarray:
        """Rows [a, b) (one whole tile row) and columns [c0, c1) of the full matrix, read from
        stored tiles only: left of the diagonal tile from the stored tile column [a, b)
        transposed, the diagonal tile whole with its lower triangle mirrored, right of it as stored."""
        band = np.empty((b - a, c1 - c0), self.dtype)
        if c0 < a:
            band[:, :min(c1, a) - c0] = self.upper[c0:min(c1, a), a:b].T
        if c0 < b and c1 > a:
            diagonal = np.triu(np.asarray(self.upper[a:b, a:b]))
            diagonal += np.triu(diagonal, 1).T
            lo, hi = max(c0, a), min(c1, b)
            band[:, lo - c0:hi - c0] = diagonal[:, lo - a:hi - a]
        if c1 > b:
            start = max(c0, b)
            band[:, start - c0:] = self.upper[a:b, start:c1]
        return band

    def __array__(self, dtype=None, copy=None):
        out = self.dense()
        return out if dtype is None else out.astype(dtype)

    def dense(self) -> np.ndarray:
        """The whole matrix (N, N): each stored tile read once, mirrored tile row by tile row (N² values)."""
        n, step = self.shape[0], self.chunks[0]
        out = np.empty((n, n), self.dtype)
        for a in range(0, n, step):
            b = min(a + step, n)
            out[a:b, a:] = self._band(a, b, a, n)
            out[a:b, :a] = out[:a, a:b].T
        return out

    def matmat(self, x: np.ndarray):
        """K @ x (N, R) for x (N, R) as a lazy dask array: one task per stored tile row.

        Each task reads its slab (tile, N - start) once and returns an (N, R) partial
        product; a tree sum (4 at a time) adds them. Computed with whichever dask
        scheduler is active (threads by default, Ray's inside a Ray job). Tasks take this
        view, not the zarr array: Ray's dask scheduler cannot rebuild zarr's dataclasses.
        """
        import dask
        import dask.array as da

        x = np.asarray(x)
        n, step = self.shape[0], self.chunks[0]
        shape, dtype = (n, x.shape[1]), np.result_type(self.dtype, x.dtype)
        shared = dask.delayed(x)
        parts = [da.from_delayed(dask.delayed(_slab_times)(self, start, min(start + step, n),
                                                                      shared), shape, dtype)
                 for start in range(0, n, step)]
        return da.stack(parts).sum(axis=0, split_every=4)
