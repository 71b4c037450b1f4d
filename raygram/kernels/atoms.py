"""One network shared by all atoms of a molecule, summed: f(M) = Σ_i g(a_i).

Energies are extensive and atoms are unordered, so a molecule's output is the sum of a
per-atom network g over its atoms. With g's parameters shared, the NNGP and the NTK of f
are sums of g's kernels over all atom pairs,

    K(M, M') = Σ_i Σ_j k_g(a_i, a'_j),

invariant to permuting the atoms of either molecule (matching atoms by position in a
padded list would not be). Molecules are padded to A atoms: inputs are (N, A, *atom, C + 1)
where the last channel is a mask, 1 on every entry of a real atom and 0 on padding
(`pad_molecules` builds it); g sees the first C channels.
"""
from __future__ import annotations

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

    return mol_init_fn, mol_apply_fn, mol_kernel_fn
