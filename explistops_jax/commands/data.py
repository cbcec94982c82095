"""``explistops data``: write one split of a dataset, with explanation targets.

Output is JSONL (one object per example) or TSV. Shard ``i`` of ``n`` covers a
contiguous range of example indices, so concatenating the shards in order gives
exactly the bytes of the unsharded file (the TSV header is written by shard 0 only).
The file is written under a temporary name and renamed when complete, so a file that
exists is never half written; an interrupted shard is simply run again.

``explistops data import FILE ...`` reads data files instead (the authors' released
TSV, or JSONL) into a checked task directory: :mod:`explistops_jax.commands.data_import`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, TextIO

from explistops_jax import rundir
from explistops_jax.data import DATASETS, examples, get_config
from explistops_jax.errors import UserError
from explistops_jax.explain import STYLES, explain
from explistops_jax.listops import format

TSV_COLUMNS = ("id", "inputs", "targets", "answer", "length", "depth")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``explistops data``."""
    parser.add_argument("--config", metavar="NAME",
                        help="dataset name: " + ", ".join(sorted(DATASETS)))
    parser.add_argument("--split", default="train", help="split name (default: train)")
    parser.add_argument("--style", choices=STYLES, default="medium",
                        help="explanation style of the targets (default: medium)")
    parser.add_argument("--out", metavar="FILE",
                        help="output file ('-' for standard output)")
    parser.add_argument("--format", choices=("jsonl", "tsv"), default=None,
                        help="output format (default: tsv if FILE ends in .tsv, else jsonl)")
    parser.add_argument("--notation", choices=("bracket", "paren"), default="bracket",
                        help="notation of the model inputs (default: bracket)")
    parser.add_argument("--num-shards", type=int, default=1, metavar="N",
                        help="split the examples into N contiguous shards (default: 1)")
    parser.add_argument("--shard-index", type=int, default=0, metavar="I",
                        help="which shard to write, 0 <= I < N (default: 0)")
    parser.add_argument("--limit", type=int, default=None, metavar="N",
                        help="only the first N examples of the split (before sharding)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    from explistops_jax.commands import data_import

    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=False)
    importer = actions.add_parser("import", help=data_import.HELP, description=data_import.HELP)
    data_import.add_arguments(importer)
    importer.set_defaults(run=data_import.run)


def shard_range(total: int, num_shards: int, shard_index: int) -> tuple[int, int]:
    """The contiguous index range ``[start, stop)`` of one shard of ``total`` examples."""
    if num_shards < 1 or not 0 <= shard_index < num_shards:
        raise UserError(f"shard {shard_index} of {num_shards}",
                        expected="--num-shards >= 1 and 0 <= --shard-index < --num-shards")
    return total * shard_index // num_shards, total * (shard_index + 1) // num_shards


def run(args: argparse.Namespace) -> int:
    """Generate the examples of the requested shard and write them."""
    missing = [flag for flag in ("--config", "--out") if getattr(args, flag[2:]) is None]
    if missing:
        raise UserError("the following arguments are required: " + ", ".join(missing),
                        expected="explistops data --config NAME --out FILE, or "
                                 "explistops data import FILE --name NAME --out DIR")
    config = get_config(args.config)
    split = config.split(args.split)
    total = split.num_examples
    if args.limit is not None:
        if args.limit < 0:
            raise UserError(f"--limit {args.limit}", expected="a non-negative number")
        total = min(total, args.limit)
    start, stop = shard_range(total, args.num_shards, args.shard_index)
    fmt = args.format or ("tsv" if str(args.out).endswith(".tsv") else "jsonl")
    write_header = fmt == "tsv" and args.shard_index == 0

    def write(handle: TextIO) -> None:
        from tqdm import tqdm

        if write_header:
            handle.write("\t".join(TSV_COLUMNS) + "\n")
        progress = tqdm(total=stop - start, unit="ex", desc=f"{config.name}/{args.split}",
                        file=sys.stderr, disable=args.quiet, mininterval=0.5)
        with progress:
            for example in examples(config, args.split, start, stop, with_tree=True):
                handle.write(_line(example, args.style, args.notation, config.modulus, fmt))
                progress.update(1)

    if args.out == "-":
        write(sys.stdout)
    else:
        with rundir.atomic_open(Path(args.out)) as handle:
            write(handle)
    if not args.quiet:
        print(f"wrote {stop - start} examples ({start}..{stop - 1}) of {config.name}/{args.split} "
              f"to {args.out}", file=sys.stderr)
    return 0


def _line(example: dict[str, Any], style: str, notation: str, modulus: int, fmt: str) -> str:
    """One output line for an example (with its tree)."""
    tree = example.pop("tree")
    inputs = example["expression"] if notation == "bracket" else format(tree, notation)
    targets = explain(tree, style, modulus)
    if fmt == "tsv":
        fields = (example["id"], inputs, targets.replace("\n", "\\n"), example["answer"],
                  example["length"], example["depth"])
        return "\t".join(map(str, fields)) + "\n"
    record = {
        "id": example["id"],
        "index": example["index"],
        "expression": example["expression"],
        "inputs": inputs,
        "targets": targets,
        "answer": example["answer"],
        "length": example["length"],
        "depth": example["depth"],
        "modulus": example["modulus"],
        "style": style,
    }
    return json.dumps(record, ensure_ascii=False) + "\n"

