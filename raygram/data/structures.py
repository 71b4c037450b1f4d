"""Molecules from the user's own files: a folder of .xyz files, an ASE database or trajectory.

What: `Molecule` (element symbols, positions in Ångström, energy in Hartree), the periodic
table, the energy units a user may name, and the readers: `read_xyz` (one .xyz file),
`read_energy_table` (energies keyed by file name) and `load_molecules`, which turns a
folder of .xyz files, an ASE database (.db) or an ASE trajectory (.traj) into molecules.

Why: QM9 (`qm9.py`) is one source of molecules among many. Every source yields the same
`Molecule`, so the featurisation (`molecules.py`) and an experiment's preparation
(`molecule_data.py`) serve them all. Energies are converted to Hartree once, here, from
the unit the user names; the experiments report kcal/mol.

The .xyz format read here: line 1 the number of atoms; line 2 a comment; then one line per
atom, `element x y z` (Å; the element as a symbol in any case, or an atomic number; further
columns, as in extended XYZ, are ignored); one molecule per file. A molecule's energy comes
from its comment line, either a bare number (`-40.47893`) or a `key=value` pair as extended
XYZ writes them (`energy=-40.47893`, `E=...`, or the key named by `energy_column`), or from
an energy table keyed by file name. Bad input is one `ConfigError` line that names the
file (and the line).
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import math
import os
import re
from pathlib import Path

import numpy as np

from raygram.errors import ConfigError

__all__ = ["Molecule", "PERIODIC_TABLE", "ATOMIC_NUMBERS", "HARTREE_TO_KCAL_PER_MOL", "ENERGY_UNITS",
           "hartree_per_unit", "read_xyz", "read_energy_table", "load_molecules"]

PERIODIC_TABLE = tuple("""
    H He Li Be B C N O F Ne Na Mg Al Si P S Cl Ar K Ca Sc Ti V Cr Mn Fe Co Ni Cu Zn Ga Ge As Se Br Kr
    Rb Sr Y Zr Nb Mo Tc Ru Rh Pd Ag Cd In Sn Sb Te I Xe Cs Ba La Ce Pr Nd Pm Sm Eu Gd Tb Dy Ho Er Tm Yb
    Lu Hf Ta W Re Os Ir Pt Au Hg Tl Pb Bi Po At Rn Fr Ra Ac Th Pa U Np Pu Am Cm Bk Cf Es Fm Md No Lr Rf
    Db Sg Bh Hs Mt Ds Rg Cn Nh Fl Mc Lv Ts Og""".split())
"""Element symbols in order of atomic number, H (1) to Og (118)."""
ATOMIC_NUMBERS = {symbol: z for z, symbol in enumerate(PERIODIC_TABLE, start=1)}

HARTREE_TO_KCAL_PER_MOL = 627.509474
ENERGY_UNITS = {"hartree": 1.0, "ev": 27.211386245988, "kcal/mol": HARTREE_TO_KCAL_PER_MOL,
                "kj/mol": 2625.4996394799}
"""Units per Hartree (CODATA 2018), by lower-case unit name: energy_in_unit = hartree × value."""
ASE_SUFFIXES = (".db", ".traj")
_DEFAULT_KEYS = ("energy", "e")  # comment-line keys tried, case-insensitively, when no energy_column is named
_PAIR = re.compile(r"""([A-Za-z_][\w.:-]*)\s*=\s*("[^"]*"|'[^']*'|[^\s"']+)""")


@dataclasses.dataclass(frozen=True, eq=False)
class Molecule:
    """One molecule: its atoms, their positions and its energy.

    Attributes:
      elements: element symbols, one per atom, e.g. ("C", "H", "H", "H", "H").
      positions: float64 (atoms, 3), Ångström.
      energy: the energy in Hartree (× HARTREE_TO_KCAL_PER_MOL for kcal/mol); None where
        the source has none. For QM9 it is U0, the internal energy at 0 K.
      index: the molecule's number in its source: the GDB-9 index for QM9 (1 for methane),
        the position in file order for the user's files (from 0).
      name: where the molecule comes from (e.g. "h2s.xyz", "mols.db row 3"); None for QM9.
    """

    elements: tuple[str, ...]
    positions: np.ndarray
    energy: float | None
    index: int
    name: str | None = None

    @property
    def u0(self) -> float | None:
        """QM9's name for `energy` (U0, Hartree)."""
        return self.energy

    @property
    def label(self) -> str:
        """How messages name the molecule: its name, else "molecule <index>"."""
        return self.name or f"molecule {self.index}"

    def __repr__(self) -> str:
        return f"Molecule({self.label}, {''.join(self.elements)}, energy={self.energy})"


