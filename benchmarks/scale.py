"""Scale benchmark: Gram builds of N = 5k ... 60k into local stores, and an out-of-core solve of the largest.

raygram exists for Gram matrices larger than one machine's memory. This benchmark builds,
with a cheap kernel (a 2-hidden-layer ReLU network's NNGP and NTK on 32-dimensional
float64 inputs), one store per N (plus M test points) at one tile size (N = 60k: 29 GB, more than this
machine's RAM), and one more store of about 10⁵ tiles (N = 28k at tile size 64), and
reports per store, in one run:

- build wall time, and its bound max(the same kernel's time in one process on the same
  cores at the same tile size, bytes stored / the disk's sequential write speed), both
  measured in this run (a cheap kernel is disk-bound: then the store's write path is what
  matters); the goal is wall <= 1.1 x bound;
- entries/s against the same kernel's throughput in one process;
- the driver's CPU seconds per tile (goal <= 2 ms), against a bare Ray actor call's (its
  floor: one call and one result per tile), and the peak RSS of the driver and of
  every worker (each process's VmHWM, reset per N);
- resuming the finished store (`build_gram` again: fingerprint, listing of its tiles;
  goal <= 10 s at 10⁵ tiles), `GramStore.verify` (every tile re-read and checked) and
  one K @ X (X: N x 10) as the solvers read it;

then, on the largest store, the out-of-core solve under `memory_budget` (default 4 GiB):
CG at t = ∞ and Lanczos at 10 times (NTK mean), each in a fresh process: iterations,
wall time, bytes read per K @ X, peak RSS of that process (goal <= the budget); and CG on
the first `--check` training points against an in-core Cholesky solve of the same
leading block (goal: max relative difference <= 1e-8). Finally the growth exponent of
each cost in N (least squares of log cost on log N).

    python benchmarks/scale.py [--sizes 5000,10000,20000,40000,60000] [--test 1000]
        [--tile-size 512] [--many-tiles 28000:64] [--folder raygram-scale] [--budget 4GiB] [--check 20000] [--keep]
    python benchmarks/scale.py --codecs    # only: zarr's default zstd on this kernel's tiles

The folder needs the largest store's space (N = 60k: ~29 GB); each smaller store is
deleted once measured, and the largest too unless --keep. Results are in
docs/benchmarks.md with the command that produced them.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

ARCHITECTURE = [{"Dense": {"out_dim": 1, "W_std": 1.5, "b_std": 0.05}}, "Relu",
                {"Dense": {"out_dim": 1, "W_std": 1.5, "b_std": 0.05}}, "Relu",
                {"Dense": {"out_dim": 1, "W_std": 1.0, "b_std": 0.05}}]
FEATURES = 32
KINDS = ("nngp", "ntk")
DIAG_REG = 1e-3
LANCZOS_TIMES = 10
SOLVE_TOL = 1e-8  # CG's relative residual and Lanczos' change at which the large solves stop
CHECK_TOL = 1e-10  # CG's tolerance in the comparison with an in-core solve


def data(n: int, m: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inputs (n + m, FEATURES) on the unit sphere and a smooth target (n, 1) plus noise."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n + m, FEATURES))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y = np.sin(3 * x[:n, :1]) + x[:n, 1:2] * x[:n, 2:3] + 0.1 * rng.normal(size=(n, 1))
    return x[:n], x[n:], y


# -- measurements ----------------------------------------------------------------------------------
def disk_write_speed(folder: str, size: int = 2 << 30, block: int = 64 << 20) -> float:
    """Bytes/s of a sequential write of `size` bytes (incompressible, fsync'd) into `folder`."""
    payload = np.random.default_rng(0).integers(0, 255, block, dtype=np.uint8).tobytes()
    path = os.path.join(folder, "disk-speed.bin")
    start = time.perf_counter()
    with open(path, "wb") as f:
        for _ in range(size // block):
            f.write(payload)
        f.flush()
        os.fsync(f.fileno())
    elapsed = time.perf_counter() - start
    os.remove(path)
    return size / elapsed


def kernel_throughput(tile: int, seconds: float = 5.0) -> float:
    """Entries/s of the kernel (both kinds) on (tile, tile) blocks, jitted, in this process on all its cores."""
    import jax

    from raygram.kernels.architecture import network

    kernel_fn = network(ARCHITECTURE)[2]
    x = np.random.default_rng(1).normal(size=(2 * tile, FEATURES))
    fn = jax.jit(lambda a, b: kernel_fn(a, b, KINDS))
    jax.block_until_ready(fn(x[:tile], x[tile:]))
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        jax.block_until_ready(fn(x[:tile], x[tile:]))
        count += 1
    return count * tile * tile / (time.perf_counter() - start)


def ray_call_cost(calls: int = 2000, inflight: int = 2) -> float:
    """Driver CPU seconds of one Ray actor call as the build's driver makes them: two actors,
    `inflight` calls queued on each, a wait for the next result and a get per call, each
    returning a small dict. The floor under the driver's CPU per tile."""
    import ray

    @ray.remote(num_cpus=0, max_concurrency=2)
    class Echo:
        def run(self, tile):
            return {"tile": tile, "pid": 0, "compute_s": 0.0, "write_s": 0.0, "idle_s": 0.0}

    actors = [Echo.remote() for _ in range(2)]
    ray.get([a.run.remote(None) for a in actors])
    refs, load, sent = {}, [0] * len(actors), 0  # ref -> actor index; calls queued per actor
    start = time.process_time()
    while sent < calls or refs:
        for index, actor in enumerate(actors):
            while load[index] < inflight and sent < calls:
                refs[actor.run.remote(sent)] = index
                load[index] += 1
                sent += 1
        ready, _ = ray.wait(list(refs), num_returns=1)
        ray.get(ready[0])
        load[refs.pop(ready[0])] -= 1
    cost = (time.process_time() - start) / calls
    for actor in actors:
        ray.kill(actor)
    return cost


def folder_bytes(path: str) -> int:
    """Bytes of the files under `path` (what the store holds on disk)."""
    total, stack = 0, [path]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                else:
                    total += entry.stat(follow_symlinks=False).st_size
    return total


def high_water(pid: int) -> int | None:
    """Peak resident bytes (VmHWM) of a live process, or None."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def reset_high_water(pid: int) -> None:
    """Start a new peak RSS (VmHWM) for a process (Linux: 5 > /proc/PID/clear_refs)."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


class PeakSampler:
    """Peak RSS of this process's descendants whose command line starts with `prefix`, sampled."""

    def __init__(self, prefix: str = "ray::TileWorker", every: float = 0.2):
        import psutil

        self.psutil, self.prefix, self.every = psutil, prefix, every
        self.peaks: dict[int, int] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        me = self.psutil.Process()
        while not self.stop.wait(self.every):
            for child in me.children(recursive=True):
                try:
                    if child.cmdline()[:1] and child.cmdline()[0].startswith(self.prefix):
                        peak = high_water(child.pid)
                        if peak:
                            self.peaks[child.pid] = max(peak, self.peaks.get(child.pid, 0))
                except self.psutil.Error:
                    continue

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


# -- one N ------------------------------------------------------------------------------------------
def measure_build(folder: str, n: int, m: int, tile: int, rate: float, disk: float) -> dict:
    """Build, resume and verify one store of n training and m test points; the store stays."""
    from raygram import GramStore, TilingOptions, build_gram

    x_train, x_test, _ = data(n, m)
    path = os.path.join(folder, f"gram-{n}")
    reset_high_water(os.getpid())
    cpu = time.process_time()
    with PeakSampler() as sampler:
        report = build_gram(path, ARCHITECTURE, x_train, x_test, kinds=KINDS,
                            tiling=TilingOptions(tile_size=tile), progress=False)
    driver_cpu = time.process_time() - cpu
    stored = folder_bytes(path)
    entries = report.entries_computed
    start = time.perf_counter()
    resumed = build_gram(path, ARCHITECTURE, x_train, x_test, kinds=KINDS, tiling=TilingOptions(tile_size=tile),
                         progress=False)
    resume_s = time.perf_counter() - start
    assert resumed.tiles_computed == 0, resumed
    start = time.perf_counter()
    problems = GramStore(path, read_only=True).verify()
    verify_s = time.perf_counter() - start
    assert not problems, problems
    matmat_s = time_matmat(path)
    bound = max(entries / rate, stored / disk)
    return {"n": n, "tiles": report.tiles_computed, "build_s": report.wall_s, "entries": entries,
            "entries_per_s": entries / report.wall_s, "kernel_s": entries / rate, "disk_s": stored / disk,
            "bound_s": bound, "ratio": report.wall_s / bound, "stored_bytes": stored,
            "write_bytes_per_s": stored / report.wall_s,
            "driver_cpu_ms_per_tile": 1e3 * driver_cpu / report.tiles_computed,
            "driver_peak": high_water(os.getpid()), "worker_peaks": sorted(sampler.peaks.values()),
            "resume_s": resume_s, "verify_s": verify_s, "matmat_s": matmat_s}


def time_matmat(path: str, outputs: int = 10) -> float:
    """Seconds of one verified K @ X (X: N x outputs) through the solvers' `GramSource`, threaded as
    the out-of-core solvers run it (one BLAS thread per dask thread, a dask thread per core)."""
    import dask
    from threadpoolctl import threadpool_limits

    from raygram import GramSource, GramStore

    source = GramSource.from_store(GramStore(path, read_only=True))
    x = np.random.default_rng(2).normal(size=(source.n, outputs))
    with threadpool_limits(limits=1, user_api="blas"), dask.config.set(num_workers=os.cpu_count()):
        start = time.perf_counter()
        source.matmat("ntk", x)
        return time.perf_counter() - start


# -- solves (each in its own process, so that its peak RSS is its own) -----------------------------
def solve_child(path: str, mode: str, n_train: int | None, budget: str, tol: float) -> dict:
    """One solve of the store at `path`: "cg", "lanczos" (out of core) or "cholesky" (in core)."""
    import psutil

    from raygram import GramSource, GramStore, SolverOptions, predict
    from raygram.config import parse_memory

    store = GramStore(path, read_only=True)
    source = GramSource.from_store(store, n_train)
    _, _, y = data(store.plan.n_train, store.plan.n_test)
    y = y[:source.n]
    options = SolverOptions(diag_reg=(DIAG_REG,), memory_budget=parse_memory(budget), tol=tol,
                            max_iterations=1000, preconditioner_rank=256)
    if mode == "lanczos":
        mean_eigenvalue = float(source.diagonal("ntk").sum()) / source.n
        times = tuple(float(t) for t in y.size / mean_eigenvalue * np.logspace(-1, 3, LANCZOS_TIMES))
        options = dataclasses.replace(options, times=times, max_iterations=400)
    io = psutil.Process().io_counters()
    start = time.perf_counter()
    out = predict(source, y, options, kinds="ntk", method=mode)
    wall = time.perf_counter() - start
    read = psutil.Process().io_counters().read_chars - io.read_chars
    info = out.info["ntk"]
    steps = (info["cg"][0]["iterations"] if mode == "cg" else info["lanczos"][0]["steps"] if mode == "lanczos"
             else 0)
    return {"mode": mode, "n": source.n, "wall_s": wall, "steps": steps, "read_bytes": read,
            "peak": high_water(os.getpid()), "working_set": out.info.get("working_set_bytes"),
            "mean": out.mean["ntk"][0, :, :, 0].tolist()}


def run_child(path: str, mode: str, n_train: int | None, budget: str, tol: float) -> dict:
    """`solve_child` in a fresh Python process; its JSON result."""
    command = [sys.executable, os.path.abspath(__file__), "--child", mode, path, str(n_train or 0), budget, str(tol)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"{mode} solve failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def codec_costs(n: int = 4000, tile: int = 512) -> None:
    """Size and CPU time of writing and reading real kernel tiles with zarr's default zstd and uncompressed."""
    import ray
    import zarr

    from raygram import GramStore, TilingOptions, build_gram

    folder = tempfile.mkdtemp(prefix="raygram-codecs-")
    try:
        ray.init(include_dashboard=False, log_to_driver=False, _temp_dir=tempfile.mkdtemp(prefix="rg", dir="/tmp"))
        x_train, _, _ = data(n, 0)
        build_gram(os.path.join(folder, "gram"), ARCHITECTURE, x_train, kinds=KINDS,
                   tiling=TilingOptions(tile_size=tile), progress=False)
        ray.shutdown()
        store = GramStore(os.path.join(folder, "gram"), read_only=True)
        values = store.gram("ntk").dense()
        tiles = n // tile
        values = np.ascontiguousarray(values[:tiles * tile, :tiles * tile])  # whole tiles only
        print(f"zarr arrays in memory, {tiles}^2 NTK tiles of {tile}x{tile} (N = {n}), "
              "CPU seconds of writing and reading them all (fastest of 3):")
        for name, compressors in (("zstd (zarr's default)", "auto"), ("none (raygram's)", None)):
            costs = []
            for _ in range(3):
                held: dict = {}
                array = zarr.create_array(zarr.storage.MemoryStore(held), shape=values.shape, chunks=(tile, tile),
                                          dtype=values.dtype, compressors=compressors)
                start = time.process_time()
                array[...] = values
                written = time.process_time() - start
                start = time.process_time()
                np.asarray(array[...])
                costs.append((written, time.process_time() - start))
            stored = sum(len(v.to_bytes()) for key, v in held.items() if "/c/" in f"/{key}")
            write_s, read_s = min(c[0] for c in costs), min(c[1] for c in costs)
            print(f"  {name:22s} keeps {stored / values.nbytes:.3f} of the bytes; write {write_s:.2f} s "
                  f"({values.nbytes / write_s / 1e6:.0f} MB/s), read {read_s:.2f} s "
                  f"({values.nbytes / read_s / 1e6:.0f} MB/s)")
    finally:
        shutil.rmtree(folder)


def exponent(ns, values) -> float:
    """Least-squares slope of log(value) on log(N)."""
    ns, values = np.asarray(ns, float), np.asarray(values, float)
    keep = values > 0
    if keep.sum() < 2:
        return float("nan")
    return float(np.polyfit(np.log(ns[keep]), np.log(values[keep]), 1)[0])


def print_builds(rows: list[dict], rate: float, disk: float, call: float, title: str) -> None:
    print(f"\n{title}: kernel alone {rate / 1e6:.1f} M entries/s in one process, "
          f"disk {disk / 1e6:.0f} MB/s sequential write, a bare Ray actor call {call * 1e3:.2f} ms of driver CPU "
          f"(all measured in this run)")
    header = (f"{'N':>6s} {'tiles':>7s} {'build s':>8s} {'bound s':>8s} {'ratio':>6s} {'Mentr/s':>8s} "
              f"{'vs kernel':>9s} {'GB':>6s} {'MB/s':>6s} {'vs disk':>7s} {'drv ms/tile':>11s} "
              f"{'drv MiB':>8s} {'worker MiB':>12s} {'resume s':>8s} {'verify s':>8s} {'K@X s':>7s}")
    print(header)
    for r in rows:
        workers = "/".join(f"{p / 2**20:.0f}" for p in r["worker_peaks"]) or "-"
        print(f"{r['n']:6d} {r['tiles']:7d} {r['build_s']:8.1f} {r['bound_s']:8.1f} {r['ratio']:6.2f} "
              f"{r['entries_per_s'] / 1e6:8.2f} {r['entries_per_s'] / rate:9.2f} {r['stored_bytes'] / 1e9:6.2f} "
              f"{r['write_bytes_per_s'] / 1e6:6.0f} {r['write_bytes_per_s'] / disk:7.2f} "
              f"{r['driver_cpu_ms_per_tile']:11.2f} {r['driver_peak'] / 2**20:8.0f} {workers:>12s} "
              f"{r['resume_s']:8.2f} {r['verify_s']:8.1f} {r['matmat_s']:7.1f}")
    if len(rows) > 1:
        ns = [r["n"] for r in rows]
        print("growth exponent in N: " + ", ".join(
            f"{name} {exponent(ns, [r[key] for r in rows]):.2f}" for name, key in (
                ("tiles", "tiles"), ("build", "build_s"), ("bound", "bound_s"), ("stored bytes", "stored_bytes"),
                ("driver CPU/tile", "driver_cpu_ms_per_tile"), ("driver peak", "driver_peak"),
                ("resume", "resume_s"), ("verify", "verify_s"), ("K @ X", "matmat_s"))))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="5000,10000,20000,40000,60000")
    parser.add_argument("--test", type=int, default=1000)
    parser.add_argument("--tile-size", type=int, default=512)
    parser.add_argument("--many-tiles", default="28000:64", metavar="N:TILE",
                        help="one more store with about 10^5 tiles (driver, listing and verify at that count); "
                             "'' for none")
    parser.add_argument("--folder", default="raygram-scale")
    parser.add_argument("--budget", default="4GiB")
    parser.add_argument("--check", type=int, default=20000, help="training points of the in-core comparison")
    parser.add_argument("--keep", action="store_true", help="keep the largest store")
    parser.add_argument("--no-solve", action="store_true")
    parser.add_argument("--codecs", action="store_true",
                        help="only: what zarr's default compressor would cost on this kernel's tiles")
    parser.add_argument("--child", nargs=5, metavar=("MODE", "STORE", "N_TRAIN", "BUDGET", "TOL"),
                        help="only: one solve (cg, lanczos or cholesky) of an existing store's first N_TRAIN "
                             "training points (0: all), printed as JSON; the run starts one per solve")
    args = parser.parse_args()

    import jax

    jax.config.update("jax_enable_x64", True)
    if args.child:
        mode, path, n_train, budget, tol = args.child
        print(json.dumps(solve_child(path, mode, int(n_train) or None, budget, float(tol))))
        return

    if args.codecs:
        codec_costs()
        return
    import ray

    sizes = sorted(int(s) for s in args.sizes.split(","))
    os.makedirs(args.folder, exist_ok=True)
    print(f"{os.cpu_count()} CPU cores; N = {sizes} (+{args.test} test), tile {args.tile_size}, float64, "
          f"kinds {'+'.join(KINDS)}; stores in {os.path.abspath(args.folder)}", flush=True)
    disk = disk_write_speed(args.folder)
    rate = kernel_throughput(args.tile_size)
    many = tuple(int(v) for v in args.many_tiles.split(":")) if args.many_tiles else None
    many_rate = kernel_throughput(many[1]) if many else None
    rows, many_rows = [], []
    ray.init(include_dashboard=False, log_to_driver=False, _temp_dir=tempfile.mkdtemp(prefix="rg", dir="/tmp"))
    try:
        call = ray_call_cost()
        if many:
            many_rows.append(measure_build(args.folder, many[0], args.test, many[1], many_rate, disk))
            print(json.dumps(many_rows[-1]), flush=True)
            shutil.rmtree(os.path.join(args.folder, f"gram-{many[0]}"))
        for n in sizes:
            rows.append(measure_build(args.folder, n, args.test, args.tile_size, rate, disk))
            print(json.dumps(rows[-1]), flush=True)
            if n != sizes[-1]:
                shutil.rmtree(os.path.join(args.folder, f"gram-{n}"))
    finally:
        ray.shutdown()
    print_builds(rows, rate, disk, call, f"builds at tile size {args.tile_size}")
    if many:
        print_builds(many_rows, many_rate, disk, call, f"a store of about 10^5 tiles (tile size {many[1]})")
    largest = os.path.join(args.folder, f"gram-{sizes[-1]}")
    solves = {}
    try:
        if not args.no_solve:
            solves = solve_report(largest, sizes[-1], min(args.check, sizes[-1]), args.budget, args.tile_size)
    finally:
        if not args.keep:
            shutil.rmtree(largest)
    print_goals(rows, many_rows, solves, args.budget)


def print_goals(rows: list[dict], many_rows: list[dict], solves: dict, budget: str) -> None:
    """The issue's goals, each met or missed by how much."""
    from raygram.config import parse_memory

    limit = parse_memory(budget)
    last = rows[-1]
    peaks = [last["driver_peak"], *last["worker_peaks"]] + [r["peak"] for r in solves.get("runs", [])]
    goals = [(f"build of N = {last['n']} within 1.1x of its bound", last["ratio"], 1.1),
             (f"largest peak RSS (driver, workers, solves) within memory_budget {budget} (GiB)",
              max(peaks) / 2**30, limit / 2**30),
             (f"driver CPU per tile at N = {last['n']} (ms)", last["driver_cpu_ms_per_tile"], 2.0)]
    for r in many_rows:
        goals += [(f"resume (listing) of {r['tiles']} tiles (s)", r["resume_s"], 10.0),
                  (f"driver CPU per tile at {r['tiles']} tiles (ms)", r["driver_cpu_ms_per_tile"], 2.0)]
    if "check" in solves:
        goals.append(("out-of-core vs in-core solve, max rel. diff", solves["check"], 1e-8))
    print("\ngoals")
    for name, value, goal in goals:
        verdict = "met" if value <= goal else f"MISSED by {value / goal:.2f}x"
        print(f"  {name}: {value:.3g} (goal <= {goal:g}) {verdict}")


def solve_report(path: str, n: int, check: int, budget: str, tile: int) -> dict:
    """The out-of-core solves of the largest store and the in-core comparison, printed.

    Returns {"runs": the out-of-core solves' results, "check": the max relative difference}."""
    from raygram.config import parse_memory

    limit = parse_memory(budget)
    upper = n * (n + tile) / 2 * 8  # bytes of one kind's stored upper tiles, decoded (about)
    print(f"\nout-of-core solves of N = {n} (NTK mean, diag_reg {DIAG_REG}, tolerance {SOLVE_TOL:.0e}), "
          f"memory_budget {budget}; "
          f"each K @ X reads one kind's upper tiles, about {upper / 1e9:.1f} GB")
    # The comparison first (minutes), then the two long solves of every training point.
    out_of_core = run_child(path, "cg", check, budget, CHECK_TOL)
    in_core = run_child(path, "cholesky", check, "64GiB", CHECK_TOL)
    a, b = np.asarray(out_of_core["mean"]), np.asarray(in_core["mean"])
    diff = float(np.abs(a - b).max() / np.abs(b).max())
    print(f"first {check} training points: CG out of core {out_of_core['wall_s']:.1f} s "
          f"({out_of_core['steps']} iterations, peak {out_of_core['peak'] / 2**20:.0f} MiB) vs Cholesky in core "
          f"{in_core['wall_s']:.1f} s (peak {in_core['peak'] / 2**20:.0f} MiB): max rel. diff {diff:.1e} "
          f"(CG tolerance {CHECK_TOL:.0e}) (goal <= 1e-8)", flush=True)
    print(f"{'solve':>30s} {'steps':>6s} {'wall s':>8s} {'s/step':>7s} {'GB read/step':>12s} {'peak MiB':>9s} "
          f"{'<= budget':>9s}")
    results = {}
    for mode, label in (("cg", "CG, t = inf, rank-256 Nystrom"), ("lanczos", f"Lanczos, {LANCZOS_TIMES} times")):
        r = results[mode] = run_child(path, mode, None, budget, SOLVE_TOL)
        print(f"{label:>30s} {r['steps']:6d} {r['wall_s']:8.1f} {r['wall_s'] / max(1, r['steps']):7.2f} "
              f"{r['read_bytes'] / max(1, r['steps']) / 1e9:12.2f} {r['peak'] / 2**20:9.0f} "
              f"{str(r['peak'] <= limit):>9s}", flush=True)
    return {"runs": [*results.values(), out_of_core], "check": diff}


if __name__ == "__main__":
    main()
