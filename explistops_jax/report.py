"""Tables and plots of finished runs, measured figures beside the study's published ones.

:func:`collect` reads run directories, as :func:`explistops_jax.trainer.train` and
:func:`explistops_jax.evaluator.evaluate` write them (docs/architecture.md, "Run
directory"):

- ``run.json``: the run's facts; :mod:`explistops_jax.reproduce` adds ``run_name``,
  ``preset``, ``model``, ``style``, ``seed``, ``dataset``, ``train_examples`` and
  ``condition`` (runs started otherwise get what can be inferred: the style from
  ``mixture_or_task_name``, the model from ``model_config``);
- ``eval/<task>/<split>/metrics_<step>.json``: the newest step of each split;
- ``eval_log.jsonl``: validation accuracy at each evaluation during training;
- ``train_log.jsonl``: the training loss of each step.

:func:`write_report` writes ``report.md`` (atomically) and PNG plots beside it.
The study's table has models as rows and explanation styles as columns; runs that
differ only in their seed are pooled into one cell, shown as mean ± sample standard
deviation and the number of seeds.

Reading never fails on a missing or half-written file: what is absent shows as
"—" (not measured) and is listed under the run's problems, and a metric that does
not apply (step faithfulness without explanations: ``null`` in the metrics file)
shows as "n/a". Output is deterministic: rows and columns are sorted, and there is
no timestamp.
"""

from __future__ import annotations

import json
import math
import os
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

from explistops_jax import summaries
from explistops_jax.errors import UserError
from explistops_jax.explain import STYLES

__all__ = [
    "PUBLISHED",
    "Published",
    "RunResult",
    "SplitResult",
    "Stat",
    "collect",
    "find_runs",
    "margins",
    "render_markdown",
    "write_report",
    "write_report_from_runs",
]

RUN_FILE = "run.json"
"""Written by ``trainer.train`` (``trainer.RUN_FILE``; not imported: it loads JAX)."""
EVAL_DIR = "eval"
"""Where the evaluator writes ``<task>/<split>/`` (``evaluator.EVAL_DIR``)."""
REPORT_FILE = "report.md"
TEST_SPLIT = "test"
NOT_HELD_OUT = ("train", "validation")
"""Splits that never count as held-out results."""
LONGER_SPLITS = ("len100_200", "longer", "long")
"""Names of a longer-sequence split, most specific first (see :func:`longer_split`)."""
CONDITIONS = ("main", "length_generalization", "larger_numbers", "data_efficiency")
"""Run conditions in report order; others follow, sorted."""
STUDY_DATASET = "explistops30"
STUDY_TRAIN_EXAMPLES = 98_000

MISSING = "—"
"""Cell text for a value that was not measured (no run, no metrics file)."""
NOT_APPLICABLE = "n/a"
"""Cell text for a metric that does not apply (``null`` in the metrics file)."""

_METRICS_FILE = re.compile(r"metrics_(\d+)\.json")
_SKIP_DIRS = re.compile(r"(checkpoint_\d+.*|tensorboard|eval|\..*)")
_SIZE_WORDS = (("tiny", 0), ("small", 1), ("base", 2), ("large", 3), ("3b", 4), ("xl", 4),
               ("11b", 5), ("xxl", 5))
_MAX_CURVE_POINTS = 400


# =============================================================== reading run dirs


@dataclass(frozen=True)
class SplitResult:
    """The newest metrics file of one split of one run."""

    task: str
    split: str
    step: int
    num_examples: int | None
    metrics: Mapping[str, float]
    """Fractions in [0, 1]; NaN where the file has ``null`` (nothing to count)."""


@dataclass
class RunResult:
    """What one run directory holds, in the terms of the report."""

    run_dir: Path
    name: str
    model: str
    style: str
    seed: int | None
    condition: str
    dataset: str | None
    train_examples: int | None
    preset: str | None
    info: dict[str, Any]
    """run.json as read ({} if unreadable)."""
    splits: dict[str, SplitResult] = field(default_factory=dict)
    eval_points: list[dict[str, Any]] = field(default_factory=list)
    """eval_log.jsonl records of :attr:`curve_split`, by step (the last one of a step)."""
    curve_split: str | None = None
    losses: list[tuple[int, float]] = field(default_factory=list)
    """(step, training loss) from train_log.jsonl."""
    last_step: int | None = None
    problems: list[str] = field(default_factory=list)

    def metric(self, name: str, split: str = TEST_SPLIT) -> float | None:
        """A metric of a split: None if not measured, NaN if it does not apply."""
        result = self.splits.get(split)
        if result is None:
            return None
        return result.metrics.get(name)

    def breakdown(self, kind: str, split: str = TEST_SPLIT) -> dict[str, float]:
        """``accuracy_<kind>_<bucket>`` metrics of a split as {bucket: accuracy}."""
        result = self.splits.get(split)
        prefix = f"accuracy_{kind}_"
        if result is None:
            return {}
        return {key[len(prefix):]: value for key, value in result.metrics.items()
                if key.startswith(prefix)}


