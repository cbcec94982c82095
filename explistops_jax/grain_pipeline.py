"""The grain input backend: batches of the project's own tasks without TensorFlow.

The same batches as the SeqIO backend (:mod:`explistops_jax.seqio_backend`) for
an unshuffled split, element for element, padded or packed: example ``i`` comes
from :class:`~explistops_jax.own_tasks.OwnTask` (the registered task's
preprocessing in pure Python) and the features from :mod:`explistops_jax.features`
(``EncDecFeatureConverter`` in numpy). What differs is the shuffle: SeqIO's is
a 1,000-example buffer, here every epoch is a full permutation of the split
(``grain.MapDataset.shuffle``) with the epoch's own seed.

An epoch is one order of the whole split (a ``grain.MapDataset`` permutation,
the same in every process) cut into global batches of ``local_batch_size *
num_shards`` rows. Shard ``p`` of ``n`` (a process's block of the mesh's data
axis) takes rows ``p * local, ..., (p + 1) * local - 1`` of every global batch,
which is where ``jax.make_array_from_process_local_data`` puts them: so one
process or several train on exactly the same global batches. Unpadded epochs
are index-addressable: a shard computes the positions of its rows and generates
only those examples, and resuming at batch ``b`` generates nothing before it. A
packed row holds a variable number of examples, decided by the sizes of the
examples around it (groups of ``max(lengths)`` consecutive examples, as SeqIO
packs): a packing source first learns every example's size
(``features.packed_sizes``), the one pass over the split that packing needs,
and from then on lays out each epoch's rows from the sizes alone
(``features.pack_layout``), so that a shard generates only the examples of its
own rows, and resuming at batch ``b`` none before it. With several processes
the sizes pass is split too (``GrainSource.share_sizes``): each process sizes
one block of the split and an allgather joins the blocks, so no process
generates more than its block plus the examples of its rows.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from typing import Callable, Iterator, Mapping

import grain
import numpy as np

from explistops_jax import features
from explistops_jax.own_tasks import OwnTask

__all__ = ["GrainSource", "examples_dataset", "shard_positions", "READ_OPTIONS"]

# One reader thread ahead of the consumer: example generation is pure Python,
# so more threads only contend for the GIL (measured in scripts/bench_input.py).
READ_OPTIONS = grain.ReadOptions(num_threads=1, prefetch_buffer_size=256)


def _example(index, *, task: OwnTask, split: str, lengths: Mapping[str, int]) -> dict:
    return task.example(split, int(index), lengths)


def examples_dataset(task: OwnTask, split: str, lengths: Mapping[str, int], *,
                     shuffle: bool = False, seed: int = 0) -> grain.MapDataset:
    """The preprocessed examples of ``split`` in epoch order (lazy: an example
    is generated when it is read)."""
    return _epoch_order(task, split, shuffle, seed).map(
        functools.partial(_example, task=task, split=split, lengths=dict(lengths)))


def _epoch_order(task: OwnTask, split: str, shuffle: bool, seed: int) -> grain.MapDataset:
    """The split's example indices in epoch order (random access)."""
    indices = grain.MapDataset.range(task.num_examples(split))
    return indices.shuffle(seed=seed) if shuffle else indices


