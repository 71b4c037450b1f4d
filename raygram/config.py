"""The one config schema: YAML -> typed, frozen option objects that the functions take directly.

    name: quickstart
    data: {source: digits, train_sizes: [50, 100], test_size: 200, seed: 0,
           test_transform: C4}            # plus path / options for file sources
    kernels:                              # one Gram store per kernel: <store>/<name>
      cnn: {architecture: [...]}          # layer lists (raygram.kernels.architecture)
    kinds: [ntk]
    store: raygram-runs/quickstart        # local folder or s3://bucket/prefix
    tiling: {tile_size: null, workers: null, cpus_per_worker: 1, gpus_per_worker: 0}
    solver: {diag_reg: [1e-3], times: auto}     # auto (the default): from the Gram's spectrum
    tracking: {uri: null, experiment: raygram}

Every section is a frozen dataclass (`DataOptions`, `TilingOptions`, `SolverOptions`,
`TrackingOptions`, `RayOptions`, `KernelOptions`) and the whole file a `Config`. Each
field validates and normalises itself on construction, so a YAML key and the keyword of
the same name in Python are checked by the same code: `TilingOptions(tile_size=True)`
and `tiling: {tile_size: true}` fail alike with a `ConfigError` naming `tiling.tile_size`.
A setting keeps its name from the YAML to the function that uses it:
`build_gram(..., tiling=config.tiling)`, `predict(..., solver=config.solver)`.

A build-only config is the same schema with the `npy` data source (arrays in .npy
files, no labels) and without training sizes: `raygram build` fills its stores and
`raygram run` refuses it. `apply_overrides` ("a.b=value", the value parsed as YAML)
changes any key before validation. Relative local paths are relative to the working
directory the command runs in. This module imports nothing else from raygram but its
errors: every stage below the experiment may depend on it.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import os
import re
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping

import yaml

from raygram.errors import ConfigError, RaygramError

__all__ = [
    "KINDS", "DTYPES", "METHODS", "SCHEDULERS", "Config", "DataOptions", "KernelOptions", "TilingOptions",
    "SolverOptions", "TrackingOptions", "RayOptions", "load_config", "validate", "apply_overrides",
    "parse_memory", "WIDTH_ARGUMENTS", "check_widths", "is_secret", "redact", "redact_config", "secret_values",
    "is_local", "REDACTED", "check_exists", "redact_text", "check_allocation",
    "input_checks", "AUTO_TIMES",
]

KINDS = ("nngp", "ntk")
DTYPES = ("float32", "float64")
METHODS = ("auto", "cholesky", "eigh", "cg", "lanczos")
SCHEDULERS = ("threads", "ray")
WIDTH_ARGUMENTS = ("out_chan", "out_dim")  # layer arguments that are widths: integers >= 1
# storage_options keys whose values are credentials (key, secret, token, session_token,
# password, client_kwargs.aws_secret_access_key, ...): they never leave the process.
SECRET_KEY = re.compile(r"key|secret|token|password|credential|session", re.IGNORECASE)
REDACTED = "***"
UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
         "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}


# ----------------------------------------------------------------------------- value checks
# Each check takes (value, where) and returns the normalised value or raises ConfigError
# naming `where`, the dotted key.

def fail(where: str, message: str, value) -> None:
    """Raise the ConfigError for `value` at the dotted key `where`."""
    raise ConfigError(f"{where}: {message}, got {value!r}")


def integer(low: int | None = None, optional: bool = False):
    """Check: an int (not a bool) >= `low`, or None when `optional`."""
    def check(value, where):
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or (low is not None and value < low):
            fail(where, "must be an integer" + (f" >= {low}" if low is not None else "")
                 + (" or null" if optional else ""), value)
        return int(value)
    return check


def number(low: float | None = None, positive: bool = False, optional: bool = False, infinity: bool = False):
    """Check: a finite float (or inf when `infinity`) >= `low` / > 0 when `positive`, None when `optional`."""
    def check(value, where):
        if value is None and optional:
            return None
        if infinity and isinstance(value, str) and value.strip().lower() in ("inf", "infinity", ".inf"):
            return math.inf
        if isinstance(value, str) and re.fullmatch(r"\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*", value):
            value = float(value)  # YAML 1.1 reads 1e-3 (no dot) as a string
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or (
                not infinity and math.isinf(value)):
            fail(where, "must be a number" + (" or 'inf'" if infinity else ""), value)
        if (low is not None and value < low) or (positive and value <= 0):
            fail(where, "must be " + ("> 0" if positive else f">= {low}"), value)
        return float(value)
    return check


def text(optional: bool = False, choices: tuple | None = None):
    """Check: a non-empty string (one of `choices` if given), or None when `optional`."""
    def check(value, where):
        if value is None and optional:
            return None
        if not isinstance(value, str) or not value:
            fail(where, "must be a non-empty string" + (" or null" if optional else ""), value)
        if choices is not None and value not in choices:
            fail(where, f"must be one of {list(choices)}", value)
        return value
    return check


def boolean(value, where):
    """Check: true or false."""
    if not isinstance(value, bool):
        fail(where, "must be true or false", value)
    return value


def mapping(value, where):
    """Check: a mapping (None reads as {}); returned as a plain dict copy."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        fail(where, "must be a mapping", value)
    return dict(value)


