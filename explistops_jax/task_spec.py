"""Task and mixture names: the one place that builds them and reads them back.

A SeqIO task of this project is fully described by a few fields: the dataset
config it reads, the explanation style of its targets, whether its inputs carry
the style as a tag, an optional training subset, the notation of its inputs,
where the raw examples come from and which vocabulary tokenizes them. :class:`TaskSpec` holds those fields; its
:attr:`~TaskSpec.name` is the registered name and :meth:`TaskSpec.parse` turns a
name back into the fields, so no other module splits names on ``"_"`` or
matches substrings of them. :class:`MixtureSpec` does the same for the
all-styles mixtures.

Names (``seqio_tasks`` registers exactly these)::

    task:    {dataset}_{style}[_tagged][_n{N}][_paren][_tfds][_sp]
    mixture: {dataset}_all_styles[_tfds][_sp]
    file task: {name}[_paren]        (a task imported from files: own_tasks.FileTask)

``_paren``: the inputs are written in LRA's parenthesized notation
(``listops.format(tree, "paren")``), as the study's authors fed them; without it,
in bracket notation. The examples, targets and answers are the same.

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
    "NOTATIONS",
    "SOURCES",
    "TASK_PATTERN",
    "TaskSpec",
    "VOCABULARIES",
    "check_file_task_name",
    "dataset_tasks",
    "file_task_name",
    "parse",
    "parse_file_task_name",
    "spec_of",
    "style_of",
]

SOURCES = ("function", "tfds")     # generated on the fly | prepared TFDS records
VOCABULARIES = ("domain", "sp", "digits")  # vocab.DomainVocabulary | T5's SentencePiece |
# the domain vocabulary with numbers from 10 up spelled in digits (domain_vocab.DIGITS_MAX_VALUE)
NOTATIONS = ("bracket", "paren")   # inputs as [MAX 2 9 ] | LRA's ( ( [MAX 2 ) 9 ) ]

TASK_PATTERN = "{dataset}_{style}[_tagged][_n<N>][_paren][_tfds][_sp|_digits]"
MIXTURE_PATTERN = "{dataset}_all_styles[_tfds][_sp|_digits]"

_DATASET = r"[\w.:]+"  # what SeqIO accepts in a name
_STYLE = "|".join(re.escape(style) for style in STYLES)
_TASK_RE = re.compile(
    rf"(?P<dataset>{_DATASET}?)_(?P<style>{_STYLE})(?P<tagged>_tagged)?"
    r"(?:_n(?P<subset>[1-9][0-9]*))?(?P<paren>_paren)?(?P<tfds>_tfds)?"
    r"(?:(?P<sp>_sp)|(?P<digits>_digits))?"
)
_MIXTURE_RE = re.compile(rf"(?P<dataset>{_DATASET}?)_all_styles(?P<tfds>_tfds)?"
                         r"(?:(?P<sp>_sp)|(?P<digits>_digits))?")


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


def _check_notation(kind: str, notation: str) -> None:
    if notation not in NOTATIONS:
        raise UserError(f"{kind}: unknown input notation {notation!r}",
                        expected="one of " + ", ".join(NOTATIONS))


def _suffixes(source: str, vocabulary: str) -> str:
    return ("_tfds" if source == "tfds" else "") + {"domain": "", "sp": "_sp",
                                                     "digits": "_digits"}[vocabulary]


def _vocabulary(match: re.Match) -> str:
    return "sp" if match["sp"] else "digits" if match["digits"] else "domain"


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
      notation: the inputs' notation, ``"bracket"`` or ``"paren"`` (LRA's).
    """

    dataset: str
    style: str
    tagged: bool = False
    subset: int | None = None
    source: str = "function"
    vocabulary: str = "domain"
    notation: str = "bracket"

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
        _check_notation("task spec", self.notation)

    @property
    def name(self) -> str:
        """The registered task name,
        ``{dataset}_{style}[_tagged][_n{N}][_paren][_tfds][_sp|_digits]``."""
        name = f"{self.dataset}_{self.style}"
        if self.tagged:
            name += "_tagged"
        if self.subset is not None:
            name += f"_n{self.subset}"
        if self.notation == "paren":
            name += "_paren"
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
                   vocabulary=_vocabulary(match),
                   notation="paren" if match["paren"] else "bracket")


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
                   vocabulary=_vocabulary(match))


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


