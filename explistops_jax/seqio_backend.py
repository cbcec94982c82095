"""The SeqIO input backend: registered tasks and mixtures through tf.data.

For tasks a user registers, mixtures (sampled as SeqIO samples them), the
``_tfds`` and ``_sp`` variants, and whenever ``data_backend="seqio"`` is asked
for. Importing this module loads TensorFlow (kept off the GPUs, quietly:
``runtime.confine_tensorflow``) and SeqIO; nothing else in the trainer,
evaluator or predict path imports either.

Epoch ``e`` of a task is its split shuffled by SeqIO's buffer with the epoch's
seed, turned into model features by ``seqio.EncDecFeatureConverter`` and cut
into batches; several processes read shard ``process_index`` of the split
(``seqio.ShardInfo``; a generated source produces every example and keeps its
shard). A mixture is one endless stream.

:class:`SeqioTask` is the thin adapter that gives a registered ``seqio.Task``
the interface of :class:`explistops_jax.backends.InputTask`, which the
project's own tasks have too.
"""

from __future__ import annotations

import logging
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from explistops_jax import tf_loader

tf_loader.confine()  # before TensorFlow first touches a device

import seqio  # noqa: E402
import tensorflow as tf  # noqa: E402

from explistops_jax import task_spec  # noqa: E402
from explistops_jax.errors import UserError  # noqa: E402

__all__ = ["get_provider", "check_cached", "feature_converter", "SeqioSource", "SeqioTask",
           "subtasks", "read_split", "preprocess_raw"]


