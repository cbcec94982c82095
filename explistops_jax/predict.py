"""Predicting single expressions: a model's explanation and answer for ListOps
expressions typed by a user (``explistops predict``), through the task's own
preprocessing and the evaluator's decoder and scoring."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from explistops_jax import input_pipeline  # first: keeps TF off the GPUs
from explistops_jax.errors import UserError
from explistops_jax.evaluator import Decoder, describe_prediction
from explistops_jax.train_state import load_model_and_params

import seqio  # noqa: E402  (after input_pipeline)

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

    Returns:
      one dict per expression: ``expression``, ``input``, ``prediction`` (text),
      ``answer``, ``true_answer``, ``correct``, ``steps`` and the other fields
      of ``scoring.score_example``.
    """
    import tensorflow as tf

    from explistops_jax import listops

    model, params, _, info = load_model_and_params(checkpoint, step=step)
    task = task_for(mixture_or_task_name or info.get("mixture_or_task_name"), style)
    if modulus is None:
        modulus = dataset_modulus(task.name)
    lengths = dict(task_feature_lengths or info.get("task_feature_lengths")
                   or {"inputs": 512, "targets": 512})
    trees = [listops.parse(e) for e in expressions]
    raw = {"id": [f"predict/{i}" for i in range(len(trees))],
           "index": np.arange(len(trees), dtype=np.int64),
           "expression": [listops.format(t) for t in trees],
           "answer": np.array([listops.evaluate(t, modulus) for t in trees], np.int32),
           "length": np.array([listops.length(t) for t in trees], np.int32),
           "depth": np.array([listops.depth(t) for t in trees], np.int32),
           "modulus": np.full(len(trees), modulus, np.int32)}
    ds = task.preprocess_precache(tf.data.Dataset.from_tensor_slices(raw))
    ds = task.preprocess_postcache(ds, sequence_length=lengths)
    examples = list(ds.as_numpy_iterator())
    features = list(input_pipeline.feature_converter(False)(ds, lengths).as_numpy_iterator())
    decoder = Decoder(model, batch_size=len(features), decode=decode)
    vocab = task.output_features["targets"].vocabulary
    return [describe_prediction(ex, task, vocab.decode(tokens.tolist()))
            for ex, tokens in zip(examples, decoder.predict_tokens(params, features))]


def dataset_modulus(task_name: str) -> int:
    """The SM modulus of the dataset a task is named after (default: scoring's)."""
    from explistops_jax import data, scoring, task_spec

    try:
        dataset = task_spec.parse(task_name).dataset
    except UserError:  # a task of another project
        return scoring.DEFAULT_MODULUS
    config = data.DATASETS.get(dataset)
    return config.modulus if config else scoring.DEFAULT_MODULUS


def task_for(name: str | None, style: str | None) -> seqio.Task:
    """The task to preprocess inputs with: ``name`` (a mixture's member of
    ``style``; a task of another style when ``style`` differs), else
    ``explistops30_<style>``."""
    from explistops_jax.task_spec import TaskSpec

    if not name:
        if style is None:
            raise UserError("the checkpoint does not say which task it was trained on",
                            expected="--task NAME or --style STYLE")
        name = TaskSpec("explistops30", style).name
    provider = input_pipeline.get_provider(name)
    if isinstance(provider, seqio.Mixture):
        members = seqio.get_subtasks(provider)
        chosen = [t for t in members if style and style_of(t.name) == style]
        if not chosen and style is None:
            chosen = [t for t in members if style_of(t.name) == "medium"] or members
        if not chosen:
            raise UserError(f"mixture {name!r} has no member of style {style!r}",
                            expected=", ".join(t.name for t in members))
        return chosen[0]
    if style is not None and style_of(name) not in (None, style):
        candidate = TaskSpec.parse(name).replace(style=style).name
        if candidate in seqio.TaskRegistry.names():
            return seqio.get_mixture_or_task(candidate)
    return provider


def style_of(task_name: str) -> str | None:
    """The explanation style of one of our tasks; None for another project's task."""
    from explistops_jax.task_spec import TaskSpec

    try:
        return TaskSpec.parse(task_name).style
    except UserError:
        return None