def hartree_per_unit(unit: str) -> float:
    """Hartree per one `unit` of energy: multiply a value in `unit` by this for Hartree.

    Args:
      unit: hartree, eV, kcal/mol or kJ/mol (any case).

    Returns:
      The factor, e.g. 1 / 27.211386245988 for eV.

    Raises:
      ConfigError: an unknown unit.
    """
    if not isinstance(unit, str) or unit.lower() not in ENERGY_UNITS:
        raise ConfigError(f"energy_unit must be one of hartree, eV, kcal/mol, kJ/mol; got {unit!r}")
    return 1.0 / ENERGY_UNITS[unit.lower()]


def _number(text: str, where: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"{where}: {what} is not a number: {text!r}") from None
    if not math.isfinite(value):
        raise ConfigError(f"{where}: {what} is not finite: {text!r}")
    return value


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _element(token: str, where: str) -> str:
    """The element symbol of an .xyz token: a symbol in any case ("CL", "cl") or an atomic number."""
    if token.isdigit():
        if 1 <= int(token) <= len(PERIODIC_TABLE):
            return PERIODIC_TABLE[int(token) - 1]
        raise ConfigError(f"{where}: atomic number {token} is not in the periodic table (1 to {len(PERIODIC_TABLE)})")
    symbol = token[:1].upper() + token[1:].lower()
    if symbol not in ATOMIC_NUMBERS:
        raise ConfigError(f"{where}: unknown element {token!r} (not in the periodic table)")
    return symbol


def _xyz_lines(file: Path) -> list[str]:
    try:
        return file.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise ConfigError(f"{file}: not a text file (not UTF-8)") from None
    except OSError as e:
        raise ConfigError(f"{file}: cannot be read ({e.strerror or e})") from None


def _xyz_atoms(lines: list[str], file: Path) -> tuple[tuple[str, ...], np.ndarray]:
    """(elements, positions (A, 3)) of an .xyz file's lines, every line checked."""
    first = lines[0].strip() if lines else ""
    if not first.isdigit():
        raise ConfigError(f"{file} line 1: expected the number of atoms, got {first[:60]!r}")
    count = int(first)
    if count == 0:
        raise ConfigError(f"{file} line 1: a molecule without atoms (0 atoms)")
    atom_lines = lines[2:2 + count]
    if len(atom_lines) < count:
        raise ConfigError(f"{file}: line 1 says {count} atoms but the file has only {len(atom_lines)} atom lines")
    elements, positions = [], []
    for number, line in enumerate(atom_lines, start=3):
        where, fields = f"{file} line {number}", line.split()
        if len(fields) < 4:
            raise ConfigError(f"{where}: expected 'element x y z', got {line.strip()[:60]!r}")
        elements.append(_element(fields[0], where))
        positions.append([_number(text, where, "a coordinate") for text in fields[1:4]])
    extra = next((n for n, line in enumerate(lines[2 + count:], start=3 + count) if line.strip()), None)
    if extra is not None:
        raise ConfigError(f"{file} line {extra}: text after the {count} atoms of line 1 (one molecule per .xyz "
                          f"file): {lines[extra - 1].strip()[:60]!r}")
    return tuple(elements), np.array(positions, dtype=np.float64)


def _comment_energy(comment: str, key: str | None, where: str) -> float | None:
    """The energy on an .xyz comment line, in the file's unit, or None if it holds none."""
    text = comment.strip()
    if key is None and _is_float(text):
        return _number(text, where, "the energy")
    pairs = {name: value.strip("\"'") for name, value in _PAIR.findall(text)}
    found = [name for name in pairs if (name == key if key is not None else name.lower() in _DEFAULT_KEYS)]
    return _number(pairs[found[0]], where, found[0]) if found else None


def read_xyz(path: str | os.PathLike, *, energy_column: str | None = None, energy_unit: str = "hartree",
             index: int = 0) -> Molecule:
    """One molecule from an .xyz file (the format is in the module docstring).

    Args:
      path: the .xyz file.
      energy_column: the comment-line key that holds the energy (e.g. "U0" for `U0=-40.4`);
        None: a bare number, or the key `energy` or `E` (any case).
      energy_unit: the unit of that energy: hartree, eV, kcal/mol or kJ/mol.
      index: the molecule's `index`.

    Returns:
      The `Molecule`, named by the file name; its energy in Hartree, None if the comment
      line holds none.

    Raises:
      ConfigError: an unreadable file, a malformed line (named with its number), an unknown
        element, no atoms, or an energy that is not a finite number.
    """
    file = Path(path)
    factor = hartree_per_unit(energy_unit)
    lines = _xyz_lines(file)
    elements, positions = _xyz_atoms(lines, file)
    energy = _comment_energy(lines[1], energy_column, f"{file} line 2")
    return Molecule(elements, positions, None if energy is None else energy * factor, index, file.name)


