"""The report's numbers: runs grouped into table rows, mean ± standard deviation
over seeds, and the margin of explanations over none.

A row (:data:`GroupKey`) is the runs that differ only in style and seed; a cell
pools a row's runs of one style (the seeds) into a :class:`Stat`. Cell texts:
:data:`MISSING` for what was not measured, :data:`NOT_APPLICABLE` for a metric
that does not apply (``null`` in the metrics file, NaN in a run).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

from explistops_jax.report.runs import (TEST_SPLIT, RunResult, condition_key, model_rank,
                                        seed_key, style_key)

MISSING = "—"
"""Cell text for a value that was not measured (no run, no metrics file)."""
NOT_APPLICABLE = "n/a"
"""Cell text for a metric that does not apply (``null`` in the metrics file)."""


@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation over seeds (None with one value).
    ``mean`` is NaN when every value is NaN (not applicable)."""

    mean: float
    std: float | None
    n: int

    @classmethod
    def of(cls, values: Iterable[float | None]) -> "Stat | None":
        """None when nothing was measured; NaN values (not applicable) are left out
        unless all are NaN."""
        measured = [v for v in values if v is not None]
        if not measured:
            return None
        finite = [v for v in measured if not math.isnan(v)]
        if not finite:
            return cls(math.nan, None, 0)
        std = statistics.stdev(finite) if len(finite) > 1 else None
        return cls(statistics.fmean(finite), std, len(finite))


def points(value: float, sign: bool = True) -> str:
    """A fraction in percentage points, one decimal (``+36.6``); a value that
    rounds to zero prints as ``+0.0``, never ``-0.0``."""
    return _one_decimal(100 * value, sign)


def _one_decimal(value: float, sign: bool) -> str:
    rounded = round(value, 1) + 0.0  # -0.0 + 0.0 is 0.0
    return f"{rounded:{'+' if sign else ''}.1f}"


def format_stat(stat: Stat | None, *, scale: float = 100.0, sign: bool = False,
                seeds: bool = True) -> str:
    """``"87.5 ± 1.2 (n=3)"``; one value: ``"87.5"``; "—" / "n/a" as documented."""
    if stat is None:
        return MISSING
    if math.isnan(stat.mean):
        return NOT_APPLICABLE
    text = _one_decimal(scale * stat.mean, sign)
    if stat.std is not None:
        text += f" ± {scale * stat.std:.1f}"
    if seeds and stat.n > 1:
        text += f" (n={stat.n})"
    return text


def pct(value: float | None, sign: bool = False) -> str:
    """A fraction as a percentage with one decimal; "—" / "n/a" as documented."""
    if value is None:
        return MISSING
    if math.isnan(value):
        return NOT_APPLICABLE
    return points(value, sign)


# ---------------------------------------------------------------- rows (groups)

GroupKey = tuple[str, str, str, "int | None"]
"""(condition, model, dataset, train_examples): runs that share a table row."""


def _group_key(run: RunResult) -> GroupKey:
    return (run.condition, run.model, run.dataset or "", run.train_examples)


def group_order(key: GroupKey) -> tuple:
    """Report order of rows: condition, model size, model, dataset, examples."""
    condition, model, dataset, examples = key
    return (condition_key(condition), model_rank(model), model, dataset, examples or 0)


def group_runs(runs: Iterable[RunResult]) -> dict[GroupKey, dict[str, list[RunResult]]]:
    """Runs by row (group key), then by style; both sorted."""
    grouped: dict[GroupKey, dict[str, list[RunResult]]] = {}
    for run in runs:
        grouped.setdefault(_group_key(run), {}).setdefault(run.style, []).append(run)
    return {key: dict(sorted(grouped[key].items(), key=lambda item: style_key(item[0])))
            for key in sorted(grouped, key=group_order)}


def row_labels(keys: Sequence[GroupKey]) -> dict[GroupKey, str]:
    """The model name, plus dataset / training examples when these vary."""
    vary_data = len({(k[2], k[3]) for k in keys}) > 1
    labels = {}
    for key in keys:
        label = key[1]
        if vary_data:
            extra = [key[2] or "?"] + ([f"{key[3]:,} ex."] if key[3] is not None else [])
            label += f" ({', '.join(extra)})"
        labels[key] = label
    return labels


def styles_of(groups: Mapping[GroupKey, Mapping[str, list[RunResult]]]) -> list[str]:
    """The styles of the groups' runs, in report order."""
    return sorted({style for by_style in groups.values() for style in by_style}, key=style_key)


def metric_stat(runs: Sequence[RunResult], metric: str, split: str = TEST_SPLIT) -> Stat | None:
    """:class:`Stat` of one metric of a split over runs (seeds)."""
    return Stat.of(run.metric(metric, split) for run in runs)


