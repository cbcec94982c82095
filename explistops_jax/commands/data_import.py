"""``explistops data import``: a task from data files (the authors' TSV, or JSONL).

    explistops data import basic_train.tsv validation=basic_val.tsv test=basic_test.tsv \\
        --name authors --out data/authors [--format tsv] [--modulus 10]

Each FILE is ``[SPLIT=]PATH`` (a bare path is the train split). Every row is
parsed (LRA's parentheses, ``[MEDIAN``/``[SUM`` spellings, quoted multi-line
explanations) and its target checked against the project's own evaluation; the
directory ``--out`` is written whole or not at all, with ``import_report.json``
listing every disagreement by line. Train and evaluate on it with
``--task_file DIR`` (task ``NAME``, or ``NAME_paren`` for LRA-notation inputs).
A thin wrapper of :func:`explistops_jax.file_tasks.import_files`.
"""

from __future__ import annotations

import argparse
import sys

HELP = "import data files (the authors' TSV, or JSONL) as a checked task directory"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``explistops data import``."""
    parser.add_argument("files", nargs="+", metavar="[SPLIT=]FILE",
                        help="a data file per split (a bare FILE is the train split)")
    parser.add_argument("--name", required=True, help="the task's name")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="the task directory to write (new or empty)")
    parser.add_argument("--format", choices=("jsonl", "tsv"), default=None,
                        help="file format (default: from each file's extension)")
    parser.add_argument("--modulus", type=int, default=None,
                        help="modulus of SM/PM/FLSUM (default 10, the authors' data: values "
                             "0-9, SUM modulo 10)")
    parser.add_argument("--drop-disagreements", action="store_true",
                        help="leave out rows whose target disagrees with the evaluation "
                             "(default: keep them, as the file has them)")
    parser.add_argument("--quiet", action="store_true", help="print nothing on success")


def split_files(specs: list[str]) -> dict[str, str]:
    """``[SPLIT=]FILE`` arguments -> ``{split: file}`` (a UserError for a repeated split)."""
    from explistops_jax.errors import UserError

    files: dict[str, str] = {}
    for spec in specs:
        split, sep, path = spec.partition("=")
        if not sep:
            split, path = "train", spec
        if split in files:
            raise UserError(f"split {split!r} given twice ({files[split]}, {path})",
                            expected="one file per split")
        files[split] = path
    return files


def run(args: argparse.Namespace) -> int:
    from explistops_jax import file_tasks

    modulus = file_tasks.DEFAULT_MODULUS if args.modulus is None else args.modulus
    report = file_tasks.import_files(split_files(args.files), args.name, args.out,
                                     fmt=args.format, modulus=modulus,
                                     drop_disagreements=args.drop_disagreements)
    if not args.quiet:
        print(report.summary())
        print(f"wrote {args.out} (task {args.name!r}; report {file_tasks.REPORT_JSON})",
              file=sys.stderr)
    return 0