def sequence(item, min_length: int = 1, unique: bool = False):
    """Check: a list (a single value reads as a one-item list) of `item`s, returned as a tuple."""
    def check(value, where):
        if not isinstance(value, (list, tuple)):
            value = [value]
        if len(value) < min_length:
            fail(where, f"must be a list of at least {min_length} item(s)", value)
        out = tuple(item(v, f"{where}[{i}]") for i, v in enumerate(value))
        if unique and len(set(out)) != len(out):
            fail(where, "must not repeat values", value)
        return out
    return check


def parse_memory(value, where: str = "memory_budget") -> int | None:
    """Bytes from a positive integer or a string like '4GiB' / '500MB'; None stays None."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        if value <= 0:
            fail(where, "must be a positive number of bytes", value)
        return value
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B)\s*", str(value))
    if not match or match.group(2) not in UNITS or float(match.group(1)) <= 0:
        fail(where, "must be a number of bytes or a size like '4GiB' or '500MB'", value)
    return int(float(match.group(1)) * UNITS[match.group(2)])


# ----------------------------------------------------------------------------- credentials
# Object-store credentials may be given in `storage_options` (environment variables and
# profiles are better: docs/experiments.md). Their values are redacted wherever a config
# is printed, logged, hashed or named in an error.

def is_local(store: str) -> bool:
    """Whether a store is a local folder.

    Args:
      store: a path, a file://path or an object-store URL (s3://bucket/prefix).

    Returns:
      True for a path or file://path, False for any other URL.
    """
    return "://" not in store or store.startswith("file://")


def is_secret(key) -> bool:
    """Whether a storage_options key names a credential.

    Args:
      key: an option name, e.g. "secret", "aws_session_token", "client_kwargs".

    Returns:
      True when the name matches `SECRET_KEY` (key, secret, token, password, credential,
      session; case-insensitive).
    """
    return isinstance(key, str) and SECRET_KEY.search(key) is not None


def redact(options):
    """Storage options without their credentials.

    Args:
      options: a mapping of fsspec options (nested mappings and lists are followed).

    Returns:
      A copy with the value of every `is_secret` key replaced by REDACTED (null stays null).
    """
    if isinstance(options, Mapping):
        return {k: (REDACTED if v is not None else None) if is_secret(k) else redact(v) for k, v in options.items()}
    if isinstance(options, (list, tuple)):
        return [redact(v) for v in options]
    return options


_URL_PASSWORD = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://[^/@:]*):([^/@]+)@")


def _redact_url(url):
    return _URL_PASSWORD.sub(rf"\1:{REDACTED}@", url) if isinstance(url, str) else url


def secret_values(config: Mapping) -> set[str]:
    """The credentials of a config, to scrub from messages (`redact_text`).

    Args:
      config: a config mapping (`Config.to_dict()`), or {"storage_options": {...}}.

    Returns:
      The values under secret keys of its storage_options and a password in its store
      URL, as strings of at least 4 characters.
    """
    found = set()

    def visit(value, secret):
        if isinstance(value, Mapping):
            for k, v in value.items():
                visit(v, secret or is_secret(k))
        elif isinstance(value, (list, tuple)):
            for v in value:
                visit(v, secret)
        elif secret and isinstance(value, (str, int, float)) and not isinstance(value, bool):
            found.add(str(value))

    visit(config.get("storage_options"), False)
    match = _URL_PASSWORD.match(config.get("store") or "") if isinstance(config.get("store"), str) else None
    if match:
        found.add(match.group(2))
    return {v for v in found if len(v) >= 4}  # shorter strings are no secret and would garble messages


def redact_config(config: Mapping) -> dict:
    """A config mapping without credentials: what may be printed, logged or hashed.

    Args:
      config: a config mapping (`Config.to_dict()`); other keys are kept as they are.

    Returns:
      A shallow copy with its storage_options `redact`ed and a password in its store URL
      replaced by REDACTED.
    """
    out = dict(config)
    if "storage_options" in out:
        out["storage_options"] = redact(out["storage_options"])
    if "store" in out:
        out["store"] = _redact_url(out["store"])
    return out


def redact_text(text: str, secrets) -> str:
    """A message without credentials.

    Args:
      text: e.g. an error message.
      secrets: the strings to hide (`secret_values`).

    Returns:
      `text` with every occurrence of each secret replaced by REDACTED.
    """
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return text


def _storage_options(value, where):
    """Check: a mapping of fsspec options with string keys; values are never echoed (credentials)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: must be a mapping of fsspec options (endpoint_url, ...), "
                          f"got a {type(value).__name__}")
    keys = [k for k in value if not isinstance(k, str) or not k]
    if keys:
        raise ConfigError(f"{where}: keys must be option names (strings), got {keys[0]!r}")
    return copy.deepcopy(dict(value))


