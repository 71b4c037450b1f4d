"""One network shared by all atoms of a molecule, summed: f(M) = Σ_i g(a_i).

Energies are extensive and atoms are unordered, so a molecule's output is the sum of a
per-atom network g over its atoms. With g's parameters shared, the NNGP and the NTK of f
are sums of g's kernels over all atom pairs,

    K(M, M') = Σ_i Σ_j k_g(a_i, a'_j),

invariant to permuting the atoms of either molecule (matching atoms by position in a
padded list would not be). Molecules are padded to A atoms: inputs are (N, A, *atom, C + 1)
where the last channel is a mask, 1 on every entry of a real atom and 0 on padding
(`pad_molecules` builds it); g sees the first C channels.

Gram tiles of such a kernel are built on the real atoms only (`RaggedTiles`, used by the
tile worker): the same values, without the pairs of padding atoms.
"""
from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from raygram.errors import ConfigError


def pad_molecules(per_atom: list[np.ndarray], atoms: int | None = None) -> np.ndarray:
    """Stack molecules' per-atom arrays [(A_m, *atom, C)] into (N, A, *atom, C + 1) with a mask channel."""
    if not per_atom:
        raise ConfigError("pad_molecules needs at least one molecule")
    shapes = {a.shape[1:] for a in per_atom}
    if len(shapes) != 1:
        raise ConfigError(f"every atom must have the same feature shape, got {sorted(shapes)}")
    if any(len(a) == 0 for a in per_atom):
        raise ConfigError(f"molecule {next(i for i, a in enumerate(per_atom) if len(a) == 0)} has no atoms")
    largest = max(len(a) for a in per_atom)
    atoms = largest if atoms is None else atoms
    if atoms < largest:
        raise ConfigError(f"atoms={atoms} is fewer than the largest molecule's {largest}")
    (shape,) = shapes
    out = np.zeros((len(per_atom), atoms) + shape[:-1] + (shape[-1] + 1,))
    for m, a in enumerate(per_atom):
        out[m, :len(a), ..., :-1] = a
        out[m, :len(a), ..., -1] = 1.0
    return out


def _split(x):
    """(atoms (N·A, *atom, C), mask (N, A)) of padded molecules (N, A, *atom, C + 1)."""
    if x.ndim < 3:
        raise ConfigError(f"molecules must be (N, atoms, ..., channels + mask), got shape {x.shape}")
    mask = x[(slice(None), slice(None)) + (0,) * (x.ndim - 3) + (-1,)]
    atoms = x[..., :-1].reshape((-1,) + x.shape[2:-1] + (x.shape[-1] - 1,))
    return atoms, mask


def AtomSum(init_fn, apply_fn, kernel_fn):
    """The molecule network (init_fn, apply_fn, kernel_fn) of a per-atom stax triple.

    `kernel_fn(x1, x2=None, get=None)` returns the requested kernels as neural-tangents
    does for a tuple `get` (a namedtuple) or a single array, each (N1, N2).
    """
    def mol_init_fn(key, input_shape):
        atom_shape = (-1,) + tuple(input_shape[2:-1]) + (input_shape[-1] - 1,)
        out_shape, params = init_fn(key, atom_shape)
        return (input_shape[0],) + tuple(out_shape[1:]), params

    def mol_apply_fn(params, x, **kwargs):
        atoms, mask = _split(x)
        out = apply_fn(params, atoms, **kwargs)
        out = out.reshape(mask.shape + out.shape[1:])
        return jnp.einsum("na,na...->n...", mask, out)

    def mol_kernel_fn(x1, x2=None, get=None, **kwargs):
        atoms1, mask1 = _split(x1)
        atoms2, mask2 = (atoms1, mask1) if x2 is None else _split(x2)
        per_atom = kernel_fn(atoms1, None if x2 is None else atoms2, get, **kwargs)

        def total(k):
            k = k.reshape(mask1.shape + mask2.shape)
            return jnp.einsum("ia,iajb,jb->ij", mask1, k, mask2)

        if isinstance(get, str):
            return total(per_atom)
        return type(per_atom)(*(total(k) for k in per_atom))

    mol_kernel_fn.atom_kernel_fn = kernel_fn  # marks a molecular kernel: Gram tiles are built ragged (`atom_kernel`)
    return mol_init_fn, mol_apply_fn, mol_kernel_fn


