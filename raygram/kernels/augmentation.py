"""Kernels of networks trained with full data augmentation over a planar group.

Training an infinitely wide network on every input's whole orbit {g·x : g ∈ G} (same
target) gives, at every training time, the mean prediction of the kernel method with
the orbit-averaged kernel (paper, Section 4)

    K̄(x1, x2) = 1/|G| · Σ_g K(x1, g·x2),

provided K is jointly invariant, K(g·x1, g·x2) = K(x1, x2) (true for CNNs with odd
square filters and symmetric padding, MLPs, and the group layers here). For such a
CNN with global average pooling K̄ equals the pooled GCNN kernel of the same filters.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from raygram.config import KINDS
from raygram.errors import ConfigError
from raygram.kernels.groups import PlanarGroup, as_group, orbit


def orbit_mean(kernel_fn, x1, x2, get, group: PlanarGroup):
    """1/|G| Σ_g kernel_fn(x1, g·x2, get), one group element at a time (peak memory of one call).

    x1: (N1, H, W, C); x2: (N2, H, W, C) or None for x1. Returns what `kernel_fn` returns
    for `get`, each entry (N1, N2).
    """
    per_element = jax.lax.map(lambda x2_g: kernel_fn(x1, x2_g, get),
                              orbit(x1 if x2 is None else x2, group))
    return jax.tree_util.tree_map(lambda v: jnp.mean(v, axis=0), per_element)


def augmented_kernel_fn(kernel_fn, group: str | PlanarGroup):
    """Turn a neural-tangents `kernel_fn` into the kernel of full augmentation over `group`.

    The result has the signature `kernel_fn(x1, x2=None, get=..., **kwargs)` with images
    x1 (N1, H, W, C), x2 (N2, H, W, C) and `get` among 'nngp' / 'ntk' (a string or a
    tuple, as in neural-tangents); it returns (N1, N2) arrays at the cost of |G| plain
    kernels.
    """
    group = as_group(group)

    def aug_kernel_fn(x1, x2=None, get=None, **kwargs):
        names = (get,) if isinstance(get, str) else get
        if not names or any(n not in KINDS for n in names):
            raise ConfigError(f"augmented kernels support get='nngp', 'ntk' or both, got {get!r}.")
        shape2 = x1.shape if x2 is None else x2.shape
        if x1.ndim != 4 or len(shape2) != 4:
            raise ConfigError(f"augmentation acts on images (N, H, W, C); got x1 {x1.shape}, "
                              f"x2 {shape2}.")
        return orbit_mean(lambda a, b, g: kernel_fn(a, b, g, **kwargs), x1, x2, get, group)

    return aug_kernel_fn
