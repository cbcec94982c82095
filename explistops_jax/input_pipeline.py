"""Training batches from SeqIO tasks: shuffled per epoch, resumable, numpy.

The stream is a sequence of epochs. Epoch ``e`` is the task's split shuffled with
its own seed (derived from ``DataConfig.seed`` and ``e``), turned into model
features by ``seqio.EncDecFeatureConverter`` (packing on or off) and cut into
batches; the last batch of an epoch is filled up with all-zero rows, whose loss
weights are 0, so each example is seen exactly once per epoch. Without packing
every epoch has :attr:`BatchStream.steps_per_epoch` = ``ceil(examples / batch)``
batches. With packing an epoch has as many batches as it packs into, except
when a fixed count is needed (``num_epochs`` set, so that the total is known in
advance, or several processes that must agree): then every epoch has as many
as epoch 0 (a later epoch packs slightly differently: a few of its rows are
dropped, or its end is filled with empty rows).

Because the pipeline is deterministic, a position in it is just
:class:`Position` ``(epoch, batch)``: the trainer saves it in each checkpoint and
resumes by rebuilding that epoch and skipping ``batch`` batches, at most one
epoch's worth of input work (tf.data iterator checkpointing would not work here:
the tasks' sources are Python generators).

A mixture has no epochs: it is one endless stream, ``steps_per_epoch`` is None
and resuming skips from its start.

Multi-host: each process reads shard ``process_index`` of ``process_count`` of the
split (``seqio.ShardInfo``) and yields its rows of every global batch; all
processes agree on ``steps_per_epoch``.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
from typing import Iterator, Mapping

import numpy as np
import tensorflow as tf

# TensorFlow only feeds data: keep it off the accelerators that JAX uses (this
# must happen before TensorFlow first touches a device, hence before seqio and
# the task modules are imported; entry points import this module first).
try:
    tf.config.set_visible_devices([], "GPU")
except RuntimeError:  # TensorFlow was initialised already
    logging.warning("TensorFlow initialised its devices before explistops_jax."
                    "input_pipeline was imported; it may hold GPU memory")

import seqio  # noqa: E402  (after TF is confined to the CPU)

from explistops_jax.errors import ConfigError, UserError  # noqa: E402


class _DropUncachedWarning(logging.Filter):
    """seqio warns on every epoch that an uncached generator source shuffles
    poorly across restarts; here every epoch is reshuffled with its own seed."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "uncached FunctionDataset" not in record.getMessage()


logging.getLogger("absl").addFilter(_DropUncachedWarning())

