"""The grain input backend: batches of the project's own tasks without TensorFlow.

The same batches as the SeqIO backend (:mod:`explistops_jax.seqio_backend`) for
an unshuffled split, element for element, padded or packed: example ``i`` comes
from :class:`~explistops_jax.own_tasks.OwnTask` (the registered task's
preprocessing in pure Python) and the features from :mod:`explistops_jax.features`
(``EncDecFeatureConverter`` in numpy). What differs is the shuffle: SeqIO's is
a 1,000-example buffer, here every epoch is a full permutation of the split
(``grain.MapDataset.shuffle``) with the epoch's own seed.

A ``grain.MapDataset`` over the split's indices: process ``p`` of ``n`` keeps
indices ``p, p + n, ...`` (SeqIO's ``Dataset.shard``) *before* any example is
generated, so each process generates only its own examples; the shuffle
permutes those, then examples are generated, converted and batched lazily. A
padded epoch is index-addressable, so resuming at batch ``b`` generates nothing
before it; a packed epoch is packed in groups of ``max(lengths)`` examples, as
SeqIO packs, and resuming re-packs the groups before ``b``.
"""

from __future__ import annotations

import functools
import math
from typing import Iterator, Mapping

import grain
import numpy as np

from explistops_jax import features
from explistops_jax.own_tasks import OwnTask

__all__ = ["GrainSource", "examples_dataset", "read_split", "READ_OPTIONS"]

# One reader thread ahead of the consumer: example generation is pure Python,
# so more threads only contend for the GIL (measured in scripts/bench_input.py).
READ_OPTIONS = grain.ReadOptions(num_threads=1, prefetch_buffer_size=256)


def _example(index, *, task: OwnTask, split: str, lengths: Mapping[str, int]) -> dict:
    return task.example(split, int(index), lengths)


def examples_dataset(task: OwnTask, split: str, lengths: Mapping[str, int], *,
                     shuffle: bool = False, seed: int = 0, shard_index: int = 0,
                     num_shards: int = 1) -> grain.MapDataset:
    """This process's preprocessed examples of ``split``, in epoch order."""
    indices = grain.MapDataset.range(task.num_examples(split))
    if num_shards > 1:
        indices = indices[shard_index::num_shards]
    if shuffle:
        indices = indices.shuffle(seed=seed)
    return indices.map(functools.partial(_example, task=task, split=split,
                                         lengths=dict(lengths)))


def read_split(task: OwnTask, split: str, lengths: Mapping[str, int],
               max_examples: int | None = None) -> tuple[list[dict], list[dict]]:
    """The first ``max_examples`` examples of ``split`` in order, and their padded
    model features (what the evaluator decodes)."""
    ds = examples_dataset(task, split, lengths)
    if max_examples is not None:
        ds = ds[:max_examples]
    examples = list(ds.to_iter_dataset(READ_OPTIONS))
    return examples, [features.pad_example(ex, lengths) for ex in examples]


class GrainSource:
    """One process's epochs of a task as numpy batches (the grain half of
    ``input_pipeline.BatchStream``)."""

    is_mixture = False

    def __init__(self, task: OwnTask, *, split: str, lengths: Mapping[str, int],
                 local_batch_size: int, pack: bool, shuffle: bool, shard_index: int = 0,
                 num_shards: int = 1):
        self.task = task
        self.split = split
        self.lengths = dict(lengths)
        self.local_batch_size = local_batch_size
        self.pack = pack
        self.shuffle = shuffle
        self.shard_index, self.num_shards = shard_index, num_shards
        task.config.split(split)  # an unknown split fails here, naming the known ones

    @property
    def vocabulary(self):
        return self.task.vocabulary

    def num_local_examples(self) -> int:
        """This process's examples per epoch (its shard of the split)."""
        return len(range(self.shard_index, self.task.num_examples(self.split),
                         self.num_shards))

    def _examples(self, seed: int) -> grain.MapDataset:
        return examples_dataset(self.task, self.split, self.lengths, shuffle=self.shuffle,
                                seed=seed, shard_index=self.shard_index,
                                num_shards=self.num_shards)

    def epoch_batches(self, seed: int, skip: int = 0) -> Iterator[dict[str, np.ndarray]]:
        """The batches of one epoch shuffled with ``seed``, from batch ``skip`` on
        (the last one may have fewer rows)."""
        examples = self._examples(seed)
        if not self.pack:
            batches = examples.map(functools.partial(features.pad_example,
                                                     lengths=self.lengths))
            batches = batches.batch(self.local_batch_size, batch_fn=features.stack_rows)
            yield from batches[skip:].to_iter_dataset(READ_OPTIONS)
            return
        group = max(self.lengths.values())
        groups = examples.batch(group, batch_fn=functools.partial(
            features.pack_group, lengths=self.lengths))
        rows: list[dict] = []
        index = 0
        for packed in groups.to_iter_dataset(READ_OPTIONS):
            rows.extend(packed)
            while len(rows) >= self.local_batch_size:
                batch, rows = rows[:self.local_batch_size], rows[self.local_batch_size:]
                if index >= skip:
                    yield features.stack_rows(batch)
                index += 1
        if rows and index >= skip:
            yield features.stack_rows(rows)

    def count_epoch_batches(self, seed: int) -> int:
        """Batches of one epoch (packing: packs it)."""
        if not self.pack:  # every process counts the largest shard, so all agree
            largest = math.ceil(self.task.num_examples(self.split) / self.num_shards)
            return math.ceil(largest / self.local_batch_size)
        return sum(1 for _ in self.epoch_batches(seed))
