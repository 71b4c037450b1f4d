"""An experiment's molecular data (raygram/data/molecule_data.py): the user's molecules with S and
Cl (ASE's G2 set, written by ASE in tmp_path, energies the experimental heats of formation ASE
ships with G2; see test_structures.py), the example folder of configs/molecules_example.yaml,
QM9 through the same preparation, every bad input one line, and an SO(3) experiment end to end
(build and solve on a real local Ray, stores and MLflow in tmp_path)."""
from __future__ import annotations

import dataclasses
import math
import pathlib

import numpy as np
import pytest

from raygram import load_config
from raygram.config import DataOptions
from raygram.data import HARTREE_TO_KCAL_PER_MOL, Molecule, dh_directions, load_molecules, load_qm9, prepare_molecules

pytest.importorskip("ase")  # the `test` extra installs it
from ase.collections import g2  # noqa: E402
from test_structures import ENTHALPY, one_line_error, write_g2  # noqa: E402 - tests/data is on sys.path

ROOT = pathlib.Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "configs" / "molecules_example.yaml"
# Every G2 molecule of H, C, O, S and Cl with S or Cl and at most 10 atoms, but for three.
NAMES = ["SH2", "CH3SH", "CH3SCH3", "CS2", "C4H4S", "SO2", "OCS", "CH3CH2SH", "CH2SCH2", "C2H6SO", "CS", "S2",
         "HCCl3", "HOCl", "CH3Cl", "CCl4", "HCl", "H2CCl2", "CH3CH2Cl", "CH3COCl", "C2Cl4", "Cl2"]
ELEMENTS = ("H", "C", "O", "S", "Cl")  # of NAMES, by atomic number
SIZES = {"train_sizes": (8, 12), "validation_size": 2, "test_size": 6}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_g2(tmp_path_factory.mktemp("data") / "g2", NAMES)


def spec(folder, seed=2, **changes):
    """Seed 2 puts S and Cl molecules in the smallest training set and in the test set."""
    options = {"bandwidth": 2, "energy_unit": "kcal/mol", **changes.pop("options", {})}
    path = None if folder is None else str(folder)
    return DataOptions(**{"source": "molecules", "path": path, "options": options, "seed": seed, **SIZES, **changes})


def reference_signals(elements, positions, channels, bandwidth=2, powers=(2, 6), beta=0.5):
    """The signal formula term by term (molecules.py's docstring), (atoms, 2L, 2L, channels)."""
    numbers = {"H": 1, "C": 6, "O": 8, "S": 16, "Cl": 17}
    grid = dh_directions(bandwidth)
    out = np.zeros((len(elements), 2 * bandwidth, 2 * bandwidth, len(channels) * len(powers)))
    for i, j in ((i, j) for i in range(len(elements)) for j in range(len(elements)) if i != j):
        offset = positions[j] - positions[i]
        r = np.linalg.norm(offset)
        for q, p in enumerate(powers):
            charge = numbers[elements[i]] * numbers[elements[j]] / 36
            out[i, ..., channels.index(elements[j]) * len(powers) + q] += (
                charge * (r / 1.5) ** -p * np.exp(-((grid @ (offset / r)) - 1) ** 2 / beta))
    return out


def test_prepared_g2_molecules_with_sulphur_and_chlorine(folder):
    data = prepare_molecules(spec(folder))
    assert data.task == "regression" and data.validation == 2
    chosen = data.molecules_train + data.molecules_test
    atoms = max(len(m.elements) for m in chosen)  # padded to the largest chosen molecule
    assert data.x_train.shape == (12, atoms, 4, 4, 2 * len(ELEMENTS) + 1) and data.x_test.shape == (8, atoms, 4, 4, 11)
    assert len({m.name for m in chosen}) == 20 and {m.name for m in chosen} <= {f"{n}.xyz" for n in NAMES}
    for part in (data.molecules_train[:8], data.molecules_test[2:]):  # smallest training set, test set
        assert {"S", "Cl"} <= set().union(*(m.elements for m in part))
    assert data.fingerprint["name"] == "g2" and data.fingerprint["elements"] == list(ELEMENTS)
    x = np.concatenate([data.x_train, data.x_test])
    for row, molecule in enumerate(chosen):
        name = molecule.name.removesuffix(".xyz")
        atoms = len(g2[name])
        # Rows hold ASE's molecule: its atoms (mask 1), then padding (all 0); the signals as the
        # formula gives them from ASE's positions (read back from 8 decimals: 1e-6 absolute).
        np.testing.assert_array_equal(x[row, :atoms, ..., -1], 1.0)
        np.testing.assert_array_equal(x[row, atoms:], 0.0)
        reference = reference_signals(g2[name].get_chemical_symbols(), g2[name].positions, ELEMENTS)
        np.testing.assert_allclose(x[row, :atoms, ..., :-1], reference, rtol=1e-6, atol=1e-6)
        assert molecule.energy * HARTREE_TO_KCAL_PER_MOL == pytest.approx(ENTHALPY[name], rel=1e-14)
    # Named channel elements: more channels (N and F stay zero), the same molecules.
    wider = prepare_molecules(spec(folder, options={"elements": ["H", "C", "N", "O", "F", "S", "Cl"]}))
    assert wider.x_train.shape[-1] == 15 and [m.name for m in wider.molecules_test] == [
        m.name for m in data.molecules_test]
    np.testing.assert_array_equal(wider.x_train[..., [4, 5, 8, 9]], 0.0)
    # Molecules given in Python (here read by load_molecules): the same data as from their folder.
    given = prepare_molecules(DataOptions(source="molecules", options={"bandwidth": 2}, seed=2, **SIZES),
                              load_molecules(folder, energy_unit="kcal/mol"))
    np.testing.assert_array_equal(given.x_train, data.x_train)
    np.testing.assert_array_equal(given.x_test, data.x_test)
    assert given.fingerprint["name"] == "molecules" and given.fingerprint["sha256"] == data.fingerprint["sha256"]


