"""Training metrics: a JSONL log, TensorBoard summaries and a progress bar.

``MODEL_DIR/train_log.jsonl`` has one JSON object per logged step (``step``,
``loss``, ``accuracy``, ``learning_rate``, ``tokens_per_s``, ``step_time_s``, ...);
``MODEL_DIR/eval_log.jsonl`` one per evaluation (``step``, ``task``, ``split``
and the task's metrics). TensorBoard event files go to ``MODEL_DIR/tensorboard/
{train,eval}``. Only process 0 writes.

The run directory may be on an object store (``gs://bucket/run``): the logs are
then :class:`rundir.JsonlLog` objects rewritten whole when flushed (at every
checkpoint and every minute), and TensorBoard event files are written through
``etils.epath`` (a tensorboardX record-writer factory for the URL's scheme that
uploads the whole event file at each TensorBoard flush, as tensorboardX's own
``gs://`` writer does). Where that cannot be done the run goes on without
TensorBoard after one warning.

A resumed run first drops the log lines past the step it resumes from, so the
log always describes one uninterrupted run.

Beside the model's metrics, each step record has its speed (``throughput``):
``tokens_per_s`` (non-padding target tokens), ``total_tokens_per_s``
(non-padding input + target tokens), ``model_tflops_per_s`` and ``mfu`` (left
out where the device's peak is unknown). :class:`StepProfile` writes a
``jax.profiler`` trace of chosen steps (``train.profile_steps``) into
``MODEL_DIR/tensorboard/train``, where TensorBoard's profile tab finds it.
"""

from __future__ import annotations

import concurrent.futures
import io
import json
import logging
import math
import sys
import threading
from typing import Any, Mapping, Sequence

from etils import epath

from explistops_jax import rundir
from explistops_jax.errors import ConfigError
from explistops_jax.rundir import RunDir

__all__ = ["MetricsWriter", "Progress", "StepProfile", "parse_profile_steps",
           "truncate_log"]


