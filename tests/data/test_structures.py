"""Readers of the user's molecules (raygram/data/structures.py) on structures no other test uses:
ASE's bundled G2 collection (162 molecules and atoms, H to Cl, S and Cl among them), written to
.xyz files, an ASE database and an ASE trajectory in tmp_path by ASE's own writers, with energies
from the experimental heats of formation (ΔHf at 298 K, kcal/mol) that ASE ships with G2
(`ase.data.g2_1`, `ase.data.g2_2`). The references are ASE's reads of the same files and the
values written; every bad input is one line naming the file (and line) and writes nothing.

EMT is not used: its parameters cover H, C, N, O and a few metals, not S or Cl."""
from __future__ import annotations

import csv
import sqlite3
import sys

import numpy as np
import pytest

from raygram.data import (ENERGY_UNITS, HARTREE_TO_KCAL_PER_MOL, PERIODIC_TABLE, hartree_per_unit, load_molecules,
                          read_energy_table, read_xyz)
from raygram.errors import ConfigError

ase = pytest.importorskip("ase")  # the `test` extra installs it

from ase.calculators.singlepoint import SinglePointCalculator  # noqa: E402
from ase.collections import g2  # noqa: E402
import ase.data.g2_1  # noqa: E402
import ase.data.g2_2  # noqa: E402
import ase.db  # noqa: E402
import ase.io  # noqa: E402
import ase.units  # noqa: E402

ENTHALPY = {name: row["enthalpy"] for module in (ase.data.g2_1, ase.data.g2_2) for name, row in module.data.items()}
"""G2's experimental ΔHf (298 K) in kcal/mol, by G2 name."""
SULPHUR_AND_CHLORINE = ["SH2", "CH3SH", "CH3SCH3", "CS2", "C4H4S", "SO2", "OCS", "CH3Cl", "CCl4", "HCl",
                        "H2CCl2", "CH3COCl"]
POSITIONS_ATOL = 1e-7  # Å: ASE's extxyz writer writes 8 decimals


def g2_molecule(name: str, energy: float | None = None):
    """A G2 molecule as ASE builds it, with `energy` (default ΔHf) as its calculator's energy."""
    atoms = g2[name]
    atoms.calc = SinglePointCalculator(atoms, energy=ENTHALPY[name] if energy is None else energy)
    return atoms


