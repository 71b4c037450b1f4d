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

The pool follows the cluster (multi-node builds, autoscaled clusters): between tile
completions the driver looks at the live nodes every `POLL_S` seconds and starts an
actor wherever room for one has appeared, up to `tiling.workers`. An actor that died
with its node (a node removed, preempted or lost) is dropped without counting against
the tile or the replacement budget, and its tiles go to the others. A build that finds
no node able to run a worker waits `tiling.wait_for_workers` seconds for one (asking an
autoscaler for it with `request_resources`) before it stops with `WorkersLost`; a Ray
instance the driver started itself cannot gain nodes and is refused at once.
"""
from __future__ import annotations

import collections
import dataclasses
import logging
import math
import os
import re
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
from raygram.errors import (BuildError, CompileFailed, ConfigError, FingerprintMismatch, StoreError,
                            TileFailed, WorkersLost)
from raygram.build.kernel_source import kernel_source
from raygram.kernels.architecture import check_architecture
from raygram.store.gram_store import GramStore, describe_difference, fingerprint
from raygram.store.plan import TilePlan, balanced_tile_size, fit_tile_size

log = logging.getLogger("raygram.build")

PROBE_SIZES = (2, 4, 8)  # tile sizes at which a worker measures XLA's peak memory
# Where memory allows big tiles, aim for about TARGET_GRID tiles a side: the symmetric
# block then costs (g + 1) / 2g = 0.52 of the full square and many workers stay busy;
# but keep at least MIN_TILE points a tile so per-tile overheads stay small.
MIN_TILE = 32
TARGET_GRID = 32
POLL_S = 2.0  # seconds between looks at the cluster's nodes while tiles run or while waiting for a node
# Ray's message for an actor that died with its node (GCS, Ray 2.x).
NODE_DIED = re.compile(r"its node has died\. Node Id: ([0-9a-fA-F]+)")


@dataclasses.dataclass
class BuildReport:
    """What a build did: tile counts, wall time, per-worker timings (seconds) and per-node tile counts."""

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
    nodes: dict[str, dict] = dataclasses.field(default_factory=dict)
    """Ray node id -> {"ip", "host", "tiles", "workers", "lost", "unavailable"}: where the tiles were
    computed; `lost` marks a node that left during the build, `unavailable` one whose worker could not
    be reached when the build ended (a node lost just before, not yet declared dead by Ray)."""

    @property
    def tiles_per_node(self) -> dict[str, int]:
        """Tiles computed on each Ray node (node id -> tiles)."""
        return {node: entry["tiles"] for node, entry in self.nodes.items()}

    def summary(self) -> str:
        """The report as text: one line of totals, then one line per Ray node when there are several."""
        lines = [f"{self.tiles_computed} tiles computed, {self.tiles_skipped} already stored"
                 + (f", {len(self.repaired)} repaired" if self.repaired else "")
                 + (f", {self.resubmitted} resubmitted" if self.resubmitted else "")
                 + f" ({self.wall_s:.1f} s) -> {self.store}"]
        if len(self.nodes) > 1:
            for node, entry in sorted(self.nodes.items(), key=lambda item: (item[1]["ip"], item[0])):
                lines.append(f"  node {entry['ip']} ({node[:8]}): {entry['tiles']} tiles, {entry['workers']} "
                             f"worker(s)" + (", left during the build" if entry["lost"] else "")
                             + (", unreachable at the end" if entry.get("unavailable") and not entry["lost"] else ""))
        return "\n".join(lines)

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
                "compute_share": self.compute_share, "resubmitted": self.resubmitted, "nodes": len(self.nodes),
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


def _fits(resources: dict, num_cpus: float, num_gpus: float) -> int:
    """Workers that one node with these Ray resources runs at once."""
    count = int(resources.get("CPU", 0) / num_cpus + 1e-9)
    if num_gpus > 0:
        count = min(count, int(resources.get("GPU", 0) / num_gpus + 1e-9))
    return count


def cluster_capacity(num_cpus: float, num_gpus: float) -> int:
    """Workers the live nodes of the connected Ray cluster run at once (each worker on one node).

    Args:
      num_cpus: CPUs each worker reserves.
      num_gpus: GPUs each worker reserves (0: a CPU worker).

    Returns:
      The sum over live nodes of the workers each node's resources hold (resources in use
      by other jobs count as free: their workers then wait until they are).
    """
    import ray

    return sum(_fits(node["Resources"], num_cpus, num_gpus) for node in ray.nodes() if node["Alive"])


def _live_nodes() -> set[str]:
    import ray

    return {node["NodeID"] for node in ray.nodes() if node["Alive"]}


def _fixed_cluster() -> bool:
    """Whether this process started its Ray instance itself (`ray.init()` without an address).

    Such an instance is the driver's own machine: no autoscaler adds nodes to it, so a build
    there does not wait for resources it lacks.
    """
    try:
        from ray._private import worker
    except ImportError:
        return False
    return bool(getattr(getattr(worker, "_global_node", None), "head", False))


def _shortfall(num_cpus: float, num_gpus: float) -> str | None:
    """Why no node of the cluster can run a worker now (None when one can), naming the setting."""
    import ray

    if cluster_capacity(num_cpus, num_gpus):
        return None
    resources = ray.cluster_resources()
    for name, need in (("CPU", num_cpus), ("GPU", num_gpus)):
        if need > resources.get(name, 0):
            return (f"tiling.{name.lower()}s_per_worker: each worker asks for {need:g} {name}s but the "
                    f"Ray cluster has {resources.get(name, 0):g}")
    return (f"tiling.cpus_per_worker, tiling.gpus_per_worker: each worker asks for {num_cpus:g} CPUs and "
            f"{num_gpus:g} GPUs on one node, but no node of the Ray cluster has that many")


def _request_workers(num_cpus: float, num_gpus: float, count: int) -> None:
    """Ask an autoscaler for `count` workers' resources (count 0: withdraw the request).

    `ray.autoscaler.sdk.request_resources` keeps one request per cluster; without an
    autoscaler it is only recorded. A failure here never stops a build.
    """
    bundle = {"CPU": num_cpus, **({"GPU": num_gpus} if num_gpus > 0 else {})}
    try:
        from ray.autoscaler.sdk import request_resources

        request_resources(bundles=[bundle] * count)
    except Exception as e:  # noqa: BLE001 - a hint to the autoscaler; the build goes on without it
        log.debug("request_resources(%d x %s) failed: %s", count, bundle, e)


def _node_died(node: str | None, error: BaseException) -> bool:
    """Whether a worker that raised `error` died with its Ray node (`node`: its id, if known)."""
    if NODE_DIED.search(str(error)):
        return True
    return node is not None and node not in _live_nodes()


class _Capacity:
    """How many workers the build wants now: `tiling.workers` at most, what the live nodes hold,
    no more than the tiles left; and the wait for a first node."""

    def __init__(self, tiling: TilingOptions):
        self.num_cpus, self.num_gpus = tiling.cpus_per_worker, tiling.gpus_per_worker
        self.workers, self.wait = tiling.workers, tiling.wait_for_workers
        self.requested = 0

    def target(self, tiles_left: int | None = None) -> int:
        """Workers to run now (`tiles_left`: a cap, None: none)."""
        count = cluster_capacity(self.num_cpus, self.num_gpus)
        if self.workers is not None:
            count = min(count, self.workers)
        return count if tiles_left is None else min(count, tiles_left)

    def request(self) -> None:
        """Ask an autoscaler for `tiling.workers` workers (one when unset) if the cluster holds fewer."""
        wanted = self.workers or 1
        if cluster_capacity(self.num_cpus, self.num_gpus) < wanted:
            _request_workers(self.num_cpus, self.num_gpus, wanted)
            self.requested = wanted

    def withdraw(self) -> None:
        """Withdraw this build's request to the autoscaler, if it made one."""
        if self.requested:
            _request_workers(self.num_cpus, self.num_gpus, 0)
            self.requested = 0

    def refuse_now(self) -> bool:
        """Whether a lack of nodes fails at once: no waiting asked for, or a cluster that cannot grow."""
        return self.wait <= 0 or _fixed_cluster()

    def await_first(self, check: Callable[[], None] | None = None) -> int:
        """Block until the cluster can run a worker; returns the workers to start.

        Args:
          check: called at every look (the build's lease check).

        Raises:
          ConfigError: none fits and the build may not wait (`refuse_now`).
          WorkersLost: none fits after `tiling.wait_for_workers` seconds.
        """
        target = self.target()
        if target:
            return target
        problem = _shortfall(self.num_cpus, self.num_gpus) or "no node can run a tile worker"
        if self.refuse_now():
            raise ConfigError(problem)
        self.request()
        log.warning("no Ray node can run a tile worker yet (%s); waiting up to %g s for one to join "
                    "(tiling.wait_for_workers)", problem, self.wait)
        deadline = time.monotonic() + self.wait
        while not target:
            if time.monotonic() >= deadline:
                raise WorkersLost(f"no Ray node could run a tile worker within tiling.wait_for_workers = "
                                  f"{self.wait:g} s ({problem}); add nodes, or raise wait_for_workers")
            if check is not None:
                check()
            time.sleep(min(POLL_S, max(0.05, deadline - time.monotonic())))
            target = self.target()
        log.info("a Ray node can run %d tile worker(s) now", target)
        return target


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
    """The actor pool: creation, compiling, growth, replacement of dead actors, load and timings.

    A worker gets tiles only once its `prepare` (compile) call has returned: threaded
    actors do not keep call order. The replacement budget is `max_attempts` per slot the
    pool has ever had: a pool that grows with its cluster gains budget, one that refills
    a slot after a crash does not (a worker that keeps crashing stops the build).

    A worker whose call failed with `ActorUnavailableError` (its connection broke: the
    process or its whole node may be gone, which Ray confirms only once the node's health
    checks have failed) is suspended: it gets no tiles, and a `__ray_ready__` probe tells
    whether it is back (it gets tiles again) or dead (dropped as `drop` says).
    """

    def __init__(self, make, max_attempts: int):
        self.make = make
        self.max_attempts = max_attempts
        self.actors: dict[int, object] = {}
        self.load: dict[int, int] = {}  # tiles queued on each prepared worker
        self.stats: dict[int, dict] = {}
        self.preparing: dict = {}  # ObjectRef of a `prepare` call -> worker index
        self.inflight: dict = {}  # ObjectRef of a `run` call -> (tile, worker index)
        self.probes: dict = {}  # ObjectRef of a suspended worker's `__ray_ready__` call -> worker index
        self.reprobe: list[tuple[float, int]] = []  # (when, worker index): probes to send again
        self.plan = self.store = None
        self.slots = 0  # the most workers alive at once so far
        self.replacements_left = 0
        self.replaced = 0

    def add(self) -> int:
        index = len(self.stats)
        self.actors[index] = self.make()
        self.stats[index] = {"worker": index, "tiles": 0, "compute_s": 0.0, "write_s": 0.0,
                             "idle_s": 0.0, "compile_s": 0.0, "pid": None, "host": None, "node": None,
                             "ip": None, "died": False, "node_lost": False}
        if len(self.actors) > self.slots:
            self.slots = len(self.actors)
            self.replacements_left += self.max_attempts
        if self.plan is not None:
            self.preparing[self.actors[index].prepare.remote(self.plan, self.store)] = index
        return index

    def grow(self, target: int) -> int:
        """Start workers until `target` are alive; returns how many were started."""
        started = 0
        while len(self.actors) < target:
            index = self.add()
            started += 1
            log.debug("worker %d started (pool of %d)", index, len(self.actors))
        return started

    def prepare(self, plan: TilePlan, store: GramStore) -> None:
        self.plan, self.store = plan.to_dict(), store
        for index, actor in self.actors.items():
            self.preparing[actor.prepare.remote(self.plan, self.store)] = index

    def prepared(self, ref) -> None:
        """A `prepare` call returned: record its compile time and node, and start sending tiles."""
        import ray

        index = self.preparing.pop(ref)
        self.stats[index].update(ray.get(ref))
        self.load[index] = 0

    def drop(self, index: int, cause: BaseException) -> bool:
        """Remove a worker whose call failed with an actor error; True when it died with its node.

        A worker lost with its node is not replaced here (the pool grows back where the
        cluster has room) and costs no replacement. Any other death is replaced at once,
        within the replacement budget.

        Raises:
          WorkersLost: workers keep dying on live nodes (the budget is spent).
        """
        import ray

        if index not in self.actors:
            return self.stats[index]["node_lost"]  # already dropped after an earlier failed call
        stats = self.stats[index]
        lost = _node_died(stats["node"], cause)
        ray.kill(self.actors.pop(index), no_restart=True)
        self._wait_exit([index])
        self.load.pop(index, None)
        stats["died"], stats["node_lost"] = True, lost
        if lost:
            log.warning("worker %d left with its node %s (%s); its tiles go to the other workers",
                        index, stats["ip"] or "?", (stats["node"] or "?")[:8])
            return True
        log.warning("worker %d died: %s; replacing it", index, cause)
        if self.replacements_left <= 0:
            raise WorkersLost(f"workers keep dying ({self.replaced} replaced); last cause: "
                              f"{type(cause).__name__}: {cause}")
        self.replacements_left -= 1
        self.replaced += 1
        self.add()
        return False

    def suspend(self, index: int) -> None:
        """Send a worker whose connection broke no more tiles until a probe says it is alive."""
        if index not in self.actors or index not in self.load:
            return  # dropped, or suspended already
        del self.load[index]
        log.warning("worker %d is unavailable; its tiles go back to the queue until Ray says whether it lives",
                    index)
        self.probes[self.actors[index].__ray_ready__.remote()] = index

    def probed(self, ref) -> None:
        """A probe returned: resume the worker, probe it again later, or drop it (`drop`)."""
        import ray
        from ray.exceptions import ActorUnavailableError, RayActorError

        index = self.probes.pop(ref)
        try:
            ray.get(ref)
        except ActorUnavailableError:
            self.reprobe.append((time.monotonic() + POLL_S, index))
        except RayActorError as e:
            self.drop(index, e)
        else:
            if index in self.actors:
                log.info("worker %d is available again", index)
                self.load[index] = 0

    def send_probes(self) -> None:
        """Probe again the suspended workers whose wait is over."""
        now, waiting = time.monotonic(), []
        for when, index in self.reprobe:
            if index not in self.actors:
                continue
            if when > now:
                waiting.append((when, index))
            else:
                self.probes[self.actors[index].__ray_ready__.remote()] = index
        self.reprobe = waiting

    def least_loaded(self) -> list[int]:
        return sorted(self.load, key=self.load.get)

    def nodes(self) -> dict[str, dict]:
        """Node id -> {"ip", "host", "tiles", "workers", "lost", "unavailable"} over every worker that
        started; `unavailable`: a worker there was still suspended when the build ended (its node
        unreachable, not yet declared dead by Ray)."""
        for index in self.actors:
            if index not in self.load and index in self.stats and self.stats[index]["node"] is not None \
                    and index not in self.preparing.values():
                self.stats[index]["unavailable"] = True
        out: dict[str, dict] = {}
        for stats in self.stats.values():
            if stats["node"] is None:
                continue
            entry = out.setdefault(stats["node"], {"ip": stats["ip"], "host": stats["host"], "tiles": 0,
                                                   "workers": 0, "lost": False, "unavailable": False})
            entry["tiles"] += stats["tiles"]
            entry["workers"] += 1
            entry["lost"] = entry["lost"] or stats["node_lost"]
            entry["unavailable"] = entry["unavailable"] or stats.get("unavailable", False)
        return out

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
        self.probes.clear()
        self.reprobe.clear()
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
    capacity = _Capacity(tiling)
    n_test = 0 if x_test is None else len(x_test)
    x_refs = ray.put(x_train), (None if x_test is None else ray.put(x_test))
    actor_class = ray.remote(TileWorker).options(
        num_cpus=num_cpus, num_gpus=num_gpus, max_concurrency=2, max_restarts=0, max_task_retries=0,
        runtime_env={"env_vars": jax_env(num_gpus, num_cpus)})
    pool = _Workers(lambda: actor_class.remote(checked.kernel, checked.kinds, checked.dtype, *x_refs),
                    tiling.max_attempts)
    try:
        # No more workers than tiles: start what the cluster runs now (or what the known plan
        # needs), the rest once the tile size is known; later ones as nodes join.
        start = capacity.await_first()
        capacity.request()
        if tile_size is not None:
            start = min(start, _tile_count(len(x_train), n_test, tile_size))
        pool.grow(start)
        if tile_size is None:
            per_device = max(1, round(1 / num_gpus)) if num_gpus > 0 else start
            tile_size = _probe_tile_size(pool, capacity, len(x_train), per_device)
        plan = TilePlan(len(x_train), n_test, int(tile_size))
        pool.grow(capacity.target(_tile_count(len(x_train), n_test, plan.tile_size)))
        wanted = {**checked.base, "tile_size": plan.tile_size}
        lease = BuildLease(gram, ttl=tiling.lease_ttl)
        try:
            lease.acquire()
        except StoreError:
            raise  # StoreLocked and its kin say what is wrong already
        except OSError as e:
            raise StoreError(f"cannot write to the store at {gram.url}: {e}") from e
        try:
            return _run(_Build(gram, wanted, plan, pool, lease, tiling, verify, progress, on_tile, started,
                               capacity))
        finally:
            pool.shutdown()  # no worker may write once the lease is gone
            lease.release()
    finally:
        pool.shutdown()
        capacity.withdraw()