def spec_of(name: str) -> TaskSpec | MixtureSpec | None:
    """The spec of a task or mixture name; None for a name of another project."""
    try:
        return parse(name)
    except UserError:
        return None


def style_of(task: str | TaskSpec | MixtureSpec | None) -> str | None:
    """The explanation style of a task (its spec or its name): the one definition
    that predict and the report use. None for a mixture of styles, a task of
    another project or None."""
    spec = spec_of(task) if isinstance(task, str) else task
    return spec.style if isinstance(spec, TaskSpec) else None


def dataset_tasks(dataset: str, *, styles: Iterable[str] = STYLES,
                  subset_sizes: Iterable[int] = (), source: str = "function",
                  vocabulary: str = "domain",
                  notations: Iterable[str] = ("bracket",)) -> tuple[TaskSpec, ...]:
    """The tasks registered for one dataset, source and vocabulary, in registration order.

    For the whole training split every style, plain and tagged (the tagged ones
    are the mixture's members); for each subset size every style, plain only.
    ``subset_sizes`` are taken as given (the caller drops sizes above the
    dataset's training split). Then, for each other notation of ``notations``
    (``"paren"``), the plain whole-split task of every style in that notation
    (the authors' setting; the grain backend reads any other combination too).
    """
    styles = tuple(styles)
    notations = tuple(notations)
    for notation in notations:
        _check_notation("dataset tasks", notation)
    specs = []
    if "bracket" in notations:
        for subset in (None, *subset_sizes):
            for style in styles:
                for tagged in (False, True) if subset is None else (False,):
                    specs.append(TaskSpec(dataset, style, tagged=tagged, subset=subset,
                                          source=source, vocabulary=vocabulary))
    for notation in notations:
        if notation != "bracket":
            specs += [TaskSpec(dataset, style, source=source, vocabulary=vocabulary,
                               notation=notation) for style in styles]
    return tuple(specs)


# -- file tasks ----------------------------------------------------------------------
#
# A task imported from files (explistops data import; own_tasks.register_file_task)
# is registered under the name the user gave it, and, with inputs in LRA's
# notation, under that name + "_paren".

_PAREN = "_paren"


def check_file_task_name(name: str) -> str:
    """``name`` if it can name an imported task; a UserError otherwise.

    It must be a SeqIO-valid name that reads as no generated task or mixture
    (``explistops30_medium`` would be ambiguous) and does not end in ``_paren``.
    """
    if not isinstance(name, str) or not re.fullmatch(_DATASET, name):
        raise UserError(f"bad task name {name!r}",
                        expected="a non-empty name of letters, digits, '_', '.' or ':'")
    if name.endswith(_PAREN):
        raise UserError(f"task name {name!r} ends in {_PAREN!r}",
                        expected=f"a name without it ({_PAREN} is added for the "
                                 "parenthesized inputs)")
    if _TASK_RE.fullmatch(name) or _is_mixture(name):
        raise UserError(f"task name {name!r} reads as a generated task or mixture name",
                        expected=f"a name that is not of the form {TASK_PATTERN} "
                                 f"or {MIXTURE_PATTERN}")
    return name


def file_task_name(name: str, notation: str = "bracket") -> str:
    """The registered name of the imported task ``name`` with inputs in ``notation``."""
    check_file_task_name(name)
    _check_notation("file task", notation)
    return name + (_PAREN if notation == "paren" else "")


def parse_file_task_name(name: str) -> tuple[str, str]:
    """``(name, notation)`` of a registered file task name (the inverse of
    :func:`file_task_name`; a UserError for a name it cannot have built)."""
    if isinstance(name, str) and name.endswith(_PAREN):
        base, notation = name[:-len(_PAREN)], "paren"
    else:
        base, notation = name, "bracket"
    check_file_task_name(base)
    return base, notation
