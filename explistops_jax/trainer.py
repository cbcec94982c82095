"""Training: state initialisation, the sharded train step and the loop.

:func:`train` is the library entry point (``explistops_jax.train`` and
``explistops train`` are thin wrappers around it; ``reproduce`` calls it
directly). It reads as the sequence of what a run does::

    model      = the network for the task's vocabulary (ModelSpec.build)
    stream     = resumable batches (input_pipeline.BatchStream)
    state      = latest checkpoint in model_dir, else INITIAL_CHECKPOINT_PATH,
                 else a fresh initialisation (sharded over the mesh)
    step_fn    = jit(train_step) with explicit shardings, state donated
    loop       : step, log (JSONL, TensorBoard, progress bar; each step's
                 tokens/s, model TFLOP/s and MFU), stop on NaN, evaluate every
                 EVAL_PERIOD steps, checkpoint every period, trace the steps
                 of train.profile_steps (summaries.StepProfile)

A run killed at any point resumes from its last checkpoint and produces the same
losses as an uninterrupted run: the batches are a deterministic function of the
input position saved with the checkpoint, and each step's dropout key is derived
from the step number.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import logging
import math
import threading
import time
from typing import Any, Mapping

import jax
import jax.numpy as jnp

from explistops_jax import input_pipeline, optimizers, partitioning, rundir, summaries
from explistops_jax import throughput as throughput_lib
from explistops_jax import run_info as run_info_lib
from explistops_jax.errors import ConfigError, UserError
from explistops_jax.rundir import RunDir
from explistops_jax.train_state import CheckpointConfig, RunCheckpoints, TrainState
from explistops_jax.train_step import initial_state, make_train_step, state_layout

__all__ = [
    "ModelSpec",
    "EvalConfig",
    "TrainResult",
    "NonFiniteLossError",
    "train",
]

# ----------------------------------------------------------------- configuration


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A T5 preset plus overrides and loss options; built once the task's
    vocabulary is known.

    Attributes:
      preset: a ``network.PRESETS`` name (``t5_1_1_small``, ...).
      overrides: ``T5Config`` fields to change (``num_encoder_layers``, ``dtype``...).
      dropout_rate: ``DROPOUT_RATE`` (None keeps the preset's).
      vocab_size: embedding rows; None = the task's output vocabulary size
        rounded up to a multiple of 128 (32,128 for T5's SentencePiece, 128 for
        the compact domain vocabulary).
      z_loss, label_smoothing, loss_normalizing_factor: the loss
        (``model.EncoderDecoderModel``'s arguments).
    """

    preset: str
    overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    dropout_rate: float | None = None
    vocab_size: int | None = None
    z_loss: float = 0.0
    label_smoothing: float = 0.0
    loss_normalizing_factor: str | float = "tokens"

    def config(self, vocabulary=None):
        """The network's ``T5Config``."""
        from explistops_jax import network

        overrides = dict(self.overrides)
        if self.dropout_rate is not None:
            overrides["dropout_rate"] = self.dropout_rate
        if self.vocab_size is not None:
            overrides["vocab_size"] = self.vocab_size
        elif vocabulary is not None:
            overrides["vocab_size"] = 128 * math.ceil(vocabulary.vocab_size / 128)
        return network.get_config(self.preset, **overrides)

    def build(self, vocabulary=None):
        """The ``model.EncoderDecoderModel`` for ``vocabulary``."""
        from explistops_jax import model as model_lib

        return model_lib.EncoderDecoderModel(
            self.config(vocabulary), z_loss=self.z_loss,
            label_smoothing=self.label_smoothing,
            loss_normalizing_factor=self.loss_normalizing_factor)


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Periodic evaluation during training (decode + the task's metrics).

    Attributes:
      period: evaluate every ``period`` steps (``EVAL_PERIOD``) and at the end;
        None or 0: only at the end.
      mixture_or_task_name: what to evaluate (default: the training task).
      split: the split to decode.
      batch_size: rows per decoding batch.
      max_examples: decode only the first N examples (None: the whole split).
      task_feature_lengths: default: the training lengths.
    """

    period: int | None = 1000
    mixture_or_task_name: str | None = None
    split: str = "validation"
    batch_size: int = 32
    max_examples: int | None = None
    task_feature_lengths: Mapping[str, int] | None = None


@dataclasses.dataclass
class TrainResult:
    """What a finished (or stopped) run reports."""

    model_dir: str
    step: int
    metrics: dict[str, float]
    eval_metrics: dict[str, Any] = dataclasses.field(default_factory=dict)


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the run stopped without saving it."""


# ----------------------------------------------------------------- the loop


class _Loop:
    """Runs steps, keeps one step in flight, logs, checks, evaluates, saves."""

    def __init__(self, *, step_fn, stream, checkpoints, writer, progress, evaluator,
                 eval_period, total_steps, run_info, partitioner, compiling=None,
                 throughput: throughput_lib.Throughput | None = None,
                 profile: summaries.StepProfile | None = None):
        self.step_fn = step_fn
        self.throughput = throughput
        self.profile = profile
        self._compiling = compiling  # (future, batch) from _compile_ahead, or None
        self.stream = stream
        self.checkpoints = checkpoints
        self.writer = writer
        self.progress = progress
        self.evaluator = evaluator
        self.eval_period = eval_period
        self.total_steps = total_steps
        self.run_info = run_info
        self.partitioner = partitioner
        self.last_metrics: dict[str, float] = {}
        self.eval_metrics: dict[str, Any] = {}
        self._pending: list[tuple[int, Any, float]] = []  # (step, device metrics, tokens)
        self._compiled = None
        self.compile_time_s = 0.0
        self._last_time = time.perf_counter()

    def run(self, state: TrainState, position: input_pipeline.Position) -> TrainState:
        step = int(jax.device_get(state.step))
        batches = self.stream.iterate(position)
        while step < self.total_steps:
            item = next(batches, None)
            if item is None:
                break  # the data ended (EPOCHS) before total_steps
            position, batch = item
            tokens = float(batch["decoder_loss_weights"].sum())  # this process's
            batch = self.partitioner.shard_batch(batch)
            if self._compiled is None:
                self._compile(state, batch)
            if self.profile is not None:
                self.profile.before(step + 1)
            state, metrics = self._compiled(state, batch)
            step += 1
            if self.profile is not None:
                self.profile.after(step, (state, metrics))
            self._flush(keep_last=True)  # the previous step's metrics
            self._pending.append((step, metrics, tokens))
            last = step == self.total_steps
            if self.checkpoints.is_due(step) or last:
                self._flush()
                self.checkpoints.save(state, position.to_json(), self.run_info)
                self.writer.flush()  # logs up to the checkpoint readable on any store
            if self.evaluator is not None and (last or _due(step, self.eval_period)):
                self._flush()
                self._evaluate(state, step)
        self._flush()
        if not self.checkpoints.has(step):  # the data ended early
            self.checkpoints.save(state, position.to_json(), self.run_info)
            if self.evaluator is not None:
                self._evaluate(state, step)
        return state

    def _compile(self, state: TrainState, batch: Mapping[str, jax.Array]) -> None:
        """The compiled step: the one compiled ahead (waited for) when its batch
        was laid out as this one, else compiled now; either way before the first
        step, so that compilation is not timed as a training step."""
        start = time.perf_counter()
        compiled = None
        if self._compiling is not None:
            (future, template), self._compiling = self._compiling, None
            if _same_layout(batch, template):
                try:
                    compiled = future.result()
                except Exception as err:  # compiled again below, where it raises
                    logging.warning("compiling the step ahead failed (%s: %s)",
                                    type(err).__name__, err)
        self._compiled = compiled or self.step_fn.lower(state, batch).compile()
        self.compile_time_s = time.perf_counter() - start
        logging.info("train step compiled in %.1f s", self.compile_time_s)
        self._last_time = time.perf_counter()

    def _flush(self, keep_last: bool = False) -> None:
        """Fetches, checks and logs the metrics of finished steps (all, or all
        but the newest one, which may still be running)."""
        while len(self._pending) > (1 if keep_last else 0):
            step, metrics, tokens = self._pending.pop(0)
            host = {k: float(v) for k, v in jax.device_get(metrics).items()}
            now = time.perf_counter()
            step_time, self._last_time = now - self._last_time, now
            record = _summarize(host, tokens, step_time, self.throughput)
            bad = [k for k in ("loss", "grad_norm")
                   if k in host and not math.isfinite(host[k])]
            if bad:
                self._pending.clear()
                self.checkpoints.wait()
                raise NonFiniteLossError(
                    f"{', '.join(f'{k} is {host[k]}' for k in bad)} at step {step}; "
                    f"stopped without saving it. The last good checkpoint is step "
                    f"{self.checkpoints.latest_step()} in {self.checkpoints.directory}")
            self.last_metrics = record
            self.writer.write_train(step, record)
            self.progress.update(1, loss=record["loss"])

    def _evaluate(self, state: TrainState, step: int) -> None:
        self.progress.write(f"evaluating at step {step} ...")
        start = time.perf_counter()
        results = self.evaluator.evaluate(state.params, step)
        seconds = (time.perf_counter() - start) / max(len(results), 1)
        for (task, split), metrics in results.items():
            self.writer.write_eval(step, task, split, metrics, seconds)
            self.eval_metrics[f"{task}/{split}"] = metrics
            self.progress.write(f"step {step} {task}/{split}: " + ", ".join(
                f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, (int, float))))
        self._last_time = time.perf_counter()  # eval time is not step time


