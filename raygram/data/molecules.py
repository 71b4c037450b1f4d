"""Molecules as per-atom signals on the sphere S², for SO(3)-equivariant kernels on molecules.

Each atom i sees its neighbours j ≠ i as a multi-channel function on the unit sphere:
channel (Z, p) of atom i at the direction ω is

    f_i^{Z,p}(ω) = Σ_{j ≠ i, Z_j = Z} (Z_i Z_j / Z_REF²) (r_ij / R_REF)^{-p} exp(−(⟨r̂_ij, ω⟩ − 1)² / β)

with r_ij = |x_j − x_i| in Ångström and r̂_ij = (x_j − x_i) / r_ij. Rotating a molecule
by R rotates every atom's signal (f ↦ f ∘ Rᵀ); translating it changes nothing; permuting
its atoms permutes the signals. The signals are sampled on the Driscoll–Healy grid of
bandwidth L (shape (2L, 2L), θ rows, φ columns) and stacked channels last.

Conventions (fixed here, so they are the same for every caller):
  * channel order is element-major: c = e · len(powers) + q for elements[e] and
    powers[q]; with QM9's elements (H,2), (H,6), (C,2), (C,6), (N,2), ..., (F,6): 10
    channels. Any elements of the periodic table may be channels; experiments use the
    elements of their data sorted by atomic number (`elements_of`) unless told otherwise;
  * normalisation: each pair term is measured in units of a carbon–carbon pair at
    R_REF = 1.5 Å (Z_REF = 6), so a C–C bond contributes about 1 to either power and the
    scale does not depend on p. Measured at L = 6 over all 130,831 QM9 molecules: the grid
    maximum of every channel is at most 6.0 (99th percentile 0.65–5.5 per channel, over the
    atoms where the channel is nonzero); channels of H atoms (Z_i = 1) and p = 6 channels
    of non-bonded neighbours are much smaller (medians 0.01–0.07), as the formula implies;
  * β = 0.5 by default: the angular profile exp(−(cos γ − 1)²/β) falls to half at
    γ ≈ 66° and keeps all but 3·10⁻⁵ of its energy on S² in degrees ℓ < 6, so the paper's
    bandwidth L = 6 samples it with little aliasing (β = 0.1, half width 43°, leaves 1%
    above ℓ = 5 and needs L ≈ 8–10).

Energies are extensive and atoms are unordered, so the molecular kernel is the sum of a
per-atom kernel over all atom pairs (`molecule_kernel`). `LinearBaseline` removes the
per-element part of the energy (fitted on training molecules only, over their elements)
so that kernels regress the remainder, reported in kcal/mol.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np

from raygram.data.structures import ATOMIC_NUMBERS, HARTREE_TO_KCAL_PER_MOL
from raygram.errors import ConfigError

ELEMENTS = ("H", "C", "N", "O", "F")
"""QM9's elements, the default channels of `atom_signals`."""
Z_REF = 6.0
R_REF = 1.5
MIN_DISTANCE = 1e-6
"""Atoms closer than this (Å) are taken to be at the same position."""


def dh_grid(bandwidth: int) -> tuple[np.ndarray, np.ndarray]:
    """Driscoll–Healy angles of bandwidth L: θ_j = π(2j+1)/(4L) and φ_k = 2πk/(2L), each (2L,).

    The grid of the SO(3) layers (`raygram.kernels.so3_grid`, imported on use: it loads JAX)."""
    from raygram.kernels.so3_grid import check_bandwidth, dh_angles

    return dh_angles(check_bandwidth(bandwidth))


def dh_directions(bandwidth: int) -> np.ndarray:
    """Unit vectors (2L, 2L, 3) of the DH grid: [j, k] = (sinθ_j cosφ_k, sinθ_j sinφ_k, cosθ_j)."""
    from raygram.kernels.so3_grid import check_bandwidth, s2_points

    return s2_points(check_bandwidth(bandwidth))


