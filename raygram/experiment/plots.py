"""Figures of experiment results, for `mlflow.log_figure` (the caller logs and closes them).

Each function takes plain result records (what `Prediction.evaluate` and
`convergence_errors` return, plus the caller's "kernel"/"train_size" keys) and returns a
matplotlib Figure drawn with the Agg backend (no display needed).

Curves must stay readable when they coincide — the headline of the quickstart is that the
C4 GCNN and the C4-augmented CNN predict identically — so every kernel gets its own
marker and line style, a curve equal to an earlier one is drawn on top with hollow,
larger markers, and when the records carry prediction sketches (`prediction_sketch`,
see `raygram.experiment.run`) that agree at every point, the legend says the two kernels'
predictions are identical. A chance level (classification) or the per-element linear
baseline (regression) is drawn for reference, error bars show the standard error over
seeds, and the time axis is the normalised time λ_max·τ with t = ∞ as its last point.
"""
from __future__ import annotations

import math
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

FIGSIZE = (8.4, 4.8)  # the legend stands right of the axes: it never hides a point
# (marker, line style) per kernel, in the config's order: distinct even in black and white.
STYLES = [("o", "-"), ("s", "--"), ("^", ":"), ("D", "-."), ("v", (0, (5, 1, 1, 1))), ("P", (0, (3, 1))),
          ("X", (0, (1, 3))), ("*", (0, (8, 2)))]
SAME_RTOL = 1e-7  # sketches closer than this (relative to their norm) are the same predictions
TIME_LABEL = ("normalised training time λ_max·τ,  τ = learning_rate·t / (N·outputs)\n"
              "(λ_max: top eigenvalue of the training Gram at the largest N)")


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


def _same(a, b) -> bool:
    """Whether two prediction sketches (lists over seeds of lists of floats) are the same predictions."""
    if a is None or b is None or len(a) != len(b):
        return False
    a, b = np.asarray(a, float), np.asarray(b, float)
    return a.shape == b.shape and bool(np.allclose(a, b, rtol=0, atol=SAME_RTOL * max(np.abs(a).max(), 1e-300)))


def _twins(curves: dict) -> dict:
    """{kernel: the earlier kernel whose predictions it equals at every point} among `curves`
    ({kernel: {x: (value, error, sketch)}})."""
    twins, names = {}, list(curves)
    for i, kernel in enumerate(names):
        for earlier in names[:i]:
            a, b = sorted(curves[kernel].items()), sorted(curves[earlier].items())
            # equal kernels have equal spectra, so their normalised times agree to round-off
            if len(a) == len(b) and all(math.isclose(x, y, rel_tol=1e-6) or x == y for (x, _), (y, _) in zip(a, b)) \
                    and all(_same(p[2], q[2]) for (_, p), (_, q) in zip(a, b)):
                twins[kernel] = twins.get(earlier, earlier)
                break
    return twins


def _style(index: int, twin: bool) -> dict:
    marker, linestyle = STYLES[index % len(STYLES)]
    style = {"marker": marker, "linestyle": linestyle, "color": f"C{index % 10}", "linewidth": 1.6,
             "markersize": 6}
    if twin:  # drawn over the curve it equals: hollow, larger markers let both show
        style.update(markerfacecolor="none", markersize=11, markeredgewidth=1.6, linewidth=1.4, zorder=3)
    return style


def _points(results: list[dict], x_key: str, metric: str, what: str) -> dict:
    """{kernel: {x: (value, error, sketch)}} from results with one record per (kernel, x)."""
    curves = defaultdict(dict)
    for record in results:
        error = record.get(f"{metric}_error")
        curves[str(record["kernel"])][float(record[x_key])] = (
            float(record[metric]), None if error is None or not math.isfinite(error) else float(error),
            record.get("prediction_sketch"))
    return curves


def _draw(ax, curves: dict, x_of=lambda x: x) -> dict:
    """Every kernel's curve (markers, line styles, error bars); returns `_twins(curves)`."""
    twins = _twins(curves)
    for index, (kernel, points) in enumerate(curves.items()):
        xs = sorted(points)
        values = [points[x][0] for x in xs]
        errors = [points[x][1] for x in xs]
        label = kernel + (f" (≡ {twins[kernel]})" if kernel in twins else "")
        style = _style(index, kernel in twins)
        if any(e is not None for e in errors):
            ax.errorbar([x_of(x) for x in xs], values, yerr=[e or 0.0 for e in errors], capsize=3,
                        label=label, **style)
        else:
            ax.plot([x_of(x) for x in xs], values, label=label, **style)
    return twins


