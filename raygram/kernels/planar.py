"""Group-convolutional layers for roto-reflections of the plane, in neural-tangents' stax style.

Feature maps on the group have shape (N, H, W, |G|, C): axis 3 indexes the group
element g (order of `PlanarGroup.matrices`). Each constructor returns
`(init_fn, apply_fn, kernel_fn)` and composes with `neural_tangents.stax`
(`serial`, `parallel`, `Relu`, `Erf`, `Dense`, ...).

Kernel recursions (Misof, Kessel, Gerken 2025, Theorems 1-3), with neural-tangents'
NTK parameterisation. For the lifting layer and the group convolution

    K'(g, p; g', p') = W_std² / |U| · Σ_u K̃(g, p + g·u; g', p' + g'·u) + b_std²,

where K̃ is the input covariance (lifting) or its average over the group
(1/|G|) Σ_s K(g s, ·; g' s, ·) (group convolution), and Θ' = W_std² · [same map on Θ] + K'.

Representation. With i.i.d. weights, K(g, p; g', p') depends on (g, g') only through
r = g g'⁻¹ (at fixed p, p'), and the recursion maps the block of each r to itself:

    D'_r(p, p') = W_std² / |U| · Σ_u D_r(p + r·u, p' + u) + b_std².

So raygram carries |G| blocks D_r instead of |G|²: the group pair of a `Kernel`
has shape (|G|, 1) and holds column g' = e of the full (|G|, |G|) covariance
(`covariance="relative"`, the default). The self-covariances cov1/cov2 keep only
their block r = e (group pair (1, 1)): it is the diagonal of the full matrix, the
only part a nonlinearity reads, and neural-tangents' elementwise rules broadcast it
against the (|G|, 1) pair unchanged (the identity is element 0). `covariance="full"`
propagates the whole (|G|·H·W)² covariance exactly as the theorems are written; it is
the reference the relative form is tested against.

One block at a time. Each D'_r depends only on the D_r before it (and, through a
nonlinearity, on the self-covariances' block e), so `block_kernel_fn(layer)` is a
LiftingConv's or GroupConv's map restricted to one block r (which may be a traced loop
index): `raygram.kernels.serial` runs the layers before a GroupPool that way, holding
one block instead of |G|, with the same values.
"""
from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp
import numpy as np
from jax import lax

from raygram.errors import ConfigError
from raygram.kernels.groups import PlanarGroup, as_group, get_group, pullback
from raygram.kernels.stax_layers import (affine_kernel_fn, check_in_chan, check_out_chan,
                                         check_parameterization, init_params, param_scales,
                                         recorded_call, recorded_layer, requires_full_covariance,
                                         requires_full_covariance_pooled)

_PADDINGS = ("VALID", "SAME", "CIRCULAR")
_COVARIANCES = ("relative", "full")


def _check_layer_args(out_chan, filter_shape, group, padding, parameterization, covariance):
    """Validate constructor arguments; return (PlanarGroup, filter_shape, padding)."""
    group = get_group(group)
    check_out_chan(out_chan)
    filter_shape = tuple(filter_shape)
    if len(filter_shape) != 2 or not all(isinstance(k, (int, np.integer)) and k >= 1
                                         for k in filter_shape):
        raise ConfigError(f"filter_shape must be two positive integers (kh, kw), got {filter_shape!r}.")
    if group.swaps_axes and filter_shape[0] != filter_shape[1]:
        raise ConfigError(
            f"filter_shape {filter_shape} is not square, but group {group.name!r} rotates "
            "filters by 90 degrees: use kh == kw."
        )
    padding = str(padding).upper()
    if padding not in _PADDINGS:
        raise ConfigError(f"padding must be one of {_PADDINGS}, got {padding!r}.")
    if padding in ("SAME", "CIRCULAR") and any(k % 2 == 0 for k in filter_shape):
        raise ConfigError(
            f"filter_shape {filter_shape} has an even size: with padding {padding!r} the padding "
            "is asymmetric and breaks the group action; use odd filter sizes (or padding='VALID')."
        )
    check_parameterization(parameterization)
    if covariance not in _COVARIANCES:
        raise ConfigError(f"covariance must be one of {_COVARIANCES}, got {covariance!r}.")
    return group, filter_shape, padding


