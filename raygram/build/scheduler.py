"""`build_gram`: the tile scheduler that fills a Gram store from a pool of Ray actors.

The driver checks the inputs and the store (`check_build`: nothing is written before
every check has passed; a local store's path is made absolute first, so that workers
whose working directory is elsewhere write where the driver meant), takes the store's
lease, and hands tiles to
long-lived `TileWorker` actors, at most `max_inflight` per actor. Workers write tiles
into the store themselves; the driver only sees tile ids and timings. A tile whose actor
died goes back to the queue (a fresh actor replaces the dead one); a tile that fails
`max_attempts` times stops the build with `TileFailed`, naming the tile and the cause.
Rerunning a build skips every tile already in the store.
"""
from __future__ import annotations

import collections
import dataclasses
import logging
import math
import os
import socket
import stat
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from raygram.build.lease import BuildLease, process_alive
from raygram.build.worker import TileWorker, jax_env
from raygram.config import DTYPES, KINDS, TilingOptions, check_widths, is_local
from raygram.errors import (CompileFailed, ConfigError, FingerprintMismatch, StoreError, TileFailed,
                            WorkersLost)
from raygram.build.kernel_source import kernel_source
from raygram.store.gram_store import GramStore, describe_difference, fingerprint
from raygram.store.plan import TilePlan, balanced_tile_size, fit_tile_size

log = logging.getLogger("raygram.build")

PROBE_SIZES = (2, 4, 8)  # tile sizes at which a worker measures XLA's peak memory
# Where memory allows big tiles, aim for about TARGET_GRID tiles a side: the symmetric
# block then costs (g + 1) / 2g = 0.52 of the full square and many workers stay busy;
# but keep at least MIN_TILE points a tile so per-tile overheads stay small.
MIN_TILE = 32
TARGET_GRID = 32


@dataclasses.dataclass
class BuildReport:
    """What a build did: tile counts, wall time and per-worker timings (seconds)."""

    store: str
    tile_size: int
    tiles_total: int
    tiles_skipped: int
    tiles_computed: int
    entries_computed: int
    wall_s: float
    workers: list[dict]
    resubmitted: int = 0
    repaired: list[str] = dataclasses.field(default_factory=list)

    @property
    def compute_share(self) -> float:
        """Share of the workers' time after compiling that their devices spent computing tiles.

        Writes overlap the next tile's compute, so they count only where they made a
        device wait (as idle time).
        """
        busy = sum(w["compute_s"] + w["idle_s"] for w in self.workers)
        return sum(w["compute_s"] for w in self.workers) / busy if busy else float("nan")

    def metrics(self) -> dict[str, float]:
        """Flat numbers for experiment tracking (e.g. `mlflow.log_metrics`)."""
        totals = {key: sum(w[key] for w in self.workers)
                  for key in ("compute_s", "write_s", "idle_s", "compile_s")}
        return {"tiles_computed": self.tiles_computed, "tiles_skipped": self.tiles_skipped,
                "entries_computed": self.entries_computed, "wall_s": self.wall_s,
                "entries_per_s": self.entries_computed / self.wall_s if self.wall_s else 0.0,
                "compute_share": self.compute_share, "resubmitted": self.resubmitted,
                **{f"worker_{key}": value for key, value in totals.items()}}


