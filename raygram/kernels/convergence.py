"""Finite-width networks approach their infinite-width kernels (the paper's Figure 1 check).

For each width, a few random finite networks of a spec are drawn and their Monte-Carlo
kernels compared with the analytic `kernel_fn` of the same spec, by relative Frobenius
error. The estimators self-average over width (error ~ 1/√width per network):

- NNGP: (1/C) Σ_c z_c(x) z_c(x') of the C features that enter the readout Dense (the
  layers before it must end in a (N, C) tensor: GroupPool, GlobalAvgPool or Flatten),
  against the analytic NNGP of those layers. The readout's output covariance over
  networks would need thousands of networks for the same accuracy.
- NTK: the empirical NTK (parameter-gradient inner products, `nt.empirical_ntk_fn`,
  traced over the output axis) of the full network, against its analytic NTK.

The finite networks run in float32 (`x64(False)`) even when x64 is on: Monte-Carlo errors
are ≥ 1e-3, far above float32 round-off, and XLA's CPU convolutions are ~200× slower in
float64 (1 s for one 512-channel 3×3 GroupConv on 3 images of 5×5). The analytic kernels
keep the caller's precision.
"""
from __future__ import annotations

import copy
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from raygram._neural_tangents import nt, x64
from raygram.config import KINDS
from raygram.errors import ConfigError
from raygram.kernels.architecture import canonical, network

# Layers whose width is `out_chan`; a Dense's width is `out_dim`.
CHANNEL_LAYERS = ("LiftingConv", "GroupConv", "Conv", "ConvTranspose", "ConvLocal")
WIDTH_LAYERS = CHANNEL_LAYERS + ("Dense",)


def _check_width(width, what: str = "width") -> int:
    if isinstance(width, bool) or not isinstance(width, (int, np.integer)) or width < 1:
        raise ConfigError(f"{what} must be a positive integer, got {width!r}")
    return int(width)


def _readout_index(layers: list[dict]) -> int | None:
    """Index of the readout: the last width-carrying layer if it is a Dense, else None."""
    widths = [i for i, entry in enumerate(layers) if next(iter(entry)) in WIDTH_LAYERS]
    if widths and next(iter(layers[widths[-1]])) == "Dense":
        return widths[-1]
    return None


def with_width(spec: list, width: int) -> list:
    """Copy of `spec` with every hidden layer's width set to `width`.

    Hidden widths are `out_chan` of LiftingConv/GroupConv/Conv(Transpose/Local) and
    `out_dim` of every Dense except the readout (the last width-carrying layer, when it is
    a Dense). Entries keep their form (a bare name stays a name).
    """
    width = _check_width(width)
    layers = canonical(spec)
    readout = _readout_index(layers)
    result = []
    for position, (entry, layer) in enumerate(zip(spec, layers)):
        (name, _), = layer.items()
        if name not in WIDTH_LAYERS or position == readout:
            result.append(copy.deepcopy(entry))
            continue
        (key, kwargs), = entry.items()
        kwargs = dict(copy.deepcopy(kwargs) or {})
        kwargs["out_dim" if name == "Dense" else "out_chan"] = width
        result.append({key: kwargs})
    return result


def _input_rank(layers: list[dict]) -> int | None:
    """Rank of the input the first layer expects (None: any)."""
    (name, kwargs), = layers[0].items()
    if name == "LiftingConv":
        return 4
    if name == "GroupConv":
        return 5
    if name in CHANNEL_LAYERS and "filter_shape" in kwargs:
        return len(kwargs["filter_shape"]) + 2
    if name == "Dense":
        return 2
    return None


def _relative_error(estimate, analytic) -> float:
    return float(jnp.linalg.norm(estimate - analytic) / jnp.linalg.norm(analytic))


