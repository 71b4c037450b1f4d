"""Bad arguments raise errors that name the argument and say what is allowed."""
import jax
import jax.numpy as jnp
import pytest

from raygram._neural_tangents import stax
from raygram.kernels import GroupConv, GroupPool, LiftingConv, get_group, transform_images
from raygram.kernels.planar import block_kernel_fn

X = jnp.ones((2, 5, 5, 3))


@pytest.mark.parametrize("make", [lambda: LiftingConv(4, (3, 3), group="C8"),
                                  lambda: GroupConv(4, (3, 3), group="SO2"),
                                  lambda: get_group("c4")])
def test_unknown_group(make):
    with pytest.raises(ValueError, match=r"unknown group .*'C4'.*'D4'"):
        make()


def test_group_must_be_a_name():
    with pytest.raises(TypeError, match="group must be a group name"):
        get_group(4)


@pytest.mark.parametrize("padding", ["SAME", "CIRCULAR"])
def test_even_filters_break_the_group_action_with_symmetric_padding(padding):
    with pytest.raises(ValueError, match=r"filter_shape \(2, 2\) has an even size.*padding"):
        LiftingConv(4, (2, 2), group="C4", padding=padding)
    with pytest.raises(ValueError, match=r"filter_shape \(4, 4\) has an even size"):
        GroupConv(4, (4, 4), group="D4", padding=padding)


def test_non_square_filters_cannot_be_rotated():
    with pytest.raises(ValueError, match=r"filter_shape \(3, 5\) is not square"):
        LiftingConv(4, (3, 5), group="C4")
    LiftingConv(4, (3, 5), group="D2")  # flips only: fine


@pytest.mark.parametrize("kwargs,match", [
    (dict(padding="FULL"), "padding must be one of"),
    (dict(parameterization="mup"), "parameterization must be one of"),
    (dict(covariance="diagonal"), "covariance must be one of"),
    (dict(filter_shape=(3,)), "filter_shape must be two positive integers"),
])
def test_bad_layer_arguments(kwargs, match):
    args = dict(out_chan=4, filter_shape=(3, 3))
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        LiftingConv(**args)


def test_bad_out_chan():
    with pytest.raises(ValueError, match="out_chan must be a positive integer"):
        GroupConv(0, (3, 3))


def test_wrong_input_rank():
    init_fn, apply_fn, kernel_fn = LiftingConv(4, (3, 3))
    with pytest.raises(ValueError, match=r"LiftingConv expects images \(N, H, W, C\)"):
        init_fn(jax.random.PRNGKey(0), (2, 5, 5))
    with pytest.raises(ValueError, match=r"LiftingConv expects images \(N, H, W, C\)"):
        kernel_fn(jnp.ones((2, 5, 5, 1, 3)), None, "nngp")
    with pytest.raises(ValueError, match=r"GroupConv expects group feature maps"):
        GroupConv(4, (3, 3))[0](jax.random.PRNGKey(0), X.shape)
    with pytest.raises(ValueError, match=r"GroupPool expects group feature maps"):
        GroupPool()[0](jax.random.PRNGKey(0), X.shape)


def test_channel_mismatch():
    init_fn, apply_fn, _ = LiftingConv(4, (3, 3))
    _, params = init_fn(jax.random.PRNGKey(0), X.shape)
    with pytest.raises(ValueError, match="inputs have 1 channels .* initialised for 3 .*in_chan"):
        apply_fn(params, jnp.ones((2, 5, 5, 1)))


def test_group_mismatch_between_layers():
    init_fn, _, kernel_fn = stax.serial(LiftingConv(4, (3, 3), group="C4"),
                                        GroupConv(4, (3, 3), group="D4"))
    with pytest.raises(ValueError, match=r"group axis of the input has size 4, but group 'D4' has 8"):
        init_fn(jax.random.PRNGKey(0), X.shape)
    with pytest.raises(ValueError, match=r"GroupConv expects group feature maps \(N, H, W, 8, C\)"):
        kernel_fn(X, None, "nngp")


def test_non_square_images_under_rotations():
    with pytest.raises(ValueError, match=r"only when it is square; got .* \(5, 6\)"):
        LiftingConv(4, (3, 3), group="C4")[0](jax.random.PRNGKey(0), (2, 5, 6, 1))
    with pytest.raises(ValueError, match=r"only when it is square"):
        transform_images(jnp.ones((1, 5, 6, 1)), "D4", 1)


def test_valid_filter_larger_than_input():
    with pytest.raises(ValueError, match=r"filter_shape \(7, 7\) is larger than the input"):
        LiftingConv(4, (7, 7), padding="VALID")[0](jax.random.PRNGKey(0), X.shape)


@pytest.mark.parametrize("layer", [LiftingConv(4, (3, 3), covariance="full"), GroupPool(),
                                   stax.Relu()])
def test_block_kernel_fn_takes_relative_group_layers_only(layer):
    with pytest.raises(ValueError, match=r"takes a LiftingConv \(covariance='relative'\) or a"):
        block_kernel_fn(layer)
