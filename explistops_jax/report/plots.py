"""The report's PNG plots (matplotlib, Agg, without pyplot's global state):
validation accuracy and training loss during training, one panel per model, and
test accuracy by model and style beside the published figures.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any, Callable, Sequence

from explistops_jax import rundir
from explistops_jax.report.published import published_value
from explistops_jax.report.runs import RunResult, as_float, style_key
from explistops_jax.report.statistics import group_runs, metric_stat, row_labels, styles_of

_MAX_CURVE_POINTS = 400


def _new_figure(width: float, height: float):
    """An Agg figure that does not touch pyplot's global state."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def _style_colors(styles: Sequence[str]) -> dict[str, Any]:
    from matplotlib import colormaps

    palette = colormaps["tab10"]
    return {style: palette(style_key(style)[0] % 10) for style in styles}


def _save(figure, path: Path) -> None:
    """PNG written atomically (``rundir.atomic_open``); no software tag, so bytes
    repeat; cropped to what is drawn (legends may sit outside the axes)."""
    with rundir.atomic_open(path, "wb") as handle:
        figure.savefig(handle, format="png", metadata={"Software": None}, bbox_inches="tight")


def _thin(points: Sequence[tuple[int, float]]) -> list[tuple[float, float]]:
    """At most _MAX_CURVE_POINTS points: means of consecutive windows."""
    if len(points) <= _MAX_CURVE_POINTS:
        return [(float(s), float(v)) for s, v in points]
    size = math.ceil(len(points) / _MAX_CURVE_POINTS)
    return [(statistics.fmean(s for s, _ in points[i:i + size]),
             statistics.fmean(v for _, v in points[i:i + size]))
            for i in range(0, len(points), size)]


def _curve_plot(runs: Sequence[RunResult], path: Path, ylabel: str, log: bool,
                points: Callable[[RunResult], Sequence[tuple[int, float]]]) -> bool:
    """One panel per main row, one line per run coloured by style."""
    groups = {key: by_style for key, by_style in group_runs(
        [r for r in runs if r.condition == "main"]).items()
        if any(points(r) for rs in by_style.values() for r in rs)}
    if not groups:
        return False
    labels = row_labels(list(groups))
    colors = _style_colors(styles_of(groups))
    figure = _new_figure(5.0 * len(groups), 3.6)
    axes = figure.subplots(1, len(groups), squeeze=False)[0]
    for ax, (key, by_style) in zip(axes, groups.items()):
        for style, style_runs in by_style.items():
            for i, run in enumerate(style_runs):
                data = _thin(points(run))
                if data:
                    ax.plot([s for s, _ in data], [v for _, v in data], color=colors[style],
                            alpha=0.85, linewidth=1.2, marker="o" if len(data) < 30 else None,
                            markersize=3, label=style if i == 0 else None)
        ax.set_title(labels[key])
        ax.set_xlabel("training step")
        ax.set_ylabel(ylabel)
        if log:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(title="style", fontsize=8)
    figure.tight_layout()
    _save(figure, path)
    return True


def _bar_plot(runs: Sequence[RunResult], path: Path) -> bool:
    """Test accuracy per model (groups) and style (bars), ± std over seeds; published
    figures of the same model marked."""
    groups = group_runs([r for r in runs if r.condition == "main"])
    stats = {(key, style): metric_stat(rs, "accuracy") for key, by_style in groups.items()
             for style, rs in by_style.items()}
    stats = {k: v for k, v in stats.items() if v is not None and not math.isnan(v.mean)}
    if not stats:
        return False
    keys = [key for key in groups if any(k[0] == key for k in stats)]
    styles = [s for s in styles_of(groups) if any(k[1] == s for k in stats)]
    labels, colors = row_labels(keys), _style_colors(styles)
    width = 0.8 / len(styles)
    figure = _new_figure(2.0 + max(2.5, 0.5 * len(keys) * (len(styles) + 1)), 3.8)
    ax = figure.subplots()
    marked = False
    for j, style in enumerate(styles):
        xs = [i + (j - (len(styles) - 1) / 2) * width for i in range(len(keys))]
        found = [(x, stats.get((key, style))) for x, key in zip(xs, keys)]
        found = [(x, s) for x, s in found if s is not None]
        ax.bar([x for x, _ in found], [100 * s.mean for _, s in found], width,
               color=colors[style], label=style)
        spread = [(x, s) for x, s in found if s.std is not None]
        if spread:
            ax.errorbar([x for x, _ in spread], [100 * s.mean for _, s in spread],
                        yerr=[100 * s.std for _, s in spread], fmt="none", ecolor="black",
                        capsize=3, linewidth=1)
        for x, key in zip(xs, keys):
            value = published_value(key[1], style)
            if value is not None:
                ax.plot([x], [value], marker="D", color="black", markersize=5,
                        label=None if marked else "published", linestyle="none")
                marked = True
    ax.set_xticks(range(len(keys)), [labels[k].replace(" (", "\n(") for k in keys],
                  fontsize=8)
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    _save(figure, path)
    return True


def write_plots(runs: Sequence[RunResult], out_dir: Path) -> dict[str, str]:
    """Writes the PNG plots; returns {file name: caption} of those written."""
    plots = {}
    if _curve_plot(runs, out_dir / rundir.ACCURACY_CURVES_PNG, "validation accuracy (%)",
                   False, lambda r: [(p["step"], 100 * p["accuracy"]) for p in r.eval_points
                                     if as_float(p.get("accuracy")) is not None]):
        plots[rundir.ACCURACY_CURVES_PNG] = ("Accuracy on the validation split at each "
                                             "evaluation during training, per explanation style")
    if _curve_plot(runs, out_dir / rundir.LOSS_CURVES_PNG, "training loss", True,
                   lambda r: r.losses):
        plots[rundir.LOSS_CURVES_PNG] = "Training loss per step (window means), per style"
    if _bar_plot(runs, out_dir / rundir.TEST_ACCURACY_PNG):
        plots[rundir.TEST_ACCURACY_PNG] = ("Test accuracy by model and explanation style "
                                           "(± std over seeds; diamonds: published)")
    return plots