def _compile_ahead(step_fn, abstract_state: TrainState, batch: Mapping[str, jax.Array]):
    """Starts compiling the train step for the state's shapes and a batch laid out
    like the stream's, in a thread: XLA compiles without holding the GIL, so this
    overlaps the state's initialisation or restoration (its own compilation
    included). Not a daemon thread: the interpreter waits for it at exit. A
    daemon thread still inside XLA when Python finalises is unwound through C++
    frames that do not allow it, and the process aborts ("FATAL: exception not
    rethrown", SIGABRT) instead of exiting with the run's error (a missing
    INITIAL_CHECKPOINT_PATH, say, found while the step compiles). Returns
    (future, batch) for :meth:`_Loop._compile`."""
    future: concurrent.futures.Future = concurrent.futures.Future()

    def compile_step():
        try:
            future.set_result(step_fn.lower(abstract_state, batch).compile())
        except BaseException as err:  # handed to the loop, which compiles again
            future.set_exception(err)

    threading.Thread(target=compile_step, name="compile-train-step", daemon=False).start()
    return future, batch


def _same_layout(a: Mapping[str, jax.Array], b: Mapping[str, jax.Array]) -> bool:
    """Same features, shapes, dtypes and shardings."""
    return a.keys() == b.keys() and all(
        a[k].shape == b[k].shape and a[k].dtype == b[k].dtype
        and a[k].sharding == b[k].sharding for k in a)


