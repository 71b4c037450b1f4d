"""GPU benchmark of raygram's kernels: time per Gram entry, peak memory, FLOP-rate share, Ray overhead.

Runs wherever JAX (0.5.3 or later, any Python from 3.11) is installed; raygram and
neural-tangents may come from the offline bundle of `tools/make_bundle.py` (a machine
without a package index): `python3 raygram-gpu.zip [options]` runs this script.

One row per model, dtype and tile size n (defaults: TILES): the NNGP and NTK of an
n×n tile, one jit-compiled call; a tile that does not fit the device ends its model's
row list with "out of memory".
  s/entry   best of --repeats calls, divided by n²
  peak MiB  the device's own peak (`memory_stats()["peak_bytes_in_use"]`, source
            "device") where it reports one: then each model and dtype runs in its own
            process, tiles in increasing size, so the peak is this row's. Elsewhere
            (CPU) XLA's analysis of the compiled call: arguments + outputs + temporaries
            (source "xla")
  GFLOP     FLOPs of the compiled call (XLA's cost analysis). XLA counts the body of a
            loop once (the invariant models' lax.map over the group, SO(3)'s lax.scan
            at larger L): such rows show ">=" before GFLOP and % peak
  % peak    achieved FLOP rate / the device's dense peak for the dtype, from the table
            PEAK_TFLOPS (FP32 without TF32; FP64 on the FP64 tensor cores where the GPU
            has them) or --peak-tflops; n/a on CPU or for unknown devices. JAX's default
            precision may run float32 matmuls on TF32 tensor cores, above the FP32 peak.
Models: the architectures of benchmarks/kernel_speed.py and benchmarks/so3_speed.py, so
that GPU and CPU figures compare:
  CNN-GAP             neural-tangents' stax: Conv-Relu-Conv-Relu-GlobalAvgPool-Dense
  C4/D4-invariant     raygram.kernels.serial of LiftingConv-Relu-GroupConv-Relu-GroupPool-Dense
  C4/D4-general       stax.serial of the same layers (|G| relative blocks)
  SO3-pairs/relative-L<L>  so3_serial of S2Lifting-Erf-SO3Conv-Erf-SO3Pool-Dense at bandwidth L
Then, where Ray and zarr are importable, the scheduler's overhead: a one-node
`build_gram` of a C4 GCNN Gram (one actor per GPU; one CPU actor without GPUs) against
the same tiles computed in this process, one after another.

    python3 raygram-gpu.zip                      # the full table (GPU)
    python3 benchmarks/gpu.py --quick            # tiny sizes, for CI on CPU (JAX_PLATFORMS=cpu)
    python3 benchmarks/gpu.py --models CNN-GAP C4-invariant --dtypes float32 --tiles 16 64
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import time
import timeit

# As raygram's GPU workers run (`raygram.build.worker.jax_env`): memory on demand, so that
# the device's peak is what the kernel used and child processes can share the GPU.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402
import numpy as np  # noqa: E402

try:  # from the bundle (tools/make_bundle.py)
    from raygram_benchmarks import kernel_speed, so3_speed
except ImportError:  # from the checkout: benchmarks/ is this script's folder
    import kernel_speed
    import so3_speed

from raygram._neural_tangents import nt  # noqa: E402
from raygram.kernels import so3_serial  # noqa: E402

KINDS = ("nngp", "ntk")
DTYPES = ("float32", "float64")
PLANAR = {"CNN-GAP": "CNN-GAP", "C4-invariant": "C4 invariant", "D4-invariant": "D4 invariant",
          "C4-general": "C4 general", "D4-general": "D4 general"}
# Dense peak TFLOP/s (FP32, FP64) from NVIDIA's data sheets; None where a sheet gives none.
# First match of the pattern in `device_kind` wins.
PEAK_TFLOPS = (
    (r"H200 NVL", 60.0, 60.0), (r"H200", 67.0, 67.0),
    (r"H100 PCIe", 51.0, 51.0), (r"H100 NVL", 60.0, 60.0), (r"H100", 67.0, 67.0),
    (r"A100", 19.5, 19.5), (r"L40S", 91.6, None), (r"L4\b", 30.3, None),
    (r"V100-PCIE", 14.0, 7.0), (r"V100", 15.7, 7.8), (r"T4\b", 8.1, None),
)
QUICK = {"size": 6, "tiles": [2], "bandwidths": [2], "channels": 2, "repeats": 1, "ray_points": 8}
FULL = {"size": 28, "bandwidths": [6, 8], "channels": 10, "repeats": 3, "ray_points": 128}
# Default tile sizes n: the planar general recursions hold |G| covariances of (H·W)² entries
# per pair, the SO(3) pairs path O(L³) numbers per pair (XLA's analysis of the compiled call).
TILES = {"planar": [4, 16], "SO3": [16, 64]}
FORWARDED = ("size", "tiles", "bandwidths", "channels", "repeats", "peak_tflops")


@dataclasses.dataclass
class Row:
    """One measurement: seconds per entry, peak bytes and where they come from, FLOPs per call."""

    seconds: float
    peak_bytes: int
    source: str
    flops: float | None
    loops: bool  # the compiled call has a loop, whose body XLA's FLOPs count once


def tiles(name: str, args) -> list[int]:
    """Tile sizes of a model: --tiles, else the default of its family (TILES), increasing."""
    return sorted(args.tiles or TILES["SO3" if name.startswith("SO3") else "planar"])


def model_names(bandwidths) -> list[str]:
    return [*PLANAR, *(f"SO3-{q}-L{L}" for L in bandwidths for q in ("pairs", "relative"))]


def model(name: str, args):
    """(kernel_fn, input feature shape) of a model name of `model_names`."""
    if name in PLANAR:
        return kernel_speed.MODELS[PLANAR[name]](), (args.size, args.size, 1)
    _, quadrature, bandwidth = name.split("-")
    L = int(bandwidth[1:])
    return so3_serial(*so3_speed.layers(L), quadrature=quadrature)[2], (2 * L, 2 * L, args.channels)


def flops_of(compiled) -> float | None:
    """FLOPs of a compiled call from XLA's cost analysis (a dict, or a list of one on older JAX)."""
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    flops = (cost or {}).get("flops")
    return float(flops) if flops and flops > 0 else None


