"""SO(3) group-convolutional layers (spherical CNNs) with analytic NNGP/NTK, in stax style.

Layouts (grids in `raygram.kernels.so3_grid`, bandwidth L):
- S² signals: (N, 2L, 2L, C), axes (θ, φ) of the Driscoll-Healy grid.
- SO(3) feature maps: (N, 2L, 2L, 2L, C), axes (α, β, γ) of R = Rz(α) Ry(β) Rz(γ).

Layers (each `(init_fn, apply_fn, kernel_fn)`, composable with `stax.serial`, `stax.Erf`,
`stax.Relu`, `stax.Dense`, ...), all integrals normalised (means, by grid quadrature):

    S2Lifting  out(R) = ⟨ψ(R⁻¹ ·), f⟩_S²  = Σ_{l<B} W_l · D_l(R)ᵀ f̂_l,
               f̂_l = mean_x y_l(x) f(x)
    SO3Conv    out(R) = ⟨ψ(R⁻¹ ·), f⟩_SO3 = Σ_{l<B} √(2l+1) ⟨W_l, D_l(R)ᵀ f̂_l⟩,
               f̂_l = mean_Q D_l(Q) f(Q)
    SO3Pool    out = mean_R f(R)

Filter convention: global filters band-limited to degree < B (`filter_bandwidth`), with
i.i.d. N(0, 1) coefficients W in an orthonormal basis (y_lm on S², √(2l+1) D_l,ab on
SO(3)), times W_std/√C_in (parameterization "ntk"; "standard" draws them with that std).
The output variance is then W_std² × the mean power of the degree-< B part of the input,
as for `stax.Dense`. B ≤ input and output bandwidths is required (a grid of bandwidth L
resolves degrees < L).

Kernels, K(R, R') = Cov(out_x1(R), out_x2(R')). Each layer's `kernel_fn` is the direct
recursion on the covariance over all pairs of grid points, nngp of shape
(N1, N2, A, A', B, B', Γ, Γ') (pairs interleaved as neural-tangents' nonlinearities
expect), O(L⁶) per pair of inputs:

    lifting  C_l = Σ_xy w_x w_y y_l(x) K(x, y) y_l(y)ᵀ,
             K'(R, R') = Σ_l ⟨C_l, D_l(R) D_l(R')ᵀ⟩
    conv     A_l = Σ_QQ' w_Q w_Q' D_l(Q) K(Q, Q') D_l(Q')ᵀ,
             K'(R, R') = Σ_l (2l+1) ⟨A_l, D_l(R) D_l(R')ᵀ⟩
    pool     K' = Σ_RR' w_R w_R' K(R, R')

then W_std² · (·) + b_std² and Θ' = W_std² · (same map on Θ) + K' (neural-tangents' rules).

Fast path: `raygram.kernels.so3_relative.so3_serial` carries the same kernels as one
function of the relative rotation per pair of inputs (O(L³) memory) with these very
quadratures, so its values equal this direct recursion's.
"""
from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np

from raygram.errors import ConfigError
from raygram.kernels.so3_grid import (check_bandwidth, degree_slice, s2_grid_harmonics, s2_weights,
                                      so3_grid_wigner, so3_weights)
from raygram.kernels.stax_layers import (affine_kernel_fn, check_in_chan, check_out_chan,
                                         check_parameterization, init_params, param_scales,
                                         recorded_layer, requires_full_covariance,
                                         requires_full_covariance_pooled)


def _check_common(out_chan, bandwidth, filter_bandwidth, parameterization):
    check_out_chan(out_chan)
    check_bandwidth(bandwidth, "bandwidth", optional=True)
    check_bandwidth(filter_bandwidth, "filter_bandwidth", optional=True)
    check_parameterization(parameterization)