def dh_weights(bandwidth: int) -> np.ndarray:
    """Quadrature weights (2L,) in θ: Σ_j w_j g(θ_j) = ∫_0^π g(θ) sin θ dθ for g(θ) a polynomial
    in cos θ of degree < 2L (twice the SO(3) layers' normalised weights, which sum to 1). Times
    2π/(2L) per φ sample, this integrates exactly over S² every function of degree < 2L, e.g.
    f · conj(Y_ℓm) with f of degree < L."""
    from raygram.kernels.so3_grid import check_bandwidth, dh_weights as normalised

    return 2.0 * normalised(check_bandwidth(bandwidth))


def channel_elements(elements: Sequence[str]) -> tuple[str, ...]:
    """Checked channel elements: a non-empty tuple of distinct symbols of the periodic table.

    Args:
      elements: element symbols, e.g. ["H", "C", "S"]; their order is the channel order.

    Raises:
      ConfigError: no elements, an unknown symbol, or a duplicate.
    """
    elements = tuple(elements)
    if not elements:
        raise ConfigError("elements must name at least one element.")
    unknown = [e for e in elements if e not in ATOMIC_NUMBERS]
    if unknown:
        raise ConfigError(f"unknown element(s) {unknown} in elements (not in the periodic table).")
    if len(set(elements)) != len(elements):
        raise ConfigError(f"elements {elements} has duplicates.")
    return elements


def _check_powers(powers) -> np.ndarray:
    powers = np.asarray(tuple(powers), dtype=np.float64)
    if powers.ndim != 1 or powers.size == 0 or not np.all(np.isfinite(powers)) or np.any(powers <= 0):
        raise ConfigError(f"powers must be a non-empty sequence of positive numbers, got {powers!r}.")
    return powers


