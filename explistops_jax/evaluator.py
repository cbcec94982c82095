"""Decode a task split and score it with the task's own postprocessing and metrics.

:class:`Evaluator` reads a split once (the examples, their model features and
the postprocessed targets), then for each set of parameters decodes every
example (``model.predict_batch``: greedy by default, stopping early once every
row has produced EOS; the ``decode`` options are Hugging Face ``generate``'s
names, see :class:`~explistops_jax.decoding.GenerateConfig`), with a progress
bar (rate, ETA) when standard error is a terminal, and scores the predictions
exactly as ``seqio.Evaluator`` does with a task's legacy ``metric_fns``:

- targets: ``task.postprocess_fn(targets_pretokenized, example=ex, is_target=True)``
  (the decoded ``targets`` when there is no pretokenized text);
- predictions: ``task.postprocess_fn(vocab.decode(tokens), example=ex,
  is_target=False)``;
- ``metric_fn(targets, predictions)`` for every predict metric,
  ``metric_fn(targets, scores)`` (``model.score_batch``) for every score metric.

The tasks come from :func:`explistops_jax.backends.get_input`, which chooses
the input backend once (grain for the project's own tasks and the members of
their mixtures, SeqIO for registered tasks or when ``data_backend="seqio"``);
the evaluator reads them through their common interface
(:class:`~explistops_jax.backends.InputTask`), and both give the same
examples, features, files and metrics.

It writes, atomically (a temporary file renamed into place), per task and split::

    <output_dir>/eval/<task>/<split>/predictions_<step>.jsonl
        one line per example: index, input, target, prediction (raw text),
        answer (parsed), target_answer, correct, steps (parsed explanation
        steps), plus the scoring fields of explistops tasks
    <output_dir>/eval/<task>/<split>/metrics_<step>.json
        {"step", "task", "split", "num_examples", "metrics": {...}}

:func:`evaluate` is the standalone entry point (``python -m explistops_jax.eval``,
``explistops eval``): it restores a checkpoint of any supported format and runs
one :class:`Evaluator`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import sys
import time
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from explistops_jax import backends, decoding, input_pipeline, partitioning, rundir, train_state
from explistops_jax import lengths as lengths_lib
from explistops_jax.errors import UserError
from explistops_jax.rundir import RunDir

__all__ = ["Decoder", "Evaluator", "evaluate", "describe_prediction", "eval_dir"]


def eval_dir(output_dir: rundir.PathLike, task: str, split: str) -> epath.Path:
    """Where an evaluation of ``task``/``split`` writes its files
    (``rundir.RunDir.eval_dir``)."""
    return RunDir(output_dir).eval_dir(task, split)


@dataclasses.dataclass
class _TaskSplit:
    """One task's split, read once: raw examples, features, targets."""

    task: backends.InputTask
    examples: list[dict]                 # numpy examples (all fields)
    features: list[dict[str, np.ndarray]]  # converter output, one per example
    targets: list[Any]                   # postprocessed targets