# -- ragged tiles -----------------------------------------------------------------------------
# A Gram tile of padded molecules evaluates the per-atom kernel on all (t·A)² atom pairs, of
# which only (Σ n_i)(Σ n_j) are real: on molecules of varied sizes most of them are padding
# (QM9's ratio is in docs/benchmarks.md). The tile worker (`raygram.build.worker`) instead lays each side's real atoms end to
# end, cuts them into chunks of `chunk` atoms, and runs a loop over the chunk pairs the tile
# really has (a dynamic trip count: one compiled program serves every tile), summing each
# pair's per-atom kernel into the molecules' entries. Only the last, partial chunk of a side
# is padding: with CHUNKS_PER_SIDE chunks on an average side, about 1/(2 · 12) per side.

CHUNKS_PER_SIDE = 12
"""Average number of atom chunks along a tile side; the chunk is ceil(t · mean atoms / this)."""


def atom_kernel(kernel_fn):
    """The per-atom kernel of a molecular kernel made by `AtomSum`, else None.

    `AtomSum` marks its `kernel_fn` with the per-atom `kernel_fn` it sums (attribute
    `atom_kernel_fn`); the attribute travels with the function when it is pickled, so a
    Python kernel made with `AtomSum` is found too. A kernel wrapped by other code (e.g.
    `jax.jit`) loses it and is then computed as padded molecules: correct, not ragged.
    """
    found = getattr(kernel_fn, "atom_kernel_fn", None)
    return found if callable(found) else None


def atom_mask(x: np.ndarray) -> np.ndarray:
    """The (N, A) atom mask of padded molecules (N, A, *atom, C + 1): the last channel at the first grid point."""
    x = np.asarray(x)
    if x.ndim < 3:
        raise ConfigError(f"molecules must be (N, atoms, ..., channels + mask), got shape {x.shape}")
    return x[(slice(None), slice(None)) + (0,) * (x.ndim - 3) + (-1,)]


def atom_counts(x: np.ndarray) -> np.ndarray:
    """Number of real atoms (mask not 0) of each padded molecule, (N,) ints."""
    return (atom_mask(x) != 0).sum(axis=1)


def chunk_atoms(tile_size: int, mean_atoms: float) -> int:
    """Atoms per chunk of a ragged tile: about CHUNKS_PER_SIDE chunks along a side of `tile_size` molecules."""
    return max(1, math.ceil(tile_size * max(float(mean_atoms), 1.0) / CHUNKS_PER_SIDE))