def _check_molecule(molecule, elements: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(positions (A, 3), atomic numbers (A,), channel element of each atom (A,)) after checks."""
    name = molecule.label
    symbols = tuple(molecule.elements)
    positions = np.asarray(molecule.positions, dtype=np.float64)
    if not symbols:
        raise ConfigError(f"{name} has no atoms.")
    if positions.shape != (len(symbols), 3):
        raise ConfigError(f"{name}: positions have shape {positions.shape}, expected "
                          f"({len(symbols)}, 3) for its {len(symbols)} elements.")
    for atom, symbol in enumerate(symbols):
        if symbol not in elements:
            kind = ("is not one of the channel elements" if symbol in ATOMIC_NUMBERS
                    else "is an unknown element")
            raise ConfigError(f"{name}: atom {atom} {symbol!r} {kind} {elements}.")
    if not np.all(np.isfinite(positions)):
        atom = int(np.flatnonzero(~np.isfinite(positions).all(axis=1))[0])
        raise ConfigError(f"{name}: atom {atom} has a non-finite position {positions[atom].tolist()}.")
    distance = np.linalg.norm(positions[None, :, :] - positions[:, None, :], axis=-1)
    distance[np.diag_indices(len(symbols))] = np.inf
    if np.any(distance < MIN_DISTANCE):
        i, j = np.argwhere(distance < MIN_DISTANCE)[0]
        raise ConfigError(f"{name}: atoms {i} ({symbols[i]}) and {j} ({symbols[j]}) are at the same "
                          f"position (distance {distance[i, j]:.3g} Å < {MIN_DISTANCE} Å).")
    numbers = np.array([ATOMIC_NUMBERS[s] for s in symbols], dtype=np.float64)
    channel = np.array([elements.index(s) for s in symbols])
    return positions, numbers, channel


def evaluate_signals(molecule, directions: np.ndarray, powers: Sequence[float] = (2, 6),
                     beta: float = 0.5, elements: Sequence[str] = ELEMENTS) -> np.ndarray:
    """The per-atom signals at arbitrary unit vectors `directions` (..., 3).

    Returns (atoms, ..., len(elements) * len(powers)), channel order as in the module
    docstring. Because the signals depend on ω only through ⟨r̂_ij, ω⟩, the signals of
    R·molecule at R·ω equal those of the molecule at ω (tests check this exactly).
    """
    elements = channel_elements(elements)
    powers = _check_powers(powers)
    if isinstance(beta, bool) or not (isinstance(beta, (int, float, np.number)) and math.isfinite(beta)
                                      and beta > 0):
        raise ConfigError(f"beta must be a positive finite number, got {beta!r}.")
    directions = np.asarray(directions, dtype=np.float64)
    if directions.ndim < 1 or directions.shape[-1] != 3:
        raise ConfigError(f"directions must have shape (..., 3), got {directions.shape}.")
    if not np.all(np.isfinite(directions)) or np.any(
            np.abs(np.linalg.norm(directions, axis=-1) - 1) > 1e-9):
        raise ConfigError("directions must be finite unit vectors.")
    positions, numbers, channel = _check_molecule(molecule, elements)
    atoms = len(numbers)
    offset = positions[None, :, :] - positions[:, None, :]              # [i, j] = x_j − x_i
    distance = np.linalg.norm(offset, axis=-1)
    np.fill_diagonal(distance, np.inf)
    unit = offset / distance[..., None]                                 # zero on the diagonal
    charge = np.outer(numbers, numbers) / Z_REF ** 2
    weight = charge[..., None] * (distance[..., None] / R_REF) ** -powers  # (A, A, P), 0 at j = i
    onehot = np.eye(len(elements))[channel]                             # (A, E)
    flat = directions.reshape(-1, 3)
    profile = np.exp(-((unit @ flat.T) - 1.0) ** 2 / beta)              # (A, A, D)
    signals = np.einsum("ijd,ijq,je->ideq", profile, weight, onehot, optimize=True)
    return signals.reshape((atoms,) + directions.shape[:-1] + (len(elements) * len(powers),))


def atom_signals(molecule, bandwidth: int = 6, powers: Sequence[float] = (2, 6), beta: float = 0.5,
                 elements: Sequence[str] = ELEMENTS) -> np.ndarray:
    """Per-atom signals sampled on the DH grid: (atoms, 2L, 2L, len(elements) * len(powers)).

    Channel (Z, p) of atom i is Σ_{j≠i, element(j)=Z} (Z_i Z_j/36) (r_ij/1.5 Å)^-p
    exp(−(⟨r̂_ij, ω⟩ − 1)²/β); see the module docstring for order, units and scale.
    """
    return evaluate_signals(molecule, dh_directions(bandwidth), powers, beta, elements)


def stack_atom_signals(molecules: Sequence, bandwidth: int = 6, powers: Sequence[float] = (2, 6),
                       beta: float = 0.5, elements: Sequence[str] = ELEMENTS
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Signals of all atoms of `molecules`, concatenated: ((A, 2L, 2L, C), molecule of each atom (A,)).

    The second array is what `molecule_kernel` takes to sum a per-atom Gram into molecules.
    """
    signals = [atom_signals(m, bandwidth, powers, beta, elements) for m in molecules]
    if not signals:
        raise ConfigError("no molecules given.")
    owner = np.repeat(np.arange(len(signals)), [len(s) for s in signals])
    return np.concatenate(signals), owner


@functools.lru_cache(maxsize=8)
def _harmonics(bandwidth: int) -> tuple[np.ndarray, np.ndarray]:
    """conj(Y_ℓm) × quadrature weight on the DH grid, (L², 2L, 2L), and the degree ℓ of each row."""
    from scipy.special import sph_harm_y

    theta, phi = dh_grid(bandwidth)
    t, p = np.meshgrid(theta, phi, indexing="ij")
    weight = dh_weights(bandwidth)[:, None] * (2 * np.pi / (2 * bandwidth))
    degrees = np.concatenate([np.full(2 * l + 1, l) for l in range(bandwidth)])
    orders = np.concatenate([np.arange(-l, l + 1) for l in range(bandwidth)])
    rows = np.conj(sph_harm_y(degrees[:, None, None], orders[:, None, None], t, p)) * weight
    rows.setflags(write=False)
    degrees.setflags(write=False)
    return rows, degrees


def power_spectrum(signals: np.ndarray) -> np.ndarray:
    """Rotation-invariant descriptors: energy per degree of signals (..., 2L, 2L, C) -> (..., L, C).

    P_ℓ = Σ_{|m|≤ℓ} |f̂_ℓm|² for ℓ < L with orthonormal Y_ℓm, the coefficients computed by
    DH quadrature (`dh_weights` in θ, the trapezoid rule 2π/(2L) in φ). Exact for signals of
    degree < L; the molecular signals are not band-limited, so rotation invariance holds up
    to an aliasing error that shrinks quickly as L grows. Translation/permutation: exact.
    """
    signals = np.asarray(signals, dtype=np.float64)
    if signals.ndim < 3 or signals.shape[-3] != signals.shape[-2] or signals.shape[-3] % 2:
        raise ConfigError(f"signals must have shape (..., 2L, 2L, C), got {signals.shape}.")
    rows, degrees = _harmonics(signals.shape[-3] // 2)
    coefficients = np.einsum("njk,...jkc->...nc", rows, signals, optimize=True)
    energy = np.abs(coefficients) ** 2
    starts = np.flatnonzero(np.r_[True, degrees[1:] != degrees[:-1]])
    return np.add.reduceat(energy, starts, axis=-2)


def _owner_matrix(owner: np.ndarray, count: int | None, name: str):
    import scipy.sparse

    owner = np.asarray(owner)
    if owner.ndim != 1 or not np.issubdtype(owner.dtype, np.integer) or (owner.size and owner.min() < 0):
        raise ConfigError(f"{name} must be a 1-D array of non-negative molecule indices, got "
                          f"dtype {owner.dtype} and shape {owner.shape}.")
    needed = int(owner.max()) + 1 if owner.size else 0
    count = needed if count is None else count
    if count < needed:
        raise ConfigError(f"{name} refers to molecule {needed - 1} but there are only {count} molecules.")
    return scipy.sparse.csr_matrix((np.ones(owner.size), (owner, np.arange(owner.size))),
                                   shape=(count, owner.size))


def molecule_kernel(atom_kernel: np.ndarray, atoms_1: np.ndarray, atoms_2: np.ndarray, *,
                    molecules_1: int | None = None, molecules_2: int | None = None) -> np.ndarray:
    """Molecular Gram (M1, M2) = Σ_{i∈m} Σ_{j∈m'} k(i, j) from a per-atom Gram (A1, A2).

    `atoms_1` (A1,) and `atoms_2` (A2,) give the molecule of each atom (any order, e.g.
    from `stack_atom_signals`). Segment sums over unordered atoms, so permutation invariant
    by construction, and extensive like the energy. M defaults to the largest index + 1.
    """
    atom_kernel = np.asarray(atom_kernel)
    s1 = _owner_matrix(atoms_1, molecules_1, "atoms_1")
    s2 = _owner_matrix(atoms_2, molecules_2, "atoms_2")
    if atom_kernel.shape != (s1.shape[1], s2.shape[1]):
        raise ConfigError(f"atom_kernel has shape {atom_kernel.shape} but atoms_1 and atoms_2 "
                          f"describe {s1.shape[1]} and {s2.shape[1]} atoms.")
    return np.asarray(s2 @ (s1 @ atom_kernel).T).T


def elements_of(molecules: Sequence) -> tuple[str, ...]:
    """The elements that occur in `molecules`, sorted by atomic number, e.g. ("H", "C", "S", "Cl").

    Raises:
      ConfigError: a symbol that is not in the periodic table (the molecule named).
    """
    found = set().union(*(m.elements for m in molecules))
    unknown = sorted(found - set(ATOMIC_NUMBERS))
    if unknown:
        molecule = next(m for m in molecules if unknown[0] in m.elements)
        raise ConfigError(f"{molecule.label}: unknown element {unknown[0]!r} (not in the periodic table).")
    return tuple(sorted(found, key=ATOMIC_NUMBERS.get))


def element_counts(molecules: Sequence, elements: Sequence[str] | None = None) -> np.ndarray:
    """Atoms of each element per molecule, float64 (M, len(elements)).

    Args:
      molecules: M molecules.
      elements: the columns, in order; None: `elements_of(molecules)`.

    Raises:
      ConfigError: a molecule without atoms, or with an element that is not a column.
    """
    empty = next((m for m in molecules if not m.elements), None)
    if empty is not None:
        raise ConfigError(f"{empty.label} has no atoms.")
    elements = channel_elements(elements_of(molecules) if elements is None else elements)
    column = {e: c for c, e in enumerate(elements)}
    counts = np.zeros((len(molecules), len(elements)))
    for row, molecule in enumerate(molecules):
        for atom, symbol in enumerate(molecule.elements):
            if symbol not in column:
                kind = "is not one of the elements" if symbol in ATOMIC_NUMBERS else "is an unknown element"
                raise ConfigError(f"{molecule.label}: atom {atom} {symbol!r} {kind} {elements}.")
            counts[row, column[symbol]] += 1
    return counts


def energies_kcal(molecules: Sequence) -> np.ndarray:
    """The energy of each molecule in kcal/mol, (M,).

    Raises:
      ConfigError: a molecule without a finite energy (named).
    """
    return _energies(molecules) * HARTREE_TO_KCAL_PER_MOL


def _energies(molecules: Sequence) -> np.ndarray:
    """The energy of each molecule in Hartree, (M,), every one checked."""
    for molecule in molecules:
        energy = molecule.energy
        if isinstance(energy, bool) or not isinstance(energy, (int, float, np.number)) or not math.isfinite(energy):
            raise ConfigError(f"{molecule.label} has no energy (got {energy!r}).")
    return np.array([m.energy for m in molecules], dtype=np.float64)


class LinearBaseline:
    """Per-element linear model of the energy: E ≈ Σ_e n_e ε_e, least squares on the training set only.

    No intercept: the energy is extensive and a molecule with no atoms has no energy, so
    the per-element energies ε_e (≈ free-atom energies plus mean bond energies) carry all
    of the size dependence; an intercept would be a non-physical "energy of zero atoms"
    that competes with the element energies. Predicting a molecule with an element that
    no training molecule has, or fitting counts that cannot separate the elements, is an error.

    Args:
      elements: the elements it may price, e.g. an experiment's channel elements; None:
        the elements of the molecules it is fitted to (`elements_of`). Elements that no
        training molecule has get no coefficient either way, so both give the same fit.

    Attributes:
      elements: the columns of `coefficients` (after `fit`, the fitted ones).
      coefficients: ε_e in Hartree per atom, (len(elements),); 0 for unseen elements.
      seen: whether some training molecule has each element, bool (len(elements),).
    """

    def __init__(self, elements: Sequence[str] | None = None):
        self.requested = None if elements is None else channel_elements(elements)
        self.elements = self.requested
        self.coefficients: np.ndarray | None = None
        self.seen: np.ndarray | None = None

    def fit(self, molecules: Sequence) -> LinearBaseline:
        """Fit ε (Hartree per atom) to the energies of `molecules` (the training set).

        Args:
          molecules: the training molecules, each with a finite energy.

        Returns:
          self.

        Raises:
          ConfigError: no molecules, a molecule without atoms or energy, an element that
            is not in `elements`, or element counts that cannot separate the elements.
        """
        if not molecules:
            raise ConfigError("LinearBaseline.fit needs at least one molecule.")
        elements = elements_of(molecules) if self.requested is None else self.requested
        counts = element_counts(molecules, elements)
        seen = counts.any(axis=0)
        used = counts[:, seen]
        if np.linalg.matrix_rank(used) < used.shape[1]:
            raise ConfigError(f"the element counts of the {len(molecules)} training molecules cannot "
                              f"separate the energies of {[e for e, s in zip(elements, seen) if s]}"
                              f" (rank-deficient); add more varied molecules.")
        coefficients = np.zeros(len(elements))
        coefficients[seen] = np.linalg.lstsq(used, _energies(molecules), rcond=None)[0]
        self.elements, self.coefficients, self.seen = elements, coefficients, seen
        return self

    def predict(self, molecules: Sequence) -> np.ndarray:
        """Baseline energies in Hartree, (M,), of M molecules.

        Raises:
          ConfigError: before `fit`, or a molecule with an element no training molecule had.
        """
        if self.coefficients is None:
            raise ConfigError("LinearBaseline.predict before fit.")
        known = {e for e, s in zip(self.elements, self.seen) if s}
        for molecule in molecules:
            missing = sorted(set(molecule.elements) - known)
            if missing:
                raise ConfigError(f"{molecule.label} has element(s) {missing} that no training molecule had; "
                                  f"the baseline cannot predict it.")
        return element_counts(molecules, self.elements) @ self.coefficients

    def residuals_kcal(self, molecules: Sequence) -> np.ndarray:
        """Regression targets: (energy − baseline) in kcal/mol, (M,)."""
        return energies_kcal(molecules) - self.predict(molecules) * HARTREE_TO_KCAL_PER_MOL
