"""The `raygram` command line: one command table, one error-to-exit-code rule.

Each entry of COMMANDS names its handler, its one-line help and the function that adds
its arguments. Handlers return 0 or raise; `main` turns a `RaygramError` into one line
on stderr and its class's exit code (2: bad input, nothing written; 1: a failure while
running), with the credentials a handler put into `args.secrets` redacted. A raygram
error raised inside a Ray task (a `CorruptTile` in a dask-on-Ray read, say) reaches the
driver as a `ray.exceptions.RayTaskError` whose text is the task's whole traceback: it is
unwrapped to its cause (`raygram_cause`), and only the cause's message is printed, with
the cause's exit code. Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable, NamedTuple

from raygram.cli import experiment, report, store
from raygram.config import redact_text
from raygram.errors import EXIT_BAD_INPUT, RaygramError


class Command(NamedTuple):
    handler: Callable[[argparse.Namespace], int]
    arguments: Callable[[argparse.ArgumentParser], None]
    help: str


COMMANDS = {
    "run": Command(experiment.run, experiment.run_arguments,
                   "build, solve and record an experiment config in MLflow (resumes)"),
    "solve": Command(experiment.solve, experiment.run_arguments,
                     "solve and record an experiment from finished stores"),
    "build": Command(experiment.build, experiment.build_arguments,
                     "build (or resume) the Gram store of every kernel of a config"),
    "status": Command(store.status, store.status_arguments, "how complete a Gram store is"),
    "verify": Command(store.verify, store.store_arguments, "check every stored tile against its checksum"),
    "check-convergence": Command(experiment.check_convergence, experiment.convergence_arguments,
                                 "finite-width Monte-Carlo kernels vs the analytic ones, against width"),
    "report": Command(report.report, report.report_arguments,
                      "print an experiment run's results table from the tracking server"),
}


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("raygram")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def parser() -> argparse.ArgumentParser:
    """The argument parser of every command (COMMANDS)."""
    top = argparse.ArgumentParser(prog="raygram", description="Exact NTK/NNGP Gram matrices of equivariant "
                                  "networks: build, solve, track.")
    top.add_argument("--version", action="version", version=f"raygram {_version()}")
    commands = top.add_subparsers(dest="command", metavar="{" + ",".join(COMMANDS) + "}", required=True)
    for name, command in COMMANDS.items():
        sub = commands.add_parser(name, help=command.help, description=command.help)
        command.arguments(sub)
        sub.add_argument("-v", "--verbose", action="store_true", help="log every dispatched tile")
        sub.set_defaults(handler=command.handler)
    return top


def raygram_cause(error: BaseException) -> RaygramError | None:
    """The raygram error behind `error`, or None for an error raygram did not raise on purpose.

    Args:
      error: any exception: a `RaygramError` is its own cause; a Ray task's error
        (`ray.exceptions.RayTaskError`, also in the form that derives from its cause's
        class, `as_instanceof_cause`) is unwrapped through `.cause`, tasks within
        tasks included.
    """
    ray_exceptions = sys.modules.get("ray.exceptions")  # no Ray imported: no Ray task can have failed
    task_error = getattr(ray_exceptions, "RayTaskError", ())
    seen = set()
    while isinstance(error, task_error) and id(error) not in seen:
        seen.add(id(error))
        error = error.cause
    return error if isinstance(error, RaygramError) and not isinstance(error, task_error) else None


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns its exit code (0 ok, 2 bad input, 1 failure while running)."""
    args = parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("raygram").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    try:
        return args.handler(args)
    except Exception as error:  # noqa: BLE001 - re-raised unless a raygram error is behind it
        cause = raygram_cause(error)
        if cause is None:
            raise
        kind = "error" if cause.exit_code == EXIT_BAD_INPUT else "failed"
        message = redact_text(" ".join(str(cause).split()), getattr(args, "secrets", ()))
        print(f"raygram: {kind}: {message}", file=sys.stderr)
        return cause.exit_code


if __name__ == "__main__":
    raise SystemExit(main())
