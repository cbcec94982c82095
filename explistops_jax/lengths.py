"""How many tokens a task's examples take, and whether a run's lengths hold them.

A run's ``TASK_FEATURE_LENGTHS`` must hold every example it reads: a cut input
loses part of the expression and a cut explanation loses its ``Final answer``,
so the model would learn from examples that never state the answer. This module
gives, for a task and a split, the exact longest input and target in tokens
(EOS included) and the total of each (for the padding share), and checks a run's
lengths against them before anything is trained or scored.

Where the numbers come from:

* the built-in generated datasets with the domain vocabulary: a committed table
  (``lengths_table.json`` beside this module; ``scripts/length_table.py`` writes
  it, tests regenerate the CPU datasets' rows and spot-check explistops30), so a
  run starts without a pass over its data. The table holds each split's inputs
  per notation and targets per style; a ``_tagged`` task adds its prefix's
  tokens to every input.
* anything else (a training subset ``_n{N}``, a dataset registered at run time,
  a task imported from files, T5's SentencePiece ``_sp`` tasks, tasks registered
  with SeqIO): a pass over the split with the vocabulary the run uses, at start.

Pure Python for the project's own tasks; SeqIO is imported only for tasks that
only SeqIO can read (and for the SentencePiece vocabulary).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

from explistops_jax import data, explain
from explistops_jax.errors import ConfigError, UserError
from explistops_jax.task_spec import NOTATIONS, MixtureSpec, TaskSpec, parse

__all__ = [
    "FEATURES",
    "MULTIPLE",
    "SplitLengths",
    "TruncationError",
    "INPUTS_MARGIN",
    "Packing",
    "build_table",
    "combine",
    "packing",
    "row_lengths",
    "table_text",
    "check_fit",
    "count_cut",
    "measure",
    "round_up",
    "split_lengths",
    "table",
    "TABLE_PATH",
]

FEATURES = ("inputs", "targets")
MULTIPLE = 8  # lengths are rounded up to a multiple of this (accelerator tiles)
TABLE_PATH = Path(__file__).with_name("lengths_table.json")


class TruncationError(ConfigError):
    """A run's feature lengths would cut some of the examples it reads."""


@dataclasses.dataclass(frozen=True)
class SplitLengths:
    """Token counts of one split of one task (EOS included).

    Attributes:
      task, split: what was measured.
      num_examples: how many examples (a subset's or ``max_examples``' prefix).
      longest: ``{"inputs": n, "targets": m}``, the longest example of each feature.
      total: ``{"inputs": N, "targets": M}``, the tokens of all examples.
      source: ``"table"`` or ``"measured"``.
    """

    task: str
    split: str
    num_examples: int
    longest: Mapping[str, int]
    total: Mapping[str, int]
    source: str = "measured"

    def mean(self, feature: str) -> float:
        return self.total[feature] / self.num_examples if self.num_examples else 0.0

    def padding(self, lengths: Mapping[str, int], feature: str = "targets") -> float:
        """The share of ``feature`` positions that are padding, one example a row."""
        if not self.num_examples:
            return 0.0
        return 1.0 - self.total[feature] / (self.num_examples * lengths[feature])

    def fits(self, lengths: Mapping[str, int]) -> bool:
        return all(self.longest[f] <= lengths[f] for f in FEATURES)


