"""Training batches: shuffled per epoch, resumable, numpy, from an input backend.

The backend is chosen once, by :func:`explistops_jax.backends.get_input`, which
returns the tasks and the batch source :class:`BatchStream` iterates; nothing
here branches on it. Two backends give the same batches (the same examples,
token ids and features as ``seqio.EncDecFeatureConverter``; only the shuffle
differs):

* ``"grain"`` (:mod:`explistops_jax.grain_pipeline`, the default): the project's
  own tasks (:mod:`explistops_jax.own_tasks`: names ``TaskSpec.parse`` reads, of
  a dataset in ``data.DATASETS``, generated, domain vocabulary), in pure Python
  without TensorFlow; every epoch a full permutation of the split;
* ``"seqio"`` (:mod:`explistops_jax.seqio_backend`): registered SeqIO tasks and
  mixtures through tf.data (only then are TensorFlow and SeqIO imported); the
  shuffle is SeqIO's buffer. Tasks that are not the project's own, mixtures
  (sampled as SeqIO samples them) and the ``_tfds``/``_sp`` variants use it
  whatever ``data_backend`` says (a log line says so).

The stream is a sequence of epochs. Epoch ``e`` is the task's split shuffled with
its own seed (derived from ``DataConfig.seed`` and ``e``), turned into model
features (packing on or off) and cut into batches; the last batch of an epoch is
filled up with all-zero rows, whose loss weights are 0, so each example is seen
exactly once per epoch. Without packing every epoch has
:attr:`BatchStream.steps_per_epoch` = ``ceil(examples / batch)`` batches. With
packing an epoch has as many batches as it packs into, except when a fixed count
is needed (``num_epochs`` set, so that the total is known in advance, or several
processes that must agree): then every epoch has as many as epoch 0 (a later
epoch packs slightly differently: a few of its rows are dropped, or its end is
filled with empty rows).

Because the pipeline is deterministic, a position in it is just
:class:`Position` ``(epoch, batch)``: the trainer saves it in each checkpoint and
resumes by rebuilding that epoch and skipping ``batch`` batches (grain, padded:
without generating them).

A mixture has no epochs: it is one endless stream, ``steps_per_epoch`` is None
and resuming skips from its start.

Multi-host: shard ``i`` of ``n`` (``Partitioner.data_shard``: the process's
block of the mesh's data axis) yields rows ``i * local ... (i + 1) * local - 1``
of every global batch, the rows ``jax.make_array_from_process_local_data``
places on that process's devices, so a run on one process or on several sees
the same global batches and logs the same losses. All shards agree on
``steps_per_epoch``. With grain each process generates only its own examples
(packing: after one pass over the split for every example's packed size, from
which each epoch's rows are laid out; the processes split that pass, each sizing
one block, and allgather the sizes when the stream is built); with SeqIO each
process reads the whole stream and keeps its rows.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from typing import Iterator, Mapping

import numpy as np

from explistops_jax import backends, features
from explistops_jax.backends import BACKENDS
from explistops_jax.errors import ConfigError, UserError

__all__ = [
    "BACKENDS",
    "DataConfig",
    "Position",
    "BatchStream",
    "get_provider",
    "check_cached",
    "feature_converter",
    "fill_rows",
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
      shuffle_buffer_size: the SeqIO backend's shuffle buffer, in examples; None =
        the task's (seqio's default, 1,000); grain shuffles whole epochs. The buffer is filled before the first batch of
        every epoch, so a large one costs a pause per epoch (explistops examples
        are generated at roughly 500 a second on one core).
      num_epochs: epochs in the stream; None = endless.
      data_backend: ``"grain"`` (the project's own tasks without TensorFlow;
        other tasks fall back to SeqIO) or ``"seqio"`` (``DATA_BACKEND``).
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
    data_backend: str = "grain"

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
        if self.data_backend not in BACKENDS:
            raise ConfigError(f"unknown data backend {self.data_backend!r}",
                              where="DataConfig.data_backend",
                              expected="one of " + ", ".join(BACKENDS))


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


def get_provider(name: str):
    """The registered SeqIO task or mixture (imports SeqIO and TensorFlow)."""
    from explistops_jax import seqio_backend

    return seqio_backend.get_provider(name)


def check_cached(provider, use_cached: bool) -> None:
    """See ``seqio_backend.check_cached`` (imports SeqIO and TensorFlow)."""
    from explistops_jax import seqio_backend

    seqio_backend.check_cached(provider, use_cached)


def feature_converter(pack: bool):
    """SeqIO's encoder-decoder converter (imports SeqIO and TensorFlow)."""
    from explistops_jax import seqio_backend

    return seqio_backend.feature_converter(pack)


def _epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7_919 + 1) % (2**31 - 1)