def _pad_spatial(x, filter_shape, padding, axes):
    """Pad spatial `axes` (pairs of (h-axes), (w-axes)) for a stride-1 convolution."""
    if padding == "VALID":
        return x
    widths = [(0, 0)] * x.ndim
    for k, dim_axes in zip(filter_shape, axes):
        lo = (k - 1) // 2
        for ax in dim_axes:
            widths[ax] = (lo, k - 1 - lo)
    return jnp.pad(x, widths, mode="wrap" if padding == "CIRCULAR" else "constant")


def _out_size(n, k, padding):
    return n - k + 1 if padding == "VALID" else n


def _cov_conv(cov, offsets1, offsets2, filter_shape, padding, batch_ndim):
    """Σ_j cov[o + offsets1[j], o' + offsets2[j]] / |U| on a (padded) covariance.

    cov: (*batch, H, H', W, W', *rest); offsets: (kh, kw, 2) int filter taps for the
    first (x1) and second (x2) argument, numpy arrays; offsets1 may also be a traced
    array (a relative block chosen inside a loop), whose taps are then dynamic slices.
    Returns (*batch, Ho, Ho', Wo, Wo', *rest).
    """
    b = batch_ndim
    h, w = cov.shape[b], cov.shape[b + 2]
    ho, wo = _out_size(h, filter_shape[0], padding), _out_size(w, filter_shape[1], padding)
    cov = _pad_spatial(cov, filter_shape, padding, ((b, b + 1), (b + 2, b + 3)))
    lead = (slice(None),) * b
    static = isinstance(offsets1, np.ndarray)
    out = 0.
    for a, c in zip(offsets1.reshape(-1, 2), offsets2.reshape(-1, 2)):
        if static:
            tap = cov[lead + (slice(a[0], a[0] + ho), slice(c[0], c[0] + ho),
                              slice(a[1], a[1] + wo), slice(c[1], c[1] + wo))]
        else:
            tap = lax.dynamic_slice_in_dim(lax.dynamic_slice_in_dim(cov, a[0], ho, b),
                                           a[1], wo, b + 2)
            tap = tap[lead + (slice(None), slice(c[0], c[0] + ho),
                              slice(None), slice(c[1], c[1] + wo))]
        out = out + tap
    return out / (filter_shape[0] * filter_shape[1])


def _taps(group, filter_shape, block):
    """Filter taps of group element `block` (an int, or a traced integer): (kh, kw, 2)."""
    if isinstance(block, (int, np.integer)):
        return group.offsets(int(block), filter_shape)
    table = np.stack([group.offsets(g, filter_shape) for g in range(group.order)])
    return jnp.asarray(table)[block]


def _check_group_pair(group: PlanarGroup, cov, batch_ndim):
    """Validate the trailing group pair: (|G|, 1) / (1, 1) relative, (|G|, |G|) full."""
    pair = cov.shape[batch_ndim + 4:]
    if pair not in ((group.order, 1), (1, 1), (group.order, group.order)):
        raise ConfigError(
            f"expected a kernel over group {group.name!r} (group axes of shape ({group.order}, 1) "
            f"or ({group.order}, {group.order})), got trailing axes {pair}: is the input of this "
            "layer the output of a LiftingConv/GroupConv of the same group?")
    return pair