class Decoder:
    """``model.predict_batch`` / ``score_batch`` over a list of feature dicts,
    in fixed-size batches (one compilation; the last batch is padded with zero
    rows) sharded over the mesh's data axis.

    ``batch_size`` is rounded up to a multiple of the data-parallel size;
    ``decode``: the decoding options (``decoding.GenerateConfig``, or a dict of
    its fields: ``num_beams``, ``do_sample``, ``temperature``, ``top_k``,
    ``top_p``, ``max_new_tokens``, ...; default greedy), checked here.
    Sampling draws batch i with ``fold_in(key(seed), i)``: the same seed and
    batch size give the same tokens. ``progress``: a tqdm bar over the
    examples (None: only when standard error is a terminal; False: never;
    True: always), on process 0 only.
    """

    def __init__(self, model, partitioner: partitioning.Partitioner | None = None,
                 batch_size: int = 32,
                 decode: Mapping[str, Any] | decoding.GenerateConfig | None = None,
                 progress: bool | None = None):
        self.model = model
        self.partitioner = partitioner or partitioning.Partitioner()
        step = self.partitioner.data_parallel_size
        self.batch_size = step * math.ceil(batch_size / step)
        self.generate = decoding.GenerateConfig.from_options(decode)
        self.progress = progress
        self._predict = None
        self._score = None

    def _batches(self, features: Sequence[Mapping[str, np.ndarray]], desc: str):
        bar = self._bar(len(features), desc)
        try:
            for start in range(0, len(features), self.batch_size):
                rows = features[start:start + self.batch_size]
                batch = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
                batch = input_pipeline.fill_rows(batch, self.batch_size)
                index, count = self.partitioner.data_shard  # this process's rows
                local = self.batch_size // count
                batch = {k: v[index * local:(index + 1) * local] for k, v in batch.items()}
                yield len(rows), self.partitioner.shard_batch(batch)
                bar.update(len(rows))
        finally:
            bar.close()

    def _bar(self, total: int, desc: str):
        """tqdm over `total` examples; disable=None lets tqdm turn it off when
        standard error is not a terminal."""
        from tqdm import tqdm

        disable = None if self.progress is None else not self.progress
        if jax.process_index() != 0:
            disable = True
        return tqdm(total=total, desc=desc, unit="ex", disable=disable, leave=False,
                    dynamic_ncols=True, file=sys.stderr)

    def _jit(self, fn, extra: tuple = ()):
        return self.partitioner.jit(
            fn, in_shardings=(None, self.partitioner.batch_sharding(), *extra),
            out_shardings=self.partitioner.sharding())

    def predict_kwargs(self) -> dict[str, Any]:
        """``model.predict_batch``'s keyword arguments for these options (the
        rng of sampling aside)."""
        g = self.generate
        kwargs: dict[str, Any] = {"method": g.method}
        if g.max_new_tokens is not None:
            kwargs["max_decode_length"] = g.max_new_tokens
        if g.do_sample:
            kwargs.update(temperature=g.temperature, top_k=g.top_k)
            if g.top_p < 1.0:  # models without nucleus sampling still take the rest
                kwargs["top_p"] = g.top_p
        elif g.num_beams > 1:
            kwargs.update(beam_size=g.num_beams, alpha=g.alpha)
        return kwargs

    def predict_tokens(self, params, features, desc: str = "decode") -> list[np.ndarray]:
        """Decoded token ids of every example (EOS-terminated, 0-padded)."""
        sample = self.generate.do_sample
        if self._predict is None:
            kwargs, model = self.predict_kwargs(), self.model

            def predict(p, b, rng):
                extra = {"rng": rng} if sample else {}
                return model.predict_batch(p, _decoder_blank(b), **kwargs, **extra)

            self._predict = self._jit(predict, extra=(None,))
        key = jax.random.key(self.generate.seed)
        out = []
        for i, (n, batch) in enumerate(self._batches(features, desc)):
            rng = jax.random.fold_in(key, i)
            try:
                tokens = self._predict(params, batch, rng)
            except TypeError as e:
                if "top_p" not in str(e):
                    raise
                raise UserError(f"top_p={self.generate.top_p}: this model's predict_batch "
                                "has no nucleus sampling", expected="top_p=1.0") from None
            out.extend(np.asarray(jax.device_get(tokens))[:n])
        return out

    def score(self, params, features, desc: str = "score") -> list[float]:
        """Log-likelihood of every example's target."""
        if self._score is None:
            self._score = self._jit(self.model.score_batch)
        out = []
        for n, batch in self._batches(features, desc):
            out.extend(np.asarray(jax.device_get(self._score(params, batch)))[:n].tolist())
        return out


