"""``explistops score``: metrics of a predictions JSONL file.

Each line is an object with at least ``expression`` and ``prediction``; optional
``target`` (for exact match), ``style`` (renders the target when ``target`` is
absent) and ``modulus`` (default 30, or ``--modulus``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any

from explistops_jax.errors import ListOpsError, UserError
from explistops_jax.scoring import aggregate, score_record


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``explistops score``."""
    parser.add_argument("predictions", metavar="PREDICTIONS.jsonl",
                        help="predictions file ('-' reads standard input)")
    parser.add_argument("--json", action="store_true", help="print the metrics as JSON")
    parser.add_argument("--modulus", type=int, default=None,
                        help="SM modulus for records without a 'modulus' field (default: 30)")


def run(args: argparse.Namespace) -> int:
    """Read, score and print; malformed lines raise errors naming line and column."""
    if args.predictions == "-":
        metrics = _score_lines(sys.stdin, "<stdin>", args.modulus)
    else:
        with open(args.predictions, encoding="utf-8") as handle:
            metrics = _score_lines(handle, args.predictions, args.modulus)
    if args.json:
        print(json.dumps({k: (None if isinstance(v, float) and math.isnan(v) else v)
                          for k, v in metrics.items()}, indent=2))
    else:
        print(format_table(metrics))
    return 0


def _score_lines(lines, source: str, modulus: int | None) -> dict[str, float]:
    scored = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record: Any = json.loads(line)
        except json.JSONDecodeError as err:
            raise ListOpsError(f"invalid JSON: {err.msg}", line=number, column=err.colno,
                               source=source, expected="one JSON object per line") from None
        if modulus is not None and isinstance(record, dict):
            record.setdefault("modulus", modulus)
        scored.append(score_record(record, line=number, source=source))
    if not scored:
        raise UserError("no predictions", where=source, expected="one JSON object per line")
    return aggregate(scored)


def format_table(metrics: dict[str, float]) -> str:
    """Metrics as an aligned two-column table; rates in percent, NaN as n/a."""
    width = max(len(name) for name in metrics)
    rows = []
    for name, value in metrics.items():
        if name == "num_examples":
            shown = str(int(value))
        elif math.isnan(value):
            shown = "n/a"
        else:
            shown = f"{100 * value:6.2f}%"
        rows.append(f"{name:<{width}}  {shown:>8}")
    return "\n".join(rows)
