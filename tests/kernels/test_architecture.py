"""Network specs: one canonical form, the same kernels as the layers they name, clear errors."""
import sys

import numpy as np
import pytest

from raygram._neural_tangents import stax
from raygram.errors import ConfigError
from raygram.kernels.architecture import canonical, check_architecture, network, spec_json
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


# -- networks defined in Python: {"python": "module:attribute"}, a stax triple, a kernel_fn -------------------------
PYTHON_NETS = '''
from neural_tangents import stax

TRIPLE = stax.serial(stax.Conv(3, (3, 3), padding="SAME"), stax.Erf(), stax.Flatten(), stax.Dense(1))
kernel_fn = TRIPLE[2]
UNPOOLED = stax.serial(stax.Conv(3, (3, 3), padding="SAME"), stax.Erf())[2]
NOT_CALLABLE = 3
class Holder:
    kernel_fn = staticmethod(kernel_fn)
'''


@pytest.fixture
def python_nets(tmp_path, monkeypatch):
    """An importable module `rg_arch_nets` (tmp_path on sys.path) defining stax networks."""
    (tmp_path / "rg_arch_nets.py").write_text(PYTHON_NETS)
    (tmp_path / "rg_arch_broken.py").write_text("raise RuntimeError('half written')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import rg_arch_nets

    yield rg_arch_nets
    sys.modules.pop("rg_arch_nets", None)


def test_python_network_is_imported_as_its_kernel_fn_or_triple(python_nets):
    init_fn, apply_fn, kernel_fn = network({"python": "rg_arch_nets:TRIPLE"})
    assert (init_fn, apply_fn, kernel_fn) == python_nets.TRIPLE
    assert network({"python": "rg_arch_nets:kernel_fn"}) == (None, None, python_nets.kernel_fn)
    assert network({"python": "rg_arch_nets:Holder.kernel_fn"})[2] is python_nets.kernel_fn
    assert network(python_nets.TRIPLE) == python_nets.TRIPLE  # from Python: the triple or the kernel_fn itself
    assert network(python_nets.kernel_fn) == (None, None, python_nets.kernel_fn)
    check_architecture({"python": "rg_arch_nets:kernel_fn"}, (5, 5, 2))
    check_architecture(python_nets.TRIPLE, (5, 5, 2))


@pytest.mark.parametrize("spec, message", [
    ({"python": "rg_arch_missing:kernel_fn"}, r"cannot import module 'rg_arch_missing': ModuleNotFoundError"),
    ({"python": "rg_arch_broken:kernel_fn"}, r"cannot import module 'rg_arch_broken': RuntimeError: half written"),
    ({"python": "rg_arch_nets:kernel"}, r"'rg_arch_nets' has no attribute 'kernel'"),
    ({"python": "rg_arch_nets:Holder.nope"}, r"'Holder' has no attribute 'nope'"),
    ({"python": "rg_arch_nets:NOT_CALLABLE"}, r"int 3 is not a kernel_fn"),
    ({"python": "rg_arch_nets"}, r'must be \{python: "module:attribute"\}'),
    ({"python": "rg_arch_nets:kernel_fn", "Dense": {}}, r'must be \{python: "module:attribute"\}'),
    ({"python": ["rg_arch_nets:kernel_fn"]}, r'must be \{python: "module:attribute"\}'),
])
def test_bad_python_networks_are_refused_in_one_line(python_nets, spec, message):
    with pytest.raises(ConfigError, match=message) as error:
        network(spec)
    assert "\n" not in str(error.value)


def test_python_network_gets_the_same_shape_check(python_nets):
    with pytest.raises(ConfigError, match=r"kernels.mine.architecture: the network must end in one output per "
                                          r"input.*nngp kernel has shape \(2, 2, 5, 5, 5, 5\)"):
        check_architecture({"python": "rg_arch_nets:UNPOOLED"}, (5, 5, 2), where="kernels.mine.architecture")
    with pytest.raises(ConfigError, match=r"kernels.mine.architecture: does not accept inputs of shape \(7,\)"):
        check_architecture({"python": "rg_arch_nets:kernel_fn"}, (7,), where="kernels.mine.architecture")


def test_a_kernel_must_return_one_array_per_kind():
    with pytest.raises(ConfigError, match=r"one array per kind asked for \('nngp', 'ntk'\), got 1"):
        check_architecture(lambda x1, x2, get: x1 @ x1.T, (3,))


# -- layer arguments that fail only on shapes: caught by tracing the layers, named by position --------------------
def _head(*layers):
    return [*layers, "GlobalAvgPool", {"Dense": {"out_dim": 1}}]


@pytest.mark.parametrize("spec, message", [
    (_head({"Conv": {"out_chan": 0, "filter_shape": [3, 3]}}),
     r"^arch: layer 0 \(Conv\) gives empty outputs of shape \(6, 6, 0\) from inputs of shape \(8, 8, 1\)"),
    (_head({"Conv": {"out_chan": 1, "filter_shape": [9, 9], "padding": "VALID"}}),
     r"^arch: layer 0 \(Conv\) gives empty outputs of shape \(0, 0, 1\)"),
    (_head({"Conv": {"out_chan": 1, "filter_shape": [3, 3], "padding": "SAME"}}, "Relu",
           {"AvgPool": {"window_shape": [20, 20]}}),
     r"^arch: layer 2 \(AvgPool\) gives empty outputs of shape \(0, 0, 1\) from inputs of shape \(8, 8, 1\)"),
    (["Flatten", {"Dense": {"out_dim": 0}}], r"^arch: layer 1 \(Dense\) gives empty outputs of shape \(0,\)"),
    (_head({"Conv": {"out_chan": 1, "filter_shape": [3, 3], "strides": [0, 0]}}),
     r"^arch: does not accept inputs of shape \(8, 8, 1\): layer 0 \(Conv\) fails on its inputs of shape "
     r"\(8, 8, 1\): RuntimeWarning: divide by zero"),
    (_head({"Conv": {"out_chan": 1, "filter_shape": [1, 1]}}, "Relu",
           {"Conv": {"out_chan": 1, "filter_shape": [0, 0]}}),
     r"^arch: does not accept inputs of shape \(8, 8, 1\): layer 2 \(Conv\): ZeroDivisionError"),
    (_head({"LiftingConv": {"out_chan": 1, "filter_shape": [9, 9], "group": "C4", "padding": "VALID"}}),
     r"^arch: does not accept inputs of shape \(8, 8, 1\): layer 0 \(LiftingConv\) .*: ConfigError: .*larger "
     r"than the input"),
    ([{"GroupConv": {"out_chan": 1, "filter_shape": [3, 3], "group": "C4"}}, "GroupPool", {"Dense": {"out_dim": 1}}],
     r"^arch: does not accept inputs of shape \(8, 8, 1\): layer 0 \(GroupConv\) fails on its inputs of shape "
     r"\(8, 8, 1\): ConfigError: GroupConv expects"),
    (["AtomSum", {"Dense": {"out_dim": 4}}, "Relu", {"Dense": {"out_dim": 0}}],
     r"^arch: layer 3 \(Dense\) gives empty outputs of shape \(0,\) from inputs of shape \(4,\)"),
])
def test_layer_arguments_that_fail_on_shapes_are_caught_before_any_work(spec, message):
    """What neural-tangents accepts when the layer is made and fails on later (a ZeroDivisionError in a
    worker) or never (an empty output gives a kernel of NaN): one line naming the layer."""
    input_shape = (5, 3) if spec[0] == "AtomSum" else (8, 8, 1)  # molecules: 5 atoms, 2 features + mask
    with pytest.raises(ConfigError, match=message) as error:
        check_architecture(spec, input_shape, where="arch")
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("spec, input_shape", [
    (_head({"Conv": {"out_chan": 1, "filter_shape": [8, 8], "padding": "VALID"}}), (8, 8, 1)),  # 1x1 output: fine
    ([{"LiftingConv": {"out_chan": 2, "filter_shape": [3, 3], "group": "C4", "padding": "SAME"}}, "Relu",
      {"GroupConv": {"out_chan": 2, "filter_shape": [3, 3], "group": "C4", "padding": "SAME"}}, "GroupPool",
      {"Dense": {"out_dim": 1}}, {"FullAugmentation": {"group": "C4"}}], (6, 6, 1)),
    (["AtomSum", {"Dense": {"out_dim": 4}}, "Relu", {"Dense": {"out_dim": 1}}], (5, 3)),
])
def test_good_networks_pass_the_layer_trace(spec, input_shape):
    check_architecture(spec, input_shape)