def check_allocation(nbytes: int, what: str, where: str, budget: int | None = None) -> None:
    """Refuse an array that this process would allocate from user numbers before allocating it.

    Args:
      nbytes: the array's size in bytes.
      what: what the array is, e.g. "the one-hot targets (5000, 10^9)".
      where: the dotted key (or data file) that sets its size, named in the error.
      budget: bytes allowed; None: half the memory available now.

    Raises:
      ConfigError: the array would exceed `budget`.
    """
    if budget is None:
        import psutil

        budget = psutil.virtual_memory().available // 2
    if nbytes > budget:
        raise ConfigError(f"{where}: {what} would take {nbytes / 2**30:.3g} GiB, more than the "
                          f"{budget / 2**30:.3g} GiB this process may use")


def _architecture(value, where):
    """A layer list: names or {name: {arguments}} (resolved later by raygram.kernels.architecture)."""
    if isinstance(value, Mapping) and "python" in value:
        if len(value) != 1 or not isinstance(value["python"], str) or ":" not in value["python"]:
            fail(where, 'a network defined in Python is {python: "module:attribute"}, e.g. '
                 '{python: "mypackage.nets:kernel_fn"}', value)
        return {"python": value["python"]}
    if isinstance(value, (str, Mapping)):
        value = [value]
    if not isinstance(value, (list, tuple)) or not value:
        fail(where, "must be a non-empty list of layers (names or {name: {arguments}})", value)
    for i, layer in enumerate(value):
        if isinstance(layer, str) and layer:
            continue
        if isinstance(layer, Mapping) and len(layer) == 1 and isinstance(next(iter(layer)), str) and (
                isinstance(next(iter(layer.values())), Mapping) or next(iter(layer.values())) is None):
            continue
        fail(f"{where}[{i}]", "must be a layer name or {name: {arguments}}", layer)
    check_widths(value, where)
    return copy.deepcopy(list(value))


