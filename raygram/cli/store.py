"""`raygram status | verify`: inspect and check a Gram store.

`status` reads listings only: tiles done per block, and the damage listings show (a
written tile missing a value chunk, values stored without their checksum). It never
reads values, and says so, so that no one takes its "complete" for "correct". `verify`
reads every written tile and accounts for each tile of the plan exactly once: good, bad
or not written (good + bad + not written = total); it exits 1 if any tile is bad.
"""
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


NOT_CHECKED = "values not checked (run `raygram verify` to read every tile against its checksum)"


def status(args) -> int:
    """`raygram status`: tiles done and total per block, the damage the listings show, and that
    values were not read.

    Args:
      args: the parsed command line (`status_arguments`).

    Returns:
      0 (a store with damage is reported, not failed: `raygram verify` exits 1 for it).
    """
    store = _open(args)
    report = store.status()
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    plan, corrupt = report["plan"], report["corrupt_tiles"]
    state = "complete" if report["complete"] else "incomplete"
    if corrupt:
        state += f", {len(corrupt)} corrupt"
    print(f"{report['store']}: {report['tiles_done']}/{report['tiles_total']} tiles ({state}); "
          f"N={plan['n_train']}, M={plan['n_test']}, tile size {plan['tile_size']}, kinds {', '.join(store.kinds)}")
    for block, b in report["blocks"].items():
        share = b["entries_done"] / b["entries_total"] if b["entries_total"] else 1.0
        print(f"  {block:12s} {b['tiles_done']:>7d}/{b['tiles_total']:<7d} tiles  {100 * share:6.2f}% of entries")
    for tile, problem in corrupt.items():
        print(f"CORRUPT {tile}: {problem}")
    if corrupt:
        print("rerun the build with --verify to recompute the corrupt tiles")
    print(NOT_CHECKED)
    return 0


def verify(args) -> int:
    """`raygram verify`: re-read every written tile; exit 1 and name the bad ones if any.

    Every tile of the plan is counted once: bad (`GramStore.verify`: a value chunk
    missing, undecodable, changed or not finite, or values whose checksum chunk is
    missing), good (written and not bad) or not written (no checksum chunk and no values:
    an unfinished build, which is not an error here).

    Args:
      args: the parsed command line (`store_arguments`).

    Returns:
      1 if any tile is bad, else 0.
    """
    store = _open(args)
    problems = store.verify()
    tiles = set(store.plan.tiles())
    written = store.written_tiles()
    bad = set(problems)
    good = written - bad
    unwritten = tiles - written - bad
    for tile, problem in sorted(problems.items()):
        print(f"BAD {tile}: {problem}")
    print(f"{store.url}: {len(tiles)} tiles: {len(good)} good, {len(bad)} bad, {len(unwritten)} not written"
          + ("; rerun the build with --verify to recompute the bad ones" if bad else ""))
    return EXIT_FAILED if bad else 0