def _table_rows(file: Path) -> list[tuple[int, list[str]]]:
    """(line number, fields) of a table's non-blank, non-comment lines: comma-separated for .csv,
    tab-separated for .tsv, otherwise whitespace-separated."""
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"energy file {file} cannot be read ({getattr(e, 'strerror', None) or e})") from None
    lines = text.splitlines()
    if file.suffix.lower() in (".csv", ".tsv"):
        delimiter = "," if file.suffix.lower() == ".csv" else "\t"
        fields = [[f.strip() for f in row] for row in csv.reader(lines, delimiter=delimiter)]
    else:
        fields = [line.split() for line in lines]
    return [(n, row) for n, row in enumerate(fields, start=1) if any(row) and not row[0].startswith("#")]


def read_energy_table(path: str | os.PathLike, energy_column: str | None = None,
                      energy_unit: str = "hartree") -> dict[str, float]:
    """Energies by molecule name from a table with a header row.

    The first column names the molecule (its file name, with or without `.xyz`); the
    energy is in the column `energy_column`. Comma-separated for `.csv`, tab-separated for
    `.tsv`, otherwise whitespace-separated; blank lines and lines starting with `#` are
    skipped.

    Args:
      path: the table file.
      energy_column: the header of the energy column; None: the second column of a
        two-column table.
      energy_unit: the unit of the energies: hartree, eV, kcal/mol or kJ/mol.

    Returns:
      {name as written in the first column: energy in Hartree}.

    Raises:
      ConfigError: a missing file, no such column, a row of the wrong length, a name that
        appears twice, or an energy that is not a finite number (named with its line).
    """
    file = Path(path)
    factor = hartree_per_unit(energy_unit)
    if not file.is_file():
        raise ConfigError(f"energy file {file} does not exist")
    rows = _table_rows(file)
    if not rows:
        raise ConfigError(f"energy file {file} is empty")
    (_, header), body = rows[0], rows[1:]
    if energy_column is None and len(header) != 2:
        raise ConfigError(f"energy file {file} has the columns {header}: name the energy column (energy_column)")
    if energy_column is not None and energy_column not in header[1:]:
        raise ConfigError(f"energy file {file} has no column {energy_column!r}; its columns: {header}")
    column = 1 if energy_column is None else header.index(energy_column, 1)
    energies, lines = {}, {}
    for number, row in body:
        where = f"{file} line {number}"
        if len(row) != len(header):
            raise ConfigError(f"{where}: {len(row)} fields, the header has {len(header)}")
        if row[0] in energies:
            raise ConfigError(f"{where}: {row[0]!r} already has an energy on line {lines[row[0]]}")
        energies[row[0]] = _number(row[column], where, f"{header[column]} of {row[0]!r}") * factor
        lines[row[0]] = number
    return energies


def load_molecules(path: str | os.PathLike, *, energy_file: str | os.PathLike | None = None,
                   energy_column: str | None = None, energy_unit: str | None = None,
                   limit: int | None = None) -> list[Molecule]:
    """The molecules of a folder of .xyz files, an ASE database (.db) or an ASE trajectory (.traj).

    A folder: every `*.xyz` file in it (not its subfolders), one molecule each, in file-name
    order, each named by its file name; energies from the comment lines (`read_xyz`) or,
    with `energy_file`, from that table (`read_energy_table`), which then must name every
    file. A .db or .traj file (needs `ase`): every row or frame, named "<file> row <id>" or
    "<file> frame <i>", energies from the stored calculator results (or the key
    `energy_column` of the row / `atoms.info`).

    Args:
      path: the folder, .db or .traj file.
      energy_file: a table of energies keyed by file name (folders only).
      energy_column: the comment-line key, table column or ASE key that holds the energy;
        None: see `read_xyz`, `read_energy_table`, or the calculator's energy.
      energy_unit: hartree, eV, kcal/mol or kJ/mol; None: each format's convention,
        Hartree for .xyz files and tables (as QM9), eV for ASE files (as ASE).
      limit: read only the first `limit` molecules; None: all.

    Returns:
      The molecules (energies in Hartree), in file order.

    Raises:
      ConfigError: a missing or unsupported path, a folder without .xyz files, an ASE file
        without `ase` installed, any malformed file, unknown element or molecule without
        atoms (named with file and line), or a molecule without an energy (named).
    """
    source = Path(path)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"limit must be an integer >= 1 or None, got {limit!r}")
    if source.is_dir():
        unit = "hartree" if energy_unit is None else energy_unit
        return _xyz_folder(source, energy_file, energy_column, unit, limit)
    if source.suffix.lower() in ASE_SUFFIXES and source.is_file():
        if energy_file is not None:
            raise ConfigError(f"energy_file is for folders of .xyz files; {source.name} keeps its energies in "
                              f"its rows (name the key with energy_column)")
        return _ase_molecules(source, energy_column, "ev" if energy_unit is None else energy_unit, limit)
    if not source.exists():
        raise ConfigError(f"{source} does not exist")
    raise ConfigError(f"{source} is neither a folder of .xyz files nor an ASE database (.db) or trajectory (.traj)")


