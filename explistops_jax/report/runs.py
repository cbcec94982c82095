"""Run directories as the report sees them: what each run is and what it measured.

:func:`collect` reads run directories through :mod:`explistops_jax.rundir` (the
layout ``trainer.train`` and ``evaluator.evaluate`` write):

- ``run.json``: the run's facts; :mod:`explistops_jax.reproduce` adds ``run_name``,
  ``preset``, ``model``, ``style``, ``seed``, ``dataset``, ``train_examples`` and
  ``condition`` (runs started otherwise get what can be inferred: the style from
  ``mixture_or_task_name``, the model from ``model_config``);
- ``eval/<task>/<split>/metrics_<step>.json``: the newest step of each split;
- ``eval_log.jsonl``: validation accuracy at each evaluation during training;
- ``train_log.jsonl``: the training loss of each step.

Reading never fails on a missing or half-written file: what is absent is listed
under the run's ``problems`` (the report shows it as not measured). Runs sort in
report order (condition, model size, dataset, examples, style, seed).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Mapping

from etils import epath

from explistops_jax import rundir, run_info, scoring, task_spec
from explistops_jax.errors import UserError
from explistops_jax.explain import STYLES
from explistops_jax.rundir import RunDir

TEST_SPLIT = "test"
NOT_HELD_OUT = ("train", "validation")
"""Splits that never count as held-out results."""
LONGER_SPLITS = ("len100_200", "longer", "long")
"""Names of a longer-sequence split, most specific first (see :func:`longer_split`)."""
CONDITIONS = ("main", "length_generalization", "larger_numbers", "data_efficiency")
"""Run conditions in report order; others follow, sorted."""

_SIZE_WORDS = (("tiny", 0), ("small", 1), ("base", 2), ("large", 3), ("3b", 4), ("xl", 4),
               ("11b", 5), ("xxl", 5))


@dataclass(frozen=True)
class SplitResult:
    """The newest metrics file of one split of one run."""

    task: str
    split: str
    step: int
    num_examples: int | None
    metrics: Mapping[str, float]
    """Fractions in [0, 1]; NaN where the file has ``null`` (nothing to count)."""
    truncated: int = 0
    """Examples the evaluation's lengths cut (scored anyway: ``--allow_truncation``)."""
    correct: tuple[int, ...] | None = None
    """Each example's correctness (1 or 0) in example order, where recorded."""


@dataclass
class RunResult:
    """What one run directory holds, in the terms of the report."""

    run_dir: epath.Path
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

    def truncated(self) -> dict[str, int]:
        """Examples cut by the run's lengths, by where (``task/split`` of its
        training and validation, from run.json; ``scored on <split>``), when
        allowed; empty when nothing was cut."""
        out = {str(k): int(v) for k, v in (self.info.get("truncated") or {}).items()}
        out.update({f"scored on {split}": r.truncated for split, r in self.splits.items()
                    if r.truncated})
        return out

    def breakdown(self, kind: str, split: str = TEST_SPLIT) -> dict[str, float]:
        """``accuracy_<kind>_<bucket>`` metrics of a split as {bucket: accuracy}."""
        result = self.splits.get(split)
        return {} if result is None else scoring.breakdown_of(result.metrics, kind)