def check_widths(architecture, where: str = "architecture") -> None:
    """Refuse layer widths (`WIDTH_ARGUMENTS`: out_chan, out_dim) that are not integers >= 1.

    neural-tangents' infinite-width kernels do not depend on the widths, so its `Conv`
    and `Dense` accept `out_chan: -1` and the kernel's shape check passes; the finite
    network (and the convergence check) would fail much later.

    Args:
      architecture: a layer list, names or {name: {arguments}}; other shapes are left
        to the layer-list checks.
      where: the dotted key named in errors.

    Raises:
      ConfigError: naming the layer, e.g. `kernels.cnn.architecture[0].Conv.out_chan`.
    """
    if not isinstance(architecture, (list, tuple)):
        return
    for i, layer in enumerate(architecture):
        if not isinstance(layer, Mapping) or len(layer) != 1:
            continue
        (name, arguments), = layer.items()
        for key in WIDTH_ARGUMENTS:
            if isinstance(arguments, Mapping) and key in arguments:
                integer(1)(arguments[key], f"{where}[{i}].{name}.{key}")


# ----------------------------------------------------------------------------- option objects

def setting(default: Any = dataclasses.MISSING, check: Callable | None = None, help: str = "", repr: bool = True):
    """A dataclass field with its check and one line of help (shown by `raygram run --print-config`);
    `repr=False` keeps it out of the object's repr (credentials)."""
    metadata = {"check": check, "help": help}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default), metadata=metadata, repr=repr)
    return dataclasses.field(default=default, metadata=metadata, repr=repr)


class Options:
    """Base of the option objects: every field is checked and normalised when constructed."""

    SECTION: ClassVar[str] = ""

    def __post_init__(self):
        for field in dataclasses.fields(self):
            check = field.metadata.get("check")
            if check is not None:
                object.__setattr__(self, field.name, check(getattr(self, field.name), self.where(field.name)))
        self.check()

    def check(self) -> None:
        """Checks across fields (subclasses)."""

    @classmethod
    def where(cls, key: str) -> str:
        return f"{cls.SECTION}.{key}" if cls.SECTION else key

    @classmethod
    def from_mapping(cls, value, where: str | None = None):
        """The options of a YAML mapping; unknown and missing keys are ConfigErrors."""
        where = cls.SECTION if where is None else where
        value = mapping(value, where or "config")
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(map(str, value)) - set(names))
        if unknown:
            raise ConfigError(f"{where + ': ' if where else ''}unknown key(s) {unknown}; allowed: {sorted(names)}")
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in value
                   and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        if missing:
            raise ConfigError(f"{cls.where(missing[0])}: required key is missing")
        return cls(**value)

    def to_dict(self) -> dict:
        """Plain YAML-able values (tuples as lists, nested options as mappings)."""
        return _plain(dataclasses.asdict(self))


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


@dataclasses.dataclass(frozen=True, kw_only=True)
class TilingOptions(Options):
    """How a Gram build is split into tiles and spread over Ray actors (YAML section `tiling`)."""

    SECTION: ClassVar[str] = "tiling"
    tile_size: int | None = setting(None, integer(1, optional=True),
                                    "points per tile side; null: the store's, else from the kernel's memory")
    workers: int | None = setting(None, integer(1, optional=True),
                                  "tile actors at most; null: one per GPU of the cluster as it grows and shrinks "
                                  "(without GPUs one per CPU)")
    cpus_per_worker: float = setting(1.0, number(positive=True), "CPUs each actor reserves")
    gpus_per_worker: float = setting(0.0, number(low=0), "GPUs each actor reserves (fractions share a GPU)")
    max_inflight: int = setting(2, integer(1), "tiles queued per actor")
    max_attempts: int = setting(3, integer(1), "tries of one tile before the build stops with TileFailed")
    lease_ttl: float = setting(60.0, number(positive=True),
                               "seconds the store's build lease lives without renewal")
    wait_for_workers: float = setting(300.0, number(low=0),
                                      "seconds a build waits for a node to run a worker on (joining nodes, "
                                      "an autoscaler) before WorkersLost; 0: refuse at once")