def check_inputs(x_train, x_test, kinds, dtype):
    """Validated (x_train, x_test, kinds, dtype); raises ConfigError before anything is written.

    Inputs must be real numbers: a complex array would be cast to the store's dtype by the
    workers, dropping its imaginary part while the fingerprint hashes it.
    """
    try:
        kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds)
    except TypeError:
        raise ConfigError(f"kinds must be distinct names from {KINDS}, got {kinds!r}") from None
    if not kinds or any(k not in KINDS for k in kinds) or len(set(kinds)) != len(kinds):
        raise ConfigError(f"kinds must be distinct names from {KINDS}, got {kinds!r}")
    try:
        dtype = str(np.dtype(dtype))
    except TypeError:
        dtype = repr(dtype)
    if dtype not in DTYPES:
        raise ConfigError(f"dtype must be one of {DTYPES}, got {dtype}")
    arrays = []
    for name, x in (("x_train", x_train), ("x_test", x_test)):
        if x is None:
            arrays.append(None)
            continue
        try:
            x = np.asarray(x)
        except (ValueError, TypeError) as e:
            raise ConfigError(f"{name} must be an array of shape (n_points, ...features): {e}") from None
        if x.ndim < 2 or x.shape[0] == 0:
            raise ConfigError(f"{name} must have shape (n_points, ...features) with n_points >= 1, got {x.shape}")
        if x.dtype.kind not in "iuf":
            raise ConfigError(f"{name} must hold real numbers (integers or floats), got dtype {x.dtype}"
                              + ("; complex inputs would lose their imaginary part" if x.dtype.kind == "c" else ""))
        bad = ~np.isfinite(x)
        if bad.any():
            first = np.argwhere(bad)[0]
            raise ConfigError(f"{name} has {int(bad.sum())} non-finite values (NaN or inf), the first at "
                             f"index {tuple(int(i) for i in first)}; clean the data before building")
        arrays.append(x)
    if arrays[1] is not None and arrays[1].shape[1:] != arrays[0].shape[1:]:
        raise ConfigError(f"x_test points have shape {arrays[1].shape[1:]}, x_train points "
                         f"{arrays[0].shape[1:]}; they must match")
    return arrays[0], arrays[1], kinds, dtype


# ----------------------------------------------------------------------------- where the store is
# A store is opened on the driver and pickled to the workers by its URL: a relative local
# path would be resolved in each worker's working directory (the Ray node's, not the
# driver's), so local paths are made absolute here, before anything is sent.

OBJECT_STORES = ("s3", "s3a", "gs", "gcs", "az", "abfs", "abfss")  # protocols whose first path part is a bucket
# Bounds of the reachability check (not of the build): a dead endpoint fails in seconds.
S3_CHECK_CONFIG = {"connect_timeout": 5, "read_timeout": 10, "retries": {"max_attempts": 2}}
CREDENTIALS_HINT = ("; give credentials as AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY or a profile "
                    "(AWS_PROFILE), not in configs")


def open_store(store: str | os.PathLike | GramStore, storage_options: dict | None = None, *,
               read_only: bool = False) -> GramStore:
    """The `GramStore` at `store`, a local path made absolute, after checking that it can be used.

    Creates nothing. Local folders: every existing part of the path is a folder, names fit
    the file system, and (to write) the nearest existing folder is writable. Object stores
    (s3://bucket/prefix, ...): the protocol is known, the endpoint answers within seconds,
    the bucket exists and the credentials are accepted.

    Args:
      store: a local folder, an fsspec URL or an open `GramStore` (reopened if its local
        path is relative).
      storage_options: fsspec options of an object store (not for local folders).
      read_only: open for reading only (a missing store is then left to the caller).

    Raises:
      ConfigError: storage_options for a local folder, or a store that is not a path.
      StoreError: a store that cannot be opened or written, in one line naming the reason.
    """
    if isinstance(store, GramStore):
        storage_options, read_only, store = store.storage_options, store.read_only, store.url
    if not isinstance(store, (str, os.PathLike)):
        raise ConfigError(f"store must be a folder, a URL (s3://bucket/prefix) or a GramStore, got {store!r}")
    url = os.fspath(store)
    if is_local(url):
        path = Path(url.removeprefix("file://")).expanduser().absolute()
        if storage_options:
            raise ConfigError(f"storage_options are for object-store URLs (s3://bucket/prefix), not the local "
                              f"folder {path}")
        _check_local(path, write=not read_only)
        return GramStore(str(path), read_only=read_only)
    _check_object_store(url, storage_options or {})
    return GramStore(url, storage_options, read_only=read_only)