def _worker_error(index: int, error) -> BuildError:
    """The raygram error for a worker call that raised (a `RayTaskError`): a `BuildError` the
    worker raised itself (its GPU check) as it is, anything else as `CompileFailed`."""
    cause = error.cause if error.cause is not None else error
    if isinstance(cause, BuildError) and not isinstance(cause, CompileFailed):
        return type(cause)(str(cause))
    return CompileFailed(f"worker {index} could not compile the kernel: {cause!r}")


def _probe_tile_size(pool: _Workers, capacity: _Capacity, n_train: int, per_device: int) -> int:
    """`_choose_tile_size` on the pool's first worker, on another one if that worker dies."""
    from ray.exceptions import ActorUnavailableError, RayActorError, RayTaskError

    while True:
        index = min(pool.actors)
        try:
            return _choose_tile_size(pool.actors[index], n_train, per_device)
        except (RayActorError, ActorUnavailableError) as e:
            pool.drop(index, e)  # WorkersLost when workers keep dying
            pool.grow(capacity.await_first())
        except RayTaskError as e:
            raise _worker_error(index, e) from e


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
    if isinstance(architecture, list):  # a layer list: each layer's shapes first, naming the bad one
        check_architecture(architecture, x_train.shape[1:], kinds, dtype)
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
    """Refuse workers that no node of the Ray cluster can run, unless the build may wait for one.

    A build waits (`tiling.wait_for_workers` > 0) on a cluster it joined, where nodes can
    join or an autoscaler add them; a Ray instance this process started itself cannot
    grow, so there, as with `wait_for_workers: 0`, the lack is refused at once.
    Initialises Ray as `build_gram` does (`ray.init()`) unless it is initialised.

    Args:
      tiling: `cpus_per_worker`, `gpus_per_worker` and `wait_for_workers`.

    Raises:
      ConfigError: naming `tiling.cpus_per_worker` or `tiling.gpus_per_worker`.
    """
    import ray

    if not ray.is_initialized():
        ray.init()
    capacity = _Capacity(tiling)
    problem = _shortfall(tiling.cpus_per_worker, tiling.gpus_per_worker)
    if problem is not None and capacity.refuse_now():
        raise ConfigError(problem)
    if problem is not None:
        log.info("%s yet; the build will wait up to %g s for a node (tiling.wait_for_workers)", problem,
                 tiling.wait_for_workers)


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
    capacity: _Capacity


