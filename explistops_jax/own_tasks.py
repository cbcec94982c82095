"""The project's own tasks without SeqIO: what a task name means, in pure Python.

A name that :func:`explistops_jax.task_spec.parse` accepts, whose dataset is a
known config (``data.DATASETS``), generated on the fly (not ``_tfds``) and with
the domain vocabulary (not ``_sp``), is fully described by its spec, so it needs
no registry: :class:`OwnTask` turns example ``i`` of a split into the same
preprocessed example as the registered ``seqio_tasks`` task of that name
(``inputs``/``targets`` token ids, trimmed with EOS last, the ``*_pretokenized``
texts and the raw fields, with the types of SeqIO's numpy iterator), and carries
the same postprocessing and metric functions. The grain input pipeline reads
these; other names (tasks a user registers, ``_tfds``/``_sp`` variants) are
SeqIO's (:func:`own_spec` returns None for them).

Example ``i`` is a pure function of (config, split, i): ``data.examples(config,
split, i, i + 1)``, so any process generates only the indices it reads.

Tasks imported from files (:mod:`explistops_jax.file_tasks`) are registered here
by :func:`register_file_task` (the ``--task_file`` option of train and eval) and
read by the same grain pipeline: a :class:`FileTask` gives example ``i`` of a
split from the imported rows, with the file's own target as ``targets``.

Both satisfy :class:`explistops_jax.backends.InputTask`, the interface the
trainer's batches, the evaluator and predict read whichever backend reads a task.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from explistops_jax import data, domain_vocab, explain, features, file_tasks, listops, scoring
from explistops_jax.errors import UserError
from explistops_jax.task_spec import MixtureSpec, TaskSpec, file_task_name, parse

__all__ = ["Feature", "FileTask", "OwnTask", "own_spec", "is_own", "get_tasks",
           "domain_table", "raw_examples_for", "register_file_task", "file_task"]

# name -> FileTask: the tasks imported from files that this process registered.
_FILE_TASKS: dict[str, "FileTask"] = {}


@functools.lru_cache(maxsize=None)
def domain_table(vocabulary: str = "domain") -> domain_vocab.DomainTable:
    """The domain vocabulary of the own tasks (``seqio_tasks.domain_vocabulary``'s
    ids); ``"digits"``: the same pieces with only 0-9 as numbers, larger numbers
    spelled digit by digit (the ``_digits`` tasks, grain only)."""
    if vocabulary == "digits":
        return domain_vocab.DomainTable(max_value=domain_vocab.DIGITS_MAX_VALUE)
    return domain_vocab.DomainTable()


@dataclasses.dataclass(frozen=True)
class Feature:
    """``seqio.Feature``'s two fields that the evaluator reads."""

    vocabulary: Any
    add_eos: bool = True


def own_spec(name: str) -> TaskSpec | MixtureSpec | None:
    """The spec of one of the project's own tasks or mixtures that needs no
    SeqIO (see the module doc); None for any other name."""
    try:
        spec = parse(name)
    except UserError:
        return None
    if spec.source != "function" or spec.vocabulary not in ("domain", "digits"):
        return None
    if spec.dataset not in data.DATASETS:
        return None
    if isinstance(spec, TaskSpec) and spec.subset is not None and (
            "train" not in data.DATASETS[spec.dataset].splits):
        return None
    return spec


def is_own(name: str) -> bool:
    """Whether ``name`` is a task or mixture :func:`own_spec` describes, or a
    registered file task."""
    return own_spec(name) is not None or name in _FILE_TASKS


def get_tasks(name: str) -> list["OwnTask"]:
    """The task ``name`` (one) or the members of the mixture ``name``."""
    if name in _FILE_TASKS:
        return [_FILE_TASKS[name]]
    spec = own_spec(name)
    if spec is None:
        raise UserError(f"{name!r} is not one of this project's generated tasks",
                        expected="a name TaskSpec.parse reads, of a dataset in "
                                 "explistops_jax.data.DATASETS (no _tfds, no _sp)")
    if isinstance(spec, MixtureSpec):
        return [OwnTask(member) for member in spec.members()]
    return [OwnTask(spec)]


