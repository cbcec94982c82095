"""The study's published figures (reference.md section 1) and how each is measured
among the runs: the study's model when it was run, else the closest size (said so),
with every difference of setup (model, dataset, training examples, preset) named.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Mapping, Sequence

from explistops_jax.report.runs import (TEST_SPLIT, RunResult, longer_split, model_rank,
                                        style_key)
from explistops_jax.report.statistics import (MISSING, GroupKey, format_stat, group_order,
                                              group_runs, margins, metric_stat, pct,
                                              row_labels)

STUDY_DATASET = "explistops30"
STUDY_TRAIN_EXAMPLES = 98_000


@dataclass(frozen=True)
class Published:
    """A figure of the study (reference.md section 1) and how to find its measured
    counterpart among the runs."""

    figure: str
    published: str
    """As printed in the paper, or derived from printed figures (then said so)."""
    condition: str = "main"
    models: tuple[str, ...] = ()
    """Model names that are the study's model; empty: every model."""
    style: str = "none"
    """A style, ``"explained"`` (the best explained style) or ``"margin"`` (the
    headline margin over none)."""
    split: str = TEST_SPLIT
    """A split name, or ``"longer"`` for the longer-sequence split."""
    dataset: str = STUDY_DATASET
    train_examples: int = STUDY_TRAIN_EXAMPLES
    setting: str = ""
    value: float | None = None
    """The published number in percent (for plots); None for ranges and statements."""
    fallback: bool = True
    """Without a run of the study's model, measure it on the closest model size (and
    say so); False: only the study's model counts (a 3B figure is not a small run's)."""
    main_split: str | None = None
    """Without a run of the condition, the CPU study's measure of the same figure:
    the main runs scored on this split (said so in the differences)."""


_SMALL = ("t5_1_0_small", "t5-small", "t5_small")
_LARGE = ("t5_1_0_large", "t5-large", "t5_large")
_3B = ("t5_1_0_3B", "t5-3b", "t5_3b")

PUBLISHED: tuple[Published, ...] = (
    Published("No explanation, all sizes", "about 65 (65.1-65.8)", style="none",
              setting="t5-small to t5-3B"),
    Published("With explanations, t5-small to t5-3B", "87-99 (87.8-99.3)", style="explained",
              setting="t5-small with long explanations (87.8) to t5-3B (99.3); measured: "
                      "each model's best style"),
    Published("No explanation, t5-small", "65.1", models=_SMALL, style="none", value=65.1),
    Published("Long explanations, t5-small", "87.8", models=_SMALL, style="long", value=87.8),
    Published("No explanation, t5-3B", "65.8", models=_3B, style="none", value=65.8,
              fallback=False),
    Published("Explanations, t5-3B", "99.3", models=_3B, style="explained", value=99.3,
              fallback=False),
    Published("Margin over no explanation (points)", "+22.7 (t5-small, long) to +33.5 (t5-3B); "
              "derived from the figures above", style="margin",
              setting="headline style (medium, else the best) minus none"),
    Published("Length generalization, t5-large, medium", "91.2",
              condition="length_generalization", models=_LARGE, style="medium",
              split="longer", dataset="explistops30_len50_100",
              setting="trained on lengths 50-100, tested on 100-200", value=91.2,
              main_split="len20_40"),
    Published("Data efficiency, t5-large, 2,000 explained examples", "66.1",
              condition="data_efficiency", models=_LARGE, style="medium",
              train_examples=2_000, setting="2,000 training examples", value=66.1),
    Published("Modular sum, t5-small, with explanations", "75.7", condition="modular_sum",
              models=_SMALL, style="explained", setting="SM-only task", value=75.7),
    Published("Larger numbers: gain from explanations (points)", "none (not quantified)",
              condition="larger_numbers", style="margin", split="larger",
              dataset="explistops30_larger_numbers",
              setting="tested on numbers larger than any in training (the study gives no "
                      "ranges; this project's: 0-29 then 30-99, at CPU scale 0-9 then 10-99)"),
)
"""The study's figures (reference.md section 1), in report order."""


def _study_rank(models: Sequence[str]) -> int | None:
    return model_rank(models[0]) if models else None


def _closest_group(figure: Published, groups: Sequence[GroupKey]) -> GroupKey | None:
    """The row measuring the figure: the study's model if run, else the closest
    size; then the study's dataset, then the closest number of training examples."""
    if not groups:
        return None
    wanted = {m.lower() for m in figure.models}
    rank = _study_rank(figure.models)

    def distance(key: GroupKey) -> tuple:
        _, model, dataset, examples = key
        exact = not wanted or model.lower() in wanted
        size = 0 if rank is None else abs(model_rank(model) - rank)
        data = dataset != figure.dataset
        count = (abs(math.log(examples / figure.train_examples))
                 if examples and examples > 0 else math.inf)
        return (not exact, size, data, count, group_order(key))

    return min(groups, key=distance)


def _differences(figure: Published, key: GroupKey, runs: Sequence[RunResult]) -> list[str]:
    _, model, dataset, examples = key
    notes = []
    if figure.models and model.lower() not in {m.lower() for m in figure.models}:
        notes.append(f"model {model}, not {figure.models[0]}")
    if dataset != figure.dataset:
        notes.append(f"dataset {dataset or '?'}, not {figure.dataset}")
    if examples != figure.train_examples:
        shown = f"{examples:,}" if examples is not None else "?"
        notes.append(f"{shown} training examples, not {figure.train_examples:,}")
    presets = sorted({run.preset for run in runs if run.preset})
    if presets and any(p.startswith("cpu") for p in presets):
        notes.append(f"preset {', '.join(presets)} (trained from scratch, reduced)")
    return notes