def _due(step: int, period: int | None) -> bool:
    return bool(period) and step % period == 0


def _summarize(host: Mapping[str, float], tokens: float, step_time: float,
               throughput: throughput_lib.Throughput | None = None) -> dict:
    """Per-step log record: the model's metrics (loss, token accuracy, ...),
    learning rate, gradient norm, target tokens, step time, ``tokens_per_s``
    (non-padding target tokens) and, from ``throughput``,
    ``total_tokens_per_s`` (non-padding input + target tokens),
    ``model_tflops_per_s`` and ``mfu`` (``Throughput.fields``: left out where
    unknown)."""
    record = dict(host)
    record["num_tokens"] = host.get("num_tokens", tokens)
    record["step_time_s"] = step_time
    record["tokens_per_s"] = record["num_tokens"] / step_time if step_time > 0 else 0.0
    if throughput is not None:
        record.update(throughput.fields(step_time, host.get("num_input_tokens"),
                                        record["num_tokens"]))
    return record


# ----------------------------------------------------------------- train()


def train(
    model,
    data: input_pipeline.DataConfig,
    model_dir: rundir.PathLike,
    *,
    optimizer: optimizers.Optimizer | None = None,
    train_steps: int | None = None,
    initial_checkpoint_path: str | None = None,
    checkpoint: CheckpointConfig = CheckpointConfig(),
    partition: partitioning.PartitionConfig = partitioning.PartitionConfig(),
    evaluation: EvalConfig | None = None,
    num_microbatches: int = 1,
    seed: int = 0,
    progress: bool | None = None,
    run_info: Mapping[str, Any] | None = None,
    allow_truncation: bool = False,
    profile_steps: str | tuple[int, int] | None = None,
    peak_flops: float | None = None,
) -> TrainResult:
    """Trains (or resumes training) and returns the final metrics.

    Args:
      model: a :class:`ModelSpec` (built for the task's vocabulary) or a model
        object (``get_initial_variables``, ``loss_fn``, ``predict_batch``).
      data: the training stream; ``data.num_epochs`` (``EPOCHS``) bounds it.
      model_dir: the run directory (``MODEL_DIR``): a local path or a URL that
        ``etils.epath`` opens (``gs://bucket/run``); a run already in it resumes.
      optimizer: default: Adafactor with T5's fine-tuning defaults.
      train_steps: total optimizer steps (``TRAIN_STEPS``), counted from 0 in
        this run (an initial checkpoint's step is not carried over); None: as
        many as ``data.num_epochs`` epochs give. With both, the smaller.
      initial_checkpoint_path: parameters to start from (``INITIAL_CHECKPOINT_PATH``:
        Hugging Face, T5X or explistops; read by ``checkpoints.load_any``);
        ignored when ``model_dir`` already has a checkpoint.
      checkpoint: save period, how many to keep, async.
      partition: the mesh (model-parallel ways) and logical axis rules.
      evaluation: periodic decoding + metrics (None: no evaluation).
      num_microbatches: gradient accumulation (the batch must divide).
      seed: initialisation and dropout; the data order has its own (``data.seed``).
      progress: a progress bar: None (default) when standard error is a terminal,
        True always, False never.
      run_info: extra facts to record in ``run.json`` and every checkpoint.
      allow_truncation: train (and validate) even though the feature lengths
        cut some examples; their counts are recorded in ``run.json``
        (``truncated``). Without it such a run stops before anything is written.
      profile_steps: ``"A:B"`` or ``(A, B)``: a ``jax.profiler`` trace of steps
        A to B (counted from 1, as logged) in ``MODEL_DIR/tensorboard/train``
        (TensorBoard's profile tab; ``summaries.StepProfile``). None: no trace.
      peak_flops: peak FLOP/s of one device, for the logged MFU; default: the
        device kind's dense bfloat16 peak (``throughput.PEAK_BF16_FLOPS``), and
        no MFU where the kind is not there (a CPU).

    Raises:
      lengths.TruncationError: the lengths would cut examples of the training
        or validation split (checked before anything is written).
      NonFiniteLossError: the loss became NaN/inf (the run dir keeps the last
        good checkpoint).
    """
    summaries.parse_profile_steps(profile_steps)  # bad values fail before anything runs
    peak_flops = throughput_lib.check_peak_flops(peak_flops)
    truncated = check_lengths(data, evaluation, allow_truncation=allow_truncation)
    model_dir = rundir.run_path(model_dir)  # local (absolute) or a URL (gs://...)
    is_chief = jax.process_index() == 0
    if is_chief:
        model_dir.mkdir(parents=True, exist_ok=True)
    partitioner = partitioning.Partitioner(partition)
    partitioner.local_batch_size(data.batch_size)  # validates the batch size
    if num_microbatches < 1 or data.batch_size % num_microbatches:
        raise ConfigError(f"batch size {data.batch_size} is not divisible by "
                          f"num_microbatches={num_microbatches}",
                          where="train.num_microbatches",
                          expected=f"a divisor of {data.batch_size}")
    shard_index, num_shards = partitioner.data_shard
    stream = input_pipeline.BatchStream(data, shard_index=shard_index, num_shards=num_shards)
    model = _build_model(model, stream.vocabulary)
    total_steps = _total_steps(train_steps, stream)
    profile_range = summaries.parse_profile_steps(profile_steps, total_steps)
    tx, schedule = (optimizer or optimizers.adafactor()).build(total_steps)

    checkpoints = RunCheckpoints(model_dir, checkpoint)
    # Closed however the run ends: bar, writer, then checkpoints (last in, first out);
    # a write that fails (a full disk) is one WriteError naming the checkpoint a
    # rerun resumes from, reported once.
    with contextlib.ExitStack() as cleanup, checkpoints.writing():
        cleanup.callback(checkpoints.close)
        if (checkpoints.latest_step() or 0) >= total_steps:  # finished earlier
            return _finished(model_dir, checkpoints.latest_step())
        layout = state_layout(model, tx, partitioner)
        info = {**run_info_lib.training_facts(getattr(model, "config", None), data,
                                               total_steps), **(run_info or {})}
        if truncated:
            info["truncated"] = truncated
        step_fn = partitioner.jit(
            make_train_step(model, tx, schedule, num_microbatches),
            in_shardings=(layout.shardings, partitioner.batch_sharding()),
            out_shardings=(layout.shardings, partitioner.sharding()),
            donate_argnums=0)
        template = partitioner.shard_batch(stream.empty_batch())  # global shapes
        compiling = _compile_ahead(step_fn, layout.abstract, template)
        rates = _throughput(model, template, partitioner, peak_flops)
        state, position = _start(checkpoints, layout, model, tx, partitioner, seed,
                                 initial_checkpoint_path)
        start_step = int(jax.device_get(state.step))
        if is_chief:
            run = RunDir(model_dir)
            summaries.truncate_log(run.train_log, start_step)
            summaries.truncate_log(run.eval_log, start_step)
            run_info_lib.write(model_dir, info)

        evaluator = _make_evaluator(evaluation, model, partitioner, data, model_dir)
        writer = summaries.MetricsWriter(model_dir, enabled=is_chief)
        cleanup.callback(_guarded, checkpoints, writer.close)
        bar = summaries.Progress(total_steps, start_step,
                                 enabled=progress if is_chief else False)
        cleanup.callback(bar.close)
        profile = summaries.StepProfile(profile_range, RunDir(model_dir).tensorboard("train"),
                                        enabled=is_chief)
        cleanup.callback(profile.close)
        loop = _Loop(step_fn=step_fn, stream=stream, checkpoints=checkpoints, writer=writer,
                     progress=bar, evaluator=evaluator,
                     eval_period=evaluation.period if evaluation else None,
                     total_steps=total_steps, run_info=info, partitioner=partitioner,
                     compiling=compiling, throughput=rates, profile=profile)
        state = loop.run(state, position)
    return TrainResult(str(model_dir), int(jax.device_get(state.step)),
                       loop.last_metrics, loop.eval_metrics)