class OwnTask:
    """One own task: its splits, examples, preprocessing, postprocessing, metrics
    (:class:`explistops_jax.backends.InputTask`, read by the grain backend).

    The attributes the evaluator reads of a ``seqio.Task`` have the same names
    here (``name``, ``splits``, ``output_features``, ``postprocess_fn``,
    ``predict_metric_fns``, ``score_metric_fns``).
    """

    backend = "grain"
    needs_registry = False
    score_metric_fns: list[Callable] = []

    def __init__(self, spec: TaskSpec):
        self.spec = spec
        self.name = spec.name
        self.config = data.get_config(spec.dataset)
        self._domain_features()

    def _domain_features(self) -> None:
        """The domain vocabulary for inputs and targets, and the study's metrics."""
        self.vocabulary = domain_table(self.spec.vocabulary if self.spec else "domain")
        feature = Feature(self.vocabulary)
        self.output_features = {"inputs": feature, "targets": feature}
        self.predict_metric_fns = list(scoring.METRIC_FNS)

    def __repr__(self) -> str:
        return f"OwnTask({self.name!r})"

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(self.config.splits)

    @staticmethod
    def postprocess_fn(output: Any, example: Mapping | None = None,
                       is_target: bool = False) -> dict:
        return scoring.postprocess(output, example=example, is_target=is_target)

    def num_examples(self, split: str) -> int:
        """Examples in ``split`` (a ``_n{N}`` task's train split: the first N)."""
        size = self.config.split(split).num_examples
        if split == "train" and self.spec.subset is not None:
            size = min(size, self.spec.subset)
        return size

    def raw_example(self, split: str, index: int) -> dict[str, Any]:
        """Example ``index`` of ``split`` as ``data.examples`` gives it (with its tree)."""
        return next(data.examples(self.config, split, index, index + 1, with_tree=True))

    def raw_examples(self, split: str, max_examples: int | None = None) -> list[dict]:
        """The first ``max_examples`` raw examples of ``split``, in order, with the
        fields and types of the registered task's source (no tree)."""
        count = self.num_examples(split)
        if max_examples is not None:
            count = min(count, max_examples)
        return [_raw_fields(self.raw_example(split, index)) for index in range(count)]

    def read_split(self, split: str, lengths: Mapping[str, int],
                   max_examples: int | None = None) -> tuple[list[dict], list[dict]]:
        """The first ``max_examples`` preprocessed examples of ``split`` in order,
        and their padded model features (what the evaluator decodes)."""
        count = self.num_examples(split)
        if max_examples is not None:
            count = min(count, max_examples)
        examples = [self.example(split, index, lengths) for index in range(count)]
        return examples, [features.pad_example(ex, lengths) for ex in examples]

    def preprocess_raw(self, raw: Sequence[Mapping[str, Any]], lengths: Mapping[str, int]
                       ) -> tuple[list[dict], list[dict]]:
        """Raw examples (:func:`raw_examples_for`) preprocessed, and their padded
        model features."""
        examples = [self.preprocess(r, lengths) for r in raw]
        return examples, [features.pad_example(ex, lengths) for ex in examples]

    def with_style(self, style: str) -> "OwnTask | None":
        """This task with targets of ``style`` (a UserError for an unknown style)."""
        if self.spec is None:
            return None
        spec = self.spec.replace(style=style)
        return self if spec == self.spec else OwnTask(spec)

    def example(self, split: str, index: int,
                lengths: Mapping[str, int] | None) -> dict[str, Any]:
        """The preprocessed example ``index`` of ``split`` (see :meth:`preprocess`)."""
        return self.preprocess(self.raw_example(split, index), lengths)

    def preprocess(self, raw: Mapping[str, Any],
                   lengths: Mapping[str, int] | None) -> dict[str, Any]:
        """A raw example (``id``, ``index``, ``expression``, ``answer``, ``length``,
        ``depth``, ``modulus``, optionally ``tree``) -> the task's example:
        the raw fields plus ``inputs``/``targets`` (int32 ids, trimmed to
        ``lengths`` less one, then EOS) and their ``*_pretokenized`` texts, with
        the types of SeqIO's numpy iterator (bytes, numpy scalars)."""
        spec = self.spec
        expression = str(raw["expression"])
        tree = raw.get("tree")
        if tree is None:
            tree = listops.parse(expression)
        modulus = int(raw["modulus"])
        inputs = expression if spec.notation == "bracket" else listops.format(tree, spec.notation)
        if spec.tagged:
            inputs = f"{spec.style}: {inputs}"
        targets = explain.explain(tree, spec.style, modulus=modulus)
        return self._preprocessed(raw, inputs, targets, lengths)

    def _preprocessed(self, raw: Mapping[str, Any], inputs: str, targets: str,
                      lengths: Mapping[str, int] | None) -> dict[str, Any]:
        """The raw fields, the texts and their ids, with SeqIO's numpy types."""
        return {
            **_raw_fields(raw, with_target=False),
            "inputs_pretokenized": inputs.encode("utf-8"),
            "targets_pretokenized": targets.encode("utf-8"),
            "inputs": self._tokens(inputs, lengths and lengths.get("inputs")),
            "targets": self._tokens(targets, lengths and lengths.get("targets")),
        }

    def _tokens(self, text: str, length: int | None) -> np.ndarray:
        """``tokenize`` + ``append_eos_after_trim``: ids[:length - 1] + [EOS]."""
        ids = self.vocabulary.encode(text)
        if length:
            ids = ids[:length - 1]
        ids.append(self.vocabulary.eos_id)
        return np.asarray(ids, np.int32)


