"""Build configurations: a YAML file -> validated keyword arguments of `build_gram`.

    architecture: [{LiftingConv: {out_chan: 16, filter_shape: [3, 3], group: C4}}, Relu,
                   GroupPool, {Dense: {out_dim: 1}}]
    kinds: [nngp, ntk]            # default both
    dtype: float64                # or float32
    data: {x_train: train.npy, x_test: test.npy}   # .npy files, x_test optional
    store: gram.zarr              # local folder or s3://bucket/prefix
    storage_options: {}           # fsspec options for object stores (endpoint_url, key, ...)
    build: {tile_size: null, workers: null, num_cpus: 1, num_gpus: 0,
            max_inflight: 2, max_attempts: 3}

Relative paths are relative to the config file. Unknown keys are errors, not ignored.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import yaml

TOP_KEYS = {"architecture", "kinds", "dtype", "data", "store", "storage_options", "build"}
DATA_KEYS = {"x_train", "x_test"}
BUILD_KEYS = {"tile_size", "workers", "num_cpus", "num_gpus", "max_inflight", "max_attempts"}


class ConfigError(ValueError):
    """A configuration that cannot be run as written."""


def _check_keys(section: dict, allowed: set, where: str) -> None:
    if not isinstance(section, dict):
        raise ConfigError(f"{where} must be a mapping, got {section!r}")
    unknown = set(section) - allowed
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(allowed)}")


def _load_array(path: Path, key: str) -> np.ndarray:
    if not path.is_file():
        raise ConfigError(f"data.{key}: file {path} does not exist")
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise ConfigError(f"data.{key}: {path} is not a readable .npy file ({e})") from None


def load_build_config(path: str | os.PathLike) -> dict:
    """`build_gram` keyword arguments (store, architecture, x_train, x_test, ...) from a YAML file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    with open(path) as f:
        try:
            config = yaml.safe_load(f)
        except yaml.YAMLError as e:
            raise ConfigError(f"{path} is not valid YAML: {e}") from None
    _check_keys(config, TOP_KEYS, str(path))
    for key in ("architecture", "data", "store"):
        if key not in config:
            raise ConfigError(f"{path}: missing required key {key!r}")
    data = config["data"]
    _check_keys(data, DATA_KEYS, "data")
    if "x_train" not in data:
        raise ConfigError("data: missing required key 'x_train'")
    build = config.get("build") or {}
    _check_keys(build, BUILD_KEYS, "build")
    base = path.parent
    store = str(config["store"])
    if "://" not in store and not os.path.isabs(store):
        store = str(base / store)
    arrays = {key: _load_array(base / data[key], key) if data.get(key) is not None else None
              for key in DATA_KEYS}
    return {"store": store, "architecture": config["architecture"],
            "x_train": arrays["x_train"], "x_test": arrays["x_test"],
            "kinds": config.get("kinds", ["nngp", "ntk"]), "dtype": config.get("dtype", "float64"),
            "storage_options": config.get("storage_options"), **build}