def _reference(ax, chance: float | None, chance_label: str) -> None:
    if chance is not None:
        ax.axhline(chance, color="grey", linestyle=(0, (2, 2)), linewidth=1.2, label=chance_label, zorder=1)


def _legend(ax, twins: dict) -> None:
    title = "\n".join(f"{k} ≡ {v}:\nidentical predictions\nat every point" for k, v in twins.items()) or None
    ax.legend(title=title, title_fontsize="small", fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0),
              alignment="left")


def metric_vs_training_size(results: list[dict], metric: str, title: str, *, chance: float | None = None,
                            chance_label: str = "chance", baseline: dict | None = None) -> Figure:
    """`metric` against training-set size, one line per kernel (log x).

    Args:
      results: [{"kernel": "c4_gcnn", "train_size": 100, metric: 0.9, ...}], one per (kernel,
        size); optional f"{metric}_error" (error bars: standard error over seeds) and
        "prediction_sketch" (identical kernels are named in the legend).
      metric: the key plotted, e.g. "accuracy" or "mae".
      title: the figure's title.
      chance: a horizontal reference line (e.g. 1/classes), or None.
      chance_label: its legend entry.
      baseline: {train_size: value} of a reference model drawn as a grey line (the
        per-element linear fit of regression), or None.
    """
    what = "metric_vs_training_size"
    _check(results, ("kernel", "train_size", metric), what)
    _unique(results, ("kernel", "train_size"), what)
    fig, ax = _figure(title)
    twins = _draw(ax, _points(results, "train_size", metric, what))
    _reference(ax, chance, chance_label)
    if baseline:
        sizes = sorted(baseline)
        ax.plot(sizes, [baseline[n] for n in sizes], color="grey", linestyle=(0, (2, 2)), marker=".",
                label="per-element linear baseline", zorder=1)
    ax.set_xscale("log")
    _ticks_at(ax, [float(r["train_size"]) for r in results])
    ax.set_xlabel("training set size N")
    ax.set_ylabel(metric)
    _legend(ax, twins)
    return fig


def metric_vs_time(results: list[dict], metric: str, title: str, *, time_key: str = "t",
                   xlabel: str = "training time t", chance: float | None = None,
                   chance_label: str = "chance") -> Figure:
    """`metric` against training time, one line per kernel (and training size, if several).

    Finite times on a log x axis (symlog if some time is 0); t = ∞ as the last point of
    each curve, one decade past the largest finite time, at a tick labelled ∞ and joined
    by a dotted segment.

    Args:
      results: [{"kernel", "train_size", time_key, metric}], one per (kernel, size, time);
        optional f"{metric}_error" and "prediction_sketch" as in `metric_vs_training_size`.
      metric: the key plotted.
      title: the figure's title.
      time_key: the key of the time ("t", or "time": normalised, λ_max·τ).
      xlabel: the x axis' label, naming the time's units.
      chance: a horizontal reference line, or None.
      chance_label: its legend entry.
    """
    what = "metric_vs_time"
    _check(results, ("kernel", "train_size", time_key, metric), what)
    _unique(results, ("kernel", "train_size", time_key), what)
    several_sizes = len({r["train_size"] for r in results}) > 1
    labelled = [{**r, "kernel": f"{r['kernel']}, n={r['train_size']}" if several_sizes else r["kernel"]}
                for r in results]
    curves = _points(labelled, time_key, metric, what)
    finite = sorted({x for points in curves.values() for x in points if math.isfinite(x)})
    positive = [x for x in finite if x > 0]
    end = (max(finite) * 10 if max(finite) > 0 else 1.0) if finite else 1.0
    fig, ax = _figure(title)
    twins = _draw(ax, curves, x_of=lambda x: end if math.isinf(x) else x)
    _reference(ax, chance, chance_label)
    if finite and any(math.isinf(x) for points in curves.values() for x in points):
        ax.axvspan(max(finite) * 10 ** 0.5, end * 10 ** 0.25, color="0.93", zorder=0)
    if positive and len(positive) == len(finite):
        ax.set_xscale("log")
        decades = range(math.ceil(math.log10(min(positive)) - 0.05), math.floor(math.log10(max(positive)) + 0.05) + 1)
        ticks = [10.0 ** d for d in decades] + ([end] if end != max(finite) else [])
        ax.set_xticks(ticks, [f"$10^{{{d}}}$" for d in decades] + (["∞"] if end != max(finite) else []))
        ax.set_xticks([], minor=True)
    elif positive:
        ax.set_xscale("symlog", linthresh=min(positive))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(metric)
    _legend(ax, twins)
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