AUTO_TIMES = "auto"


def _times(value, where):
    """Check: "auto" (times chosen from the Gram's spectrum by the experiment), else a list of t >= 0 or inf."""
    if isinstance(value, str) and value.strip().lower() == AUTO_TIMES:
        return AUTO_TIMES
    try:
        return sequence(number(low=0, infinity=True))(value, where)
    except ConfigError as e:
        raise ConfigError(f"{e} (or {AUTO_TIMES}: log-spaced times from the training Gram's spectrum)") from None


@dataclasses.dataclass(frozen=True, kw_only=True)
class SolverOptions(Options):
    """Kernel regression settings (YAML section `solver`); `predict` takes them directly.

    Every combination of `diag_reg` (R,) and `times` (T,) is computed from one
    factorisation, eigendecomposition or Krylov basis per kind. `times: auto` (what an
    experiment config gets when it leaves `times` out) is resolved by the experiment, per
    kernel and kind, from the spectrum of the training Gram
    (`raygram.experiment.run.spectral_times`); `predict` itself takes explicit times.
    """

    SECTION: ClassVar[str] = "solver"
    method: str = setting("auto", text(choices=METHODS),
                          "auto, cholesky, eigh (in core) or cg, lanczos (out of core)")
    diag_reg: tuple[float, ...] = setting((1e-4,), sequence(number(low=0)),
                                          "ridges, relative to the mean diagonal unless diag_reg_absolute_scale")
    diag_reg_absolute_scale: bool = setting(False, boolean, "diag_reg in the kernel's own units")
    times: tuple[float, ...] | str = setting(
        (math.inf,), lambda v, w: _times(v, w),
        "training times t as neural_tangents.predict's (inf: infinite time), or auto: per kernel and kind "
        "from the training Gram's spectrum (an experiment's default)")
    learning_rate: float = setting(1.0, number(positive=True), "gradient-descent learning rate")
    compute_variance: bool = setting(False, boolean, "also the predictive variances (reads the test kernels)")
    memory_budget: int | None = setting(None, parse_memory,
                                        "bytes (or '4GiB') a solve may hold; null: half the free memory")
    tol: float = setting(1e-10, number(positive=True), "CG residual / Lanczos change tolerance")
    max_iterations: int = setting(1000, integer(1), "CG iterations / Lanczos steps")
    preconditioner_rank: int = setting(256, integer(0), "rank of CG's Nystrom preconditioner (0: none)")
    blas_threads: int | None = setting(None, integer(1, optional=True),
                                       "BLAS threads per dask task; null: all cores for eigh, else 1")
    scheduler: str | None = setting(None, text(optional=True, choices=SCHEDULERS),
                                    "dask scheduler: threads, or ray (tasks on the connected cluster)")