def measure(kernel_fn, shape, dtype: str, n: int, repeats: int) -> Row:
    """Time, memory and FLOPs of the NNGP+NTK of an n×n tile of random inputs of feature `shape`."""
    x1, x2 = (jax.random.normal(key, (n, *shape), dtype) for key in jax.random.split(jax.random.PRNGKey(n)))
    compiled = jax.jit(lambda a, b: kernel_fn(a, b, KINDS)).lower(x1, x2).compile()
    call = lambda: jax.block_until_ready(compiled(x1, x2))  # noqa: E731
    call()  # warm-up: the first call may allocate and transfer
    seconds = min(timeit.repeat(call, number=1, repeat=repeats))
    stats = x1.devices().pop().memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        peak, source = stats["peak_bytes_in_use"], "device"
    else:
        mem = compiled.memory_analysis()
        peak, source = sum(getattr(mem, f"{part}_size_in_bytes") for part in ("argument", "output", "temp")), "xla"
    loops = re.search(r"\bwhile\(", compiled.as_text()) is not None
    return Row(seconds / n**2, peak, source, flops_of(compiled), loops)


def peak_flop_rate(args, dtype: str) -> float | None:
    """FLOP/s of the device at its dense peak for `dtype`, or None when unknown (or on CPU)."""
    if args.peak_tflops:
        return 1e12 * args.peak_tflops[min(DTYPES.index(dtype), len(args.peak_tflops) - 1)]
    device = jax.devices()[0]
    if device.platform == "cpu":
        return None
    for pattern, fp32, fp64 in PEAK_TFLOPS:
        if re.search(pattern, device.device_kind, re.IGNORECASE):
            tflops = fp32 if dtype == "float32" else fp64
            return None if tflops is None else 1e12 * tflops
    return None


def format_row(name, dtype, n, row: Row, peak_rate) -> str:
    rate = row.flops / (row.seconds * n**2) if row.flops else None
    bound = ">=" if row.loops else ""
    share = f"{bound}{100 * rate / peak_rate:.3g}" if rate and peak_rate else "n/a"
    gflop = f"{bound}{row.flops / 1e9:.4g}" if row.flops else "n/a"
    return (f"{name:20s} {dtype:8s} {n:5d} {row.seconds:10.3e} {row.peak_bytes / 2**20:10.4g} {row.source:6s} "
            f"{gflop:>10s} {share:>7s}")


