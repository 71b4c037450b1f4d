"""The `raygram` command line: one subcommand per entry of COMMANDS."""
from __future__ import annotations

import importlib
import sys

# name -> ("module:function", one-line help); each function takes the remaining argv, returns an exit code.
COMMANDS = {
    "run": ("raygram.experiment_cli:run_main", "build, solve and record an experiment config in MLflow (resumes)"),
    "solve": ("raygram.experiment_cli:solve_main", "solve and record an experiment from finished stores"),
    "build": ("raygram.experiment_cli:build_main", "build the Gram stores of an experiment or build config"),
    "status": ("raygram.gram_cli:status_main", "how complete a Gram store is"),
    "verify": ("raygram.gram_cli:verify_main", "check every stored tile against its checksum"),
    "check-convergence": ("raygram.experiment_cli:check_convergence_main",
                          "finite-width Monte-Carlo kernels vs the analytic ones, against width"),
}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: raygram {" + ",".join(COMMANDS) + "} [options]\n")
        for name, (_, help_text) in COMMANDS.items():
            print(f"  {name:17s} {help_text}")
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"raygram: unknown command {command!r}; choose from {sorted(COMMANDS)}", file=sys.stderr)
        return 2
    module, function = COMMANDS[command][0].split(":")
    return getattr(importlib.import_module(module), function)(rest)


if __name__ == "__main__":
    raise SystemExit(main())