def _lift_cov(cov, group, filter_shape, padding, covariance, batch_ndim, block=None):
    """Lifting recursion without affine scaling: image covariance -> group covariance.

    `block` None gives every relative block D_r (group pair (|G|, 1)), or the full
    covariance; `block` r (an int, or a traced integer) gives D_r alone, group pair
    (1, 1): r = 0 for the self-covariances, whose diagonal block r = e is all the
    nonlinearities read, any r for `block_kernel_fn`.
    """
    offs = [group.offsets(g, filter_shape) for g in range(group.order)]
    if block is not None:
        return _cov_conv(cov, _taps(group, filter_shape, block), offs[0], filter_shape,
                         padding, batch_ndim)[..., None, None]
    if covariance == "relative":
        out = [_cov_conv(cov, offs[r], offs[0], filter_shape, padding, batch_ndim)
               for r in range(group.order)]
        return jnp.stack(out, -1)[..., None]
    rows = [jnp.stack([_cov_conv(cov, offs[g], offs[h], filter_shape, padding, batch_ndim)
                       for h in range(group.order)], -1) for g in range(group.order)]
    return jnp.stack(rows, -2)


def _group_conv_cov(cov, group, filter_shape, padding, batch_ndim, block=None):
    """Group-convolution recursion without affine scaling, in the representation of `cov`.

    `block` r (an int, or a traced integer): `cov` holds the relative block D_r alone
    (group pair (1, 1)) and so does the result. `block` None: a group pair (1, 1) is
    the block r = e of a self-covariance.
    """
    offs = [group.offsets(g, filter_shape) for g in range(group.order)]
    pair = _check_group_pair(group, cov, batch_ndim)
    if block is not None:
        if pair != (1, 1):
            raise ConfigError(f"one relative block has group axes (1, 1), got {pair}.")
        return _cov_conv(cov[..., 0, 0], _taps(group, filter_shape, block), offs[0],
                         filter_shape, padding, batch_ndim)[..., None, None]
    if pair[1] == 1:
        out = [_cov_conv(cov[..., r, 0], offs[r], offs[0], filter_shape, padding, batch_ndim)
               for r in range(pair[0])]
        return jnp.stack(out, -1)[..., None]
    t = group.table
    rows = []
    for g in range(group.order):
        row = []
        for h in range(group.order):
            avg = jnp.mean(cov[..., t[g], t[h]], axis=-1)  # (1/|G|) Σ_s K(gs, ·; hs, ·)
            row.append(_cov_conv(avg, offs[g], offs[h], filter_shape, padding, batch_ndim))
        rows.append(jnp.stack(row, -1))
    return jnp.stack(rows, -2)


