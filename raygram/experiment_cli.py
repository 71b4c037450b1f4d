"""`raygram run | solve | build | check-convergence` for experiment configs.

Exit codes scripts can rely on: 0 success, 2 a bad config or input (one line on stderr,
nothing written), 1 a failure while running (a tile that keeps failing, a lost lease,
an ill-conditioned kernel, ...).
"""
from __future__ import annotations

import argparse
import sys

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


def _parser(prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"raygram {prog}", description=description)
    parser.add_argument("config", help="experiment YAML (see configs/)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set data.train_sizes=[50,100] (repeatable)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    return parser


def _error(message: str) -> int:
    print(f"raygram: error: {' '.join(str(message).split())}", file=sys.stderr)
    return EXIT_BAD_INPUT


def _connect_ray(config: dict) -> None:
    import ray

    if not ray.is_initialized():
        ray.init(address=config["ray"]["address"], log_to_driver=False, include_dashboard=False)


def _prepared(args, job: bool = False):
    """(config, data) after every check that needs no writes; raises on bad input."""
    from . import experiment
    from .runner import check_architectures, prepare_data
    from .tracking import check_tracking_uri, tracking_uri

    config = experiment.load(args.config, args.overrides, relative_paths=not job)
    check_tracking_uri(tracking_uri(config["tracking"]["uri"]))
    data = prepare_data(config)
    check_architectures(config, data)
    return config, data


def _main(argv, prog: str, description: str, build: bool, solve: bool, job: bool = False) -> int:
    from .blocked_cholesky import IllConditioned
    from .lock import LeaseLost, StoreLocked
    from .pcg import NotConverged
    from .scheduler import TileFailed
    from .store import StoreError

    args = _parser(prog, description).parse_args(argv)
    try:
        config, data = _prepared(args, job)
    except (ValueError, FileNotFoundError, ConnectionError, ImportError) as e:
        return _error(e)
    try:
        _connect_ray(config)
        if solve:
            from .runner import run_experiment

            result = run_experiment(config, data, build=build, progress=not args.quiet)
            print(_summary(result["records"], data.task))
            print(f"MLflow run {result['run_id']}")
        else:
            from .runner import build_kernel

            for name in config["kernels"]:
                report = build_kernel(config, data, name, progress=not args.quiet)
                print(f"{name}: {report.tiles_computed} tiles computed, {report.tiles_skipped} already stored "
                      f"({report.wall_s:.1f} s)")
    except (TileFailed, LeaseLost, IllConditioned, NotConverged, MemoryError) as e:
        print(f"raygram: failed: {' '.join(str(e).split())}", file=sys.stderr)
        return EXIT_FAILED
    except (StoreError, StoreLocked, ValueError) as e:  # after LinAlgError (a ValueError): e.g. a foreign store
        return _error(e)
    return EXIT_OK


def _summary(records: list[dict], task: str) -> str:
    """Test metric per kernel, kind and training size: at the validated ridge and best t when
    there is a validation split, else the best over ridges and times."""
    from .runner import METRIC, validated

    name, best = METRIC[task]
    chosen = validated(records, task)
    table = {}
    for r in chosen:
        key = (r["kernel"], r["kind"], r["train_size"])
        table[key] = best(table.get(key, r[name]), r[name])
    lines = [f"{'kernel':24s} {'kind':5s} {'train':>6s} {name:>9s}"]
    lines += [f"{k:24s} {kind:5s} {n:6d} {value:9.3f}" for (k, kind, n), value in sorted(table.items())]
    if task == "regression":
        baseline = {r["train_size"]: r["baseline_mae"] for r in records}
        lines += [f"{'per-element linear':24s} {'-':5s} {n:6d} {v:9.3f}" for n, v in sorted(baseline.items())]
    return "\n".join(lines)


def run_main(argv, job: bool = False) -> int:
    """`job=True` (the `ray job submit` entry point) refuses relative local paths."""
    return _main(argv, "run", "build every kernel's Gram store, solve, and record the experiment in MLflow",
                 build=True, solve=True, job=job)


def solve_main(argv) -> int:
    return _main(argv, "solve", "solve and record an experiment from finished Gram stores", build=False,
                 solve=True)


def build_main(argv) -> int:
    """Experiment configs build every kernel; single-network build configs (with an
    `architecture` key, see raygram/config.py) go to `raygram.gram_cli.build_main`."""
    import yaml

    config = next((a for a in argv if not a.startswith("-")), None)
    try:
        with open(config) as f:
            single = "architecture" in (yaml.safe_load(f) or {})
    except (TypeError, OSError, yaml.YAMLError, AttributeError):
        single = False
    if single:
        from .gram_cli import build_main as build_single

        return build_single(argv)
    return _main(argv, "build", "build (or resume) every kernel's Gram store of an experiment", build=True,
                 solve=False)


def check_convergence_main(argv) -> int:
    """Finite-width Monte-Carlo kernels vs the analytic ones for one kernel of a config."""
    parser = _parser("check-convergence", check_convergence_main.__doc__)
    parser.add_argument("--kernel", help="kernel name in the config (default: the first)")
    parser.add_argument("--widths", default="8,32,128", help="comma-separated hidden widths")
    parser.add_argument("--networks", type=int, default=4, help="random networks per width")
    parser.add_argument("--points", type=int, default=3, help="training images used")
    parser.add_argument("--out", help="also write the plot to this PNG file")
    args = parser.parse_args(argv)
    try:
        config, data = _prepared(args)
        name = args.kernel or next(iter(config["kernels"]))
        if name not in config["kernels"]:
            raise ValueError(f"--kernel: {name!r} is not a kernel of the config; choose from "
                             f"{sorted(config['kernels'])}")
        try:
            widths = [int(w) for w in args.widths.split(",")]
        except ValueError:
            raise ValueError(f"--widths must be comma-separated integers, got {args.widths!r}") from None
        if not 1 <= args.points <= len(data.x_train):
            raise ValueError(f"--points must be between 1 and {len(data.x_train)}, got {args.points}")
    except (ValueError, FileNotFoundError, ConnectionError) as e:
        return _error(e)
    from .runner import track_convergence

    errors, run_id = track_convergence(config, data, name, widths, args.networks, args.points, args.out)
    for e in errors:
        print(f"width {e['width']:5d} {e['kind']:5s} relative error {e['error']:.4f} ± {e['error_std']:.4f}")
    print(f"MLflow run {run_id}")
    return EXIT_OK
