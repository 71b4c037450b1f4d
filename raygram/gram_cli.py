"""`raygram build | status | verify`: run a Gram build from a config, inspect and check a store."""
from __future__ import annotations

import argparse
import json
import logging
import sys

from .config import ConfigError
from .lock import LeaseLost, StoreLocked
from .store import GramStore, StoreError


def _storage_options(text: str | None) -> dict | None:
    if text is None:
        return None
    try:
        options = json.loads(text)
    except json.JSONDecodeError as e:
        raise SystemExit(f"--storage-options must be a JSON object: {e}") from None
    if not isinstance(options, dict):
        raise SystemExit("--storage-options must be a JSON object")
    return options


def _store_parser(prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"raygram {prog}", description=description)
    parser.add_argument("store", help="store folder or URL (s3://bucket/prefix)")
    parser.add_argument("--storage-options", help="fsspec options as JSON, e.g. '{\"endpoint_url\": ...}'")
    return parser


def _open(args) -> GramStore | None:
    """The store named on the command line, or None (after saying why) if it is not one."""
    store = GramStore(args.store, _storage_options(args.storage_options), read_only=True)
    try:
        store.attrs  # noqa: B018 (raises StoreError for a missing or foreign store)
    except StoreError as e:
        print(f"raygram: {e}", file=sys.stderr)
        return None
    return store


def build_main(argv) -> int:
    parser = argparse.ArgumentParser(prog="raygram build", description="Compute a Gram store from a YAML config.")
    parser.add_argument("config", help="build config (YAML; see raygram/config.py)")
    parser.add_argument("--verify", action="store_true",
                        help="re-check stored tiles against their checksums and recompute bad ones")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every dispatched tile")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("raygram").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    from .config import load_build_config
    from .scheduler import TileFailed, build_gram

    try:
        kwargs = load_build_config(args.config)
    except ConfigError as e:
        print(f"raygram: {e}", file=sys.stderr)
        return 2
    try:
        report = build_gram(**kwargs, verify=args.verify, progress=not args.no_progress)
    except (ValueError, StoreError, StoreLocked, LeaseLost, TileFailed, MemoryError) as e:
        print(f"raygram: {e}", file=sys.stderr)
        return 1
    print(json.dumps({**report.metrics(), "store": report.store, "tile_size": report.tile_size,
                      "tiles_total": report.tiles_total, "repaired": report.repaired}, indent=1))
    return 0


def status_main(argv) -> int:
    parser = _store_parser("status", "How complete a Gram store is.")
    parser.add_argument("--json", action="store_true", help="print the full status as JSON")
    args = parser.parse_args(argv)
    store = _open(args)
    if store is None:
        return 2
    status = store.status()
    if args.json:
        print(json.dumps(status, indent=1))
        return 0
    plan = status["plan"]
    print(f"{status['store']}: {status['tiles_done']}/{status['tiles_total']} tiles "
          f"({'complete' if status['complete'] else 'incomplete'}); N={plan['n_train']}, "
          f"M={plan['n_test']}, tile size {plan['tile_size']}, kinds {', '.join(store.kinds)}")
    for block, b in status["blocks"].items():
        share = b["entries_done"] / b["entries_total"] if b["entries_total"] else 1.0
        print(f"  {block:12s} {b['tiles_done']:>7d}/{b['tiles_total']:<7d} tiles  {100 * share:6.2f}% of entries")
    return 0


def verify_main(argv) -> int:
    parser = _store_parser("verify", "Re-read every stored tile and check it against its checksum.")
    args = parser.parse_args(argv)
    store = _open(args)
    if store is None:
        return 2
    problems = store.verify()
    status = store.status()
    for tile, problem in sorted(problems.items()):
        print(f"BAD {tile}: {problem}")
    missing = status["tiles_total"] - status["tiles_done"]
    print(f"{store.url}: {status['tiles_done'] - len(problems)} tiles good, {len(problems)} bad, "
          f"{missing} not written" + ("; rerun the build with --verify to recompute the bad ones"
                                        if problems else ""))
    return 1 if problems else 0