def truncate_log(path: rundir.PathLike, last_step: int) -> None:
    """Drops the lines of a JSONL log whose ``step`` is past ``last_step``
    (atomically: ``rundir.write_text``); the lines kept are kept byte for byte."""
    path = epath.Path(path)
    if not path.exists():
        return
    text = path.read_bytes().decode("utf-8", errors="replace")
    kept = [line for line in text.splitlines()
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


class _EpathRecordWriter:
    """A tensorboardX record writer for a URL: keeps the event file's bytes and
    writes the whole object through ``etils.epath`` at each flush (objects cannot
    be appended to; ``rundir.write_bytes`` is one upload)."""

    def __init__(self, path: str):
        self.path = path
        self.buffer = io.BytesIO()

    def write(self, data: bytes) -> None:
        self.buffer.write(data)

    def flush(self) -> None:
        rundir.write_bytes(self.path, self.buffer.getvalue())

    def close(self) -> None:
        self.flush()


class _EpathRecordWriterFactory:
    """tensorboardX's hook for a URL scheme (``record_writer.register_writer_factory``)."""

    def open(self, path: str) -> _EpathRecordWriter:
        return _EpathRecordWriter(path)

    def directory_check(self, path: str) -> None:
        epath.Path(path).mkdir(parents=True, exist_ok=True)  # no-op on most stores


def _summary_writer(logdir: epath.Path):
    """A tensorboardX ``SummaryWriter`` for ``logdir``; a URL's scheme gets the
    epath record writer (tensorboardX alone writes gs:// only with
    google-cloud-storage and s3:// only with boto3, and no other scheme)."""
    from tensorboardX import SummaryWriter, record_writer

    scheme, _ = rundir.split_url(logdir)
    if scheme is not None:
        record_writer.register_writer_factory(scheme, _EpathRecordWriterFactory())
    return SummaryWriter(str(logdir))


# Errors of tensorboardX's writer threads (a full disk): recorded here instead of
# printed, and raised in the main thread by the next write, which would otherwise
# wait forever on the dead thread's queue.
_TB_THREAD_ERRORS: list[BaseException] = []
_HOOKED = False


def _watch_tensorboard_threads() -> None:
    global _HOOKED
    if _HOOKED:
        return
    previous = threading.excepthook

    def hook(args) -> None:
        if type(args.thread).__module__.startswith("tensorboardX") and args.exc_value:
            _TB_THREAD_ERRORS.append(args.exc_value)
            return
        previous(args)

    threading.excepthook = hook
    _HOOKED = True


class MetricsWriter:
    """Writes train and eval metrics to JSONL files and TensorBoard."""

    def __init__(self, model_dir: rundir.PathLike, *, enabled: bool = True,
                 tensorboard: bool = True):
        self.run = RunDir(model_dir)
        self.enabled = enabled
        self._train_log = rundir.JsonlLog(self.run.train_log)
        self._tb: dict[str, Any] = {}
        self._use_tb = tensorboard and enabled
        self._opening = None
        if self._use_tb:
            _watch_tensorboard_threads()
            # Opened now, in a thread: its import (tensorboardX imports torch when
            # that is installed, a second or more) overlaps the train step's
            # compilation instead of delaying the first step.
            pool = concurrent.futures.ThreadPoolExecutor(1, "tensorboard")
            self._opening = pool.submit(_summary_writer, self.run.tensorboard("train"))
            pool.shutdown(wait=False)

    def _writer(self, kind: str):
        """The TensorBoard writer of ``kind``; None (after one warning) when it
        cannot be created on this run directory's store. A writer thread that
        failed (a full disk) raises its error here, once, and TensorBoard stops."""
        if _TB_THREAD_ERRORS and self._use_tb:
            self._use_tb = False
            self._tb.clear()  # not closed: its thread is gone, a close would wait forever
            raise _TB_THREAD_ERRORS.pop()
        if kind not in self._tb and self._use_tb:
            try:
                if kind == "train" and self._opening is not None:
                    opening, self._opening = self._opening, None
                    self._tb[kind] = opening.result()
                else:
                    self._tb[kind] = _summary_writer(self.run.tensorboard(kind))
            except Exception as err:  # any store error: TensorBoard is optional
                if rundir.is_local(self.run.path):
                    raise
                logging.warning("no TensorBoard events for %s: %s: %s", self.run.path,
                                type(err).__name__, err)
                self._use_tb = False
        return self._tb.get(kind)

    def write_train(self, step: int, metrics: Mapping[str, float]) -> None:
        """One step's metrics (scalars) to train_log.jsonl and TensorBoard."""
        if not self.enabled:
            return
        self._train_log.append({"step": step,
                                **{k: _jsonable(v) for k, v in metrics.items()}})
        writer = self._writer("train")
        if writer is not None:
            for name, value in metrics.items():
                writer.add_scalar(f"train/{name}", float(value), step)

    def write_eval(self, step: int, task: str, split: str,
                   metrics: Mapping[str, Any], seconds: float | None = None) -> None:
        """An evaluation's scalar metrics to eval_log.jsonl and TensorBoard
        (nested dicts, e.g. breakdowns, go to the JSONL only); ``seconds``: how
        long the evaluation took (JSONL only, for the phase breakdown)."""
        if not self.enabled:
            return
        self._train_log.flush()  # rare: both logs up to date on any store
        timing = {} if seconds is None else {"eval_seconds": round(seconds, 3)}
        rundir.append_jsonl(self.run.eval_log, {"step": step, "task": task, "split": split,
                                                **{k: _jsonable(v) for k, v in metrics.items()},
                                                **timing})
        writer = self._writer("eval")
        if writer is not None:
            for name, value in metrics.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    writer.add_scalar(f"{task}/{split}/{name}", float(value), step)

    def flush(self) -> None:
        """Makes everything written so far readable (on an object store: the
        train log and the event files are uploaded whole)."""
        if self.enabled:
            self._train_log.flush()
        self._writer("train")  # an opening writer: waited for, so errors surface
        for writer in self._tb.values():
            writer.flush()

    def close(self) -> None:
        try:
            if self.enabled:
                self._train_log.flush()
            self._writer("train")
            for writer in self._tb.values():
                writer.close()
        finally:
            self._tb.clear()


_PROFILE_WHERE = "train.profile_steps"
_PROFILE_EXPECTED = ('"A:B" or a pair (A, B) of step numbers, 1 <= A <= B, e.g. "10:12" '
                     "(steps are counted from 1, as in train_log.jsonl)")


def parse_profile_steps(value: str | Sequence[int] | None,
                        total_steps: int | None = None) -> tuple[int, int] | None:
    """``train.profile_steps`` as ``(first, last)`` (both traced), None when not
    set (None or ""). With ``total_steps``, the range must lie in the run.

    Raises:
      ConfigError: not ``"A:B"`` or a pair of integers with 1 <= A <= B
        (<= total_steps), naming the value and where it was set.
    """
    if value is None or value == "":
        return None
    if isinstance(value, str):
        parts = value.split(":")
    elif isinstance(value, (list, tuple)):
        parts = list(value)
    else:
        parts = []
    try:
        if len(parts) != 2 or any(isinstance(p, (bool, float)) for p in parts):
            raise ValueError
        first, last = (int(p) for p in parts)
    except (TypeError, ValueError):
        raise ConfigError(f"profile_steps={value!r} is not a range of steps",
                          where=_PROFILE_WHERE, expected=_PROFILE_EXPECTED) from None
    if not 1 <= first <= last:
        raise ConfigError(f"profile_steps={value!r} is an empty range",
                          where=_PROFILE_WHERE, expected=_PROFILE_EXPECTED)
    if total_steps is not None and last > total_steps:
        raise ConfigError(f"profile_steps={value!r} goes past the run's last step "
                          f"({total_steps})", where=_PROFILE_WHERE,
                          expected=f"a range inside 1:{total_steps}")
    return first, last


class StepProfile:
    """A ``jax.profiler`` trace of steps ``first..last`` (counted from 1, as
    logged), written to ``logdir`` (the run's TensorBoard train folder:
    ``plugins/profile/<time>/<host>.xplane.pb``, TensorBoard's profile tab).
    The periodic-action habit of flax's WMT example (clu ``periodic_actions.
    Profile``), for a fixed range: the loop calls :meth:`before` ahead of each
    step and :meth:`after` once it is dispatched; the trace stops when the last
    step has finished on the device. Steps already done when a run resumes are
    not traced. Profiling is a diagnostic: a trace that cannot be started or
    written is one warning, and training goes on. The traced steps' logged
    times include the profiler's overhead."""

    def __init__(self, steps: tuple[int, int] | None, logdir: rundir.PathLike, *,
                 enabled: bool = True):
        self.steps = steps if enabled else None
        self.logdir = str(logdir)
        self.tracing = False
        self.done = False

    def before(self, step: int) -> None:
        """``step`` is about to run: starts the trace at the range's first step
        (or at the first step of a resumed run inside the range)."""
        if self.steps is None or self.tracing or self.done:
            return
        first, last = self.steps
        if first <= step <= last:
            import jax

            try:
                jax.profiler.start_trace(self.logdir)
                self.tracing = True
                logging.info("profiling steps %d-%d into %s", step, last, self.logdir)
            except Exception as err:  # noqa: BLE001 - a diagnostic, not the run
                self.done = True
                logging.warning("no profile of steps %d-%d: %s: %s", first, last,
                                type(err).__name__, err)

    def after(self, step: int, outputs: Any) -> None:
        """``step`` was dispatched (``outputs``: its results): at the range's
        last step, waits for them and stops the trace."""
        if self.tracing and step >= self.steps[1]:
            import jax

            jax.block_until_ready(outputs)
            self.close()

    def close(self) -> None:
        """Stops a trace still running (a run that ended or failed inside the range)."""
        if not self.tracing:
            return
        import jax

        self.tracing, self.done = False, True
        try:
            jax.profiler.stop_trace()
        except Exception as err:  # noqa: BLE001
            logging.warning("the profile in %s was not written: %s: %s", self.logdir,
                            type(err).__name__, err)


class Progress:
    """A tqdm bar over training steps (rate, ETA, latest loss). ``enabled``:
    None shows it when standard error is a terminal (a log file gets the step
    log, not a bar redrawn by carriage returns), True always, False never (the
    trainer passes False on processes other than 0)."""

    def __init__(self, total: int, initial: int = 0, *, enabled: bool | None = None,
                 desc: str = "train"):
        self._bar = None
        if enabled is not False:
            from tqdm import tqdm

            bar = tqdm(total=total, initial=initial, unit="step", desc=desc,
                       dynamic_ncols=True, file=sys.stderr, smoothing=0.1,
                       disable=None if enabled is None else False)
            self._bar = None if bar.disable else bar

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
