"""Molecules as per-atom signals on S²: equivariance, invariant descriptors, the molecular
kernel, the per-element energy baseline and input errors, on the first 200 QM9 molecules
(and, for elements beyond QM9's, hand-built molecules with S and Cl)."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation
from scipy.special import sph_harm_y

from raygram.data import HARTREE_TO_KCAL_PER_MOL, ELEMENTS, LinearBaseline, Molecule, atom_signals, channel_elements, dh_directions, dh_grid, dh_weights, element_counts, elements_of, energies_kcal, evaluate_signals, load_qm9, molecule_kernel, power_spectrum, stack_atom_signals


@pytest.fixture(scope="module")
def molecules():
    return load_qm9(limit=200)


def moved(molecule, positions, elements=None):
    return Molecule(tuple(elements or molecule.elements), np.asarray(positions, dtype=np.float64),
                    molecule.u0, molecule.index)


def rotated(molecule, matrix):
    return moved(molecule, molecule.positions @ matrix.T)


def sample(molecules, count=10):
    """A spread of molecules of different sizes and compositions (first 200 of QM9)."""
    return molecules[:: len(molecules) // count][:count]


def test_dh_grid_directions_and_quadrature():
    theta, phi = dh_grid(3)
    np.testing.assert_allclose(theta, np.pi * (2 * np.arange(6) + 1) / 12)
    np.testing.assert_allclose(phi, 2 * np.pi * np.arange(6) / 6)
    directions = dh_directions(3)
    assert directions.shape == (6, 6, 3)
    np.testing.assert_allclose(np.linalg.norm(directions, axis=-1), 1.0)
    np.testing.assert_allclose(directions[2, 1], [np.sin(theta[2]) * np.cos(phi[1]),
                                                  np.sin(theta[2]) * np.sin(phi[1]), np.cos(theta[2])])
    for L in (1, 6, 10):
        theta, _ = dh_grid(L)
        moments = [dh_weights(L) @ np.cos(theta) ** n for n in range(2 * L)]
        np.testing.assert_allclose(moments, [2 / (n + 1) if n % 2 == 0 else 0 for n in range(2 * L)],
                                   atol=1e-14)


def test_power_spectrum_is_exact_for_band_limited_signals():
    """Quadrature check: a real signal of degree < L has exactly the spectrum of its coefficients,
    and rotating it (a new signal of the same degrees) leaves the spectrum unchanged."""
    L = 6
    rng = np.random.default_rng(0)
    coefficients = {(l, m): rng.normal() for l in range(L) for m in range(-l, l + 1)}

    def signal(directions):
        theta = np.arccos(np.clip(directions[..., 2], -1, 1))
        phi = np.arctan2(directions[..., 1], directions[..., 0])
        return sum(c * real_harmonic(l, m, theta, phi) for (l, m), c in coefficients.items())

    def real_harmonic(l, m, theta, phi):
        y = sph_harm_y(l, abs(m), theta, phi)
        if m == 0:
            return y.real
        return np.sqrt(2) * (y.real if m > 0 else y.imag) * (-1) ** m

    expected = [sum(coefficients[l, m] ** 2 for m in range(-l, l + 1)) for l in range(L)]
    grid = dh_directions(L)
    np.testing.assert_allclose(power_spectrum(signal(grid)[..., None])[:, 0], expected, rtol=1e-11)
    R = Rotation.random(random_state=1).as_matrix()
    np.testing.assert_allclose(power_spectrum(signal(grid @ R)[..., None])[:, 0], expected, rtol=1e-11)


def test_signal_shape_channel_order_and_value(molecules):
    methane = molecules[0]
    assert methane.elements == ("C", "H", "H", "H", "H")
    signals = atom_signals(methane, bandwidth=6)
    assert signals.shape == (5, 12, 12, 10)
    nonzero = np.abs(signals).max(axis=(1, 2)) > 0
    # Element-major channels (H,2), (H,6), (C,2), (C,6), (N,2), ...: C sees only H; H sees C and H.
    np.testing.assert_array_equal(nonzero[0], [1, 1, 0, 0, 0, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(nonzero[1:], np.tile([1, 1, 1, 1, 0, 0, 0, 0, 0, 0], (4, 1)))
    # One value by hand: atom 1 (H) seen from the carbon, looking along the C–H bond.
    bond = methane.positions[1] - methane.positions[0]
    r = np.linalg.norm(bond)
    direction = bond / r
    value = evaluate_signals(methane, direction, beta=0.5)[0, 1]  # carbon, channel (H, 6)
    others = methane.positions[2:] - methane.positions[0]
    cosines = others @ direction / np.linalg.norm(others, axis=1)
    expected = sum(6 / 36 * (d / 1.5) ** -6 * np.exp(-(c - 1) ** 2 / 0.5)
                   for d, c in zip([r, *np.linalg.norm(others, axis=1)], [1.0, *cosines]))
    np.testing.assert_allclose(value, expected, rtol=1e-13)


def test_rotation_equivariance_is_exact(molecules):
    """Signals of R·molecule at R·ω equal the signals of the molecule at ω."""
    rng = np.random.default_rng(2)
    omega = rng.normal(size=(7, 9, 3))
    omega /= np.linalg.norm(omega, axis=-1, keepdims=True)
    for seed, molecule in enumerate(sample(molecules)):
        reference = evaluate_signals(molecule, omega)
        for R in Rotation.random(3, random_state=seed).as_matrix():
            turned = evaluate_signals(rotated(molecule, R), omega @ R.T)
            np.testing.assert_allclose(turned, reference, rtol=0, atol=1e-12)
        assert np.abs(reference).max() > 0.1


def test_translation_invariance_and_permutation_equivariance(molecules):
    rng = np.random.default_rng(3)
    for molecule in sample(molecules):
        signals = atom_signals(molecule, bandwidth=6)
        shifted = moved(molecule, molecule.positions + rng.normal(scale=10.0, size=3))
        np.testing.assert_allclose(atom_signals(shifted, bandwidth=6), signals, rtol=0, atol=1e-12)
        order = rng.permutation(len(molecule.elements))
        permuted = moved(molecule, molecule.positions[order], [molecule.elements[i] for i in order])
        np.testing.assert_allclose(atom_signals(permuted, bandwidth=6), signals[order],
                                   rtol=0, atol=1e-13)


def spectrum_rotation_error(molecules, bandwidth):
    worst = 0.0
    for seed, molecule in enumerate(sample(molecules, 5)):
        reference = power_spectrum(atom_signals(molecule, bandwidth))
        for R in Rotation.random(2, random_state=seed).as_matrix():
            turned = power_spectrum(atom_signals(rotated(molecule, R), bandwidth))
            worst = max(worst, np.abs(turned - reference).max() / np.abs(reference).max())
    return worst


def test_power_spectrum_invariance(molecules):
    """Rotation invariance up to aliasing that falls with L (largest relative error measured
    9.7e-5 at L = 6 and 8.5e-9 at L = 10 here); translation invariance to rounding."""
    error_6, error_10 = spectrum_rotation_error(molecules, 6), spectrum_rotation_error(molecules, 10)
    assert error_6 < 1e-3
    assert error_10 < 1e-6
    assert error_10 < error_6 / 100
    molecule = molecules[50]
    spectrum = power_spectrum(atom_signals(molecule, 6))
    assert spectrum.shape == (len(molecule.elements), 6, 10)
    shifted = moved(molecule, molecule.positions + [3.0, -7.5, 12.25])
    np.testing.assert_allclose(power_spectrum(atom_signals(shifted, 6)), spectrum, rtol=0, atol=1e-12)


def rbf_molecule_gram(molecules_1, molecules_2, bandwidth=10):
    """An invariant molecular kernel: RBF on per-atom power spectra, summed over atom pairs."""
    def features(batch):
        signals, owner = stack_atom_signals(batch, bandwidth)
        return np.sqrt(power_spectrum(signals)).reshape(len(owner), -1), owner

    x1, owner_1 = features(molecules_1)
    x2, owner_2 = features(molecules_2)
    distance = ((x1[:, None, :] - x2[None, :, :]) ** 2).sum(-1)
    return molecule_kernel(np.exp(-distance / 2.0), owner_1, owner_2)


def test_molecule_kernel_sums_atom_pairs(molecules):
    rng = np.random.default_rng(4)
    atoms_1, atoms_2 = rng.integers(0, 4, size=11), rng.integers(0, 3, size=8)
    atom_gram = rng.normal(size=(11, 8))
    expected = np.zeros((4, 3))
    for i, a in enumerate(atoms_1):
        for j, b in enumerate(atoms_2):
            expected[a, b] += atom_gram[i, j]
    np.testing.assert_allclose(molecule_kernel(atom_gram, atoms_1, atoms_2), expected, atol=1e-13)
    order_1, order_2 = rng.permutation(11), rng.permutation(8)
    np.testing.assert_allclose(molecule_kernel(atom_gram[order_1][:, order_2], atoms_1[order_1],
                                               atoms_2[order_2]), expected, atol=1e-13)
    assert molecule_kernel(atom_gram, atoms_1, atoms_2, molecules_1=6).shape == (6, 3)


def test_molecular_kernel_invariances_and_sensitivity(molecules):
    batch = [molecules[i] for i in (1, 5, 17, 60, 120)]
    gram = rbf_molecule_gram(batch, batch)
    rng = np.random.default_rng(5)
    permuted = []
    for molecule in batch:
        order = rng.permutation(len(molecule.elements))
        permuted.append(moved(molecule, molecule.positions[order], [molecule.elements[i] for i in order]))
    np.testing.assert_allclose(rbf_molecule_gram(permuted, batch), gram, rtol=1e-12)
    turned = [rotated(m, R) for m, R in zip(batch, Rotation.random(5, random_state=6).as_matrix())]
    rotation_change = np.abs(rbf_molecule_gram(turned, batch) - gram).max()
    assert rotation_change < 1e-6 * np.abs(gram).max()
    # Stretch one bond of molecule 17 by 0.1 Å (move the second atom of the bond along it).
    molecule = batch[2]
    distance = np.linalg.norm(molecule.positions[:, None] - molecule.positions[None], axis=-1)
    np.fill_diagonal(distance, np.inf)
    i, j = np.unravel_index(np.argmin(distance), distance.shape)
    positions = molecule.positions.copy()
    positions[j] += 0.1 * (positions[j] - positions[i]) / distance[i, j]
    stretched = [*batch[:2], moved(molecule, positions), *batch[3:]]
    bond_change = np.abs(rbf_molecule_gram(stretched, batch) - gram).max()
    assert bond_change > 1e-2 * np.abs(gram).max()
    assert bond_change > 1e4 * rotation_change


def split(molecules):
    """150 training and 50 test molecules, seeded; the only fluorine molecule (CF4) goes to
    training, since a per-element baseline cannot price an element it has never seen."""
    order = list(np.random.default_rng(7).permutation(len(molecules)))
    fluorine = next(i for i, m in enumerate(molecules) if "F" in m.elements)
    order.remove(fluorine)
    train = [molecules[i] for i in [fluorine, *order[:149]]]
    test = [molecules[i] for i in order[149:]]
    return train, test


def test_linear_baseline_beats_the_mean(molecules):
    """Measured on this split: test MAE 15.1 kcal/mol for the baseline (14.9 on training)
    against 22,029 kcal/mol for predicting the training mean (U0 grows with molecule size)."""
    train, test = split(molecules)
    assert len(train) == 150 and len(test) == 50
    baseline = LinearBaseline().fit(train)
    residual = baseline.residuals_kcal(test)
    np.testing.assert_allclose(
        residual, energies_kcal(test) - baseline.predict(test) * HARTREE_TO_KCAL_PER_MOL)
    mae = np.abs(residual).mean()
    mean = energies_kcal(train).mean()
    mae_mean = np.abs(energies_kcal(test) - mean).mean()
    print(f"baseline MAE {mae:.2f} kcal/mol, mean MAE {mae_mean:.1f} kcal/mol")
    assert mae < 0.01 * mae_mean


def test_linear_baseline_uses_training_molecules_only(molecules):
    train, test = split(molecules)
    baseline = LinearBaseline().fit(train)
    predictions = baseline.predict(test)
    changed = [Molecule(m.elements, m.positions, m.u0 + 1.0, m.index) for m in test]
    np.testing.assert_array_equal(baseline.predict(changed), predictions)
    np.testing.assert_array_equal(baseline.predict(test[:7]), predictions[:7])
    refit = LinearBaseline().fit(train)
    np.testing.assert_array_equal(refit.predict(test[::-1]), predictions[::-1])
    counts = element_counts(test, ELEMENTS)
    assert counts.shape == (50, len(ELEMENTS))
    np.testing.assert_array_equal(counts.sum(axis=1), [len(m.elements) for m in test])
    # By default the columns are the molecules' own elements (no F among these 50).
    assert elements_of(test) == ("H", "C", "N", "O")
    np.testing.assert_array_equal(element_counts(test), counts[:, :4])
    # The baseline over QM9's five elements and over the training molecules' own is the same fit.
    np.testing.assert_array_equal(LinearBaseline(ELEMENTS).fit(train).predict(test), predictions)
    assert baseline.elements == ELEMENTS  # the training set has every QM9 element, in atomic-number order


def test_linear_baseline_errors(molecules):
    no_fluorine = [m for m in molecules[:150] if "F" not in m.elements]
    fluorine = next(m for m in molecules if "F" in m.elements)
    with pytest.raises(ValueError, match=r"molecule 184 has element\(s\) \['F'\]"):
        LinearBaseline().fit(no_fluorine).predict([fluorine])
    with pytest.raises(ValueError, match="before fit"):
        LinearBaseline().predict(molecules[:3])
    with pytest.raises(ValueError, match="rank-deficient"):
        LinearBaseline().fit(molecules[:1])


def test_bad_input_errors(molecules):
    water = next(m for m in molecules if m.elements == ("O", "H", "H"))
    chloro = moved(water, water.positions, ("O", "H", "Cl"))
    with pytest.raises(ValueError, match=rf"molecule {water.index}: atom 2 'Cl' is not one of"):
        atom_signals(chloro)
    with pytest.raises(ValueError, match="'Xx' is an unknown element"):
        atom_signals(moved(water, water.positions, ("O", "H", "Xx")))
    with pytest.raises(ValueError, match="'Cl'"):
        element_counts([chloro], ELEMENTS)
    with pytest.raises(ValueError, match="molecule 5 has no atoms"):
        atom_signals(Molecule((), np.zeros((0, 3)), 0.0, 5))
    with pytest.raises(ValueError, match="has no atoms"):
        element_counts([Molecule((), np.zeros((0, 3)), 0.0, 5)])
    same = water.positions.copy()
    same[2] = same[0]
    with pytest.raises(ValueError,
                       match=rf"molecule {water.index}: atoms 0 \(O\) and 2 \(H\) are at the same"):
        atom_signals(moved(water, same))
    for bad in (np.nan, np.inf):
        positions = water.positions.copy()
        positions[1, 2] = bad
        with pytest.raises(ValueError, match=rf"molecule {water.index}: atom 1 has a non-finite"):
            atom_signals(moved(water, positions))
    for bandwidth in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="bandwidth must be an int >= 1"):
            atom_signals(water, bandwidth=bandwidth)
    with pytest.raises(ValueError, match="unit vectors"):
        evaluate_signals(water, np.array([1.0, 1.0, 0.0]))
    with pytest.raises(ValueError, match="beta"):
        atom_signals(water, beta=0.0)
    with pytest.raises(ValueError, match="powers"):
        atom_signals(water, powers=())
    with pytest.raises(ValueError, match="shape"):
        molecule_kernel(np.zeros((3, 2)), np.array([0, 0]), np.array([0, 1]))
    assert atom_signals(water, bandwidth=1).shape == (3, 2, 2, 10)


def _linear_molecules(epsilon, count, seed):
    """Molecules whose energy is exactly Σ_e n_e ε_e (Hartree): random compositions of
    `epsilon`'s elements, random non-overlapping positions."""
    rng = np.random.default_rng(seed)
    symbols = list(epsilon)
    molecules = []
    for index in range(count):
        counts = rng.integers(0, 4, size=len(symbols))
        counts[rng.integers(len(symbols))] += 1
        elements = tuple(s for s, n in zip(symbols, counts) for _ in range(n))
        positions = (np.arange(len(elements))[:, None] * [1.3, 0.2, 0.1]
                     + rng.normal(scale=0.05, size=(len(elements), 3)))
        molecules.append(Molecule(elements, positions, float(counts @ [epsilon[s] for s in symbols]), index,
                                  f"m{index}.xyz"))
    return molecules