@dataclass(frozen=True)
class Margin:
    """Accuracy of an explained style minus accuracy without explanation, per seed."""

    group: GroupKey
    style: str
    per_seed: tuple[tuple[int | None, float], ...]
    stat: Stat | None
    paired: bool
    """False when no seed has both runs: the margin is then the difference of means."""
    headline: bool = False
    best: bool = False


def margins(runs: Iterable[RunResult], *, condition: str = "main",
            split: str = TEST_SPLIT) -> list[Margin]:
    """Margins of every explained style over ``none`` for each row of a condition.

    Seeds are paired (the same seed with and without explanations); a row's
    headline margin is that of ``medium`` (the study's most consistent style) when
    measured, else that of its best style; ``best`` marks the largest mean margin.
    """
    out: list[Margin] = []
    selected = [run for run in runs if run.condition == condition]
    for key, by_style in group_runs(selected).items():
        baseline = _accuracy_by_seed(by_style.get("none", []), split)
        if not baseline:
            continue
        row = [_margin(key, style, baseline, _accuracy_by_seed(style_runs, split))
               for style, style_runs in by_style.items() if style != "none"]
        row = [m for m in row if m is not None]
        if not row:
            continue
        best = max(row, key=lambda m: (m.stat.mean, -style_key(m.style)[0]))
        headline = next((m for m in row if m.style == "medium"), best)
        out.extend(Margin(m.group, m.style, m.per_seed, m.stat, m.paired,
                          headline=m is headline, best=m is best) for m in row)
    return out


def _accuracy_by_seed(runs: Sequence[RunResult], split: str) -> dict[int | None, float]:
    values = {}
    for run in runs:
        accuracy = run.metric("accuracy", split)
        if accuracy is not None and not math.isnan(accuracy):
            values[run.seed] = accuracy
    return values


def _margin(key: GroupKey, style: str, baseline: Mapping[int | None, float],
            explained: Mapping[int | None, float]) -> Margin | None:
    if not explained:
        return None
    seeds = sorted(set(baseline) & set(explained), key=seed_key)
    if seeds:
        per_seed = tuple((seed, explained[seed] - baseline[seed]) for seed in seeds)
        return Margin(key, style, per_seed, Stat.of(d for _, d in per_seed), True)
    difference = statistics.fmean(explained.values()) - statistics.fmean(baseline.values())
    return Margin(key, style, (), Stat(difference, None, 1), False)




# ---------------------------------------------------------------- the bootstrap

BOOTSTRAP_RESAMPLES = 4000
"""Resamples of :func:`paired_bootstrap` (its percentile interval's own Monte
Carlo error is then about a tenth of a point)."""


@dataclass(frozen=True)
class Interval:
    """A difference of accuracies with its 95% bootstrap interval (fractions)."""

    d: float
    low: float
    high: float

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2


def paired_bootstrap(a: Sequence[Sequence[float]], b: Sequence[Sequence[float]] | None = None,
                     *, baseline: float = 0.0, resamples: int = BOOTSTRAP_RESAMPLES,
                     seed: int = 0) -> Interval:
    """``mean(a) - mean(b)`` (or ``- baseline``) with a 95% percentile interval
    that accounts for both sources of error: which seeds were trained and which
    test items were drawn.

    ``a`` and ``b`` are per-seed rows of per-item scores (1 correct, 0 wrong) over
    the same test items in the same order: every seed of both arms answers the
    same test set. Each resample draws the test items with replacement, the same
    draw for both arms (paired: an item that is hard for one arm tends to be hard
    for the other), and each arm's seeds with replacement, independently; the
    interval is the 2.5th and 97.5th percentiles of the resampled differences.
    With one seed an arm's seed-to-seed spread cannot be seen, and the interval
    holds the test set's error only.
    """
    import numpy as np

    first = np.asarray(a, dtype=np.float64)
    second = None if b is None else np.asarray(b, dtype=np.float64)
    if first.ndim != 2 or first.shape[0] == 0 or first.shape[1] == 0:
        raise ValueError(f"arm a: expected [seeds, items] scores, got shape {first.shape}")
    if second is not None and (second.ndim != 2 or second.shape[0] == 0
                               or second.shape[1] != first.shape[1]):
        raise ValueError(f"arm b: expected [seeds, {first.shape[1]}] scores (the same "
                         f"items as a), got shape {second.shape}")
    rng = np.random.default_rng(seed)
    items = first.shape[1]
    observed = first.mean() - (second.mean() if second is not None else baseline)
    diffs = np.empty(resamples)
    for r in range(resamples):
        idx = rng.integers(0, items, items)
        value = first[rng.integers(0, first.shape[0], first.shape[0])][:, idx].mean()
        if second is not None:
            value -= second[rng.integers(0, second.shape[0], second.shape[0])][:, idx].mean()
        else:
            value -= baseline
        diffs[r] = value
    low, high = np.percentile(diffs, [2.5, 97.5])
    return Interval(float(observed), float(low), float(high))