def published_rows(runs: Sequence[RunResult]) -> list[dict[str, str]]:
    """Each published figure with its measured counterpart and the setup differences."""
    rows = []
    for figure in PUBLISHED:
        selected = [run for run in runs if run.condition == figure.condition]
        if not selected and figure.main_split and any(
                run.condition == "main" and _scored(run, figure.main_split) for run in runs):
            measured, where, notes = _measure(
                replace(figure, condition="main", split=figure.main_split),
                [run for run in runs if run.condition == "main"])
            notes.insert(0, f"the main runs scored on split {figure.main_split}, "
                            f"not a {figure.condition} run")
        else:
            measured, where, notes = _measure(figure, selected)
        rows.append({"figure": figure.figure, "setting": figure.setting or "as published",
                     "published": figure.published, "measured": measured,
                     "measured_on": where,
                     "differences": "; ".join(notes) or ("none" if measured != MISSING
                                                         else MISSING)})
    return rows


def _measure(figure: Published, runs: Sequence[RunResult]) -> tuple[str, str, list[str]]:
    """(measured text, which runs, setup differences) for one figure."""
    if not runs:
        return MISSING, "not run", []
    groups = group_runs(runs)
    if not figure.models:  # ranges over every row
        return _measure_range(figure, runs, groups)
    key = _closest_group(figure, list(groups))
    if not figure.fallback and key[1].lower() not in {m.lower() for m in figure.models}:
        return MISSING, f"{figure.models[0]} not run", []
    by_style = groups[key]
    split = _split(figure, runs)
    notes = _differences(figure, key, [r for rs in by_style.values() for r in rs])
    if split is None:
        return MISSING, f"{key[1]}: no longer-sequence split evaluated", notes
    if figure.style == "explained":
        stats = {style: metric_stat(rs, "accuracy", split)
                 for style, rs in by_style.items() if style not in ("none", "unknown")}
        stats = {s: v for s, v in stats.items() if v is not None and not math.isnan(v.mean)}
        if not stats:
            return MISSING, f"{key[1]}: no explained run", notes
        style = max(stats, key=lambda s: (stats[s].mean, -style_key(s)[0]))
        return format_stat(stats[style]), f"{key[1]}, {style} (best style)", notes
    style_runs = by_style.get(figure.style, [])
    if not style_runs:
        return MISSING, f"{key[1]}: no {figure.style} run", notes
    where = f"{key[1]}, {figure.style}" + (f", split {split}" if split != TEST_SPLIT else "")
    return format_stat(metric_stat(style_runs, "accuracy", split)), where, notes


def _measure_range(figure: Published, runs: Sequence[RunResult],
                   groups: Mapping[GroupKey, Mapping[str, list[RunResult]]]
                   ) -> tuple[str, str, list[str]]:
    split = _split(figure, runs)
    if figure.style == "margin":
        found = [m for m in margins(runs, condition=figure.condition, split=split)
                 if m.headline]
        if not found:
            return MISSING, "needs none and an explained style", []
        labels = row_labels(list(groups))
        text = "; ".join(f"{format_stat(m.stat, sign=True)} ({labels[m.group]}, {m.style})"
                         for m in found)
        notes = list(dict.fromkeys(n for m in found for n in _differences(
            figure, m.group, [r for rs in groups[m.group].values() for r in rs])))
        where = f"{len(found)} model(s)" + (f", split {split}" if split != TEST_SPLIT else "")
        return text, where, notes
    means = []
    for key, by_style in groups.items():
        cells = []
        for style, style_runs in by_style.items():
            explained = style not in ("none", "unknown")
            if (figure.style == "explained") == explained:
                stat = metric_stat(style_runs, "accuracy", split)
                if stat is not None and not math.isnan(stat.mean):
                    cells.append((stat.mean, key, style))
        if figure.style == "explained" and cells:  # each model's best style
            cells = [max(cells, key=lambda c: (c[0], -style_key(c[2])[0]))]
        means.extend(cells)
    if not means:
        return MISSING, f"no {figure.style} run", []
    low, high = min(means), max(means)
    text = pct(low[0]) if low[0] == high[0] else f"{pct(low[0])}-{pct(high[0])}"
    models = sorted({key[1] for _, key, _ in means}, key=lambda m: (model_rank(m), m))
    notes = list(dict.fromkeys(n for _, key, _ in sorted(means, key=lambda m: group_order(m[1]))
                               for n in _differences(
                                   figure, key, [r for rs in groups[key].values() for r in rs])))
    return text, f"{', '.join(models)} ({len(means)} cell(s))", notes


def _split(figure: Published, runs: Sequence[RunResult]) -> str | None:
    """The split a figure is measured on: ``"longer"`` is the runs' longer-sequence
    split; ``"larger"`` the CPU study's ``larger_numbers`` split when scored, else the
    test split (explistops30_larger_numbers tests values 30-99 there)."""
    if figure.split == "longer":
        return longer_split(runs)
    if figure.split == "larger":
        return ("larger_numbers" if any(_scored(r, "larger_numbers") for r in runs)
                else TEST_SPLIT)
    return figure.split


def _scored(run: RunResult, split: str) -> bool:
    accuracy = run.metric("accuracy", split)
    return accuracy is not None and not math.isnan(accuracy)


def published_value(model: str, style: str) -> float | None:
    """The published accuracy of exactly this model and style, if the study gives one."""
    for figure in PUBLISHED:
        if (figure.condition == "main" and figure.value is not None
                and model.lower() in {m.lower() for m in figure.models}
                and figure.style == style):
            return figure.value
    return None
