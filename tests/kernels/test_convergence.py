"""Finite-width Monte-Carlo kernels of a C4 GCNN spec approach the analytic NNGP/NTK.

Measured on this set-up (C4, Erf, 3 images 5×5×1, widths 8 and 128, 8 networks, seeds
0-11): the mean single-network error falls 2.7-5.6× (mean 3.8; 1/√width predicts 4) for
both kinds, and the ensemble error at width 128 is 0.013-0.077. The test (seed 0: ratios
5.0 NNGP, 2.8 NTK; ensemble 0.069, 0.013) asks for a ratio > 2 and an ensemble error
< 0.15, which a correct kernel meets with margin, while a wrong kernel (a missing |G| in
the fan-in, a missing NTK term: ≥ 25% off) leaves an error floor that fails both.
"""
from __future__ import annotations

import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from raygram.kernels.convergence import convergence_errors, with_width

WIDTHS = (8, 128)
NETWORKS = 8
RATIO = 2.0
TOLERANCE = 0.15


def gcnn(width: int) -> list:
    return [{"LiftingConv": {"out_chan": width, "filter_shape": [3, 3], "group": "C4",
                             "W_std": 1.5, "b_std": 0.3}}, "Erf",
            {"GroupConv": {"out_chan": width, "filter_shape": [3, 3], "group": "C4",
                           "W_std": 1.3, "b_std": 0.2}}, "Erf",
            "GroupPool", {"Dense": {"out_dim": 1, "W_std": 1.2, "b_std": 0.1}}]


@pytest.fixture(scope="module")
def x():
    return np.asarray(jax.random.normal(jax.random.PRNGKey(0), (3, 5, 5, 1)))


def test_errors_fall_like_inverse_sqrt_width(x):
    errors = convergence_errors(gcnn(4), x, list(WIDTHS), NETWORKS, seed=0)
    assert [(e["width"], e["kind"]) for e in errors] == [(8, "nngp"), (8, "ntk"), (128, "nngp"), (128, "ntk")]
    by = {(e["width"], e["kind"]): e for e in errors}
    for kind in ("nngp", "ntk"):
        small, large = by[(WIDTHS[0], kind)], by[(WIDTHS[1], kind)]
        assert small["error"] > RATIO * large["error"], errors
        assert large["ensemble_error"] < TOLERANCE, errors
        assert all(e["error_std"] > 0 for e in (small, large))
    assert jnp.zeros(1).dtype == jnp.float64  # the float32 Monte-Carlo networks leave x64 on


def test_with_width_sets_hidden_widths_only():
    spec = [{"LiftingConv": {"out_chan": 4, "filter_shape": [3, 3], "group": "D4"}}, "Relu",
            {"GroupConv": {"out_chan": 6, "filter_shape": [3, 3], "group": "D4"}}, {"Relu": None},
            "GroupPool", {"Dense": {"out_dim": 5}}, "Erf", {"Dense": {"out_dim": 3, "W_std": 2.0}}]
    original = copy.deepcopy(spec)
    wide = with_width(spec, 64)
    assert spec == original
    assert wide[0]["LiftingConv"] == {"out_chan": 64, "filter_shape": [3, 3], "group": "D4"}
    assert wide[2]["GroupConv"]["out_chan"] == 64 and wide[5] == {"Dense": {"out_dim": 64}}
    assert wide[7] == {"Dense": {"out_dim": 3, "W_std": 2.0}}  # the readout keeps its width
    assert [wide[i] for i in (1, 3, 4, 6)] == ["Relu", {"Relu": None}, "GroupPool", "Erf"]
    cnn = [{"Conv": {"out_chan": 2, "filter_shape": [3, 3]}}, "Relu", "GlobalAvgPool"]
    assert with_width(cnn, 7)[0] == {"Conv": {"out_chan": 7, "filter_shape": [3, 3]}}
    with pytest.raises(ValueError, match="positive integer"):
        with_width(cnn, 0)


@pytest.mark.parametrize("args,message", [
    (dict(widths=[]), "at least one width"),
    (dict(widths=[8, 0]), "every width must be a positive integer"),
    (dict(networks=0), "networks must be a positive integer"),
    (dict(x_shape=(3, 5, 5)), "rank 4"),
    (dict(kinds=("ntk", "cov1")), "kinds"),
])
def test_invalid_inputs(x, args, message):
    shape = args.pop("x_shape", x.shape)
    kwargs = dict(widths=[8], networks=1) | args
    with pytest.raises(ValueError, match=message):
        convergence_errors(gcnn(4), np.zeros(shape), **kwargs)