__all__ = [
    "DataConfig",
    "Position",
    "BatchStream",
    "get_provider",
    "check_cached",
    "feature_converter",
]


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Which examples to train on and how to batch them.

    Attributes:
      mixture_or_task_name: a registered SeqIO task or mixture
        (``MIXTURE_OR_TASK_NAME``).
      task_feature_lengths: ``{"inputs": n, "targets": m}``; longer examples are
        trimmed (``TASK_FEATURE_LENGTHS``).
      split: the split to read.
      batch_size: the global batch, in rows (``BATCH_SIZE``).
      shuffle: shuffle the examples of each epoch.
      seed: shuffling seed; the same seed gives the same batches.
      pack: pack several examples into each row (``seqio`` packing).
      use_cached: read the task's offline cache (``USE_CACHED_TASKS``); an error
        if the task has none.
      shuffle_buffer_size: tf.data shuffle buffer, in examples; None = the task's
        (seqio's default, 1,000). The buffer is filled before the first batch of
        every epoch, so a large one costs a pause per epoch (explistops examples
        are generated at roughly 500 a second on one core).
      num_epochs: epochs in the stream; None = endless.
    """

    mixture_or_task_name: str
    task_feature_lengths: Mapping[str, int]
    split: str = "train"
    batch_size: int = 8
    shuffle: bool = True
    seed: int = 0
    pack: bool = False
    use_cached: bool = False
    shuffle_buffer_size: int | None = None
    num_epochs: int | None = None

    def __post_init__(self):
        lengths = dict(self.task_feature_lengths or {})
        if set(lengths) != {"inputs", "targets"} or not all(
                isinstance(n, int) and n >= 2 for n in lengths.values()):
            raise ConfigError(
                f"feature lengths {lengths} cannot hold an example",
                where="TASK_FEATURE_LENGTHS",
                expected="{'inputs': n, 'targets': m}, each at least 2 (a token and EOS)")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigError(f"batch size {self.batch_size!r}", where="BATCH_SIZE",
                              expected="a positive integer")
        if self.num_epochs is not None and (not isinstance(self.num_epochs, int)
                                            or self.num_epochs < 1):
            raise ConfigError(f"{self.num_epochs!r} epochs", where="EPOCHS",
                              expected="a positive integer or None")


@dataclasses.dataclass(frozen=True)
class Position:
    """Where the stream is: ``batch`` batches of epoch ``epoch`` are consumed."""

    epoch: int = 0
    batch: int = 0

    def to_json(self) -> dict:
        return {"epoch": self.epoch, "batch": self.batch}

    @classmethod
    def from_json(cls, data: Mapping) -> "Position":
        return cls(int(data["epoch"]), int(data["batch"]))


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


def _epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7_919 + 1) % (2**31 - 1)


class BatchStream:
    """The training batches of one process, as numpy arrays, resumable.

    ``iterate(position)`` yields ``(next_position, batch)``; ``batch`` maps the
    converter's features (``encoder_input_tokens``, ``decoder_target_tokens``,
    ...) to int32 arrays of shape ``[local_batch, length]``.
    """

    def __init__(self, config: DataConfig, *, shard_index: int = 0, num_shards: int = 1):
        if config.batch_size % num_shards:
            raise ConfigError(f"batch size {config.batch_size} is not divisible by "
                              f"the number of processes {num_shards}", where="BATCH_SIZE",
                              expected=f"a multiple of {num_shards}")
        self.config = config
        self.local_batch_size = config.batch_size // num_shards
        self.provider = get_provider(config.mixture_or_task_name)
        check_cached(self.provider, config.use_cached)
        self._shard = seqio.ShardInfo(shard_index, num_shards) if num_shards > 1 else None
        self._is_mixture = isinstance(self.provider, seqio.Mixture)
        self._steps_per_epoch: int | None = None

    # ------------------------------------------------------------------ epochs

    @property
    def steps_per_epoch(self) -> int | None:
        """Batches per epoch when every epoch has the same number; None for a
        mixture, and for packing unless it is needed (``num_epochs`` set, or
        several processes that must agree)."""
        if self._is_mixture:
            return None
        if self._steps_per_epoch is None:
            if self.config.pack and self.config.num_epochs is None and (
                    self._shard is None):
                return None
            self._steps_per_epoch = self._count_steps_per_epoch()
        return self._steps_per_epoch

    def total_steps(self) -> int | None:
        """Steps in the whole stream: ``num_epochs * steps_per_epoch``."""
        if self.config.num_epochs is None or self.steps_per_epoch is None:
            return None
        return self.config.num_epochs * self.steps_per_epoch

    def _count_steps_per_epoch(self) -> int:
        c = self.config
        if c.pack:  # read and pack epoch 0
            count = sum(1 for _ in self._epoch_batches(0).as_numpy_iterator())
        else:
            examples = self.provider.source.num_input_examples(c.split)
            num_shards = self._shard.num_shards if self._shard else 1
            if examples is not None:
                examples = math.ceil(examples / num_shards)
            else:  # read epoch 0
                examples = int(self._examples(0).reduce(np.int64(0), lambda n, _: n + 1))
            count = math.ceil(examples / self.local_batch_size)
        count = _max_over_processes(count)
        if count == 0:
            raise UserError(f"split {c.split!r} of {c.mixture_or_task_name!r} is empty")
        logging.info("%s/%s: %d steps per epoch", c.mixture_or_task_name, c.split, count)
        return count

    # ------------------------------------------------------------------ datasets

    def _examples(self, epoch: int) -> tf.data.Dataset:
        """The task's preprocessed examples of one epoch (the whole endless
        stream for a mixture)."""
        c = self.config
        kwargs = dict(sequence_length=dict(c.task_feature_lengths), split=c.split,
                      use_cached=c.use_cached, shuffle=c.shuffle,
                      seed=_epoch_seed(c.seed, epoch), shard_info=self._shard)
        if self._is_mixture:
            return self.provider.get_dataset(num_epochs=None, **kwargs)
        return self.provider.get_dataset(
            num_epochs=1, shuffle_buffer_size=c.shuffle_buffer_size, **kwargs)

    def _epoch_batches(self, epoch: int) -> tf.data.Dataset:
        ds = feature_converter(self.config.pack)(
            self._examples(epoch), dict(self.config.task_feature_lengths))
        ds = ds.batch(self.local_batch_size, drop_remainder=False)
        options = tf.data.Options()
        options.deterministic = True
        return ds.with_options(options).prefetch(2)

    # ------------------------------------------------------------------ iteration

    def iterate(self, start: Position = Position()
                ) -> Iterator[tuple[Position, dict[str, np.ndarray]]]:
        """Batches from ``start`` on, each with the position after it."""
        epoch, skip = start.epoch, start.batch
        steps = self.steps_per_epoch
        while self.config.num_epochs is None or epoch < self.config.num_epochs:
            ds = self._epoch_batches(epoch)
            empty = _empty_batch(ds.element_spec, self.local_batch_size)
            batches = ds.skip(skip).as_numpy_iterator()
            indices = itertools.count(skip + 1) if steps is None else range(skip + 1, steps + 1)
            for index in indices:
                batch = next(batches, None)
                if batch is None:
                    if steps is None:
                        if index == 1:
                            raise UserError(f"split {self.config.split!r} of "
                                            f"{self.config.mixture_or_task_name!r} is empty")
                        break  # the natural end of this epoch (or of a mixture)
                    batch = empty  # this epoch packed into fewer batches
                yield Position(epoch, index), fill_rows(batch, self.local_batch_size)
            if self._is_mixture:
                return
            epoch, skip = epoch + 1, 0


def fill_rows(batch: Mapping[str, np.ndarray], rows: int) -> dict[str, np.ndarray]:
    """Pads a short (last) batch with all-zero rows, which carry no loss."""
    out = {}
    for name, array in batch.items():
        array = np.asarray(array)
        if array.shape[0] < rows:
            pad = np.zeros((rows - array.shape[0],) + array.shape[1:], array.dtype)
            array = np.concatenate([array, pad])
        out[name] = array
    return out


def _empty_batch(element_spec: Mapping[str, tf.TensorSpec], rows: int) -> dict:
    """An all-zero batch (no loss weight anywhere) shaped like the real ones."""
    return {k: np.zeros((rows,) + tuple(spec.shape[1:]), spec.dtype.as_numpy_dtype)
            for k, spec in element_spec.items()}


def _max_over_processes(value: int) -> int:
    import jax

    if jax.process_count() == 1:
        return value
    from jax.experimental import multihost_utils

    return int(np.max(multihost_utils.process_allgather(np.int64(value))))
