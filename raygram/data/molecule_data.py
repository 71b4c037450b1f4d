"""An experiment's molecular data: molecules, their splits and per-atom signals, as one `Data`.

What: `prepare_molecules`, the preparation behind the data sources `molecules` (the
user's folder of .xyz files or ASE file, read by `structures.load_molecules`) and `qm9`
(the qm9pack wheel, `qm9.load_qm9`), and of molecules built in Python. It splits the
molecules, checks that the per-element baseline can price every held-out molecule from
every training set, and samples each atom's neighbourhood on the sphere
(`molecules.atom_signals`), padded to (N, atoms, 2L, 2L, channels + mask).

Why here, in one place: the featurisation's channels and the per-element baseline must
follow the same elements, those of the data (sorted by atomic number, `elements_of`) or
`data.options.elements`; and every check must run before any store or MLflow run exists,
so that bad molecules are one line, not a failure after the Grams were built.
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from raygram.config import DataOptions, check_allocation
from raygram.data.molecules import LinearBaseline, atom_signals, channel_elements, elements_of, energies_kcal
from raygram.data.dataset import Data
from raygram.data.qm9 import load_qm9
from raygram.data.structures import Molecule, hartree_per_unit, load_molecules
from raygram.data.transforms import split
from raygram.errors import ConfigError

__all__ = ["prepare_molecules", "QM9_OPTIONS", "MOLECULES_OPTIONS", "MOLECULAR_SOURCES"]

FEATURE_OPTIONS = {"bandwidth": 6, "powers": [2, 6], "beta": 0.5, "molecules": None}
QM9_OPTIONS = {**FEATURE_OPTIONS, "elements": ["H", "C", "N", "O", "F"]}
"""`data.options` of the qm9 source and their defaults; QM9 molecules with other elements are left out."""
MOLECULES_OPTIONS = {**FEATURE_OPTIONS, "elements": None, "energy_file": None, "energy_column": None,
                     "energy_unit": None}
"""`data.options` of the molecules source and their defaults; other elements are an error."""
MOLECULAR_SOURCES = {"qm9": QM9_OPTIONS, "molecules": MOLECULES_OPTIONS}
_FILE_OPTIONS = ("energy_file", "energy_column", "energy_unit")


def prepare_molecules(spec: DataOptions, molecules: Sequence[Molecule] | None = None) -> Data:
    """The training, validation and test molecules of an experiment, as per-atom signals.

    The molecules are `molecules` when given, else read from the source: `qm9` (the
    qm9pack wheel) or `molecules` (`data.path`, a folder of .xyz files or an ASE .db /
    .traj file; `data.options.energy_file`, `energy_column` and `energy_unit` say where
    the energies are). `data.options.molecules` keeps the first n. The channel elements
    are `data.options.elements`, or the elements of the molecules sorted by atomic number.

    Args:
      spec: the config's data section: source `qm9` or `molecules`, path, options
        (bandwidth, powers, beta, molecules, elements; for `molecules` also energy_file,
        energy_column, energy_unit), train_sizes, validation_size, test_size, seed.
      molecules: molecules built in Python (energies in Hartree), instead of reading the
        source; then `data.path` and the energy options must be null.

    Returns:
      `Data` (task "regression"): x_train (max(train_sizes), A, 2L, 2L, E·P + 1) and x_test
      (validation_size + test_size, A, 2L, 2L, E·P + 1), A the most atoms of a chosen
      molecule, E the elements, P the powers, the last channel the atom mask; the
      molecules of each row in `molecules_train` and `molecules_test`.

    Raises:
      ConfigError: another source, an unknown option, a malformed file, an unknown
        element or one outside `elements`, a molecule without atoms or energy, too few
        molecules, or a training set whose per-element baseline cannot price the held-out
        molecules.
    """
    options = _options(spec, molecules is not None)
    name = spec.source if spec.path is None else Path(spec.path).name
    molecules, elements = _molecules_and_elements(spec, options, molecules)
    chosen = _chosen(spec, molecules, elements, name)
    _check_signal_memory(chosen, options, elements)
    try:
        signals = [atom_signals(m, bandwidth=options["bandwidth"], powers=options["powers"], beta=options["beta"],
                                elements=elements) for m in chosen]
    except (TypeError, ValueError) as e:
        raise ConfigError(f"data: {e}") from None
    from raygram.kernels.atoms import pad_molecules

    x = pad_molecules(signals)
    n_max = max(spec.train_sizes)
    fingerprint = {"name": name, "shape": list(x.shape), "options": options, "elements": list(elements),
                   "sha256": _digest(chosen)}
    return Data(x[:n_max], x[n_max:], fingerprint, "regression", spec.validation_size,
                molecules_train=chosen[:n_max], molecules_test=chosen[n_max:])


def _options(spec: DataOptions, given: bool) -> dict:
    """The source's options with their defaults, after the checks that need no molecules."""
    if spec.source not in MOLECULAR_SOURCES:
        raise ConfigError(f"data.source: molecules come from {sorted(MOLECULAR_SOURCES)}, got {spec.source!r}")
    defaults = MOLECULAR_SOURCES[spec.source]
    unknown = sorted(set(spec.options) - set(defaults))
    if unknown:
        raise ConfigError(f"data.options: unknown key(s) {unknown} for source {spec.source}; "
                          f"allowed: {sorted(defaults)}")
    options = {**defaults, **spec.options}
    if spec.test_transform is not None:
        raise ConfigError("data.test_transform: must be null for molecules (a planar group does not move them)")
    limit = options["molecules"]
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"data.options.molecules: must be an integer >= 1 or null, got {limit!r}")
    if options["elements"] is not None and (isinstance(options["elements"], str) or not all(
            isinstance(e, str) for e in options["elements"])):
        raise ConfigError(f"data.options.elements: must be a list of element symbols or null, "
                          f"got {options['elements']!r}")
    if options.get("energy_unit") is not None:
        try:
            hartree_per_unit(options["energy_unit"])
        except ConfigError as e:
            raise ConfigError(f"data.options.{e}") from None
    if given:
        named = [key for key in _FILE_OPTIONS if options.get(key) is not None]
        if spec.path is not None or named:
            raise ConfigError(f"data: the molecules are given, so {['path'] if spec.path else named} must be null")
    elif spec.source == "qm9" and spec.path is not None:
        raise ConfigError("data.path: source qm9 reads the qm9pack wheel; must be null")
    elif spec.source == "molecules" and spec.path is None:
        raise ConfigError("data.path: source molecules needs a folder of .xyz files or an ASE .db or .traj file")
    return options