def _xyz_folder(folder: Path, energy_file, energy_column, energy_unit: str, limit) -> list[Molecule]:
    files = sorted(f for f in folder.iterdir() if f.suffix.lower() == ".xyz" and f.is_file())
    if not files:
        raise ConfigError(f"{folder} has no .xyz files")
    table = None if energy_file is None else read_energy_table(energy_file, energy_column, energy_unit)
    molecules = []
    for index, file in enumerate(files[:limit]):
        if table is None:
            molecule = read_xyz(file, energy_column=energy_column, energy_unit=energy_unit, index=index)
            if molecule.energy is None:
                raise ConfigError(f"{file} line 2: no energy (neither a number nor {energy_column or 'energy'}"
                                  f"=<value>); write it there or name a table in energy_file")
        else:
            energy = table.get(file.name, table.get(file.stem))
            if energy is None:
                raise ConfigError(f"energy file {energy_file} has no energy for {file.name}")
            molecule = Molecule(*_xyz_atoms(_xyz_lines(file), file), energy, index, file.name)
        molecules.append(molecule)
    return molecules


def _ase_molecules(file: Path, energy_column: str | None, energy_unit: str, limit) -> list[Molecule]:
    """Rows of an ASE database or frames of an ASE trajectory as molecules."""
    factor = hartree_per_unit(energy_unit)
    try:
        import ase.db
        import ase.io
    except ImportError:
        raise ConfigError(f"reading {file.suffix.lower()} needs ase: pip install ase") from None
    if file.suffix.lower() == ".db":
        _check_ase_database(file)
    try:
        if file.suffix.lower() == ".db":
            with ase.db.connect(file) as database:
                entries = [(f"{file.name} row {row.id}", row.toatoms(), row.get(energy_column or "energy"))
                           for row in database.select(limit=limit)]
        else:
            frames = ase.io.read(file, index=":" if limit is None else f":{limit}", format="traj")
            entries = [(f"{file.name} frame {i}", atoms, _frame_energy(atoms, energy_column))
                       for i, atoms in enumerate(frames)]
    except Exception as e:  # noqa: BLE001 - ASE's readers raise many types for a file that is not theirs
        raise ConfigError(f"{file}: not a readable ASE {file.suffix.lower()} file ({type(e).__name__}: "
                          f"{' '.join(str(e).split())[:120]})") from None
    return [_ase_molecule(name, atoms, energy, factor, index) for index, (name, atoms, energy) in enumerate(entries)]


def _check_ase_database(file: Path) -> None:
    """Refuse a .db that is not an ASE database, read-only: `ase.db.connect` would create its tables in it."""
    import sqlite3

    try:
        with contextlib.closing(sqlite3.connect(f"{file.resolve().as_uri()}?mode=ro", uri=True)) as connection:
            tables = connection.execute("SELECT COUNT(*) FROM sqlite_master WHERE name='systems'").fetchone()[0]
    except sqlite3.DatabaseError as e:
        raise ConfigError(f"{file}: not an ASE database ({e})") from None
    if not tables:
        raise ConfigError(f"{file}: not an ASE database (it has no table 'systems')")


def _frame_energy(atoms, key: str | None):
    if key is not None:
        return atoms.info.get(key)
    return None if atoms.calc is None else atoms.calc.results.get("energy")


def _ase_molecule(name: str, atoms, energy, factor: float, index: int) -> Molecule:
    if len(atoms) == 0:
        raise ConfigError(f"{name}: a molecule without atoms")
    if atoms.pbc.any():
        raise ConfigError(f"{name}: periodic boundary conditions {atoms.pbc.tolist()}; a molecule has none")
    elements = tuple(_element(str(z), f"{name} atom {i}") for i, z in enumerate(atoms.numbers))
    if energy is None:
        raise ConfigError(f"{name}: no energy (name its key with energy_column)")
    energy = _number(str(energy), name, "the energy") * factor
    return Molecule(elements, np.array(atoms.positions, dtype=np.float64), energy, index, name)