def _check_local(path: Path, write: bool) -> None:
    existing, missing = path, []
    while True:
        try:
            mode = os.stat(existing).st_mode
            break
        except (FileNotFoundError, NotADirectoryError):
            missing.append(existing.name)
            existing = existing.parent
        except (OSError, ValueError) as e:  # ELOOP, ENAMETOOLONG, EACCES; ValueError: a NUL byte
            raise StoreError(f"cannot use the store at {path}: {getattr(e, 'strerror', None) or e}") from None
    if not stat.S_ISDIR(mode):
        raise StoreError(f"cannot {'write to' if write else 'read'} the store at {path}: {existing} is a file, "
                         "not a folder")
    try:
        longest = os.pathconf(existing, "PC_NAME_MAX")
    except (OSError, ValueError):
        longest = 255
    for name in missing:
        if len(os.fsencode(name)) > longest:
            raise StoreError(f"cannot write to the store at {path}: the name {name[:40]}... is longer than "
                             f"the {longest} bytes the file system allows")
    if write and not os.access(existing, os.W_OK | os.X_OK):
        raise StoreError(f"cannot write to the store at {path}: {existing} is not writable")


def _check_object_store(url: str, storage_options: dict) -> None:
    import fsspec

    protocol, path = fsspec.core.split_protocol(url)
    options = dict(storage_options)
    if protocol in ("s3", "s3a"):
        options["config_kwargs"] = {**S3_CHECK_CONFIG, **options.get("config_kwargs", {})}
    try:
        fs = fsspec.filesystem(protocol, skip_instance_cache=True, **options)
    except (ValueError, ImportError, TypeError) as e:
        raise StoreError(f"cannot open the store at {url}: {type(e).__name__}: {e}") from None
    if protocol not in OBJECT_STORES:
        return
    bucket = path.split("/")[0]
    try:
        _probe(fs, bucket, path)
    except FileNotFoundError:
        raise StoreError(f"cannot use the store at {url}: bucket {bucket!r} does not exist") from None
    except Exception as e:  # noqa: BLE001 - botocore and aiohttp raise many kinds; each is one line here
        hint = CREDENTIALS_HINT if "credential" in f"{type(e).__name__} {e}".lower() else ""
        raise StoreError(f"cannot reach the store at {url}: {type(e).__name__}: {e}{hint}") from None


def _probe(fs, bucket: str, path: str) -> None:
    """One request to the bucket (FileNotFoundError: there is none); credentials that may not read
    the bucket itself (403) are tried on the store's prefix, where nothing may exist yet."""
    try:
        fs.info(bucket)
    except PermissionError:
        try:
            fs.ls(path.rstrip("/"), detail=False)
        except FileNotFoundError:
            pass  # the bucket exists (403, not 404); the store is new


def _check_fingerprint(gram: GramStore, wanted: dict) -> None:
    stored = gram.fingerprint
    if stored != wanted:
        raise FingerprintMismatch(
            f"the store at {gram.url} was built for another configuration; refusing to mix tiles.\n"
            f"{describe_difference(stored, wanted)}\nUse a new store path, or the original settings.")


