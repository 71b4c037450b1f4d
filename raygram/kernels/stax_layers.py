"""The neural-tangents (stax) plumbing that every raygram layer and fast `serial` shares.

What. The pieces that the planar layers (`raygram.kernels.planar`: LiftingConv,
GroupConv, GroupPool), the SO(3) layers (`raygram.kernels.so3`: S2Lifting, SO3Conv,
SO3Pool) and the two fast serials (`raygram.kernels.serial.serial`,
`raygram.kernels.so3_relative.so3_serial`) all use:

- argument checks: `check_out_chan`, `check_parameterization`, `check_in_chan`,
  with `PARAMETERIZATIONS`;
- parameters: `init_params` draws a filter bank and bias, `param_scales` gives the
  factors `apply_fn` multiplies them by (neural-tangents' "ntk" / "standard" rules);
- kernels: `affine_kernel_fn` applies a layer's linear covariance map to every field of
  an `nt.Kernel` (nngp, ntk, cov1, cov2) as `stax.Conv` does, and the two
  `stax.requires` decorators the layers' `kernel_fn`s carry;
- layer records: `recorded_layer` (a `stax.layer` that remembers its constructor call)
  and `recorded_call`, which the fast serials read to recognise raygram layers;
- fast serials: `POINTWISE_LAYERS` (the neural-tangents layers a fast path may pass
  through), `pooled_kernel` (the `nt.Kernel` a fast path hands to the head) and
  `serial_with_fast_path` (the `stax.serial` drop-in that dispatches to it).

Why a module of its own. None of this is specific to a group: it used to live in the
C4/D4 file `planar.py`, so the SO(3) layers imported private names from the planar
layers, and `so3_relative.py` imported privates of the planar fast path. Here it has one
definition with a public, documented interface, and the group files depend on it
rather than on each other.
"""
from __future__ import annotations

import functools
import inspect
from typing import Any, Callable

import jax.numpy as jnp
import numpy as np
from jax import random

from raygram._neural_tangents import nt, stax
from raygram.errors import ConfigError

__all__ = [
    "PARAMETERIZATIONS", "POINTWISE_LAYERS",
    "check_out_chan", "check_parameterization", "check_in_chan",
    "init_params", "param_scales", "affine_kernel_fn",
    "requires_full_covariance", "requires_full_covariance_pooled",
    "recorded_layer", "recorded_call",
    "pooled_kernel", "serial_with_fast_path",
]

PARAMETERIZATIONS = ("ntk", "standard")
"""neural-tangents' parameterisations: "ntk" scales in `apply_fn`, "standard" at init."""

POINTWISE_LAYERS = frozenset({
    "Erf", "Sigmoid_like", "Gabor", "Gelu", "Sin", "Cos", "Rbf", "ABRelu", "Relu", "LeakyRelu",
    "Abs", "Sign", "Exp", "Gaussian", "ExpNormalized", "Hermite", "Monomial",
    "RectifiedMonomial", "Polynomial", "Elementwise", "ElementwiseNumerical", "Identity", "Dense",
})
"""`kernel_fn.__name__` of the neural-tangents layers that act on every site (group
element, position) alone, so a fast path may carry them between group layers."""

requires_full_covariance = stax.requires(
    batch_axis=0, channel_axis=-1,
    diagonal_spatial=stax.Diagonal(input=stax.Bool.NO, output=stax.Bool.NO))
"""`stax.requires` of a group layer's `kernel_fn`: batch first, channels last, and the
covariance over all pairs of positions in and out (a group layer mixes positions)."""

requires_full_covariance_pooled = stax.requires(
    batch_axis=0, channel_axis=-1,
    diagonal_spatial=stax.Diagonal(input=stax.Bool.NO, output=stax.Bool.YES))
"""`stax.requires` of an invariant pooling's `kernel_fn`: all pairs of positions in,
none out (the pooled features have no spatial axes)."""


def check_out_chan(out_chan) -> None:
    """Raise ConfigError unless `out_chan` (a layer's output channel count) is an int >= 1."""
    if not isinstance(out_chan, (int, np.integer)) or out_chan < 1:
        raise ConfigError(f"out_chan must be a positive integer, got {out_chan!r}.")


def check_parameterization(parameterization) -> None:
    """Raise ConfigError unless `parameterization` is one of `PARAMETERIZATIONS`."""
    if parameterization not in PARAMETERIZATIONS:
        raise ConfigError(f"parameterization must be one of {PARAMETERIZATIONS}, "
                          f"got {parameterization!r}.")