def _run(build: _Build) -> BuildReport:
    """Dispatch every missing tile to the workers until all are stored (or one fails for good).

    Every `POLL_S` seconds (and whenever the pool is empty) the pool grows to what the
    live nodes hold. A tile whose worker died with its node goes back to the queue without
    counting as an attempt; a pool left without workers waits `tiling.wait_for_workers`
    seconds for a node before `WorkersLost`.
    """
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
    looked = time.monotonic()
    empty_since = None  # when the pool lost its last worker
    try:
        while todo or inflight:
            lease.check()
            if not pool.actors or time.monotonic() - looked >= POLL_S:
                looked = time.monotonic()
                pool.send_probes()
                started = pool.grow(build.capacity.target(len(todo) + len(inflight)))
                if started:
                    log.info("%d worker(s) started on nodes that joined (pool of %d)", started, len(pool.actors))
            if not pool.actors:
                empty_since = _wait_for_nodes(build.capacity, empty_since)
                continue
            empty_since = None
            for index in pool.least_loaded():
                while pool.load[index] < max_inflight and todo:
                    tile = todo.popleft()
                    inflight[pool.actors[index].run.remote(tile)] = (tile, index)
                    pool.load[index] += 1
                    log.debug("dispatch %s to worker %d", tile, index)
            waiting = list(inflight) + list(pool.preparing) + list(pool.probes)
            if not waiting:  # every worker is suspended, awaiting its next probe
                time.sleep(min(POLL_S, lease.ttl / 3))
                continue
            ready, _ = ray.wait(waiting, num_returns=1, timeout=min(lease.ttl / 3, POLL_S))
            for ref in ready:
                if ref in pool.probes:
                    pool.probed(ref)
                    continue
                if ref in pool.preparing:
                    index = pool.preparing[ref]
                    try:
                        pool.prepared(ref)
                    except (RayActorError, ActorUnavailableError) as e:
                        pool.preparing.pop(ref, None)  # `prepared` pops it before reading the result
                        pool.drop(index, e)
                    except RayTaskError as e:
                        raise _worker_error(index, e) from e
                    continue
                tile, index = inflight.pop(ref)
                if index in pool.load:
                    pool.load[index] -= 1
                try:
                    result = ray.get(ref)
                except ActorUnavailableError:
                    pool.suspend(index)  # the tile may or may not have run: not the tile's fault
                    resubmitted += 1
                    todo.appendleft(tile)
                    continue
                except RayActorError as e:
                    cause = e
                    if pool.drop(index, e):
                        resubmitted += 1  # its node left: not the tile's fault
                        todo.appendleft(tile)
                        continue
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
                        on_tile({**result, "worker": index, "node": stats["node"], "ip": stats["ip"]})
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
                       resubmitted=resubmitted, repaired=repaired, nodes=pool.nodes())


def _wait_for_nodes(capacity: _Capacity, empty_since: float | None) -> float:
    """One wait of a build whose every worker has left with its node; returns when the wait began.

    Raises:
      WorkersLost: no node came back within `tiling.wait_for_workers` seconds (at once
        when the build may not wait).
    """
    now = time.monotonic()
    if empty_since is None:
        if capacity.refuse_now():
            raise WorkersLost("every tile worker left with its node, and the build may not wait for another "
                              "(tiling.wait_for_workers is 0)")
        capacity.request()
        log.warning("every tile worker left with its node; waiting up to %g s for a node "
                    "(tiling.wait_for_workers)", capacity.wait)
        return now
    if now - empty_since >= capacity.wait:
        raise WorkersLost(f"every tile worker left with its node and none could start again within "
                          f"tiling.wait_for_workers = {capacity.wait:g} s")
    time.sleep(min(POLL_S, capacity.wait))
    return empty_since
