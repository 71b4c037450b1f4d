"""Result plots: every kernel visible even when two coincide, chance level, error bars over seeds,
the normalised time axis ending at t = ∞; and a figure logged to MLflow comes back as a real PNG."""
from __future__ import annotations

import math

import matplotlib.image
import matplotlib.pyplot as plt
import mlflow
import numpy as np
import pytest

from raygram.experiment import plots

RESULTS = [{"kernel": kernel, "train_size": n, "t": t, "accuracy": a}
           for kernel, offset in (("c4_gcnn", 0.1), ("cnn", 0.0), ("d4_gcnn", 0.15))
           for n in (100, 1000) for t, a in ((1.0, 0.3), (10.0, 0.5), (100.0, 0.6), (math.inf, 0.7))
           for a in [min(a + offset + 0.1 * (n == 1000), 1.0)]]
ERRORS = [{"width": w, "kind": kind, "error": s / w ** 0.5, "error_std": 0.2 * s / w ** 0.5}
          for kind, s in (("nngp", 1.5), ("ntk", 1.0)) for w in (8, 32, 128)]


def _records(seeds=(0, 1, 2)):
    """Experiment records: cnn, and c4_gcnn / cnn_augmented with the same predictions (sketches)."""
    out = []
    for seed in seeds:
        for kernel, offset in (("cnn", 0.0), ("c4_gcnn", 0.3), ("cnn_augmented", 0.3)):
            same = kernel != "cnn"
            for n in (25, 50):
                for step, time in enumerate([0.1, 1.0, 10.0, 100.0, math.inf]):
                    accuracy = 0.1 + (0.2 + offset) * (1 - math.exp(-time / 10)) + 0.01 * seed + 0.001 * n
                    sketch = [float(same) + step + n + seed, 1.0 * (kernel == "cnn")]
                    out.append({"kernel": kernel, "kind": "ntk", "train_size": n, "seed": seed, "diag_reg": 1e-3,
                                "t": time * 37.0, "time_step": step, "time": time * (1 + 1e-13 * same),
                                "accuracy": accuracy, "prediction_sketch": sketch})
    return out


def test_each_plot_function_draws_one_curve_per_kernel_and_logs_as_png(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    size = plots.metric_vs_training_size([r for r in RESULTS if r["t"] == math.inf], "accuracy", "vs size")
    time = plots.metric_vs_time([r for r in RESULTS if r["train_size"] == 1000], "accuracy", "vs time")
    width = plots.convergence_plot(ERRORS, "kernel error vs width")
    assert len(size.axes[0].get_lines()) == 3
    lines = time.axes[0].get_lines()
    assert len(lines) == 3 and len({(l.get_marker(), str(l.get_linestyle())) for l in lines}) == 3
    assert [t.get_text() for t in time.axes[0].get_xticklabels()][-1] == "∞"  # t = inf: the last point
    assert all(max(l.get_xdata()) == 1000.0 for l in lines)  # one decade past the largest finite t
    assert width.axes[0].get_xscale() == width.axes[0].get_yscale() == "log"
    assert len(width.axes[0].containers) == 2  # one errorbar container per kind
    experiment = mlflow.create_experiment("plots", artifact_location=(tmp_path / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=experiment) as run:
        for name, fig in (("size", size), ("time", time), ("width", width)):
            mlflow.log_figure(fig, f"plots/{name}.png")
            plt.close(fig)
    for name in ("size", "time", "width"):
        path = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path=f"plots/{name}.png",
                                                   dst_path=str(tmp_path))
        image = matplotlib.image.imread(path)
        assert image.shape[0] > 200 and image.shape[1] > 300 and image.std() > 0.01
        assert len(np.unique(image.reshape(-1, image.shape[-1]), axis=0)) > 10


def test_plots_reject_ambiguous_results():
    with pytest.raises(ValueError, match="two results"):
        plots.metric_vs_training_size(RESULTS, "accuracy", "mixed times")
    with pytest.raises(ValueError, match="lacks 'rmse'"):
        plots.metric_vs_time(RESULTS, "rmse", "no such metric")
    with pytest.raises(ValueError, match="no results"):
        plots.convergence_plot([], "empty")


def test_experiment_figures_show_identical_kernels_chance_and_error_bars_over_seeds():
    """Three seeds: error bars; the augmented CNN equals the GCNN at every point (same sketches, times
    equal to round-off): both stay visible (distinct style, hollow larger markers on top) and the
    legend says so; the chance level is drawn; the time axis is the normalised time, ending at ∞."""
    figures = plots.experiment_figures("demo", _records(), "classification", chance=0.1)
    assert sorted(figures) == ["plots/accuracy_vs_time_ntk_reg0.001.png",
                               "plots/accuracy_vs_train_size_ntk_reg0.001.png"]
    for name, fig in figures.items():
        ax = fig.axes[0]
        legend = ax.get_legend()
        assert "cnn_augmented ≡ c4_gcnn" in legend.get_title().get_text().replace("\n", " "), name
        labels = [t.get_text() for t in legend.get_texts()]
        assert "cnn_augmented (≡ c4_gcnn)" in labels and "chance (1/10)" in labels and "cnn" in labels, labels
        chance = [l for l in ax.get_lines() if list(l.get_ydata()) == [0.1, 0.1]]
        assert len(chance) == 1
        assert len(ax.containers) == 3  # error bars (standard error over 3 seeds), one set per kernel
        curves = {c.get_label(): c.lines[0] for c in ax.containers}
        gcnn, twin = curves["c4_gcnn"], curves["cnn_augmented (≡ c4_gcnn)"]
        assert np.allclose(np.asarray(gcnn.get_ydata(), float), np.asarray(twin.get_ydata(), float))
        assert (gcnn.get_marker(), gcnn.get_linestyle()) != (twin.get_marker(), twin.get_linestyle())
        assert twin.get_markerfacecolor() == "none" and twin.get_markersize() > gcnn.get_markersize()
        assert twin.get_zorder() > gcnn.get_zorder()
        plt.close(fig)
    ax = figures["plots/accuracy_vs_time_ntk_reg0.001.png"].axes[0]
    assert "λ_max·τ" in ax.get_xlabel() and ax.get_xscale() == "log"
    assert [t.get_text() for t in ax.get_xticklabels()][-1] == "∞"


def test_different_predictions_are_not_called_identical():
    records = [r for r in _records(seeds=(0,)) if r["kernel"] != "cnn"]
    for r in records:
        if r["kernel"] == "cnn_augmented" and r["time_step"] == 2:
            r["prediction_sketch"] = [r["prediction_sketch"][0] * (1 + 1e-4), 0.0]
    fig = plots.experiment_figures("demo", records, "classification", chance=0.1)[
        "plots/accuracy_vs_time_ntk_reg0.001.png"]
    assert fig.axes[0].get_legend().get_title().get_text() == ""
    assert "cnn_augmented" in [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    plt.close(fig)


def test_regression_figures_draw_the_linear_baseline():
    records = [{**r, "mae": 5.0 - r["accuracy"], "baseline_mae": 7.0 - 0.01 * r["train_size"]}
               for r in _records(seeds=(0,))]
    for r in records:
        del r["accuracy"]
    figures = plots.experiment_figures("demo", records, "regression")
    size = figures["plots/mae_vs_train_size_ntk_reg0.001.png"].axes[0]
    assert "per-element linear baseline" in [t.get_text() for t in size.get_legend().get_texts()]
    for fig in figures.values():
        plt.close(fig)