def run_rows(name: str, dtype: str, args) -> None:
    """Print the rows of one model and dtype, tiles in increasing size."""
    jax.config.update("jax_enable_x64", dtype == "float64")
    kernel_fn, shape = model(name, args)
    peak_rate = peak_flop_rate(args, dtype)
    for n in tiles(name, args):
        try:
            row = measure(kernel_fn, shape, dtype, n, args.repeats)
        except Exception as e:  # noqa: BLE001 - only running out of device memory is a result
            if "RESOURCE_EXHAUSTED" not in str(e) and "out of memory" not in str(e).lower():
                raise
            print(f"{name:20s} {dtype:8s} {n:5d} out of memory", flush=True)
            break
        print(format_row(name, dtype, n, row, peak_rate), flush=True)


def run_isolated(name: str, dtype: str, args) -> int:
    """Run one model and dtype in a fresh process (same interpreter, flags and entry point)."""
    flags = sys.orig_argv[1:len(sys.orig_argv) - len(sys.argv)]
    command = [sys.executable, *flags, sys.argv[0], "--rows-only", "--isolate", "no", "--no-ray",
               "--models", name, "--dtypes", dtype]
    for option in FORWARDED:
        value = getattr(args, option)
        if value is not None:
            values = value if isinstance(value, list) else [value]
            command += [f"--{option.replace('_', '-')}", *map(str, values)]
    code = subprocess.run(command, check=False).returncode
    if code:
        print(f"{name:20s} {dtype:8s} failed (exit {code})", flush=True)
    return code


def origins() -> str:
    import raygram

    return (f"imported: raygram={pathlib.Path(raygram.__file__).parent} "
            f"neural_tangents={pathlib.Path(nt.__file__).parent} jax={pathlib.Path(jax.__file__).parent}")


