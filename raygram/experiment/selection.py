"""Choosing the ridge and time, and summarising results over seeds.

A solve returns one record per (kernel, kind, training size, seed, ridge `diag_reg`,
time `t`). An experiment reports, per (kernel, kind, training size, seed), the ridge and
time with the best metric on the validation split (held-out examples that are not test
examples). Without a validation split the choice is made on the test set itself, which
flatters the result: every summary says so ("test — optimistic") and `run_experiment`
warns (`OptimisticSelection`). Over several seeds (`data.seeds`) the summary reports the
mean and its standard error (sample standard deviation / √seeds).
"""
from __future__ import annotations

import html
import math
from collections import defaultdict

__all__ = ["METRIC", "SELECTED_BY", "OptimisticSelection", "selection_split", "validated", "selected",
           "mean_and_error", "summary_rows", "summary_table"]

# task -> (metric name, which is better)
METRIC = {"classification": ("accuracy", max), "regression": ("mae", min)}
# which split chose the ridge and time -> how summaries name it
SELECTED_BY = {"validation": "validation", "test": "test — optimistic"}
FORMATS = ("text", "markdown", "html")


class OptimisticSelection(UserWarning):
    """The ridge and time were chosen on the test set (no validation split): the reported
    test metric is optimistic."""


def _seed(record: dict):
    return record.get("seed", 0)


def selection_split(records: list[dict], task: str) -> str:
    """Which split chooses the ridge and time of `records`.

    Args:
      records: scored records (see `validated`).
      task: "classification" or "regression".

    Returns:
      "validation" when the records carry the validation metric, else "test".
    """
    name = METRIC[task][0]
    return "validation" if records and f"validation_{name}" in records[0] else "test"


def _best(group: list[dict], key: str, better) -> dict:
    sign = 1 if better is max else -1
    return max(group, key=lambda r: sign * r[key])


def validated(records: list[dict], task: str) -> list[dict]:
    """The record of the ridge with the best validation metric, per (kernel, kind, train_size, seed, t).

    Args:
      records: scored records {"kernel", "kind", "train_size", "seed"?, "diag_reg", "t", metric,
        "validation_<metric>"?, ...}.
      task: "classification" (accuracy, higher is better) or "regression" (MAE, lower).

    Returns:
      One record per group, or `records` itself (the same list object) when they carry no
      validation metric.
    """
    name, best = METRIC[task]
    if selection_split(records, task) == "test":
        return records
    groups = defaultdict(list)
    for r in records:
        groups[(r["kernel"], r["kind"], r["train_size"], _seed(r), r["t"])].append(r)
    return [_best(group, f"validation_{name}", best) for group in groups.values()]


def selected(records: list[dict], task: str) -> list[dict]:
    """The record of the best (ridge, time) per (kernel, kind, train_size, seed).

    Chosen on the validation metric when the records carry one, else on the test metric
    itself (optimistic; `selection_split` says which). Ties go to the first record, i.e.
    the smaller ridge index and the earlier time.

    Args:
      records: scored records (see `validated`).
      task: "classification" or "regression".

    Returns:
      One record per group, in the order the groups first appear.
    """
    name, best = METRIC[task]
    key = f"validation_{name}" if selection_split(records, task) == "validation" else name
    groups = defaultdict(list)
    for r in records:
        groups[(r["kernel"], r["kind"], r["train_size"], _seed(r))].append(r)
    return [_best(group, key, best) for group in groups.values()]


def mean_and_error(values) -> tuple[float, float]:
    """Mean and standard error of the mean (sample standard deviation / √k; nan for one value).

    Args:
      values: k >= 1 numbers, e.g. one test accuracy per seed.
    """
    values = [float(v) for v in values]
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, math.nan
    variance = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return mean, math.sqrt(variance / len(values))


def _common(values) -> float | None:
    """The one value of a list, or None when they differ."""
    values = set(values)
    return values.pop() if len(values) == 1 else None


