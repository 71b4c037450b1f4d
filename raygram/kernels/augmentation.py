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

from .groups import PlanarGroup, get_group, orbit


def orbit_average(values, group_order: int):
    """Average kernel entries (N1, |G|·N2, ...) over the orbit axis -> (N1, N2, ...)."""
    n1, gn2 = values.shape[:2]
    return jnp.mean(values.reshape((n1, group_order, gn2 // group_order) + values.shape[2:]),
                    axis=1)


def augmented_kernel_fn(kernel_fn, group: str | PlanarGroup):
    """Turn a neural-tangents `kernel_fn` into the kernel of full augmentation over `group`.

    The result has the signature `kernel_fn(x1, x2=None, get=..., **kwargs)` with images
    x1 (N1, H, W, C), x2 (N2, H, W, C) and `get` among 'nngp' / 'ntk' (a string or a
    tuple, as in neural-tangents); it returns (N1, N2) arrays. One call of the wrapped
    `kernel_fn` on x1 against the stacked orbit of x2 costs |G| plain kernels.
    """
    group = get_group(group) if isinstance(group, str) else group

    def aug_kernel_fn(x1, x2=None, get=None, **kwargs):
        names = (get,) if isinstance(get, str) else get
        if not names or any(n not in ("nngp", "ntk") for n in names):
            raise ValueError(f"augmented kernels support get='nngp', 'ntk' or both, got {get!r}.")
        x2 = x1 if x2 is None else x2
        if x1.ndim != 4 or x2.ndim != 4:
            raise ValueError(f"augmentation acts on images (N, H, W, C); got x1 {x1.shape}, "
                             f"x2 {x2.shape}.")
        stacked = orbit(x2, group).reshape((-1,) + x2.shape[1:])
        out = kernel_fn(x1, stacked, get, **kwargs)
        return jax.tree_util.tree_map(lambda v: orbit_average(v, group.order), out)

    return aug_kernel_fn
