"""Reproduce the study: run a preset's runs resumably, then report.

The runs are defined in :mod:`explistops_jax.study` (one definition of every
study run, which the gin files are written from too). :func:`run_all` trains
each run in its own directory with :func:`trainer.train` (which resumes from the
run's last checkpoint), evaluates it on its test and generalization splits with
:func:`evaluator.evaluate`, and marks it done; a second invocation skips
finished runs and resumes unfinished ones. :func:`report.write_report` then
summarizes.

Tasks read through SeqIO are registered by the caller (the CLI imports ``seqio_tasks``
when a run needs it; the grain backend needs no registry); this module
only names them, so the library stays free of the task registry.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Sequence

from etils import epath

from explistops_jax import rundir, run_info
from explistops_jax.errors import UserError
from explistops_jax.rundir import RunDir
from explistops_jax.study import Run

__all__ = ["run_all", "train_run", "evaluate_run", "export_record", "import_record"]

def _check_same_training(run: Run, run_dir: epath.Path, preset: str) -> None:
    """A run directory made with other settings (an older preset) is not reused."""
    if not RunDir(run_dir).run_json.exists():
        return
    recorded = run_info.read(run_dir)
    wanted = run.run_info(preset)
    differ = [k for k in run_info.SAME_TRAINING if k in recorded and recorded[k] != wanted[k]]
    if differ:
        raise UserError(
            f"run directory {run_dir} was trained with other settings ("
            + ", ".join(f"{k} {recorded[k]!r}, now {wanted[k]!r}" for k in differ) + ")",
            expected="another --out directory, or remove that run directory")


# ----------------------------------------------------------------- running


def run_all(runs: Sequence[Run], out_dir: rundir.PathLike, *, preset: str,
            progress: bool | None = None, log: Callable[[str], None] = print,
            data_backend: str = "grain",
            records: rundir.PathLike | None = None) -> list[epath.Path]:
    """Trains and evaluates every run not yet done; returns the run directories
    (``out_dir`` may be a URL such as ``gs://bucket/runs``). ``data_backend``: the
    input pipeline (``input_pipeline.DataConfig``).

    ``records``: a folder of finished runs' records (:func:`export_record`: what
    the report reads, no checkpoints), small enough to commit. A run done there
    and absent from ``out_dir`` is taken from it instead of trained again, and
    every run that finishes (or gains splits) here is written there: a study
    longer than a machine is lent for goes on where the last one stopped.
    """
    out = epath.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dirs = []
    eta = _Eta(len(runs))
    for i, run in enumerate(runs, 1):
        run_dir = out / run.name
        dirs.append(run_dir)
        files = RunDir(run_dir)
        if records is not None and not files.done_json.exists():
            if import_record(epath.Path(records) / run.name, run_dir):
                log(f"[{i}/{len(runs)}] {run.name}: taken from {records}")
        _check_same_training(run, run_dir, preset)
        if files.done_json.exists():
            done = rundir.read_json(files.done_json)
            missing = [s for s in run.eval_splits if s not in done.get("metrics", {})]
            if not missing:
                log(f"[{i}/{len(runs)}] {run.name}: done (skipped)")
                continue
            # A finished run asked for new splits (a finding reusing it): evaluate
            # those only; no retraining.
            log(f"[{i}/{len(runs)}] {run.name}: done; evaluating {', '.join(missing)}")
            started = time.time()
            extra = evaluate_run(dataclasses.replace(run, eval_splits=tuple(missing)),
                                 run_dir, done["step"], log=log, data_backend=data_backend)
            done["metrics"] = {**done.get("metrics", {}), **extra}
            done["eval_seconds"] = round(done.get("eval_seconds", 0.0)
                                         + time.time() - started, 1)
            rundir.write_json(files.done_json, done, sort_keys=True)
            if records is not None:
                export_record(run_dir, epath.Path(records) / run.name)
            continue
        log(f"[{i}/{len(runs)}] {run.name}: {run.style} explanations, "
            f"{run.train_examples} examples x {run.epochs} epochs{eta.text(i)}")
        started = time.time()
        result = train_run(run, run_dir, preset=preset, progress=progress,
                           data_backend=data_backend)
        trained = time.time()
        metrics = evaluate_run(run, run_dir, result.step, log=log, data_backend=data_backend)
        # seconds of this invocation (a resumed run: since it resumed)
        rundir.write_json(RunDir(run_dir).done_json,
                          {"step": result.step, "metrics": metrics,
                           "seconds": round(time.time() - started, 1),
                           "train_seconds": round(trained - started, 1),
                           "eval_seconds": round(time.time() - trained, 1)}, sort_keys=True)
        if records is not None:
            export_record(run_dir, epath.Path(records) / run.name)
        eta.trained(time.time() - started)
    return dirs


class _Eta:
    """Runs done and time left, from the runs trained so far in this invocation:
    their mean wall time for each run still to go (a rough guide: runs differ in
    cost, and a run already done costs nothing)."""

    def __init__(self, total: int):
        self.total, self.seconds = total, []

    def trained(self, seconds: float) -> None:
        self.seconds.append(seconds)

    def text(self, index: int) -> str:
        if not self.seconds:
            return ""
        left = (self.total - index + 1) * sum(self.seconds) / len(self.seconds)
        return (f" ({len(self.seconds)} trained here in {sum(self.seconds) / 60:.0f} min; "
                f"about {left / 60:.0f} min left at that pace)")


# Every how many steps a record keeps the training log (its loss curve).
RECORD_LOG_EVERY = 10


def export_record(run_dir: rundir.PathLike, record_dir: rundir.PathLike) -> None:
    """Writes a finished run's record: run.json, done.json, the evaluation log,
    every metrics file (with its per-example correctness) and the training log
    thinned to every :data:`RECORD_LOG_EVERY` th step and the last; no checkpoint, no
    predictions. Each file is written atomically, done.json last."""
    source, target = RunDir(run_dir), RunDir(record_dir)
    target.path.mkdir(parents=True, exist_ok=True)
    rundir.write_json(target.run_json, rundir.read_json(source.run_json))
    if source.eval_log.exists():
        rundir.write_text(target.eval_log, source.eval_log.read_text())
    if source.train_log.exists():
        logged = rundir.read_jsonl(source.train_log, lenient=True)
        kept = [r for i, r in enumerate(logged)
                if int(r.get("step", 0)) % RECORD_LOG_EVERY == 0 or i == len(logged) - 1]
        rundir.write_jsonl(target.train_log, kept)
    for task, split in source.eval_splits():
        for step in source.metrics_steps(task, split):
            path = target.metrics(task, split, step)
            path.parent.mkdir(parents=True, exist_ok=True)
            rundir.write_json(path, rundir.read_json(source.metrics(task, split, step)))
    rundir.write_json(target.done_json, rundir.read_json(source.done_json), sort_keys=True)


def import_record(record_dir: rundir.PathLike, run_dir: rundir.PathLike) -> bool:
    """Copies a finished run's record (:func:`export_record`) into ``run_dir``;
    False (nothing copied) when there is no finished record there."""
    source = RunDir(record_dir)
    if not source.done_json.exists():
        return False
    export_record(record_dir, run_dir)
    return True


def train_run(run: Run, run_dir: rundir.PathLike, *, preset: str,
              progress: bool | None = None,
              data_backend: str = "grain"):
    """Trains one run (resuming its directory)."""
    from explistops_jax import input_pipeline, trainer
    from explistops_jax.train_state import CheckpointConfig

    model = trainer.ModelSpec(run.model_preset, overrides=dict(run.model_overrides),
                              dropout_rate=run.dropout_rate)
    data_config = input_pipeline.DataConfig(
        run.task, dict(run.feature_lengths), batch_size=run.batch_size, seed=run.seed,
        pack=run.pack, num_epochs=run.epochs, data_backend=data_backend)
    evaluation = None
    if run.eval_period:
        evaluation = trainer.EvalConfig(period=run.eval_period, split="validation",
                                        max_examples=run.validation_examples)
    return trainer.train(
        model, data_config, run_dir, optimizer=_optimizer(run),
        initial_checkpoint_path=run.initial_checkpoint,
        checkpoint=CheckpointConfig(period=500, keep=1, async_save=True),
        evaluation=evaluation, seed=run.seed, progress=progress,
        run_info=run.run_info(preset))


def _optimizer(run: Run):
    from explistops_jax import optimizers

    if run.schedule == "constant":
        schedule = optimizers.Schedule("constant", run.learning_rate)
    else:
        schedule = optimizers.Schedule(run.schedule, run.learning_rate,
                                       warmup_steps=run.warmup_steps)
    factory = optimizers.adamw if run.optimizer == "adamw" else optimizers.adafactor
    return factory(schedule=schedule)


def evaluate_run(run: Run, run_dir: rundir.PathLike, step: int, *,
                 log: Callable[[str], None] = print,
                 data_backend: str = "grain") -> dict[str, dict[str, Any]]:
    """Decodes and scores each evaluation split (skipping those already scored)."""
    from explistops_jax import evaluator

    results = {}
    for split in run.eval_splits:
        path = RunDir(run_dir).metrics(run.task, split, step)
        if not path.exists():
            evaluator.evaluate(run_dir, run.task, split, step=step,
                               task_feature_lengths=run.eval_feature_lengths,
                               batch_size=100, max_examples=run.eval_max_examples,
                               data_backend=data_backend)
        record = rundir.read_json(path)
        metrics = {k: v for k, v in record["metrics"].items() if isinstance(v, (int, float))}
        metrics["num_examples"] = record["num_examples"]
        log(f"    {split}: accuracy {metrics.get('accuracy', float('nan')):.3f} "
            f"({record['num_examples']} examples)")
        results[split] = metrics
    return results