class BatchStream:
    """The training batches of one process, as numpy arrays, resumable.

    ``iterate(position)`` yields ``(next_position, batch)``; ``batch`` maps the
    converter's features (``encoder_input_tokens``, ``decoder_target_tokens``,
    ...) to int32 arrays of shape ``[local_batch, length]``. ``input`` is what
    the task or mixture name reads (``backends.get_input``); ``backend`` says
    which backend reads it.
    """

    def __init__(self, config: DataConfig, *, shard_index: int = 0, num_shards: int = 1):
        if config.batch_size % num_shards:
            raise ConfigError(f"batch size {config.batch_size} is not divisible by "
                              f"the number of processes {num_shards}", where="BATCH_SIZE",
                              expected=f"a multiple of {num_shards}")
        self.config = config
        self.local_batch_size = config.batch_size // num_shards
        self._sharded = num_shards > 1
        self.input = backends.get_input(config.mixture_or_task_name, config.data_backend,
                                        training=True, use_cached=config.use_cached)
        self.backend = self.input.backend
        self.source = self.input.batch_source(
            split=config.split, lengths=config.task_feature_lengths,
            local_batch_size=self.local_batch_size, pack=config.pack, shuffle=config.shuffle,
            shard_index=shard_index, num_shards=num_shards,
            shuffle_buffer_size=config.shuffle_buffer_size)
        if config.pack:
            _share_packed_sizes(self.source)
        self._is_mixture = self.source.is_mixture
        self._steps_per_epoch: int | None = None

    @property
    def vocabulary(self):
        """The targets' vocabulary (what the model's embedding must hold)."""
        return self.source.vocabulary

    @property
    def provider(self):
        """The SeqIO task or mixture (SeqIO backend only)."""
        return getattr(self.source, "provider", None)

    # ------------------------------------------------------------------ epochs

    @property
    def steps_per_epoch(self) -> int | None:
        """Batches per epoch when every epoch has the same number; None for a
        mixture, and for packing unless it is needed (``num_epochs`` set, or
        several processes that must agree)."""
        if self._is_mixture:
            return None
        if self._steps_per_epoch is None:
            if self.config.pack and self.config.num_epochs is None and not self._sharded:
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
        count = _max_over_processes(self.source.count_epoch_batches(_epoch_seed(c.seed, 0)))
        if count == 0:
            raise UserError(f"split {c.split!r} of {c.mixture_or_task_name!r} is empty")
        logging.info("%s/%s: %d steps per epoch", c.mixture_or_task_name, c.split, count)
        return count

    # ------------------------------------------------------------------ iteration

    def iterate(self, start: Position = Position()
                ) -> Iterator[tuple[Position, dict[str, np.ndarray]]]:
        """Batches from ``start`` on, each with the position after it."""
        epoch, skip = start.epoch, start.batch
        steps = self.steps_per_epoch
        while self.config.num_epochs is None or epoch < self.config.num_epochs:
            batches = iter(self.source.epoch_batches(_epoch_seed(self.config.seed, epoch),
                                                     skip))
            indices = itertools.count(skip + 1) if steps is None else range(skip + 1, steps + 1)
            for index in indices:
                batch = next(batches, None)
                if batch is None:
                    if steps is None:
                        if index == 1:
                            raise UserError(f"split {self.config.split!r} of "
                                            f"{self.config.mixture_or_task_name!r} is empty")
                        break  # the natural end of this epoch (or of a mixture)
                    batch = self.empty_batch()  # this epoch packed into fewer batches
                yield Position(epoch, index), fill_rows(batch, self.local_batch_size)
            if self._is_mixture:
                return
            epoch, skip = epoch + 1, 0

    def empty_batch(self) -> dict[str, np.ndarray]:
        """An all-zero batch (no loss weight anywhere) shaped like the real ones:
        this process's rows, every feature the stream's batches have."""
        lengths = self.config.task_feature_lengths
        names = features.MODEL_FEATURES + (features.PACKED_FEATURES if self.config.pack
                                           else ())
        return {name: np.zeros((self.local_batch_size,
                                lengths["inputs" if name.startswith("encoder") else "targets"]),
                               np.int32) for name in names}


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


def _share_packed_sizes(source) -> None:
    """Several processes split a packing source's sizes pass (a collective: here,
    in the main thread, where every process builds its stream at the same point
    of ``trainer.train``)."""
    import jax

    if jax.process_count() == 1:
        return
    from jax.experimental import multihost_utils

    source.share_sizes(jax.process_index(), jax.process_count(),
                       multihost_utils.process_allgather)


def _max_over_processes(value: int) -> int:
    import jax

    if jax.process_count() == 1:
        return value
    from jax.experimental import multihost_utils

    return int(np.max(multihost_utils.process_allgather(np.int64(value))))
