"""The registry of solver methods, and the choice "auto" makes among them.

`METHODS` maps each name of `SolverOptions.method` but "auto" to its `Method` class.
"auto" decides by two facts of the problem and one of the machine:

- at t = ∞ with a single ridge, a solve of (K + ρI) X = B costs less than a spectrum,
  so it picks among the infinite-time-only methods (cholesky, cg); otherwise among the
  spectral ones (eigh, lanczos), whose one decomposition serves every time and ridge;
- of those, the in-core method when its working set fits the memory budget, else the
  out-of-core one.

A new method is a `Method` subclass in its own module, added to `METHODS` here and to
`raygram.config.METHODS` (the names the config accepts).
"""
from __future__ import annotations

import math

from raygram.config import SolverOptions
from raygram.errors import ConfigError, MemoryBudgetExceeded
from raygram.solve.base import Method
from raygram.solve.cg import CGMethod
from raygram.solve.cholesky import CholeskyMethod
from raygram.solve.eigh import EighMethod
from raygram.solve.lanczos import LanczosMethod

__all__ = ["METHODS", "choose_method"]

METHODS: dict[str, type[Method]] = {
    method.name: method for method in (CholeskyMethod, EighMethod, CGMethod, LanczosMethod)}


def choose_method(options: SolverOptions, *, n: int, outputs: int, columns: int, chunk: int,
                  budget: int) -> tuple[type[Method], int]:
    """The method class `options.method` names (or "auto" picks), and its working set.

    Args:
      options: the solver settings: `method`, `times`, `diag_reg`, and what the working
        sets depend on (`max_iterations`, `preconditioner_rank`, `blas_threads`).
      n: training points N.
      outputs: target outputs K of y_train (N, K).
      columns: variance right-hand sides (0 without variances).
      chunk: side of a stored tile.
      budget: bytes the solve may hold.

    Returns:
      (method class, its working set in bytes).

    Raises:
      ConfigError: an infinite-time-only method asked for finite times.
      MemoryBudgetExceeded: the method's working set exceeds `budget`.
    """
    def need(method: type[Method]) -> int:
        return method.working_set(n, outputs, columns, chunk, options, method.threads(options)[1])

    infinite = all(math.isinf(t) for t in options.times)
    if options.method != "auto":
        method = METHODS[options.method]
        if method.infinite_time_only and not infinite:
            raise ConfigError(f"solver.method: {method.name!r} gives infinite-time predictions only; use "
                              "'eigh' or 'lanczos' for finite times")
    else:
        solve = infinite and len(options.diag_reg) == 1
        candidates = [m for m in METHODS.values() if m.infinite_time_only == solve]
        fitting = [m for m in candidates if m.in_core and need(m) <= budget]
        method = fitting[0] if fitting else next(m for m in candidates if not m.in_core)
    working_set = need(method)
    if working_set > budget:
        raise MemoryBudgetExceeded(
            f"method {method.name!r} needs about {working_set / 2**20:.0f} MiB, more than the memory budget "
            f"of {budget / 2**20:.0f} MiB" + (f"; {method.memory_hint}" if method.memory_hint else ""))
    return method, working_set
