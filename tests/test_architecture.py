"""Network specs: one canonical form, the same kernels as the layers they name, clear errors."""
import numpy as np
import pytest

from raygram._neural_tangents import stax
from raygram.architecture import canonical, network, spec_json
from raygram.kernels import GroupPool, LiftingConv, serial


def test_equivalent_specs_have_one_canonical_form():
    a = [{"Conv": {"padding": "SAME", "filter_shape": (3, 3), "out_chan": np.int64(4)}}, "Relu",
         {"Flatten": None}, {"Dense": {"out_dim": 1}}]
    b = [{"Conv": {"out_chan": 4, "filter_shape": [3, 3], "padding": "SAME"}}, {"Relu": {}},
         "Flatten", {"Dense": {"out_dim": 1}}]
    assert canonical(a) == canonical(b)
    assert spec_json(a) == spec_json(b)
    assert canonical(b)[1] == {"Relu": {}}


def test_spec_builds_the_layers_it_names():
    spec = [{"LiftingConv": {"out_chan": 3, "filter_shape": [3, 3], "group": "D4", "padding": "CIRCULAR"}},
            "Erf", "GroupPool", {"Dense": {"out_dim": 1, "W_std": 1.5}}]
    direct = serial(LiftingConv(3, (3, 3), group="D4", padding="CIRCULAR"), stax.Erf(), GroupPool(),
                    stax.Dense(1, W_std=1.5))[2]
    x = np.random.default_rng(0).normal(size=(3, 5, 5, 2))
    np.testing.assert_array_equal(network(spec)[2](x, None, "ntk"), direct(x, None, "ntk"))


@pytest.mark.parametrize("spec, message", [
    ([], "non-empty list"),
    ("Relu", "non-empty list"),
    ([{"Relu": {}, "Erf": {}}], r"layer 0: expected a layer name or a one-key mapping"),
    ([{"Dense": 3}], r"layer 0 \(Dense\): arguments must be a mapping"),
    ([{"Dense": {"out_dim": object()}}], r"layer 0 \(Dense\): .* is not a number"),
    (["Relu", "Conv2"], r"layer 1 \(Conv2\): unknown layer 'Conv2'"),
    (["serial"], r"unknown layer 'serial'"),
    ([{"Conv": {"filter_shape": [3, 3]}}], r"layer 0 \(Conv\): .*out_chan"),
    ([{"LiftingConv": {"out_chan": 2, "filter_shape": [3, 3], "group": "C5"}}], r"layer 0 \(LiftingConv\): .*C5"),
])
def test_malformed_specs_are_refused_with_the_layer_named(spec, message):
    with pytest.raises(ValueError, match=message):
        network(spec)
