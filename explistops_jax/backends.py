"""Input backends behind one interface: the one place that chooses grain or SeqIO.

Two implementations meet here, and callers never branch on which:

* ``"grain"``: the project's own tasks (:class:`explistops_jax.own_tasks.OwnTask`,
  imported files :class:`~explistops_jax.own_tasks.FileTask`) in pure Python,
  without TensorFlow or a registry; batches from
  :class:`explistops_jax.grain_pipeline.GrainSource`;
* ``"seqio"``: a registered ``seqio.Task`` behind the thin adapter
  :class:`explistops_jax.seqio_backend.SeqioTask` (TensorFlow and SeqIO are
  imported only then); batches from :class:`~explistops_jax.seqio_backend.SeqioSource`.

Both satisfy :class:`InputTask`. :func:`get_input` reads a task or mixture name
once: it picks the backend (:func:`choose_backend`), and returns an
:class:`Input` holding the task objects (a mixture's members) and the batch
source of the backend it picked; :func:`get_task` is the one-task shorthand.
The trainer's batches (``input_pipeline.BatchStream``), the evaluator and predict
take these objects and never parse the name again.

The rule (:func:`choose_backend`): grain reads the project's own tasks by
default; SeqIO reads everything else (tasks a user registers, ``_tfds``/``_sp``
variants), mixtures for training (sampled as SeqIO samples them; for evaluation
grain reads their members), offline caches, and anything when
``data_backend="seqio"``. Both give the same examples and batches.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable, Mapping, Protocol, Sequence, runtime_checkable

from explistops_jax.errors import ConfigError, UserError
from explistops_jax.task_spec import MixtureSpec, TaskSpec

__all__ = ["BACKENDS", "InputTask", "Input", "choose_backend", "needs_registry",
           "get_input", "get_task"]

BACKENDS = ("grain", "seqio")


@runtime_checkable
class InputTask(Protocol):
    """One task as the input pipeline, the evaluator and predict read it.

    Attributes:
      name: the task's registered name.
      backend: ``"grain"`` or ``"seqio"``: which backend reads it.
      needs_registry: whether it reads through the SeqIO registry (TensorFlow).
      spec: its :class:`~explistops_jax.task_spec.TaskSpec` (dataset, style,
        ...) when it is one of the project's generated tasks; None otherwise.
      splits: its split names.
      vocabulary: the targets' vocabulary (``encode``/``decode``, ``eos_id``).
      output_features: ``{"inputs"|"targets": feature}`` with ``.vocabulary``
        and ``.add_eos`` (``seqio.Feature``'s fields).
      predict_metric_fns, score_metric_fns: ``metric_fn(targets, predictions |
        scores) -> dict``, as ``seqio.Task`` has them.
    """

    name: str
    backend: str

    @property
    def needs_registry(self) -> bool: ...

    @property
    def spec(self) -> TaskSpec | None: ...

    @property
    def splits(self) -> tuple[str, ...]: ...

    @property
    def vocabulary(self) -> Any: ...

    @property
    def output_features(self) -> Mapping[str, Any]: ...

    @property
    def predict_metric_fns(self) -> Sequence[Callable]: ...

    @property
    def score_metric_fns(self) -> Sequence[Callable]: ...

    def num_examples(self, split: str) -> int:
        """Examples in ``split``; a UserError naming the known splits."""

    def raw_examples(self, split: str, max_examples: int | None = None) -> list[dict]:
        """The first ``max_examples`` examples of the task's source, in order
        (before preprocessing; numpy types, as SeqIO's numpy iterator gives them)."""

    def read_split(self, split: str, lengths: Mapping[str, int],
                   max_examples: int | None = None) -> tuple[list[dict], list[dict]]:
        """The first ``max_examples`` preprocessed (tokenized, trimmed) examples
        of ``split`` in order, and their padded model features."""

    def preprocess_raw(self, raw: Sequence[Mapping[str, Any]], lengths: Mapping[str, int]
                       ) -> tuple[list[dict], list[dict]]:
        """Raw examples (``own_tasks.raw_examples_for``) through the task's
        preprocessing: the examples and their padded model features."""

    def postprocess_fn(self, output: Any, example: Mapping | None = None,
                       is_target: bool = False) -> Any:
        """A decoded text (prediction, or target with ``is_target``) -> what the
        metrics read."""

    def with_style(self, style: str) -> "InputTask | None":
        """The same task with targets of ``style`` (self when it has it), None
        when there is no such task; a UserError for an unknown style."""


def choose_backend(name: str, requested: str = "grain", *, training: bool = True,
                   use_cached: bool = False) -> str:
    """The backend that reads ``name``: ``requested``, except that grain reads
    only the project's own tasks (and, for evaluation, the members of their
    mixtures); anything else falls back to SeqIO, with a log line."""
    if requested not in BACKENDS:
        raise ConfigError(f"unknown data backend {requested!r}", where="data_backend",
                          expected="one of " + ", ".join(BACKENDS))
    if requested == "seqio":
        return "seqio"
    from explistops_jax import own_tasks

    spec = own_tasks.own_spec(name)
    why = None
    if spec is None and own_tasks.file_task(name) is None:
        why = "it is not one of this project's generated domain-vocabulary tasks"
    elif training and isinstance(spec, MixtureSpec):
        why = "a mixture is sampled as SeqIO samples it"
    elif use_cached:
        why = "an offline cache is SeqIO's"
    if why:
        logging.info("reading %s with the seqio backend: %s", name, why)
        return "seqio"
    return "grain"


def needs_registry(name: str, requested: str = "grain", *, training: bool = True,
                   use_cached: bool = False) -> bool:
    """Whether reading ``name`` needs the SeqIO registry (``import seqio_tasks``,
    which loads TensorFlow): whether :func:`choose_backend` picks SeqIO."""
    return choose_backend(name, requested, training=training,
                          use_cached=use_cached) == "seqio"


@dataclasses.dataclass(frozen=True)
class Input:
    """What a task or mixture name reads, through the backend chosen for it.

    Attributes:
      name: the task or mixture name.
      backend: ``"grain"`` or ``"seqio"``.
      tasks: the task, or the mixture's members (:class:`InputTask`).
      is_mixture: whether ``name`` is a mixture.
    """

    name: str
    backend: str
    tasks: tuple[InputTask, ...]
    is_mixture: bool
    _open_source: Callable[..., Any] = dataclasses.field(repr=False, compare=False)

    @property
    def needs_registry(self) -> bool:
        return self.backend == "seqio"

    def batch_source(self, *, split: str, lengths: Mapping[str, int], local_batch_size: int,
                     pack: bool, shuffle: bool, shard_index: int = 0, num_shards: int = 1,
                     shuffle_buffer_size: int | None = None):
        """One process's epochs of ``split`` as numpy batches (what
        ``input_pipeline.BatchStream`` iterates): ``epoch_batches(seed, skip)``,
        ``count_epoch_batches(seed)``, ``share_sizes(...)``, ``is_mixture``,
        ``vocabulary``. ``shuffle_buffer_size``: SeqIO's buffer (grain shuffles
        whole epochs)."""
        return self._open_source(split=split, lengths=dict(lengths),
                                 local_batch_size=local_batch_size, pack=pack,
                                 shuffle=shuffle, shard_index=shard_index,
                                 num_shards=num_shards, shuffle_buffer_size=shuffle_buffer_size)


def get_input(name: str, data_backend: str = "grain", *, training: bool = True,
              use_cached: bool = False) -> Input:
    """The tasks ``name`` reads and their batch source, through the backend
    :func:`choose_backend` picks (``training``: the name is trained on, so a
    mixture is sampled by SeqIO). Unknown names fail here (a UserError naming
    the near names of the registry)."""
    backend = choose_backend(name, data_backend, training=training, use_cached=use_cached)
    if backend == "grain":
        return _grain_input(name)
    return _seqio_input(name, use_cached)


def get_task(name: str, data_backend: str = "grain", *,
             use_cached: bool = False) -> InputTask:
    """The one task ``name`` (:func:`get_input`); a UserError for a mixture."""
    found = get_input(name, data_backend, training=False, use_cached=use_cached)
    if found.is_mixture:
        raise UserError(f"{name!r} is a mixture, not a task",
                        expected="one of its tasks: " + ", ".join(t.name for t in found.tasks))
    return found.tasks[0]


def _grain_input(name: str) -> Input:
    from explistops_jax import grain_pipeline, own_tasks

    tasks = tuple(own_tasks.get_tasks(name))
    is_mixture = isinstance(own_tasks.own_spec(name), MixtureSpec)

    def open_source(*, shuffle_buffer_size: int | None, **options):
        del shuffle_buffer_size  # grain shuffles whole epochs
        if is_mixture:  # choose_backend sends training on a mixture to SeqIO
            raise UserError(f"mixture {name!r} is sampled by the seqio backend only",
                            expected="data_backend='seqio', or one of its tasks")
        return grain_pipeline.GrainSource(tasks[0], **options)

    return Input(name, "grain", tasks, is_mixture, open_source)


def _seqio_input(name: str, use_cached: bool) -> Input:
    from explistops_jax import seqio_backend

    provider = seqio_backend.get_provider(name)
    seqio_backend.check_cached(provider, use_cached)
    tasks = tuple(seqio_backend.SeqioTask(task, use_cached=use_cached)
                  for task in seqio_backend.seqio.get_subtasks(provider))
    is_mixture = isinstance(provider, seqio_backend.seqio.Mixture)

    def open_source(**options):
        return seqio_backend.SeqioSource(name, use_cached=use_cached, **options)

    return Input(name, "seqio", tasks, is_mixture, open_source)