class Evaluator:
    """Decodes and scores a task (or each task of a mixture) on one split.

    Args:
      model: ``predict_batch(params, batch, **decode)`` and ``score_batch``.
      mixture_or_task_name: a registered task or mixture (each sub-task that
        has the split is evaluated).
      split: the split to decode.
      task_feature_lengths: ``{"inputs": n, "targets": m}``; ``m`` is the
        maximum decode length.
      batch_size: rows per decoding batch (rounded up to a multiple of the
        data-parallel size; the last batch is padded).
      max_examples: only the first N examples of each task (None: all).
      model_dir: where to write the files (None: write nothing): a local path
        or a URL (``gs://bucket/run``, through ``etils.epath``).
      partitioner: the mesh (default: all devices, data parallel).
      use_cached: read the tasks' offline caches.
      decode: decoding options named as Hugging Face ``generate`` names them
        (``num_beams``, ``do_sample``, ``temperature``, ``top_k``, ``top_p``,
        ``max_new_tokens``; see ``decoding.GenerateConfig``); default greedy.
      progress: a progress bar while decoding and scoring (None: when standard
        error is a terminal; False: never; True: always).
      data_backend: ``"grain"`` or ``"seqio"`` (see ``backends.choose_backend``).
      allow_truncation: score even though ``task_feature_lengths`` cut some
        examples (their count goes into each metrics file as ``truncated``);
        without it, a ``lengths.TruncationError`` before anything is read.
    """

    def __init__(self, model, mixture_or_task_name: str, split: str = "validation", *,
                 task_feature_lengths: Mapping[str, int], batch_size: int = 32,
                 max_examples: int | None = None, model_dir: rundir.PathLike | None = None,
                 partitioner: partitioning.Partitioner | None = None,
                 use_cached: bool = False, decode: Mapping[str, Any] | None = None,
                 data_backend: str = "grain", allow_truncation: bool = False,
                 progress: bool | None = None):
        self.split = split
        self.lengths = dict(task_feature_lengths)
        self.model_dir = RunDir(model_dir).path if model_dir is not None else None
        self.decoder = Decoder(model, partitioner, batch_size, decode, progress)
        found = backends.get_input(mixture_or_task_name, data_backend, training=False,
                                   use_cached=use_cached)
        self.backend = found.backend
        candidates = found.tasks
        tasks = [t for t in candidates if split in t.splits]
        if not tasks:
            raise UserError(f"no task of {mixture_or_task_name!r} has a split {split!r}",
                            expected="one of " + ", ".join(sorted(
                                {s for t in candidates for s in t.splits})))
        self.truncated: dict[str, int] = {}
        for task in tasks:  # before anything is read
            self.truncated.update(lengths_lib.check_fit(
                task.name, [split], self.lengths, allow=allow_truncation, limit=max_examples))
        self.tasks = [self._read(t, max_examples) for t in tasks]

    # ----------------------------------------------------------------- reading

    def _read(self, task: backends.InputTask, max_examples: int | None) -> _TaskSplit:
        examples, features = task.read_split(self.split, self.lengths, max_examples)
        vocab = task.vocabulary
        targets = [task.postprocess_fn(_target_text(ex, vocab), example=ex, is_target=True)
                   for ex in examples]
        return _TaskSplit(task, examples, features, targets)

    # ----------------------------------------------------------------- evaluate

    def evaluate(self, params, step: int) -> dict[tuple[str, str], dict[str, Any]]:
        """Decodes and scores every task; writes the files; returns
        ``{(task, split): metrics}``."""
        results = {}
        for data in self.tasks:
            start = time.perf_counter()
            metrics, rows = self._evaluate_task(params, data)
            logging.info("%s/%s at step %d: %s (%.1f s)", data.task.name, self.split,
                         step, metrics, time.perf_counter() - start)
            if self.model_dir is not None and jax.process_index() == 0:
                self._write(data.task.name, step, metrics, rows)
            results[(data.task.name, self.split)] = metrics
        return results

    def _evaluate_task(self, params, data: _TaskSplit) -> tuple[dict, list[dict]]:
        task = data.task
        vocab = task.vocabulary
        metrics: dict[str, Any] = {}
        texts: list[str] = []
        predictions: list[Any] = []
        if task.predict_metric_fns or not task.score_metric_fns:
            tokens = self.decoder.predict_tokens(params, data.features,
                                                 f"decode {task.name}/{self.split}")
            texts = [vocab.decode(t.tolist()) for t in tokens]
            predictions = [task.postprocess_fn(text, example=ex, is_target=False)
                           for text, ex in zip(texts, data.examples)]
            for metric_fn in task.predict_metric_fns:
                metrics.update(metric_fn(data.targets, predictions))
        if task.score_metric_fns:
            scores = self.decoder.score(params, data.features,
                                        f"score {task.name}/{self.split}")
            for metric_fn in task.score_metric_fns:
                metrics.update(metric_fn(data.targets, scores))
        rows = [_row(i, ex, target, text, pred, task)
                for i, (ex, target, text, pred) in enumerate(
                    zip(data.examples, data.targets, texts, predictions))]
        return _plain(metrics), rows

    def _write(self, task: str, step: int, metrics: Mapping, rows: list[dict]) -> None:
        run = RunDir(self.model_dir)
        run.eval_dir(task, self.split).mkdir(parents=True, exist_ok=True)
        rundir.write_jsonl(run.predictions(task, self.split, step), rows)
        summary = {"step": step, "task": task, "split": self.split,
                   "num_examples": len(rows), "metrics": metrics}
        cut = self.truncated.get(f"{task}/{self.split}")
        if cut:
            summary["truncated"] = cut
        if rows and all("correct" in row for row in rows):
            # each example's correctness, in example order: what paired comparisons of
            # runs on the same split need, small enough to keep with the metrics
            summary["correct"] = "".join("1" if row["correct"] else "0" for row in rows)
        rundir.write_json(run.metrics(task, self.split, step), summary)