def _worker_count(workers: int | None, num_cpus: float, num_gpus: float) -> tuple[int, int]:
    """(workers asked for, workers the cluster runs at once): `workers`, else as many as the cluster's
    GPUs (or, without GPUs, CPUs) hold; refuses workers that could never start."""
    import ray

    resources = ray.cluster_resources()
    for name, need in (("CPU", num_cpus), ("GPU", num_gpus)):
        if need > resources.get(name, 0):
            raise ConfigError(f"tiling.{name.lower()}s_per_worker: each worker asks for {need:g} {name}s but the "
                              f"Ray cluster has {resources.get(name, 0):g}")
    capacity = max(1, int(resources["GPU"] // num_gpus) if num_gpus > 0 else int(resources["CPU"] // num_cpus))
    return (capacity if workers is None else workers), capacity


def _choose_tile_size(actor, n_train: int, workers_per_device: int) -> int:
    import ray

    peaks = ray.get(actor.tile_memory.remote(PROBE_SIZES))
    budget = ray.get(actor.memory_budget.remote(workers_per_device))
    largest = fit_tile_size(PROBE_SIZES, peaks, budget, n_train)
    tile = balanced_tile_size(n_train, min(largest, max(MIN_TILE, math.ceil(n_train / TARGET_GRID))))
    log.info("tile memory at sizes %s: %s bytes; budget %d bytes -> largest tile %d, chosen %d",
             PROBE_SIZES, peaks, budget, largest, tile)
    return tile


class _Progress:
    """tqdm bar over stored entries, with tiles done/total in the postfix."""

    def __init__(self, plan: TilePlan, done: int, done_entries: int, enabled: bool):
        self.tiles_total = sum(1 for _ in plan.tiles())
        self.tiles_done = done
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=plan.total_entries(), initial=done_entries, unit="entries",
                            unit_scale=True, file=sys.stderr, desc="gram", dynamic_ncols=True)
            self._postfix()

    def _postfix(self):
        self.bar.set_postfix_str(f"tiles {self.tiles_done}/{self.tiles_total}")

    def update(self, entries: int):
        self.tiles_done += 1
        if self.bar is not None:
            self.bar.update(entries)
            self._postfix()

    def close(self):
        if self.bar is not None:
            self.bar.close()


class _Workers:
    """The actor pool: creation, compiling, replacement of dead actors, load and timings.

    A worker gets tiles only once its `prepare` (compile) call has returned: threaded
    actors do not keep call order.
    """

    def __init__(self, make, count: int, max_replacements: int):
        self.make = make
        self.actors: dict[int, object] = {}
        self.load: dict[int, int] = {}  # tiles queued on each prepared worker
        self.stats: dict[int, dict] = {}
        self.preparing: dict = {}  # ObjectRef of a `prepare` call -> worker index
        self.inflight: dict = {}  # ObjectRef of a `run` call -> (tile, worker index)
        self.plan = self.store = None
        self.replacements_left = max_replacements
        self.replaced = 0
        for _ in range(count):
            self.add()

    def add(self) -> int:
        index = len(self.stats)
        self.actors[index] = self.make()
        self.stats[index] = {"worker": index, "tiles": 0, "compute_s": 0.0, "write_s": 0.0,
                             "idle_s": 0.0, "compile_s": 0.0, "pid": None, "host": None, "died": False}
        if self.plan is not None:
            self.preparing[self.actors[index].prepare.remote(self.plan, self.store)] = index
        return index

    def prepare(self, plan: TilePlan, store: GramStore) -> None:
        self.plan, self.store = plan.to_dict(), store
        for index, actor in self.actors.items():
            self.preparing[actor.prepare.remote(self.plan, self.store)] = index

    def prepared(self, ref) -> None:
        """A `prepare` call returned: record its compile time and start sending tiles."""
        import ray

        index = self.preparing.pop(ref)
        self.stats[index].update(ray.get(ref))
        self.load[index] = 0

    def replace(self, index: int, cause: BaseException) -> None:
        import ray

        if index not in self.actors:
            return  # already replaced after an earlier failed call
        log.warning("worker %d died: %s; replacing it", index, cause)
        ray.kill(self.actors.pop(index), no_restart=True)
        self._wait_exit([index])
        self.load.pop(index, None)
        self.stats[index]["died"] = True
        if self.replacements_left <= 0:
            raise WorkersLost(f"workers keep dying ({self.replaced} replaced); last cause: "
                              f"{type(cause).__name__}: {cause}")
        self.replacements_left -= 1
        self.replaced += 1
        self.add()

    def least_loaded(self) -> list[int]:
        return sorted(self.load, key=self.load.get)

    def shutdown(self, timeout: float = 60.0):
        """Kill every actor and wait until their pending calls have ended.

        `ray.kill` is asynchronous: without the wait a tile could still be written after
        `build_gram` returned or raised.
        """
        import ray

        killed = list(self.actors)
        for actor in self.actors.values():
            ray.kill(actor, no_restart=True)
        self.actors.clear()
        pending = list(self.inflight) + list(self.preparing)
        if pending:
            ray.wait(pending, num_returns=len(pending), timeout=timeout)
        self.inflight.clear()
        self.preparing.clear()
        self._wait_exit(killed, timeout)

    def _wait_exit(self, indices, timeout: float = 60.0):
        """Wait until killed workers on this host have exited.

        Ray fails a killed actor's pending calls as soon as the actor is marked dead,
        which can be before its process stops; a tile write still under way would land
        after the build returned. (Workers on other hosts are left to Ray.)
        """
        host = socket.gethostname()
        pids = [self.stats[i]["pid"] for i in indices
                if self.stats[i]["pid"] is not None and self.stats[i].get("host") == host]
        deadline = time.monotonic() + timeout
        while pids and time.monotonic() < deadline:
            pids = [pid for pid in pids if process_alive(pid)]
            if pids:
                time.sleep(0.01)


def build_gram(store: str | GramStore, architecture, x_train, x_test=None, *, name: str | None = None,
               kinds: Sequence[str] = KINDS, dtype: str = "float64", tiling: TilingOptions | None = None,
               storage_options: dict | None = None, verify: bool = False, progress: bool = True,
               on_tile: Callable[[dict], None] | None = None) -> BuildReport:
    """Compute the NNGP/NTK Gram blocks of a network into a store, resuming a partial build.

    Writes train×train (upper tiles only), test×train and the test self-kernels k(x, x)
    of each kind into `store`, from long-lived Ray actors (`tiling.workers` of them, on
    the connected cluster or a local Ray instance). Resumes a partial build with the
    same fingerprint; refuses a store built for anything else (`FingerprintMismatch`),
    before any work.

    Args:
      store: a local folder (a relative path is made absolute here, in the driver's
        working directory, before the workers see it), an fsspec URL
        (``s3://bucket/prefix``) or an open `GramStore`.
      architecture: the network as a layer list, names or ``{name: {arguments}}``
        (`raygram.kernels.architecture`), e.g.
        ``[{"LiftingConv": {"out_chan": 16, "filter_shape": [3, 3], "group": "C4"}}, "Relu", "GroupPool",
        {"Dense": {"out_dim": 1}}]``; or any neural-tangents ``kernel_fn(x1, x2, get)`` (a stax
        network's, its stax triple, your own callable) or ``{"python": "module:attribute"}``
        (`raygram.build.kernel_source`). Its kernel must give one output per input.
      x_train: training inputs, shape (N, ...features), finite and real.
      x_test: optional test inputs, shape (M, ...features) with x_train's feature shape.
      name: names a Python kernel_fn in the store's fingerprint (required for one; a layer
        list or ``{"python": ...}`` names itself).
      kinds: the kernels to store, names from ``("nngp", "ntk")``.
      dtype: "float64" or "float32": the precision of the computation and of the store.
      tiling: tile size, worker count and resources, retries, lease (`TilingOptions`;
        default `TilingOptions()`). ``tile_size=None`` takes the store's, or the largest
        that fits a worker's memory according to XLA's analysis of the kernel; a tile
        size above N is capped at N. No more workers start than there are tiles.
      storage_options: fsspec options of an object store (endpoint_url, ...).
      verify: first re-check every stored tile against its checksum and recompute bad ones.
      progress: show a progress bar (entries/s, ETA) on stderr.
      on_tile: called in the driver with each finished tile's result (id, worker pid, timings).

    Returns:
      A `BuildReport`: tiles computed and skipped, wall time, per-worker timings.

    Raises:
      ConfigError: bad inputs or settings (nothing is written).
      FingerprintMismatch, StoreLocked, StoreError: the store cannot be used (`open_store`
        checks where it is; nothing is written).
      TileFailed, WorkersLost, CompileFailed, LeaseLost: the build failed while running.
    """
    import ray

    started = time.perf_counter()
    tiling = TilingOptions() if tiling is None else tiling
    checked = _check(store, architecture, x_train, x_test, kinds, dtype, tiling, storage_options, verify,
                     name=name)
    gram, tile_size, x_train, x_test = checked.gram, checked.tile_size, checked.x_train, checked.x_test
    if checked.complete:
        log.info("every tile of %s is already stored; nothing to compute", gram.url)
        return BuildReport(store=gram.url, tile_size=tile_size, tiles_total=checked.complete,
                           tiles_skipped=checked.complete, tiles_computed=0, entries_computed=0,
                           wall_s=time.perf_counter() - started, workers=[])
    if not ray.is_initialized():
        ray.init()
    num_cpus, num_gpus = tiling.cpus_per_worker, tiling.gpus_per_worker
    wanted_workers, capacity = _worker_count(tiling.workers, num_cpus, num_gpus)
    n_test = 0 if x_test is None else len(x_test)
    # No more workers than tiles: start what the cluster runs now (or what the known plan
    # needs), the rest once the tile size is known.
    start = min(wanted_workers, capacity if tile_size is None else _tile_count(len(x_train), n_test, tile_size))
    x_refs = ray.put(x_train), (None if x_test is None else ray.put(x_test))
    actor_class = ray.remote(TileWorker).options(
        num_cpus=num_cpus, num_gpus=num_gpus, max_concurrency=2, max_restarts=0, max_task_retries=0,
        runtime_env={"env_vars": jax_env(num_gpus, num_cpus)})
    pool = _Workers(lambda: actor_class.remote(checked.kernel, checked.kinds, checked.dtype, *x_refs),
                    start, max_replacements=tiling.max_attempts * start)
    try:
        if tile_size is None:
            per_device = max(1, round(1 / num_gpus)) if num_gpus > 0 else start
            tile_size = _choose_tile_size(pool.actors[0], len(x_train), per_device)
        plan = TilePlan(len(x_train), n_test, int(tile_size))
        for _ in range(min(wanted_workers, _tile_count(len(x_train), n_test, plan.tile_size)) - start):
            pool.add()
            pool.replacements_left += tiling.max_attempts
        wanted = {**checked.base, "tile_size": plan.tile_size}
        lease = BuildLease(gram, ttl=tiling.lease_ttl)
        try:
            lease.acquire()
        except OSError as e:
            raise StoreError(f"cannot write to the store at {gram.url}: {e}") from e
        try:
            return _run(_Build(gram, wanted, plan, pool, lease, tiling, verify, progress, on_tile, started))
        finally:
            pool.shutdown()  # no worker may write once the lease is gone
            lease.release()
    finally:
        pool.shutdown()


def _tile_count(n_train: int, n_test: int, tile_size: int) -> int:
    """Tiles of a plan: the upper triangle of train x train, every test x train tile, the test diagonal."""
    plan = TilePlan(n_train, n_test, int(tile_size))
    grid, test = plan.grid(n_train), plan.grid(n_test)
    return grid * (grid + 1) // 2 + test * grid + test


@dataclasses.dataclass
class _Checked:
    """A build that passed every check (`_check`): its store, kernel, inputs and fingerprint.

    `complete` is the number of tiles when every one is stored already (and there is
    nothing to verify), else 0.
    """

    gram: GramStore
    kernel: object
    x_train: np.ndarray
    x_test: np.ndarray | None
    kinds: tuple[str, ...]
    dtype: str
    base: dict
    tile_size: int | None
    complete: int


def _check(store, architecture, x_train, x_test, kinds, dtype, tiling, storage_options, verify,
           name=None) -> _Checked:
    """Every check of a build that needs no worker and writes nothing; see `check_build`."""
    if not isinstance(tiling, TilingOptions):
        raise ConfigError(f"tiling must be a TilingOptions, got {type(tiling).__name__}")
    x_train, x_test, kinds, dtype = check_inputs(x_train, x_test, kinds, dtype)
    check_widths(architecture)
    kernel = kernel_source(architecture, x_train, name=name)  # a bad layer or kernel fails here, before any work
    gram = open_store(store, storage_options)
    base = fingerprint(kernel.description, kinds, dtype, x_train, x_test, 0)  # hashes the data once
    # A tile is never larger than the block: padding beyond N would only cost memory.
    tile_size = None if tiling.tile_size is None else min(tiling.tile_size, len(x_train))
    complete = 0
    if gram.exists():
        tile_size = tile_size or gram.fingerprint.get("tile_size")
        _check_fingerprint(gram, {**base, "tile_size": int(tile_size)})
        total = sum(1 for _ in gram.plan.tiles())
        complete = total if not verify and len(gram.written_tiles()) == total else 0
    if not complete:
        BuildLease(gram, ttl=tiling.lease_ttl).check_free()  # refuse a concurrent build before starting workers
    return _Checked(gram, kernel, x_train, x_test, kinds, dtype, base, tile_size, complete)


@dataclasses.dataclass(frozen=True)
class BuildCheck:
    """What `check_build` found.

    Attributes:
      fingerprint: the fingerprint the store holds or will hold, without its tile size
        (`tile_size` 0): architecture, kinds, dtype, the shapes and SHA-256 digests of
        x_train and x_test, versions.
      work: True unless every tile is stored already (and there is nothing to verify).
    """

    fingerprint: dict
    work: bool


def check_build(store: str | os.PathLike | GramStore, architecture, x_train, x_test=None, *,
                name: str | None = None, kinds: Sequence[str] = KINDS, dtype: str = "float64", tiling: TilingOptions | None = None,
                storage_options: dict | None = None, verify: bool = False, resources: bool = True) -> BuildCheck:
    """Every check `build_gram` makes before it starts work, with nothing written.

    The inputs, the layer list, the store's location (`open_store`), its fingerprint if it
    exists, its lease and, with `resources` and work to do, the Ray cluster's resources
    (`check_resources`). Callers that record a build elsewhere (an MLflow run) call it
    first, so that bad input creates nothing.

    Args:
      store: a local folder, an fsspec URL or a `GramStore`, as `build_gram` takes it.
      architecture: the layer list or kernel, as `build_gram` takes it.
      x_train: training inputs (N, ...features).
      x_test: test inputs (M, ...features) or None.
      name: names a Python kernel_fn, as `build_gram` takes it.
      kinds: names from ("nngp", "ntk").
      dtype: "float64" or "float32".
      tiling: the build's `TilingOptions` (default `TilingOptions()`).
      storage_options: fsspec options of an object store.
      verify: the build will re-check stored tiles (a complete store still has work).
      resources: also check the Ray cluster's resources when there is work to do.

    Returns:
      A `BuildCheck`: the store's fingerprint and whether there is work to do.

    Raises:
      ConfigError, StoreError, FingerprintMismatch, StoreLocked: as `build_gram`.
    """
    tiling = TilingOptions() if tiling is None else tiling
    checked = _check(store, architecture, x_train, x_test, kinds, dtype, tiling, storage_options, verify,
                     name=name)
    if resources and not checked.complete:
        check_resources(tiling)
    return BuildCheck(checked.base, not checked.complete)


def check_resources(tiling: TilingOptions) -> None:
    """Refuse workers the Ray cluster could never start (more CPUs or GPUs each than it has).

    Initialises Ray as `build_gram` does (`ray.init()`) unless it is initialised.

    Args:
      tiling: `cpus_per_worker`, `gpus_per_worker` and `workers`.

    Raises:
      ConfigError: naming `tiling.cpus_per_worker` or `tiling.gpus_per_worker`.
    """
    import ray

    if not ray.is_initialized():
        ray.init()
    _worker_count(tiling.workers, tiling.cpus_per_worker, tiling.gpus_per_worker)


def build_fingerprint(architecture, x_train, x_test=None, *, name: str | None = None,
                      kinds: Sequence[str] = KINDS, dtype: str = "float64") -> dict:
    """The fingerprint a build of these inputs writes, without its tile size (`tile_size` 0).

    For comparing a finished store with what a config would build (`raygram solve`);
    inputs are checked as `build_gram` checks them.

    Args:
      architecture: what `build_gram` would build: a layer list or a kernel.
      x_train: the inputs of the training rows, (N, ...features).
      x_test: the inputs of the test rows, (M, ...features), or None.
      name: the name of a Python kernel_fn (as in `build_gram`).
      kinds: the stored kinds, from ("nngp", "ntk").
      dtype: the store's precision, "float64" or "float32".

    Returns:
      The fingerprint (`raygram.store.fingerprint`) with `tile_size` 0.

    Raises:
      ConfigError: bad inputs or layers.
    """
    x_train, x_test, kinds, dtype = check_inputs(x_train, x_test, kinds, dtype)
    check_widths(architecture)
    return fingerprint(kernel_source(architecture, x_train, name=name).description, kinds, dtype, x_train, x_test, 0)


@dataclasses.dataclass
class _Build:
    """One running build: the store, what it must hold, the workers and the settings."""

    gram: GramStore
    wanted: dict
    plan: TilePlan
    pool: _Workers
    lease: BuildLease
    tiling: TilingOptions
    verify: bool
    progress: bool
    on_tile: Callable[[dict], None] | None
    started: float


def _run(build: _Build) -> BuildReport:
    """Dispatch every missing tile to the workers until all are stored (or one fails for good)."""
    import ray
    from ray.exceptions import ActorUnavailableError, RayActorError, RayTaskError

    gram, wanted, plan, pool, lease = build.gram, build.wanted, build.plan, build.pool, build.lease
    max_inflight, max_attempts, on_tile = build.tiling.max_inflight, build.tiling.max_attempts, build.on_tile
    if gram.exists():
        _check_fingerprint(gram, wanted)
    else:
        gram.create(wanted, plan)
    done = gram.written_tiles()
    repaired = []
    if build.verify:
        bad = gram.verify(done)
        for tile, problem in sorted(bad.items()):
            log.warning("tile %s is bad (%s): recomputing it", tile, problem)
        gram.forget_tiles(bad)
        done -= set(bad)
        repaired = [str(t) for t in sorted(bad)]
    todo = collections.deque(t for t in plan.tiles() if t not in done)
    bar = _Progress(plan, len(done), sum(plan.entries(t) for t in done), build.progress)
    pool.prepare(plan, gram)
    inflight = pool.inflight
    attempts = collections.Counter()
    resubmitted = entries = computed = 0
    try:
        while todo or inflight:
            lease.check()
            for index in pool.least_loaded():
                while pool.load[index] < max_inflight and todo:
                    tile = todo.popleft()
                    inflight[pool.actors[index].run.remote(tile)] = (tile, index)
                    pool.load[index] += 1
                    log.debug("dispatch %s to worker %d", tile, index)
            waiting = list(inflight) + list(pool.preparing)
            ready, _ = ray.wait(waiting, num_returns=1, timeout=lease.ttl / 3)
            for ref in ready:
                if ref in pool.preparing:
                    index = pool.preparing[ref]
                    try:
                        pool.prepared(ref)
                    except (RayActorError, ActorUnavailableError) as e:
                        pool.preparing.pop(ref, None)  # `prepared` pops it before reading the result
                        pool.replace(index, e)
                    except RayTaskError as e:
                        raise CompileFailed(f"worker {index} could not compile the kernel: {e.cause!r}") from e
                    continue
                tile, index = inflight.pop(ref)
                if index in pool.load:
                    pool.load[index] -= 1
                try:
                    result = ray.get(ref)
                except (RayActorError, ActorUnavailableError) as e:
                    cause = e
                    pool.replace(index, e)
                except RayTaskError as e:
                    cause = e.cause if e.cause is not None else e
                    log.warning("tile %s failed on worker %d: %s", tile, index, cause)
                else:
                    stats = pool.stats[index]
                    stats["tiles"] += 1
                    for key in ("compute_s", "write_s", "idle_s"):
                        stats[key] += result[key]
                    computed += 1
                    entries += plan.entries(tile)
                    bar.update(plan.entries(tile))
                    if on_tile is not None:
                        on_tile(result)
                    continue
                attempts[tile] += 1
                if attempts[tile] >= max_attempts:
                    raise TileFailed(f"tile {tile} failed {attempts[tile]} times; last cause: "
                                     f"{type(cause).__name__}: {cause}") from cause
                resubmitted += 1
                todo.appendleft(tile)
    finally:
        bar.close()
    return BuildReport(store=gram.url, tile_size=plan.tile_size, tiles_total=bar.tiles_total,
                       tiles_skipped=len(done), tiles_computed=computed, entries_computed=entries,
                       wall_s=time.perf_counter() - build.started, workers=list(pool.stats.values()),
                       resubmitted=resubmitted, repaired=repaired)
