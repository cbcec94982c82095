"""Training metrics: a JSONL log, TensorBoard summaries and a progress bar.

``MODEL_DIR/train_log.jsonl`` has one JSON object per logged step (``step``,
``loss``, ``accuracy``, ``learning_rate``, ``tokens_per_s``, ``step_time_s``, ...);
``MODEL_DIR/eval_log.jsonl`` one per evaluation (``step``, ``task``, ``split``
and the task's metrics). TensorBoard event files go to ``MODEL_DIR/tensorboard/
{train,eval}``. Only process 0 writes.

A resumed run first drops the log lines past the step it resumes from, so the
log always describes one uninterrupted run.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path
from typing import Any, Mapping

from explistops_jax import rundir
from explistops_jax.rundir import RunDir

__all__ = ["MetricsWriter", "Progress", "truncate_log"]


def truncate_log(path: str | Path, last_step: int) -> None:
    """Drops the lines of a JSONL log whose ``step`` is past ``last_step``
    (atomically: ``rundir.write_text``); the lines kept are kept byte for byte."""
    path = Path(path)
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines()
            if line.strip() and _step_of(line) <= last_step]
    rundir.write_text(path, "".join(line + "\n" for line in kept))


def _step_of(line: str) -> float:
    try:
        return json.loads(line).get("step", math.inf)
    except json.JSONDecodeError:  # a line cut short by a kill
        return math.inf


def _jsonable(value: Any) -> Any:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return value
    return value if math.isfinite(value) else None  # JSON has no NaN


class MetricsWriter:
    """Writes train and eval metrics to JSONL files and TensorBoard."""

    def __init__(self, model_dir: str | Path, *, enabled: bool = True,
                 tensorboard: bool = True):
        self.run = RunDir(model_dir)
        self.enabled = enabled
        self._tb: dict[str, Any] = {}
        self._use_tb = tensorboard and enabled
        if self._use_tb:  # now, so that the import is not timed as a step
            self._writer("train")

    def _writer(self, kind: str):
        if kind not in self._tb:
            from tensorboardX import SummaryWriter

            self._tb[kind] = SummaryWriter(str(self.run.tensorboard(kind)))
        return self._tb[kind]

    def write_train(self, step: int, metrics: Mapping[str, float]) -> None:
        """One step's metrics (scalars) to train_log.jsonl and TensorBoard."""
        if not self.enabled:
            return
        rundir.append_jsonl(self.run.train_log,
                            {"step": step, **{k: _jsonable(v) for k, v in metrics.items()}})
        if self._use_tb:
            writer = self._writer("train")
            for name, value in metrics.items():
                writer.add_scalar(f"train/{name}", float(value), step)

    def write_eval(self, step: int, task: str, split: str,
                   metrics: Mapping[str, Any]) -> None:
        """An evaluation's scalar metrics to eval_log.jsonl and TensorBoard
        (nested dicts, e.g. breakdowns, go to the JSONL only)."""
        if not self.enabled:
            return
        rundir.append_jsonl(self.run.eval_log, {"step": step, "task": task, "split": split,
                                                **{k: _jsonable(v) for k, v in metrics.items()}})
        if self._use_tb:
            writer = self._writer("eval")
            for name, value in metrics.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    writer.add_scalar(f"{task}/{split}/{name}", float(value), step)

    def flush(self) -> None:
        for writer in self._tb.values():
            writer.flush()

    def close(self) -> None:
        for writer in self._tb.values():
            writer.close()
        self._tb.clear()


class Progress:
    """A tqdm bar over training steps (rate, ETA, latest loss); silent when
    disabled or on processes other than 0."""

    def __init__(self, total: int, initial: int = 0, *, enabled: bool = True,
                 desc: str = "train"):
        self._bar = None
        if enabled:
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=initial, unit="step", desc=desc,
                             dynamic_ncols=True, file=sys.stderr, smoothing=0.1)

    def update(self, steps: int = 1, **postfix: float) -> None:
        if self._bar is not None:
            if postfix:
                self._bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()},
                                      refresh=False)
            self._bar.update(steps)

    def write(self, message: str) -> None:
        """A message above the bar (to the log when there is no bar)."""
        if self._bar is not None:
            self._bar.write(message, file=sys.stderr)
        else:
            logging.info(message)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