def test_the_example_config_reads_its_folder(monkeypatch):
    """configs/molecules_example/: 20 G2 molecules written with 6 decimals (5e-7 Å rounding) and
    their heats of formation in energies.csv (kcal/mol)."""
    monkeypatch.chdir(ROOT)  # the example's energy_file is relative to the working directory
    config = load_config(EXAMPLE)
    data = prepare_molecules(config.data)
    assert config.data.source == "molecules" and data.fingerprint["elements"] == list(ELEMENTS)
    assert len(data.molecules_train) == 12 and len(data.molecules_test) == 8
    for molecule in data.molecules_train + data.molecules_test:
        name = molecule.name.removesuffix(".xyz")
        assert molecule.elements == tuple(g2[name].get_chemical_symbols())
        np.testing.assert_allclose(molecule.positions, g2[name].positions, rtol=0, atol=5e-7 + 1e-12)
        assert molecule.energy * HARTREE_TO_KCAL_PER_MOL == pytest.approx(ENTHALPY[name], rel=1e-14)


def test_qm9_is_one_user_of_the_same_preparation():
    """QM9 from the qm9pack wheel: QM9's five channel elements by default; molecules made of
    other elements than `elements` are left out (QM9's documented behaviour); null: the data's."""
    pytest.importorskip("qm9pack")
    qm9 = {"source": "qm9", "train_sizes": (20, 40), "test_size": 20, "seed": 0}
    data = prepare_molecules(DataOptions(**qm9, options={"bandwidth": 2, "molecules": 300}))
    assert data.x_train.shape[-1] == 11 and data.fingerprint["elements"] == ["H", "C", "N", "O", "F"]
    first = data.molecules_train[0]
    reference = load_qm9(limit=300)
    assert first.name is None and any(m.index == first.index and m.energy == first.energy for m in reference)
    no_fluorine = prepare_molecules(DataOptions(**qm9, options={"bandwidth": 2, "molecules": 300,
                                                                  "elements": ["H", "C", "N", "O"]}))
    assert no_fluorine.x_train.shape[-1] == 9
    assert not any("F" in m.elements for m in no_fluorine.molecules_train + no_fluorine.molecules_test)
    own = prepare_molecules(DataOptions(**qm9, options={"bandwidth": 2, "molecules": 300, "elements": None}))
    assert own.fingerprint["elements"] == ["H", "C", "N", "O", "F"]  # CF4 and others are among the first 300


