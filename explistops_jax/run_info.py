"""``run.json``: what a run records about itself, written and read here only.

The trainer writes it before the first step (and saves the same record with each
checkpoint): the task, lengths, batch, packing, epochs, steps and model config of
the run (:func:`training_facts`), the examples that lengths cut when allowed
(``truncated``), the ``--task_file`` tasks it read (``task_files``), and the facts
of a study run that :mod:`explistops_jax.study` adds (:func:`study_facts`:
``run_name``, ``preset``, ``style``, ``seed``, ``dataset``, ``condition`` ...), which
the report groups runs by. :func:`read` is for commands that need a run's record
(an evaluation finds the run's task here); :func:`read_lenient` for the report,
which says what is missing instead of stopping.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Mapping

from explistops_jax import rundir
from explistops_jax.rundir import RunDir

__all__ = ["STUDY_KEYS", "SAME_TRAINING", "training_facts", "study_facts", "write", "read",
           "read_lenient", "recorded_for"]

# The facts of a study run (study.Run), flat in run.json beside the trainer's.
STUDY_KEYS = ("run_name", "preset", "model", "style", "seed", "dataset", "train_examples",
              "condition", "epochs", "from_pretrained", "batch_size", "optimizer",
              "learning_rate", "schedule", "warmup_steps")
# What must match between a recorded run and the run asked for before its
# directory is resumed or its results reused (evaluation splits may grow).
SAME_TRAINING = ("style", "seed", "dataset", "train_examples", "epochs", "batch_size",
                 "optimizer", "learning_rate", "schedule", "warmup_steps")


def training_facts(model_config: Any, data: Any, total_steps: int) -> dict[str, Any]:
    """The trainer's part: ``model_config`` (a T5Config, or None for another
    model), ``data`` an ``input_pipeline.DataConfig``."""
    from explistops_jax.checkpoints.common import config_to_dict

    return {
        "model_config": (config_to_dict(model_config)
                         if dataclasses.is_dataclass(model_config) else None),
        "mixture_or_task_name": data.mixture_or_task_name,
        "task_feature_lengths": dict(data.task_feature_lengths),
        "batch_size": data.batch_size,
        "pack": data.pack,
        "num_epochs": data.num_epochs,
        "total_steps": total_steps,
    }


def study_facts(**facts: Any) -> dict[str, Any]:
    """A study run's part (every key of :data:`STUDY_KEYS`, no other)."""
    missing = [k for k in STUDY_KEYS if k not in facts]
    unknown = [k for k in facts if k not in STUDY_KEYS]
    if missing or unknown:
        raise TypeError(f"study facts: missing {missing}, unknown {unknown}")
    return {k: facts[k] for k in STUDY_KEYS}


def write(run_dir: rundir.PathLike, info: Mapping[str, Any]) -> None:
    """Writes ``run.json`` (atomically)."""
    rundir.write_json(RunDir(run_dir).run_json, dict(info))


def read(run_dir: rundir.PathLike) -> dict[str, Any]:
    """A run's record.

    Raises:
      UserError: no run.json, or not a JSON object (naming the file).
    """
    from explistops_jax.errors import UserError

    path = RunDir(run_dir).run_json
    info = rundir.read_json(path)
    if not isinstance(info, dict):
        raise UserError(f"{rundir.RUN_JSON} is not a JSON object", where=str(path))
    return info


def read_lenient(run_dir: rundir.PathLike) -> tuple[dict[str, Any], str | None]:
    """``(record, None)``, or ``({}, problem)`` with a short phrase (``"no
    run.json"``, ``"run.json is not a JSON object"``) for the report."""
    value, problem = rundir.read_json_lenient(RunDir(run_dir).run_json)
    if problem is None and not isinstance(value, dict):
        problem = f"{rundir.RUN_JSON} is not a JSON object"
    return (value if problem is None else {}), problem


def recorded_for(checkpoint: str | os.PathLike) -> dict[str, Any] | None:
    """The record of the run a checkpoint path belongs to (a run directory or one
    of its ``checkpoint_<step>`` directories); None for another tool's checkpoint
    or an unreadable record."""
    found = rundir.find_run_checkpoint(Path(checkpoint).expanduser().absolute())
    if found is None:
        return None
    info, _ = rundir.read_json_lenient(found[0].run_json)
    return info if isinstance(info, dict) else None
