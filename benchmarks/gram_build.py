"""Wall time of a raygram Gram build (compute + store) against `nt.batch` on the same matrix.

Both compute the NNGP and NTK train×train Gram of the same C4 GCNN on the same inputs,
in float64: raygram with its defaults (tile size from the memory model, one worker per
CPU) and again with one worker, tiles written to a zarr folder; `nt.batch` in memory, with the same tile size as its
batch size (it needs N divisible by it) and x2=None, which it computes as a full square.
Prints both wall times, their ratio (goal <= 0.55; symmetry alone gives about 0.5) and
the share of worker time spent in kernel compute (goal >= 90%).

    python benchmarks/gram_build.py [--n 768] [--size 6]
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

import jax
import numpy as np

jax.config.update("jax_enable_x64", True)


def architecture(size: int):
    conv = {"out_chan": 8, "filter_shape": [3, 3], "group": "C4", "padding": "SAME"}
    return [{"LiftingConv": conv}, "Relu", {"GroupConv": conv}, "Relu", "GroupPool", {"Dense": {"out_dim": 1}}]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=768, help="training points")
    parser.add_argument("--size", type=int, default=6, help="image side (images are size x size x 1)")
    args = parser.parse_args()

    import ray

    from raygram._neural_tangents import nt
    from raygram import GramStore, TilingOptions, build_gram
    from raygram.kernels.architecture import network

    x = np.random.default_rng(0).normal(size=(args.n, args.size, args.size, 1))
    spec = architecture(args.size)
    start = time.perf_counter()
    ray.init(include_dashboard=False, log_to_driver=False, _temp_dir=tempfile.mkdtemp(prefix="rg", dir="/tmp"))
    ray_start = time.perf_counter() - start

    runs = {}
    for label, workers in (("raygram, default workers", None), ("raygram, 1 worker", 1)):
        folder = tempfile.mkdtemp(prefix="raygram-bench-")
        try:
            start = time.perf_counter()
            report = build_gram(os.path.join(folder, "gram"), spec, x, progress=False, tiling=TilingOptions(workers=workers))
            seconds = time.perf_counter() - start
            store = GramStore(os.path.join(folder, "gram"))
            ours = {k: store.gram(k)[...] for k in ("nngp", "ntk")}
        finally:
            shutil.rmtree(folder)
        runs[label] = (seconds, report, ours)
    ray.shutdown()

    report = runs["raygram, default workers"][1]
    t = report.tile_size
    if args.n % t:
        raise SystemExit(f"nt.batch needs N divisible by the batch size: N={args.n}, tile {t}")
    kernel_fn = jax.jit(network(spec)[2], static_argnames="get")
    batched = nt.batch(kernel_fn, batch_size=t, device_count=0, store_on_device=False)
    start = time.perf_counter()
    theirs = batched(x, None, ("nngp", "ntk"))
    theirs = {k: np.asarray(getattr(theirs, k)) for k in ("nngp", "ntk")}
    batch_s = time.perf_counter() - start

    print(f"C4 GCNN (LiftingConv-ReLU-GroupConv-ReLU-GroupPool-Dense), {args.n} images "
          f"{args.size}x{args.size}x1, NNGP+NTK float64, backend {jax.default_backend()}, "
          f"{os.cpu_count()} CPU cores; ray.init {ray_start:.1f} s (not counted)")
    print(f"tile size {t} (memory model + grid rule): {report.tiles_computed} tiles of "
          f"{(args.n // t) ** 2} in the full square")
    print(f"{'':28s}{'workers':>8s}{'wall s':>9s}{'ratio':>7s}{'compute':>9s}{'write':>7s}{'idle':>6s}"
          f"{'share':>7s}  max rel. diff")
    print(f"{'nt.batch (full square)':28s}{1:8d}{batch_s:9.1f}{1.0:7.3f}")
    for label, (seconds, report, ours) in runs.items():
        w = report.workers
        total = {k: sum(v[k] for v in w) for k in ("compute_s", "write_s", "idle_s")}
        diff = max(float(np.abs(ours[k] - theirs[k]).max() / np.abs(theirs[k]).max()) for k in ours)
        print(f"{label:28s}{len(w):8d}{seconds:9.1f}{seconds / batch_s:7.3f}{total['compute_s']:9.1f}"
              f"{total['write_s']:7.2f}{total['idle_s']:6.2f}{100 * report.compute_share:6.1f}%  {diff:.1e}")
    print("goals: ratio <= 0.55, share >= 90% (compute / (compute + idle); writes overlap compute)")


if __name__ == "__main__":
    main()
