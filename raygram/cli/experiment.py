"""`raygram run | solve | build | check-convergence`: commands that take a config file.

Every check that needs no writes (config keys, data files, architectures against the
data's shape, the tracking server, each store's location, fingerprint and lease, the Ray
cluster's resources) runs before anything is written: bad input leaves no store folder
and no MLflow run behind. Credentials in `storage_options` are redacted in
`--print-config` and in error lines.
"""
from __future__ import annotations

import argparse
import sys
import warnings

import yaml

from raygram.config import Config, input_checks, load_config
from raygram.errors import ConfigError


def _config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="config YAML (see configs/)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set data.train_sizes=[50,100] (repeatable)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--job", action="store_true",
                        help="running as a Ray job (jobs/*.py): refuse relative local paths")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


def run_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `run` and `solve`."""
    _config_arguments(parser)


def build_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `build`."""
    _config_arguments(parser)
    parser.add_argument("--verify", action="store_true",
                        help="re-check stored tiles against their checksums and recompute bad ones")


def convergence_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `check-convergence`."""
    _config_arguments(parser)
    parser.add_argument("--kernel", help="kernel name in the config (default: the first)")
    parser.add_argument("--widths", default="8,32,128", help="comma-separated hidden widths")
    parser.add_argument("--networks", type=int, default=4, help="random networks per width")
    parser.add_argument("--points", type=int, default=3, help="training inputs used")
    parser.add_argument("--out", help="also write the plot to this PNG file")


def _config(args) -> Config | None:
    """The validated config, or None after printing it (--print-config, credentials redacted).

    Its credentials go into `args.secrets`, which `main` scrubs from any error line.
    """
    with input_checks():
        config = load_config(args.config, args.overrides, relative_paths=not args.job)
    args.secrets = config.secrets()
    if args.print_config:
        print(yaml.safe_dump(config.public_dict(), sort_keys=False), end="")
        return None
    return config


def _solve(args, build: bool) -> int:
    from raygram.experiment import run_experiment, summary_table
    from raygram.experiment.selection import OptimisticSelection

    config = _config(args)
    if config is None:
        return 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", OptimisticSelection)
        result = run_experiment(config, build=build, progress=not args.quiet)  # checks everything before writing
    for warning in caught:
        if issubclass(warning.category, OptimisticSelection):
            print(f"raygram: warning: {warning.message}", file=sys.stderr)
        else:
            warnings.showwarning(warning.message, warning.category, warning.filename, warning.lineno)
    print(summary_table(result["records"], result["task"]))  # says which split chose the ridge and time
    print(f"MLflow run {result['run_id']}")
    return 0


def run(args) -> int:
    """`raygram run`: build every kernel's store, solve, and record the experiment in MLflow."""
    return _solve(args, build=True)


def solve(args) -> int:
    """`raygram solve`: solve and record an experiment from finished stores (refused unless they hold
    what the config would build)."""
    return _solve(args, build=False)


def build(args) -> int:
    """`raygram build`: build (or resume) every kernel's store of a config (experiment or build-only)."""
    from raygram.experiment.run import build_kernel, check_stores, prepare_all

    config = _config(args)
    if config is None:
        return 0
    with input_checks():  # every store (of every seed) is checked before the first is written
        seeds = prepare_all(config, solve=False)
        for seed, data in seeds.items():
            check_stores(config, data, build=True, verify=args.verify, seed=seed)
    for seed, data in seeds.items():
        for name in config.kernels:
            report = build_kernel(config, data, name, progress=not args.quiet, verify=args.verify, seed=seed)
            # totals, then one line per Ray node when the build ran on several
            print(f"{name}{f' seed {seed}' if config.data.seeds is not None else ''}: {report.summary()}")
    return 0


def check_convergence(args) -> int:
    """`raygram check-convergence`: finite-width Monte-Carlo kernels vs the analytic ones for one kernel."""
    from raygram.experiment import prepare, track_convergence
    from raygram.experiment.tracking import check_experiment_name, check_tracking_uri, tracking_uri

    config = _config(args)
    if config is None:
        return 0
    with input_checks():
        data = prepare(config, solve=False)
        check_tracking_uri(tracking_uri(config.tracking.uri))
        check_experiment_name(config.tracking.experiment)
    name = args.kernel or next(iter(config.kernels))
    if name not in config.kernels:
        raise ConfigError(f"--kernel: {name!r} is not a kernel of the config; choose from {sorted(config.kernels)}")
    try:
        widths = [int(w) for w in args.widths.split(",")]
    except ValueError:
        raise ConfigError(f"--widths must be comma-separated integers, got {args.widths!r}") from None
    if not 1 <= args.points <= len(data.x_train):
        raise ConfigError(f"--points must be between 1 and {len(data.x_train)}, got {args.points}")
    errors, run_id = track_convergence(config, data, name, widths, args.networks, args.points, args.out)
    for e in errors:
        print(f"width {e['width']:5d} {e['kind']:5s} relative error {e['error']:.4f} ± {e['error_std']:.4f}")
    print(f"MLflow run {run_id}")
    return 0