def summary_rows(records: list[dict], task: str) -> tuple[list[dict], list[str]]:
    """The summary per kernel, kind and training size, over seeds, and notes on how it was made.

    Args:
      records: scored records as returned by `raygram.run_experiment`.
      task: "classification" or "regression".

    Returns:
      (rows, notes): rows {"kernel", "kind", "train_size", "mean", "error", "seeds",
      "diag_reg", "t", "time", "selected_by"} sorted by kernel, kind and size, the test
      metric at the chosen ridge and time ("diag_reg"/"t"/"time" None when the seeds chose
      differently; "error" nan with one seed), then for regression one row per size of
      the per-element linear baseline (kernel "per-element linear", kind "-"); notes: the
      split that chose the ridge and time, and a warning when it is the test set.
    """
    name = METRIC[task][0]
    split = selection_split(records, task)
    groups = defaultdict(list)
    for r in selected(records, task):
        groups[(r["kernel"], r["kind"], r["train_size"])].append(r)
    rows = []
    for (kernel, kind, size), group in sorted(groups.items()):
        mean, error = mean_and_error(r[name] for r in group)
        rows.append({"kernel": kernel, "kind": kind, "train_size": size, "mean": mean, "error": error,
                     "seeds": len(group), "diag_reg": _common(r["diag_reg"] for r in group),
                     "t": _common(r["t"] for r in group), "time": _common(r.get("time") for r in group),
                     "selected_by": SELECTED_BY[split]})
    if task == "regression":
        baseline = defaultdict(dict)
        for r in records:
            baseline[r["train_size"]][_seed(r)] = r["baseline_mae"]
        for size, by_seed in sorted(baseline.items()):
            mean, error = mean_and_error(by_seed.values())
            rows.append({"kernel": "per-element linear", "kind": "-", "train_size": size, "mean": mean,
                         "error": error, "seeds": len(by_seed), "diag_reg": None, "t": None, "time": None,
                         "selected_by": "-"})
    seeds = sorted({_seed(r) for r in records})
    chooser = "the validation split" if split == "validation" else "the test split itself (optimistic)"
    notes = [f"{name} on the test split at the ridge and time chosen on {chooser}"
             + (f"; mean ± standard error over seeds {seeds}" if len(seeds) > 1 else f"; seed {seeds[0]}")]
    if split == "test":
        notes.append("warning: no validation split (data.validation_size: 0), so the ridge and time were chosen "
                     "on the test set and the test metric is optimistic; set data.validation_size")
    return rows, notes


def _number(value, digits: int = 3) -> str:
    if value is None:
        return "mixed"
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return f"{value:.{digits}g}"


def summary_table(records: list[dict], task: str, format: str = "text") -> str:
    """The summary (`summary_rows`) as a table with its notes.

    Columns: kernel, kind, training size, the test metric (± standard error over seeds
    when there are several), the chosen diag_reg, t (neural-tangents units) and time
    (normalised: λ_max·τ, see `raygram.experiment.run`), and the split that chose them.

    Args:
      records: scored records as returned by `raygram.run_experiment`.
      task: "classification" or "regression".
      format: "text" (aligned columns, for a terminal), "markdown" or "html".
    """
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    name = METRIC[task][0]
    rows, notes = summary_rows(records, task)
    several = any(row["seeds"] > 1 for row in rows)
    header = ["kernel", "kind", "train", name + (" ± s.e." if several else ""), "diag_reg", "t", "time",
              "chosen on"]
    cells = []
    for row in rows:
        value = f"{row['mean']:.3f}" + (f" ± {row['error']:.3f}" if several and math.isfinite(row["error"]) else "")
        linear = row["kind"] == "-"
        cells.append([row["kernel"], row["kind"], str(row["train_size"]), value,
                      "-" if linear else _number(row["diag_reg"]), "-" if linear else _number(row["t"]),
                      "-" if linear else _number(row["time"]), row["selected_by"]])
    if format == "markdown":
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
        lines += ["| " + " | ".join(c) + " |" for c in cells]
        return "\n".join(lines + [""] + [f"*{note}*" for note in notes]) + "\n"
    if format == "html":
        escape = html.escape
        lines = ["<table>", "<thead><tr>" + "".join(f"<th>{escape(h)}</th>" for h in header) + "</tr></thead>",
                 "<tbody>"]
        lines += ["<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in cells]
        lines += ["</tbody>", "</table>"] + [f"<p>{escape(note)}</p>" for note in notes]
        return "\n".join(lines) + "\n"
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(header)]
    right = {2, 3, 4, 5, 6}

    def line(values):
        return " ".join(v.rjust(w) if i in right else v.ljust(w) for i, (v, w) in enumerate(zip(values, widths)))
    return "\n".join([line(header).rstrip()] + [line(c).rstrip() for c in cells] + notes)
