"""`SymmetricGram`: the full N×N matrix, read lazily from a store that holds its upper tiles.

Entry (a, b) is read from the upper triangle: stored (a, b) when a <= b, else stored
(b, a), so the result is exactly symmetric even inside diagonal tiles. Numpy-style
slicing (ints and unit-step slices) reads only the tiles a slice touches; the object
also has `shape`, `dtype`, `ndim` and `chunks`, which is all `dask.array.from_array` needs.
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


class SymmetricGram:
    """Symmetric view of an upper-triangle-tiled (N, N) zarr array."""

    ndim = 2

    def __init__(self, upper):
        self.upper = upper
        self.shape = tuple(upper.shape)
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
        out = self[:, :]
        return out if dtype is None else out.astype(dtype)
