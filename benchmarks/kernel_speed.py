"""Seconds per Gram entry and XLA peak memory of GCNN kernels vs neural-tangents' CNN-GAP.

Architecture (issue #2): lifting conv -> ReLU -> group conv -> ReLU -> group pool -> Dense,
3x3 filters, SAME padding, 28x28x1 inputs; the baseline is neural-tangents' own CNN
with global average pooling (stax.Conv in place of the group layers), measured in the
same run. Rows:
  CNN-GAP          neural-tangents stax.Conv ... GlobalAvgPool (baseline)
  C4/D4 invariant  raygram.kernels.serial: orbit average of |G| CNN-GAP kernels
  C4/D4 general    raygram.kernels.serial.general_serial: the group recursion of the
                   |G| relative blocks (stax.serial's values), one block at a time
  C4/D4 full       covariance="full": the whole (|G|·H·W)² covariance, as in the theorems
Each row is the best of --repeats jit-compiled calls on an n×n tile, divided by n².
Memory is XLA's own analysis of the compiled call (arguments + outputs + temporaries).
The full propagation only fits 1×1 tiles, so the general recursion is also measured
at 1×1 to compare the two at equal tiles.

    python benchmarks/kernel_speed.py            # full table (about 10 minutes on 2 cores)
    python benchmarks/kernel_speed.py --size 14  # quicker
"""
from __future__ import annotations

import argparse
import time

import jax
import numpy as np

jax.config.update("jax_enable_x64", True)

from raygram._neural_tangents import stax, x64  # noqa: E402
from raygram.kernels import GroupConv, GroupPool, LiftingConv, serial  # noqa: E402
from raygram.kernels.serial import general_serial  # noqa: E402


def gcnn_layers(group, covariance="relative"):
    return [LiftingConv(1, (3, 3), group=group, covariance=covariance), stax.Relu(),
            GroupConv(1, (3, 3), group=group), stax.Relu(), GroupPool(), stax.Dense(1)]


MODELS = {
    "CNN-GAP": lambda: stax.serial(stax.Conv(1, (3, 3), padding="SAME"), stax.Relu(),
                                   stax.Conv(1, (3, 3), padding="SAME"), stax.Relu(),
                                   stax.GlobalAvgPool(), stax.Dense(1))[2],
    "C4 invariant": lambda: serial(*gcnn_layers("C4"))[2],
    "D4 invariant": lambda: serial(*gcnn_layers("D4"))[2],
    "C4 general": lambda: general_serial(*gcnn_layers("C4"))[2],
    "D4 general": lambda: general_serial(*gcnn_layers("D4"))[2],
    "C4 full": lambda: stax.serial(*gcnn_layers("C4", "full"))[2],
    "D4 full": lambda: stax.serial(*gcnn_layers("D4", "full"))[2],
}


def measure(kernel_fn, get, dtype, size, n, repeats):
    key1, key2 = jax.random.split(jax.random.PRNGKey(0))
    x1 = jax.random.normal(key1, (n, size, size, 1), dtype)
    x2 = jax.random.normal(key2, (n, size, size, 1), dtype)
    fn = jax.jit(lambda a, b: kernel_fn(a, b, get))
    compiled = fn.lower(x1, x2).compile()
    mem = compiled.memory_analysis()
    peak = mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
    jax.block_until_ready(compiled(x1, x2))
    best = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(compiled(x1, x2))
        best = min(best, time.perf_counter() - start)
    return best / n ** 2, peak


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--tile", type=int, default=4, help="n for the n×n tile")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", nargs="*", default=list(MODELS))
    args = parser.parse_args()
    print(f"{args.size}x{args.size}x1 SAME, 3x3 filters, backend {jax.default_backend()}, "
          f"{jax.device_count()} device(s)")
    print(f"{'model':14s} {'tile':>4s} {'dtype':8s} {'get':9s} {'s/entry':>9s} {'x CNN-GAP':>9s} "
          f"{'peak MiB':>9s} {'MiB/entry':>9s}")
    rows = [(name, args.tile) for name in args.models if "full" not in name]
    for group in ("C4", "D4"):
        if f"{group} full" in args.models:
            rows += [(f"{group} general", 1), (f"{group} full", 1)]
    for dtype in ("float32", "float64"):
        for get in ("nngp", ("nngp", "ntk")):
            base = None
            for name, n in rows:
                with x64(dtype == "float64"):
                    sec, peak = measure(MODELS[name](), get, dtype, args.size, n, args.repeats)
                base = sec if name == "CNN-GAP" else base
                ratio = f"{sec / base:9.2f}" if base else f"{'-':>9s}"
                label = get if isinstance(get, str) else "nngp+ntk"
                print(f"{name:14s} {n:4d} {dtype:8s} {label:9s} {sec:9.4f} {ratio} "
                      f"{peak / 2**20:9.1f} {peak / 2**20 / n**2:9.1f}", flush=True)


if __name__ == "__main__":
    main()
