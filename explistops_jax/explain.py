"""Explanation styles: render a tree's evaluation as text, and read steps back.

A step is one operator applied to its arguments, each operator argument already
replaced by its value. Steps come in post-order, left to right: an operator's step
follows the steps of all its operator arguments (reference.md, section 3). Four
target styles:

* ``none``: the answer alone, ``7``.
* ``short``: operator and result per step, ``SUM, 3``; then ``Final answer: 3``.
* ``medium``: the authors' released format, one line per step::

      Max, largest number of [3, 2] is 3
      Min, smallest number of [3, 0, 0, 3] is 0
      MED, sorted list, [1, 3, 4], MEDIAN is 3
      SUM, add [0, 8, 4, 0, 3, 9], sum is 24, answer is 4
      Final answer: 3

* ``long``: one sentence per step (this project's wording, deterministic)::

      MAX operator so we have to find the largest of the numbers [3, 2], the largest number is 3, so the answer is 3
      MIN operator so we have to find the smallest of the numbers [3, 0], the smallest number is 0, so the answer is 0
      MEDIAN operator so we have to find the median of the numbers [4, 1, 3], sorted they are [1, 3, 4], the median is 3, so the answer is 3
      SUM operator so we have to add the numbers [15, 27, 1], sum is 43, 43 modulo 30 is 13, so the answer is 13
      Final answer: 13

Lines are joined with ``"\\n"``. T5's SentencePiece turns newlines into spaces, so
:func:`read_steps` never relies on them. Every word a renderer can emit is in
:data:`WORDS` (the compact vocabulary is built from it); :func:`tokenize` is the
matching split. Pure Python.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from explistops_jax.errors import UserError
from explistops_jax.listops import Node, Tree, apply, canonical_operator, evaluate

__all__ = [
    "STYLES",
    "Step",
    "steps",
    "explain",
    "render_step",
    "read_steps",
    "tokenize",
    "WORDS",
    "PUNCTUATION",
]

STYLES: tuple[str, ...] = ("none", "short", "medium", "long")
PUNCTUATION: tuple[str, ...] = ("[", "]", ",", ":")
"""Characters :func:`tokenize` splits off as tokens of their own."""


@dataclass(frozen=True)
class Step:
    """One evaluation step.

    Attributes:
      op: canonical operator (MAX, MIN, MED, SM).
      operands: the arguments' values in the original order. Read back from text they
        are as written: sorted for medium MED (only the sorted list is shown), empty
        for the short style (no list is shown).
      result: the step's value (for SM the sum modulo the modulus).
      total: for SM the sum before the modulus, else None.
    """

    op: str
    operands: tuple[int, ...]
    result: int
    total: int | None = None


def steps(tree: Tree, modulus: int = 30) -> list[Step]:
    """The true steps of a tree, in post-order, left to right (empty for a bare value)."""
    out: list[Step] = []
    _collect(tree, modulus, out)
    return out


def _collect(tree: Tree, modulus: int, out: list[Step]) -> int:
    if not isinstance(tree, Node):
        return tree
    operands = tuple(_collect(arg, modulus, out) for arg in tree.args)
    total = sum(operands) if tree.op == "SM" else None
    out.append(Step(tree.op, operands, apply(tree.op, operands, modulus), total))
    return out[-1].result


# ------------------------------------------------------------------------ rendering


def _numbers(values: tuple[int, ...] | list[int]) -> str:
    return "[" + ", ".join(map(str, values)) + "]"


def _short(step: Step, modulus: int) -> str:
    return f"{_SHORT_NAMES[step.op]}, {step.result}"


def _medium(step: Step, modulus: int) -> str:
    if step.op == "MAX":
        return f"Max, largest number of {_numbers(step.operands)} is {step.result}"
    if step.op == "MIN":
        return f"Min, smallest number of {_numbers(step.operands)} is {step.result}"
    if step.op == "MED":
        return f"MED, sorted list, {_numbers(sorted(step.operands))}, MEDIAN is {step.result}"
    return (f"SUM, add {_numbers(step.operands)}, sum is {_total(step)}, "
            f"answer is {step.result}")


def _long(step: Step, modulus: int) -> str:
    numbers = _numbers(step.operands)
    answer = f"so the answer is {step.result}"
    if step.op == "MAX":
        return (f"MAX operator so we have to find the largest of the numbers {numbers}, "
                f"the largest number is {step.result}, {answer}")
    if step.op == "MIN":
        return (f"MIN operator so we have to find the smallest of the numbers {numbers}, "
                f"the smallest number is {step.result}, {answer}")
    if step.op == "MED":
        return (f"MEDIAN operator so we have to find the median of the numbers {numbers}, "
                f"sorted they are {_numbers(sorted(step.operands))}, "
                f"the median is {step.result}, {answer}")
    total = _total(step)
    return (f"SUM operator so we have to add the numbers {numbers}, sum is {total}, "
            f"{total} modulo {modulus} is {step.result}, {answer}")


def _total(step: Step) -> int:
    return sum(step.operands) if step.total is None else step.total


_SHORT_NAMES = {"MAX": "MAX", "MIN": "MIN", "MED": "MED", "SM": "SUM"}
_RENDERERS: dict[str, Callable[[Step, int], str]] = {
    "short": _short,
    "medium": _medium,
    "long": _long,
}


def render_step(step: Step, style: str, modulus: int = 30) -> str:
    """One step as a line of the given style (``short``, ``medium`` or ``long``)."""
    try:
        renderer = _RENDERERS[style]
    except KeyError:
        raise UserError(f"style {style!r} has no steps",
                        expected="one of " + ", ".join(_RENDERERS)) from None
    return renderer(step, modulus)


def explain(tree: Tree, style: str, modulus: int = 30) -> str:
    """The target text of a tree in a style: ``none`` gives the answer alone; the
    other styles give one line per step, then ``Final answer: X``."""
    if style == "none":
        return str(evaluate(tree, modulus))
    if style not in _RENDERERS:
        raise UserError(f"unknown explanation style {style!r}",
                        expected="one of " + ", ".join(STYLES))
    renderer = _RENDERERS[style]
    true_steps = steps(tree, modulus)
    lines = [renderer(step, modulus) for step in true_steps]
    answer = true_steps[-1].result if true_steps else tree
    lines.append(f"Final answer: {answer}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- reading

# A step starts where an operator name is followed by a comma (short, medium) or by
# the word "operator" (long). "MEDIAN is" and "sum is" inside steps do not match.
_HEAD = re.compile(r"\b(MAX|MIN|MEDIAN|MED|SUM|SM)\b\s*(?:,|operator\b)", re.IGNORECASE)
_FINAL = re.compile(r"final\s+answer", re.IGNORECASE)
_LIST = re.compile(r"\[([^\[\]]*)\]")
_INT = re.compile(r"\d+")
_SUM_IS = re.compile(r"\bsum\s+is\s+(\d+)", re.IGNORECASE)
_MAX_DIGITS = 30  # longer digit runs are not read as numbers (int() of them is slow)


def _ints(text: str) -> list[int]:
    return [int(d) for d in _INT.findall(text) if len(d) <= _MAX_DIGITS]


def read_steps(text: str | bytes | None) -> list[Step]:
    """Read the steps back from an explanation of any style; never raises.

    Whitespace is free (newlines may have become spaces) and case is ignored. A step
    runs from an operator head (``MAX,`` / ``Max,`` / ``SUM operator`` ...) to the next
    head or ``Final answer``. Within it: operands are the integers of its first
    ``[...]`` list (none for the short style); the result is its last integer outside
    the lists; for SM the total is the number after ``sum is``. A head with no result
    number is dropped; anything unreadable is skipped, so garbage gives ``[]``.
    """
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode("utf-8", errors="replace")
    if not isinstance(text, str):
        return []
    heads = list(_HEAD.finditer(text))
    found: list[Step] = []
    for number, head in enumerate(heads):
        end = heads[number + 1].start() if number + 1 < len(heads) else len(text)
        final = _FINAL.search(text, head.end(), end)
        segment = text[head.end():final.start() if final else end]
        step = _read_segment(canonical_operator(head.group(1)) or "SM", segment)
        if step is not None:
            found.append(step)
    return found


def _read_segment(op: str, segment: str) -> Step | None:
    lists = _LIST.findall(segment)
    operands = tuple(_ints(lists[0])) if lists else ()
    outside = _ints(_LIST.sub(" ", segment))
    if not outside:
        return None
    total = None
    if op == "SM":
        match = _SUM_IS.search(segment)
        if match and len(match.group(1)) <= _MAX_DIGITS:
            total = int(match.group(1))
    return Step(op, operands, outside[-1], total)


# ------------------------------------------------------------------------ vocabulary

_TOKEN = re.compile(r"[\[\],:]|[^\s\[\],:]+")


def tokenize(text: str) -> list[str]:
    """Split text as the compact vocabulary does: ``[ ] , :`` alone, else on whitespace."""
    return _TOKEN.findall(text)


def _words() -> tuple[str, ...]:
    """Every non-number token the renderers emit, found by rendering one example of
    every operator (odd and even lists) in every style. Templates do not depend on the
    data beyond the numbers, so this is complete (a test checks random trees)."""
    example = Node("MAX", (Node("MIN", (1, 2)), Node("MED", (3, 4, 5)), Node("MED", (1, 2)),
                           Node("SM", (6, 7)), 8))
    tokens: set[str] = set()
    for style in STYLES:
        tokens.update(tokenize(explain(example, style, modulus=10)))
    return tuple(sorted(token for token in tokens if not token.isdigit()))


WORDS: tuple[str, ...] = _words()
"""Every non-number token any style can emit (sorted): the vocabulary's word list."""
