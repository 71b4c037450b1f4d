"""Experiment configs: YAML -> a validated, fully resolved mapping (defaults filled in).

    name: quickstart
    data: {source: digits, train_sizes: [50, 100], test_size: 200, seed: 0,
           test_transform: C4}            # plus path / options for file sources
    kernels:                              # one Gram store per kernel: <store>/<name>
      cnn: {architecture: [...]}          # raygram.architecture specs
    kinds: [ntk]
    store: raygram-runs/quickstart        # local folder or s3://bucket/prefix
    solver: {diag_reg: [1e-3], times: [inf]}
    tracking: {uri: null, experiment: raygram}

Every key is checked: unknown keys, wrong types and impossible values raise
`ConfigError` with the key's dotted path and what is allowed. `overrides` ("a.b=value",
the value parsed as YAML) change any key before validation. Relative local paths are
relative to the working directory the command runs in.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import os
import re
from pathlib import Path
from typing import Any, Callable

import yaml

from .config import ConfigError

_MISSING = object()


@dataclasses.dataclass(frozen=True)
class Field:
    """One key: `check(value, where)` returns the normalised value or raises ConfigError."""

    check: Callable[[Any, str], Any]
    default: Any = _MISSING


def _fail(where: str, message: str, value) -> None:
    raise ConfigError(f"{where}: {message}, got {value!r}")


def integer(low: int | None = None, optional: bool = False):
    def check(value, where):
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or (low is not None and value < low):
            _fail(where, "must be an integer" + (f" >= {low}" if low is not None else "")
                  + (" or null" if optional else ""), value)
        return value
    return check


def number(low: float | None = None, positive: bool = False, optional: bool = False, infinity: bool = False):
    def check(value, where):
        if value is None and optional:
            return None
        if infinity and isinstance(value, str) and value.lower() in ("inf", "infinity", ".inf"):
            return math.inf
        if isinstance(value, str) and re.fullmatch(r"\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*", value):
            value = float(value)  # YAML 1.1 reads 1e-3 (no dot) as a string
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or (
                not infinity and math.isinf(value)):
            _fail(where, "must be a number" + (" or 'inf'" if infinity else ""), value)
        if (low is not None and value < low) or (positive and value <= 0):
            _fail(where, "must be " + ("> 0" if positive else f">= {low}"), value)
        return float(value)
    return check


def text(optional: bool = False, choices: tuple | None = None):
    def check(value, where):
        if value is None and optional:
            return None
        if not isinstance(value, str) or not value:
            _fail(where, "must be a non-empty string" + (" or null" if optional else ""), value)
        if choices is not None and value not in choices:
            _fail(where, f"must be one of {list(choices)}", value)
        return value
    return check


def boolean(value, where):
    if not isinstance(value, bool):
        _fail(where, "must be true or false", value)
    return value


def mapping(value, where):
    if value is None:
        return {}
    if not isinstance(value, dict):
        _fail(where, "must be a mapping", value)
    return value


def sequence(item, min_length: int = 1, unique: bool = False):
    def check(value, where):
        if not isinstance(value, (list, tuple)):
            value = [value]
        if len(value) < min_length:
            _fail(where, f"must be a list of at least {min_length} item(s)", value)
        out = [item(v, f"{where}[{i}]") for i, v in enumerate(value)]
        if unique and len(set(out)) != len(out):
            _fail(where, "must not repeat values", value)
        return out
    return check


UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
         "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}


def memory(value, where):
    """Bytes from an integer or a string like '4GiB' / '500MB'; null = the solver's default."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B)\s*", str(value))
    if not match or match.group(2) not in UNITS or float(match.group(1)) <= 0:
        _fail(where, "must be a number of bytes or a size like '4GiB' or '500MB'", value)
    return int(float(match.group(1)) * UNITS[match.group(2)])


def section(fields: dict[str, Field]):
    def check(value, where):
        value = mapping(value, where)
        unknown = sorted(set(value) - set(fields))
        if unknown:
            raise ConfigError(f"{where + ': ' if where else ''}unknown key(s) {unknown}; allowed: {sorted(fields)}")
        out = {}
        for key, field in fields.items():
            path = f"{where}.{key}" if where else key
            if key in value:
                out[key] = field.check(value[key], path)
            elif field.default is _MISSING:
                raise ConfigError(f"{path}: required key is missing")
            else:
                out[key] = field.check(copy.deepcopy(field.default), path)
        return out
    return check


def _kernel(value, where):
    from .architecture import canonical

    out = section({"architecture": Field(lambda v, w: v)})(value, where)
    try:
        canonical(out["architecture"])
    except ValueError as e:
        raise ConfigError(f"{where}.architecture: {e}") from None
    return out


def _kernels(value, where):
    value = mapping(value, where)
    if not value:
        _fail(where, "must name at least one kernel, e.g. {cnn: {architecture: [...]}}", value)
    for name in value:
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            _fail(where, "kernel names must be letters, digits, '_', '-' or '.' (they name store folders)", name)
    return {name: _kernel(spec, f"{where}.{name}") for name, spec in value.items()}


def _data_sources():
    from .data import SOURCES

    return tuple(SOURCES) + ("qm9",)