def find_runs(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> list[epath.Path]:
    """Run directories (holding run.json) given as such or found below the paths
    (local or URLs such as ``gs://bucket/runs``, read through ``etils.epath``).

    The search does not descend into a run directory, nor into checkpoints,
    TensorBoard or evaluation folders.

    Raises:
      UserError: a path is not a directory, or no run.json is found at all.
    """
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    found: list[epath.Path] = []
    for path in map(epath.Path, paths):
        if not path.is_dir():
            raise UserError("no such directory", where=str(path),
                            expected="a run directory or a folder of run directories")
        found.extend(_runs_below(path))
    unique = sorted(set(found), key=lambda p: str(p))
    if not unique:
        joined = ", ".join(str(p) for p in paths) or "(no paths)"
        raise UserError(f"no runs found under {joined}: expected {rundir.RUN_JSON} files")
    return unique


def _runs_below(root: epath.Path) -> Iterator[epath.Path]:
    """Depth first, in name order; listing directories only (no ``walk``, whose
    object-store versions lose the URL's scheme)."""
    if (root / rundir.RUN_JSON).is_file():
        yield root
        return
    try:
        children = sorted(root.iterdir(), key=lambda p: p.name)
    except OSError:
        return
    for child in children:
        if not rundir.is_run_content(child.name) and child.is_dir():
            yield from _runs_below(child)


def collect(run_dirs: str | os.PathLike | Iterable[str | os.PathLike]) -> list[RunResult]:
    """Reads runs (directories with run.json, or folders holding them), sorted in
    report order. Missing or malformed files are noted in ``problems``, never raised.

    Raises:
      UserError: no run found (see :func:`find_runs`).
    """
    return sorted((read_run(path) for path in find_runs(run_dirs)), key=_run_order)


def read_run(run_dir: str | os.PathLike) -> RunResult:
    """One run directory (see the module doc for the files read)."""
    run_dir = epath.Path(run_dir)
    files = RunDir(run_dir)
    info, problem = run_info.read_lenient(run_dir)
    problems = [problem] if problem else []
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
    run.splits = _read_splits(files, _as_str(info.get("mixture_or_task_name")), problems)
    run.curve_split, run.eval_points = _read_eval_log(files.eval_log)
    run.losses, run.last_step = _read_train_log(files.train_log)
    if TEST_SPLIT not in run.splits:
        problems.append(f"no {rundir.EVAL_DIR}/<task>/{TEST_SPLIT}/metrics_<step>.json")
    if run.last_step is None:
        problems.append(f"no {rundir.TRAIN_LOG}")
    return run


def _read_json(path: epath.Path, problems: list[str]) -> Any:
    value, problem = rundir.read_json_lenient(path)
    if problem:
        problems.append(problem)
    return value


def _read_splits(files: RunDir, own_task: str | None,
                 problems: list[str]) -> dict[str, SplitResult]:
    """The newest readable metrics file of each split; with several tasks for one
    split, the run's own task wins, then the newest step, then the task name."""
    candidates: dict[str, list[SplitResult]] = {}
    for task, split in files.eval_splits():
        result = _newest_metrics(files, task, split, problems)
        if result is not None:
            candidates.setdefault(split, []).append(result)
    return {split: min(found, key=lambda r: (r.task != own_task, -r.step, r.task))
            for split, found in sorted(candidates.items())}


def _newest_metrics(files: RunDir, task: str, split: str,
                    problems: list[str]) -> SplitResult | None:
    for step in reversed(files.metrics_steps(task, split)):
        data = _read_json(files.metrics(task, split, step), problems)
        if not isinstance(data, dict) or not isinstance(data.get("metrics"), dict):
            continue
        metrics = {str(k): (math.nan if v is None else float(v))
                   for k, v in data["metrics"].items()
                   if v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))}
        return SplitResult(task=str(data.get("task") or task), split=split, step=step,
                           num_examples=_as_int(data.get("num_examples")), metrics=metrics,
                           truncated=_as_int(data.get("truncated")) or 0,
                           correct=_correct(data.get("correct")))
    return None


def _correct(value: Any) -> tuple[int, ...] | None:
    """A metrics file's ``correct`` string ("0110...") as 0/1 values; None if absent
    or malformed."""
    if not isinstance(value, str) or not value or set(value) - {"0", "1"}:
        return None
    return tuple(int(c) for c in value)


def _read_eval_log(path: epath.Path) -> tuple[str | None, list[dict]]:
    """The evaluations of one split (validation if present, else the most frequent)."""
    by_split: dict[str, dict[int, dict]] = {}
    for record in rundir.read_jsonl(path, lenient=True):
        step = _as_int(record.get("step"))
        if step is not None and record.get("split") is not None:
            by_split.setdefault(str(record["split"]), {})[step] = record
    if not by_split:
        return None, []
    split = "validation" if "validation" in by_split else max(
        sorted(by_split), key=lambda s: len(by_split[s]))
    return split, [by_split[split][step] for step in sorted(by_split[split])]


def _read_train_log(path: epath.Path) -> tuple[list[tuple[int, float]], int | None]:
    losses: dict[int, float] = {}
    for record in rundir.read_jsonl(path, lenient=True):
        step, loss = _as_int(record.get("step")), as_float(record.get("loss"))
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
    # A run whose run.json does not say: the style its task name carries.
    return task_spec.style_of(str(info.get("mixture_or_task_name") or "")) or "unknown"


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):
        return None


def as_float(value: Any) -> float | None:
    """A finite number, or None (booleans, text, NaN and infinities are not)."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _as_str(value: Any) -> str | None:
    return None if value is None else str(value)


# ------------------------------------------------------------------ ordering


def model_rank(model: str) -> int:
    """Size order of a model name (tiny < small < base < large < 3B < 11B)."""
    name = model.lower()
    ranks = [rank for word, rank in _SIZE_WORDS if re.search(rf"(^|[_\-]){word}($|[_\-])", name)]
    return max(ranks) if ranks else 0


def style_key(style: str) -> tuple[int, str]:
    return (STYLES.index(style) if style in STYLES else len(STYLES), style)


def condition_key(condition: str) -> tuple[int, str]:
    return (CONDITIONS.index(condition) if condition in CONDITIONS else len(CONDITIONS),
            condition)


def split_key(split: str) -> tuple[int, str]:
    return (0 if split == TEST_SPLIT else 1, split)


def seed_key(seed: int | None) -> tuple[int, int]:
    return (0, seed) if seed is not None else (1, 0)


def _run_order(run: RunResult) -> tuple:
    return (condition_key(run.condition), model_rank(run.model), run.model,
            run.dataset or "", run.train_examples or 0, style_key(run.style),
            seed_key(run.seed), run.name, str(run.run_dir))


def longer_split(runs: Iterable[RunResult]) -> str | None:
    """The runs' longer-sequence split: a name from :data:`LONGER_SPLITS`, else the
    first held-out split other than test."""
    names = {split for run in runs for split in run.splits}
    for name in LONGER_SPLITS:
        if name in names:
            return name
    others = sorted(names - {TEST_SPLIT, *NOT_HELD_OUT})
    return others[0] if others else None