def write_g2(folder, names, style="extxyz"):
    """One .xyz file per G2 molecule, `<name>.xyz`, ΔHf (kcal/mol) as its energy:
    "extxyz": ASE's extended XYZ writer (`energy=<ΔHf>` on the comment line);
    "table": ASE's plain XYZ writer (empty comment line) and `energies.csv`, columns name, dHf, ZPE;
    "bare": our own lines, the comment line a bare number, elements as atomic numbers and in capitals.
    Returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        atoms = g2_molecule(name)
        if style == "extxyz":
            ase.io.write(folder / f"{name}.xyz", atoms, format="extxyz")
        elif style == "table":
            ase.io.write(folder / f"{name}.xyz", g2[name], format="xyz")
        else:
            tokens = [str(z) if i % 2 else s.upper() for i, (z, s) in
                      enumerate(zip(atoms.numbers, atoms.get_chemical_symbols()))]
            rows = [f"{t} {x!r} {y!r} {z!r}" for t, (x, y, z) in zip(tokens, atoms.positions.tolist())]
            (folder / f"{name}.xyz").write_text("\n".join([f"  {len(atoms)}", f" {ENTHALPY[name]!r} ", *rows, ""]))
    if style == "table":
        with open(folder / "energies.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["name", "dHf", "ZPE"])
            writer.writerows([f"{name}.xyz" if i % 2 else name, ENTHALPY[name], 1.0] for i, name in enumerate(names))
    return folder


def assert_same_as_g2(molecules, names):
    """The molecules are the G2 molecules `names` (file-name order), energies ΔHf in Hartree."""
    assert [m.name for m in molecules] == [f"{n}.xyz" for n in sorted(names)]
    assert [m.index for m in molecules] == list(range(len(names)))
    for molecule, name in zip(molecules, sorted(names)):
        assert molecule.elements == tuple(g2[name].get_chemical_symbols()), name
        np.testing.assert_allclose(molecule.positions, g2[name].positions, rtol=0, atol=POSITIONS_ATOL)
        # ΔHf is written as Python's repr of the float, so the conversion is the only rounding.
        assert molecule.energy == pytest.approx(ENTHALPY[name] / HARTREE_TO_KCAL_PER_MOL, rel=1e-14), name


def test_periodic_table_and_units_agree_with_ase():
    """Symbols: ASE's table exactly. Units: ase.units (CODATA 2014) against ours (CODATA 2018):
    the Hartree differs by 5e-9 relative between the two, so 1e-7."""
    assert PERIODIC_TABLE == tuple(ase.data.chemical_symbols[1:])
    assert ENERGY_UNITS["ev"] == pytest.approx(ase.units.Hartree, rel=1e-7)
    assert 1 / hartree_per_unit("kcal/mol") == pytest.approx(ase.units.Hartree / (ase.units.kcal / ase.units.mol),
                                                             rel=1e-7)
    assert 1 / hartree_per_unit("kJ/mol") == pytest.approx(ase.units.Hartree / (ase.units.kJ / ase.units.mol),
                                                           rel=1e-7)
    assert hartree_per_unit("HARTREE") == 1.0 and hartree_per_unit("eV") == 1 / ENERGY_UNITS["ev"]


@pytest.mark.parametrize("style", ["extxyz", "table", "bare"])
def test_a_folder_of_g2_xyz_files(tmp_path, style):
    """All 162 G2 entries (molecules and single atoms, H to Cl), in each of the three ways of
    giving the energies; every element and coordinate read back as ASE wrote it."""
    folder = write_g2(tmp_path / "g2", g2.names, style)
    table = folder / "energies.csv" if style == "table" else None
    molecules = load_molecules(folder, energy_file=table, energy_column="dHf" if table else None,
                               energy_unit="kcal/mol")
    assert_same_as_g2(molecules, g2.names)
    assert {"S", "Cl"} <= set().union(*(m.elements for m in molecules))
    assert [m.name for m in load_molecules(folder, energy_file=table, energy_column="dHf" if table else None,
                                           limit=5)] == [f"{n}.xyz" for n in sorted(g2.names)[:5]]


def test_energy_units_and_keys(tmp_path):
    folder = write_g2(tmp_path / "g2", SULPHUR_AND_CHLORINE)
    in_kcal = load_molecules(folder, energy_unit="kcal/mol")
    for unit, per_hartree in ENERGY_UNITS.items():  # the same numbers read in another unit
        other = load_molecules(folder, energy_unit=unit)
        np.testing.assert_allclose([m.energy * per_hartree for m in other],
                                   [m.energy * HARTREE_TO_KCAL_PER_MOL for m in in_kcal], rtol=1e-14)
    assert load_molecules(folder)[0].energy == ENTHALPY[sorted(SULPHUR_AND_CHLORINE)[0]]  # default: Hartree
    atoms = g2_molecule("SH2")
    atoms.info["U0"] = -399.4
    ase.io.write(tmp_path / "h2s.xyz", atoms, format="extxyz")  # comment: U0=-399.4 ... energy=-4.9
    assert read_xyz(tmp_path / "h2s.xyz", energy_column="U0").energy == -399.4
    assert read_xyz(tmp_path / "h2s.xyz").energy == ENTHALPY["SH2"]
    assert read_xyz(tmp_path / "h2s.xyz", energy_column="H").energy is None
    (tmp_path / "e.xyz").write_text("1\nE=-0.5 charge=0\nh 0 0 0\n\n\n")
    assert read_xyz(tmp_path / "e.xyz", energy_unit="eV", index=7).energy == -0.5 / ENERGY_UNITS["ev"]
    assert read_xyz(tmp_path / "e.xyz", index=7).label == "e.xyz"


def test_energy_tables(tmp_path):
    """Comma-, tab- and whitespace-separated tables; blank and # lines skipped."""
    (tmp_path / "e.csv").write_text("name,U0,H\n# comment\n\nh2s, -1.5 ,2\nch4.xyz,-2.5,3\n")
    assert read_energy_table(tmp_path / "e.csv", "U0") == {"h2s": -1.5, "ch4.xyz": -2.5}
    (tmp_path / "e.tsv").write_text("name\tU0\nh2s\t-1.5\n")
    assert read_energy_table(tmp_path / "e.tsv", energy_unit="kcal/mol") == {
        "h2s": pytest.approx(-1.5 / HARTREE_TO_KCAL_PER_MOL, rel=1e-15)}
    (tmp_path / "e.txt").write_text("name   U0 H\nh2s  -1.5  2\n")
    assert read_energy_table(tmp_path / "e.txt", "H") == {"h2s": 2.0}


