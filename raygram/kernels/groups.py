"""Finite planar groups that act exactly on the square pixel grid.

A group is a table entry: a name and integer 2×2 generator matrices (signed
permutations, i.e. elements of D4). Closure, the multiplication table and inverses
are derived here, so adding a group (e.g. "D2") is one line in `_GENERATORS`.

Coordinates are centred: pixel (i, j) of an H×W grid sits at
(i - (H-1)/2, j - (W-1)/2), so every element maps the grid onto itself when H == W.
The element order is fixed and starts with the identity (index 0): the relative
kernel representation in `planar.py` relies on it.
"""
from __future__ import annotations

import dataclasses
import functools
import itertools

import jax.numpy as jnp
import numpy as np

from raygram.errors import ConfigError

_R90 = ((0, -1), (1, 0))       # rotation by +90°
_FLIP = ((1, 0), (0, -1))      # reflection j -> -j (mirror left/right)

_GENERATORS: dict[str, tuple] = {
    "trivial": (),
    "C2": (((-1, 0), (0, -1)),),
    "C4": (_R90,),
    "D1": (_FLIP,),
    "D2": (_FLIP, ((-1, 0), (0, 1))),
    "D4": (_R90, _FLIP),
}
_ALIASES = {"C1": "trivial", "p4": "C4", "p4m": "D4"}


@dataclasses.dataclass(frozen=True, eq=False)
class PlanarGroup:
    """A finite group of signed-permutation matrices acting on centred pixel coordinates.

    Attributes:
      name: table name.
      matrices: int array (|G|, 2, 2); matrices[0] is the identity.
      table: int array (|G|, |G|); table[a, b] is the index of matrices[a] @ matrices[b].
      inverse: int array (|G|,); index of each element's inverse.
    """

    name: str
    matrices: np.ndarray
    table: np.ndarray
    inverse: np.ndarray

    @property
    def order(self) -> int:
        return len(self.matrices)

    @property
    def swaps_axes(self) -> bool:
        """True if some element exchanges the two image axes (needs square grids)."""
        return bool(np.any(self.matrices[:, 0, 0] == 0))

    def __repr__(self) -> str:
        return f"PlanarGroup({self.name!r}, order={self.order})"

    def check_square(self, height: int, width: int, what: str) -> None:
        """Raise if the group cannot act on an H×W grid of `what`."""
        if self.swaps_axes and height != width:
            raise ConfigError(
                f"group {self.name!r} rotates by 90 degrees, which maps the grid onto itself "
                f"only when it is square; got {what} of spatial shape ({height}, {width})."
            )

    def offsets(self, g: int, filter_shape: tuple[int, int]) -> np.ndarray:
        """Filter index j -> index of g·(j - c) + c, c the filter centre; shape (kh, kw, 2)."""
        kh, kw = filter_shape
        c = np.array([(kh - 1) / 2, (kw - 1) / 2])
        j = np.stack(np.meshgrid(np.arange(kh), np.arange(kw), indexing="ij"), -1)
        out = (j - c) @ self.matrices[g].T + c
        return np.rint(out).astype(int)


def _close(generators: tuple) -> np.ndarray:
    """All products of the generators, identity first, in a deterministic order."""
    elems = [np.eye(2, dtype=int)]
    gens = [np.array(g, dtype=int) for g in generators]
    frontier = list(elems)
    while frontier:
        new = []
        for a, g in itertools.product(frontier, gens):
            m = g @ a
            if not any(np.array_equal(m, e) for e in elems):
                elems.append(m)
                new.append(m)
        frontier = new
    return np.stack(elems)


def get_group(name: str) -> PlanarGroup:
    """The `PlanarGroup` called `name` (one of `GROUP_NAMES`, or an alias such as "p4")."""
    if not isinstance(name, str):
        raise TypeError(f"group must be a group name (str), got {type(name).__name__}.")
    key = _ALIASES.get(name, name)
    if key not in _GENERATORS:
        raise ConfigError(
            f"unknown group {name!r}: raygram knows {sorted(_GENERATORS)} (aliases "
            f"{sorted(_ALIASES)}). Only subgroups of D4 act exactly on a pixel grid."
        )
    return _build(key)


def as_group(group: PlanarGroup | str) -> PlanarGroup:
    """`group` itself if it is a `PlanarGroup`, else the group it names (`get_group`)."""
    return get_group(group) if isinstance(group, str) else group


@functools.cache
def _build(key: str) -> PlanarGroup:
    mats = _close(_GENERATORS[key])
    index = {m.tobytes(): i for i, m in enumerate(mats)}
    table = np.array([[index[(a @ b).tobytes()] for b in mats] for a in mats])
    inverse = np.array([int(np.argmax(row == 0)) for row in table])
    return PlanarGroup(key, mats, table, inverse)


GROUP_NAMES = tuple(sorted(_GENERATORS))


def pullback(x, matrix: np.ndarray, axes: tuple[int, int]):
    """y[q] = x[matrix @ q] on the two (centred) spatial `axes` of `x`.

    Works for numpy and JAX arrays alike: a signed permutation is an optional axis
    swap followed by flips, so no gather is needed.
    """
    a0, a1 = axes
    m = np.asarray(matrix)
    if m[0, 0] == 0:
        x = x.swapaxes(a0, a1)
        signs = (m[1, 0], m[0, 1])
    else:
        signs = (m[0, 0], m[1, 1])
    for ax, s in zip(axes, signs):
        if s < 0:
            x = x[(slice(None),) * (ax % x.ndim) + (slice(None, None, -1),)]
    return x


def transform_images(x, group: PlanarGroup | str, g: int):
    """(g·x)(q) = x(g⁻¹ q) for images x of shape (N, H, W, C)."""
    group = as_group(group)
    group.check_square(x.shape[1], x.shape[2], "images")
    return pullback(x, group.matrices[group.inverse[g]], (1, 2))


def orbit(x, group: PlanarGroup | str):
    """All transformed copies of images x (N, H, W, C): shape (|G|, N, H, W, C)."""
    group = as_group(group)
    return jnp.stack([transform_images(x, group, g) for g in range(group.order)])