def _load(spec: DataOptions, options: dict) -> list[Molecule]:
    limit = options["molecules"]
    if spec.source == "qm9":
        try:
            return load_qm9(limit=limit)
        except (ModuleNotFoundError, FileNotFoundError) as e:
            raise ConfigError(f"data.source: {e}") from None
    try:
        return load_molecules(spec.path, energy_file=options["energy_file"], energy_column=options["energy_column"],
                              energy_unit=options["energy_unit"], limit=limit)
    except ConfigError as e:
        raise ConfigError(f"data: {e}") from None


def _molecules_and_elements(spec: DataOptions, options: dict, given) -> tuple[list[Molecule], tuple[str, ...]]:
    """The molecules (first `data.options.molecules`) and the channel elements.

    QM9 keeps only the molecules made of `elements` (as it always has); for the user's
    molecules an element outside `elements` is an error naming the molecule."""
    molecules = _load(spec, options) if given is None else list(given)[:options["molecules"]]
    if not molecules:
        raise ConfigError("data: no molecules")
    if options["elements"] is None:
        try:
            return molecules, elements_of(molecules)
        except ConfigError as e:
            raise ConfigError(f"data: {e}") from None
    try:
        elements = channel_elements(options["elements"])
    except ConfigError as e:
        raise ConfigError(f"data.options.elements: {e}") from None
    if spec.source == "qm9":
        return [m for m in molecules if set(m.elements) <= set(elements)], elements
    for molecule in molecules:
        other = sorted(set(molecule.elements) - set(elements))
        if other:
            raise ConfigError(f"data.options.elements: {molecule.label} has {other}, not one of {list(elements)}")
    return molecules, elements