def resolve_bands(layer: str, l_in: int, bandwidth: int | None, filter_bandwidth: int | None):
    """(output bandwidth, filter bandwidth) of an SO(3) layer, after checking that both grids
    resolve the filter.

    Args:
      layer: the layer's name, for the message.
      l_in: bandwidth of the input grid.
      bandwidth: the layer's `bandwidth` argument (output grid; None: `l_in`).
      filter_bandwidth: the layer's `filter_bandwidth` (degrees < B; None: the smaller
        of the input and output bandwidths).

    Raises:
      ConfigError: the filter bandwidth exceeds the input or the output bandwidth.
    """
    l_out = l_in if bandwidth is None else bandwidth
    band = min(l_in, l_out) if filter_bandwidth is None else filter_bandwidth
    if band > l_in or band > l_out:
        raise ConfigError(
            f"{layer}: filter_bandwidth {band} exceeds the input bandwidth {l_in} or the output "
            f"bandwidth {l_out}: a grid of bandwidth L resolves only degrees < L. Use "
            f"filter_bandwidth <= {min(l_in, l_out)} or larger bandwidths.")
    return l_out, band


def s2_bandwidth(shape, layer: str) -> int:
    """Bandwidth L of S² signals of shape (N, 2L, 2L, C); ConfigError (naming `layer`) otherwise."""
    if len(shape) != 4 or shape[1] != shape[2] or shape[1] % 2:
        raise ConfigError(f"{layer} expects S² signals (N, 2L, 2L, C) on a Driscoll-Healy grid, "
                          f"got shape {tuple(shape)}.")
    return shape[1] // 2


def so3_bandwidth(shape, layer: str) -> int:
    """Bandwidth L of SO(3) feature maps (N, 2L, 2L, 2L, C); ConfigError (naming `layer`) otherwise."""
    if len(shape) != 5 or not shape[1] == shape[2] == shape[3] or shape[1] % 2:
        raise ConfigError(f"{layer} expects SO(3) feature maps (N, 2L, 2L, 2L, C) on the "
                          f"equiangular grid, got shape {tuple(shape)}.")
    return shape[1] // 2


def _conv_slices(band):
    """Degree-l blocks of SO3Conv's flat coefficient axis ((2l+1)² each)."""
    starts = np.cumsum([0] + [(2 * l + 1) ** 2 for l in range(band)])
    return [slice(int(starts[l]), int(starts[l + 1])) for l in range(band)]


@functools.lru_cache(maxsize=None)
def _grid_wigner(L, band):
    """([D_l on the SO(3) grid, (G, 2l+1, 2l+1)] for l < band, weights (G,)), G = (2L)³."""
    d = [x.reshape((-1,) + x.shape[-2:]) for x in so3_grid_wigner(L, band)]
    return d, so3_weights(L).reshape(-1)


@functools.lru_cache(maxsize=None)
def _s2_analysis(L, band):
    """Weighted harmonics w_x y_lm(x) on the S² grid, (4L², band²)."""
    return (s2_grid_harmonics(L, band) * s2_weights(L)[..., None]).reshape(-1, band * band)


def _to_matrix(cov, batch_ndim):
    """(*b, A, A', B, B', Γ, Γ') -> (*b, G, G)."""
    b, n = cov.shape[:batch_ndim], cov.shape[batch_ndim]
    axes = tuple(range(batch_ndim)) + tuple(batch_ndim + i for i in (0, 2, 4, 1, 3, 5))
    return cov.transpose(axes).reshape(b + (n ** 3, n ** 3))


def _from_matrix(k, L):
    """(*b, G, G) -> (*b, A, A', B, B', Γ, Γ')."""
    b = k.shape[:-2]
    k = k.reshape(b + (2 * L,) * 6)
    nb = len(b)
    return k.transpose(tuple(range(nb)) + tuple(nb + i for i in (0, 3, 1, 4, 2, 5)))


