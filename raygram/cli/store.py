"""`raygram status | verify`: inspect and check a Gram store."""
from __future__ import annotations

import argparse
import json

from raygram.build.scheduler import open_store
from raygram.config import input_checks, secret_values
from raygram.errors import EXIT_FAILED, ConfigError
from raygram.store import GramStore


def store_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `verify` (and the base of `status`)."""
    parser.add_argument("store", help="store folder or URL (s3://bucket/prefix)")
    parser.add_argument("--storage-options", help="fsspec options as JSON, e.g. '{\"endpoint_url\": ...}'")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def status_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `status`."""
    store_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print the full status as JSON")


def _storage_options(text: str | None) -> dict | None:
    if text is None:
        return None
    try:
        options = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"--storage-options must be a JSON object: {e}") from None
    if not isinstance(options, dict):
        raise ConfigError("--storage-options must be a JSON object")
    return options


def _open(args) -> GramStore:
    """The store named on the command line; StoreError (exit 2) if it cannot be reached or there is none."""
    options = _storage_options(args.storage_options)
    args.secrets = secret_values({"storage_options": options})
    with input_checks():
        store = open_store(args.store, options, read_only=True)
        store.attrs  # noqa: B018 (raises StoreError for a missing or foreign store)
    return store


def status(args) -> int:
    """`raygram status`: tiles done and total per block."""
    store = _open(args)
    report = store.status()
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    plan = report["plan"]
    print(f"{report['store']}: {report['tiles_done']}/{report['tiles_total']} tiles "
          f"({'complete' if report['complete'] else 'incomplete'}); N={plan['n_train']}, "
          f"M={plan['n_test']}, tile size {plan['tile_size']}, kinds {', '.join(store.kinds)}")
    for block, b in report["blocks"].items():
        share = b["entries_done"] / b["entries_total"] if b["entries_total"] else 1.0
        print(f"  {block:12s} {b['tiles_done']:>7d}/{b['tiles_total']:<7d} tiles  {100 * share:6.2f}% of entries")
    return 0


def verify(args) -> int:
    """`raygram verify`: re-read every stored tile; exit 1 and name the bad ones if any."""
    store = _open(args)
    problems = store.verify()
    report = store.status()
    for tile, problem in sorted(problems.items()):
        print(f"BAD {tile}: {problem}")
    missing = report["tiles_total"] - report["tiles_done"]
    print(f"{store.url}: {report['tiles_done'] - len(problems)} tiles good, {len(problems)} bad, "
          f"{missing} not written" + ("; rerun the build with --verify to recompute the bad ones"
                                        if problems else ""))
    return EXIT_FAILED if problems else 0
