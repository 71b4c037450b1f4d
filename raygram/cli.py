"""The `raygram` command line: `raygram demo` (more subcommands arrive with the pipeline)."""
from __future__ import annotations

import importlib
import sys

COMMANDS = {"demo": "raygram.demo"}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: raygram {" + ",".join(COMMANDS) + "} [options]\n\n"
              "  demo   equivariant vs plain CNN NTK on a small task (the main job for now)")
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"raygram: unknown command {command!r}; choose from {sorted(COMMANDS)}", file=sys.stderr)
        return 2
    return importlib.import_module(COMMANDS[command]).main(rest)


if __name__ == "__main__":
    raise SystemExit(main())
