"""The ``explistops`` command line: one subcommand per stage, loaded on demand.

Each subcommand lives in its own module, named in :data:`COMMANDS`, which provides
``add_arguments(parser)`` and ``run(args) -> int``. Only the module of the command
being run is imported, so ``explistops data`` never pays for JAX or TensorFlow,
while ``explistops --help`` still lists every command. To add a command, add a line
to the table.

Errors the user can fix (:class:`~explistops_jax.errors.UserError`, a file that
cannot be opened, a usage error) are printed as one line, ``explistops: error:
<message>``, with exit status 2 and no traceback (the boundary is
:func:`explistops_jax.runtime.run_guarded`); a traceback means a bug. Commands
that load JAX or TensorFlow call :func:`explistops_jax.runtime.setup` first.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from explistops_jax import __version__
from explistops_jax import runtime
from explistops_jax.errors import UserError

__all__ = ["COMMANDS", "build_parser", "main"]

COMMANDS: dict[str, tuple[str, str]] = {
    # name: (module providing add_arguments(parser) and run(args) -> int, one-line help)
    "data": ("explistops_jax.commands.data", "write a dataset split with explanations (JSONL or TSV)"),
    "explain": ("explistops_jax.commands.explain", "explain one ListOps expression in a style"),
    "score": ("explistops_jax.commands.score", "score a predictions JSONL file and print the metrics"),
    "train": ("explistops_jax.commands.train", "fine-tune a T5 model with gin files (resumes a run directory)"),
    "eval": ("explistops_jax.commands.eval", "decode a task split with a checkpoint and score it"),
    "predict": ("explistops_jax.commands.predict", "print a model's explanation and answer for one expression"),
    "convert": ("explistops_jax.commands.convert", "convert T5 weights between Hugging Face, T5X and explistops checkpoints"),
    "params": ("explistops_jax.commands.params", "print a model preset's parameter count and shapes"),
    "plan": ("explistops_jax.commands.plan", "compile a train step ahead of time: per-device memory, what fits"),
    "report": ("explistops_jax.commands.report", "tables and plots of finished runs, beside the study's published figures"),
    "reproduce": ("explistops_jax.commands.reproduce", "run the study (cpu demo or the paper grid) and write its report"),
    "launch": ("explistops_jax.commands.launch", "run N local processes of one multi-process training job (a free port, output prefixed, all stopped when one fails)"),
}
"""Subcommand name -> (module path, help). The only place a command is registered."""


GIN_COMMANDS = ("train", "eval")
"""Commands configured by gin files, as ``python -m explistops_jax.train``/``.eval``."""


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The argument parser; only ``command``'s module is imported to add its arguments."""
    parser = runtime.ArgumentParser(
        prog="explistops",
        description="Explained-ListOps: build datasets, explain expressions, score predictions, "
                    "and train and evaluate T5 models on them.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_path, help_text) in COMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        if name == command:
            module = importlib.import_module(module_path)
            module.add_arguments(sub)
            sub.set_defaults(run=module.run)
    return parser


def _command_name(argv: Sequence[str]) -> str | None:
    """The subcommand named on the command line (the first non-option word)."""
    for word in argv:
        if not word.startswith("-"):
            return word if word in COMMANDS else None
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 2 user error)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        argv = runtime.expand_flagfiles(argv)
    except UserError as err:
        return runtime.fail(err.message)
    command = _command_name(argv)
    dot_bindings: list[str] = []
    if command in GIN_COMMANDS:  # --gin.NAME=VALUE, as the module entries take it
        from explistops_jax.gin_config import split_dot_flags

        argv, dot_bindings = split_dot_flags(argv)
    parser = build_parser(command)
    args = parser.parse_args(argv)  # exits for --help and (one line, 2) usage errors
    args.dot_bindings = dot_bindings
    return runtime.run_guarded(lambda: args.run(args))


if __name__ == "__main__":
    sys.exit(main())
