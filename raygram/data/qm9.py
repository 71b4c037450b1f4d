"""QM9 molecules (elements, 3-D positions, U0) from the CSV files of the `qm9pack` wheel.

qm9pack ships qm9_part1.csv … qm9_part3.csv (130,831 molecules, GDB indices 1–133,885)
but `import qm9pack` fails on Python without pkg_resources, so the data folder is found
from the import spec without importing the package. `Elements` and `XYZ_Ang` are
bracketed lists written with single quotes and numbers such as `0.`, which JSON
rejects; they are parsed here with strict patterns instead. Each row becomes a `Molecule`
(`structures.py`, the type every molecular source yields) with U0 as its energy.
"""
from __future__ import annotations

import csv
import importlib.util
import math
import os
import pathlib
import re

import numpy as np

from raygram.data.structures import HARTREE_TO_KCAL_PER_MOL, Molecule
from raygram.errors import ConfigError

__all__ = ["Molecule", "HARTREE_TO_KCAL_PER_MOL", "QM9_FILES", "qm9_folder", "load_qm9"]

QM9_FILES = ("qm9_part1.csv", "qm9_part2.csv", "qm9_part3.csv")
_COLUMNS = ("Index", "N_atoms", "Elements", "XYZ_Ang", "InternalEnergy_0K_au")

_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_ROW = rf"\[\s*{_NUMBER}\s*,\s*{_NUMBER}\s*,\s*{_NUMBER}\s*\]"
_POSITIONS = re.compile(rf"\[\s*{_ROW}(?:\s*,\s*{_ROW})*\s*\]")
_NO_BRACKETS = str.maketrans("", "", "[]")
_SYMBOL = r"""\s*(?:'[A-Z][a-z]?'|"[A-Z][a-z]?"|[A-Z][a-z]?)\s*"""
_ELEMENTS = re.compile(rf"\[{_SYMBOL}(?:,{_SYMBOL})*\]")
_SYMBOLS = re.compile(r"[A-Z][a-z]?")


def qm9_folder() -> pathlib.Path:
    """The data folder of the installed qm9pack wheel (found without importing it)."""
    spec = importlib.util.find_spec("qm9pack")
    if spec is None:
        raise ModuleNotFoundError(
            "QM9 needs the qm9pack data wheel (about 100 MB): pip install qm9pack")
    if spec.submodule_search_locations:
        package = pathlib.Path(next(iter(spec.submodule_search_locations)))
    else:
        package = pathlib.Path(spec.origin).parent
    folder = package / "data"
    if not folder.is_dir():
        raise FileNotFoundError(f"qm9pack is installed but has no data folder {str(folder)!r}.")
    return folder


def load_qm9(limit: int | None = None, folder: str | os.PathLike | None = None) -> list[Molecule]:
    """Molecules of qm9_part1..3.csv in file order; with `limit`, only the first `limit`.

    Reading stops once `limit` molecules are parsed, so small limits are fast. `folder`
    defaults to `qm9_folder()`. A malformed row raises ConfigError naming the file, line,
    Index and column.
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ConfigError(f"limit must be a non-negative int or None, got {limit!r}.")
    folder = qm9_folder() if folder is None else pathlib.Path(folder)
    files = [folder / name for name in QM9_FILES]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"QM9 file(s) not found: {', '.join(missing)}.")
    molecules: list[Molecule] = []
    for file in files:
        if limit is not None and len(molecules) >= limit:
            break
        with open(file, newline="") as handle:
            reader = csv.DictReader(handle)
            absent = [c for c in _COLUMNS if c not in (reader.fieldnames or ())]
            if absent:
                raise ConfigError(f"{file.name}: no column(s) {', '.join(absent)} in the header "
                                  f"{reader.fieldnames}.")
            for row in reader:
                if limit is not None and len(molecules) >= limit:
                    break
                molecules.append(_molecule(row, f"{file.name} line {reader.line_num}"))
    return molecules


def _molecule(row: dict, where: str) -> Molecule:
    def fail(column: str, reason: str) -> ConfigError:
        value = row.get(column)
        shown = value if value is None or len(value) <= 60 else value[:57] + "..."
        return ConfigError(f"{where} (Index {row.get('Index')!r}), column {column!r}: {reason}; "
                           f"value {shown!r}.")

    try:
        index = int(row["Index"])
    except (TypeError, ValueError):
        raise fail("Index", "not an integer") from None
    try:
        atoms = int(row["N_atoms"])
    except (TypeError, ValueError):
        raise fail("N_atoms", "not an integer") from None
    text = row["Elements"] or ""
    if not _ELEMENTS.fullmatch(text.strip()):
        raise fail("Elements", "not a bracketed list of element symbols")
    elements = tuple(_SYMBOLS.findall(text))
    text = row["XYZ_Ang"] or ""
    if not _POSITIONS.fullmatch(text.strip()):
        raise fail("XYZ_Ang", "not a bracketed list of [x, y, z] numbers")
    positions = np.array(text.translate(_NO_BRACKETS).split(","), dtype=np.float64).reshape(-1, 3)
    if not np.isfinite(positions).all():
        raise fail("XYZ_Ang", "holds a non-finite coordinate")
    if len(elements) != atoms or len(positions) != atoms:
        raise fail("XYZ_Ang" if len(elements) == atoms else "Elements",
                   f"N_atoms is {atoms} but there are {len(elements)} elements and "
                   f"{len(positions)} positions")
    try:
        u0 = float(row["InternalEnergy_0K_au"])
    except (TypeError, ValueError):
        raise fail("InternalEnergy_0K_au", "not a number") from None
    if not math.isfinite(u0):
        raise fail("InternalEnergy_0K_au", "not finite")
    return Molecule(elements, positions, u0, index)