def _so3_cov_bandwidth(cov, batch_ndim, layer):
    """Bandwidth of a direct SO(3) covariance (*b, 2L, 2L, 2L, 2L, 2L, 2L)."""
    pairs = cov.shape[batch_ndim:]
    if len(pairs) != 6 or len(set(pairs)) != 1 or pairs[0] % 2:
        raise ConfigError(f"{layer} expects the kernel of SO(3) feature maps (output of S2Lifting "
                          f"or SO3Conv), got covariance axes {pairs}.")
    return pairs[0] // 2


@functools.lru_cache(maxsize=None)
def _grid_wigner_flat(L, band):
    """All D_l on the SO(3) grid side by side, (G, Σ_l (2l+1)²): one matrix product for all l."""
    d, _ = _grid_wigner(L, band)
    return np.concatenate([x.reshape(x.shape[0], -1) for x in d], axis=1)


def _synth_pairs(coefs, L_out, scale_of_l):
    """Σ_l scale(l) ⟨coef_l, D_l(R_i) D_l(R_j)ᵀ⟩ on grid pairs: coef_l (*b, n, n) -> direct layout."""
    d, _ = _grid_wigner(L_out, len(coefs))
    y = [scale_of_l(l) * jnp.einsum("ice,...cd->...ide", d[l], c) for l, c in enumerate(coefs)]
    y = jnp.concatenate([x.reshape(x.shape[:-2] + (-1,)) for x in y], axis=-1)
    k = jnp.einsum("...iq,jq->...ij", y, _grid_wigner_flat(L_out, len(coefs)))
    return _from_matrix(k, L_out)


def _s2_coefs(cov, batch_ndim, L_in, band):
    """C_l = Σ_xy w_x w_y y_l(x) K(x, y) y_l(y)ᵀ from an S² covariance (*b, T, T', Φ, Φ')."""
    b, s = cov.shape[:batch_ndim], (2 * L_in) ** 2
    axes = tuple(range(batch_ndim)) + tuple(batch_ndim + i for i in (0, 2, 1, 3))
    cov = cov.transpose(axes).reshape(b + (s, s))
    y = jnp.asarray(_s2_analysis(L_in, band), cov.dtype)
    x = jnp.einsum("...st,td->...sd", cov, y)
    return [jnp.einsum("sc,...sd->...cd", y[:, degree_slice(l)], x[..., degree_slice(l)])
            for l in range(band)]


def _lift_cov(cov, batch_ndim, L_in, L_out, band):
    """Direct lifting recursion without affine scaling: S² covariance -> SO(3) covariance."""
    return _synth_pairs(_s2_coefs(cov, batch_ndim, L_in, band), L_out, lambda l: 1.)


def _conv_cov(cov, batch_ndim, L_out, band, layer):
    """Direct group-convolution recursion without affine scaling."""
    L_in = _so3_cov_bandwidth(cov, batch_ndim, layer)
    d, w = _grid_wigner(L_in, band)
    wd = [x * w[:, None, None] for x in d]
    x = jnp.einsum("...ij,jq->...iq", _to_matrix(cov, batch_ndim),
                   _grid_wigner_flat(L_in, band) * w[:, None])
    coefs, start = [], 0
    for l in range(band):
        n = 2 * l + 1
        x_l = x[..., start:start + n * n].reshape(x.shape[:-1] + (n, n))
        coefs.append(jnp.einsum("iab,...icb->...ac", wd[l], x_l))
        start += n * n
    return _synth_pairs(coefs, L_out, lambda l: 2 * l + 1.)


def _pool_cov(cov, batch_ndim, layer):
    """Direct pooling: Σ_RR' w_R w_R' K(R, R'), (*b,)."""
    w = so3_weights(_so3_cov_bandwidth(cov, batch_ndim, layer)).reshape(-1)
    return jnp.einsum("i,...ij,j->...", w, _to_matrix(cov, batch_ndim), w)