def test_ase_database_and_trajectory(tmp_path):
    """A .db and a .traj written by ASE: calculator energies in eV (ASE's unit, the default),
    or a key of the rows / atoms.info named by energy_column."""
    names = SULPHUR_AND_CHLORINE[:6]
    with ase.db.connect(tmp_path / "g2.db") as database:
        for name in names:
            in_ev = ENTHALPY[name] * ase.units.kcal / ase.units.mol
            database.write(g2_molecule(name, energy=in_ev), dHf=ENTHALPY[name])
    molecules = load_molecules(tmp_path / "g2.db")
    assert [m.name for m in molecules] == [f"g2.db row {i}" for i in range(1, 7)]
    for molecule, name in zip(molecules, names):
        assert molecule.elements == tuple(g2[name].get_chemical_symbols())
        np.testing.assert_array_equal(molecule.positions, g2[name].positions)
        # eV -> Hartree with CODATA 2018 against ASE's kcal/mol of CODATA 2014: 1e-7.
        assert molecule.energy * HARTREE_TO_KCAL_PER_MOL == pytest.approx(ENTHALPY[name], rel=1e-7)
    by_key = load_molecules(tmp_path / "g2.db", energy_column="dHf", energy_unit="kcal/mol", limit=2)
    assert [m.energy * HARTREE_TO_KCAL_PER_MOL for m in by_key] == pytest.approx([ENTHALPY[n] for n in names[:2]],
                                                                                 rel=1e-14)
    frames = [g2_molecule(name, energy=-float(i)) for i, name in enumerate(names)]
    for atoms, name in zip(frames, names):
        atoms.info["dHf"] = ENTHALPY[name]
    ase.io.write(tmp_path / "g2.traj", frames)
    molecules = load_molecules(tmp_path / "g2.traj", energy_unit="hartree")
    assert [m.energy for m in molecules] == [-float(i) for i in range(6)]
    assert molecules[3].name == "g2.traj frame 3"
    assert molecules[3].elements == tuple(g2[names[3]].get_chemical_symbols())
    assert len(load_molecules(tmp_path / "g2.traj", limit=4)) == 4


def one_line_error(call, match):
    with pytest.raises(ConfigError, match=match) as caught:
        call()
    assert "\n" not in str(caught.value), str(caught.value)
    return str(caught.value)


XYZ_ERRORS = {
    "unknown element": ("2\nenergy=1\nC 0 0 0\nXx 0 0 1.2\n",
                        r"bad.xyz line 4: unknown element 'Xx' \(not in the periodic table\)"),
    "atomic number": ("1\n1\n119 0 0 0\n", r"bad.xyz line 3: atomic number 119 is not in the periodic table"),
    "coordinate": ("2\n-1.0\nC 0 0 0\nS 0 zero 1.2\n", r"bad.xyz line 4: a coordinate is not a number: 'zero'"),
    "non-finite": ("1\n-1.0\nS 0 nan 1.2\n", r"bad.xyz line 3: a coordinate is not finite: 'nan'"),
    "short line": ("1\n-1.0\nS 0 1.2\n", r"bad.xyz line 3: expected 'element x y z', got 'S 0 1.2'"),
    "count": ("two\n-1.0\nS 0 0 0\n", r"bad.xyz line 1: expected the number of atoms, got 'two'"),
    "empty file": ("", r"bad.xyz line 1: expected the number of atoms, got ''"),
    "no atoms": ("0\n-1.0\n", r"bad.xyz line 1: a molecule without atoms"),
    "too few": ("3\n-1.0\nS 0 0 0\nH 0 0 1.3\n", r"bad.xyz: line 1 says 3 atoms but the file has only 2 atom lines"),
    "two molecules": ("1\n-1\nS 0 0 0\n1\n-2\nS 0 0 0\n",
                      r"bad.xyz line 4: text after the 1 atoms of line 1 \(one molecule"),
    "bad energy": ("1\nenergy=high\nS 0 0 0\n", r"bad.xyz line 2: energy is not a number: 'high'"),
    "infinite energy": ("1\ninf\nS 0 0 0\n", r"bad.xyz line 2: the energy is not finite: 'inf'"),
    "no energy": ("1\nhydrogen sulphide\nS 0 0 0\n",
                  r"bad.xyz line 2: no energy \(neither a number nor energy=<value>\)"),
}


@pytest.mark.parametrize("case", XYZ_ERRORS)
def test_xyz_errors_name_the_file_and_line(tmp_path, case):
    folder = write_g2(tmp_path / "g2", ["SH2", "CH3Cl"])
    text, match = XYZ_ERRORS[case]
    (folder / "bad.xyz").write_text(text)
    one_line_error(lambda: load_molecules(folder), match)


