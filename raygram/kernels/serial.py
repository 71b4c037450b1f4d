"""`serial`: neural-tangents' `stax.serial` with exact, fast kernels for invariant GCNNs.

For a stack LiftingConv -> (GroupConv | pointwise layer)* -> GroupPool -> head, the
covariance of the pooled features is the orbit average of the kernel of the CNN twin
(same filters and widths: the group layers over the trivial group, which are exactly
`stax.Conv`, and global average pooling):

    K_pool(x1, x2) = 1/|G| · Σ_g K_CNN-GAP(x1, g·x2),

which costs |G| CNN kernels instead of the |G|-block group recursion. The head (any
neural-tangents layers after the pooling) then runs on that Kernel.

Stacks of that form in the relative representation (the default) without a CNN twin (a
group layer with standard parameterisation), and all of them under `general_serial`, run
the group recursion one relative block at a time: the recursion maps each block D_r to itself
(`raygram.kernels.planar`), so the layers before the pooling run on D_e first, with
the self-covariances, then on each other D_r in a loop that reuses those
self-covariances, and the pooling averages the pooled blocks. The values are those of
`stax.serial`'s recursion (same algebra, one block at a time), held in the memory of
one block instead of |G|. Other stacks use `stax.serial`'s recursion. Either way the
pooled self-variances that a nonlinearity in the head needs are computed exactly.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax

from raygram._neural_tangents import stax
from raygram.kernels.augmentation import orbit_mean
from raygram.kernels.groups import PlanarGroup, get_group
from raygram.kernels.planar import GroupConv, LiftingConv, block_kernel_fn
from raygram.kernels.stax_layers import (POINTWISE_LAYERS, pooled_kernel, recorded_call,
                                         serial_with_fast_path)

# Head layers whose output NNGP/NTK do not read the input self-variances.
_LINEAR = frozenset({"Dense", "Identity"})


def _is_pointwise(layer) -> bool:
    """A neural-tangents layer that acts on every site (group element, position) alone."""
    return recorded_call(layer)[0] is None and layer[2].__name__ in POINTWISE_LAYERS


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
    if name == "GroupPool" or _is_pointwise(layer):
        return layer
    return None


def _split(layers):
    """(index of the single GroupPool or None, group name or None, CNN twins or None).

    The group name is set when the layers before the pooling are LiftingConv ->
    (GroupConv | pointwise layer)* of one group; the twins (of the layers up to the
    pooling) when, moreover, each of these layers has one.
    """
    pools = [i for i, l in enumerate(layers) if recorded_call(l)[0] == "GroupPool"]
    if len(pools) != 1:
        return None, None, None
    pool = pools[0]
    names = [recorded_call(l)[0] for l in layers[:pool]]
    if (not names or names[0] != "LiftingConv"
            or any(n != "GroupConv" and not _is_pointwise(l)
                   for n, l in zip(names[1:], layers[1:pool]))):
        return pool, None, None
    groups = {get_group(recorded_call(l)[1]["group"]).name for n, l in zip(names, layers) if n}
    if len(groups) != 1:
        return pool, None, None
    twins = [_twin(l) for l in layers[:pool + 1]]
    return pool, groups.pop(), None if any(t is None for t in twins) else twins


def _input_kernel_fn(kernel_fn):
    """`fn(x1, x2)`: the `nt.Kernel` of the inputs that the stax `kernel_fn` starts from.

    An identity layer with `kernel_fn`'s input requirements (which `stax.requires`
    keeps in the attribute `input_req`), so neural-tangents builds the same Kernel.
    """
    requirements = dict(getattr(kernel_fn, "input_req", {}))

    @stax.layer
    def Inputs():
        def identity(k, **kwargs):
            return k
        return (lambda rng, shape: (shape, ())), (lambda params, x, **kwargs: x), \
            stax.requires(**requirements)(identity)

    inputs_fn = Inputs()[2]
    return lambda x1, x2: inputs_fn(x1, x2, None)


def _blockwise_pooled_fn(pre_layers, group: PlanarGroup, pre_fn):
    """`pooled_fn(x1, x2, get)` of LiftingConv -> (GroupConv | pointwise)* -> GroupPool, by blocks.

    `pre_layers` ends with the GroupPool; `pre_fn` is `stax.serial(*pre_layers)[2]`,
    whose values (nngp and ntk, (N1, N2)) this returns. The layers before the pooling run
    on the block D_e, then on D_r for r = 1 ... |G|-1 in a `lax.fori_loop`, each pooled
    at once, so one block is held at a time. The loop reads the self-covariances that
    enter each layer from the D_e pass (they do not depend on r), so the layers' own
    copies are dead code there.
    """
    steps = [block_kernel_fn(l) if recorded_call(l)[0] else (lambda k, r, f=l[2]: f(k))
             for l in pre_layers[:-1]]
    inputs_fn = _input_kernel_fn(pre_fn)

    def run(k, r, self_covs=None):
        """(block r's kernel before the pooling, the self-covariances that entered each layer)."""
        entering = []
        for step, covs in zip(steps, self_covs or [None] * len(steps)):
            if covs is not None:
                k = k.replace(cov1=covs[0], cov2=covs[1])
            entering.append((k.cov1, k.cov2))
            k = step(k, r)
        return k, entering

    def pooled_fn(x1, x2, get):
        names = (get,) if isinstance(get, str) else tuple(get)
        k = inputs_fn(x1, x2)
        if "ntk" not in names:
            k = k.replace(ntk=None)

        def block_sums(k_r):  # GroupPool's sum over positions of one block
            return tuple(jnp.sum(getattr(k_r, n), axis=tuple(range(2, k_r.nngp.ndim)))
                         for n in names)

        k_e, self_covs = run(k, 0)
        total = lax.fori_loop(
            1, group.order,
            lambda r, acc: tuple(a + s for a, s in zip(acc, block_sums(run(k, r, self_covs)[0]))),
            block_sums(k_e))
        count = group.order * math.prod(k_e.nngp.shape[2:])
        means = tuple(t / count for t in total)
        return means[0] if isinstance(get, str) else means

    return pooled_fn


def serial(*layers):
    """Drop-in for `stax.serial(*layers)` whose `kernel_fn` takes the fast exact path when it can.

    Returns `(init_fn, apply_fn, kernel_fn)`; `init_fn`/`apply_fn` are those of
    `stax.serial`. `kernel_fn(x1, x2=None, get=None, **kwargs)` gives the same values as
    `stax.serial`'s (tested to float64 round-off) and accepts the same arguments.
    """
    return _serial(layers, orbit=True)


def general_serial(*layers):
    """`serial` without the orbit-average path: the group recursion, one relative block at a time.

    For LiftingConv (covariance="relative") -> (GroupConv | pointwise layer)* ->
    GroupPool -> head, `kernel_fn` gives the values of `stax.serial(*layers)`'s group
    recursion (to float64 round-off, any parameterisation) in the memory of one relative
    block instead of |G|, and exact pooled self-variances for the head. Other stacks run
    `stax.serial`'s recursion (with exact pooled self-variances after a single GroupPool).

    Args:
      *layers: stax layers `(init_fn, apply_fn, kernel_fn)`, raygram's and
        neural-tangents', as for `stax.serial`; inputs are images (N, H, W, C).

    Returns:
      `(init_fn, apply_fn, kernel_fn)` as `serial` does; `kernel_fn(x1, x2=None, get=None)`
      gives (N1, N2) kernels (or the head's output shape).
    """
    return _serial(layers, orbit=False)


def _serial(layers, orbit: bool):
    pool, group_name, twins = _split(layers)
    if pool is None:
        return stax.serial(*layers)
    head = layers[pool + 1:]
    head_is_linear = all(l[2].__name__ in _LINEAR and recorded_call(l)[0] is None for l in head)
    pre_init_fn, _, pre_fn = stax.serial(*layers[:pool + 1])
    if group_name is not None and twins is not None and orbit:
        group = get_group(group_name)
        twin_fn = stax.serial(*twins)[2]

        def pooled_fn(x1, x2, get):
            return orbit_mean(twin_fn, x1, x2, get, group)
    elif group_name is not None and recorded_call(layers[0])[1]["covariance"] == "relative":
        pooled_fn = _blockwise_pooled_fn(layers[:pool + 1], get_group(group_name), pre_fn)
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