def check_in_chan(layer: str, input_channels: int, param_channels: int) -> None:
    """Raise ConfigError unless the inputs have the channel count the parameters were made for.

    Args:
      layer: the layer's name, for the message.
      input_channels: size of the inputs' channel axis (last axis).
      param_channels: size of the input-channel axis of the layer's weights.
    """
    if input_channels != param_channels:
        raise ConfigError(f"{layer}: inputs have {input_channels} channels but the parameters "
                          f"were initialised for {param_channels} (in_chan mismatch).")


def init_params(rng, w_shape: tuple[int, ...], out_chan: int, b_std: float | None, W_std: float,
                fan_in: int, parameterization: str):
    """Draw a layer's parameters `(W, b)` with neural-tangents' conventions.

    Args:
      rng: a JAX PRNG key; split in two, for W and for b.
      w_shape: shape of the weights W, e.g. (kh, kw, C, out_chan) for LiftingConv or
        (coefficients, C, out_chan) for the SO(3) layers.
      out_chan: output channels: the bias has shape (out_chan,).
      b_std: bias standard deviation; None for no bias (b is then None).
      W_std: weight standard deviation.
      fan_in: the number of inputs each output sums over (e.g. C·kh·kw).
      parameterization: "ntk" draws N(0, 1) entries (scaled in `apply_fn` by
        `param_scales`); "standard" draws W with std W_std/√fan_in and b with std b_std.

    Returns:
      (W of shape `w_shape`, b of shape (out_chan,) or None).
    """
    k1, k2 = random.split(rng)
    W = random.normal(k1, w_shape)
    b = None if b_std is None else random.normal(k2, (out_chan,))
    if parameterization == "standard":
        W = W * W_std / np.sqrt(fan_in)
        b = None if b is None else b * b_std
    return W, b


def param_scales(W_std: float, b_std: float | None, fan_in: int, parameterization: str):
    """The factors `(w_scale, b_scale)` that `apply_fn` multiplies W's output and b by.

    Args:
      W_std, b_std: weight and bias standard deviations (b_std None: no bias).
      fan_in: the number of inputs each output sums over.
      parameterization: "ntk" gives (W_std/√fan_in, b_std); "standard" gives (1, 1),
        the scales being in the parameters (`init_params`).
    """
    if parameterization == "ntk":
        return W_std / np.sqrt(fan_in), b_std
    return 1., 1.


def affine_kernel_fn(k, propagate: Callable, W_std: float, b_std: float | None,
                     parameterization: str, fan_in: int):
    """Apply a layer's linear covariance map to every field of the `nt.Kernel` `k`.

    Follows neural-tangents' Conv: NNGP W_std²·P(K) + b_std², NTK W_std²·P(Θ) + NNGP
    (parameterization "ntk"; "standard" adds fan_in·P(K) and 1 for the bias instead).

    Args:
      k: the input `nt.Kernel`: nngp and ntk (N1, N2, *pairs), cov1 (N1, *pairs) with
        `diagonal_batch` or (N1, N1, *pairs) without, cov2 likewise or None; `*pairs` the
        layer's covariance axes (e.g. (H, H', W, W') for images, plus a group pair).
        The ntk may be a scalar 0 (no trainable layer before).
      propagate: `propagate(cov, batch_ndim, is_self_cov)`, the map P without affine
        scaling: cov is (*batch, *pairs) with `batch_ndim` leading batch axes (1 or 2);
        `is_self_cov` is True for cov1/cov2 (which may keep fewer group blocks).
        Returns (*batch, *pairs_out).
      W_std, b_std: weight and bias standard deviations (b_std None: no bias).
      parameterization: "ntk" or "standard".
      fan_in: the number of inputs each output sums over (used by "standard").

    Returns:
      The output `nt.Kernel`, Gaussian, batch axis 0 and channel axis 4.
    """
    if k.is_reversed:
        k = k.reverse()
    b_sq = 0. if b_std is None else b_std ** 2

    def self_cov(cov, batch_ndim):
        return None if cov is None else W_std ** 2 * propagate(cov, batch_ndim, True) + b_sq

    cov_ndim = 1 if k.diagonal_batch else 2
    cov1, cov2 = self_cov(k.cov1, cov_ndim), self_cov(k.cov2, cov_ndim)
    nngp_unscaled = propagate(k.nngp, 2, False)
    nngp = W_std ** 2 * nngp_unscaled + b_sq
    ntk = k.ntk
    if ntk is not None:
        ntk_in = propagate(ntk, 2, False) if jnp.ndim(ntk) else ntk
        if parameterization == "ntk":
            ntk = W_std ** 2 * ntk_in + nngp
        else:
            ntk = fan_in * nngp_unscaled + W_std ** 2 * ntk_in + (0. if b_std is None else 1.)
    return k.replace(cov1=cov1, nngp=nngp, cov2=cov2, ntk=ntk, is_gaussian=True,
                     is_reversed=False, is_input=False, batch_axis=0, channel_axis=4)