def test_other_input_errors_are_one_line_and_write_nothing(tmp_path, monkeypatch):
    folder = write_g2(tmp_path / "g2", ["SH2", "CH3Cl", "CCl4"], style="table")
    table = folder / "energies.csv"
    (tmp_path / "binary.xyz").write_bytes(b"\xff\xfe\x00")
    one_line_error(lambda: read_xyz(tmp_path / "binary.xyz"), r"binary.xyz: not a text file")
    one_line_error(lambda: load_molecules(folder), r"CCl4.xyz line 2: no energy .* name a table in energy_file")
    one_line_error(lambda: load_molecules(folder, energy_file=table), r"energies.csv has the columns \['name', "
                    r"'dHf', 'ZPE'\]: name the energy column \(energy_column\)")
    one_line_error(lambda: load_molecules(folder, energy_file=table, energy_column="U0"),
                    r"energies.csv has no column 'U0'; its columns: \['name', 'dHf', 'ZPE'\]")
    one_line_error(lambda: load_molecules(folder, energy_file=tmp_path / "none.csv"), r"none.csv does not exist")
    one_line_error(lambda: load_molecules(folder, energy_file=table, energy_column="dHf", energy_unit="Ry"),
                    r"energy_unit must be one of hartree, eV, kcal/mol, kJ/mol; got 'Ry'")
    lines = table.read_text().splitlines()
    for edited, match in [
            (lines[:2] + lines[3:], r"energies.csv has no energy for CH3Cl.xyz"),
            (lines + [lines[1]], r"energies.csv line 5: 'SH2' already has an energy on line 2"),
            (lines + ["SO2,abc,1"], r"energies.csv line 5: dHf of 'SO2' is not a number: 'abc'"),
            (lines + ["SO2,1"], r"energies.csv line 5: 2 fields, the header has 3"),
            (["# nothing"], r"energy file .*energies.csv is empty")]:
        table.write_text("\n".join(edited) + "\n")
        one_line_error(lambda: load_molecules(folder, energy_file=table, energy_column="dHf"), match)
    one_line_error(lambda: load_molecules(tmp_path / "missing"), r"missing does not exist")
    one_line_error(lambda: load_molecules(table), r"energies.csv is neither a folder of .xyz files nor an ASE")
    (tmp_path / "empty").mkdir()
    one_line_error(lambda: load_molecules(tmp_path / "empty"), r"empty has no .xyz files")
    one_line_error(lambda: load_molecules(folder, limit=0), r"limit must be an integer >= 1 or None, got 0")

    # ASE files: not ASE's, without energies, periodic, with energy_file, and without ase installed.
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as connection:
        connection.execute("CREATE TABLE t (x)")
    before = other.read_bytes()
    one_line_error(lambda: load_molecules(other), r"other.db: not an ASE database \(it has no table 'systems'\)")
    (tmp_path / "text.db").write_text("not sqlite")
    one_line_error(lambda: load_molecules(tmp_path / "text.db"), r"text.db: not an ASE database")
    (tmp_path / "text.traj").write_text("not a trajectory")
    one_line_error(lambda: load_molecules(tmp_path / "text.traj"), r"text.traj: not a readable ASE .traj file")
    assert other.read_bytes() == before and (tmp_path / "text.db").read_text() == "not sqlite"
    with ase.db.connect(tmp_path / "plain.db") as database:
        database.write(g2["SH2"])
        crystal = g2["CS2"]
        crystal.pbc, crystal.cell = True, np.eye(3) * 5
        database.write(crystal)
    one_line_error(lambda: load_molecules(tmp_path / "plain.db"), r"plain.db row 1: no energy \(name its key")
    one_line_error(lambda: load_molecules(tmp_path / "plain.db", energy_file=table),
                    r"energy_file is for folders of .xyz files; plain.db keeps its energies in its rows")
    with ase.db.connect(tmp_path / "crystal.db") as database:
        database.write(crystal, energy_key=1.0)
    one_line_error(lambda: load_molecules(tmp_path / "crystal.db", energy_column="energy_key"),
                    r"crystal.db row 1: periodic boundary conditions \[True, True, True\]; a molecule has none")
    for module in ("ase", "ase.db", "ase.io"):
        monkeypatch.setitem(sys.modules, module, None)  # as if ase were not installed
    one_line_error(lambda: load_molecules(tmp_path / "plain.db"), r"^reading .db needs ase: pip install ase$")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "binary.xyz", "crystal.db", "empty", "g2", "other.db", "plain.db", "text.db", "text.traj"]