def _conv(x, w, padding, filter_shape):
    """Stride-1 NHWC cross-correlation with VALID / SAME / CIRCULAR padding."""
    if padding == "CIRCULAR":
        x = _pad_spatial(x, filter_shape, padding, ((1,), (2,)))
        padding = "VALID"
    return lax.conv_general_dilated(x, w, (1, 1), padding,
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _lifting_fan_in(input_shape, filter_shape):
    """Inputs each LiftingConv output sums over: C·kh·kw."""
    return input_shape[-1] * filter_shape[0] * filter_shape[1]


def _group_conv_fan_in(input_shape, filter_shape, order):
    """Inputs each GroupConv output sums over: |G|·C·kh·kw."""
    return order * input_shape[-1] * filter_shape[0] * filter_shape[1]


def _check_rank(shape, rank, layer, what):
    if len(shape) != rank:
        raise ConfigError(f"{layer} expects {what} of rank {rank}, got input shape {tuple(shape)}.")


def _output_hw(input_shape, filter_shape, padding, layer):
    h, w = input_shape[1], input_shape[2]
    ho, wo = _out_size(h, filter_shape[0], padding), _out_size(w, filter_shape[1], padding)
    if ho < 1 or wo < 1:
        raise ConfigError(f"{layer}: filter_shape {filter_shape} is larger than the input "
                          f"({h}, {w}) with padding 'VALID'.")
    return ho, wo


@recorded_layer
def LiftingConv(out_chan: int,
                filter_shape: Sequence[int],
                group: str = "C4",
                padding: str = "SAME",
                W_std: float = 1.0,
                b_std: float | None = None,
                parameterization: str = "ntk",
                covariance: str = "relative"):
    """Lifting convolution: images (N, H, W, C) -> group feature maps (N, H', W', |G|, out_chan).

    out[n, p, g, c] = Σ_{u, c'} W[g⁻¹·u, c', c] x[n, p + u, c'] · W_std/√(C·|U|) + b_std·b[c]:
    one filter bank, applied rotated/reflected by every g (stride 1). Theorem 2 of the paper.
    """
    group, filter_shape, padding = _check_layer_args(out_chan, filter_shape, group, padding,
                                                     parameterization, covariance)
    name = "LiftingConv"

    def fan_in_of(input_shape):
        return _lifting_fan_in(input_shape, filter_shape)

    def init_fn(rng, input_shape):
        _check_rank(input_shape, 4, name, "images (N, H, W, C)")
        group.check_square(input_shape[1], input_shape[2], f"{name} inputs")
        ho, wo = _output_hw(input_shape, filter_shape, padding, name)
        params = init_params(rng, filter_shape + (input_shape[-1], out_chan), out_chan, b_std,
                             W_std, fan_in_of(input_shape), parameterization)
        return (input_shape[0], ho, wo, group.order, out_chan), params

    def apply_fn(params, inputs, **kwargs):
        W, b = params
        _check_rank(inputs.shape, 4, name, "images (N, H, W, C)")
        check_in_chan(name, inputs.shape[-1], W.shape[2])
        w_scale, b_scale = param_scales(W_std, b_std, fan_in_of(inputs.shape), parameterization)
        bank = jnp.stack([pullback(W, group.matrices[group.inverse[g]], (0, 1))
                          for g in range(group.order)], axis=3)        # (kh, kw, C, G, out)
        bank = bank.reshape(filter_shape + (W.shape[2], group.order * out_chan))
        out = _conv(inputs, bank.astype(inputs.dtype), padding, filter_shape) * w_scale
        out = out.reshape(out.shape[:3] + (group.order, out_chan))
        return out if b is None else out + b_scale * b

    @requires_full_covariance
    def kernel_fn(k, **kwargs):
        return _lifting_kernel(k, group, filter_shape, padding, W_std, b_std, parameterization,
                               covariance)

    return init_fn, apply_fn, kernel_fn


def _lifting_kernel(k, group, filter_shape, padding, W_std, b_std, parameterization, covariance,
                    block=None):
    """LiftingConv's map of the `nt.Kernel` of images `k`; `block` as in `_lift_cov`."""
    name = "LiftingConv"
    if len(k.shape1) != 4:
        raise ConfigError(f"{name} expects images (N, H, W, C) as input, got shape {k.shape1}.")
    group.check_square(k.shape1[1], k.shape1[2], f"{name} inputs")

    def propagate(cov, batch_ndim, is_self_cov):
        if is_self_cov:  # block e (relative form) or everything (full form)
            return _lift_cov(cov, group, filter_shape, padding, covariance, batch_ndim,
                             0 if covariance == "relative" else None)
        return _lift_cov(cov, group, filter_shape, padding, covariance, batch_ndim, block)

    return affine_kernel_fn(k, propagate, W_std, b_std, parameterization,
                            _lifting_fan_in(k.shape1, filter_shape))


@recorded_layer
def GroupConv(out_chan: int,
              filter_shape: Sequence[int],
              group: str = "C4",
              padding: str = "SAME",
              W_std: float = 1.0,
              b_std: float | None = None,
              parameterization: str = "ntk"):
    """Group convolution: (N, H, W, |G|, C) -> (N, H', W', |G|, out_chan). Theorem 1 of the paper.

    out[r, p] = Σ_{s, u} ψ[s, u] f[r s, p + r·u] · W_std/√(|G|·C·|U|) + b_std·b, so that
    transforming the input by h transforms the output by h. The kernel keeps the
    representation (relative or full) of its input.
    """
    group, filter_shape, padding = _check_layer_args(out_chan, filter_shape, group, padding,
                                                     parameterization, "relative")
    name = "GroupConv"
    n = group.order

    def fan_in_of(input_shape):
        return _group_conv_fan_in(input_shape, filter_shape, n)

    def check_input(shape):
        _check_rank(shape, 5, name, f"group feature maps (N, H, W, {n}, C)")
        if shape[3] != n:
            raise ConfigError(f"{name}: group axis of the input has size {shape[3]}, but group "
                              f"{group.name!r} has {n} elements (group mismatch).")
        group.check_square(shape[1], shape[2], f"{name} inputs")

    def init_fn(rng, input_shape):
        check_input(input_shape)
        ho, wo = _output_hw(input_shape, filter_shape, padding, name)
        params = init_params(rng, filter_shape + (n, input_shape[-1], out_chan), out_chan, b_std,
                             W_std, fan_in_of(input_shape), parameterization)
        return (input_shape[0], ho, wo, n, out_chan), params

    def apply_fn(params, inputs, **kwargs):
        psi, b = params
        check_input(inputs.shape)
        check_in_chan(name, inputs.shape[-1], psi.shape[3])
        w_scale, b_scale = param_scales(W_std, b_std, fan_in_of(inputs.shape), parameterization)
        # Filter for output element r: Ψ_r[v, t] = ψ[r⁻¹·v, r⁻¹ t].
        bank = jnp.stack([pullback(psi, group.matrices[group.inverse[r]], (0, 1))
                          [:, :, group.table[group.inverse[r]]] for r in range(n)], axis=4)
        c_in = psi.shape[3]
        bank = bank.reshape(filter_shape + (n * c_in, n * out_chan))
        x = inputs.reshape(inputs.shape[:3] + (n * c_in,))
        out = _conv(x, bank.astype(inputs.dtype), padding, filter_shape) * w_scale
        out = out.reshape(out.shape[:3] + (n, out_chan))
        return out if b is None else out + b_scale * b

    @requires_full_covariance
    def kernel_fn(k, **kwargs):
        return _group_conv_kernel(k, group, filter_shape, padding, W_std, b_std, parameterization)

    return init_fn, apply_fn, kernel_fn


def _group_conv_kernel(k, group, filter_shape, padding, W_std, b_std, parameterization,
                       block=None):
    """GroupConv's map of the `nt.Kernel` of group feature maps `k` (`block`: `_group_conv_cov`)."""
    name, n = "GroupConv", group.order
    if len(k.shape1) != 5 or k.shape1[3] != n:
        raise ConfigError(f"{name} expects group feature maps (N, H, W, {n}, C) of group "
                          f"{group.name!r} as input, got shape {k.shape1}.")

    def propagate(cov, batch_ndim, is_self_cov):
        return _group_conv_cov(cov, group, filter_shape, padding, batch_ndim,
                               None if is_self_cov else block)

    return affine_kernel_fn(k, propagate, W_std, b_std, parameterization,
                            _group_conv_fan_in(k.shape1, filter_shape, n))


def block_kernel_fn(layer):
    """`kernel_fn(k, r)`: a LiftingConv's (relative form) or GroupConv's kernel map on block D_r.

    The recursion maps each relative block to itself, so a stack LiftingConv ->
    (GroupConv | pointwise layer)* can run one block at a time and give the blocks of
    the general recursion, value for value (`raygram.kernels.serial` does, to hold one
    block instead of |G|).

    Args:
      layer: a `LiftingConv` (with covariance="relative") or `GroupConv` triple.

    Returns:
      `kernel_fn(k, r)`. `k`: the `nt.Kernel` that enters the layer, nngp/ntk holding
      the block D_r alone (group axes (1, 1); for a LiftingConv, the kernel of the images)
      and cov1/cov2 their block e, as in the relative form; `r`: the group element's
      index, an int or a traced integer (a loop index). Returns the output `nt.Kernel`
      in the same layout: nngp/ntk the block D'_r, cov1/cov2 their block e.
    """
    name, args = recorded_call(layer)
    if name not in ("LiftingConv", "GroupConv") or args.get("covariance") == "full":
        raise ConfigError(f"block_kernel_fn takes a LiftingConv (covariance='relative') or a "
                          f"GroupConv, got {name or layer[2].__name__}.")
    group, filter_shape, padding = _check_layer_args(
        args["out_chan"], args["filter_shape"], args["group"], args["padding"],
        args["parameterization"], args.get("covariance", "relative"))
    common = (group, filter_shape, padding, args["W_std"], args["b_std"], args["parameterization"])

    def kernel_fn(k, r):
        if name == "LiftingConv":
            out = _lifting_kernel(k, *common, "relative", block=r)
        else:
            out = _group_conv_kernel(k, *common, block=r)
        ho, wo = _output_hw(k.shape1, filter_shape, padding, name)
        return out.replace(shape1=(k.shape1[0], ho, wo, group.order, args["out_chan"]),
                           shape2=(k.shape2[0], ho, wo, group.order, args["out_chan"]))

    return kernel_fn


@recorded_layer
def GroupPool():
    """Invariant pooling: mean over space and group, (N, H, W, |G|, C) -> (N, C). Theorem 3.

    The pooled covariance is the mean of K(g, p; g', p') over all g, g', p, p'; in the
    relative form that is the mean over r of the blocks D_r, so both representations
    reduce by one mean over all spatial and group axes. In the relative form the
    pooled self-variances (cov1/cov2, read only by a nonlinearity *after* pooling) are
    exact when x2 is None and NaN otherwise: `raygram.kernels.serial` fills them in
    exactly, and `covariance="full"` carries them.
    """
    name = "GroupPool"

    def init_fn(rng, input_shape):
        _check_rank(input_shape, 5, name, "group feature maps (N, H, W, |G|, C)")
        return (input_shape[0], input_shape[-1]), ()

    def apply_fn(params, inputs, **kwargs):
        _check_rank(inputs.shape, 5, name, "group feature maps (N, H, W, |G|, C)")
        return jnp.mean(inputs, axis=(1, 2, 3))

    @requires_full_covariance_pooled
    def kernel_fn(k, **kwargs):
        if len(k.shape1) != 5:
            raise ConfigError(f"{name} expects group feature maps (N, H, W, |G|, C) as input, "
                              f"got shape {k.shape1}.")

        def pool(cov, batch_ndim):
            if cov is None or not jnp.ndim(cov):
                return cov
            return jnp.mean(cov, axis=tuple(range(batch_ndim, cov.ndim)))

        cov_ndim = 1 if k.diagonal_batch else 2
        nngp = pool(k.nngp, 2)
        cov1, cov2 = pool(k.cov1, cov_ndim), pool(k.cov2, cov_ndim)
        if k.cov1.shape[cov_ndim + 4:] != k.nngp.shape[6:]:
            # Relative form: the self-covariances hold only their block r = e, so the
            # pooled variances are known only when x2 is None (from the nngp diagonal).
            if k.cov2 is None:
                cov1 = jnp.diagonal(nngp) if k.diagonal_batch else nngp
            else:
                cov1 = jnp.full_like(cov1, jnp.nan)
                cov2 = None if cov2 is None else jnp.full_like(cov2, jnp.nan)
        return k.replace(cov1=cov1, nngp=nngp, cov2=cov2, ntk=pool(k.ntk, 2),
                         is_reversed=False, batch_axis=0, channel_axis=1)

    return init_fn, apply_fn, kernel_fn


def transform_feature_maps(f, group: PlanarGroup | str, h: int):
    """(h·f)(g, p) = f(h⁻¹ g, h⁻¹ p) for group feature maps f of shape (N, H, W, |G|, C)."""
    group = as_group(group)
    hinv = group.inverse[h]
    f = pullback(f, group.matrices[hinv], (1, 2))
    return f[:, :, :, group.table[hinv]]