def _group(value, where):
    if value is None:
        return None
    from .kernels.groups import get_group

    try:
        get_group(value)
    except (ValueError, KeyError) as e:
        raise ConfigError(f"{where}: {e}") from None
    return value


SCHEMA = section({
    "name": Field(text()),
    "data": Field(section({
        "source": Field(lambda v, w: text(choices=_data_sources())(v, w)),
        "path": Field(text(optional=True), None),
        "options": Field(mapping, {}),
        "train_sizes": Field(sequence(integer(1), unique=True)),
        "test_size": Field(integer(1)),
        "validation_size": Field(integer(0), 0),
        "seed": Field(integer(0), 0),
        "standardize": Field(boolean, True),
        "test_transform": Field(_group, None),
    })),
    "kernels": Field(_kernels),
    "kinds": Field(sequence(text(choices=("nngp", "ntk")), unique=True), ["ntk"]),
    "dtype": Field(text(choices=("float64", "float32")), "float64"),
    "store": Field(text()),
    "storage_options": Field(mapping, {}),
    "tiling": Field(section({
        "tile_size": Field(integer(1, optional=True), None),
        "workers": Field(integer(1, optional=True), None),
        "cpus_per_worker": Field(number(positive=True), 1.0),
        "gpus_per_worker": Field(number(low=0), 0.0),
        "max_inflight": Field(integer(1), 2),
        "max_attempts": Field(integer(1), 3),
    }), {}),
    "solver": Field(section({
        "method": Field(text(choices=("auto", "cholesky", "eigh", "cg", "lanczos")), "auto"),
        "diag_reg": Field(sequence(number(low=0)), [1e-4]),
        "diag_reg_absolute_scale": Field(boolean, False),
        "times": Field(sequence(number(low=0, infinity=True)), [math.inf]),
        "learning_rate": Field(number(positive=True), 1.0),
        "compute_variance": Field(boolean, False),
        "memory_budget": Field(memory, None),
        "tol": Field(number(positive=True), 1e-10),
        "max_iterations": Field(integer(1), 1000),
        "preconditioner_rank": Field(integer(0), 256),
        "scheduler": Field(text(optional=True, choices=("threads", "ray")), None),
    }), {}),
    "tracking": Field(section({
        "uri": Field(text(optional=True), None),
        "experiment": Field(text(optional=True), None),
    }), {}),
    "ray": Field(section({"address": Field(text(optional=True), None)}), {}),
})


def apply_overrides(config: dict, overrides: list[str]) -> dict:
    """Copy of `config` with each "dotted.key=yaml value" applied (lists indexed by number)."""
    config = copy.deepcopy(config)
    for override in overrides or []:
        key, sep, raw = override.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {override!r} must look like key.path=value")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise ConfigError(f"override {key}: value {raw!r} is not valid YAML ({e})") from None
        parts = key.strip().split(".")
        node = config
        for i, part in enumerate(parts[:-1]):
            child = node.get(part) if isinstance(node, dict) else None
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {key}: {'.'.join(parts[:i + 1])} is not a mapping")
            node = child
        node[parts[-1]] = value
    return config


def resolve_paths(config: dict, relative_paths: bool = True) -> dict:
    """Absolute local paths (store, data.path) from the working directory.

    `relative_paths=False` (Ray jobs, whose working directory is a temporary copy)
    refuses relative local paths, including a SQLite tracking file.
    """
    def absolute(value, key):
        if value is None or "://" in value:
            return value
        if not relative_paths and not os.path.isabs(os.path.expanduser(value)):
            raise ConfigError(f"{key}: {value!r} is relative; in a Ray job use an absolute path or a URI "
                              "(the job's working directory is a temporary copy)")
        return str(Path(value).expanduser().resolve())

    uri = config["tracking"]["uri"]
    if not relative_paths and (uri is None and "MLFLOW_TRACKING_URI" not in os.environ
                               or uri is not None and uri.startswith("sqlite:///")
                               and not uri.startswith("sqlite:////")):
        raise ConfigError("tracking.uri: a Ray job needs an absolute tracking URI (sqlite:////abs/path/mlflow.db "
                          "or http://server:5000), not a file relative to its temporary working directory")

    config["store"] = absolute(config["store"], "store")
    config["data"]["path"] = absolute(config["data"]["path"], "data.path")
    if config["data"]["path"] is not None and not os.path.exists(config["data"]["path"]):
        raise ConfigError(f"data.path: {config['data']['path']} does not exist")
    if config["tracking"]["experiment"] is None:
        config["tracking"]["experiment"] = config["name"]
    return config


def validate(config, overrides: list[str] | None = None, relative_paths: bool = True) -> dict:
    """The resolved experiment config (every key present), or ConfigError naming the bad key."""
    if not isinstance(config, dict):
        raise ConfigError(f"an experiment config must be a mapping of keys, got {type(config).__name__}")
    resolved = resolve_paths(SCHEMA(apply_overrides(config, overrides or []), ""), relative_paths)
    if max(resolved["data"]["train_sizes"]) + resolved["data"]["test_size"] < 2:
        raise ConfigError("data: need at least one training and one test point")
    return resolved


def load(path: str | os.PathLike, overrides: list[str] | None = None, relative_paths: bool = True) -> dict:
    """Read and validate an experiment config file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {' '.join(str(e).split())}") from None
    return validate(raw, overrides, relative_paths)