def find_runs(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """Run directories (holding run.json) given as such or found below the paths.

    The search does not descend into a run directory, nor into checkpoints,
    TensorBoard or evaluation folders.

    Raises:
      UserError: a path is not a directory, or no run.json is found at all.
    """
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    found: list[Path] = []
    for path in map(Path, paths):
        if not path.is_dir():
            raise UserError("no such directory", where=str(path),
                            expected="a run directory or a folder of run directories")
        found.extend(_runs_below(path))
    unique = sorted(set(found), key=lambda p: str(p))
    if not unique:
        joined = ", ".join(str(p) for p in paths) or "(no paths)"
        raise UserError(f"no runs found under {joined}: expected run.json files")
    return unique


def _runs_below(root: Path) -> Iterator[Path]:
    for current, dirs, files in os.walk(root):
        if RUN_FILE in files:
            dirs.clear()
            yield Path(current)
        else:
            dirs[:] = sorted(d for d in dirs if not _SKIP_DIRS.fullmatch(d))


def collect(run_dirs: str | os.PathLike | Iterable[str | os.PathLike]) -> list[RunResult]:
    """Reads runs (directories with run.json, or folders holding them), sorted in
    report order. Missing or malformed files are noted in ``problems``, never raised.

    Raises:
      UserError: no run found (see :func:`find_runs`).
    """
    return sorted((read_run(path) for path in find_runs(run_dirs)), key=_run_order)


def read_run(run_dir: str | os.PathLike) -> RunResult:
    """One run directory (see the module doc for the files read)."""
    run_dir = Path(run_dir)
    problems: list[str] = []
    info = _read_json(run_dir / RUN_FILE, problems)
    if not isinstance(info, dict):
        if info is not None:
            problems.append(f"{RUN_FILE} is not a JSON object")
        info = {}
    run = RunResult(
        run_dir=run_dir,
        name=str(info.get("run_name") or run_dir.name),
        model=_model_name(info),
        style=_style_name(info),
        seed=_as_int(info.get("seed")),
        condition=str(info.get("condition") or "main"),
        dataset=_as_str(info.get("dataset")),
        train_examples=_as_int(info.get("train_examples")),
        preset=_as_str(info.get("preset")),
        info=info,
        problems=problems,
    )
    run.splits = _read_splits(run_dir, _as_str(info.get("mixture_or_task_name")), problems)
    run.curve_split, run.eval_points = _read_eval_log(run_dir / summaries.EVAL_LOG)
    run.losses, run.last_step = _read_train_log(run_dir / summaries.TRAIN_LOG)
    if TEST_SPLIT not in run.splits:
        problems.append(f"no {EVAL_DIR}/<task>/{TEST_SPLIT}/metrics_<step>.json")
    if run.last_step is None:
        problems.append(f"no {summaries.TRAIN_LOG}")
    return run


def _read_json(path: Path, problems: list[str]) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        problems.append(f"no {path.name}")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        problems.append(f"{path.name} unreadable ({type(err).__name__})")
    return None


def _iter_jsonl(path: Path) -> Iterator[dict]:
    """Records of a JSONL file; a missing file is empty, broken lines are skipped."""
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(record, dict):
                    yield record
    except OSError:
        return


def _read_splits(run_dir: Path, own_task: str | None,
                 problems: list[str]) -> dict[str, SplitResult]:
    """The newest readable metrics file of each split; with several tasks for one
    split, the run's own task wins, then the newest step, then the task name."""
    candidates: dict[str, list[SplitResult]] = {}
    for task_dir in sorted(p for p in (run_dir / EVAL_DIR).glob("*") if p.is_dir()):
        for split_dir in sorted(p for p in task_dir.glob("*") if p.is_dir()):
            result = _newest_metrics(split_dir, problems)
            if result is not None:
                candidates.setdefault(split_dir.name, []).append(result)
    return {split: min(found, key=lambda r: (r.task != own_task, -r.step, r.task))
            for split, found in sorted(candidates.items())}


def _newest_metrics(split_dir: Path, problems: list[str]) -> SplitResult | None:
    files = []
    for path in split_dir.glob("metrics_*.json"):
        match = _METRICS_FILE.fullmatch(path.name)
        if match:
            files.append((int(match.group(1)), path))
    for step, path in sorted(files, reverse=True):
        data = _read_json(path, problems)
        if not isinstance(data, dict) or not isinstance(data.get("metrics"), dict):
            continue
        metrics = {str(k): (math.nan if v is None else float(v))
                   for k, v in data["metrics"].items()
                   if v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))}
        return SplitResult(task=str(data.get("task") or split_dir.parent.name),
                           split=split_dir.name, step=step,
                           num_examples=_as_int(data.get("num_examples")), metrics=metrics)
    return None


