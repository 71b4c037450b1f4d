"""`serial`: neural-tangents' `stax.serial` with exact, fast kernels for invariant GCNNs.

For a stack LiftingConv -> (GroupConv | pointwise layer)* -> GroupPool -> head, the
covariance of the pooled features is the orbit average of the kernel of the CNN twin
(same filters and widths: the group layers over the trivial group, which are exactly
`stax.Conv`, and global average pooling):

    K_pool(x1, x2) = 1/|G| · Σ_g K_CNN-GAP(x1, g·x2),

which costs |G| CNN kernels instead of the |G|-block group recursion. The head (any
neural-tangents layers after the pooling) then runs on that Kernel. Stacks that do not
have this form use the group recursion of `stax.serial`. Either way the pooled
self-variances that a nonlinearity in the head needs are computed exactly.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from raygram._neural_tangents import stax
from raygram.kernels.augmentation import orbit_mean
from raygram.kernels.groups import get_group
from raygram.kernels.planar import GroupConv, LiftingConv
from raygram.kernels.stax_layers import (POINTWISE_LAYERS, pooled_kernel, recorded_call,
                                         serial_with_fast_path)

# Head layers whose output NNGP/NTK do not read the input self-variances.
_LINEAR = frozenset({"Dense", "Identity"})


def _twin(layer):
    """The CNN layer that `layer` becomes in the orbit-average path (None: not reducible).

    The twin of a group layer is the same layer over the trivial group: exactly
    `stax.Conv` / `GlobalAvgPool` (tested), with raygram's faster covariance convolution.
    """
    name, args = recorded_call(layer)
    if name in ("LiftingConv", "GroupConv"):
        if args["parameterization"] != "ntk":
            return None  # standard parameterisation's NTK depends on |G| through fan-in
        args = {k: v for k, v in args.items() if k != "covariance"}
        return (LiftingConv if name == "LiftingConv" else GroupConv)(**dict(args, group="trivial"))
    if name == "GroupPool":
        return layer
    if name is None and layer[2].__name__ in POINTWISE_LAYERS:
        return layer
    return None


def _split(layers):
    """(index of the single GroupPool or None, group name or None, CNN twin of the pre-pool part or None)."""
    pools = [i for i, l in enumerate(layers) if recorded_call(l)[0] == "GroupPool"]
    if len(pools) != 1:
        return None, None, None
    pool = pools[0]
    groups = {get_group(a["group"]).name for n, a in map(recorded_call, layers[:pool]) if n}
    first = recorded_call(layers[0])[0]
    twins = [_twin(l) for l in layers[:pool + 1]]
    if first != "LiftingConv" or len(groups) != 1 or any(t is None for t in twins):
        return pool, None, None
    return pool, groups.pop(), twins


def serial(*layers):
    """Drop-in for `stax.serial(*layers)` whose `kernel_fn` takes the fast exact path when it can.

    Returns `(init_fn, apply_fn, kernel_fn)`; `init_fn`/`apply_fn` are those of
    `stax.serial`. `kernel_fn(x1, x2=None, get=None, **kwargs)` gives the same values as
    `stax.serial`'s (tested to float64 round-off) and accepts the same arguments.
    """
    pool, group_name, twins = _split(layers)
    if pool is None:
        return stax.serial(*layers)
    head = layers[pool + 1:]
    head_is_linear = all(l[2].__name__ in _LINEAR and recorded_call(l)[0] is None for l in head)
    pre_init_fn, _, pre_fn = stax.serial(*layers[:pool + 1])
    if group_name is not None:
        group = get_group(group_name)
        twin_fn = stax.serial(*twins)[2]

        def pooled_fn(x1, x2, get):
            return orbit_mean(twin_fn, x1, x2, get, group)
    else:
        pooled_fn = pre_fn

    @functools.cache
    def pooled_channels(input_shape):
        """Channel count after the pooling, from a shape-only trace of `init_fn`."""
        shapes = []
        jax.eval_shape(lambda key: shapes.append(pre_init_fn(key, input_shape)[0]) or 0,
                       jax.random.PRNGKey(0))
        return shapes[0][-1]

    def self_variances(x):
        """Pooled k(x_i, x_i) for every i, each from a one-sample kernel: (N,)."""
        return jax.vmap(lambda xi: pooled_fn(xi[None], None, "nngp")[0, 0])(x)

    def pooled(x1, x2, names):
        """The `nt.Kernel` after the pooling, with the self-variances the head and `names` need."""
        need_cov = names is None or "cov1" in names or "cov2" in names or not head_is_linear
        if names is None or "ntk" in names:
            nngp, ntk = pooled_fn(x1, x2, ("nngp", "ntk"))
        else:
            nngp, ntk = pooled_fn(x1, x2, "nngp"), None
        if x2 is None:
            cov1, cov2 = jnp.diagonal(nngp), None
        elif need_cov:
            cov1, cov2 = self_variances(x1), self_variances(x2)
        else:  # not read by a linear head's NNGP/NTK, and not returned
            cov1 = jnp.full((x1.shape[0],), jnp.nan, nngp.dtype)
            cov2 = jnp.full((x2.shape[0],), jnp.nan, nngp.dtype)
        channels = pooled_channels(tuple(x1.shape))
        return pooled_kernel(nngp, ntk, cov1, cov2, x1, x2, channels)

    return serial_with_fast_path(layers, pool, pooled)