@dataclasses.dataclass(frozen=True, kw_only=True)
class DataOptions(Options):
    """Where the data comes from and how it is split (YAML section `data`).

    `train_sizes` are nested prefixes of one random training set, so one Gram per kernel
    serves every size; `validation_size` held-out examples choose the ridge. Inputs are
    standardised with the statistics of the whole training pool (every example not held out
    for validation or test), so they do not depend on which training sizes are listed.
    `seeds: [0, 1, 2]` repeats the experiment over several splits (one store per seed and
    kernel; results as mean ± standard error); `seed` is the single seed otherwise. A
    build-only config (`source: npy`) leaves `train_sizes` and `test_size` out: every row
    is used.
    """

    SECTION: ClassVar[str] = "data"
    source: str = setting(check=text(), help="digits, mnist, npz, medmnist, image_folder, qm9, molecules, npy")
    path: str | None = setting(None, text(optional=True), "file or folder of file sources")
    options: dict = setting({}, mapping, "source-specific options")
    train_sizes: tuple[int, ...] | None = setting(
        None, lambda v, w: None if v is None else sequence(integer(1), unique=True)(v, w),
        "training sizes (nested prefixes of one training set)")
    test_size: int | None = setting(None, integer(1, optional=True), "test examples")
    validation_size: int = setting(0, integer(0), "validation examples (choose the ridge)")
    seed: int = setting(0, integer(0), "split and test-transform seed")
    seeds: tuple[int, ...] | None = setting(
        None, lambda v, w: None if v is None else sequence(integer(0), unique=True)(v, w),
        "repeat the experiment over these seeds (mean ± standard error); null: `seed` only")
    standardize: bool = setting(True, boolean, "standardise inputs per channel with training statistics")
    test_transform: str | None = setting(None, text(optional=True), "group whose random actions move test inputs")

    def check(self):
        if self.seeds is not None and self.seed != 0:
            raise ConfigError(f"data.seed and data.seeds: give one of them, got seed {self.seed} and seeds "
                              f"{list(self.seeds)}")
        if self.source == "npy":
            if self.train_sizes is not None or self.test_size is not None:
                raise ConfigError("data: source npy (build-only) uses every row of its arrays; "
                                  "leave train_sizes and test_size out")
            if self.seeds is not None:
                raise ConfigError("data.seeds: source npy (build-only) has no split to repeat; leave seeds out")
        else:
            for key in ("train_sizes", "test_size"):
                if getattr(self, key) is None:
                    raise ConfigError(f"data.{key}: required key is missing")

    @property
    def all_seeds(self) -> tuple[int, ...]:
        """The seeds the experiment runs: `seeds`, else (`seed`,)."""
        return self.seeds if self.seeds is not None else (self.seed,)

    def for_seed(self, seed: int) -> "DataOptions":
        """These options for one run of the experiment.

        Args:
          seed: one of `all_seeds`.

        Returns:
          A copy with `seed` set and `seeds` unset, what `prepare_data` reads.
        """
        return dataclasses.replace(self, seed=seed, seeds=None)