def test_linear_baseline_with_sulphur_and_chlorine_recovers_the_element_energies():
    """Energies exactly linear in the counts of H, C, O, S, Cl: the fit recovers every ε_e (the
    reference is the ε the energies were made from; the least-squares problem has 30 well-spread
    rows, so 1e-9 Hartree leaves room for rounding and nothing for a wrong column), and its
    columns are the elements of the data in atomic-number order, S and Cl included."""
    epsilon = {"Cl": -460.1, "H": -0.5, "S": -398.0, "C": -37.8, "O": -75.0}
    train, test = _linear_molecules(epsilon, 30, 0), _linear_molecules(epsilon, 10, 1)
    baseline = LinearBaseline().fit(train)
    assert baseline.elements == ("H", "C", "O", "S", "Cl")
    np.testing.assert_allclose(baseline.coefficients, [epsilon[e] for e in baseline.elements], rtol=0, atol=1e-9)
    np.testing.assert_allclose(baseline.residuals_kcal(test), 0.0, atol=1e-9 * HARTREE_TO_KCAL_PER_MOL * 10)
    wider = LinearBaseline(("H", "C", "N", "O", "F", "S", "Cl")).fit(train)  # channel elements of an experiment
    np.testing.assert_allclose(wider.predict(test), baseline.predict(test), rtol=1e-12)
    assert list(wider.seen) == [True, True, False, True, False, True, True]
    assert atom_signals(train[0], bandwidth=2, elements=baseline.elements).shape[-1] == 10
    organic = _linear_molecules({"H": -0.5, "C": -37.8, "O": -75.0}, 12, 2)
    plain = LinearBaseline().fit(organic[:10])
    thionyl = Molecule(("S", "O", "Cl", "Cl"), np.eye(4, 3) * 1.6, -1.0, 0, "socl2.xyz")
    with pytest.raises(ValueError, match=r"socl2.xyz has element\(s\) \['Cl', 'S'\] that no training molecule had"):
        plain.predict([*organic[10:], thionyl])