def shard_positions(num_examples: int, local_batch_size: int, shard_index: int,
                    num_shards: int, skip: int = 0) -> list[int]:
    """Positions in the epoch order of shard ``shard_index``'s rows of every
    global batch from batch ``skip`` on: rows ``shard_index * local_batch_size``
    ... of each global batch of ``local_batch_size * num_shards`` rows."""
    global_batch = local_batch_size * num_shards
    first = shard_index * local_batch_size
    return [position
            for start in range(skip * global_batch, num_examples, global_batch)
            for position in range(start + first,
                                  min(start + first + local_batch_size, num_examples))]


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
        self._packed_sizes: np.ndarray | None = None
        self._layout: tuple | None = None  # (seed, order, rows) of the last epoch laid out
        task.config.split(split)  # an unknown split fails here, naming the known ones

    @property
    def vocabulary(self):
        return self.task.vocabulary

    def num_local_examples(self) -> int:
        """This process's examples per epoch (its rows of the global batches)."""
        return len(shard_positions(self.task.num_examples(self.split),
                                   self.local_batch_size, self.shard_index, self.num_shards))

    def epoch_batches(self, seed: int, skip: int = 0) -> Iterator[dict[str, np.ndarray]]:
        """This shard's rows of the global batches of one epoch shuffled with
        ``seed``, from batch ``skip`` on (the last may have fewer rows, or none)."""
        if self.pack:
            yield from self._packed_shard(seed, skip)
            return
        order = _epoch_order(self.task, self.split, self.shuffle, seed)
        positions = shard_positions(self.task.num_examples(self.split),
                                    self.local_batch_size, self.shard_index,
                                    self.num_shards, skip)
        if not positions:
            return
        batches = grain.MapDataset.source(positions).map(order.__getitem__).map(
            functools.partial(_example, task=self.task, split=self.split,
                              lengths=self.lengths)).map(
            functools.partial(features.pad_example, lengths=self.lengths))
        batches = batches.batch(self.local_batch_size, batch_fn=features.stack_rows)
        yield from batches.to_iter_dataset(READ_OPTIONS)

    def _sizes(self) -> np.ndarray:
        """Every example's packed size (``features.packed_sizes``), ``[examples,
        2]``: computed once per source, the one pass over the whole split that
        packing needs (an example's size does not depend on the epoch's order),
        unless ``share_sizes`` gave them."""
        if self._packed_sizes is None:
            self._packed_sizes = self.packed_sizes(0, self.task.num_examples(self.split))
        return self._packed_sizes

    def packed_sizes(self, start: int, stop: int) -> np.ndarray:
        """The packed sizes of examples ``start, ..., stop - 1`` of the split
        (in index order), ``[stop - start, 2]`` int32."""
        began = time.perf_counter()
        examples = examples_dataset(self.task, self.split, self.lengths)[start:stop]
        sizes = np.array([features.packed_sizes(ex, self.lengths)
                          for ex in examples.to_iter_dataset(READ_OPTIONS)],
                         np.int32).reshape(-1, 2)
        logging.info("%s/%s: packed sizes of examples %d-%d in %.1f s", self.task.name,
                     self.split, start, stop - 1, time.perf_counter() - began)
        return sizes

    def share_sizes(self, process_index: int, process_count: int,
                    allgather: Callable[[np.ndarray], np.ndarray]) -> None:
        """The sizes pass split across ``process_count`` processes: this one
        sizes block ``process_index`` of the split (``ceil(examples /
        process_count)`` consecutive examples, padded with -1) and
        ``allgather(block)`` returns every process's block in process order,
        ``[process_count, block, 2]``. A collective: every process of the job
        calls it at the same point, with the same split."""
        total = self.task.num_examples(self.split)
        block = -(-total // process_count)
        start = min(process_index * block, total)
        stop = min(start + block, total)
        mine = np.full((block, 2), -1, np.int32)
        mine[:stop - start] = self.packed_sizes(start, stop)
        every = np.asarray(allgather(mine)).reshape(-1, 2)
        if every.shape[0] != block * process_count or (every[:total] < 0).any():
            raise RuntimeError(f"the processes' packed sizes do not join: {every.shape[0]} "
                               f"rows for {process_count} blocks of {block}")
        self._packed_sizes = every[:total]

    def _packed_rows(self, seed: int) -> tuple[grain.MapDataset, list[tuple[int, int]]]:
        """One epoch's order and its packed rows as ``[start, end)`` ranges of
        positions in that order (``features.packed_rows``)."""
        if self._layout is not None and self._layout[0] == seed:
            return self._layout[1:]  # the count and epoch 0 both ask for it
        order = _epoch_order(self.task, self.split, self.shuffle, seed)
        sizes = self._sizes()
        in_order = sizes[np.fromiter((order[i] for i in range(len(sizes))), np.int64,
                                     len(sizes))].tolist()
        rows = features.packed_rows(in_order, self.lengths)
        self._layout = (seed, order, rows)
        return order, rows

    def _packed_shard(self, seed: int, skip: int) -> Iterator[dict[str, np.ndarray]]:
        """Packing: this shard's rows of the epoch's packed global batches from
        batch ``skip`` on, generating only the examples in those rows."""
        order, rows = self._packed_rows(seed)
        local, global_batch = self.local_batch_size, self.local_batch_size * self.num_shards
        first = self.shard_index * local
        mine = [rows[start + first:start + first + local]
                for start in range(skip * global_batch, len(rows), global_batch)]
        mine = [batch for batch in mine if batch]
        positions = [p for batch in mine for a, b in batch for p in range(a, b)]
        if not positions:
            return
        examples = iter(grain.MapDataset.source(positions).map(order.__getitem__).map(
            functools.partial(_example, task=self.task, split=self.split,
                              lengths=self.lengths)).to_iter_dataset(READ_OPTIONS))
        for batch in mine:
            yield features.stack_rows([
                features.pack_row([next(examples) for _ in range(b - a)], self.lengths)
                for a, b in batch])

    def count_epoch_batches(self, seed: int) -> int:
        """Global batches of one epoch (packing: laid out from the examples'
        sizes, the same in every shard)."""
        global_batch = self.local_batch_size * self.num_shards
        if not self.pack:
            return math.ceil(self.task.num_examples(self.split) / global_batch)
        return math.ceil(len(self._packed_rows(seed)[1]) / global_batch)