def round_up(n: int, multiple: int = MULTIPLE) -> int:
    """``n`` rounded up to a multiple of ``multiple``."""
    return -(-int(n) // multiple) * multiple


# ----------------------------------------------------------------- token counts


def _token_counts(task_name: str, split: str, limit: int | None = None,
                  vocabulary: Any = None) -> Iterator[tuple[int, int]]:
    """(inputs, targets) tokens with EOS of each example of ``split``, in order."""
    from explistops_jax import own_tasks

    spec = _spec(task_name)
    if own_tasks.is_own(task_name):
        (task,) = own_tasks.get_tasks(task_name)
        count = _limited(task.num_examples(split), limit)
        for index in range(count):
            example = task.example(split, index, None)
            yield len(example["inputs"]), len(example["targets"])
        return
    if (isinstance(spec, TaskSpec) and spec.source == "function"
            and spec.dataset in data.DATASETS):
        # A generated task in another vocabulary (T5's SentencePiece): the same
        # texts as the domain task, tokenized as SeqIO's `tokenize` does.
        (task,) = own_tasks.get_tasks(spec.replace(vocabulary="domain").name)
        vocabulary = vocabulary or _vocabulary_of(task_name, spec)
        count = _limited(task.num_examples(split), limit)
        for index in range(count):
            example = task.example(split, index, None)
            yield (len(vocabulary.encode(example["inputs_pretokenized"].decode())) + 1,
                   len(vocabulary.encode(example["targets_pretokenized"].decode())) + 1)
        return
    yield from _seqio_token_counts(task_name, split, limit)


def _limited(size: int, limit: int | None) -> int:
    return size if limit is None else min(size, limit)


def _spec(task_name: str) -> TaskSpec | MixtureSpec | None:
    try:
        return parse(task_name)
    except UserError:
        return None


def _vocabulary_of(task_name: str, spec: TaskSpec):
    if spec.vocabulary == "sp":
        from explistops_jax import vocab

        return vocab.sentencepiece_vocabulary()
    raise UserError(f"no vocabulary known for task {task_name!r}")


def _seqio_token_counts(task_name: str, split: str,
                        limit: int | None) -> Iterator[tuple[int, int]]:
    """A registered SeqIO task, untrimmed (``sequence_length=None``: EOS appended)."""
    from explistops_jax import seqio_backend

    task = seqio_backend.get_provider(task_name)
    dataset = task.get_dataset(sequence_length=None, split=split, shuffle=False)
    if limit is not None:
        dataset = dataset.take(limit)
    for example in dataset.as_numpy_iterator():
        yield len(example["inputs"]), len(example["targets"])


def measure(task_name: str, split: str, *, limit: int | None = None,
            vocabulary: Any = None) -> SplitLengths:
    """One pass over ``split`` (its first ``limit`` examples) with the task's vocabulary."""
    n = 0
    longest = {f: 0 for f in FEATURES}
    total = {f: 0 for f in FEATURES}
    for counts in _token_counts(task_name, split, limit, vocabulary):
        n += 1
        for feature, count in zip(FEATURES, counts):
            total[feature] += count
            longest[feature] = max(longest[feature], count)
    return SplitLengths(task_name, split, n, longest, total)


def count_cut(task_name: str, split: str, lengths: Mapping[str, int], *,
              limit: int | None = None) -> int:
    """How many examples of ``split`` ``lengths`` would cut (either feature)."""
    return sum(1 for inputs, targets in _token_counts(task_name, split, limit)
               if inputs > lengths["inputs"] or targets > lengths["targets"])


# ----------------------------------------------------------------- the table


@functools.lru_cache(maxsize=1)
def table() -> dict[str, Any]:
    """The committed table (``{"datasets": {name: {split: row}}}``)."""
    return json.loads(TABLE_PATH.read_text())


def _table_row(spec: TaskSpec, split: str) -> Mapping[str, Any] | None:
    """The table's row for a generated domain task's whole split, if it has one
    (and the dataset is still the built-in config the table was made from)."""
    if (spec.vocabulary != "domain" or not _builtin(spec)
            or (spec.subset is not None and split == "train")):
        return None
    return table()["datasets"].get(spec.dataset, {}).get(split)


def _prefix_tokens(style: str) -> int:
    """Tokens a ``_tagged`` task puts before every input (``"medium: "``)."""
    from explistops_jax import own_tasks

    return len(own_tasks.domain_table().encode(f"{style}:"))


def split_lengths(task_name: str, split: str, *, limit: int | None = None,
                  vocabulary: Any = None) -> SplitLengths:
    """The token counts of ``split`` of one task: from the table where it has
    them (whole built-in splits, domain vocabulary), else measured."""
    spec = _spec(task_name)
    if isinstance(spec, TaskSpec) and vocabulary is None:
        row = _table_row(spec, split)
        if row is not None and (limit is None or limit >= row["num_examples"]):
            n = row["num_examples"]
            inputs_max, inputs_total = row["inputs"][spec.notation]
            if spec.tagged:
                extra = _prefix_tokens(spec.style)
                inputs_max, inputs_total = inputs_max + extra, inputs_total + extra * n
            targets_max, targets_total = row["targets"][spec.style]
            return SplitLengths(task_name, split, n,
                                {"inputs": inputs_max, "targets": targets_max},
                                {"inputs": inputs_total, "targets": targets_total}, "table")
    if isinstance(spec, TaskSpec) and vocabulary is None and _builtin(spec):
        # the same every time: measured once per process (a subset; SentencePiece)
        return _measured_builtin(task_name, split, limit, _model_path(spec))
    return measure(task_name, split, limit=limit, vocabulary=vocabulary)


def _builtin(spec: TaskSpec) -> bool:
    """A generated task of a built-in dataset, as defined in data.py."""
    return (spec.source == "function" and spec.dataset in data.BUILTIN_CONFIGS
            and data.DATASETS.get(spec.dataset) == data.BUILTIN_CONFIGS[spec.dataset])


def _model_path(spec: TaskSpec) -> str | None:
    """The SentencePiece model an ``_sp`` task is tokenized with (None: domain)."""
    if spec.vocabulary != "sp":
        return None
    from explistops_jax import vocab

    return vocab.sentencepiece_model_path()


@functools.lru_cache(maxsize=None)
def _measured_builtin(task_name: str, split: str, limit: int | None,
                      model_path: str | None) -> SplitLengths:
    return measure(task_name, split, limit=limit)


def _member_tasks(name: str) -> list[str]:
    spec = _spec(name)
    if isinstance(spec, MixtureSpec):
        return [member.name for member in spec.members()]
    if spec is None:
        from explistops_jax import own_tasks

        if own_tasks.file_task(name) is None:
            from explistops_jax import seqio_backend

            provider = seqio_backend.get_provider(name)
            return [task.name for task in getattr(provider, "tasks", [provider])]
    return [name]


def combine(parts: Sequence[SplitLengths]) -> SplitLengths:
    """Several splits' counts as one (longest of all, totals summed)."""
    return SplitLengths(
        parts[0].task, "+".join(p.split for p in parts), sum(p.num_examples for p in parts),
        {f: max(p.longest[f] for p in parts) for f in FEATURES},
        {f: sum(p.total[f] for p in parts) for f in FEATURES},
        "table" if all(p.source == "table" for p in parts) else "measured")


# ----------------------------------------------------------------- row lengths

# A packed row's inputs are sized so that the targets fill first: the inputs of
# the examples that fill the targets, with this margin for their spread.
INPUTS_MARGIN = 1.25


def row_lengths(need: SplitLengths, *, pack: bool = False,
                targets_factor: int = 1) -> dict[str, int]:
    """The feature lengths of a run's rows (the project's rule).

    Unpacked: the longest example of each feature, rounded up to a multiple of
    :data:`MULTIPLE`, so nothing is cut and a row is padded only up to the next
    multiple past the longest. Packed: the targets hold ``targets_factor`` times
    that; the inputs hold the longest input, and at least the inputs of the
    examples whose targets fill a row (by the mean tokens of each feature, with
    :data:`INPUTS_MARGIN`), so that a row is closed by its targets.
    """
    unpacked = {f: round_up(need.longest[f]) for f in FEATURES}
    if not pack:
        return unpacked
    if targets_factor < 1:
        raise ConfigError(f"targets factor {targets_factor}", expected="an integer >= 1")
    targets = unpacked["targets"] * targets_factor
    per_target = need.mean("inputs") / max(need.mean("targets"), 1e-9)
    inputs = max(unpacked["inputs"], round_up(INPUTS_MARGIN * targets * per_target))
    return {"inputs": inputs, "targets": targets}


@dataclasses.dataclass(frozen=True)
class Packing:
    """How one split packs into rows of given lengths (in index order)."""

    examples: int
    rows: int
    padding: Mapping[str, float]  # share of each feature's positions that is padding

    @property
    def examples_per_row(self) -> float:
        return self.examples / self.rows if self.rows else 0.0


def packing(task_name: str, split: str, lengths: Mapping[str, int], *,
            limit: int | None = None, vocabulary: Any = None) -> Packing:
    """Packs ``split`` (index order, as ``features.packed_rows`` lays out an
    epoch) into rows of ``lengths``: one pass over the split. The examples are
    independent draws, so an epoch's shuffled order packs alike."""
    from explistops_jax import features

    sizes = [tuple(min(n, lengths[f]) for f, n in zip(FEATURES, counts))
             for counts in _token_counts(task_name, split, limit, vocabulary)]
    rows = len(features.packed_rows(sizes, lengths))
    totals = {f: sum(size[i] for size in sizes) for i, f in enumerate(FEATURES)}
    return Packing(len(sizes), rows,
                   {f: 1.0 - totals[f] / (rows * lengths[f]) if rows else 0.0
                    for f in FEATURES})


# ----------------------------------------------------------------- the check


def check_fit(task_name: str, splits: Sequence[str], lengths: Mapping[str, int], *,
              allow: bool = False, limit: int | None = None,
              where: str = "TASK_FEATURE_LENGTHS") -> dict[str, int]:
    """Whether ``lengths`` hold every example of ``splits`` of a task or mixture.

    Returns ``{"task/split": examples cut}`` for the splits that would be cut
    (empty when everything fits). Unless ``allow``, a cut raises
    :class:`TruncationError`, one line naming the task, split, how many examples
    are cut and the lengths they need; with ``allow``, a warning is logged and
    the caller records the counts.
    """
    cut: dict[str, int] = {}
    messages = []
    for member in _member_tasks(task_name):
        for split in splits:
            found = split_lengths(member, split, limit=limit)
            if found.fits(lengths):
                continue
            count = count_cut(member, split, lengths, limit=limit)
            cut[f"{member}/{split}"] = count
            need = ", ".join(f"{f} {found.longest[f]}" for f in FEATURES
                             if found.longest[f] > lengths[f])
            messages.append(f"{member}/{split}: {count:,} of {found.num_examples:,} examples "
                            f"would be cut (they need {need}; given inputs "
                            f"{lengths['inputs']}, targets {lengths['targets']})")
    if messages and not allow:
        raise TruncationError("; ".join(messages), where=where,
                              expected="lengths that hold the data, or allow_truncation=True "
                                       "(--allow_truncation) to train and score cut examples")
    for message in messages:
        logging.warning("truncation allowed: %s", message)
    return cut


# ----------------------------------------------------------------- making the table


def _split_row(config: data.DatasetConfig, split: str,
               styles: Sequence[str] = explain.STYLES) -> dict[str, Any]:
    """One table row: every notation's inputs and every style's targets."""
    from explistops_jax import own_tasks

    tasks = {style: own_tasks.OwnTask(TaskSpec(config.name, style)) for style in styles}
    paren = own_tasks.OwnTask(TaskSpec(config.name, styles[0], notation="paren"))
    inputs = {n: [0, 0] for n in NOTATIONS}
    targets = {s: [0, 0] for s in styles}
    size = config.split(split).num_examples
    for index in range(size):
        raw = tasks[styles[0]].raw_example(split, index)
        for style, task in tasks.items():
            example = task.preprocess(raw, None)
            _add(targets[style], len(example["targets"]))
            if style == styles[0]:
                _add(inputs["bracket"], len(example["inputs"]))
        _add(inputs["paren"], len(paren.preprocess(raw, None)["inputs"]))
    return {"num_examples": size, "inputs": inputs, "targets": targets}


def _add(entry: list[int], count: int) -> None:
    entry[0] = max(entry[0], count)
    entry[1] += count


def build_table(datasets: Iterable[str], *, workers: int = 1) -> dict[str, Any]:
    """The table rows of ``datasets`` (built-in names), every split."""
    jobs = [(name, split) for name in datasets for split in data.get_config(name).splits]
    if workers > 1:
        import multiprocessing

        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            rows = pool.starmap(_row_job, jobs)
    else:
        rows = [_row_job(*job) for job in jobs]
    out: dict[str, Any] = {}
    for (name, split), row in zip(jobs, rows):
        out.setdefault(name, {})[split] = row
    return out


def _row_job(name: str, split: str) -> dict[str, Any]:
    return _split_row(data.get_config(name), split)


def table_text(datasets: Mapping[str, Any]) -> str:
    """The table file's bytes (sorted keys, one split per line block)."""
    return json.dumps({"vocabulary": "domain", "eos_included": True, "datasets": datasets},
                      indent=1, sort_keys=True) + "\n"
