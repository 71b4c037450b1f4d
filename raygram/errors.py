"""Every error raygram raises on purpose, in one family.

Each class derives from `RaygramError` and from the built-in exception it refines, so
`except ValueError` keeps catching bad input and `except np.linalg.LinAlgError` a
failed factorisation (the zarr-python 3 convention). Each class says what a command
line should exit with: `exit_code` 2 for input that cannot be run as written (nothing
was started or written), 1 for a failure while running. The CLI maps errors to exit
codes by this attribute, never by the order of `except` clauses.

    RaygramError
    ├── ConfigError (ValueError)           bad config key, argument or input data   -> 2
    │   └── TrackingUnavailable (ConnectionError)  the tracking server cannot be reached
    ├── StoreError (OSError)               a store that cannot be opened or written -> 2
    │   ├── FingerprintMismatch            a store built for other settings         -> 2
    │   ├── StoreLocked                    another build holds the store's lease    -> 2
    │   └── CorruptTile                    a stored tile is missing or fails its checksum -> 1
    ├── BuildError (RuntimeError)          a build failed while running             -> 1
    │   ├── TileFailed                     one tile failed `max_attempts` times
    │   ├── WorkersLost                    workers kept dying
    │   ├── CompileFailed                  a worker could not compile the kernel
    │   └── LeaseLost                      the store's lease was lost mid-build
    ├── SolveError (np.linalg.LinAlgError) a solve failed while running             -> 1
    │   ├── IllConditioned                 Cholesky pivots too small for the ridge
    │   └── NotConverged                   CG did not reach its tolerance
    └── MemoryBudgetExceeded (MemoryError) the work needs more than its budget      -> 1
"""
from __future__ import annotations

import numpy as np

__all__ = [
    "RaygramError", "ConfigError", "TrackingUnavailable", "StoreError", "FingerprintMismatch", "StoreLocked",
    "CorruptTile", "BuildError", "TileFailed", "WorkersLost", "CompileFailed", "LeaseLost",
    "SolveError", "IllConditioned", "NotConverged", "MemoryBudgetExceeded",
    "EXIT_OK", "EXIT_FAILED", "EXIT_BAD_INPUT", "exit_code",
]

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


class RaygramError(Exception):
    """Base of every error raygram raises on purpose."""

    exit_code = EXIT_FAILED


class ConfigError(RaygramError, ValueError):
    """A config key, function argument or input data that cannot be run as written."""

    exit_code = EXIT_BAD_INPUT


class TrackingUnavailable(ConfigError, ConnectionError):
    """The MLflow tracking server or database cannot be reached (checked before any work)."""


class StoreError(RaygramError, OSError):
    """A Gram store that cannot be opened, read or written as asked."""

    exit_code = EXIT_BAD_INPUT


class FingerprintMismatch(StoreError):
    """The store was built for another architecture, data, kinds, dtype or tile size."""


class StoreLocked(StoreError):
    """Another live build holds the store's lease."""


class CorruptTile(StoreError):
    """A tile read from a store is missing or fails its checksum (repair: `raygram build --verify`)."""

    exit_code = EXIT_FAILED


class BuildError(RaygramError, RuntimeError):
    """A Gram build failed while running."""


class TileFailed(BuildError):
    """A tile failed `max_attempts` times."""


class WorkersLost(BuildError):
    """Tile workers kept dying (more replacements than the build allows)."""


class CompileFailed(BuildError):
    """A worker could not compile the kernel for the tile shape."""


class LeaseLost(BuildError):
    """The build's lease expired or was taken over by another build."""


class SolveError(RaygramError, np.linalg.LinAlgError):
    """Kernel regression failed while running."""


class IllConditioned(SolveError):
    """The regularised kernel is too ill-conditioned for a Cholesky factorisation."""


class NotConverged(SolveError):
    """Conjugate gradients did not reach the tolerance within the iteration limit."""


class MemoryBudgetExceeded(RaygramError, MemoryError):
    """The requested work needs more memory than its budget allows."""


def exit_code(error: BaseException) -> int | None:
    """The command-line exit code for `error`, or None for an error raygram did not raise on purpose."""
    return error.exit_code if isinstance(error, RaygramError) else None