def scheduler_overhead(args) -> None:
    """One-node `build_gram` (one actor per GPU) against the same tiles in this process."""
    try:
        import ray
        from raygram import GramStore, TilingOptions, build_gram
        from raygram.kernels.architecture import network
        from raygram.store.plan import TilePlan
    except ImportError as e:
        print(f"scheduler: skipped ({e})")
        return
    jax.config.update("jax_enable_x64", True)
    gpus = [d for d in jax.devices() if d.platform == "gpu"]
    conv = {"out_chan": 1, "filter_shape": [3, 3], "group": "C4", "padding": "SAME"}
    spec = [{"LiftingConv": conv}, "Relu", {"GroupConv": conv}, "Relu", "GroupPool", {"Dense": {"out_dim": 1}}]
    n, t = args.ray_points, max(tiles("C4-invariant", args))
    x = np.random.default_rng(0).normal(size=(n, args.size, args.size, 1))
    inprocess_s, ours = tiles_in_process(network(spec)[2], x, TilePlan(n, 0, t))
    if not ray.is_initialized():
        import raygram

        bundle = str(pathlib.Path(raygram.__file__).parents[1])  # workers import raygram from here too
        path = os.pathsep.join(p for p in (bundle, os.environ.get("PYTHONPATH")) if p)
        ray.init(address=args.ray_address, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": path}})
    folder = tempfile.mkdtemp(prefix="raygram-gpu-")
    try:
        tiling = TilingOptions(tile_size=t, workers=max(1, len(gpus)), gpus_per_worker=1 if gpus else 0)
        report = build_gram(os.path.join(folder, "gram"), spec, x, progress=False, tiling=tiling)
        theirs = GramStore(os.path.join(folder, "gram"), read_only=True).gram("ntk")[...]
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    workers = len(report.workers)
    compile_s = max(w["compile_s"] for w in report.workers)
    overhead = report.wall_s - compile_s - inprocess_s / workers
    diff = float(np.abs(ours - theirs).max() / np.abs(ours).max())
    print(f"scheduler: C4 GCNN {n} points {args.size}x{args.size}x1 float64 nngp+ntk, tile {t}, "
          f"{report.tiles_computed} tiles")
    print(f"{'':24s}{'workers':>8s}{'wall s':>9s}{'compile s':>10s}{'overhead s':>11s}{'share':>7s}  max rel. diff")
    print(f"{'one process':24s}{1:8d}{inprocess_s:9.2f}")
    print(f"{'build_gram (Ray)':24s}{workers:8d}{report.wall_s:9.2f}{compile_s:10.2f}{overhead:11.2f}"
          f"{100 * report.compute_share:6.1f}%  {diff:.1e}")


def tiles_in_process(kernel_fn, x, plan) -> tuple[float, np.ndarray]:
    """Seconds to compute every train×train tile of `plan` here, as a worker does, and the NTK."""
    t = plan.tile_size
    probe = np.repeat(x[:1], t, axis=0)
    cross = jax.jit(lambda a, b: kernel_fn(a, b, KINDS)).lower(probe, probe).compile()
    square = jax.jit(lambda a: kernel_fn(a, None, KINDS)).lower(probe).compile()
    ntk = np.zeros((len(x), len(x)))
    start = time.perf_counter()
    for tile in plan.tiles("train_train"):
        rows = plan.padded_rows(x, tile.i)
        out = square(rows) if tile.i == tile.j else cross(rows, plan.padded_rows(x, tile.j))
        r, c = plan.region(tile)
        ntk[r, c] = np.asarray(out[1])[:r.stop - r.start, :c.stop - c.start]
    seconds = time.perf_counter() - start
    return seconds, np.triu(ntk) + np.triu(ntk, 1).T


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", "--dry-run", action="store_true",
                        help="tiny sizes (CI on CPU): " + ", ".join(f"{k}={v}" for k, v in QUICK.items()))
    parser.add_argument("--models", nargs="+", help="model names (default: all; see above)")
    parser.add_argument("--dtypes", nargs="+", choices=DTYPES, default=list(DTYPES))
    parser.add_argument("--tiles", nargs="+", type=int, help=f"tile sizes n (default: planar models "
                        f"{TILES['planar']}, SO(3) {TILES['SO3']}; the scheduler comparison takes the largest planar)")
    parser.add_argument("--size", type=int, help=f"image side of the planar models (default {FULL['size']})")
    parser.add_argument("--bandwidths", nargs="+", type=int, help=f"SO(3) bandwidths L (default {FULL['bandwidths']})")
    parser.add_argument("--channels", type=int, help=f"SO(3) input channels (default {FULL['channels']})")
    parser.add_argument("--repeats", type=int, help=f"timed calls per row, best kept (default {FULL['repeats']})")
    parser.add_argument("--peak-tflops", nargs="+", type=float, metavar="TFLOPS",
                        help="the device's dense peak: FP32 [FP64] TFLOP/s (default: PEAK_TFLOPS by device kind)")
    parser.add_argument("--isolate", choices=("auto", "yes", "no"), default="auto",
                        help="one process per model and dtype (auto: where the device reports its peak memory)")
    parser.add_argument("--no-ray", action="store_true", help="skip the scheduler comparison")
    parser.add_argument("--ray-address", help="join this Ray cluster instead of starting one on this node")
    parser.add_argument("--ray-points", type=int, help=f"training points of that build (default {FULL['ray_points']})")
    parser.add_argument("--rows-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():  # what was not given
        if getattr(args, key) is None:
            setattr(args, key, value)
    known = model_names(args.bandwidths)
    args.models = args.models or known
    unknown = [m for m in args.models if m not in known]
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(known)}")
    if min((args.tiles or []) + args.bandwidths + [args.size, args.channels, args.repeats, args.ray_points]) < 1:
        parser.error("sizes, tiles, bandwidths, channels, repeats and points must be positive")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    device = jax.devices()[0]
    if not args.rows_only:
        print(f"JAX {jax.__version__}, backend {jax.default_backend()}, {jax.device_count()} x "
              f"{device.device_kind}, Python {sys.version.split()[0]}")
        print(origins())
        print(f"{'model':20s} {'dtype':8s} {'tile':>5s} {'s/entry':>10s} {'peak MiB':>10s} {'source':6s} "
              f"{'GFLOP':>10s} {'% peak':>7s}", flush=True)
    isolate = args.isolate == "yes" or (args.isolate == "auto" and "peak_bytes_in_use" in (device.memory_stats() or {}))
    failed = 0
    for name in args.models:
        for dtype in args.dtypes:
            if isolate:
                failed += bool(run_isolated(name, dtype, args))
            else:
                run_rows(name, dtype, args)
    if not (args.no_ray or args.rows_only):
        scheduler_overhead(args)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