def recorded_layer(layer_fn: Callable):
    """`stax.layer`, plus `kernel_fn.raygram_layer = (name, bound arguments)`.

    Args:
      layer_fn: a layer constructor returning `(init_fn, apply_fn, kernel_fn)`.

    Returns:
      The constructor as `stax.layer` makes it, whose `kernel_fn` also records the
      constructor's name and its arguments with defaults applied ({name: value}), so that
      the fast serials can recognise raygram layers (`recorded_call`) and rebuild them.
    """
    nt_layer = stax.layer(layer_fn)
    signature = inspect.signature(layer_fn)

    @functools.wraps(layer_fn)
    def public(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        init_fn, apply_fn, kernel_fn = nt_layer(*args, **kwargs)
        kernel_fn.raygram_layer = (layer_fn.__name__, dict(bound.arguments))
        return init_fn, apply_fn, kernel_fn

    return public


def recorded_call(layer) -> tuple[str | None, dict[str, Any] | None]:
    """(constructor name, arguments) of a `recorded_layer` triple; (None, None) for any other layer.

    Args:
      layer: a stax triple `(init_fn, apply_fn, kernel_fn)`.
    """
    return getattr(layer[2], "raygram_layer", (None, None))


def pooled_kernel(nngp, ntk, cov1, cov2, x1, x2, channels: int):
    """The `nt.Kernel` of pooled (invariant) features (N, channels) that a fast path hands to
    the layers after the pool.

    Args:
      nngp, ntk: (N1, N2) kernels of the pooled features (ntk may be None).
      cov1: (N1,) per-input variances of x1; cov2: (N2,) of x2, or None when x2 is None.
      x1: the inputs (N1, ...); x2: (N2, ...) or None for x1 (only their lengths are read).
      channels: the pooled features' channel count.
    """
    return nt.Kernel(nngp=nngp, ntk=ntk, cov1=cov1, cov2=cov2, x1_is_x2=x2 is None,
                     is_gaussian=True, is_reversed=False, is_input=False, diagonal_batch=True,
                     diagonal_spatial=False, shape1=(x1.shape[0], channels),
                     shape2=((x1 if x2 is None else x2).shape[0], channels),
                     batch_axis=0, channel_axis=1, mask1=None, mask2=None)


def serial_with_fast_path(layers, pool: int, pooled_fn: Callable):
    """`stax.serial(*layers)` whose `kernel_fn` computes the kernel up to the pooling by `pooled_fn`.

    Args:
      layers: stax triples; `layers[pool]` is the invariant pooling and the ones after
        it (the head, possibly none) run on the pooled `nt.Kernel` with neural-tangents.
      pool: index of the pooling layer in `layers`.
      pooled_fn: `pooled_fn(x1, x2, names)` -> the `nt.Kernel` (see `pooled_kernel`) of
        the features after `layers[pool]`, for arrays x1 (N1, ...) and x2 (N2, ...) or
        None; `names` is the tuple of requested kernels ("nngp", "ntk", ...) or None for all.

    Returns:
      `(init_fn, apply_fn, kernel_fn)`: `init_fn`/`apply_fn` are `stax.serial`'s;
      `kernel_fn(x1, x2=None, get=None, **kwargs)` takes the fast path for arrays without
      extra keyword arguments and `stax.serial`'s recursion otherwise (e.g. for a Kernel).
    """
    init_fn, apply_fn, general_kernel_fn = stax.serial(*layers)
    head = layers[pool + 1:]
    head_kernel_fn = stax.serial(*head)[2] if head else stax.Identity()[2]

    def kernel_fn(x1_or_kernel, x2=None, get=None, **kwargs):
        if kwargs or not isinstance(x1_or_kernel, (jnp.ndarray, np.ndarray)):
            return general_kernel_fn(x1_or_kernel, x2, get, **kwargs)
        names = (get,) if isinstance(get, str) else get
        return head_kernel_fn(pooled_fn(x1_or_kernel, x2, names), get=get)

    return init_fn, apply_fn, kernel_fn
