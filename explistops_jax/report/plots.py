"""The report's PNG plots (matplotlib, Agg, without pyplot's global state):
validation accuracy and training loss during training, one panel per model, and
test accuracy by model and style beside the published figures.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from explistops_jax import rundir, study
from explistops_jax.scoring import bucket_start
from explistops_jax.report.findings import DATASET, Arm
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


# ----------------------------------------------------------------- CPU study findings


def _finding_bars(path: Path, bars: Sequence[tuple[str, Any]], title: str, *,
                  hline: tuple[float, str] | None = None,
                  marks: Sequence[tuple[int, float, str]] = ()) -> bool:
    """One bar per arm (mean over seeds, ± std where there are several seeds);
    ``hline``: a reference line (value %, label); ``marks``: (bar index, value %,
    label) diamonds, e.g. the study's figures."""
    bars = [(label, arm) for label, arm in bars if arm.measured]
    if not bars:
        return False
    figure = _new_figure(1.6 + 1.1 * len(bars), 3.6)
    ax = figure.subplots()
    colors = _style_colors([arm.style for _, arm in bars])
    for i, (label, arm) in enumerate(bars):
        stat = arm.stat
        ax.bar([i], [100 * stat.mean], 0.7, color=colors[arm.style])
        if stat.std is not None:
            ax.errorbar([i], [100 * stat.mean], yerr=[100 * stat.std], fmt="none",
                        ecolor="black", capsize=3, linewidth=1)
        ax.text(i, 100 * stat.mean + 1.5, f"{100 * stat.mean:.1f}", ha="center", fontsize=8)
    labelled = False
    for index, value, label in marks:
        if index < len(bars):
            ax.plot([index], [value], marker="D", color="black", linestyle="none",
                    markersize=5, label=None if labelled else label)
            labelled = True
    if hline is not None:
        ax.axhline(hline[0], color="grey", linestyle="--", linewidth=1, label=hline[1])
    ax.set_xticks(range(len(bars)), [label.replace(", ", "\n") for label, _ in bars],
                  fontsize=8)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 105)
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    if hline is not None or marks:
        ax.legend(fontsize=8, loc="upper left")
    figure.tight_layout()
    _save(figure, path)
    return True


def _finding_lines(path: Path, series: Mapping[str, Sequence[tuple[float, Any]]], title: str,
                   xlabel: str, *, log_x: bool = False,
                   xticks: Sequence[tuple[float, str]] = ()) -> bool:
    """One line per series of (x, arm) points (mean, ± std bars with several seeds)."""
    series = {name: [(x, arm) for x, arm in points if arm.measured]
              for name, points in series.items()}
    series = {name: points for name, points in series.items() if points}
    if not series:
        return False
    colors = _style_colors(list(series))
    figure = _new_figure(5.0, 3.6)
    ax = figure.subplots()
    for name, points in series.items():
        xs = [x for x, _ in points]
        ys = [100 * arm.stat.mean for _, arm in points]
        errs = [100 * (arm.stat.std or 0.0) for _, arm in points]
        ax.errorbar(xs, ys, yerr=errs, color=colors[name], marker="o", markersize=4,
                    capsize=3, linewidth=1.3, label=name)
    if log_x:
        ax.set_xscale("log")
    if xticks:
        ax.set_xticks([x for x, _ in xticks], [t for _, t in xticks])
        ax.minorticks_off()
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 105)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(title="style", fontsize=8)
    figure.tight_layout()
    _save(figure, path)
    return True


def write_finding_plots(findings: Sequence[Any], runs: Sequence[RunResult],
                        out_dir: Path) -> dict[str, str]:
    """One PNG per finding that has runs (report.findings' :class:`Finding` s);
    returns {finding name: file name}."""
    by_name = {finding.name: finding for finding in findings}
    written: dict[str, str] = {}

    def path(name: str) -> Path:
        return out_dir / rundir.finding_png(name)

    arms = {a.label: a for a in by_name["headline"].arms}
    if _finding_bars(path("headline"), list(arms.items()), "Test accuracy, CPU preset",
                     marks=[(0, 65.1, "study, t5-small")]):
        written["headline"] = rundir.finding_png("headline")
    ladder = by_name["ladder"].arms
    if _finding_bars(path("ladder"), [(a.label, a) for a in ladder],
                     "Style ladder: test accuracy by explanation style",
                     marks=[(0, 65.1, "study, t5-small"), (3, 87.8, "study, t5-small")]
                     if all(a.measured for a in ladder) else ()):
        written["ladder"] = rundir.finding_png("ladder")
    series: dict[str, list[tuple[float, Any]]] = {}
    for arm in by_name["data_efficiency"].arms:
        series.setdefault(arm.style, []).append((arm.train_examples, arm))
    ticks = sorted({x for points in series.values() for x, a in points if a.measured})
    if _finding_lines(path("data_efficiency"), series,
                      "Accuracy against unique training examples (equal steps)",
                      "unique training examples", log_x=True,
                      xticks=[(x, f"{x:,}") for x in ticks]):
        written["data_efficiency"] = rundir.finding_png("data_efficiency")
    buckets = _length_buckets(runs, DATASET)
    if _finding_lines(path("length"), buckets, "Accuracy by expression length "
                      "(none, medium: trained on 10-20)", "expression length",
                      xticks=[(x, f"{int(x)}-{int(x) + 9}") for x in
                              sorted({x for pts in buckets.values() for x, _ in pts})]):
        written["length"] = rundir.finding_png("length")
    # the finding's own arms (the `_digits` runs and the control), not the headline's
    larger, seen = by_name["larger_numbers"].arms[:3], by_name["larger_numbers"].arms[3:]
    short = ("none\nvalues 10-99", "medium\nvalues 10-99", "control: medium\ntrained on 0-99")
    bars = ([(f"{a.style}\nvalues 0-9", a) for a in seen]
            + [(label, a) for label, a in zip(short, larger)])
    if _finding_bars(path("larger_numbers"), bars,
                     "Trained on values 0-9, tested on 10-99 (digits)"):
        written["larger_numbers"] = rundir.finding_png("larger_numbers")
    sm = by_name["modular_sum"]
    if _finding_bars(path("modular_sum"), [(a.label, a) for a in sm.arms],
                     "Modular sum (SM only): test accuracy",
                     hline=(100 * sm.extra["chance"], "chance (most common answer)")):
        written["modular_sum"] = rundir.finding_png("modular_sum")
    return written


def _length_buckets(runs: Sequence[RunResult], dataset: str
                    ) -> dict[str, list[tuple[float, Any]]]:
    """Accuracy per 10-long length bucket of the test and len20_40 splits, per style
    (the headline runs), and of the positive control on len20_40, as
    report.findings arms."""
    out: dict[str, list[tuple[float, Any]]] = {}
    lines = [(style, style, "main", dataset) for style in ("none", "medium")]
    lines.append(("control: medium trained on 10-40", "medium", "length_control",
                  study.CPU_LENGTH_DATASET.name))
    for label, style, condition, source in lines:
        chosen = [r for r in runs if (r.style, r.condition, r.dataset) == (style, condition,
                                                                            source)]
        values: dict[int, list[float]] = {}
        for run in chosen:
            for split in ("test", "len20_40"):
                for bucket, accuracy in run.breakdown("length", split).items():
                    start = bucket_start(bucket)
                    if start is not None and not math.isnan(accuracy):
                        values.setdefault(start, []).append(accuracy)
        if len(values) > 1:  # a line needs two buckets
            out[label] = [(float(start), Arm(label, tuple(v), None, style))
                          for start, v in sorted(values.items())]
    return out
