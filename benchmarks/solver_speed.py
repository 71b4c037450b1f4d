"""Solver benchmark on a stored N = 8192 Gram: dask vs dense scipy, CG, finite-time sweeps.

Builds (once, into a temporary folder) the NNGP/NTK Gram of a small Erf MLP on 8192
training and 512 test points with raygram, then prints, in one run:

1. infinite-time NTK mean prediction: raygram's dask blocked Cholesky (reading the store)
   vs `scipy.linalg.cho_factor`/`cho_solve` on the dense matrix (read from the store too);
   goal ratio <= 1.2;
2. CG iterations and time with and without the Nyström preconditioner;
3. finite-time predictions at 20 values of t: one in-core eigendecomposition and one
   out-of-core Lanczos basis, vs one dense `scipy.linalg.eigh`;
4. what read verification costs: the reads the solvers make (the whole Gram, K @ X, the
   test block through dask, 256 rows), each with and without the check, alternating,
   the fastest of 5 (so that a machine shared with other work loads both alike).

    python benchmarks/solver_speed.py [--n 8192] [--m 512] [--no-verify-reads] [--reads-only]

Every read of the stored Gram is verified tile by tile against its checksums;
`--no-verify-reads` turns that off (through the documented, non-public environment switch
`RAYGRAM_UNVERIFIED_READS=1`) to measure what verification costs: run it both ways.

Every solve takes one `SolverOptions` (the YAML `solver` section) plus per-call settings.
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

import numpy as np


ARCHITECTURE = [{"Dense": {"out_dim": 16, "W_std": 1.5, "b_std": 0.1}}, "Erf", {"Dense": {"out_dim": 1}}]


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def read_costs(store, y, repeats: int = 5) -> dict[str, tuple[float, float]]:
    """{read: (fastest seconds verified, fastest seconds unverified)}, the two modes alternating."""
    from raygram.solve import GramSource

    rows = np.random.default_rng(1).choice(store.plan.n_train, size=256, replace=False)
    reads = {"whole Gram (dense)": lambda s: s.dense("ntk"),
             "K @ X, X (N, 10)": lambda s: s.matmat("ntk", y),
             "test block @ X (dask)": lambda s: s.cross_matmat("ntk", y),
             "256 rows": lambda s: s.rows("ntk", rows)}
    times = {name: ([], []) for name in reads}
    previous = os.environ.get("RAYGRAM_UNVERIFIED_READS")
    try:
        for _ in range(repeats):
            for mode, value in enumerate(("0", "1")):
                os.environ["RAYGRAM_UNVERIFIED_READS"] = value
                source = GramSource.from_store(store)  # views take the switch when made
                for name, read in reads.items():
                    times[name][mode].append(timed(lambda read=read: read(source))[1])
    finally:
        os.environ.pop("RAYGRAM_UNVERIFIED_READS", None)
        if previous is not None:
            os.environ["RAYGRAM_UNVERIFIED_READS"] = previous
    return {name: (min(v), min(u)) for name, (v, u) in times.items()}


def print_read_costs(store, y) -> None:
    print("\nreads with and without verification (alternating, fastest of 5)")
    for name, (verified, plain) in read_costs(store, y).items():
        print(f"  {name:24s} verified {verified:7.2f} s, unverified {plain:7.2f} s, ratio {verified / plain:.2f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=8192)
    parser.add_argument("--m", type=int, default=512)
    parser.add_argument("--no-verify-reads", action="store_true",
                        help="read the Gram without checking tiles against their checksums (to measure the cost)")
    parser.add_argument("--reads-only", action="store_true", help="build, then only part 4 (what verification costs)")
    args = parser.parse_args()
    if args.no_verify_reads:
        os.environ["RAYGRAM_UNVERIFIED_READS"] = "1"  # read by every view GramStore makes

    import jax
    import ray
    import scipy.linalg

    jax.config.update("jax_enable_x64", True)
    from raygram.build.scheduler import build_gram
    from raygram.errors import SolveError
    from raygram.solve import GramSource, SolverOptions, predict
    from raygram.store.gram_store import GramStore

    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.n + args.m, 32))
    y = rng.normal(size=(args.n, 10))
    folder = tempfile.mkdtemp(prefix="raygram-solver-")
    try:
        ray.init(include_dashboard=False, log_to_driver=False, _temp_dir=tempfile.mkdtemp(prefix="rg", dir="/tmp"))
        report, build_s = timed(lambda: build_gram(os.path.join(folder, "gram"), ARCHITECTURE, x[:args.n],
                                                   x[args.n:], progress=False))
        ray.shutdown()
        store = GramStore(os.path.join(folder, "gram"), read_only=True)
        print(f"N={args.n}, M={args.m}, 10 outputs, float64, {os.cpu_count()} CPU cores; Gram build "
              f"{build_s:.1f} s (tile {report.tile_size}, {report.tiles_computed} tiles); reads "
              + ("NOT verified" if args.no_verify_reads else "verified against the tile checksums"))
        if args.reads_only:
            print_read_costs(store, y)
            return
        reg = 1e-3
        solver = SolverOptions(diag_reg=(reg,), times=(float("inf"),), compute_variance=False)

        # 1. infinite time
        ours, dask_s = timed(lambda: predict(store, y, solver, kinds="ntk", method="cholesky"))

        def dense():
            k = store.gram("ntk").dense()
            k_td = store.gram("ntk", "test_train")[...]
            k[np.diag_indices_from(k)] += reg * np.trace(k) / len(k)
            return k_td @ scipy.linalg.cho_solve(scipy.linalg.cho_factor(k, lower=True, overwrite_a=True), y)

        (reference, scipy_s), (_, read_s) = timed(dense), timed(lambda: store.gram("ntk").dense())
        diff = np.abs(ours.mean["ntk"][0, 0] - reference).max() / np.abs(reference).max()
        print("\ninfinite time, NTK mean (both read the Gram from the store)")
        print(f"  scipy cho_factor/cho_solve (dense)   {scipy_s:7.2f} s   (of which reading {read_s:.2f} s)")
        print(f"  raygram dask blocked Cholesky        {dask_s:7.2f} s   ratio {dask_s / scipy_s:.2f}  "
              f"(goal <= 1.2), max rel. diff {diff:.1e}")

        # 2. CG
        print("\nCG at t = inf, NTK mean, tolerance 1e-8 (relative residual); each iteration reads the "
              "stored upper tiles once")
        for rank in (0, 256):
            try:
                out, cg_s = timed(lambda rank=rank: predict(store, y, solver, kinds="ntk", method="cg", tol=1e-8,
                                                            preconditioner_rank=rank, max_iterations=3000))
                info = out.info["ntk"]["cg"][0]
                err = np.abs(out.mean["ntk"][0, 0] - reference).max() / np.abs(reference).max()
                print(f"  preconditioner rank {rank:4d}: {info['iterations']:5d} iterations, {cg_s:7.2f} s "
                      f"({cg_s / info['iterations']:.2f} s/iteration), max rel. diff to Cholesky {err:.1e}")
            except SolveError as e:
                print(f"  preconditioner rank {rank:4d}: {e}")

        # 3. finite time: τ·mean eigenvalue from 0.1 to 1e4 (τ = t · learning_rate / y.size)
        mean_eigenvalue = float(GramSource.from_store(store).diagonal("ntk").sum()) / args.n
        times = y.size / mean_eigenvalue * np.logspace(-1, 4, 20)
        _, eigh_only_s = timed(lambda: scipy.linalg.eigh(store.gram("ntk").dense()))
        in_core, eigh_s = timed(lambda: predict(store, y, solver, kinds="ntk", times=times, method="eigh"))
        lanczos, lanczos_s = timed(lambda: predict(store, y, solver, kinds="ntk", times=times, method="lanczos",
                                                   tol=1e-8, max_iterations=400))
        err = np.abs(lanczos.mean["ntk"] - in_core.mean["ntk"]).max() / np.abs(in_core.mean["ntk"]).max()
        print(f"\nfinite time, NTK mean at 20 times t in [{times[0]:.3g}, {times[-1]:.3g}] "
              "(t * mean eigenvalue / y.size from 0.1 to 1e4)")
        print(f"  one dense scipy.linalg.eigh          {eigh_only_s:7.2f} s")
        print(f"  raygram eigh (in core, 20 t)          {eigh_s:7.2f} s")
        print(f"  raygram Lanczos (out of core, 20 t)   {lanczos_s:7.2f} s, "
              f"{lanczos.info['ntk']['lanczos'][0]['steps']} steps, max rel. diff to eigh {err:.1e}")

        # 4. read verification
        print_read_costs(store, y)
    finally:
        shutil.rmtree(folder)


if __name__ == "__main__":
    main()
