"""An experiment's arrays from its `DataOptions`: load, split, standardise, featurise.

Every experiment sees its data through one `Data`: x_train (the largest training set;
smaller training sizes are its prefixes, so one Gram per kernel serves every size) and
x_test (the validation rows first, then the test rows), plus what scoring needs —
integer labels for classification, the molecules for QM9 regression (whose targets
depend on the training set through the per-element baseline). A build-only config
(`source: npy`) gives arrays without targets. All checks run here, before any store or
MLflow run exists.

Image inputs are standardised per channel with the mean and spread of the whole training
pool — every example that the seed's split does not hold out for validation or test —
not of the largest training set: the held-out rows and the pool depend only on the seed
and the held-out counts, so the inputs (and every accuracy at n = 50) stay the same when
another training size is added to the list.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from raygram.config import DataOptions, check_exists
from raygram.data.images import load_images
from raygram.data.dataset import Data
from raygram.data.molecule_data import MOLECULAR_SOURCES, prepare_molecules
from raygram.data.transforms import random_group_actions, split, standardize

POOL_CHUNK = 4096  # rows per step of the pool statistics: bounded float64 copies of large image sets
from raygram.errors import ConfigError

__all__ = ["Data", "prepare_data", "pool_statistics", "NPY_OPTIONS"]

NPY_OPTIONS = {"x_test": None}


def _too_many(spec: DataOptions, available: int, name: str) -> ConfigError:
    return ConfigError(f"data.train_sizes: the largest training size {max(spec.train_sizes)} plus "
                       f"validation_size {spec.validation_size} and test_size {spec.test_size} "
                       f"exceeds the {available} examples of {name}")


def _options(spec: DataOptions, defaults: dict) -> dict:
    unknown = sorted(set(spec.options) - set(defaults))
    if unknown:
        raise ConfigError(f"data.options: unknown key(s) {unknown} for source {spec.source}; "
                          f"allowed: {sorted(defaults)}")
    return {**defaults, **spec.options}


def prepare_data(spec: DataOptions) -> Data:
    """The training, validation and test arrays of an experiment.

    Args:
      spec: the config's data section (source, path, options, sizes, seed, ...).

    Returns:
      `Data` with x_train of the largest training size and x_test of
      validation_size + test_size rows (None for a build-only `npy` source without x_test).

    Raises:
      ConfigError: an unknown source or option, unreadable files, too few examples.
    """
    if spec.source in MOLECULAR_SOURCES:
        return prepare_molecules(spec)
    if spec.source == "npy":
        return _prepare_arrays(spec)
    from raygram.data.images import SOURCES

    if spec.source not in SOURCES:
        raise ConfigError(f"data.source: must be one of {sorted(SOURCES + tuple(MOLECULAR_SOURCES) + ('npy',))}, got {spec.source!r}")
    if spec.test_transform is not None:
        from raygram.kernels.groups import get_group

        try:
            get_group(spec.test_transform)
        except (ValueError, KeyError) as e:
            raise ConfigError(f"data.test_transform: {e}") from None
    dataset = load_images(spec.source, spec.path, **spec.options)
    n_max, held = max(spec.train_sizes), spec.validation_size + spec.test_size
    if n_max + held > len(dataset.labels):
        raise _too_many(spec, len(dataset.labels), dataset.name)
    train, test = split(len(dataset.labels), n_max, held, spec.seed, labels=dataset.labels)
    test = np.random.default_rng(spec.seed + 2).permutation(test)  # validation: a random part of it
    x_train, x_test = dataset.x[train], dataset.x[test]
    if spec.standardize:
        pool = np.setdiff1d(np.arange(len(dataset.labels)), test)  # the training pool: nothing held out
        mean, std = pool_statistics(dataset.x, pool)
        x_train, x_test = ((np.asarray(x, np.float64) - mean) / std for x in (x_train, x_test))
    if spec.test_transform:
        x_test = random_group_actions(x_test, spec.test_transform, spec.seed + 1)
    return Data(x_train, x_test, dataset.fingerprint(), "classification", spec.validation_size,
                dataset.labels[train], dataset.labels[test], dataset.classes)


def pool_statistics(x: np.ndarray, pool: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation of the rows `pool` of x, in float64.

    Computed over POOL_CHUNK rows at a time (a float64 copy of a whole image set could
    be larger than the set itself); a channel of zero spread gets std 1 (it is only
    centred), as in `raygram.data.transforms.standardize`.

    Args:
      x: inputs (N, ..., C), channels last.
      pool: row indices of the training pool (every row not held out), shape (P,), P >= 1.

    Returns:
      (mean (C,), std (C,)).
    """
    total = np.zeros(x.shape[-1])
    for start in range(0, len(pool), POOL_CHUNK):
        rows = np.asarray(x[pool[start:start + POOL_CHUNK]], np.float64)
        total += rows.reshape(-1, x.shape[-1]).sum(axis=0)
    count = len(pool) * int(np.prod(x.shape[1:-1], dtype=np.int64))
    mean = total / count
    squares = np.zeros(x.shape[-1])
    for start in range(0, len(pool), POOL_CHUNK):  # two passes: no cancellation in E[x²] − E[x]²
        rows = np.asarray(x[pool[start:start + POOL_CHUNK]], np.float64)
        squares += ((rows.reshape(-1, x.shape[-1]) - mean) ** 2).sum(axis=0)
    std = np.sqrt(squares / count)
    return mean, np.where(std > 0, std, 1.0)


def _load_npy(path: str | None, key: str) -> np.ndarray:
    """A .npy file of real numbers (integers or floats: complex inputs would lose their imaginary part)."""
    if path is None:
        raise ConfigError(f"{key}: source npy needs the path of a .npy file of inputs (N, ...features)")
    check_exists(path, key)
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"{key}: {file} is not a file")
    try:
        x = np.load(file, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise ConfigError(f"{key}: {file} is not a readable .npy file ({' '.join(str(e).split())})") from None
    if not isinstance(x, np.ndarray) or x.dtype.kind not in "iuf":
        raise ConfigError(f"{key}: {file} must hold one array of real numbers (integers or floats), got "
                          + (f"dtype {x.dtype}" if isinstance(x, np.ndarray) else "an .npz archive"))
    return x


def _prepare_arrays(spec: DataOptions) -> Data:
    """Build-only inputs: x_train from `data.path`, x_test from `data.options.x_test` (both .npy)."""
    options = _options(spec, NPY_OPTIONS)
    if spec.test_transform is not None or spec.validation_size:
        raise ConfigError("data: source npy is built as stored; test_transform and validation_size must be unset")
    x_train = _load_npy(spec.path, "data.path")
    x_test = None if options["x_test"] is None else _load_npy(options["x_test"], "data.options.x_test")
    if spec.standardize:
        x_train, *rest = standardize(x_train, *([] if x_test is None else [x_test]))
        x_test = rest[0] if rest else None
    digest = hashlib.sha256()
    for x in (x_train, x_test):
        if x is not None:
            digest.update(memoryview(np.ascontiguousarray(x, dtype="<f8")).cast("B"))
    fingerprint = {"name": Path(spec.path).name, "shape": list(x_train.shape), "sha256": digest.hexdigest()}
    return Data(x_train, x_test, fingerprint, task=None)