# ----------------------------------------------------------------- rows and values


def _decoder_blank(batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    """The batch without its targets, so decoding cannot see them."""
    return {**batch, "decoder_input_tokens": jnp.zeros_like(batch["decoder_input_tokens"]),
            "decoder_target_tokens": jnp.zeros_like(batch["decoder_target_tokens"])}


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _target_text(example: Mapping, vocab) -> str:
    if "targets_pretokenized" in example:
        return _text(example["targets_pretokenized"])
    return vocab.decode([int(t) for t in example["targets"]])


def _input_text(example: Mapping, task) -> str:
    if "inputs_pretokenized" in example:
        return _text(example["inputs_pretokenized"])
    vocab = task.output_features["inputs"].vocabulary
    return vocab.decode([int(t) for t in example["inputs"]])


def _row(index: int, example: Mapping, target: Any, text: str, prediction: Any,
         task) -> dict:
    """One predictions-file line; explistops tasks add the parsed answer, its
    correctness and the parsed steps (``scoring.score_example``)."""
    row = {"index": index, "input": _input_text(example, task),
           "target": _target_text(example, task.output_features["targets"].vocabulary),
           "prediction": text}
    if isinstance(prediction, Mapping) and "answer" in prediction:
        row["answer"] = prediction["answer"]
    if isinstance(target, Mapping) and "answer" in target:
        row["target_answer"] = target["answer"]
        if "answer" in row:
            row["correct"] = row["answer"] == target["answer"]
    if isinstance(target, Mapping) and "expression" in target:
        row.update(_scoring_fields(text, target))
    return _plain(row)


def _scoring_fields(text: str, target: Mapping) -> dict:
    """``scoring.score_example`` of an explistops prediction, plus its parsed
    steps (``explain.read_steps``); nothing if the expression does not parse."""
    from explistops_jax import explain, scoring
    from explistops_jax.errors import ListOpsError

    try:
        scored = scoring.score_example(text, target["expression"],
                                       modulus=target.get("modulus") or 30,
                                       target=target.get("text"))
    except ListOpsError:
        return {}
    scored["steps"] = [dataclasses.asdict(step) for step in explain.read_steps(text)]
    return scored


def describe_prediction(example: Mapping, task, text: str) -> dict:
    """A decoded example as plain JSON values: expression, input, prediction and
    the scoring fields (answer, true answer, correct, steps, ...)."""
    vocab = task.output_features["targets"].vocabulary
    target = task.postprocess_fn(_target_text(example, vocab), example=example, is_target=True)
    row = {"expression": _text(example["expression"]), "input": _input_text(example, task),
           "prediction": text}
    row.update(_scoring_fields(text, target))
    return _plain(row)


def _plain(value: Any) -> Any:
    """JSON-ready: numpy scalars/arrays, seqio metric values, dataclasses,
    tuples and nested dicts become plain Python."""
    seqio = sys.modules.get("seqio")  # only SeqIO's metric functions return its types
    if seqio is not None and isinstance(value, seqio.metrics.Scalar):
        return _plain(value.value)
    if seqio is not None and isinstance(value, seqio.metrics.Text):
        return value.textdata
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _plain(dataclasses.asdict(value))
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, np.generic):
        return _plain(value.item())
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN (e.g. a rate over no steps)
    return value