def chunk_window(chunk: int, tile_size: int, fewest_atoms: int) -> int:
    """Most molecules that `chunk` consecutive atoms can touch, at most `tile_size`.

    Two at the ends may be cut; every one between has at least `fewest_atoms` atoms. A
    molecule without atoms takes no room, so then any number can (the whole tile).
    """
    if fewest_atoms < 1:
        return tile_size
    return max(1, min(tile_size, 2 + (chunk - 2) // fewest_atoms))


def atom_pairs(counts, tile_size: int, ragged: bool = True, atoms: int | None = None,
               diagonal: bool = True) -> tuple[int, int]:
    """(computed, real) atom pairs of the train x train tiles (i <= j) of molecules with `counts` atoms.

    Real pairs: Σ n_i n_j over each tile's stored entries (a diagonal tile's whole square).
    Computed pairs: padded (`ragged=False`), every tile is t x t molecules (the last one's
    rows repeated) of `atoms` atoms each (default the largest count), i.e. (t A)²; ragged,
    as `RaggedTiles` evaluates it: c² per chunk pair, k_i k_j pairs of a cross tile and
    k (k + 1) / 2 of a diagonal one (its lower half is the transpose), k = ceil(Σ n / c),
    c = `chunk_atoms(t, mean count)`. `diagonal=False` counts the off-diagonal tiles only.
    """
    counts = np.asarray(counts, dtype=np.int64)
    atoms = int(counts.max()) if atoms is None else atoms
    chunk = chunk_atoms(tile_size, counts.mean())
    sides = [int(counts[s:s + tile_size].sum()) for s in range(0, len(counts), tile_size)]
    computed = real = 0
    for i, p in enumerate(sides):
        for j in range(i if diagonal else i + 1, len(sides)):
            q = sides[j]
            real += p * q
            if not ragged:
                computed += (tile_size * atoms) ** 2
            elif i == j:
                k = -(-p // chunk)
                computed += chunk * chunk * k * (k + 1) // 2
            else:
                computed += chunk * chunk * -(-p // chunk) * -(-q // chunk)
    return computed, real


class FlatMolecules:
    """The real atoms of padded molecules laid end to end, molecule by molecule.

    Attributes:
      atoms: (P, *atom, C) the atoms whose mask is not 0, without the mask channel.
      weights: (P,) their mask values.
      offsets: (N + 1,) molecule m's atoms are atoms[offsets[m]:offsets[m + 1]].
    """

    def __init__(self, x: np.ndarray):
        x = np.asarray(x)
        real = atom_mask(x) != 0
        self.atoms = x[..., :-1][real]
        self.weights = atom_mask(x)[real]
        self.offsets = np.concatenate([[0], np.cumsum(real.sum(axis=1))])

    def side(self, start: int, stop: int, length: int, chunk: int):
        """One tile side, molecules [start, stop): (atoms, segments, weights, chunks).

        atoms (length, *atom, C), weights (length,) and segments (length,) int32 (each
        atom's molecule, counted from `start`), padded to `length` with copies of the last
        real atom of weight 0 (finite wherever the real atoms are), and the number of
        `chunk`-atom chunks that hold real atoms.
        """
        lo, hi = int(self.offsets[start]), int(self.offsets[stop])
        real = hi - lo
        segments = np.repeat(np.arange(stop - start, dtype=np.int32), np.diff(self.offsets[start:stop + 1]))
        atoms, weights = self.atoms[lo:hi], self.weights[lo:hi]
        if real < length:
            fill = length - real
            if real:
                atoms = np.concatenate([atoms, np.repeat(atoms[-1:], fill, axis=0)])
                segments = np.concatenate([segments, np.full(fill, segments[-1], np.int32)])
            else:
                atoms = np.zeros((fill,) + self.atoms.shape[1:], self.atoms.dtype)
                segments = np.zeros(fill, np.int32)
            weights = np.concatenate([weights, np.zeros(fill, self.weights.dtype)])
        return atoms, segments, weights, np.int32(-(-real // chunk))


class RaggedTiles:
    """Gram tiles of padded molecules computed on their real atoms only (see the comment above).

    Every tile side is `FlatMolecules.side` of its molecules, `length` = ceil(t A / chunk)
    chunks long (room for t molecules of A atoms), so `cross` and `square` have one
    shape each whatever the tile's atoms. Chunk pair (a, b) adds Oₐᵀ k(atomsₐ, atoms_b) O_b
    to the tile, Oₐ (chunk, window) the one-hot molecule of each atom times its weight, at
    the rows of the molecules chunk a touches; so the values are those of `AtomSum`'s
    padded sum, summed in another order. A diagonal tile (`square`) computes the pairs
    a <= b only, the per-atom kernel of a = b with x2 = None as the padded kernel does;
    it holds half of each a = b block and returns acc + accᵀ, exactly symmetric.

    Args:
      atom_kernel_fn: the per-atom `kernel_fn(x1, x2, get)` (`atom_kernel`).
      kinds: the kernels to compute, e.g. ("nngp", "ntk").
      tile_size: t, molecules per tile side.
      atoms: A, the padded atom axis of the inputs.
      mean_atoms: mean atoms per molecule (sets the chunk, `chunk_atoms`).
      fewest_atoms: fewest atoms of any molecule a tile may hold (sets the window).
    """

    def __init__(self, atom_kernel_fn, kinds, tile_size: int, atoms: int, mean_atoms: float, fewest_atoms: int):
        self.kernel_fn, self.kinds, self.tile_size = atom_kernel_fn, tuple(kinds), tile_size
        self.chunk = chunk_atoms(tile_size, mean_atoms)
        self.window = chunk_window(self.chunk, tile_size, fewest_atoms)
        self.length = -(-tile_size * atoms // self.chunk) * self.chunk

    def shapes(self, atom_shape, dtype):
        """Argument shapes (`jax.ShapeDtypeStruct`) of one side: atoms, segments, weights, chunks."""
        import jax

        return (jax.ShapeDtypeStruct((self.length,) + tuple(atom_shape), dtype),
                jax.ShapeDtypeStruct((self.length,), np.int32), jax.ShapeDtypeStruct((self.length,), dtype),
                jax.ShapeDtypeStruct((), np.int32))

    def _block(self, acc, k, side_a, side_b, a, b, scale=None):
        """acc with chunk pair (a, b)'s per-atom kernel k (chunk, chunk) summed into its molecules."""
        import jax
        from jax import lax

        c, w = self.chunk, self.window
        (seg_a, w_a), (seg_b, w_b) = ((lax.dynamic_slice_in_dim(s, i * c, c), lax.dynamic_slice_in_dim(v, i * c, c))
                                      for (s, v), i in ((side_a, a), (side_b, b)))
        first_a, first_b = seg_a[0], seg_b[0]
        o_a = jax.nn.one_hot(seg_a - first_a, w, dtype=k.dtype) * w_a[:, None]
        o_b = jax.nn.one_hot(seg_b - first_b, w, dtype=k.dtype) * w_b[:, None]
        highest = lax.Precision.HIGHEST  # no TF32 on GPUs: the sum must keep the kernel's precision
        block = jnp.matmul(o_a.T, jnp.matmul(k, o_b, precision=highest), precision=highest)
        if scale is not None:
            block = block * scale
        where = (first_a, first_b)
        return lax.dynamic_update_slice(acc, lax.dynamic_slice(acc, where, (w, w)) + block, where)

    def _chunk(self, atoms, i):
        from jax import lax

        return lax.dynamic_slice_in_dim(atoms, i * self.chunk, self.chunk)

    def _start(self, dtype):
        room = self.tile_size + self.window  # a window starting at the last molecule stays inside
        return tuple(jnp.zeros((room, room), dtype) for _ in self.kinds)

    def cross(self, atoms1, seg1, w1, n1, atoms2, seg2, w2, n2):
        """The (t, t) tile of each kind between two sides (`FlatMolecules.side`)."""
        from jax import lax

        kinds, t = self.kinds, self.tile_size

        def body(state):
            a, b, acc = state
            k = self.kernel_fn(self._chunk(atoms1, a), self._chunk(atoms2, b), kinds)
            acc = tuple(self._block(s, v, (seg1, w1), (seg2, w2), a, b) for s, v in zip(acc, k))
            wrap = b + 1 >= n2
            return jnp.where(wrap, a + 1, a), jnp.where(wrap, 0, b + 1), acc

        zero = jnp.int32(0)
        _, _, acc = lax.while_loop(lambda s: (s[0] < n1) & (n2 > 0), body, (zero, zero, self._start(atoms1.dtype)))
        return tuple(s[:t, :t] for s in acc)

    def square(self, atoms, seg, w, n):
        """The (t, t) tile of each kind of one side against itself, exactly symmetric."""
        from jax import lax

        kinds, t = self.kinds, self.tile_size

        def body(state):
            a, b, acc = state
            x_a, x_b = self._chunk(atoms, a), self._chunk(atoms, b)
            k = lax.cond(a == b, lambda: tuple(self.kernel_fn(x_a, None, kinds)),
                         lambda: tuple(self.kernel_fn(x_a, x_b, kinds)))
            scale = jnp.where(a == b, 0.5, 1.0).astype(atoms.dtype)
            acc = tuple(self._block(s, v, (seg, w), (seg, w), a, b, scale) for s, v in zip(acc, k))
            wrap = b + 1 >= n
            return jnp.where(wrap, a + 1, a), jnp.where(wrap, a + 1, b + 1), acc

        zero = jnp.int32(0)
        _, _, acc = lax.while_loop(lambda s: s[0] < n, body, (zero, zero, self._start(atoms.dtype)))
        return tuple(s[:t, :t] + s[:t, :t].T for s in acc)
