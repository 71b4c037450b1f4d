"""`build_gram`: the tile scheduler that fills a Gram store from a pool of Ray actors.

The driver checks the inputs and the store, takes the store's lease, and hands tiles to
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
import socket
import sys
import time
from typing import Callable, Sequence

import numpy as np

from .architecture import canonical, network
from .lock import BuildLease, process_alive
from .store import DTYPES, KINDS, FingerprintMismatch, GramStore, StoreError, describe_difference, fingerprint
from .tiling import TilePlan, balanced_tile_size, fit_tile_size
from .worker import TileWorker, jax_env

log = logging.getLogger("raygram.build")

PROBE_SIZES = (2, 4, 8)  # tile sizes at which a worker measures XLA's peak memory
# Where memory allows big tiles, aim for about TARGET_GRID tiles a side: the symmetric
# block then costs (g + 1) / 2g = 0.52 of the full square and many workers stay busy;
# but keep at least MIN_TILE points a tile so per-tile overheads stay small.
MIN_TILE = 32
TARGET_GRID = 32


class TileFailed(RuntimeError):
    """A tile failed `max_attempts` times."""


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
    """Validated (x_train, x_test, kinds, dtype); raises ValueError before anything is written."""
    kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds)
    if not kinds or any(k not in KINDS for k in kinds) or len(set(kinds)) != len(kinds):
        raise ValueError(f"kinds must be distinct names from {KINDS}, got {kinds!r}")
    if str(np.dtype(dtype)) not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    arrays = []
    for name, x in (("x_train", x_train), ("x_test", x_test)):
        if x is None:
            arrays.append(None)
            continue
        x = np.asarray(x)
        if x.ndim < 2 or x.shape[0] == 0:
            raise ValueError(f"{name} must have shape (n_points, ...features) with n_points >= 1, got {x.shape}")
        if not np.issubdtype(x.dtype, np.number):
            raise ValueError(f"{name} must be numeric, got dtype {x.dtype}")
        bad = ~np.isfinite(x)
        if bad.any():
            first = np.argwhere(bad)[0]
            raise ValueError(f"{name} has {int(bad.sum())} non-finite values (NaN or inf), the first at "
                             f"index {tuple(int(i) for i in first)}; clean the data before building")
        arrays.append(x)
    if arrays[1] is not None and arrays[1].shape[1:] != arrays[0].shape[1:]:
        raise ValueError(f"x_test points have shape {arrays[1].shape[1:]}, x_train points "
                         f"{arrays[0].shape[1:]}; they must match")
    return arrays[0], arrays[1], kinds, str(np.dtype(dtype))


def _check_fingerprint(gram: GramStore, wanted: dict) -> None:
    stored = gram.fingerprint
    if stored != wanted:
        raise FingerprintMismatch(
            f"the store at {gram.url} was built for another configuration; refusing to mix tiles.\n"
            f"{describe_difference(stored, wanted)}\nUse a new store path, or the original settings.")


def _worker_count(workers: int | None, num_cpus: float, num_gpus: float) -> int:
    """`workers`, or as many as the cluster's GPUs (or, without GPUs, CPUs) hold; refuses what cannot run."""
    import ray

    resources = ray.cluster_resources()
    for name, need in (("CPU", num_cpus), ("GPU", num_gpus)):
        if need > resources.get(name, 0):
            raise ValueError(f"each worker asks for {need} {name}s but the Ray cluster has "
                             f"{resources.get(name, 0):g}; lower num_{name.lower()}s")
    if workers is not None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        return workers
    if num_gpus > 0:
        return max(1, int(resources["GPU"] // num_gpus))
    return max(1, int(resources["CPU"] // num_cpus))


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
            raise RuntimeError(f"workers keep dying; last cause: {cause}")
        self.replacements_left -= 1
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


def build_gram(store: str | GramStore, architecture, x_train, x_test=None, *,
               kinds: Sequence[str] = KINDS, dtype: str = "float64", tile_size: int | None = None,
               workers: int | None = None, num_cpus: float = 1, num_gpus: float = 0,
               max_inflight: int = 2, max_attempts: int = 3, storage_options: dict | None = None,
               verify: bool = False, progress: bool = True, lease_ttl: float = 60.0,
               on_tile: Callable[[dict], None] | None = None) -> BuildReport:
    """Compute the Gram blocks of `architecture` on x_train (N, ...) [and x_test (M, ...)] into a store.

    Writes NNGP/NTK (`kinds`) train×train (upper tiles), test×train and the test
    self-kernels into `store` (a local folder or s3://... URL) and returns a
    `BuildReport`. Resumes a partial build with the same fingerprint; refuses a store
    built for anything else. `tile_size=None` takes the store's, or picks one from XLA's
    memory analysis of the kernel on a worker. `verify=True` first re-checks every
    stored tile against its checksum and recomputes the bad ones. `on_tile` is called
    in the driver with each finished tile's result (id, worker pid, timings).
    """
    import ray

    started = time.perf_counter()
    x_train, x_test, kinds, dtype = check_inputs(x_train, x_test, kinds, dtype)
    architecture = canonical(architecture)
    network(architecture)  # a bad layer name or argument fails here, before any work
    if max_inflight < 1 or max_attempts < 1:
        raise ValueError("max_inflight and max_attempts must be >= 1")
    if tile_size is not None and (not isinstance(tile_size, (int, np.integer)) or tile_size < 1):
        raise ValueError(f"tile_size must be a positive integer, got {tile_size!r}")
    gram = store if isinstance(store, GramStore) else GramStore(store, storage_options)

    base = fingerprint(architecture, kinds, dtype, x_train, x_test, 0)  # hashes the data once

    def make_fingerprint(tile):
        return {**base, "tile_size": int(tile)}

    if gram.exists():
        tile_size = tile_size or gram.fingerprint.get("tile_size")
        _check_fingerprint(gram, make_fingerprint(tile_size))
        total = sum(1 for _ in gram.plan.tiles())
        if not verify and len(gram.written_tiles()) == total:
            log.info("every tile of %s is already stored; nothing to compute", gram.url)
            return BuildReport(store=gram.url, tile_size=tile_size, tiles_total=total, tiles_skipped=total,
                               tiles_computed=0, entries_computed=0,
                               wall_s=time.perf_counter() - started, workers=[])

    BuildLease(gram, ttl=lease_ttl).check_free()  # refuse a concurrent build before starting workers
    if not ray.is_initialized():
        ray.init()
    workers = _worker_count(workers, num_cpus, num_gpus)
    x_refs = ray.put(x_train), (None if x_test is None else ray.put(x_test))
    actor_class = ray.remote(TileWorker).options(
        num_cpus=num_cpus, num_gpus=num_gpus, max_concurrency=2, max_restarts=0, max_task_retries=0,
        runtime_env={"env_vars": jax_env(num_gpus, num_cpus)})
    pool = _Workers(lambda: actor_class.remote(architecture, kinds, dtype, *x_refs),
                    workers, max_replacements=max_attempts * workers)
    try:
        if tile_size is None:
            per_device = max(1, round(1 / num_gpus)) if num_gpus > 0 else workers
            tile_size = _choose_tile_size(pool.actors[0], len(x_train), per_device)
        plan = TilePlan(len(x_train), 0 if x_test is None else len(x_test), int(tile_size))
        wanted = make_fingerprint(plan.tile_size)
        lease = BuildLease(gram, ttl=lease_ttl)
        try:
            lease.acquire()
        except OSError as e:
            raise StoreError(f"cannot write to the store at {gram.url}: {e}") from e
        try:
            return _run(gram, wanted, plan, pool, lease, max_inflight, max_attempts, verify,
                        progress, on_tile, started)
        finally:
            pool.shutdown()  # no worker may write once the lease is gone
            lease.release()
    finally:
        pool.shutdown()


def _run(gram, wanted, plan, pool, lease, max_inflight, max_attempts, verify, progress, on_tile, started):
    import ray
    from ray.exceptions import ActorUnavailableError, RayActorError, RayTaskError

    if gram.exists():
        _check_fingerprint(gram, wanted)
    else:
        gram.create(wanted, plan)
    done = gram.written_tiles()
    repaired = []
    if verify:
        bad = gram.verify(done)
        for tile, problem in sorted(bad.items()):
            log.warning("tile %s is bad (%s): recomputing it", tile, problem)
        gram.forget_tiles(bad)
        done -= set(bad)
        repaired = [str(t) for t in sorted(bad)]
    todo = collections.deque(t for t in plan.tiles() if t not in done)
    bar = _Progress(plan, len(done), sum(plan.entries(t) for t in done), progress)
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
                        pool.preparing.pop(ref)
                        pool.replace(index, e)
                    except RayTaskError as e:
                        raise RuntimeError(f"worker {index} could not compile the kernel: {e.cause!r}") from e
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
                       wall_s=time.perf_counter() - started, workers=list(pool.stats.values()),
                       resubmitted=resubmitted, repaired=repaired)