def _summary(estimates: list, analytic) -> dict[str, float]:
    """Mean and spread of the single-network errors, and the error of the ensemble mean."""
    errors = np.array([_relative_error(e, analytic) for e in estimates])
    if not np.all(np.isfinite(errors)):
        raise FloatingPointError("a kernel estimate or the analytic kernel is not finite "
                                 "(overflow in the network outputs?)")
    return {"error": float(errors.mean()),
            "error_std": float(errors.std(ddof=1)) if errors.size > 1 else 0.0,
            "ensemble_error": _relative_error(jnp.mean(jnp.stack(estimates), 0), analytic)}


def _nngp_estimates(body: list, params: list, x) -> list:
    """(1/C) z zᵀ (N, N) of the body's (N, C) output features, one per network's parameters."""
    body_apply = network(body)[1]
    features_of = jax.jit(lambda p: body_apply(p, jnp.asarray(x)))
    estimates = []
    for p in params:
        z = features_of(p[:len(body)])
        if z.ndim != 2:
            raise ConfigError("the layers before the readout must end in (N, channels) features "
                             f"(GroupPool, GlobalAvgPool or Flatten), got shape {tuple(z.shape)}")
        estimates.append(z @ z.T / z.shape[1])
    return estimates


def convergence_errors(spec: list, x: np.ndarray, widths: Sequence[int], networks: int,
                       seed: int = 0, kinds: Sequence[str] = KINDS) -> list[dict]:
    """Relative Frobenius errors of finite-width Monte-Carlo kernels against the analytic ones.

    `x` is the input batch (N, ...) the spec's first layer takes (e.g. (N, H, W, C) for a
    LiftingConv). For each width of `widths` (hidden widths set by `with_width`), `networks`
    random networks are drawn with keys from `seed` and the width; every network gives one
    (N, N) estimate per kind. Returns one record per (width, kind), widths in the given order:
    {"width", "kind", "error" (mean over networks), "error_std" (their standard deviation),
    "ensemble_error" (error of the mean estimate)}.
    """
    layers = canonical(spec)
    widths = list(widths)
    if not widths:
        raise ConfigError("widths must name at least one width, e.g. [8, 128]")
    widths = [_check_width(w, "every width") for w in widths]
    networks = _check_width(networks, "networks")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
    kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds)
    if not kinds or any(k not in KINDS for k in kinds):
        raise ConfigError(f"kinds must be a non-empty subset of {KINDS}, got {kinds!r}")
    x = np.asarray(x, dtype=float)
    rank = _input_rank(layers)
    if x.ndim < 2 or (rank is not None and x.ndim != rank) or x.shape[0] < 1:
        expected = f"rank {rank}" if rank is not None else "rank >= 2"
        raise ConfigError(f"x must be a batch of {expected} for the first layer "
                         f"({next(iter(layers[0]))}), got shape {tuple(x.shape)}")
    readout = _readout_index(layers)
    body_length = len(layers) if readout is None else readout
    if "nngp" in kinds and body_length == 0:
        raise ConfigError("the spec has no layers before its readout Dense, so no NNGP features")

    records = []
    for width in widths:
        sized = with_width(layers, width)
        init_fn, apply_fn, kernel_fn = network(sized)
        keys = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(seed), width), networks)
        with x64(False):
            init = jax.jit(lambda key, f=init_fn: f(key, x.shape)[1])
            params = [init(key) for key in keys]
            if "nngp" in kinds:
                nngp_estimates = _nngp_estimates(sized[:body_length], params, x)
            if "ntk" in kinds:
                ntk_of = jax.jit(nt.empirical_ntk_fn(apply_fn, trace_axes=(-1,)))
                ntk_estimates = [ntk_of(jnp.asarray(x), None, p) for p in params]
        if "nngp" in kinds:
            analytic = network(sized[:body_length])[2](x, None, "nngp")
            records.append({"width": width, "kind": "nngp", **_summary(nngp_estimates, analytic)})
        if "ntk" in kinds:
            records.append({"width": width, "kind": "ntk",
                            **_summary(ntk_estimates, kernel_fn(x, None, "ntk"))})
    return records