def _read_eval_log(path: Path) -> tuple[str | None, list[dict]]:
    """The evaluations of one split (validation if present, else the most frequent)."""
    by_split: dict[str, dict[int, dict]] = {}
    for record in _iter_jsonl(path):
        step = _as_int(record.get("step"))
        if step is not None and record.get("split") is not None:
            by_split.setdefault(str(record["split"]), {})[step] = record
    if not by_split:
        return None, []
    split = "validation" if "validation" in by_split else max(
        sorted(by_split), key=lambda s: len(by_split[s]))
    return split, [by_split[split][step] for step in sorted(by_split[split])]


def _read_train_log(path: Path) -> tuple[list[tuple[int, float]], int | None]:
    losses: dict[int, float] = {}
    for record in _iter_jsonl(path):
        step, loss = _as_int(record.get("step")), _as_float(record.get("loss"))
        if step is not None and loss is not None:
            losses[step] = loss
    points = sorted(losses.items())
    return points, (points[-1][0] if points else None)


def _model_name(info: Mapping[str, Any]) -> str:
    for key in ("model", "preset"):
        if info.get(key):
            return str(info[key])
    config = info.get("model_config")
    if isinstance(config, dict) and config.get("emb_dim"):
        return (f"d{config['emb_dim']}-{config.get('num_encoder_layers', '?')}"
                f"+{config.get('num_decoder_layers', '?')}")
    return "unknown"


def _style_name(info: Mapping[str, Any]) -> str:
    if info.get("style"):
        return str(info["style"])
    words = str(info.get("mixture_or_task_name") or "").split("_")
    found = [word for word in words if word in STYLES]
    return found[-1] if found else "unknown"


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):
        return None


