"""`SymmetricGram`: the full N×N matrix, read lazily from a store that holds its upper tiles.

Entry (a, b) is read from the upper triangle: stored (a, b) when a <= b, else stored
(b, a), so the result is exactly symmetric even inside diagonal tiles. Numpy-style
slicing (ints and unit-step slices) reads only the tiles a slice touches; the object
also has `shape`, `dtype`, `ndim` and `chunks`, which is all `dask.array.from_array` needs.
`matmat` multiplies by the full matrix reading every stored tile once (half the reads
of a product through the full view).
"""
from __future__ import annotations

import numpy as np


def _normalise(key, shape):
    """Two (start, stop, squeeze) triples for an index of ints / unit-step slices."""
    key = key if isinstance(key, tuple) else (key,)
    if any(k is Ellipsis for k in key):
        at = key.index(Ellipsis)
        key = key[:at] + (slice(None),) * (2 - len(key) + 1) + key[at + 1:]
    key = key + (slice(None),) * (2 - len(key))
    if len(key) != 2:
        raise IndexError(f"too many indices for a 2-D Gram matrix: {key!r}")
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
                raise IndexError("SymmetricGram supports unit-step slices only; take [a:b] and step in numpy")
            spans.append((start, max(start, stop), False))
        else:
            raise IndexError(f"SymmetricGram takes ints and slices, not {type(k).__name__}")
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
    """Symmetric view of an upper-triangle-tiled (N, N) zarr array, or of its leading
    (size, size) block (the Gram of the first `size` training points)."""

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
        (r0, r1, squeeze_r), (c0, c1, squeeze_c) = _normalise(key, self.shape)
        rows = np.arange(r0, r1)[:, None]
        cols = np.arange(c0, c1)[None, :]
        in_upper = rows <= cols
        if in_upper.all():
            out = self.upper[r0:r1, c0:c1]
        elif not in_upper.any():
            out = self.upper[c0:c1, r0:r1].T
        else:
            out = np.where(in_upper, self.upper[r0:r1, c0:c1], self.upper[c0:c1, r0:r1].T)
        out = np.asarray(out)
        if squeeze_r and squeeze_c:
            return out[0, 0]
        if squeeze_r or squeeze_c:
            return out[0] if squeeze_r else out[:, 0]
        return out

    def __array__(self, dtype=None, copy=None):
        out = self.dense()
        return out if dtype is None else out.astype(dtype)

    def dense(self) -> np.ndarray:
        """The whole matrix (N, N), read once and mirrored in place tile row by tile row (N² values)."""
        n = self.shape[0]
        out = np.asarray(self.upper[:n, :n])
        step = self.chunks[0]
        for start in range(0, self.shape[0], step):
            stop = min(start + step, self.shape[0])
            out[start:stop, :start] = out[:start, start:stop].T
            block = out[start:stop, start:stop]
            lower = np.tril_indices(stop - start, -1)
            block[lower] = block.T[lower]
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
