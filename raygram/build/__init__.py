"""Gram builds: tiles of a store computed by long-lived Ray actors, resumable and leased.

- `build_gram`, `BuildReport` (scheduler.py): the driver's loop that hands tiles to the
  actors, replaces dead ones and retries failed tiles.
- `TileWorker` (worker.py): the Ray actor that compiles the kernel once per tile shape,
  computes tiles and writes them into the store itself.
- `BuildLease` (lease.py): one build per store at a time.
"""
from raygram.build.lease import BuildLease
from raygram.build.scheduler import BuildReport, build_gram
from raygram.build.worker import TileWorker

__all__ = ["build_gram", "BuildReport", "TileWorker", "BuildLease"]