def s2_features(inputs, band: int):
    """Harmonic coefficients f̂_l,c = mean_x y_l(x) f_c(x) of S² signals, degrees l < band.

    Args:
      inputs: S² signals (N, 2L, 2L, C) on the Driscoll-Healy grid.
      band: number of degrees; at most L.

    Returns:
      (N, C, band²), the last axis indexed l² + l + m (`so3_grid.degree_slice`).
    """
    y = jnp.asarray(_s2_analysis(inputs.shape[1] // 2, band), inputs.dtype)
    return jnp.einsum("nsc,sa->nca", inputs.reshape((inputs.shape[0], -1, inputs.shape[-1])), y)


@recorded_layer
def S2Lifting(out_chan: int,
              bandwidth: int | None = None,
              filter_bandwidth: int | None = None,
              W_std: float = 1.0,
              b_std: float | None = None,
              parameterization: str = "ntk"):
    """Lifting S² -> SO(3): signals (N, 2L_in, 2L_in, C) -> feature maps (N, 2L, 2L, 2L, out_chan).

    out(R, o) = W_std/√C · Σ_{c, l<B} W[l, :, c, o] · D_l(R)ᵀ f̂_{l,c} + b_std·b[o]: the
    correlation of f with the filter ψ_co = Σ_lm W[lm, c, o] y_lm rotated by R. Parameters
    W (B², C, out_chan), b (out_chan,). `bandwidth` L of the output grid defaults to L_in;
    `filter_bandwidth` B (degrees < B) to min(L_in, L).
    """
    _check_common(out_chan, bandwidth, filter_bandwidth, parameterization)
    name = "S2Lifting"

    def bands(shape):
        return resolve_bands(name, s2_bandwidth(shape, name), bandwidth, filter_bandwidth)

    def init_fn(rng, input_shape):
        l_out, band = bands(input_shape)
        params = init_params(rng, (band * band, input_shape[-1], out_chan), out_chan, b_std,
                             W_std, input_shape[-1], parameterization)
        return (input_shape[0],) + (2 * l_out,) * 3 + (out_chan,), params

    def apply_fn(params, inputs, **kwargs):
        W, b = params
        l_out, band = bands(inputs.shape)
        check_in_chan(name, inputs.shape[-1], W.shape[1])
        w_scale, b_scale = param_scales(W_std, b_std, inputs.shape[-1], parameterization)
        f_hat = s2_features(inputs, band)
        d, _ = _grid_wigner(l_out, band)
        out = sum(jnp.einsum("rea,nce,aco->nro", jnp.asarray(d[l], inputs.dtype),
                             f_hat[..., degree_slice(l)], W[degree_slice(l)]) for l in range(band))
        out = out.reshape((inputs.shape[0],) + (2 * l_out,) * 3 + (W.shape[-1],)) * w_scale
        return out if b is None else out + b_scale * b

    @requires_full_covariance
    def kernel_fn(k, **kwargs):
        l_in = s2_bandwidth(k.shape1, name)
        l_out, band = bands(k.shape1)

        def propagate(cov, batch_ndim, is_self_cov):
            return _lift_cov(cov, batch_ndim, l_in, l_out, band)

        return affine_kernel_fn(k, propagate, W_std, b_std, parameterization, k.shape1[-1])

    return init_fn, apply_fn, kernel_fn


@recorded_layer
def SO3Conv(out_chan: int,
            bandwidth: int | None = None,
            filter_bandwidth: int | None = None,
            W_std: float = 1.0,
            b_std: float | None = None,
            parameterization: str = "ntk"):
    """SO(3) group convolution: (N, 2L_in, 2L_in, 2L_in, C) -> (N, 2L, 2L, 2L, out_chan).

    out(R, o) = W_std/√C · Σ_{c, l<B} √(2l+1) ⟨W_l[:, :, c, o], D_l(R)ᵀ f̂_{l,c}⟩ + b_std·b[o]
    with f̂_l = mean_Q D_l(Q) f(Q) (grid quadrature): the correlation with the filter
    ψ = Σ √(2l+1) W_l,ab D_l,ab rotated by R. Parameters W (Σ_l (2l+1)², C, out_chan),
    b (out_chan,). `bandwidth` defaults to L_in, `filter_bandwidth` to min(L_in, L).
    """
    _check_common(out_chan, bandwidth, filter_bandwidth, parameterization)
    name = "SO3Conv"

    def bands(shape):
        return resolve_bands(name, so3_bandwidth(shape, name), bandwidth, filter_bandwidth)

    def init_fn(rng, input_shape):
        l_out, band = bands(input_shape)
        n_coef = sum((2 * l + 1) ** 2 for l in range(band))
        params = init_params(rng, (n_coef, input_shape[-1], out_chan), out_chan, b_std, W_std,
                             input_shape[-1], parameterization)
        return (input_shape[0],) + (2 * l_out,) * 3 + (out_chan,), params

    def apply_fn(params, inputs, **kwargs):
        W, b = params
        l_in = so3_bandwidth(inputs.shape, name)
        l_out, band = bands(inputs.shape)
        check_in_chan(name, inputs.shape[-1], W.shape[1])
        w_scale, b_scale = param_scales(W_std, b_std, inputs.shape[-1], parameterization)
        d_in, w = _grid_wigner(l_in, band)
        d_out, _ = _grid_wigner(l_out, band)
        x = inputs.reshape((inputs.shape[0], -1, inputs.shape[-1]))
        x = x * jnp.asarray(w, inputs.dtype)[:, None]
        out = 0.
        for l, s in enumerate(_conv_slices(band)):
            n = 2 * l + 1
            f_hat = jnp.einsum("rab,nrc->ncab", jnp.asarray(d_in[l], inputs.dtype), x)
            w_l = W[s].reshape((n, n) + W.shape[1:])
            out = out + np.sqrt(n) * jnp.einsum("rea,nceb,abco->nro",
                                                jnp.asarray(d_out[l], inputs.dtype), f_hat, w_l)
        out = out.reshape((inputs.shape[0],) + (2 * l_out,) * 3 + (W.shape[-1],)) * w_scale
        return out if b is None else out + b_scale * b

    @requires_full_covariance
    def kernel_fn(k, **kwargs):
        l_out, band = bands(k.shape1)

        def propagate(cov, batch_ndim, is_self_cov):
            return _conv_cov(cov, batch_ndim, l_out, band, name)

        return affine_kernel_fn(k, propagate, W_std, b_std, parameterization, k.shape1[-1])

    return init_fn, apply_fn, kernel_fn


@recorded_layer
def SO3Pool():
    """Invariant pooling: Haar mean over SO(3) (grid quadrature), (N, 2L, 2L, 2L, C) -> (N, C)."""
    name = "SO3Pool"

    def init_fn(rng, input_shape):
        so3_bandwidth(input_shape, name)
        return (input_shape[0], input_shape[-1]), ()

    def apply_fn(params, inputs, **kwargs):
        L = so3_bandwidth(inputs.shape, name)
        return jnp.einsum("abg,nabgc->nc", jnp.asarray(so3_weights(L), inputs.dtype), inputs)

    @requires_full_covariance_pooled
    def kernel_fn(k, **kwargs):
        so3_bandwidth(k.shape1, name)
        cov_ndim = 1 if k.diagonal_batch else 2

        def pool(cov, batch_ndim):
            return cov if cov is None or not jnp.ndim(cov) else _pool_cov(cov, batch_ndim, name)

        return k.replace(cov1=pool(k.cov1, cov_ndim), nngp=pool(k.nngp, 2),
                         cov2=pool(k.cov2, cov_ndim), ntk=pool(k.ntk, 2),
                         is_reversed=False, batch_axis=0, channel_axis=1)

    return init_fn, apply_fn, kernel_fn
