"""Reading the released ListOps files: the original ListOps TSV and LRA's TSV.

Both hold one expression and its label per line, in the parenthesized notation (read
by :func:`~explistops_jax.listops.tree.parse`). Errors name the file, line and column.
"""

from __future__ import annotations

import os
from typing import Iterator

from explistops_jax.errors import ListOpsError
from explistops_jax.listops.tree import MAX_DIGITS, Tree, parse

__all__ = ["read_listops_tsv", "read_lra_tsv"]


def read_listops_tsv(path: str | os.PathLike) -> Iterator[tuple[Tree, int]]:
    """Read an original ListOps file: ``label<TAB>expression`` per line.

    Yields ``(tree, label)``. Blank lines are skipped. Errors name the file, line and
    column (counted in the file's line, label included).
    """
    yield from _read_tsv(path, expression_field=1, header=None)


def read_lra_tsv(path: str | os.PathLike) -> Iterator[tuple[Tree, int]]:
    """Read an LRA ListOps file: header ``Source<TAB>Target``, then ``expression<TAB>label``.

    Yields ``(tree, label)``. The header is skipped when present.
    """
    yield from _read_tsv(path, expression_field=0, header="Source")


def _read_tsv(path: str | os.PathLike, *, expression_field: int,
              header: str | None) -> Iterator[tuple[Tree, int]]:
    source = os.fspath(path)
    with open(source, encoding="utf-8") as handle:
        for number, raw in enumerate(handle, start=1):
            text = raw.rstrip("\r\n")
            if not text.strip():
                continue
            fields = text.split("\t")
            if number == 1 and header is not None and fields[0].strip() == header:
                continue
            if len(fields) != 2:
                raise ListOpsError(f"{len(fields)} tab-separated fields", line=number,
                                   column=1, source=source,
                                   expected="2: " + ("expression<TAB>label" if expression_field == 0
                                                     else "label<TAB>expression"))
            label_field = 1 - expression_field
            label_text = fields[label_field].strip()
            offset = 0 if expression_field == 0 else len(fields[0]) + 1
            if not (label_text.isascii() and label_text.isdigit()) \
                    or len(label_text) > MAX_DIGITS:
                column = 1 if label_field == 0 else len(fields[0]) + 2
                raise ListOpsError(f"label {label_text[:20]!r} is not a number", line=number,
                                   column=column, source=source, expected="a non-negative integer")
            try:
                tree = parse(fields[expression_field])
            except ListOpsError as err:
                raise ListOpsError(err.what, line=number, column=(err.column or 1) + offset,
                                   expected=err.expected, source=source) from None
            yield tree, int(label_text)