def _as_float(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _as_str(value: Any) -> str | None:
    return None if value is None else str(value)


# ======================================================================= ordering


def model_rank(model: str) -> int:
    """Size order of a model name (tiny < small < base < large < 3B < 11B)."""
    name = model.lower()
    ranks = [rank for word, rank in _SIZE_WORDS if re.search(rf"(^|[_\-]){word}($|[_\-])", name)]
    return max(ranks) if ranks else 0


def _style_key(style: str) -> tuple[int, str]:
    return (STYLES.index(style) if style in STYLES else len(STYLES), style)


def _condition_key(condition: str) -> tuple[int, str]:
    return (CONDITIONS.index(condition) if condition in CONDITIONS else len(CONDITIONS),
            condition)


def _split_key(split: str) -> tuple[int, str]:
    return (0 if split == TEST_SPLIT else 1, split)


def _seed_key(seed: int | None) -> tuple[int, int]:
    return (0, seed) if seed is not None else (1, 0)


def _run_order(run: RunResult) -> tuple:
    return (_condition_key(run.condition), model_rank(run.model), run.model,
            run.dataset or "", run.train_examples or 0, _style_key(run.style),
            _seed_key(run.seed), run.name, str(run.run_dir))


def longer_split(runs: Iterable[RunResult]) -> str | None:
    """The runs' longer-sequence split: a name from :data:`LONGER_SPLITS`, else the
    first held-out split other than test."""
    names = {split for run in runs for split in run.splits}
    for name in LONGER_SPLITS:
        if name in names:
            return name
    others = sorted(names - {TEST_SPLIT, *NOT_HELD_OUT})
    return others[0] if others else None


# ==================================================================== statistics


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


def format_stat(stat: Stat | None, *, scale: float = 100.0, sign: bool = False,
                seeds: bool = True) -> str:
    """``"87.5 ± 1.2 (n=3)"``; one value: ``"87.5"``; "—" / "n/a" as documented."""
    if stat is None:
        return MISSING
    if math.isnan(stat.mean):
        return NOT_APPLICABLE
    text = f"{scale * stat.mean:{'+' if sign else ''}.1f}"
    if stat.std is not None:
        text += f" ± {scale * stat.std:.1f}"
    if seeds and stat.n > 1:
        text += f" (n={stat.n})"
    return text


def _pct(value: float | None, sign: bool = False) -> str:
    if value is None:
        return MISSING
    if math.isnan(value):
        return NOT_APPLICABLE
    return f"{100 * value:{'+' if sign else ''}.1f}"


# ========================================================================= groups

GroupKey = tuple[str, str, str, "int | None"]
"""(condition, model, dataset, train_examples): runs that share a table row."""


def _group_key(run: RunResult) -> GroupKey:
    return (run.condition, run.model, run.dataset or "", run.train_examples)


def _group_order(key: GroupKey) -> tuple:
    condition, model, dataset, examples = key
    return (_condition_key(condition), model_rank(model), model, dataset, examples or 0)


def _groups(runs: Iterable[RunResult]) -> dict[GroupKey, dict[str, list[RunResult]]]:
    """Runs by row (group key), then by style; both sorted."""
    grouped: dict[GroupKey, dict[str, list[RunResult]]] = {}
    for run in runs:
        grouped.setdefault(_group_key(run), {}).setdefault(run.style, []).append(run)
    return {key: dict(sorted(grouped[key].items(), key=lambda item: _style_key(item[0])))
            for key in sorted(grouped, key=_group_order)}


def _row_labels(keys: Sequence[GroupKey]) -> dict[GroupKey, str]:
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


def _styles(groups: Mapping[GroupKey, Mapping[str, list[RunResult]]]) -> list[str]:
    return sorted({style for by_style in groups.values() for style in by_style}, key=_style_key)


def _stat(runs: Sequence[RunResult], metric: str, split: str = TEST_SPLIT) -> Stat | None:
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
    for key, by_style in _groups(selected).items():
        baseline = _accuracy_by_seed(by_style.get("none", []), split)
        if not baseline:
            continue
        row = [_margin(key, style, baseline, _accuracy_by_seed(style_runs, split))
               for style, style_runs in by_style.items() if style != "none"]
        row = [m for m in row if m is not None]
        if not row:
            continue
        best = max(row, key=lambda m: (m.stat.mean, -_style_key(m.style)[0]))
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
    seeds = sorted(set(baseline) & set(explained), key=_seed_key)
    if seeds:
        per_seed = tuple((seed, explained[seed] - baseline[seed]) for seed in seeds)
        return Margin(key, style, per_seed, Stat.of(d for _, d in per_seed), True)
    difference = statistics.fmean(explained.values()) - statistics.fmean(baseline.values())
    return Margin(key, style, (), Stat(difference, None, 1), False)


# ============================================================ published figures


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


_SMALL = ("t5_1_0_small", "t5-small", "t5_small")
_LARGE = ("t5_1_0_large", "t5-large", "t5_large")
_3B = ("t5_1_0_3B", "t5-3b", "t5_3b")

PUBLISHED: tuple[Published, ...] = (
    Published("No explanation, all sizes", "about 65 (65.1-65.8)", style="none",
              setting="t5-small to t5-3B"),
    Published("With explanations, all sizes and styles", "87.8-99.3", style="explained",
              setting="t5-small (long) to t5-3B"),
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
              setting="trained on lengths 50-100, tested on 100-200", value=91.2),
    Published("Data efficiency, t5-large, 2,000 explained examples", "66.1",
              condition="data_efficiency", models=_LARGE, style="medium",
              train_examples=2_000, setting="2,000 training examples", value=66.1),
    Published("Modular sum, t5-small, with explanations", "75.7", condition="modular_sum",
              models=_SMALL, style="explained", setting="SM-only task", value=75.7),
    Published("Larger numbers: gain from explanations (points)", "none (not quantified)",
              condition="larger_numbers", style="margin",
              dataset="explistops30_larger_numbers",
              setting="trained on values 0-29, tested on larger values"),
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
        return (not exact, size, data, count, _group_order(key))

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
    groups = _groups(runs)
    if not figure.models:  # ranges over every row
        return _measure_range(figure, runs, groups)
    key = _closest_group(figure, list(groups))
    if not figure.fallback and key[1].lower() not in {m.lower() for m in figure.models}:
        return MISSING, f"{figure.models[0]} not run", []
    by_style = groups[key]
    split = longer_split(runs) if figure.split == "longer" else figure.split
    notes = _differences(figure, key, [r for rs in by_style.values() for r in rs])
    if split is None:
        return MISSING, f"{key[1]}: no longer-sequence split evaluated", notes
    if figure.style == "explained":
        stats = {style: _stat(rs, "accuracy", split)
                 for style, rs in by_style.items() if style not in ("none", "unknown")}
        stats = {s: v for s, v in stats.items() if v is not None and not math.isnan(v.mean)}
        if not stats:
            return MISSING, f"{key[1]}: no explained run", notes
        style = max(stats, key=lambda s: (stats[s].mean, -_style_key(s)[0]))
        return format_stat(stats[style]), f"{key[1]}, {style} (best style)", notes
    style_runs = by_style.get(figure.style, [])
    if not style_runs:
        return MISSING, f"{key[1]}: no {figure.style} run", notes
    where = f"{key[1]}, {figure.style}" + (f", split {split}" if split != TEST_SPLIT else "")
    return format_stat(_stat(style_runs, "accuracy", split)), where, notes


def _measure_range(figure: Published, runs: Sequence[RunResult],
                   groups: Mapping[GroupKey, Mapping[str, list[RunResult]]]
                   ) -> tuple[str, str, list[str]]:
    if figure.style == "margin":
        found = [m for m in margins(runs, condition=figure.condition) if m.headline]
        if not found:
            return MISSING, "needs none and an explained style", []
        labels = _row_labels(list(groups))
        text = "; ".join(f"{format_stat(m.stat, sign=True)} ({labels[m.group]}, {m.style})"
                         for m in found)
        notes = list(dict.fromkeys(n for m in found for n in _differences(
            figure, m.group, [r for rs in groups[m.group].values() for r in rs])))
        return text, f"{len(found)} model(s)", notes
    means = []
    for key, by_style in groups.items():
        for style, style_runs in by_style.items():
            explained = style not in ("none", "unknown")
            if (figure.style == "explained") == explained:
                stat = _stat(style_runs, "accuracy")
                if stat is not None and not math.isnan(stat.mean):
                    means.append((stat.mean, key, style))
    if not means:
        return MISSING, f"no {figure.style} run", []
    low, high = min(means), max(means)
    text = _pct(low[0]) if low[0] == high[0] else f"{_pct(low[0])}-{_pct(high[0])}"
    models = sorted({key[1] for _, key, _ in means}, key=lambda m: (model_rank(m), m))
    notes = list(dict.fromkeys(n for _, key, _ in sorted(means, key=lambda m: _group_order(m[1]))
                               for n in _differences(
                                   figure, key, [r for rs in groups[key].values() for r in rs])))
    return text, f"{', '.join(models)} ({len(means)} cell(s))", notes


# ====================================================================== markdown


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return [line(header), "|" + "|".join("---" for _ in header) + "|", *map(line, rows)]


def _headline_lines(runs: Sequence[RunResult]) -> list[str]:
    found = [m for m in margins(runs) if m.headline]
    if not found:
        return ["No margin: the report needs runs with and without explanations "
                "(condition main) with test metrics."]
    labels = _row_labels(list(_groups([r for r in runs if r.condition == "main"])))
    lines = []
    for m in found:
        seeds = ", ".join(f"{100 * d:+.1f}" for _, d in m.per_seed)
        if not m.paired:
            detail = "no common seed: difference of the means"
        elif len(m.per_seed) == 1:
            detail = "1 seed"
        else:
            detail = (f"{len(m.per_seed)} seeds; per seed {seeds}; smallest "
                      f"{100 * min(d for _, d in m.per_seed):+.1f}")
        lines.append(f"- **{labels[m.group]}**: test accuracy with {m.style} explanations "
                     f"minus without = **{format_stat(m.stat, sign=True, seeds=False)} "
                     f"points** ({detail}).")
    return lines


def _main_tables(runs: Sequence[RunResult]) -> list[str]:
    groups = _groups([r for r in runs if r.condition == "main"])
    if not groups:
        return ["No run of condition `main`."]
    labels, styles = _row_labels(list(groups)), _styles(groups)
    out: list[str] = []
    for title, metric in (("Test accuracy (%)", "accuracy"),
                          ("Step faithfulness (%): every step right, in order",
                           "step_faithfulness"),
                          ("Parse failures (%): no answer could be read", "parse_failure_rate")):
        out += [f"### {title}", ""]
        out += _table(["Model", *styles], (
            [labels[key], *(format_stat(_stat(by_style.get(s, []), metric)) for s in styles)]
            for key, by_style in groups.items()))
        out.append("")
    out += ["### Margin over no explanation (test accuracy, points)", ""]
    rows = [[labels[m.group], m.style, format_stat(m.stat, sign=True, seeds=False),
             str(len(m.per_seed)) if m.paired else "0 (unpaired)",
             ", ".join(f"{100 * d:+.1f}" for _, d in m.per_seed) or MISSING,
             ", ".join(r for r, on in (("headline", m.headline), ("best", m.best)) if on)]
            for m in margins(runs)]
    out += _table(["Model", "Style", "Margin", "Seeds paired", "Per seed", "Role"], rows) \
        if rows else ["No margin: no row has runs with and without explanations."]
    return out + [""]


def _breakdown_tables(runs: Sequence[RunResult], kind: str) -> list[str]:
    main = [r for r in runs if r.condition == "main"]
    groups = _groups(main)
    labels = _row_labels(list(groups))
    splits = sorted({s for r in main for s in r.splits if s not in NOT_HELD_OUT}, key=_split_key)
    out: list[str] = []
    for key, by_style in groups.items():
        for split in splits:
            buckets = sorted({b for rs in by_style.values() for r in rs
                              for b in r.breakdown(kind, split)}, key=_bucket_key)
            if not buckets:
                continue
            styles = list(by_style)
            out += [f"### {labels[key]}, split `{split}`", ""]
            out += _table([kind.capitalize(), *styles], (
                [bucket.replace("_", "-"),
                 *(format_stat(Stat.of(r.breakdown(kind, split).get(bucket)
                                       for r in by_style[s])) for s in styles)]
                for bucket in buckets))
            out.append("")
    return out or ["No breakdown in the metrics files.", ""]


def _bucket_key(bucket: str) -> tuple[int, str]:
    head = bucket.split("_")[0]
    return (int(head) if head.lstrip("-").isdigit() else 0, bucket)


def _splits_table(runs: Sequence[RunResult]) -> list[str]:
    groups = _groups(runs)
    splits = sorted({s for r in runs for s in r.splits if s not in NOT_HELD_OUT}, key=_split_key)
    if not splits:
        return ["No held-out split was evaluated.", ""]
    rows = []
    for (condition, model, dataset, examples), by_style in groups.items():
        for style, style_runs in by_style.items():
            rows.append([condition, model, dataset or "?",
                         f"{examples:,}" if examples is not None else "?", style,
                         *(format_stat(_stat(style_runs, "accuracy", s)) for s in splits)])
    return _table(["Condition", "Model", "Dataset", "Train examples", "Style",
                   *(f"`{s}`" for s in splits)], rows) + [""]


def _published_table(runs: Sequence[RunResult]) -> list[str]:
    rows = [[r["figure"], r["setting"], r["published"], r["measured"], r["measured_on"],
             r["differences"]] for r in published_rows(runs)]
    return _table(["Figure", "Study setting", "Published (%)", "Measured (%)",
                   "Measured on", "Measured setup differs"], rows) + [""]


def _dataset_configs() -> dict[str, Any]:
    """Known dataset configs (the built-ins, the CPU demo's included, and any
    registered in this process)."""
    from explistops_jax import data

    return dict(data.DATASETS)


def _dataset_lines(runs: Sequence[RunResult]) -> list[str]:
    names = sorted({run.dataset for run in runs if run.dataset})
    if not names:
        return ["The runs do not name their dataset.", ""]
    configs = _dataset_configs()
    study = configs.get(STUDY_DATASET)
    lines = []
    for name in names:
        config = configs.get(name)
        if config is None:
            described = next((str(r.info["dataset_description"]) for r in runs
                              if r.dataset == name and r.info.get("dataset_description")),
                             "not a built-in dataset; see the preset that made the runs")
            lines.append(f"- `{name}`: {described}.")
            continue
        text = f"- `{name}`: {_describe(config)}"
        if study is not None and name != STUDY_DATASET:
            diff = _compare(config, study)
            text += f" Differs from {STUDY_DATASET}: {diff}." if diff else ""
        lines.append(text)
    return lines + [""]


def _describe(config) -> str:
    """One line: description, split sizes, and the trees of each distinct sampler."""
    sizes = ", ".join(f"{name} {split.num_examples:,}" for name, split in config.splits.items())
    text = (f"{config.description}. " if config.description else "")
    text += f"SM modulo {config.modulus}; {sizes} examples"
    samplers: dict[Any, list[str]] = {}
    for name, split in config.splits.items():
        samplers.setdefault(split.sampler, []).append(name)
    for sampler, names in samplers.items():
        where = "" if len(samplers) == 1 else f" ({', '.join(names)})"
        text += f"; trees{where}: {_sampler_text(sampler)}"
    return text + "."


def _sampler_text(s) -> str:
    # The length window is strict (min_length < length < max_length): shown inclusive.
    return (f"values {s.min_value}-{s.max_value}, lengths {s.min_length + 1}-"
            f"{s.max_length - 1}, depth < {s.max_depth}, {s.min_args}-{s.max_args} arguments")


def _compare(config, study) -> str:
    if "train" not in config.splits or "train" not in study.splits:
        return ""
    mine, theirs = config.splits["train"], study.splits["train"]
    diffs = []
    for label, attr in (("values", ("min_value", "max_value")),
                        ("lengths", ("min_length", "max_length")),
                        ("max depth", ("max_depth",)), ("arguments", ("min_args", "max_args")),
                        ("operators", ("operators",))):
        a = [getattr(mine.sampler, n) for n in attr]
        b = [getattr(theirs.sampler, n) for n in attr]
        if label == "lengths":  # strict window, shown inclusive as in _sampler_text
            a, b = [a[0] + 1, a[1] - 1], [b[0] + 1, b[1] - 1]
        if a != b:
            diffs.append(f"{label} {_span(a)} vs {_span(b)}")
    if config.modulus != study.modulus:
        diffs.append(f"modulus {config.modulus} vs {study.modulus}")
    if mine.num_examples != theirs.num_examples:
        diffs.append(f"{mine.num_examples:,} vs {theirs.num_examples:,} training examples")
    return ", ".join(diffs)


def _span(values: list) -> str:
    if len(values) == 1:
        value = values[0]
        return "/".join(value) if isinstance(value, tuple) else str(value)
    return "-".join(map(str, values))


def _runs_table(runs: Sequence[RunResult], out_dir: Path) -> list[str]:
    rows = []
    for run in runs:
        test = run.splits.get(TEST_SPLIT)
        rows.append([
            f"[{run.name}]({_relative(run.run_dir, out_dir)})", run.condition, run.model,
            run.style, str(run.seed) if run.seed is not None else MISSING,
            run.dataset or MISSING,
            f"{run.train_examples:,}" if run.train_examples is not None else MISSING,
            str(run.last_step) if run.last_step is not None else MISSING,
            f"{_pct(run.metric('accuracy'))} (step {test.step}, "
            f"{test.num_examples if test.num_examples is not None else '?'} ex.)"
            if test else MISSING,
            ", ".join(sorted(run.splits, key=_split_key)) or MISSING,
            "; ".join(run.problems) or "",
        ])
    return _table(["Run", "Condition", "Model", "Style", "Seed", "Dataset", "Train examples",
                   "Last step", "Test accuracy (%)", "Splits", "Problems"], rows) + [""]


def _relative(path: Path, start: Path) -> str:
    try:
        return Path(os.path.relpath(path.resolve(), start.resolve())).as_posix()
    except ValueError:  # another drive
        return path.resolve().as_posix()


def render_markdown(runs: Sequence[RunResult], out_dir: Path,
                    plots: Mapping[str, str]) -> str:
    """The report's text; ``plots`` maps a plot file name to its caption."""
    longer = longer_split([r for r in runs if r.condition == "main"])
    lines = [
        "# Explained-ListOps: results",
        "",
        f"{len(runs)} run(s). Cells are percentages on held-out data: the mean over seeds "
        "± the sample standard deviation, with the number of seeds (n) when more than "
        f"one. {MISSING} = not measured (no run or no metrics file); {NOT_APPLICABLE} = "
        "does not apply (e.g. step faithfulness without explanations). Answers are "
        "parsed in full (not by their last character, as in the study's code).",
        "",
        "## Headline: explanations versus none",
        "",
        *_headline_lines(runs),
        "",
        "## Main results (model × explanation style, test split)",
        "",
        *_main_tables(runs),
        "## Measured beside published",
        "",
        "Published = the study's figures (Ballout et al., ACML 2023; pretrained T5, "
        f"{STUDY_DATASET}, {STUDY_TRAIN_EXAMPLES:,} training examples, 30 epochs). "
        "Measured = the runs of this report. Where the measured setup differs (the last "
        "column; e.g. the CPU preset trains a tiny model from scratch on smaller problems), "
        "compare the effect of explanations, not the level.",
        "",
        *_published_table(runs),
        "## Held-out and generalization splits (accuracy %)",
        "",
        (f"The longer-sequence split is `{longer}`." if longer else
         "No longer-sequence split was evaluated for the main runs."),
        "",
        *_splits_table(runs),
        "## Accuracy by expression length (%)",
        "",
        *_breakdown_tables(runs, "length"),
        "## Accuracy by depth (%)",
        "",
        *_breakdown_tables(runs, "depth"),
        "## Plots",
        "",
    ]
    if plots:
        for name, caption in plots.items():
            lines += [f"![{caption}]({name})", "", f"*{caption}* ([{name}]({name}))", ""]
    else:
        lines += ["No plot: the runs have no logs or test metrics.", ""]
    lines += ["## Datasets", "", *_dataset_lines(runs), "## Runs", "", *_runs_table(runs, out_dir)]
    return "\n".join(lines).rstrip() + "\n"


# ========================================================================= plots


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
    return {style: palette(_style_key(style)[0] % 10) for style in styles}


def _save(figure, path: Path) -> None:
    """PNG written to a temporary name and renamed; no software tag, so bytes repeat;
    cropped to what is drawn (legends may sit outside the axes)."""
    tmp = path.with_name(f".{path.name}.tmp")
    figure.savefig(tmp, format="png", metadata={"Software": None}, bbox_inches="tight")
    os.replace(tmp, path)


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
    groups = {key: by_style for key, by_style in _groups(
        [r for r in runs if r.condition == "main"]).items()
        if any(points(r) for rs in by_style.values() for r in rs)}
    if not groups:
        return False
    labels = _row_labels(list(groups))
    colors = _style_colors(_styles(groups))
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
    groups = _groups([r for r in runs if r.condition == "main"])
    stats = {(key, style): _stat(rs, "accuracy") for key, by_style in groups.items()
             for style, rs in by_style.items()}
    stats = {k: v for k, v in stats.items() if v is not None and not math.isnan(v.mean)}
    if not stats:
        return False
    keys = [key for key in groups if any(k[0] == key for k in stats)]
    styles = [s for s in _styles(groups) if any(k[1] == s for k in stats)]
    labels, colors = _row_labels(keys), _style_colors(styles)
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
            value = _published_value(key[1], style)
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


def _published_value(model: str, style: str) -> float | None:
    """The published accuracy of exactly this model and style, if the study gives one."""
    for figure in PUBLISHED:
        if (figure.condition == "main" and figure.value is not None
                and model.lower() in {m.lower() for m in figure.models}
                and figure.style == style):
            return figure.value
    return None


def write_plots(runs: Sequence[RunResult], out_dir: Path) -> dict[str, str]:
    """Writes the PNG plots; returns {file name: caption} of those written."""
    plots = {}
    if _curve_plot(runs, out_dir / "accuracy_curves.png", "validation accuracy (%)", False,
                   lambda r: [(p["step"], 100 * p["accuracy"]) for p in r.eval_points
                              if _as_float(p.get("accuracy")) is not None]):
        plots["accuracy_curves.png"] = ("Accuracy on the validation split at each evaluation "
                                        "during training, per explanation style")
    if _curve_plot(runs, out_dir / "loss_curves.png", "training loss", True,
                   lambda r: r.losses):
        plots["loss_curves.png"] = "Training loss per step (window means), per style"
    if _bar_plot(runs, out_dir / "test_accuracy.png"):
        plots["test_accuracy.png"] = ("Test accuracy by model and explanation style "
                                      "(± std over seeds; diamonds: published)")
    return plots


# ======================================================================== report


def write_report(run_dirs_or_parent: str | os.PathLike | Iterable[str | os.PathLike],
                 out_dir: str | os.PathLike) -> Path:
    """Reads the runs and writes ``out_dir/report.md`` plus its PNG plots.

    Returns the path of report.md.

    Raises:
      UserError: no run found under the given paths.
    """
    return write_report_from_runs(collect(run_dirs_or_parent), out_dir)


def write_report_from_runs(runs: Sequence[RunResult], out_dir: str | os.PathLike) -> Path:
    """:func:`write_report` for runs already read by :func:`collect`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = write_plots(runs, out_dir)
    text = render_markdown(runs, out_dir, plots)
    path = out_dir / REPORT_FILE
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path