class FileTask(OwnTask):
    """A task imported from files (:func:`file_tasks.import_files`), read like an
    own task: example ``i`` of a split is row ``i`` of the imported split, its
    inputs the expression in the task's notation, its targets the file's target
    (a bare answer or an explanation, as imported); ``answer`` is the project's
    evaluation of the input, which the evaluator scores against."""

    def __init__(self, data: file_tasks.FileData, notation: str = "bracket"):
        self.spec = None
        self.data = data
        self.notation = notation
        self.name = file_task_name(data.name, notation)
        self._domain_features()

    def __repr__(self) -> str:
        return f"FileTask({self.name!r}, {str(self.data.path)!r})"

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(self.data.splits)

    @property
    def config(self) -> "FileTask":
        """What an own task's ``config`` gives the pipeline: ``split(name)`` (checked)."""
        return self

    def split(self, name: str):
        """The rows of split ``name``; a UserError naming the known splits."""
        return self._rows(name)

    def _rows(self, split: str):
        try:
            return self.data.splits[split]
        except KeyError:
            raise UserError(f"task {self.name!r} has no split {split!r}",
                            expected="one of " + ", ".join(self.data.splits)) from None

    def num_examples(self, split: str) -> int:
        return len(self._rows(split))

    def raw_example(self, split: str, index: int) -> dict[str, Any]:
        row = self._rows(split)[index]
        return {"id": f"{self.data.name}/{split}/{index}", "index": index,
                "expression": row["expression"], "answer": row["answer"],
                "length": row["length"], "depth": row["depth"], "modulus": row["modulus"],
                "target": row["target"]}

    def preprocess(self, raw: Mapping[str, Any],
                   lengths: Mapping[str, int] | None) -> dict[str, Any]:
        """As :meth:`OwnTask.preprocess`, with the raw example's ``target`` as targets."""
        expression = str(raw["expression"])
        inputs = expression if self.notation == "bracket" else listops.format(
            listops.parse(expression), self.notation)
        return self._preprocessed(raw, inputs, str(raw["target"]), lengths)


def _raw_fields(raw: Mapping[str, Any], with_target: bool = True) -> dict[str, Any]:
    """A raw example's fields with the types of SeqIO's numpy iterator (bytes,
    numpy scalars), as the registered tasks' source gives them."""
    out = {
        "id": str(raw["id"]).encode("utf-8"),
        "index": np.int64(raw["index"]),
        "expression": str(raw["expression"]).encode("utf-8"),
        "answer": np.int32(raw["answer"]),
        "length": np.int32(raw["length"]),
        "depth": np.int32(raw["depth"]),
        "modulus": np.int32(int(raw["modulus"])),
    }
    if with_target and "target" in raw:
        out["target"] = str(raw["target"]).encode("utf-8")
    return out


def register_file_task(path: str | Path, name: str | None = None, *,
                       replace: bool = False) -> list[str]:
    """Register the task imported into directory ``path`` (``explistops data
    import``) under ``name`` (default: the name it was imported as), with inputs
    in bracket notation, and under ``name + "_paren"`` with LRA's parenthesized
    inputs. Registering the same directory again is a no-op; another directory
    under a taken name is an error unless ``replace``. Returns the two names."""
    loaded = file_tasks.load(path)
    if name is not None and name != loaded.name:
        loaded = dataclasses.replace(loaded, name=name)
    names = []
    for notation in ("bracket", "paren"):
        task = FileTask(loaded, notation)
        old = _FILE_TASKS.get(task.name)
        if old is not None and old.data.path != loaded.path and not replace:
            raise UserError(f"task {task.name!r} is already registered from {old.data.path}",
                            expected="another name, or the same directory")
        _FILE_TASKS[task.name] = task
        names.append(task.name)
    return names


def file_task(name: str) -> FileTask | None:
    """The registered file task ``name``, or None."""
    return _FILE_TASKS.get(name)


def raw_examples_for(expressions: Sequence[str], modulus: int) -> list[dict[str, Any]]:
    """Raw examples (as ``data.examples`` gives them) for user-typed expressions."""
    out = []
    for i, text in enumerate(expressions):
        tree = listops.parse(text)
        out.append({"id": f"predict/{i}", "index": i, "expression": listops.format(tree),
                    "answer": listops.evaluate(tree, modulus), "length": listops.length(tree),
                    "depth": listops.depth(tree), "modulus": modulus, "tree": tree})
    return out