@dataclasses.dataclass(frozen=True, kw_only=True)
class KernelOptions(Options):
    """One kernel of an experiment: its architecture (a layer list)."""

    architecture: list | dict = setting(check=_architecture,
                                        help="layer list: names or {name: {arguments}}; or {python: module:attribute}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrackingOptions(Options):
    """MLflow settings (YAML section `tracking`); credentials come from MLflow's environment variables."""

    SECTION: ClassVar[str] = "tracking"
    uri: str | None = setting(None, text(optional=True),
                              "tracking URI; null: MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db")
    experiment: str | None = setting(None, text(optional=True), "MLflow experiment; null: the config's name")


@dataclasses.dataclass(frozen=True, kw_only=True)
class RayOptions(Options):
    """Which Ray cluster to use (YAML section `ray`)."""

    SECTION: ClassVar[str] = "ray"
    address: str | None = setting(None, text(optional=True), "Ray address; null: RAY_ADDRESS or a local instance")


def _kernels(value, where):
    value = mapping(value, where)
    if not value:
        fail(where, "must name at least one kernel, e.g. {cnn: {architecture: [...]}}", value)
    for name in value:
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            fail(where, "kernel names must be letters, digits, '_', '-' or '.' (they name store folders)", name)
    return {name: spec if isinstance(spec, KernelOptions) else _kernel(spec, f"{where}.{name}")
            for name, spec in value.items()}


def _kernel(spec, where: str) -> KernelOptions:
    """One kernel's options; errors name the whole dotted key (kernels.<name>.architecture...)."""
    try:
        return KernelOptions.from_mapping(spec, where)
    except ConfigError as e:
        message = str(e)
        raise ConfigError(f"{where}.{message}" if message.startswith("architecture") else message) from None


def _section(cls):
    def check(value, where):
        return value if isinstance(value, cls) else cls.from_mapping(value, where)
    return check


def _solver_section(value, where):
    """An experiment's solver section: `times` left out means auto (times from the Gram's spectrum)."""
    if isinstance(value, SolverOptions):
        return value
    value = mapping(value, where)
    value.setdefault("times", AUTO_TIMES)
    return SolverOptions.from_mapping(value, where)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config(Options):
    """A whole experiment (or build-only) config; `validate` / `load_config` make one from YAML."""

    name: str = setting(check=text(), help="experiment name (MLflow run name)")
    data: DataOptions = setting(check=_section(DataOptions), help="data set and splits")
    kernels: dict = setting(check=_kernels, help="{name: {architecture: [...]}}, one store each")
    kinds: tuple[str, ...] = setting(KINDS, sequence(text(choices=KINDS), unique=True), "nngp and/or ntk")
    dtype: str = setting("float64", text(choices=DTYPES), "float64 or float32")
    store: str = setting(check=text(), help="folder or URL (s3://bucket/prefix) holding <store>/<kernel>")
    storage_options: dict = setting({}, _storage_options, "fsspec options of object stores (endpoint_url, ...); "
                                    "credentials are better in the environment (AWS_PROFILE, ...)", repr=False)
    tiling: TilingOptions = setting(TilingOptions(), _section(TilingOptions), "Gram build")
    solver: SolverOptions = setting(SolverOptions(times=AUTO_TIMES), _solver_section,
                                    "kernel regression (times: auto unless given)")
    tracking: TrackingOptions = setting(TrackingOptions(), _section(TrackingOptions), "MLflow")
    ray: RayOptions = setting(RayOptions(), _section(RayOptions), "Ray cluster")

    def check(self):
        if self.storage_options and is_local(self.store):
            raise ConfigError(f"storage_options: fsspec options are for object-store URLs (s3://bucket/prefix); "
                              f"the store {self.store} is a local folder")

    @property
    def build_only(self) -> bool:
        """True for configs whose data has no targets (source npy): they can be built, not solved."""
        return self.data.source == "npy"

    def kernel_store(self, kernel: str, seed: int | None = None) -> str:
        """The store of one kernel: <store>/<kernel>, or <store>/seed<seed>/<kernel> with `data.seeds`.

        Args:
          kernel: a name from `kernels`.
          seed: the run's seed (one of `data.all_seeds`); needed only with `data.seeds`.
        """
        if self.data.seeds is None:
            return self.store.rstrip("/") + "/" + kernel
        if seed not in self.data.seeds:
            raise ValueError(f"seed {seed!r} is not one of data.seeds {list(self.data.seeds)}")
        return f"{self.store.rstrip('/')}/seed{seed}/{kernel}"

    def to_dict(self) -> dict:
        out = super().to_dict()
        out["kernels"] = {name: spec.to_dict() if isinstance(spec, KernelOptions) else spec
                          for name, spec in self.kernels.items()}
        return out

    def public_dict(self) -> dict:
        """`to_dict()` without credentials (`redact_config`): what is printed, logged to MLflow and hashed."""
        return redact_config(self.to_dict())

    def secrets(self) -> set[str]:
        """The credential strings of this config (`secret_values`), to scrub from messages."""
        return secret_values(self.to_dict())


# ----------------------------------------------------------------------------- YAML -> Config

@contextlib.contextmanager
def input_checks():
    """Failures while reading and checking input are bad input (ConfigError, exit 2), whatever raised them.

    Wraps the checks that run before anything is written (config files, data files, stores):
    a `RaygramError` passes unchanged, a ValueError, OSError or ImportError becomes a
    ConfigError with its message.
    """
    try:
        yield
    except RaygramError:
        raise
    except (ValueError, OSError, ImportError) as e:
        raise ConfigError(f"{type(e).__name__}: {e}" if not str(e) else str(e)) from e


def apply_overrides(config: dict, overrides: list[str] | None) -> dict:
    """Copy of the mapping `config` with each "dotted.key=yaml value" applied."""
    config = copy.deepcopy(config)
    for override in overrides or []:
        key, sep, raw = override.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {override!r} must look like key.path=value")
        parts = key.strip().split(".")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            if "storage_options" in parts[:-1] and any(map(is_secret, parts[parts.index("storage_options") + 1:])):
                raise ConfigError(f"override {key}: value {REDACTED} is not valid YAML") from None
            raise ConfigError(f"override {key}: value {raw!r} is not valid YAML ({' '.join(str(e).split())})") \
                from None
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


def _resolve_paths(raw: dict, relative_paths: bool) -> dict:
    """Absolute local paths (store, data.path, data.options.x_test / energy_file) from the working directory.

    `relative_paths=False` (Ray jobs, whose working directory is a temporary copy)
    refuses relative local paths, including a SQLite tracking file.
    """
    def absolute(value, key):
        if not isinstance(value, str) or "://" in value:
            return value
        if not relative_paths and not os.path.isabs(os.path.expanduser(value)):
            raise ConfigError(f"{key}: {value!r} is relative; in a Ray job use an absolute path or a URI "
                              "(the job's working directory is a temporary copy)")
        return str(Path(value).expanduser().absolute())

    tracking = raw.get("tracking") if isinstance(raw.get("tracking"), dict) else {}
    uri = tracking.get("uri")
    if not relative_paths and (uri is None and "MLFLOW_TRACKING_URI" not in os.environ
                               or isinstance(uri, str) and uri.startswith("sqlite:///")
                               and not uri.startswith("sqlite:////")):
        raise ConfigError("tracking.uri: a Ray job needs an absolute tracking URI (sqlite:////abs/path/mlflow.db "
                          "or http://server:5000), not a file relative to its temporary working directory")
    raw["store"] = absolute(raw.get("store"), "store")
    data = raw.get("data")
    if isinstance(data, dict):
        data["path"] = absolute(data.get("path"), "data.path")
        for key in ("x_test", "energy_file"):  # files named in a source's options
            if isinstance(data.get("options"), dict) and isinstance(data["options"].get(key), str):
                data["options"][key] = absolute(data["options"][key], f"data.options.{key}")
    return raw


def check_exists(path: str, where: str) -> None:
    """Refuse a local path that cannot be opened: missing, a symlink loop, a name too long, no permission.

    Args:
      path: a local file or folder.
      where: the dotted key named in the error.

    Raises:
      ConfigError: one line naming `where`, the path and the reason.
    """
    try:
        os.stat(path)
    except FileNotFoundError:
        raise ConfigError(f"{where}: {path} does not exist") from None
    except (OSError, ValueError) as e:  # ELOOP, ENAMETOOLONG, EACCES; ValueError: a NUL byte
        raise ConfigError(f"{where}: {path}: {getattr(e, 'strerror', None) or e}") from None


def validate(config, overrides: list[str] | None = None, relative_paths: bool = True) -> Config:
    """The `Config` of a YAML mapping (overrides applied, defaults filled in, paths absolute).

    Args:
      config: the mapping read from a YAML file (or a `Config`, returned re-checked).
      overrides: "dotted.key=yaml value" strings applied before validation.
      relative_paths: False refuses relative local paths (Ray jobs).

    Raises:
      ConfigError: names the first bad key; nothing is read or written beyond the mapping.
    """
    if isinstance(config, Config):
        config = config.to_dict()
    if not isinstance(config, dict):
        raise ConfigError(f"a config must be a mapping of keys, got {type(config).__name__}")
    raw = _resolve_paths(apply_overrides(config, overrides), relative_paths)
    resolved = Config.from_mapping(raw, "")
    if resolved.tracking.experiment is None:
        resolved = dataclasses.replace(
            resolved, tracking=dataclasses.replace(resolved.tracking, experiment=resolved.name))
    data = resolved.data
    if data.path is not None:
        check_exists(data.path, "data.path")
    if not resolved.build_only and max(data.train_sizes) + data.test_size < 2:
        raise ConfigError("data: need at least one training and one test point")
    return resolved


def load_config(path: str | os.PathLike, overrides: list[str] | None = None, relative_paths: bool = True) -> Config:
    """Read and validate a config file.

    Args:
      path: a YAML file.
      overrides: "dotted.key=yaml value" strings (as `raygram run --set`).
      relative_paths: False refuses relative local paths (Ray jobs).

    Returns:
      The validated `Config`.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path} is not valid YAML: {' '.join(str(e).split())}") from None
    return validate(raw, overrides, relative_paths)
