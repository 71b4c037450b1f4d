"""Augmentation theorem: CNN + full augmentation has the mean prediction of the GCNN."""
import jax
import numpy as np
import pytest

from raygram._neural_tangents import nt, stax
from raygram.kernels import GroupConv, GroupPool, LiftingConv, augmented_kernel_fn, get_group, orbit, serial

TIMES = np.array([0.3, 3.0, 30.0])
# Arc-cosine (ReLU) kernels lose half their digits where cos θ -> 1 (an input against
# itself): arccos amplifies a round-off δ to √δ, so the orbit average and the group
# recursion, summed in different orders, agree to ~√eps ≈ 1e-8 there and to ~1e-15
# elsewhere.
RTOL = 1e-8


def pair(group):
    """(GCNN layers, CNN twin layers) with the same filters, widths, W_std, b_std, padding."""
    gcnn = [LiftingConv(4, (3, 3), group=group, W_std=1.4, b_std=0.2), stax.Relu(),
            GroupConv(4, (3, 3), group=group, W_std=1.2, b_std=0.1), stax.Relu(), GroupPool(),
            stax.Dense(1, W_std=0.8, b_std=0.3)]
    cnn = [stax.Conv(4, (3, 3), padding="SAME", W_std=1.4, b_std=0.2), stax.Relu(),
           stax.Conv(4, (3, 3), padding="SAME", W_std=1.2, b_std=0.1), stax.Relu(),
           stax.GlobalAvgPool(), stax.Dense(1, W_std=0.8, b_std=0.3)]
    return gcnn, cnn


@pytest.fixture(scope="module")
def data():
    """Noise plus a ramp along the rows: images with an orientation, unlike white noise."""
    k = jax.random.split(jax.random.PRNGKey(0), 3)
    ramp = np.linspace(-2., 2., 6)[None, :, None, None]
    x_train = jax.random.normal(k[0], (6, 6, 6, 1)) + ramp
    y_train = jax.random.normal(k[1], (6, 2))
    x_test = jax.random.normal(k[2], (3, 6, 6, 1)) + ramp
    return x_train, y_train, x_test


@pytest.mark.parametrize("group", ["C4", "D4"])
def test_augmented_cnn_kernel_is_the_gcnn_kernel(data, group):
    x_train, _, x_test = data
    gcnn, cnn = pair(group)
    aug = augmented_kernel_fn(stax.serial(*cnn)[2], group)
    general = stax.serial(*gcnn)[2]
    for x1, x2 in [(x_test, x_train), (x_train, None)]:
        want = general(x1, x2, ("nngp", "ntk"))
        got = aug(x1, x2, ("nngp", "ntk"))
        np.testing.assert_allclose(got.nngp, want.nngp, rtol=RTOL)
        np.testing.assert_allclose(got.ntk, want.ntk, rtol=RTOL)
    np.testing.assert_allclose(aug(x_test, x_train, "ntk"), serial(*gcnn)[2](x_test, x_train, "ntk"),
                               rtol=RTOL)


@pytest.mark.parametrize("group", ["C4", "D4"])
@pytest.mark.parametrize("get", ["ntk", "nngp"])
def test_mean_predictions_agree_at_all_times(data, group, get):
    """neural-tangents' predict: CNN on the augmented set == GCNN on the plain set."""
    x_train, y_train, x_test = data
    g = get_group(group)
    gcnn, cnn = pair(group)
    x_aug = orbit(x_train, g).reshape((-1,) + x_train.shape[1:])
    y_aug = np.tile(y_train, (g.order, 1))

    def predict(kernel_fn, xt, yt, t):
        fn = nt.predict.gradient_descent_mse_ensemble(kernel_fn, xt, yt, diag_reg=0.)
        return fn(t=t, x_test=x_test, get=get, compute_cov=False)

    cnn_fn, gcnn_fn = stax.serial(*cnn)[2], serial(*gcnn)[2]
    for t in (TIMES, None):
        augmented = predict(cnn_fn, x_aug, y_aug, t)
        equivariant = predict(gcnn_fn, x_train, y_train, t)
        np.testing.assert_allclose(augmented, equivariant, rtol=1e-7, atol=1e-9)
        plain = predict(cnn_fn, x_train, y_train, t)
        assert np.max(np.abs(plain - equivariant)) > 1e-3  # far outside the tolerance above
    # the finite-time predictions really move between the times compared
    assert not np.allclose(predict(gcnn_fn, x_train, y_train, TIMES)[0],
                           predict(gcnn_fn, x_train, y_train, TIMES)[-1], rtol=1e-2)


def test_augmented_kernel_rejects_what_it_cannot_average(data):
    x_train, _, _ = data
    aug = augmented_kernel_fn(stax.serial(*pair("C4")[1])[2], "C4")
    with pytest.raises(ValueError, match="get="):
        aug(x_train, None)
    with pytest.raises(ValueError, match="get="):
        aug(x_train, None, "cov1")
    with pytest.raises(ValueError, match=r"images \(N, H, W, C\)"):
        aug(x_train[..., 0], None, "nngp")