# ----------------------------------------------------------------- standalone


def evaluate(
    checkpoint: rundir.PathLike,
    mixture_or_task_name: str | None = None,
    split: str = "test",
    *,
    step: int | None = None,
    task_feature_lengths: Mapping[str, int] | None = None,
    batch_size: int = 32,
    max_examples: int | None = None,
    output_dir: rundir.PathLike | None = None,
    partition: partitioning.PartitionConfig = partitioning.PartitionConfig(),
    decode: Mapping[str, Any] | None = None,
    use_cached: bool = False,
    data_backend: str = "grain",
    allow_truncation: bool = False,
    progress: bool | None = None,
) -> dict[tuple[str, str], dict[str, Any]]:
    """Restores a checkpoint, decodes a task split, writes predictions and metrics.

    Args:
      checkpoint: a run directory (latest checkpoint, or ``step``), a
        ``checkpoint_N`` directory, or a Hugging Face / T5X / explistops checkpoint.
      mixture_or_task_name: default: the task the run trained on.
      split: the split to decode (``validation``, ``test``, ``len100_200``, ...).
      step: which checkpoint of a run directory (default: the latest).
      task_feature_lengths: default: the run's training lengths.
      batch_size, max_examples, decode, progress: see :class:`Evaluator`
        (``decode`` is checked before the checkpoint is read).
      output_dir: where ``eval/<task>/<split>/`` goes (default: the run
        directory; required for a foreign checkpoint).
      partition: the mesh.
      data_backend: ``"grain"`` (the default; SeqIO for tasks that are not the
        project's own) or ``"seqio"``.
      allow_truncation: see :class:`Evaluator`.

    Returns:
      ``{(task, split): metrics}``.
    """
    decode = decoding.GenerateConfig.from_options(decode)  # a mistake fails before loading
    partitioner = partitioning.Partitioner(partition)
    model, params, step, info = train_state.load_model_and_params(checkpoint, step=step,
                                                                  partitioner=partitioner)
    task = mixture_or_task_name or info.get("mixture_or_task_name")
    lengths = task_feature_lengths or info.get("task_feature_lengths")
    if not task or not lengths:
        raise UserError("which task and lengths to evaluate is not known for this "
                        "checkpoint", expected="a task name and --task_feature_lengths")
    found = rundir.find_run_checkpoint(rundir.run_path(checkpoint))
    output_dir = output_dir or (found[0].path if found else None)
    if output_dir is None:
        raise UserError("an output directory is needed for a checkpoint from "
                        "another tool", expected="--output_dir")
    evaluator = Evaluator(model, task, split, task_feature_lengths=lengths,
                          batch_size=batch_size, max_examples=max_examples,
                          model_dir=output_dir, partitioner=partitioner,
                          use_cached=use_cached, decode=decode, data_backend=data_backend,
                          allow_truncation=allow_truncation, progress=progress)
    return evaluator.evaluate(params, step)