def test_bad_molecular_data_is_one_line(folder, tmp_path):
    cases = [
        (spec(folder, source="digits"), r"data.source: molecules come from \['molecules', 'qm9'\], got 'digits'"),
        (spec(folder, options={"size": 3}), r"data.options: unknown key\(s\) \['size'\] for source molecules"),
        (spec(None), r"data.path: source molecules needs a folder of .xyz files or an ASE .db or .traj file"),
        (spec(folder, source="qm9", options={"energy_unit": None}),
         r"data.options: unknown key\(s\) \['energy_unit'\] for source qm9"),
        (DataOptions(source="qm9", path=str(folder), **SIZES), r"data.path: source qm9 reads the qm9pack wheel; "
                                                                r"must be null"),
        (spec(folder, test_transform="C4"), r"data.test_transform: must be null for molecules"),
        (spec(folder, options={"molecules": 0}), r"data.options.molecules: must be an integer >= 1 or null, got 0"),
        (spec(folder, options={"elements": "HCOSCl"}), r"data.options.elements: must be a list of element symbols"),
        (spec(folder, options={"elements": ["H", "C", "O", "S", "Kl"]}),
         r"data.options.elements: unknown element\(s\) \['Kl'\] in elements \(not in the periodic table\)"),
        (spec(folder, options={"elements": ["H", "C", "O", "S"]}),
         r"data.options.elements: C2Cl4.xyz has \['Cl'\], not one of \['H', 'C', 'O', 'S'\]"),
        (spec(folder, options={"energy_unit": "Ry"}), r"data.options.energy_unit must be one of hartree, eV"),
        (spec(folder, options={"energy_unit": "eV", "energy_file": str(tmp_path / "e.csv")}),
         r"data: energy file .*e.csv does not exist"),
        (spec(folder, train_sizes=(8, 20)), r"data.train_sizes: the largest training size 20 plus validation_size 2 "
                                            r"and test_size 6 exceeds the 22 molecules of g2"),
        (spec(folder, seed=1), r"data.train_sizes: the smallest training set \(8 molecules\) has no \['O'\] but the "
                               r"held-out molecules do, .* use larger training sizes or another seed$"),
    ]
    for options, match in cases:
        one_line_error(lambda: prepare_molecules(options), match)
    bad = write_g2(tmp_path / "bad", NAMES[:4])
    (bad / "X.xyz").write_text("1\n-3.0\nQq 0 0 0\n")
    one_line_error(lambda: prepare_molecules(spec(bad, train_sizes=(1,), validation_size=0, test_size=1)),
                    r"^data: .*X.xyz line 3: unknown element 'Qq' \(not in the periodic table\)$")
    molecules = [Molecule(("S", "H", "H"), np.eye(3) * 1.3, -0.4, i, f"m{i}") for i in range(4)]
    small = {"train_sizes": (2,), "test_size": 2}
    one_line_error(lambda: prepare_molecules(spec(folder, **small), molecules), r"data: the molecules are given, "
                                                                                 r"so \['path'\] must be null")
    one_line_error(lambda: prepare_molecules(spec(None, **small), molecules),
                    r"data: the molecules are given, so \['energy_unit'\] must be null")
    given = DataOptions(source="molecules", options={"bandwidth": 2}, **small)
    no_energy = [*molecules[:3], dataclasses.replace(molecules[3], energy=None)]
    one_line_error(lambda: prepare_molecules(given, no_energy), r"^data: m3 has no energy \(got None\)")
    no_atoms = [*molecules[:3], Molecule((), np.zeros((0, 3)), -1.0, 3, "m3")]
    one_line_error(lambda: prepare_molecules(given, no_atoms), r"m3 has no atoms")
    twins = [*molecules[:3], Molecule(("S", "H"), np.zeros((2, 3)), -1.0, 3, "m3")]
    one_line_error(lambda: prepare_molecules(given, twins), r"^data: m3: atoms 0 \(S\) and 1 \(H\) are at the same")
    one_line_error(lambda: prepare_molecules(given, []), r"^data: no molecules$")
    one_line_error(lambda: prepare_molecules(given, molecules),  # every molecule is H2S: H and S inseparable
                    r"^data.train_sizes: 2 training molecules: the element counts .* of \['H', 'S'\] "
                    r"\(rank-deficient\)")


def test_so3_experiment_on_user_molecules_with_sulphur_and_chlorine(ray_address, tmp_path, folder):
    """configs/molecules_example.yaml (SO(3) and MLP kernels, grid bandwidth 2) on the G2 folder of
    this module, energies on the .xyz comment lines: builds and solves with S and Cl in training and
    test, every MAE finite, and the per-element baseline's test MAE (recorded as baseline_mae, kcal/mol)
    equal to an independent least-squares fit of ΔHf on the element counts ASE gives. Both sides
    fit the same numbers, once through Hartree, so 1e-9 relative leaves room for rounding only."""
    import mlflow

    from raygram.experiment import run_experiment

    tracking = f"sqlite:///{tmp_path}/mlflow.db"
    config = load_config(EXAMPLE, [f"data.path={folder}", "data.options={bandwidth: 2, energy_unit: kcal/mol}",
                                   "data.seed=2", f"store={tmp_path}/stores", f"tracking.uri={tracking}"])
    data = prepare_molecules(config.data)
    result = run_experiment(config, data, progress=False)
    records = result["records"]
    assert result["task"] == "regression"
    times = len({r["time_step"] for r in records})  # solver.times: auto (the default)
    assert times == 11 and len(records) == 2 * 2 * len(config.solver.diag_reg) * times  # kernels x sizes x ridges x times
    assert {(r["kernel"], r["train_size"]) for r in records} == {(k, n) for k in ("so3", "mlp") for n in (8, 12)}
    assert all(math.isfinite(r["mae"]) and r["mae"] > 0 for r in records), records
    test = [m.name.removesuffix(".xyz") for m in data.molecules_test[2:]]
    for size in (8, 12):
        train = [m.name.removesuffix(".xyz") for m in data.molecules_train[:size]]
        counts = np.array([[g2[n].get_chemical_symbols().count(e) for e in ELEMENTS] for n in train + test], float)
        epsilon = np.linalg.lstsq(counts[:size], [ENTHALPY[n] for n in train], rcond=None)[0]
        expected = np.abs(np.array([ENTHALPY[n] for n in test]) - counts[size:] @ epsilon).mean()
        for record in (r for r in records if r["train_size"] == size):
            assert record["baseline_mae"] == pytest.approx(expected, rel=1e-9), (size, record)
    parent = mlflow.MlflowClient(tracking).get_run(result["run_id"])
    assert parent.info.status == "FINISHED" and parent.data.params["data.source"] == "molecules"
