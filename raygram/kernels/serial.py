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
import numpy as np

from .._neural_tangents import nt, stax
from .augmentation import orbit_mean
from .groups import get_group
from .planar import GroupConv, LiftingConv

# neural-tangents layers that act on every (group element, position) site alone.
_POINTWISE = frozenset({
    "Erf", "Sigmoid_like", "Gabor", "Gelu", "Sin", "Cos", "Rbf", "ABRelu", "Relu", "LeakyRelu",
    "Abs", "Sign", "Exp", "Gaussian", "ExpNormalized", "Hermite", "Monomial",
    "RectifiedMonomial", "Polynomial", "Elementwise", "ElementwiseNumerical", "Identity", "Dense",
})
# Head layers whose output NNGP/NTK do not read the input self-variances.
_LINEAR = frozenset({"Dense", "Identity"})


def _raygram_layer(layer):
    return getattr(layer[2], "raygram_layer", (None, None))


def _twin(layer):
    """The CNN layer that `layer` becomes in the orbit-average path (None: not reducible).

    The twin of a group layer is the same layer over the trivial group: exactly
    `stax.Conv` / `GlobalAvgPool` (tested), with raygram's faster covariance convolution.
    """
    name, args = _raygram_layer(layer)
    if name in ("LiftingConv", "GroupConv"):
        if args["parameterization"] != "ntk":
            return None  # standard parameterisation's NTK depends on |G| through fan-in
        args = {k: v for k, v in args.items() if k != "covariance"}
        return (LiftingConv if name == "LiftingConv" else GroupConv)(**dict(args, group="trivial"))
    if name == "GroupPool":
        return layer
    if name is None and layer[2].__name__ in _POINTWISE:
        return layer
    return None


def _split(layers):
    """(index of the single GroupPool or None, group name or None, CNN twin of the pre-pool part or None)."""
    pools = [i for i, l in enumerate(layers) if _raygram_layer(l)[0] == "GroupPool"]
    if len(pools) != 1:
        return None, None, None
    pool = pools[0]
    groups = {get_group(a["group"]).name for n, a in map(_raygram_layer, layers[:pool]) if n}
    first = _raygram_layer(layers[0])[0]
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
    init_fn, apply_fn, general_kernel_fn = stax.serial(*layers)
    pool, group_name, twins = _split(layers)
    if pool is None:
        return init_fn, apply_fn, general_kernel_fn
    head = layers[pool + 1:]
    head_kernel_fn = stax.serial(*head)[2] if head else stax.Identity()[2]
    head_is_linear = all(l[2].__name__ in _LINEAR and _raygram_layer(l)[0] is None for l in head)
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

    def kernel_fn(x1_or_kernel, x2=None, get=None, **kwargs):
        if kwargs or not isinstance(x1_or_kernel, (jnp.ndarray, np.ndarray)):
            return general_kernel_fn(x1_or_kernel, x2, get, **kwargs)
        x1 = x1_or_kernel
        names = (get,) if isinstance(get, str) else get
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
        return head_kernel_fn(pooled_kernel(nngp, ntk, cov1, cov2, x1, x2, channels), get=get)

    return init_fn, apply_fn, kernel_fn


def pooled_kernel(nngp, ntk, cov1, cov2, x1, x2, channels: int):
    """The `nt.Kernel` of pooled (invariant) features (N, channels) that a fast path hands to
    the layers after the pool: nngp/ntk (N1, N2), per-input variances cov1 (N1,), cov2 (N2,)."""
    return nt.Kernel(nngp=nngp, ntk=ntk, cov1=cov1, cov2=cov2, x1_is_x2=x2 is None,
                     is_gaussian=True, is_reversed=False, is_input=False, diagonal_batch=True,
                     diagonal_spatial=False, shape1=(x1.shape[0], channels),
                     shape2=((x1 if x2 is None else x2).shape[0], channels),
                     batch_axis=0, channel_axis=1, mask1=None, mask2=None)
