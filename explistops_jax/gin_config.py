"""Gin: every registration, the T5X-style flags, parsing, and the gin-bound calls.

The only module that knows gin. It registers the library's configuration
objects under the names the gin files use (``optimizers.adamw``,
``trainer.ModelSpec``, ``trainer.EvalConfig``, ``trainer.CheckpointConfig``,
``partitioning.PartitionConfig``, ``input_pipeline.DataConfig``) and two
configurables that stand for the library's entry points:

* ``train.*`` binds the arguments of :func:`explistops_jax.trainer.train`
  (``train.data = @input_pipeline.DataConfig()`` binds a whole ``DataConfig``);
* ``evaluate.*`` binds those of :func:`explistops_jax.evaluator.evaluate`.

Neither runs anything: :func:`train_arguments` and :func:`evaluate_arguments`
return the keyword arguments gin binds (names checked against the library
function's own signature, so a misspelt binding is an error at parse time), and
the entry point makes the one library call itself, outside gin. Every gin
problem (syntax, unknown configurable or parameter, a required macro not set)
becomes a one-line :class:`~explistops_jax.errors.UserError`.
"""

from __future__ import annotations

import argparse
import inspect
import os
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import gin

from explistops_jax import runtime
from explistops_jax.errors import UserError

__all__ = [
    "register",
    "add_arguments",
    "split_dot_flags",
    "main",
    "parse",
    "train_arguments",
    "evaluate_arguments",
    "write_config",
]

"""The parsed gin configuration, written into the run directory."""

# ----------------------------------------------------------------- registrations

_configurables: dict[str, Callable[..., dict[str, Any]]] = {}


def register() -> None:
    """Registers the library's configurables with gin (once per process).

    Not done at import: the library imports TensorFlow, which must wait for
    :func:`explistops_jax.runtime.setup`. :func:`parse` calls it.
    """
    if _configurables:
        return
    from explistops_jax import evaluator, input_pipeline, optimizers, partitioning, trainer
    from explistops_jax.train_state import CheckpointConfig

    for fn in (optimizers.adafactor, optimizers.adamw):
        gin.external_configurable(fn, module="optimizers")
    gin.external_configurable(optimizers.Schedule, module="optimizers")
    gin.external_configurable(trainer.ModelSpec, module="trainer")
    gin.external_configurable(trainer.EvalConfig, module="trainer")
    gin.external_configurable(CheckpointConfig, module="trainer")
    gin.external_configurable(partitioning.PartitionConfig, module="partitioning")
    gin.external_configurable(input_pipeline.DataConfig, module="input_pipeline")
    _configurables["train"] = _arguments_of(trainer.train, "train")
    _configurables["evaluate"] = _arguments_of(evaluator.evaluate, "evaluate")


def _arguments_of(fn: Callable, name: str) -> Callable[..., dict[str, Any]]:
    """A gin configurable named ``name`` with ``fn``'s signature that returns the
    keyword arguments gin binds instead of calling ``fn``."""
    signature = inspect.signature(fn)

    def collect(*args: Any, **kwargs: Any) -> dict[str, Any]:
        return dict(signature.bind_partial(*args, **kwargs).arguments)

    collect.__signature__ = signature  # gin checks binding names against it
    collect.__name__ = collect.__qualname__ = name
    collect.__doc__ = f"The gin-bound arguments of {fn.__module__}.{fn.__qualname__}."
    collect.library_function = fn
    return gin.configurable(name, module="explistops")(collect)


# ----------------------------------------------------------------- flags


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """T5X's gin flags: ``--gin_file``, ``--gin_bindings``, ``--gin_search_paths``."""
    parser.add_argument("--gin_file", action="append", default=[], metavar="FILE",
                        help="gin file (repeatable; later files override earlier)")
    parser.add_argument("--gin_bindings", action="append", default=[], metavar="BINDING",
                        help="gin binding, e.g. 'TRAIN_STEPS = 100' (repeatable); "
                             "--gin.NAME=VALUE is --gin_bindings='NAME = VALUE', as in T5X")
    parser.add_argument("--gin_search_paths", action="append", default=[], metavar="DIRS",
                        help="comma-separated directories where gin files and their "
                             "includes are looked up (besides . and the installed "
                             "gin_configs' parent)")


