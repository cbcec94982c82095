"""``explistops explain``: print the explanation and answer of one expression."""

from __future__ import annotations

import argparse
import sys

from explistops_jax.explain import STYLES, explain
from explistops_jax.listops import depth, evaluate, length, parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``explistops explain``."""
    parser.add_argument("expression",
                        help="a ListOps expression in bracket or parenthesized notation, "
                             "e.g. '[MAX 2 9 [MIN 4 7 ] 0 ]' ('-' reads standard input)")
    parser.add_argument("--style", choices=STYLES, default="medium",
                        help="explanation style (default: medium)")
    parser.add_argument("--modulus", type=int, default=30,
                        help="modulus of SM (default: 30; the original ListOps uses 10)")


def run(args: argparse.Namespace) -> int:
    """Parse, explain, print; a malformed expression raises ListOpsError (line, column)."""
    text = sys.stdin.read() if args.expression == "-" else args.expression
    tree = parse(text.strip(), line=1)
    print(explain(tree, args.style, args.modulus))
    print(f"answer: {evaluate(tree, args.modulus)} "
          f"(length {length(tree)}, depth {depth(tree)})")
    return 0
