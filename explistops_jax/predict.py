"""Predicting single expressions: a model's explanation and answer for ListOps
expressions typed by a user (``explistops predict``), through the task's own
preprocessing and the evaluator's decoder and scoring.

The task is read by an input backend (``input_pipeline.resolve_backend``): the
project's own tasks without TensorFlow (``own_tasks``), others through SeqIO."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from explistops_jax import input_pipeline
from explistops_jax.errors import UserError
from explistops_jax.evaluator import Decoder, describe_prediction
from explistops_jax.train_state import load_model_and_params

__all__ = ["predict_expressions", "dataset_modulus", "task_for", "style_of"]


def predict_expressions(
    checkpoint: str | Path,
    expressions: Sequence[str],
    *,
    mixture_or_task_name: str | None = None,
    style: str | None = None,
    modulus: int | None = None,
    task_feature_lengths: Mapping[str, int] | None = None,
    decode: Mapping[str, Any] | None = None,
    step: int | None = None,
    data_backend: str = "grain",
) -> list[dict]:
    """The model's explanation and parsed answer for ListOps expressions.

    Each expression (bracket or parenthesized notation) goes through the
    task's own preprocessors (so a ``_tagged`` task gets its style prefix, the
    task's vocabulary tokenizes it) and is decoded like an evaluation example.

    Args:
      checkpoint: as for ``train_state.load_model_and_params``.
      expressions: ListOps expressions.
      mixture_or_task_name: default: the run's task (for a mixture, the member
        of ``style``); a checkpoint from another tool needs it or ``style``
        (``explistops30_<style>``).
      style: the explanation style to ask for, for runs on several styles
        (``_all_styles`` mixtures) or to pick the task of a foreign checkpoint.
      modulus: of SM, for the true answer and the scoring; default: the
        modulus of the task's dataset config (30 when the task names none).
      data_backend: ``"grain"`` (SeqIO for tasks that are not the project's
        own) or ``"seqio"``.

    Returns:
      one dict per expression: ``expression``, ``input``, ``prediction`` (text),
      ``answer``, ``true_answer``, ``correct``, ``steps`` and the other fields
      of ``scoring.score_example``.
    """
    from explistops_jax import features, own_tasks

    model, params, _, info = load_model_and_params(checkpoint, step=step)
    task = task_for(mixture_or_task_name or info.get("mixture_or_task_name"), style,
                    data_backend=data_backend)
    if modulus is None:
        modulus = dataset_modulus(task.name)
    lengths = dict(task_feature_lengths or info.get("task_feature_lengths")
                   or {"inputs": 512, "targets": 512})
    raw = own_tasks.raw_examples_for(expressions, modulus)
    if isinstance(task, own_tasks.OwnTask):
        examples = [task.preprocess(r, lengths) for r in raw]
        rows = [features.pad_example(ex, lengths) for ex in examples]
    else:
        from explistops_jax import seqio_backend

        examples, rows = seqio_backend.preprocess_raw(task, raw, lengths)
    decoder = Decoder(model, batch_size=len(rows), decode=decode)
    vocab = task.output_features["targets"].vocabulary
    return [describe_prediction(ex, task, vocab.decode(tokens.tolist()))
            for ex, tokens in zip(examples, decoder.predict_tokens(params, rows))]


def dataset_modulus(task_name: str) -> int:
    """The SM modulus of the dataset a task is named after (default: scoring's)."""
    from explistops_jax import data, scoring, task_spec

    try:
        dataset = task_spec.parse(task_name).dataset
    except UserError:  # a task of another project
        return scoring.DEFAULT_MODULUS
    config = data.DATASETS.get(dataset)
    return config.modulus if config else scoring.DEFAULT_MODULUS


def task_for(name: str | None, style: str | None, *, data_backend: str = "grain"):
    """The task to preprocess inputs with: ``name`` (a mixture's member of
    ``style``; a task of another style when ``style`` differs), else
    ``explistops30_<style>``. An ``own_tasks.OwnTask`` when the grain backend
    reads it, else the registered ``seqio.Task``."""
    from explistops_jax.task_spec import TaskSpec

    if not name:
        if style is None:
            raise UserError("the checkpoint does not say which task it was trained on",
                            expected="--task NAME or --style STYLE")
        name = TaskSpec("explistops30", style).name
    if style is not None and style_of(name) not in (None, style):
        TaskSpec.parse(name).replace(style=style)  # an unknown style fails here
    backend = input_pipeline.resolve_backend(name, data_backend, training=False)
    if backend == "grain":
        from explistops_jax import own_tasks

        members = own_tasks.get_tasks(name)

        def lookup(candidate):
            return own_tasks.OwnTask(TaskSpec.parse(candidate)) if own_tasks.is_own(
                candidate) else None
    else:
        from explistops_jax import seqio_backend

        members = seqio_backend.subtasks(name)
        known = set(seqio_backend.seqio.TaskRegistry.names())

        def lookup(candidate):
            return seqio_backend.get_provider(candidate) if candidate in known else None
    if len(members) > 1 or members[0].name != name:  # a mixture
        chosen = [t for t in members if style and style_of(t.name) == style]
        if not chosen and style is None:
            chosen = [t for t in members if style_of(t.name) == "medium"] or members
        if not chosen:
            raise UserError(f"mixture {name!r} has no member of style {style!r}",
                            expected=", ".join(t.name for t in members))
        return chosen[0]
    if style is not None and style_of(name) not in (None, style):
        candidate = TaskSpec.parse(name).replace(style=style).name
        found = lookup(candidate)
        if found is not None:
            return found
    return members[0]


def style_of(task_name: str) -> str | None:
    """The explanation style of one of our tasks; None for another project's task."""
    from explistops_jax.task_spec import TaskSpec

    try:
        return TaskSpec.parse(task_name).style
    except UserError:
        return None