def _throughput(model, batch: Mapping[str, jax.Array], partitioner,
                peak_flops: float | None) -> throughput_lib.Throughput:
    """The run's FLOPs per step (from the global batch's shapes) and the peak
    of the mesh's devices; logged once."""
    rows, inputs = batch["encoder_input_tokens"].shape
    rates = throughput_lib.Throughput.for_run(
        getattr(model, "config", None), rows, (inputs, batch["decoder_target_tokens"].shape[1]),
        partitioner.mesh.devices.flat, peak_flops)
    logging.info("throughput: %s", rates.describe())
    return rates


def _guarded(checkpoints: RunCheckpoints, close) -> None:
    with checkpoints.writing():
        close()


def check_lengths(data: input_pipeline.DataConfig, evaluation: EvalConfig | None = None,
                  *, allow_truncation: bool = False) -> dict[str, int]:
    """Whether the training split (and the validation split, with its lengths)
    fits the run's feature lengths: ``{"task/split": examples cut}``, empty when
    everything fits. Raises ``lengths.TruncationError`` for a cut unless
    ``allow_truncation``."""
    from explistops_jax import lengths

    cut = lengths.check_fit(data.mixture_or_task_name, [data.split],
                            data.task_feature_lengths, allow=allow_truncation)
    if evaluation is not None:
        cut.update(lengths.check_fit(
            evaluation.mixture_or_task_name or data.mixture_or_task_name,
            [evaluation.split], evaluation.task_feature_lengths or data.task_feature_lengths,
            allow=allow_truncation, limit=evaluation.max_examples,
            where="EvalConfig.task_feature_lengths" if evaluation.task_feature_lengths
            else "TASK_FEATURE_LENGTHS"))
    return cut


