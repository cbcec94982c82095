"""Task and mixture names: the one place that builds them and reads them back.

A SeqIO task of this project is fully described by a few fields: the dataset
config it reads, the explanation style of its targets, whether its inputs carry
the style as a tag, an optional training subset, where the raw examples come from
and which vocabulary tokenizes them. :class:`TaskSpec` holds those fields; its
:attr:`~TaskSpec.name` is the registered name and :meth:`TaskSpec.parse` turns a
name back into the fields, so no other module splits names on ``"_"`` or
matches substrings of them. :class:`MixtureSpec` does the same for the
all-styles mixtures.

Names (``seqio_tasks`` registers exactly these)::

    task:    {dataset}_{style}[_tagged][_n{N}][_tfds][_sp]
    mixture: {dataset}_all_styles[_tfds][_sp]

A name is read from its end: the suffixes come in a fixed order and none of them
is a style, so the style is the last word before them and everything in front of
it is the dataset (dataset names may themselves contain ``"_"``, e.g.
``explistops30_len50_100``). Every spec's name parses back to an equal spec.

Pure Python (no SeqIO, TensorFlow or JAX): the registrations, the study presets,
the evaluator and the report all use it, whatever else they load.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Iterable, Sequence

from explistops_jax.explain import STYLES
from explistops_jax.errors import UserError

__all__ = [
    "MIXTURE_PATTERN",
    "MixtureSpec",
    "SOURCES",
    "TASK_PATTERN",
    "TaskSpec",
    "VOCABULARIES",
    "dataset_tasks",
    "parse",
]

SOURCES = ("function", "tfds")     # generated on the fly | prepared TFDS records
VOCABULARIES = ("domain", "sp")    # vocab.DomainVocabulary | T5's SentencePiece

TASK_PATTERN = "{dataset}_{style}[_tagged][_n<N>][_tfds][_sp]"
MIXTURE_PATTERN = "{dataset}_all_styles[_tfds][_sp]"

_DATASET = r"[\w.:]+"  # what SeqIO accepts in a name
_STYLE = "|".join(re.escape(style) for style in STYLES)
_TASK_RE = re.compile(
    rf"(?P<dataset>{_DATASET}?)_(?P<style>{_STYLE})(?P<tagged>_tagged)?"
    r"(?:_n(?P<subset>[1-9][0-9]*))?(?P<tfds>_tfds)?(?P<sp>_sp)?"
)
_MIXTURE_RE = re.compile(rf"(?P<dataset>{_DATASET}?)_all_styles(?P<tfds>_tfds)?(?P<sp>_sp)?")


def _check_common(kind: str, dataset: str, source: str, vocabulary: str) -> None:
    if not isinstance(dataset, str) or not re.fullmatch(_DATASET, dataset):
        raise UserError(f"{kind}: bad dataset name {dataset!r}",
                        expected="a non-empty name of letters, digits, '_', '.' or ':'")
    if source not in SOURCES:
        raise UserError(f"{kind}: unknown task source {source!r}",
                        expected="one of " + ", ".join(SOURCES))
    if vocabulary not in VOCABULARIES:
        raise UserError(f"{kind}: unknown vocabulary {vocabulary!r}",
                        expected="one of " + ", ".join(VOCABULARIES))


def _suffixes(source: str, vocabulary: str) -> str:
    return ("_tfds" if source == "tfds" else "") + ("_sp" if vocabulary == "sp" else "")


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """One registered task, as fields.

    Attributes:
      dataset: a dataset config name of :mod:`explistops_jax.data` (not checked
        against the known configs: configs can be registered later).
      style: the explanation style of the targets, one of ``explain.STYLES``.
      tagged: the inputs start with ``"{style}: "`` (the all-styles mixture's members).
      subset: train on the first ``subset`` training examples only (the
        data-efficiency tasks); None for the whole training split.
      source: ``"function"`` (generated) or ``"tfds"`` (prepared records).
      vocabulary: ``"domain"`` (the compact vocabulary) or ``"sp"`` (T5's SentencePiece).
    """

    dataset: str
    style: str
    tagged: bool = False
    subset: int | None = None
    source: str = "function"
    vocabulary: str = "domain"

    def __post_init__(self) -> None:
        _check_common("task spec", self.dataset, self.source, self.vocabulary)
        if self.style not in STYLES:
            raise UserError(f"task spec: unknown explanation style {self.style!r}",
                            expected="one of " + ", ".join(STYLES))
        if not isinstance(self.tagged, bool):
            raise UserError(f"task spec: tagged={self.tagged!r}", expected="True or False")
        if self.subset is not None and (
                isinstance(self.subset, bool) or not isinstance(self.subset, int)
                or self.subset < 1):
            raise UserError(f"task spec: subset={self.subset!r}",
                            expected="None or a positive number of training examples")

    @property
    def name(self) -> str:
        """The registered task name, ``{dataset}_{style}[_tagged][_n{N}][_tfds][_sp]``."""
        name = f"{self.dataset}_{self.style}"
        if self.tagged:
            name += "_tagged"
        if self.subset is not None:
            name += f"_n{self.subset}"
        return name + _suffixes(self.source, self.vocabulary)

    @property
    def sentencepiece(self) -> bool:
        """Whether the task uses T5's SentencePiece vocabulary."""
        return self.vocabulary == "sp"

    def replace(self, **changes) -> "TaskSpec":
        """A copy with some fields changed (checked like a new spec)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def parse(cls, name: str) -> "TaskSpec":
        """The spec whose :attr:`name` is ``name``; a UserError naming it otherwise."""
        match = _TASK_RE.fullmatch(name) if isinstance(name, str) else None
        if match is None:
            hint = " (that is a mixture name)" if _is_mixture(name) else ""
            raise UserError(f"malformed task name {name!r}{hint}",
                            expected=f"{TASK_PATTERN} with style one of " + ", ".join(STYLES))
        subset = match["subset"]
        return cls(match["dataset"], match["style"], tagged=bool(match["tagged"]),
                   subset=int(subset) if subset else None,
                   source="tfds" if match["tfds"] else "function",
                   vocabulary="sp" if match["sp"] else "domain")


@dataclasses.dataclass(frozen=True)
class MixtureSpec:
    """The all-styles mixture of one dataset: its tagged tasks, one per style, equal rates."""

    dataset: str
    source: str = "function"
    vocabulary: str = "domain"

    def __post_init__(self) -> None:
        _check_common("mixture spec", self.dataset, self.source, self.vocabulary)

    @property
    def name(self) -> str:
        """The registered mixture name, ``{dataset}_all_styles[_tfds][_sp]``."""
        return f"{self.dataset}_all_styles" + _suffixes(self.source, self.vocabulary)

    @property
    def sentencepiece(self) -> bool:
        """Whether the mixture's tasks use T5's SentencePiece vocabulary."""
        return self.vocabulary == "sp"

    def members(self, styles: Sequence[str] = STYLES) -> tuple[TaskSpec, ...]:
        """Its tasks: the tagged task of each style (default every style)."""
        return tuple(TaskSpec(self.dataset, style, tagged=True, source=self.source,
                              vocabulary=self.vocabulary) for style in styles)

    def replace(self, **changes) -> "MixtureSpec":
        """A copy with some fields changed (checked like a new spec)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def parse(cls, name: str) -> "MixtureSpec":
        """The spec whose :attr:`name` is ``name``; a UserError naming it otherwise."""
        match = _MIXTURE_RE.fullmatch(name) if isinstance(name, str) else None
        if match is None:
            raise UserError(f"malformed mixture name {name!r}", expected=MIXTURE_PATTERN)
        return cls(match["dataset"], source="tfds" if match["tfds"] else "function",
                   vocabulary="sp" if match["sp"] else "domain")


def _is_mixture(name: object) -> bool:
    return isinstance(name, str) and _MIXTURE_RE.fullmatch(name) is not None


def parse(name: str) -> TaskSpec | MixtureSpec:
    """The spec of a task or mixture name (the two name forms never overlap).

    A UserError naming ``name`` and both expected forms when it is neither.
    """
    if _is_mixture(name):
        return MixtureSpec.parse(name)
    if isinstance(name, str) and _TASK_RE.fullmatch(name):
        return TaskSpec.parse(name)
    raise UserError(f"malformed task or mixture name {name!r}",
                    expected=f"a task {TASK_PATTERN} (style one of {', '.join(STYLES)}) "
                             f"or a mixture {MIXTURE_PATTERN}")


def dataset_tasks(dataset: str, *, styles: Iterable[str] = STYLES,
                  subset_sizes: Iterable[int] = (), source: str = "function",
                  vocabulary: str = "domain") -> tuple[TaskSpec, ...]:
    """The tasks registered for one dataset, source and vocabulary, in registration order.

    For the whole training split every style, plain and tagged (the tagged ones
    are the mixture's members); for each subset size every style, plain only.
    ``subset_sizes`` are taken as given (the caller drops sizes above the
    dataset's training split).
    """
    styles = tuple(styles)
    specs = []
    for subset in (None, *subset_sizes):
        for style in styles:
            for tagged in (False, True) if subset is None else (False,):
                specs.append(TaskSpec(dataset, style, tagged=tagged, subset=subset,
                                      source=source, vocabulary=vocabulary))
    return tuple(specs)
