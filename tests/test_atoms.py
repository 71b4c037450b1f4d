"""AtomSum: molecular kernels as sums of a shared per-atom kernel over all atom pairs (real QM9 molecules)."""
import numpy as np
import pytest

from raygram._neural_tangents import stax
from raygram.data import atom_signals, load_qm9
from raygram.kernels.atoms import AtomSum, pad_molecules

MLP = stax.serial(stax.Flatten(), stax.Dense(64, W_std=1.5, b_std=0.1), stax.Erf(), stax.Dense(1, b_std=0.1))


@pytest.fixture(scope="module")
def molecules():
    mols = load_qm9(limit=12)[4:12]
    return [atom_signals(m, bandwidth=3) for m in mols]


def test_molecular_kernel_is_the_double_sum_over_atoms(molecules):
    x = pad_molecules(molecules)
    _, _, kernel_fn = AtomSum(*MLP)
    got = kernel_fn(x[:5], x[5:], ("nngp", "ntk"))
    for kind in ("nngp", "ntk"):
        want = np.array([[np.asarray(MLP[2](a, b, kind)).sum() for b in molecules[5:]] for a in molecules[:5]])
        np.testing.assert_allclose(getattr(got, kind), want, rtol=1e-12)
    square = kernel_fn(x, None, "ntk")
    np.testing.assert_allclose(square, square.T, rtol=1e-13)
    np.testing.assert_allclose(square[:5, 5:], got.ntk, rtol=1e-12)


def test_invariant_to_atom_order_and_padding(molecules):
    _, _, kernel_fn = AtomSum(*MLP)
    base = kernel_fn(pad_molecules(molecules), None, "nngp")
    rng = np.random.default_rng(0)
    shuffled = [m[rng.permutation(len(m))] for m in molecules]
    np.testing.assert_allclose(kernel_fn(pad_molecules(shuffled, atoms=40), None, "nngp"), base, rtol=1e-12)


def test_finite_network_sums_the_per_atom_network(molecules):
    import jax

    init_fn, apply_fn, _ = AtomSum(*MLP)
    x = pad_molecules(molecules)
    out_shape, params = init_fn(jax.random.PRNGKey(0), x.shape)
    got = apply_fn(params, x)
    assert out_shape == (len(molecules), 1) and got.shape == (len(molecules), 1)
    want = np.array([np.asarray(MLP[1](params, m)).sum() for m in molecules])
    np.testing.assert_allclose(got[:, 0], want, rtol=1e-12)


def test_bad_molecules_are_refused(molecules):
    with pytest.raises(ValueError, match="molecule 1 has no atoms"):
        pad_molecules([molecules[0], molecules[0][:0]])
    with pytest.raises(ValueError, match="fewer than the largest molecule's"):
        pad_molecules(molecules, atoms=2)
