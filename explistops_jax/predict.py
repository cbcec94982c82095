"""Predicting single expressions: a model's explanation and answer for ListOps
expressions typed by a user (``explistops predict``), through the task's own
preprocessing and the evaluator's decoder and scoring.

The task comes from :func:`explistops_jax.backends.get_input` (which chooses the
input backend once: the project's own tasks without TensorFlow, others through
SeqIO) and is read through its interface (:class:`~explistops_jax.backends.InputTask`):
its spec says its style and dataset, so no name is parsed here."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from explistops_jax import backends, decoding, task_spec
from explistops_jax.errors import UserError
from explistops_jax.evaluator import Decoder, describe_prediction
from explistops_jax.train_state import load_model_and_params

__all__ = ["predict_expressions", "dataset_modulus", "task_for"]


def predict_expressions(
    checkpoint: str | Path,
    expressions: Sequence[str],
    *,
    mixture_or_task_name: str | None = None,
    style: str | None = None,
    modulus: int | None = None,
    task_feature_lengths: Mapping[str, int] | None = None,
    decode: Mapping[str, Any] | decoding.GenerateConfig | None = None,
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
      decode: decoding options named as Hugging Face ``generate`` names them
        (``num_beams``, ``do_sample``, ``temperature``, ``top_k``, ``top_p``,
        ``max_new_tokens``; see ``decoding.GenerateConfig``); default greedy.
      data_backend: ``"grain"`` (SeqIO for tasks that are not the project's
        own) or ``"seqio"``.

    Returns:
      one dict per expression: ``expression``, ``input``, ``prediction`` (text),
      ``answer``, ``true_answer``, ``correct``, ``steps`` and the other fields
      of ``scoring.score_example``.
    """
    from explistops_jax import own_tasks

    decode = decoding.GenerateConfig.from_options(decode)  # a mistake fails before loading
    model, params, _, info = load_model_and_params(checkpoint, step=step)
    task = task_for(mixture_or_task_name or info.get("mixture_or_task_name"), style,
                    data_backend=data_backend)
    if modulus is None:
        modulus = _spec_modulus(task.spec)
    lengths = dict(task_feature_lengths or info.get("task_feature_lengths")
                   or {"inputs": 512, "targets": 512})
    raw = own_tasks.raw_examples_for(expressions, modulus)
    examples, rows = task.preprocess_raw(raw, lengths)
    decoder = Decoder(model, batch_size=len(rows), decode=decode, progress=False)  # one batch
    vocab = task.vocabulary
    return [describe_prediction(ex, task, vocab.decode(tokens.tolist()))
            for ex, tokens in zip(examples, decoder.predict_tokens(params, rows))]


def dataset_modulus(task_name: str) -> int:
    """The SM modulus of the dataset a task is named after (default: scoring's)."""
    return _spec_modulus(task_spec.spec_of(task_name))


def _spec_modulus(spec: task_spec.TaskSpec | task_spec.MixtureSpec | None) -> int:
    """The SM modulus of a spec's dataset config; scoring's default for a task of
    another project or a dataset that is not registered."""
    from explistops_jax import data, scoring

    config = data.DATASETS.get(spec.dataset) if spec is not None else None
    return config.modulus if config else scoring.DEFAULT_MODULUS


def task_for(name: str | None, style: str | None, *,
             data_backend: str = "grain") -> backends.InputTask:
    """The task to preprocess inputs with: ``name`` (a mixture's member of
    ``style``, default its medium member; a task of another style when ``style``
    differs and that task exists), else ``explistops30_<style>``; read by the
    backend ``backends.get_input`` chooses."""
    if not name:
        if style is None:
            raise UserError("the checkpoint does not say which task it was trained on",
                            expected="--task NAME or --style STYLE")
        name = task_spec.TaskSpec("explistops30", style).name
    found = backends.get_input(name, data_backend, training=False)
    members = found.tasks
    if found.is_mixture:
        chosen = [t for t in members if style and task_spec.style_of(t.spec) == style]
        if not chosen and style is None:
            chosen = [t for t in members if task_spec.style_of(t.spec) == "medium"] or list(members)
        if not chosen:
            raise UserError(f"mixture {name!r} has no member of style {style!r}",
                            expected=", ".join(t.name for t in members))
        return chosen[0]
    (task,) = members
    if style is None:
        return task
    return task.with_style(style) or task


