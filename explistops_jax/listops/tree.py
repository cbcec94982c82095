"""ListOps trees: the notation (parse, format) and the arithmetic (evaluate, measure).

A ListOps expression is a value or ``[OP arg arg ... ]``. The study uses the
operators MAX, MIN, MED (median) and SM (sum modulo M); the original ListOps generator
(nyu-mll/spinn, ``python/spinn/data/listops/make_data.py``) also has FIRST, LAST,
PM (product modulo M) and FLSUM (first plus *second* argument, modulo M), and all
eight are read, written and evaluated here (:data:`ALL_OPERATORS`). This module is
the single place that knows the notation and the arithmetic; everything else (explanations, scoring, datasets) works
on the :data:`Tree` type defined here. Pure Python, no TensorFlow or JAX.

Two notations are read (and written):

* bracket: ``[MAX 2 9 [MIN 4 7 ] 0 ]``
* parenthesized, as in the original ListOps and the Long Range Arena (LRA) TSV files:
  ``( ( ( ( ( [MAX 2 ) 9 ) ( ( ( [MIN 4 ) 7 ) ] ) ) 0 ) ] )``. The parentheses only
  encode LRA's binarization of the tree, which the brackets already determine, so the
  parser skips them (unbalanced parentheses are tolerated; unbalanced brackets are not).

Operator spellings seen in released data are accepted case-insensitively and mapped
to the canonical names: MEDIAN -> MED, SUM -> SM.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Union

from explistops_jax.errors import ListOpsError, UserError

__all__ = [
    "OPERATORS",
    "ALL_OPERATORS",
    "MODULAR_OPERATORS",
    "MIN_ARGS",
    "SPELLINGS",
    "MAX_NESTING",
    "Node",
    "Tree",
    "canonical_operator",
    "parse",
    "format",
    "evaluate",
    "apply",
    "unreduced",
    "median",
    "length",
    "depth",
]

OPERATORS: tuple[str, ...] = ("MAX", "MIN", "MED", "SM")
"""The study's operators, in the order the sampler draws from: the default of
:class:`~explistops_jax.listops.sampler.SamplerConfig`, so every built-in dataset
keeps exactly these (and its bytes)."""

ALL_OPERATORS: tuple[str, ...] = OPERATORS + ("FIRST", "LAST", "PM", "FLSUM")
"""Every canonical operator of the ListOps family (the original generator's eight).

Semantics, as the original generator computes them (checked against every revision
of its ``make_data.py`` and its released test files): FIRST is the first argument,
LAST the last, PM the product modulo M, FLSUM the sum of the first and the *second*
argument modulo M (``(l[1][0] + l[1][1]) % 10`` in the generator, despite the name),
so FLSUM needs at least two arguments. M is the ``modulus`` argument, as for SM; the
original files use 10."""

MODULAR_OPERATORS: frozenset[str] = frozenset({"SM", "PM", "FLSUM"})
"""Operators whose result is reduced modulo M (:func:`unreduced` gives the value before)."""

MIN_ARGS: dict[str, int] = {"FLSUM": 2}
"""Fewest arguments an operator takes when more than one (the rest take one or more)."""

SPELLINGS: dict[str, str] = {
    "MAX": "MAX",
    "MIN": "MIN",
    "MED": "MED",
    "MEDIAN": "MED",
    "SM": "SM",
    "SUM": "SM",
    "FIRST": "FIRST",
    "LAST": "LAST",
    "PM": "PM",
    "FLSUM": "FLSUM",
}
"""Every accepted operator spelling (upper case) -> canonical name."""

MAX_NESTING = 200
"""Deepest operator nesting :func:`parse` accepts (generated trees stay below 20).

The tree functions recurse, so a bound keeps a hostile input from hitting Python's
recursion limit; it is reported as a normal :class:`ListOpsError`.
"""

MAX_DIGITS = 100
"""Longest number (in digits) :func:`parse` and the file readers accept.

``int()`` of a huge digit string is slow, so longer numbers are rejected as errors.
Shared with :mod:`~explistops_jax.listops.readers`; not re-exported by the package.
"""


@dataclass(frozen=True)
class Node:
    """An operator applied to its arguments (values or other nodes), in order."""

    op: str
    args: tuple["Tree", ...]


Tree = Union[int, Node]
"""A ListOps tree: a non-negative int (a value) or a :class:`Node`."""


def canonical_operator(name: str) -> str | None:
    """The canonical operator for a spelling (``"median"`` -> ``"MED"``), or None."""
    return SPELLINGS.get(name.upper())


# --------------------------------------------------------------------------- parsing

# One token: a parenthesis, an opening bracket with its operator name ("[MAX", also
# "[ MAX"), a closing bracket, a number, or a run of anything else (an error).
_TOKEN = re.compile(r"\(|\)|\[[ \t]*[A-Za-z]*|\]|\d+|[^\s()\[\]]+")


def parse(text: str, *, line: int | None = None) -> Tree:
    """Read one expression in bracket or parenthesized notation.

    Args:
      text: the expression, e.g. ``"[MAX 2 9 [MIN 4 7 ] 0 ]"``; a bare value such as
        ``"7"`` is a valid (trivial) tree.
      line: the line number to put into error messages (the caller knows it).

    Raises:
      ListOpsError: naming the problem, its column (1-based) and what was expected.
    """
    stack: list[tuple[str, list[Tree], int]] = []  # (op, args so far, column of "[OP")
    result: Tree | None = None
    result_column = 0

    def error(what: str, column: int, expected: str | None = None) -> ListOpsError:
        return ListOpsError(what, line=line, column=column, expected=expected)

    def attach(item: Tree, column: int) -> None:
        nonlocal result, result_column
        if stack:
            stack[-1][1].append(item)
        elif result is None:
            result, result_column = item, column
        else:
            raise error(
                "extra input after the end of the expression",
                column,
                f"the expression to end after the one starting at column {result_column}",
            )

    for match in _TOKEN.finditer(text):
        token = match.group()
        column = match.start() + 1
        first = token[0]
        if first in "()":
            continue
        if first == "[":
            name = token[1:].strip()
            op = canonical_operator(name) if name else None
            if op is None:
                shown = f"'[{name}'" if name else "'[' without an operator"
                raise error(f"unknown operator {shown}", column, _EXPECTED_OPERATOR)
            if result is not None and not stack:
                raise error("extra input after the end of the expression", column,
                            "a single expression")
            if len(stack) >= MAX_NESTING:
                raise error(f"operators nested deeper than {MAX_NESTING}", column)
            stack.append((op, [], column))
        elif first == "]":
            if not stack:
                raise error("']' without a matching '[OP'", column)
            op, args, opened = stack.pop()
            if not args:
                raise error(f"operator {op} (column {opened}) has no arguments", column,
                            "at least one value or expression before ']'")
            fewest = MIN_ARGS.get(op, 1)
            if len(args) < fewest:
                raise error(f"operator {op} (column {opened}) has {len(args)} argument",
                            column, f"at least {fewest} arguments before ']'")
            attach(Node(op, tuple(args)), opened)
        elif token.isascii() and token.isdigit():  # int() takes other scripts' digits
            if len(token) > MAX_DIGITS:
                raise error(f"number with {len(token)} digits", column,
                            f"at most {MAX_DIGITS} digits")
            attach(int(token), column)
        else:
            raise error(f"unexpected {token[:20]!r}", column,
                        "a number, '[OP', ']' or a parenthesis")
    if stack:
        op, _, opened = stack[-1]
        raise error(f"operator {op} opened at column {opened} is not closed",
                    len(text) + 1, "']'")
    if result is None:
        raise error("empty expression", 1, "a number or '[OP ... ]'")
    return result


_EXPECTED_OPERATOR = "one of " + ", ".join(f"[{name}" for name in SPELLINGS)


# -------------------------------------------------------------------------- writing


def format(tree: Tree, notation: str = "bracket") -> str:  # noqa: A001 (contract name)
    """Write a tree as text.

    ``notation="bracket"`` gives ``[MAX 2 9 [MIN 4 7 ] 0 ]``; ``"paren"`` gives the
    parenthesized notation of the LRA files, which binarizes every operator as
    ``( ( ( [OP a ) b ) ... ] )``. Both are read back by :func:`parse`.
    """
    if notation == "bracket":
        parts: list[str] = []
        _bracket_tokens(tree, parts)
        return " ".join(parts)
    if notation == "paren":
        return _paren(tree)
    raise UserError(f"unknown notation {notation!r}", expected="'bracket' or 'paren'")


def _bracket_tokens(tree: Tree, out: list[str]) -> None:
    if isinstance(tree, Node):
        out.append("[" + tree.op)
        for arg in tree.args:
            _bracket_tokens(arg, out)
        out.append("]")
    else:
        out.append(str(tree))


def _paren(tree: Tree) -> str:
    """LRA's ``to_string`` of the binarized tree ((op, a0), a1), ..., ']')."""
    if not isinstance(tree, Node):
        return str(tree)
    text = f"( [{tree.op} {_paren(tree.args[0])} )"
    for arg in tree.args[1:]:
        text = f"( {text} {_paren(arg)} )"
    return f"( {text} ] )"