def _aggregate(records: list[dict], metric: str, keys: tuple[str, ...]) -> list[dict]:
    """Mean over seeds per combination of `keys`: {**keys, metric, f"{metric}_error" (standard
    error, nan for one seed), "prediction_sketch" (a list over seeds), "time" (mean)}."""
    from raygram.experiment.selection import mean_and_error

    groups = defaultdict(list)
    for r in records:
        groups[tuple(r[k] for k in keys)].append(r)
    out = []
    for key, group in groups.items():
        group = sorted(group, key=lambda r: r.get("seed", 0))
        mean, error = mean_and_error(r[metric] for r in group)
        sketches = [r.get("prediction_sketch") for r in group]
        times = [r.get("time", math.nan) for r in group]
        out.append({**dict(zip(keys, key)), metric: mean, f"{metric}_error": error,
                    "prediction_sketch": None if any(s is None for s in sketches) else sketches,
                    "time": float(np.mean(times)) if all(math.isfinite(t) for t in times) else
                    (math.inf if all(math.isinf(t) for t in times) else math.nan)})
    return out


def experiment_figures(name: str, records: list[dict], task: str, *, chance: float | None = None) -> dict[str, Figure]:
    """{artifact file name: Figure}: test metric vs training size (at the largest time) and vs
    normalised time (at the largest training size), per kind and ridge, mean ± standard error over seeds.

    One "validated" ridge per point when the records carry a validation metric; without a
    validation split, one figure per ridge. The vs-time figures need records with a
    normalised "time" and a "time_step" (what `raygram.experiment.run.solve_kernel` gives).

    Args:
      name: the experiment's name (in titles).
      records: scored records {"kernel", "kind", "train_size", "seed", "diag_reg", "t",
        "time_step", "time", metric, "prediction_sketch", ...}.
      task: "classification" (accuracy) or "regression" (MAE; the records' "baseline_mae"
        is drawn for reference).
      chance: the chance accuracy of classification (1/classes) drawn for reference, or None.
    """
    from raygram.experiment.selection import METRIC, validated

    metric = METRIC[task][0]
    records = [{"seed": 0, **r} for r in records]
    chosen_records = validated(records, task)
    ridges = ["validated"] if chosen_records is not records else sorted({r["diag_reg"] for r in records})
    largest = max(r["train_size"] for r in records)
    chance_label = f"chance (1/{round(1 / chance)})" if chance else "chance"
    baseline = None
    if task == "regression":
        by_size = defaultdict(dict)
        for r in records:
            by_size[r["train_size"]][r["seed"]] = r["baseline_mae"]
        baseline = {n: float(np.mean(list(v.values()))) for n, v in by_size.items()}
    figures = {}
    for kind in sorted({r["kind"] for r in records}):
        for ridge in ridges:
            label = ("diag_reg chosen on validation" if ridge == "validated"
                     else f"diag_reg {ridge:g}, no validation split")
            suffix = "validated" if ridge == "validated" else f"reg{ridge:g}"
            chosen = [r for r in chosen_records if r["kind"] == kind and ridge in ("validated", r["diag_reg"])]
            steps = "time_step" in chosen[0]
            step_key = "time_step" if steps else "t"
            last = max(r[step_key] for r in chosen)
            at_end = _aggregate([r for r in chosen if r[step_key] == last], metric, ("kernel", "train_size", "t")
                                if not steps else ("kernel", "train_size"))
            t_label = "t = ∞" if all(math.isinf(r["t"]) for r in chosen if r[step_key] == last) else "largest t"
            figures[f"plots/{metric}_vs_train_size_{kind}_{suffix}.png"] = metric_vs_training_size(
                at_end, metric, f"{name}: {kind.upper()} test {metric}\n({label}, {t_label})",
                chance=chance, chance_label=chance_label, baseline=baseline)
            if len({r[step_key] for r in chosen}) > 1 and steps:
                curve = _aggregate([r for r in chosen if r["train_size"] == largest], metric,
                                   ("kernel", "train_size", "time_step"))
                figures[f"plots/{metric}_vs_time_{kind}_{suffix}.png"] = metric_vs_time(
                    curve, metric, f"{name}: {kind.upper()} test {metric} vs training time\n(N = {largest}, {label})",
                    time_key="time", xlabel=TIME_LABEL, chance=chance if chance is not None else
                    (baseline or {}).get(largest), chance_label=chance_label if chance is not None else
                    "per-element linear baseline")
            elif len({r["t"] for r in chosen}) > 1:
                figures[f"plots/{metric}_vs_time_{kind}_{suffix}.png"] = metric_vs_time(
                    [r for r in chosen if r["train_size"] == largest and r["seed"] == chosen[0]["seed"]], metric,
                    f"{name}: {kind.upper()} test {metric} vs training time (N = {largest})", chance=chance)
    return figures
