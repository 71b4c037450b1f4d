"""Choosing the ridge and summarising results: one record per (kernel, kind, size, time).

A solve returns a record for every ridge (`diag_reg`) and time; an experiment reports,
per point, the ridge with the best metric on the validation split (held-out examples
that are not test examples). Without a validation split every record is kept and the
summary takes the best over ridges and times on the test set.
"""
from __future__ import annotations

__all__ = ["METRIC", "validated", "summary_table"]

# task -> (metric name, which is better)
METRIC = {"classification": ("accuracy", max), "regression": ("mae", min)}


def validated(records: list[dict], task: str) -> list[dict]:
    """The record of the ridge with the best validation metric, per (kernel, kind, train_size, t).

    Args:
      records: scored records {"kernel", "kind", "train_size", "diag_reg", "t", metric,
        "validation_<metric>"?, ...}.
      task: "classification" (accuracy, higher is better) or "regression" (MAE, lower).

    Returns:
      One record per group, or `records` itself (the same list object) when they carry no
      validation metric.
    """
    name, best = METRIC[task]
    if not records or f"validation_{name}" not in records[0]:
        return records
    groups = {}
    for r in records:
        groups.setdefault((r["kernel"], r["kind"], r["train_size"], r["t"]), []).append(r)
    sign = 1 if best is max else -1
    return [max(group, key=lambda r: sign * r[f"validation_{name}"]) for group in groups.values()]


def summary_table(records: list[dict], task: str) -> str:
    """Plain-text table of the test metric per kernel, kind and training size.

    At the validated ridge and best time when there is a validation split, else the best
    over ridges and times; regression adds the per-element linear baseline's MAE.

    Args:
      records: scored records as returned by `raygram.run_experiment`.
      task: "classification" or "regression".
    """
    name, best = METRIC[task]
    table = {}
    for r in validated(records, task):
        key = (r["kernel"], r["kind"], r["train_size"])
        table[key] = best(table.get(key, r[name]), r[name])
    lines = [f"{'kernel':24s} {'kind':5s} {'train':>6s} {name:>9s}"]
    lines += [f"{k:24s} {kind:5s} {n:6d} {value:9.3f}" for (k, kind, n), value in sorted(table.items())]
    if task == "regression":
        baseline = {r["train_size"]: r["baseline_mae"] for r in records}
        lines += [f"{'per-element linear':24s} {'-':5s} {n:6d} {v:9.3f}" for n, v in sorted(baseline.items())]
    return "\n".join(lines)
