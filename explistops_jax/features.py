"""Model features from tokenized examples, in numpy: seqio's EncDecFeatureConverter without TF.

The grain pipeline turns ``{"inputs": ids, "targets": ids}`` examples into the
features the model's ``loss_fn`` reads, exactly as
``seqio.EncDecFeatureConverter(pack=..., use_custom_packing_ops=False)`` does
(a test compares the two element for element):

* padded (``pack=False``): each example is one row, trimmed to the feature
  lengths and padded with 0; ``decoder_input_tokens`` is the targets shifted
  right by one with 0 first (the token after the last target is the shifted EOS,
  as in seqio); ``decoder_loss_weights`` is 1 where a target token is not 0;
* packed (``pack=True``): the examples are taken in groups of
  ``max(lengths)`` consecutive ones (seqio's ``padded_batch`` before packing);
  within a group, each example is appended to the current row while every
  feature still fits, else the row is written and a new one started; the last
  row of a group is written at the group's end. ``*_positions`` count from 0 in
  each example, ``*_segment_ids`` from 1 in each row (0 = padding), and
  ``decoder_input_tokens`` starts every segment with 0.

All arrays are int32 of shape ``[length]`` per row.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

__all__ = ["MODEL_FEATURES", "PACKED_FEATURES", "pad_example", "packed_sizes", "pack_layout", "packed_rows",
           "pack_row", "autoregressive_inputs", "stack_rows"]

MODEL_FEATURES = ("encoder_input_tokens", "decoder_target_tokens", "decoder_input_tokens",
                  "decoder_loss_weights")
PACKED_FEATURES = ("encoder_segment_ids", "decoder_segment_ids", "encoder_positions",
                   "decoder_positions")


def _padded(ids: np.ndarray, length: int) -> np.ndarray:
    out = np.zeros(length, np.int32)
    ids = np.asarray(ids, np.int32)[:length]
    out[:len(ids)] = ids
    return out


def autoregressive_inputs(targets: np.ndarray,
                          segment_ids: np.ndarray | None = None) -> np.ndarray:
    """Targets shifted right by one with 0 first; with ``segment_ids``, the first
    token of every segment (and of the padding after it) is 0 too
    (``seqio.utils.make_autoregressive_inputs``)."""
    inputs = np.concatenate([np.zeros(1, np.int32), targets[:-1]]).astype(np.int32)
    if segment_ids is not None:
        shifted = np.concatenate([np.zeros(1, segment_ids.dtype), segment_ids[:-1]])
        inputs = inputs * (segment_ids == shifted).astype(np.int32)
    return inputs


def pad_example(example: Mapping[str, np.ndarray],
                lengths: Mapping[str, int]) -> dict[str, np.ndarray]:
    """One example as one padded row of model features."""
    inputs = _padded(example["inputs"], lengths["inputs"])
    targets = _padded(example["targets"], lengths["targets"])
    return {"encoder_input_tokens": inputs,
            "decoder_target_tokens": targets,
            "decoder_input_tokens": autoregressive_inputs(targets),
            "decoder_loss_weights": (targets != 0).astype(np.int32)}


def _packed_row(parts: Sequence[Mapping[str, np.ndarray]],
                lengths: Mapping[str, int]) -> dict[str, np.ndarray]:
    row = {}
    for key, prefix in (("inputs", "encoder"), ("targets", "decoder")):
        length = lengths[key]
        tokens = np.zeros(length, np.int32)
        positions = np.zeros(length, np.int32)
        segments = np.zeros(length, np.int32)
        at = 0
        for segment, part in enumerate(parts, start=1):
            ids = part[key]
            tokens[at:at + len(ids)] = ids
            positions[at:at + len(ids)] = np.arange(len(ids), dtype=np.int32)
            segments[at:at + len(ids)] = segment
            at += len(ids)
        # seqio: cumsum(positions == 0) * (tokens != 0)
        row[f"{prefix}_tokens"] = tokens
        row[f"{prefix}_positions"] = positions
        row[f"{prefix}_segment_ids"] = segments * (tokens != 0)
    targets = row.pop("decoder_tokens")
    return {"encoder_input_tokens": row.pop("encoder_tokens"),
            "decoder_target_tokens": targets,
            "decoder_input_tokens": autoregressive_inputs(targets,
                                                          row["decoder_segment_ids"]),
            "decoder_loss_weights": (targets != 0).astype(np.int32),
            **row}


def _trimmed(example: Mapping[str, np.ndarray],
             lengths: Mapping[str, int]) -> dict[str, np.ndarray]:
    """An example's sequences as packing reads them: up to the feature length,
    then up to the first 0 (seqio's ``padded_batch`` padding)."""
    one = {}
    for key in ("inputs", "targets"):
        ids = np.asarray(example[key], np.int32)[:lengths[key]]
        one[key] = ids[:int(np.count_nonzero(ids))]
    return one


def packed_sizes(example: Mapping[str, np.ndarray],
                 lengths: Mapping[str, int]) -> tuple[int, int]:
    """The (inputs, targets) tokens an example takes in a packed row: all that
    :func:`pack_layout` needs to know of it."""
    one = _trimmed(example, lengths)
    return len(one["inputs"]), len(one["targets"])


def pack_layout(sizes: Sequence[tuple[int, int]], lengths: Mapping[str, int]) -> list[int]:
    """Where the packed rows of one group start: the index in ``sizes`` (the
    group's :func:`packed_sizes`, in order) of each row's first example. Row
    ``k`` holds the examples from ``starts[k]`` up to the next start."""
    starts = [0]
    used_inputs = used_targets = 0
    for index, (inputs, targets) in enumerate(sizes):
        if used_inputs + inputs > lengths["inputs"] or used_targets + targets > lengths["targets"]:
            starts.append(index)
            used_inputs = used_targets = 0
        used_inputs += inputs
        used_targets += targets
    return starts


def packed_rows(sizes: Sequence[tuple[int, int]],
                lengths: Mapping[str, int]) -> list[tuple[int, int]]:
    """The packed rows of a sequence of examples, as ``[start, end)`` ranges of
    positions in ``sizes`` (their :func:`packed_sizes`, in order): groups of
    ``max(lengths)`` consecutive examples, each laid out by :func:`pack_layout`
    (as SeqIO packs)."""
    group = max(lengths.values())
    rows: list[tuple[int, int]] = []
    for first in range(0, len(sizes), group):
        last = min(first + group, len(sizes))
        starts = pack_layout(sizes[first:last], lengths)
        bounds = [first + start for start in starts] + [last]
        rows.extend(zip(bounds[:-1], bounds[1:]))
    return rows


def pack_row(examples: Sequence[Mapping[str, np.ndarray]],
             lengths: Mapping[str, int]) -> dict[str, np.ndarray]:
    """One packed row of ``examples`` (which :func:`pack_layout` put together)."""
    return _packed_row([_trimmed(e, lengths) for e in examples], lengths)


def stack_rows(rows: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Rows of features -> one batch ``{feature: [rows, length]}``."""
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}