def _chosen(spec: DataOptions, molecules: list[Molecule], elements: tuple[str, ...], name: str) -> list[Molecule]:
    """The training molecules (largest size) then the held-out ones (validation first), after
    checking that the baseline of every training size can price every held-out molecule."""
    n_max, held = max(spec.train_sizes), spec.validation_size + spec.test_size
    if n_max + held > len(molecules):
        raise ConfigError(f"data.train_sizes: the largest training size {n_max} plus validation_size "
                          f"{spec.validation_size} and test_size {spec.test_size} exceeds the "
                          f"{len(molecules)} molecules of {name}")
    train, test = split(len(molecules), n_max, held, spec.seed)
    test = np.random.default_rng(spec.seed + 2).permutation(test)  # validation: a random part of it
    chosen = [molecules[i] for i in train] + [molecules[i] for i in test]
    try:
        energies_kcal(chosen)  # every chosen molecule has an energy
    except ConfigError as e:
        raise ConfigError(f"data: {e}") from None
    smallest = min(spec.train_sizes)
    unseen = set().union(*(m.elements for m in chosen[n_max:])) - set().union(*(m.elements for m in chosen[:smallest]))
    if unseen:
        fix = (f", or data.options.elements without {sorted(unseen)}" if spec.source == "qm9" else "")
        raise ConfigError(f"data.train_sizes: the smallest training set ({smallest} molecules) has no "
                          f"{sorted(unseen)} but the held-out molecules do, so the per-element baseline cannot "
                          f"price them; use larger training sizes or another seed{fix}")
    for size in sorted(spec.train_sizes):
        try:
            LinearBaseline(elements).fit(chosen[:size]).predict(chosen[n_max:])
        except ConfigError as e:
            raise ConfigError(f"data.train_sizes: {size} training molecules: {e}") from None
    return chosen


def _digest(molecules: Sequence[Molecule]) -> str:
    """SHA-256 of the molecules in order: elements, positions (float64) and energies."""
    digest = hashlib.sha256()
    for m in molecules:
        digest.update(" ".join(m.elements).encode() + b"\n")
        digest.update(np.ascontiguousarray(m.positions, dtype="<f8").tobytes())
        digest.update(np.float64(m.energy).tobytes())
    return digest.hexdigest()


def _check_signal_memory(molecules: list, options: dict, elements) -> None:
    """Refuse a featurisation larger than the memory (the grid grows as bandwidth², the pairs as atoms²).

    One molecule's pair profiles take atoms² (2L)² floats, the padded signals of all of them
    N · atoms · (2L)² · (channels + 1), held twice (per molecule and padded). Options of the
    wrong type are left to `atom_signals`, which names them.
    """
    bandwidth, powers = options["bandwidth"], options["powers"]
    if isinstance(bandwidth, bool) or not isinstance(bandwidth, int) or not all(
            isinstance(v, (list, tuple)) for v in (elements, powers)):
        return
    points = (2 * max(bandwidth, 0)) ** 2
    atoms = max(len(m.elements) for m in molecules)
    channels = len(elements) * len(powers) + 1
    check_allocation(8 * max(atoms * atoms * points, 2 * len(molecules) * atoms * points * channels),
                     f"the signals of {len(molecules)} molecules on a grid of bandwidth {bandwidth}",
                     "data.options.bandwidth")
