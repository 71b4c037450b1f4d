"""Seconds and peak memory per atom pair of SO(3) kernels: direct recursion vs `so3_serial`.

Architecture (issue): S2Lifting -> Erf -> SO3Conv -> Erf -> SO3Pool -> Dense, 10 input
channels, S² input grid and SO(3) grid of the same bandwidth L ("L -> L"), filters
band-limited to degree < L, NNGP and NTK together, float64. Rows per L:
  direct   stax.serial: covariance over all pairs of grid points, O(L⁶) memory per pair,
           measured on a 1×1 tile (one atom against one atom)
  pairs    so3_serial (default): Wigner coefficients of one function of the relative
           rotation per pair, evaluated with the direct path's own double quadrature,
           so the same values; O(L³) memory and (2L)⁵ points per pair
  relative so3_serial(quadrature="relative"): the single grid quadrature over relative
           rotations, (2L)³ points per pair; differs from the direct values by a
           quadrature gap that shrinks when the grid oversamples the filter band
  both measured on a 1×1 tile and on an n×n tile (--tile), divided by n² (each input's
  own function, needed for the variances, is amortised)
Seconds: best of --repeats calls of the jit-compiled kernel; memory: XLA's analysis
of the compiled call (arguments + outputs + temporaries) divided by the number of
pairs. `speed-up` and `mem ratio` are direct / this row; `rel diff` is the relative
difference of the NTKs for the first pair against the direct path.

    python benchmarks/so3_speed.py                       # L = 4, 6, 8, 10
    python benchmarks/so3_speed.py --bandwidths 4 6 --max-direct 6
"""
from __future__ import annotations

import argparse
import time

import jax
import numpy as np

jax.config.update("jax_enable_x64", True)

from raygram._neural_tangents import stax  # noqa: E402
from raygram.kernels import S2Lifting, SO3Conv, SO3Pool, so3_serial  # noqa: E402


def layers(L):
    return [S2Lifting(1, bandwidth=L), stax.Erf(), SO3Conv(1), stax.Erf(), SO3Pool(),
            stax.Dense(1)]


def measure(kernel_fn, x1, x2, repeats):
    """(seconds per pair, peak bytes per pair, ntk) of the jit-compiled kernel on x1 × x2."""
    fn = jax.jit(lambda a, b: kernel_fn(a, b, ("nngp", "ntk")))
    compiled = fn.lower(x1, x2).compile()
    mem = compiled.memory_analysis()
    peak = mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
    out = jax.block_until_ready(compiled(x1, x2))
    best = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(compiled(x1, x2))
        best = min(best, time.perf_counter() - start)
    pairs = x1.shape[0] * x2.shape[0]
    return best / pairs, peak / pairs, np.asarray(out.ntk)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bandwidths", type=int, nargs="*", default=[4, 6, 8, 10])
    parser.add_argument("--max-direct", type=int, default=10,
                        help="largest L for the direct path (1×1 tile: 64 L⁶ doubles per field)")
    parser.add_argument("--tile", type=int, default=8, help="n for the fast path's n×n tile")
    parser.add_argument("--channels", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"S2Lifting -> Erf -> SO3Conv -> Erf -> SO3Pool -> Dense, {args.channels} channels, "
          f"nngp+ntk, float64, backend {jax.default_backend()}")
    print(f"{'L':>6s} {'path':8s} {'tile':>5s} {'s/pair':>10s} {'MiB/pair':>10s} "
          f"{'speed-up':>9s} {'mem ratio':>9s} {'rel diff':>9s}", flush=True)
    for L in args.bandwidths:
        key1, key2 = jax.random.split(jax.random.PRNGKey(L))
        x1 = jax.random.normal(key1, (args.tile, 2 * L, 2 * L, args.channels))
        x2 = jax.random.normal(key2, (args.tile, 2 * L, 2 * L, args.channels))
        rows = []
        for quadrature in ("pairs", "relative"):
            fast_fn = so3_serial(*layers(L), quadrature=quadrature)[2]
            rows += [(quadrature, 1, *measure(fast_fn, x1[:1], x2[:1], args.repeats)),
                     (quadrature, args.tile, *measure(fast_fn, x1, x2, args.repeats))]
        direct = None
        if L <= args.max_direct:
            direct = measure(stax.serial(*layers(L))[2], x1[:1], x2[:1], 1)
            rows.insert(0, ("direct", 1, *direct))
        for path, n, sec, mem, ntk in rows:
            line = f"{f'{L}->{L}':>6s} {path:7s} {f'{n}x{n}':>5s} {sec:10.4g} {mem / 2**20:10.4g}"
            if direct is not None and path != "direct":
                diff = float(np.abs(ntk[:1, :1] - direct[2]).max() / np.abs(direct[2]).max())
                line += f" {direct[0] / sec:9.0f} {direct[1] / mem:9.0f} {diff:9.1e}"
            print(line, flush=True)

if __name__ == "__main__":
    main()
