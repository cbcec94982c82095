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

The other four operators of the ListOps family (FIRST, LAST, PM, FLSUM; none of the
built-in datasets samples them) have lines of the same shapes, this project's
wording: short ``FIRST, 3`` / ``LAST, 2`` / ``PM, 4`` / ``FLSUM, 8``; medium::

      First, first number of [3, 2] is 3
      Last, last number of [3, 2] is 2
      PM, multiply [2, 3, 4], product is 24, answer is 4
      FLSUM, add first two of [3, 5, 7], sum is 8, answer is 8

and long::

      FIRST operator so we have to take the first of the numbers [3, 2], the first number is 3, so the answer is 3
      LAST operator so we have to take the last of the numbers [3, 2], the last number is 2, so the answer is 2
      PM operator so we have to multiply the numbers [2, 3, 4], product is 24, 24 modulo 30 is 24, so the answer is 24
      FLSUM operator so we have to add the first two of the numbers [3, 5, 7], sum is 8, 8 modulo 30 is 8, so the answer is 8

(FLSUM adds the first and the second argument, as the original generator does.)

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
from explistops_jax.listops import Node, Tree, apply, canonical_operator, evaluate, unreduced

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
      op: canonical operator (MAX, MIN, MED, SM, FIRST, LAST, PM, FLSUM).
      operands: the arguments' values in the original order. Read back from text they
        are as written: sorted for medium MED (only the sorted list is shown), empty
        for the short style (no list is shown).
      result: the step's value (for SM the sum modulo the modulus).
      total: for the modular operators the value before the modulus (SM and FLSUM:
        the sum; PM: the product), else None.
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
    total = unreduced(tree.op, operands)
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
    if step.op == "FIRST":
        return f"First, first number of {_numbers(step.operands)} is {step.result}"
    if step.op == "LAST":
        return f"Last, last number of {_numbers(step.operands)} is {step.result}"
    if step.op == "PM":
        return (f"PM, multiply {_numbers(step.operands)}, product is {_total(step)}, "
                f"answer is {step.result}")
    if step.op == "FLSUM":
        return (f"FLSUM, add first two of {_numbers(step.operands)}, sum is {_total(step)}, "
                f"answer is {step.result}")
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
    if step.op in ("FIRST", "LAST"):
        which = step.op.lower()
        return (f"{step.op} operator so we have to take the {which} of the numbers {numbers}, "
                f"the {which} number is {step.result}, {answer}")
    total = _total(step)
    if step.op == "PM":
        return (f"PM operator so we have to multiply the numbers {numbers}, "
                f"product is {total}, {total} modulo {modulus} is {step.result}, {answer}")
    if step.op == "FLSUM":
        return (f"FLSUM operator so we have to add the first two of the numbers {numbers}, "
                f"sum is {total}, {total} modulo {modulus} is {step.result}, {answer}")
    return (f"SUM operator so we have to add the numbers {numbers}, sum is {total}, "
            f"{total} modulo {modulus} is {step.result}, {answer}")


def _total(step: Step) -> int | None:
    return unreduced(step.op, step.operands) if step.total is None else step.total


_SHORT_NAMES = {"MAX": "MAX", "MIN": "MIN", "MED": "MED", "SM": "SUM",
                "FIRST": "FIRST", "LAST": "LAST", "PM": "PM", "FLSUM": "FLSUM"}
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
# the word "operator" (long). "MEDIAN is", "sum is", "first number" and "last of"
# inside steps do not match (no renderer puts a comma after those words).
_HEAD = re.compile(r"\b(MAX|MIN|MEDIAN|MED|SUM|SM|FIRST|LAST|PM|FLSUM)\b\s*(?:,|operator\b)",
                   re.IGNORECASE)
_FINAL = re.compile(r"final\s+answer", re.IGNORECASE)
_LIST = re.compile(r"\[([^\[\]]*)\]")
_INT = re.compile(r"\d+")
_SUM_IS = re.compile(r"\bsum\s+is\s+(\d+)", re.IGNORECASE)
_PRODUCT_IS = re.compile(r"\bproduct\s+is\s+(\d+)", re.IGNORECASE)
_TOTAL_IS = {"SM": _SUM_IS, "FLSUM": _SUM_IS, "PM": _PRODUCT_IS}  # the modular operators
_MAX_DIGITS = 30  # longer digit runs are not read as numbers (int() of them is slow)


def _ints(text: str) -> list[int]:
    return [int(d) for d in _INT.findall(text) if len(d) <= _MAX_DIGITS]


def read_steps(text: str | bytes | None) -> list[Step]:
    """Read the steps back from an explanation of any style; never raises.

    Whitespace is free (newlines may have become spaces) and case is ignored. A step
    runs from an operator head (``MAX,`` / ``Max,`` / ``SUM operator`` ...) to the next
    head or ``Final answer``. Within it: operands are the integers of its first
    ``[...]`` list (none for the short style); the result is its last integer outside
    the lists; for SM and FLSUM the total is the number after ``sum is``, for PM the
    number after ``product is``. A head with no result
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
    if op in _TOTAL_IS:
        match = _TOTAL_IS[op].search(segment)
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
    data beyond the numbers, so this is complete (a test checks random trees).

    Two blocks, each sorted: the words of the study's four operators, then the words
    that only the other four operators of the family use. The compact vocabulary
    numbers the words in this order, so the family's words came after every id that
    existed before them and no checkpoint's ids moved."""
    study = Node("MAX", (Node("MIN", (1, 2)), Node("MED", (3, 4, 5)), Node("MED", (1, 2)),
                         Node("SM", (6, 7)), 8))
    family = Node("FIRST", (Node("LAST", (1, 2)), Node("PM", (3, 4)),
                            Node("FLSUM", (5, 6, 7)), 8))
    blocks: list[str] = []
    for example in (study, family):
        tokens: set[str] = set()
        for style in STYLES:
            tokens.update(tokenize(explain(example, style, modulus=10)))
        blocks.extend(sorted(t for t in tokens if not t.isdigit() and t not in blocks))
    return tuple(blocks)


WORDS: tuple[str, ...] = _words()
"""Every non-number token any style can emit, unique: the study's operators' words
(sorted), then the words only FIRST, LAST, PM and FLSUM use (sorted). The order is
the compact vocabulary's id order; never re-sort it."""