def split_dot_flags(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """``--gin.NAME=VALUE`` flags -> bindings ``NAME = VALUE``; other args kept."""
    rest, bindings = [], []
    for arg in argv:
        if arg.startswith("--gin.") and "=" in arg:
            name, value = arg[len("--gin."):].split("=", 1)
            bindings.append(f"{name} = {value}")
        else:
            rest.append(arg)
    return rest, bindings


def main(argv: Sequence[str] | None, prog: str, description: str,
         add_arguments: Callable[[argparse.ArgumentParser], None],
         run: Callable[[argparse.Namespace, Sequence[str]], int]) -> int:
    """A T5X-style entry point: ``--gin.NAME=VALUE`` flags become bindings, the
    other flags are parsed, then ``run(args, dot_bindings)`` runs inside the
    error boundary (:func:`explistops_jax.runtime.run_guarded`)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        argv = runtime.expand_flagfiles(argv)
    except UserError as err:
        return runtime.fail(err.message)
    argv, dot_bindings = split_dot_flags(argv)
    parser = runtime.ArgumentParser(prog=prog, description=description)
    add_arguments(parser)
    args = parser.parse_args(argv)  # exits for --help and (one line, 2) usage errors
    return runtime.run_guarded(lambda: run(args, dot_bindings))


# ----------------------------------------------------------------- parsing


def default_search_paths() -> list[str]:
    """``.`` and the directory holding the installed ``gin_configs`` package."""
    import gin_configs

    return [str(Path.cwd()), str(Path(gin_configs.__file__).resolve().parent.parent)]


def parse(files: Sequence[str], bindings: Sequence[str],
          search_paths: Sequence[str] = (), *, expected_file: str = "--gin_file=...") -> None:
    """Parses gin files and bindings, after clearing any earlier configuration.

    Raises:
      UserError: no file, a file not found, or anything gin rejects.
    """
    if not files:
        raise UserError("no gin file given", expected=expected_file)
    register()
    gin.clear_config()
    paths = [p for entry in search_paths for p in entry.split(",") if p]
    for path in paths + default_search_paths():
        gin.add_config_file_search_path(path)
    resolved = [_find(f, paths) for f in files]
    with _gin_errors("gin configuration", parsing=True):
        gin.parse_config_files_and_bindings(resolved, list(bindings),
                                            finalize_config=False)


def _find(file: str, search_paths: Sequence[str]) -> str:
    candidates = [Path(file)] + [Path(d) / file for d in
                                 list(search_paths) + default_search_paths()]
    for candidate in candidates:
        if candidate.is_file():
            return str(candidate)
    raise UserError("gin file not found", where=file,
                    expected="a path relative to . or to --gin_search_paths")


class _gin_errors:
    """Context: what gin raises (and a UserError raised inside a configurable,
    which gin lengthens with its own lines) as one-line UserErrors."""

    def __init__(self, what: str, *, parsing: bool = False):
        self.what = what
        self.parsing = parsing  # while parsing, any error is the configuration's

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, error, traceback) -> bool:
        if error is None:
            return False
        if isinstance(error, UserError):  # gin's proxy keeps the original message
            raise UserError(error.what, where=error.where, expected=error.expected) from None
        unset = [] if self.parsing else _unset_macros()
        if unset:
            raise UserError(f"gin macro {', '.join(unset)} is not set",
                            expected=" ".join(f"--gin.{m}=..." for m in unset)) from None
        if self.parsing and isinstance(error, Exception) or isinstance(
                error, (ValueError, KeyError, TypeError, ImportError, SyntaxError,
                        RuntimeError, AttributeError)):
            text = str(error.args[0] if isinstance(error, KeyError) and error.args
                       else error)
            lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
            what = lines[0] if lines else type(error).__name__
            where = ": ".join(lines[1:3]) or None  # gin's "In file ..., line N", the text
            raise UserError(f"{self.what}: {what}", where=where,
                            expected="bindings of configurables and parameters that exist "
                                     "(see gin_configs/runs/*.gin)") from None
        return False


def _unset_macros() -> list[str]:
    """Macros (``%NAME``) that the configuration uses but does not bind, or
    binds to ``%gin.REQUIRED``."""
    from gin import config as gin_internals

    bound, required, used = set(), set(), set()

    def walk(value):
        if isinstance(value, gin_internals.ConfigurableReference):
            scope, _, name = value.scoped_selector.rpartition("/")
            if name == "gin.macro":
                used.add(scope)
        elif isinstance(value, (list, tuple, set)):
            for v in value:
                walk(v)
        elif isinstance(value, dict):
            for v in value.values():
                walk(v)

    for (scope, selector), parameters in gin_internals._CONFIG.items():
        if selector == "gin.macro":
            bound.add(scope)
            value = parameters.get("value")
            if getattr(value, "scoped_selector", "").startswith("gin.REQUIRED"):
                required.add(scope)
        for value in parameters.values():
            walk(value)
    return sorted((used - bound) | required)


# ----------------------------------------------------------------- the bound calls


def _bound_arguments(name: str, expected_file: str) -> dict[str, Any]:
    register()
    configurable = _configurables[name]
    with _gin_errors("gin configuration"):
        arguments = configurable()
    signature = inspect.signature(configurable.library_function)
    missing = [p.name for p in signature.parameters.values()
               if p.default is inspect.Parameter.empty and p.name not in arguments]
    missing += [k for k, v in arguments.items() if v is gin.REQUIRED]
    unset = _unset_macros()
    if missing and unset:
        raise UserError(f"gin macro {', '.join(unset)} is not set",
                        expected=" ".join(f"--gin.{m}=..." for m in unset))
    if missing:
        raise UserError(f"gin configuration: {', '.join(f'{name}.{m}' for m in missing)} "
                        "not bound", expected=f"a gin file that includes {expected_file}")
    return arguments


def train_arguments() -> dict[str, Any]:
    """The keyword arguments of :func:`explistops_jax.trainer.train` that the
    parsed configuration binds (``train.*``, references such as
    ``@trainer.ModelSpec()`` evaluated)."""
    return _bound_arguments("train", "gin_configs/runs/finetune.gin")


def evaluate_arguments() -> dict[str, Any]:
    """The keyword arguments of :func:`explistops_jax.evaluator.evaluate` that the
    parsed configuration binds (``evaluate.*``)."""
    return _bound_arguments("evaluate", "gin_configs/runs/eval.gin")


def write_config(model_dir: str | os.PathLike):
    """Writes the parsed configuration to ``<model_dir>/config.gin`` (atomically,
    ``rundir.write_text``; ``model_dir`` may be a URL such as ``gs://bucket/run``);
    returns its ``epath.Path``."""
    from explistops_jax import rundir

    path = rundir.RunDir(rundir.run_path(model_dir)).config_gin
    path.parent.mkdir(parents=True, exist_ok=True)
    rundir.write_text(path, gin.config_str())
    return path