def test_elements_energies_and_names():
    methane = Molecule(("C", "H", "H", "H", "H"), np.eye(5, 3), -40.5, 1)
    assert methane.u0 == methane.energy == -40.5 and methane.label == "molecule 1"
    assert energies_kcal([methane]) == pytest.approx(-40.5 * 627.509474, rel=1e-15)
    mixed = [Molecule(("Cl", "C", "S"), np.eye(3), 0.0, 0, "a.xyz"), Molecule(("Br", "H"), np.eye(2, 3), 0.0, 1)]
    assert elements_of(mixed) == ("H", "C", "S", "Cl", "Br")
    for energy in (None, float("nan"), "1.0"):
        with pytest.raises(ValueError, match=r"^b.xyz has no energy"):
            energies_kcal([methane, Molecule(("H", "H"), np.eye(2, 3), energy, 2, "b.xyz")])
    with pytest.raises(ValueError, match=r"^b.xyz: unknown element 'Xx' \(not in the periodic table\)"):
        elements_of([Molecule(("H", "Xx"), np.eye(2, 3), 0.0, 2, "b.xyz")])
    with pytest.raises(ValueError, match=r"unknown element\(s\) \['Q'\] in elements \(not in the periodic table"):
        channel_elements(["H", "Q"])
    with pytest.raises(ValueError, match="duplicates"):
        channel_elements(["H", "S", "H"])
    with pytest.raises(ValueError, match=r"^b.xyz has no atoms"):
        element_counts([Molecule((), np.zeros((0, 3)), 0.0, 2, "b.xyz")], ["H"])