# ----------------------------------------------------------------------- arithmetic


def median(values: tuple[int, ...] | list[int]) -> int:
    """Median as the ListOps generators compute it: numpy's median, truncated.

    For an even count that is the integer part of the mean of the two middle values:
    ``[4, 9] -> 6``, ``[0, 9] -> 4``, ``[1, 5, 8, 8] -> 6``.
    """
    ordered = sorted(values)
    n = len(ordered)
    if n == 0:
        raise ValueError("median of an empty list")
    if n % 2:
        return ordered[n // 2]
    total = ordered[n // 2 - 1] + ordered[n // 2]
    return total // 2 if total >= 0 else -((-total) // 2)  # int(total / 2), exactly


def apply(op: str, values: tuple[int, ...] | list[int], modulus: int = 30) -> int:
    """One operator on a list of values (the arithmetic of a single step).

    Raises ValueError for an unknown operator, an empty list, or FLSUM of fewer than
    two values (the original generator has no value for those either).
    """
    if op == "MAX":
        return max(values)
    if op == "MIN":
        return min(values)
    if op == "MED":
        return median(values)
    if op == "FIRST" or op == "LAST":
        if not values:
            raise ValueError(f"{op} of an empty list")
        return values[0] if op == "FIRST" else values[-1]
    if op == "PM":
        if not values:
            raise ValueError("PM of an empty list")
        product = 1
        for value in values:  # reduced as it goes: the same residue, no huge integers
            product = product * value % modulus
        return product
    if op in MODULAR_OPERATORS:
        return unreduced(op, values) % modulus
    raise ValueError(f"unknown operator {op!r}")


def unreduced(op: str, values: tuple[int, ...] | list[int]) -> int | None:
    """A modular operator's value before the modulus, or None for the others.

    SM: the sum; PM: the product; FLSUM: the first plus the second value. The
    explanations show it (``sum is 43``) and scoring checks a stated one against it.
    Raises ValueError where :func:`apply` does.
    """
    if op == "SM":
        return sum(values)
    if op == "PM":
        if not values:
            raise ValueError("PM of an empty list")
        product = 1
        for value in values:
            product *= value
        return product
    if op == "FLSUM":
        if len(values) < 2:
            raise ValueError(f"FLSUM needs at least two values, got {len(values)}")
        return values[0] + values[1]
    return None


def evaluate(tree: Tree, modulus: int = 30) -> int:
    """The value of a tree; SM, PM and FLSUM reduce modulo ``modulus`` (10 in the
    original ListOps)."""
    if isinstance(tree, Node):
        return apply(tree.op, [evaluate(arg, modulus) for arg in tree.args], modulus)
    return tree


def length(tree: Tree) -> int:
    """LRA's length: 1 per value, 2 per operator (its token and its closing bracket)."""
    if isinstance(tree, Node):
        return 2 + sum(length(arg) for arg in tree.args)
    return 1


def depth(tree: Tree) -> int:
    """Nesting depth: a value has depth 0, ``[MAX 1 2 ]`` depth 1."""
    if isinstance(tree, Node):
        return 1 + max(depth(arg) for arg in tree.args)
    return 0