def _finished(model_dir: rundir.PathLike, step: int) -> TrainResult:
    """The result of a run that already reached its last step, from its logs."""
    def records(path):
        return [r for r in rundir.read_jsonl(path, lenient=True) if r.get("step") == step]

    run = RunDir(model_dir)
    train_records = records(run.train_log)
    metrics = {k: v for k, v in (train_records[-1] if train_records else {}).items()
               if k != "step"}
    evals = {f"{r['task']}/{r['split']}": {k: v for k, v in r.items()
                                           if k not in ("step", "task", "split")}
             for r in records(run.eval_log)}
    logging.info("%s is already trained to step %d", model_dir, step)
    return TrainResult(str(model_dir), step, metrics, evals)


def _build_model(model, vocabulary):
    if isinstance(model, ModelSpec):
        return model.build(vocabulary)
    return model


def _total_steps(train_steps: int | None, stream: input_pipeline.BatchStream) -> int:
    from_epochs = stream.total_steps()
    if train_steps is None and from_epochs is None:
        raise UserError("the run has no length", expected="TRAIN_STEPS or EPOCHS")
    candidates = [s for s in (train_steps, from_epochs) if s is not None]
    return min(candidates)


def _start(checkpoints, layout, model, tx, partitioner, seed,
           initial_checkpoint_path) -> tuple[TrainState, input_pipeline.Position]:
    """The latest checkpoint of this run, else a new state."""
    if checkpoints.latest_step() is not None:
        state, data = checkpoints.restore(layout.abstract)
        logging.info("resuming from step %d", int(jax.device_get(state.step)))
        return state, input_pipeline.Position.from_json(data)
    initial_params = None
    if initial_checkpoint_path:
        from explistops_jax import checkpoints as interop

        _, initial_params = interop.load_any(initial_checkpoint_path,
                                             getattr(model, "config", None))
    state = initial_state(model, tx, partitioner, layout, seed, initial_params)
    return state, input_pipeline.Position()


def _make_evaluator(evaluation: EvalConfig | None, model, partitioner, data, model_dir):
    if evaluation is None:
        return None
    from explistops_jax import evaluator as evaluator_lib

    return evaluator_lib.Evaluator(
        model, evaluation.mixture_or_task_name or data.mixture_or_task_name,
        evaluation.split, allow_truncation=True,  # checked (and allowed) before training
        task_feature_lengths=evaluation.task_feature_lengths or data.task_feature_lengths,
        batch_size=evaluation.batch_size, max_examples=evaluation.max_examples,
        model_dir=model_dir, partitioner=partitioner, use_cached=data.use_cached,
        data_backend=data.data_backend)
