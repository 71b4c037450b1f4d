"""Figures of experiment results, for `mlflow.log_figure` (the caller logs and closes them).

Each function takes plain result records (what `Prediction.evaluate` and
`convergence_errors` return, plus the caller's "kernel"/"train_size" keys) and returns a
matplotlib Figure drawn with the Agg backend (no display needed).
"""
from __future__ import annotations

import math
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

FIGSIZE = (6.4, 4.4)


def _check(results: list[dict], keys: tuple[str, ...], what: str) -> None:
    if not results:
        raise ValueError(f"{what}: no results to plot")
    for position, record in enumerate(results):
        missing = [k for k in keys if k not in record]
        if missing:
            raise ValueError(f"{what}: result {position} lacks {', '.join(map(repr, missing))}: {record!r}")


def _unique(results: list[dict], keys: tuple[str, ...], what: str) -> None:
    """One point per combination of `keys`: mixed kinds or ridges would otherwise zig-zag."""
    seen = set()
    for record in results:
        key = tuple(record[k] for k in keys)
        if key in seen:
            raise ValueError(f"{what}: two results for {dict(zip(keys, key))}; filter the results "
                             "first (e.g. one kind and one diag_reg)")
        seen.add(key)


def _ticks_at(ax, values) -> None:
    """Label a log x axis at the plotted values (a few widths or sizes read better than decades)."""
    values = sorted(set(values))
    if len(values) <= 8:
        ax.set_xticks(values, [f"{v:g}" for v in values])
        ax.set_xticks([], minor=True)


def _figure(title: str):
    fig, ax = plt.subplots(figsize=FIGSIZE, layout="constrained")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    return fig, ax


def metric_vs_training_size(results: list[dict], metric: str, title: str) -> Figure:
    """`metric` against training-set size, one line per kernel (log x).

    results: [{"kernel": "c4_gcnn", "train_size": 100, metric: 0.9, ...}], one per (kernel, size).
    """
    what = "metric_vs_training_size"
    _check(results, ("kernel", "train_size", metric), what)
    _unique(results, ("kernel", "train_size"), what)
    lines = defaultdict(list)
    for record in results:
        lines[str(record["kernel"])].append((float(record["train_size"]), float(record[metric])))
    fig, ax = _figure(title)
    for kernel, points in lines.items():
        sizes, values = zip(*sorted(points))
        ax.plot(sizes, values, marker="o", label=kernel)
    ax.set_xscale("log")
    _ticks_at(ax, [float(r["train_size"]) for r in results])
    ax.set_xlabel("training set size")
    ax.set_ylabel(metric)
    ax.legend()
    return fig


def metric_vs_time(results: list[dict], metric: str, title: str) -> Figure:
    """`metric` against training time t, one line per kernel (and training size, if several).

    results: [{"kernel", "train_size", "t", metric}]. Finite t are drawn as a line with
    markers on a log x axis (symlog if some t = 0); t = inf as a dashed horizontal line in
    the same colour.
    """
    what = "metric_vs_time"
    _check(results, ("kernel", "train_size", "t", metric), what)
    _unique(results, ("kernel", "train_size", "t"), what)
    several_sizes = len({r["train_size"] for r in results}) > 1
    curves = defaultdict(list)
    for record in results:
        curves[(str(record["kernel"]), record["train_size"])].append(
            (float(record["t"]), float(record[metric])))
    fig, ax = _figure(title)
    finite_t = [t for points in curves.values() for t, _ in points if math.isfinite(t)]
    for (kernel, size), points in curves.items():
        label = f"{kernel}, n={size}" if several_sizes else kernel
        finite = sorted(p for p in points if math.isfinite(p[0]))
        infinite = [v for t, v in points if t == math.inf]
        color = None
        if finite:
            times, values = zip(*finite)
            color = ax.plot(times, values, marker="o", label=label)[0].get_color()
        if infinite:
            ax.axhline(infinite[0], linestyle="--", color=color,
                       label=f"{label}, t=∞" if finite else label)
    positive = [t for t in finite_t if t > 0]
    if positive and len(positive) == len(finite_t):
        ax.set_xscale("log")
    elif positive:
        ax.set_xscale("symlog", linthresh=min(positive))
    ax.set_xlabel("training time t")
    ax.set_ylabel(metric)
    ax.legend()
    return fig


def convergence_plot(errors: list[dict], title: str) -> Figure:
    """Relative kernel error against width (log-log), one line with error bars per kind.

    errors: [{"width": 16, "kind": "nngp", "error": 0.1, "error_std": 0.01}] (what
    `raygram.convergence.convergence_errors` returns). A dotted grey line ∝ 1/√width,
    through the mean error at the smallest width, is the expected Monte-Carlo rate.
    """
    what = "convergence_plot"
    _check(errors, ("width", "kind", "error", "error_std"), what)
    _unique(errors, ("kind", "width"), what)
    lines = defaultdict(list)
    for record in errors:
        lines[str(record["kind"])].append(
            (float(record["width"]), float(record["error"]), float(record["error_std"])))
    fig, ax = _figure(title)
    for kind, points in lines.items():
        widths, values, spread = zip(*sorted(points))
        ax.errorbar(widths, values, yerr=spread, marker="o", capsize=3, label=kind)
    widths = np.array(sorted({float(r["width"]) for r in errors}))
    smallest = [float(r["error"]) for r in errors if float(r["width"]) == widths[0]]
    scale = np.mean(smallest) * np.sqrt(widths[0])
    ax.plot(widths, scale / np.sqrt(widths), linestyle=":", color="grey", label="∝ 1/√width")
    ax.set_xscale("log")
    ax.set_yscale("log")
    _ticks_at(ax, widths)
    ax.set_xlabel("width (channels)")
    ax.set_ylabel("relative Frobenius error")
    ax.legend()
    return fig


def experiment_figures(name: str, records: list[dict], task: str) -> dict[str, Figure]:
    """{artifact file name: Figure}: test metric vs training size and vs t, per kind and ridge.

    One "validated" ridge per point when the records carry a validation metric.

    Args:
      name: the experiment's name (in titles).
      records: scored records {"kernel", "kind", "train_size", "diag_reg", "t", metric, ...}.
      task: "classification" (accuracy) or "regression" (MAE).
    """
    from raygram.experiment.selection import METRIC, validated

    metric = METRIC[task][0]
    chosen_records = validated(records, task)
    ridges = ["validated"] if chosen_records is not records else sorted({r["diag_reg"] for r in records})
    largest = max(r["train_size"] for r in records)
    figures = {}
    for kind in sorted({r["kind"] for r in records}):
        for ridge in ridges:
            label = "diag_reg chosen on validation" if ridge == "validated" else f"diag_reg {ridge:g}"
            suffix = "validated" if ridge == "validated" else f"reg{ridge:g}"
            chosen = [r for r in chosen_records if r["kind"] == kind and ridge in ("validated", r["diag_reg"])]
            latest = max(r["t"] for r in chosen)
            figures[f"plots/{metric}_vs_train_size_{kind}_{suffix}.png"] = metric_vs_training_size(
                [r for r in chosen if r["t"] == latest], metric,
                f"{name}: {kind.upper()} test {metric} ({label}, t = {latest:g})")
            if len({r["t"] for r in chosen}) > 1:
                figures[f"plots/{metric}_vs_time_{kind}_{suffix}.png"] = metric_vs_time(
                    [r for r in chosen if r["train_size"] == largest], metric,
                    f"{name}: {kind.upper()} test {metric} vs training time (N = {largest})")
    return figures