class _DropUncachedWarning(logging.Filter):
    """seqio warns on every epoch that an uncached generator source shuffles
    poorly across restarts; here every epoch is reshuffled with its own seed."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "uncached FunctionDataset" not in record.getMessage()


logging.getLogger("absl").addFilter(_DropUncachedWarning())


def get_provider(name: str) -> seqio.DatasetProviderBase:
    """The registered task or mixture, with an error that lists near names."""
    try:
        return seqio.get_mixture_or_task(name)
    except ValueError:
        known = sorted(seqio.TaskRegistry.names()) + sorted(seqio.MixtureRegistry.names())
        close = [n for n in known if n.split("_")[0] == name.split("_")[0]][:20]
        hint = "; was the module that registers it imported (gin `import seqio_tasks`)?"
        raise UserError(
            f"unknown SeqIO task or mixture {name!r}{hint}",
            expected=("one of " + ", ".join(close)) if close else None) from None


def check_cached(provider: seqio.DatasetProviderBase, use_cached: bool) -> None:
    """With ``use_cached``, every sub-task must have an offline cache (seqio would
    silently fall back to on-the-fly preprocessing for some and fail for others)."""
    if not use_cached:
        return
    for task in seqio.get_subtasks(provider):
        if not task.supports_caching or not task.cache_dir:
            raise UserError(
                f"USE_CACHED_TASKS is True but task {task.name!r} has no offline "
                "cache (these tasks are generated on the fly)",
                expected="USE_CACHED_TASKS = False, or a cache made with "
                         "seqio's cache_tasks_main")


def feature_converter(pack: bool) -> seqio.FeatureConverter:
    """The encoder-decoder converter (features the model's loss_fn reads)."""
    return seqio.EncDecFeatureConverter(pack=pack, use_custom_packing_ops=False)


def subtasks(name: str, use_cached: bool = False) -> list[seqio.Task]:
    """The task ``name``, or the tasks of the mixture ``name``."""
    provider = get_provider(name)
    check_cached(provider, use_cached)
    return list(seqio.get_subtasks(provider))


def read_split(task: seqio.Task, split: str, lengths: Mapping[str, int],
               max_examples: int | None = None, use_cached: bool = False
               ) -> tuple[list[dict], list[dict]]:
    """The first ``max_examples`` examples of ``split`` in order, and their padded
    model features (what the evaluator decodes)."""
    ds = task.get_dataset(dict(lengths), split=split, use_cached=use_cached,
                          shuffle=False, num_epochs=1)
    if max_examples is not None:
        ds = ds.take(max_examples)
    examples = list(ds.as_numpy_iterator())
    converted = feature_converter(False)(ds, dict(lengths))
    return examples, list(converted.as_numpy_iterator())


def preprocess_raw(task: seqio.Task, raw: Sequence[Mapping[str, Any]],
                   lengths: Mapping[str, int]) -> tuple[list[dict], list[dict]]:
    """Raw examples (``own_tasks.raw_examples_for``) through the task's own
    preprocessors: the examples and their padded model features."""
    columns = {"id": [r["id"] for r in raw],
               "index": np.array([r["index"] for r in raw], np.int64),
               "expression": [r["expression"] for r in raw]}
    for key in ("answer", "length", "depth", "modulus"):
        columns[key] = np.array([r[key] for r in raw], np.int32)
    ds = task.preprocess_precache(tf.data.Dataset.from_tensor_slices(columns))
    ds = task.preprocess_postcache(ds, sequence_length=dict(lengths))
    examples = list(ds.as_numpy_iterator())
    return examples, list(feature_converter(False)(ds, dict(lengths)).as_numpy_iterator())


class SeqioTask:
    """A registered ``seqio.Task`` as an :class:`explistops_jax.backends.InputTask`
    (read with ``use_cached``: its offline cache)."""

    backend = "seqio"
    needs_registry = True

    def __init__(self, task: seqio.Task, *, use_cached: bool = False):
        self.task = task
        self.name = task.name
        self.use_cached = use_cached
        # the spec the project's registrations carry (seqio_tasks.SpecTask), else
        # the one its name reads as (None for another project's task)
        spec = getattr(task, "spec", None) or task_spec.spec_of(task.name)
        self.spec = spec if isinstance(spec, task_spec.TaskSpec) else None

    def __repr__(self) -> str:
        return f"SeqioTask({self.name!r})"

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(self.task.splits)

    @property
    def output_features(self) -> Mapping[str, seqio.Feature]:
        return self.task.output_features

    @property
    def vocabulary(self) -> seqio.Vocabulary:
        return self.task.output_features["targets"].vocabulary

    @property
    def predict_metric_fns(self):
        return self.task.predict_metric_fns

    @property
    def score_metric_fns(self):
        return self.task.score_metric_fns

    def postprocess_fn(self, output: Any, example: Mapping | None = None,
                       is_target: bool = False) -> Any:
        return self.task.postprocess_fn(output, example=example, is_target=is_target)

    def _check_split(self, split: str) -> None:
        if split not in self.task.splits:
            raise UserError(f"task {self.name!r} has no split {split!r}",
                            expected="one of " + ", ".join(self.task.splits))

    def num_examples(self, split: str) -> int:
        self._check_split(split)
        examples = self.task.num_input_examples(split)
        if examples is not None:
            return int(examples)
        ds = self.task.source.get_dataset(split=split, shuffle=False)
        return int(ds.reduce(np.int64(0), lambda n, _: n + 1))

    def raw_examples(self, split: str, max_examples: int | None = None) -> list[dict]:
        self._check_split(split)
        ds = self.task.source.get_dataset(split=split, shuffle=False)
        if max_examples is not None:
            ds = ds.take(max_examples)
        return list(ds.as_numpy_iterator())

    def read_split(self, split: str, lengths: Mapping[str, int],
                   max_examples: int | None = None) -> tuple[list[dict], list[dict]]:
        return read_split(self.task, split, lengths, max_examples, self.use_cached)

    def preprocess_raw(self, raw: Sequence[Mapping[str, Any]], lengths: Mapping[str, int]
                       ) -> tuple[list[dict], list[dict]]:
        return preprocess_raw(self.task, raw, lengths)

    def with_style(self, style: str) -> "SeqioTask | None":
        if self.spec is None:
            return None
        spec = self.spec.replace(style=style)  # an unknown style fails here
        if spec == self.spec:
            return self
        if spec.name not in seqio.TaskRegistry.names():
            return None
        return SeqioTask(get_provider(spec.name), use_cached=self.use_cached)


class SeqioSource:
    """One process's epochs of a registered task or mixture as numpy batches
    (the SeqIO half of ``input_pipeline.BatchStream``).

    Shard ``p`` of ``n`` gets rows ``p * local_batch_size ...`` of every global
    batch of ``local_batch_size * n`` rows, as the grain backend does, so one
    process or several train on the same global batches. SeqIO's own sharding
    (``ShardInfo``) would give each process a different stream, so instead every
    process reads the whole stream and keeps its rows: exact, at ``n`` times the
    input work (the grain backend generates only a process's own examples).
    """

    def __init__(self, name: str, *, split: str, lengths: Mapping[str, int],
                 local_batch_size: int, pack: bool, shuffle: bool, use_cached: bool = False,
                 shuffle_buffer_size: int | None = None, shard_index: int = 0,
                 num_shards: int = 1):
        self.provider = get_provider(name)
        check_cached(self.provider, use_cached)
        self.split = split
        self.lengths = dict(lengths)
        self.local_batch_size = local_batch_size
        self.pack = pack
        self.shuffle = shuffle
        self.use_cached = use_cached
        self.shuffle_buffer_size = shuffle_buffer_size
        self.shard_index, self.num_shards = shard_index, num_shards
        self.is_mixture = isinstance(self.provider, seqio.Mixture)

    @property
    def vocabulary(self):
        return self.provider.output_features["targets"].vocabulary

    def share_sizes(self, process_index: int, process_count: int, allgather) -> None:
        """Nothing to share: every process reads the whole stream (the grain
        source's sizes pass has no SeqIO counterpart)."""

    def num_examples(self) -> int:
        """Examples per epoch (the whole split)."""
        examples = self.provider.source.num_input_examples(self.split)
        if examples is not None:
            return examples
        return int(self._examples(1).reduce(np.int64(0), lambda n, _: n + 1))

    def _examples(self, seed: int) -> tf.data.Dataset:
        """The task's preprocessed examples of one epoch (the whole endless
        stream for a mixture)."""
        kwargs = dict(sequence_length=self.lengths, split=self.split,
                      use_cached=self.use_cached, shuffle=self.shuffle, seed=seed)
        if self.is_mixture:
            return self.provider.get_dataset(num_epochs=None, **kwargs)
        return self.provider.get_dataset(
            num_epochs=1, shuffle_buffer_size=self.shuffle_buffer_size, **kwargs)

    def _batches(self, seed: int, shard: bool = True) -> tf.data.Dataset:
        """The global batches of one epoch, or (``shard``) this shard's rows."""
        ds = feature_converter(self.pack)(self._examples(seed), self.lengths)
        ds = ds.batch(self.local_batch_size * self.num_shards, drop_remainder=False)
        if shard and self.num_shards > 1:  # this shard's rows of each global batch
            start = self.shard_index * self.local_batch_size
            ds = ds.map(lambda batch: {k: v[start:start + self.local_batch_size]
                                       for k, v in batch.items()})
            ds = ds.filter(lambda batch: tf.shape(next(iter(batch.values())))[0] > 0)
        options = tf.data.Options()
        options.deterministic = True
        return ds.with_options(options).prefetch(2)

    def epoch_batches(self, seed: int, skip: int = 0) -> Iterator[dict[str, np.ndarray]]:
        """This shard's rows of the batches of one epoch shuffled with ``seed``,
        from batch ``skip`` on (the last one may have fewer rows)."""
        return self._batches(seed).skip(skip).as_numpy_iterator()

    def count_epoch_batches(self, seed: int) -> int:
        """Global batches of one epoch (packing: reads and packs it)."""
        if not self.pack:
            return -(-self.num_examples() // (self.local_batch_size * self.num_shards))
        return sum(1 for _ in self._batches(seed, shard=False).as_numpy_iterator())
