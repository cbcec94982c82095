"""What every process runs first, and the one error boundary of every entry point.

:func:`start` is the one start-up path: every entry point (``python -m
explistops_jax.train`` and ``.eval``, every ``explistops`` command that uses JAX
or TensorFlow) calls it with its parsed flags before anything imports TensorFlow
or touches a JAX device, and uses what it returns to register the tasks the
command reads (:meth:`Startup.register`) and to open its output
(:meth:`Startup.output`). It runs :func:`setup`:

* quiet start-up: TensorFlow's C++ logging level is set before TensorFlow loads,
  and the lines its libraries print to standard error while loading (oneDNN, "could
  not find cuda drivers", CPU-feature notes, absl's pre-initialisation warning)
  are dropped; any other line is passed through;
* TensorFlow only feeds data, and only with the SeqIO input backend: it is
  loaded when that backend (or ``seqio_tasks``) is imported, through
  :func:`confine_tensorflow`, which keeps it off the GPUs that JAX uses;
* Python logging (and absl's) at the requested level;
* ``jax.distributed.initialize`` when a multi-host job is asked for.

:func:`run_guarded` is the error boundary: a user mistake
(:class:`~explistops_jax.errors.UserError`, or an ``OSError`` about a path the
user gave) is printed as one line, ``explistops: error: <message>``, with exit
status 2 and no traceback; anything else is a bug and keeps its traceback.
:func:`new_output` removes an output directory that a failed command created,
so that a mistake leaves nothing half-written.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

from explistops_jax.errors import UserError, WriteError, WriteFailureLogFilter

__all__ = ["start", "Startup", "setup", "confine_tensorflow", "register_tasks_for", "run_task",
           "add_distributed_arguments", "distributed_options", "add_absl_arguments",
           "log_level", "expand_flagfiles", "ArgumentParser",
           "run_guarded", "fail", "new_output", "check_writable", "PROG"]

PROG = "explistops"

_done = {"setup": False, "distributed": False}


def setup(*, tensorflow: bool = False, verbosity: str = "warning",
          coordinator_address: str | None = None, num_processes: int | None = None,
          process_id: int | None = None, initialization_timeout: int | None = None,
          heartbeat_timeout: int | None = None, multiprocess: bool = False) -> None:
    """Prepares this process; call it first, before TensorFlow or JAX is used.

    Args:
      tensorflow: load TensorFlow now (quietly) and keep it off the GPUs. By
        default it is loaded only when something needs it (the SeqIO backend,
        ``seqio_tasks``), which calls :func:`confine_tensorflow` first.
      verbosity: level of Python's and absl's logging (``debug`` ... ``error``).
      coordinator_address, num_processes, process_id: a multi-host job (see
        :func:`explistops_jax.distributed.initialize`); all None
        for one process.
      initialization_timeout, heartbeat_timeout: seconds (None: the defaults of
        :mod:`explistops_jax.distributed`).
      multiprocess: join a job whose coordinates JAX finds itself when they are
        not given (T5X's ``--multiprocess_gpu``; TPU pods, SLURM).

    Safe to call more than once: each part runs once per process.
    """
    if not _done["setup"]:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
        level = getattr(logging, verbosity.upper(), logging.WARNING)
        logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
        logging.getLogger().setLevel(level)
        for name in ("", "absl"):  # a failed write is reported once, in one line
            logging.getLogger(name).addFilter(WriteFailureLogFilter())
        try:
            from absl import logging as absl_logging

            absl_logging.set_verbosity(verbosity.lower())
        except ImportError:  # absl comes with TensorFlow; nothing to quiet without it
            pass
        enable_compilation_cache()
        _done["setup"] = True
    if tensorflow:
        confine_tensorflow()
    asked = (coordinator_address, num_processes, process_id) != (None, None, None)
    if ((asked or multiprocess or os.environ.get("EXPLISTOPS_DISTRIBUTED") == "1")
            and not _done["distributed"]):
        from explistops_jax import distributed

        timeouts = {"initialization_timeout": initialization_timeout,
                    "heartbeat_timeout": heartbeat_timeout}
        distributed.initialize(
            coordinator_address, num_processes, process_id, auto=multiprocess,
            **{k: v for k, v in timeouts.items() if v is not None})
        _done["distributed"] = True


class Startup:
    """A started process (:func:`start`): registers what a command reads and
    opens what it writes, the same way for every entry point."""

    def __init__(self, args: argparse.Namespace | None):
        self.args = args
        self.task_files: dict[str, str] = {}

    def register(self, tasks: Iterable[str | None] = (), *, data_backend: str = "grain",
                 training_tasks: Iterable[str | None] = (), use_cached: bool = False,
                 checkpoint: str | Path | None = None) -> dict[str, str]:
        """Registers the file tasks of ``--task_file`` (and those ``checkpoint``'s
        run recorded), then the SeqIO registry when a task is read through it
        (``training_tasks`` are trained on, ``tasks`` evaluated or decoded).
        Returns the ``--task_file`` tasks, ``{name: dir}`` (also kept in
        :attr:`task_files`; a training run records them)."""
        files = register_file_tasks(getattr(self.args, "task_file", None) or (), checkpoint)
        self.task_files.update(files)
        training_tasks = list(training_tasks)
        if training_tasks:
            register_tasks_for(training_tasks, data_backend, training=True,
                               use_cached=use_cached)
        register_tasks_for(tasks, data_backend, use_cached=use_cached)
        return files

    def output(self, path: str | Path | None, what: str = "output directory"
               ) -> contextlib.AbstractContextManager[None]:
        """The command's output directory (:func:`new_output`)."""
        return new_output(path, what)


def start(args: argparse.Namespace | None = None, *, tensorflow: bool = False,
          sentencepiece_model: str | None = None) -> Startup:
    """The one start-up of every entry point: :func:`setup`, joining a multi-host
    job when ``args`` carries :func:`add_distributed_arguments`' flags, and
    ``sentencepiece_model`` as the SentencePiece vocabulary of T5's tasks (gin
    ``sentencepiece_model_path.path``) when given. Errors are turned into one
    line by :func:`run_guarded`, which wraps every ``main``."""
    options = distributed_options(args) if args is not None else {}
    setup(tensorflow=tensorflow, verbosity=log_level(args), **options)
    if sentencepiece_model:
        import gin

        from explistops_jax import vocab  # noqa: F401  (declares the gin parameter)

        gin.bind_parameter("sentencepiece_model_path.path", sentencepiece_model)
    return Startup(args)


COMPILATION_CACHE_ENV = "EXPLISTOPS_COMPILATION_CACHE"
COMPILATION_CACHE_MAX_BYTES = 8 << 30  # JAX_COMPILATION_CACHE_MAX_SIZE overrides it


def compilation_cache_dir() -> str | None:
    """Where compiled XLA programs are kept between processes: the directory in
    ``$EXPLISTOPS_COMPILATION_CACHE`` (``off``: none), by default
    ``~/.cache/explistops/jax`` (``$XDG_CACHE_HOME`` when set)."""
    value = os.environ.get(COMPILATION_CACHE_ENV)
    if value is not None:
        return None if value.strip().lower() in ("", "off", "0", "none") else value
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "explistops", "jax")


def enable_compilation_cache() -> None:
    """JAX's persistent compilation cache (see :func:`compilation_cache_dir`):
    a run whose programs were compiled before (the same model, shapes, mesh and
    JAX version; the key covers all of them) loads them instead of compiling.
    Runs of a study share most programs (initialisation, and the train and
    decode steps of every run with the same lengths)."""
    path = compilation_cache_dir()
    if path is None:
        return
    import jax

    jax.config.update("jax_compilation_cache_dir", path)
    # Only programs that take a while to compile are worth a file (JAX's own
    # variable, when set, decides).
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    # A size limit: JAX then evicts the least recently used programs, so the
    # folder does not grow without end, and takes a file lock around every read
    # and write, so processes that share the folder (``explistops launch``, runs
    # side by side) never read a half-written program. The lock needs the
    # filelock package (huggingface_hub's dependency); without it JAX's default,
    # no limit and no lock, stays.
    if ("JAX_COMPILATION_CACHE_MAX_SIZE" not in os.environ
            and importlib.util.find_spec("filelock") is not None):
        jax.config.update("jax_compilation_cache_max_size", COMPILATION_CACHE_MAX_BYTES)


def confine_tensorflow() -> None:
    """Loads TensorFlow quietly and off the GPUs (``tf_loader.confine``)."""
    from explistops_jax import tf_loader

    tf_loader.confine()


def register_tasks_for(names: Iterable[str | None], data_backend: str = "grain", *,
                       training: bool = False, use_cached: bool = False) -> bool:
    """Registers the SeqIO tasks (``import seqio_tasks``, which loads TensorFlow)
    when any of ``names`` is read by the SeqIO backend
    (``backends.needs_registry``): for evaluation, or with ``training``
    for training as well (a mixture is sampled through SeqIO; its members are
    evaluated with grain), and always with ``use_cached`` (an offline cache is
    SeqIO's). The grain backend needs no registry. Returns whether they were
    registered."""
    from explistops_jax import backends

    if not any(backends.needs_registry(name, data_backend, training=training,
                                       use_cached=use_cached)
               for name in names if name):
        return False
    import seqio_tasks  # noqa: F401  (registers the tasks)

    return True


def run_task(checkpoint: str | Path) -> str | None:
    """The task a run directory (or one of its checkpoints) trained on, from its
    run.json; None for a checkpoint from another tool."""
    from explistops_jax import run_info

    info = run_info.recorded_for(checkpoint)
    return info.get("mixture_or_task_name") if info is not None else None


def add_task_file_arguments(parser: argparse.ArgumentParser) -> None:
    """``--task_file [NAME=]DIR`` (repeatable): tasks imported with ``explistops data
    import``, registered before the run (own_tasks.register_file_task)."""
    parser.add_argument("--task_file", action="append", default=[], metavar="[NAME=]DIR",
                        help="a task directory written by 'explistops data import' "
                             "(repeatable): task NAME (default: its imported name) and "
                             "NAME_paren (inputs in LRA's parenthesized notation)")


def register_file_tasks(specs: Iterable[str] = (), checkpoint: str | Path | None = None
                        ) -> dict[str, str]:
    """Registers the file tasks of ``--task_file`` (``[NAME=]DIR`` each) and, when
    ``checkpoint`` is a run of ours, the ones its run.json records (``task_files``),
    so an evaluation finds the task its run trained on. Returns ``{name: dir}`` of
    the given ones (what a training run records)."""
    from explistops_jax import own_tasks

    registered: dict[str, str] = {}
    if checkpoint is not None:
        from explistops_jax import run_info

        info = run_info.recorded_for(checkpoint)
        recorded = info.get("task_files") if info is not None else None
        for name, path in (recorded or {}).items():
            if Path(path).is_dir():
                own_tasks.register_file_task(path, name, replace=True)
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = None, spec
        path = str(Path(path).expanduser().absolute())
        names = own_tasks.register_file_task(path, name or None, replace=True)
        registered[names[0]] = path
    return registered


def add_distributed_arguments(parser: argparse.ArgumentParser) -> None:
    """The multi-host flags (passed on to :func:`setup`), under the project's names
    and T5X's (``--process_count``, ``--process_index``, ``--multiprocess_gpu``)."""
    group = parser.add_argument_group(
        "multi-host", "for jobs over several hosts (jax.distributed.initialize); "
        "every process runs the same command with its own --process_id")
    group.add_argument("--coordinator_address", metavar="HOST:PORT",
                       help="address of process 0")
    group.add_argument("--num_processes", "--process_count", type=int, dest="num_processes",
                       help="number of processes (T5X: --process_count)")
    group.add_argument("--process_id", "--process_index", type=int, dest="process_id",
                       help="this process's index, 0-based (T5X: --process_index)")
    group.add_argument("--multiprocess_gpu", nargs="?", const=True, default=False,
                       type=absl_bool, dest="multiprocess", metavar="BOOL",
                       help="join a multi-process job; without the three flags above, JAX "
                            "finds the job itself (SLURM, TPU pods), as in T5X")
    group.add_argument("--initialization_timeout", type=int, metavar="SECONDS",
                       help="how long to wait for every process to join (default 300)")
    group.add_argument("--heartbeat_timeout", type=int, metavar="SECONDS",
                       help="after how long without a heartbeat JAX takes a process for "
                            "dead (default 100)")


def distributed_options(args: argparse.Namespace) -> dict:
    """:func:`setup`'s multi-host keyword arguments from the parsed flags."""
    options = {k: getattr(args, k, None)
               for k in ("coordinator_address", "num_processes", "process_id",
                         "initialization_timeout", "heartbeat_timeout")}
    return {**options, "multiprocess": bool(getattr(args, "multiprocess", False))}


# absl's verbosity (-3 fatal ... 0 info, 1 debug) as a logging level name
_ABSL_LEVELS = {-3: "critical", -2: "error", -1: "warning", 0: "info"}


def add_absl_arguments(parser: argparse.ArgumentParser) -> None:
    """absl's common flags, so that a T5X or absl command line works unchanged:
    ``--verbosity``/``-v``, ``--logtostderr``, ``--alsologtostderr`` (logs go to
    standard error in any case), ``--helpfull``; ``--flagfile`` is read before
    parsing (:func:`expand_flagfiles`)."""
    group = parser.add_argument_group("logging (absl's flags)")
    group.add_argument("--verbosity", "-v", type=int, metavar="N",
                       help="log level as absl counts it: -1 warning (default), 0 info, "
                            "1 debug, -2 error")
    group.add_argument("--logtostderr", "--alsologtostderr", nargs="?", const=True,
                       default=False, type=absl_bool, metavar="BOOL",
                       help="accepted for absl command lines; logs go to standard error")
    group.add_argument("--helpfull", action="help", help="show this help and exit")


def absl_bool(text: str) -> bool:
    """A boolean flag's value as absl reads it (``--flag``, ``--flag=false``)."""
    value = text.strip().lower()
    if value in ("1", "true", "t", "yes", "y"):
        return True
    if value in ("0", "false", "f", "no", "n"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not a boolean (true or false)")


def log_level(args: argparse.Namespace | None) -> str:
    """:func:`setup`'s verbosity from ``--verbosity`` (default warning)."""
    value = getattr(args, "verbosity", None)
    if value is None:
        return "warning"
    return "debug" if value >= 1 else _ABSL_LEVELS.get(max(value, -3), "warning")


def expand_flagfiles(argv: Sequence[str], _seen: tuple[str, ...] = ()) -> list[str]:
    """``--flagfile=FILE`` (or ``--flagfile FILE``) replaced by the flags in FILE,
    one per line, as absl reads them (blank lines and ``#``/``//`` comments
    skipped; files may name further flag files).

    Raises:
      UserError: a flag file missing, unreadable or naming itself.
    """
    out: list[str] = []
    items = list(argv)
    i = 0
    while i < len(items):
        arg = items[i]
        path = None
        if arg.startswith("--flagfile="):
            path = arg.split("=", 1)[1]
        elif arg == "--flagfile":
            if i + 1 >= len(items):
                raise UserError("--flagfile needs a file", expected="--flagfile=FILE")
            i += 1
            path = items[i]
        if path is None:
            out.append(arg)
        else:
            where = str(Path(path).expanduser().absolute())
            if where in _seen:
                raise UserError("flag file names itself (a cycle)", where=where)
            try:
                text = Path(where).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as err:
                raise UserError(f"flag file unreadable ({type(err).__name__})", where=where,
                                expected="a text file of flags, one per line") from None
            lines = [line.strip() for line in text.splitlines()]
            flags = [line for line in lines
                     if line and not line.startswith(("#", "//"))]
            out += expand_flagfiles(flags, _seen + (where,))
        i += 1
    return out


# ----------------------------------------------------------------- the error boundary


def add_truncation_argument(parser: argparse.ArgumentParser, function: str) -> None:
    """``--allow_truncation``: gin's ``{function}.allow_truncation = True``."""
    parser.add_argument("--allow_truncation", action="store_true",
                        help="go on when the feature lengths would cut examples (a "
                             "warning, and their count in the run's records) instead of "
                             f"stopping; gin: {function}.allow_truncation = True")


def truncation_bindings(args: argparse.Namespace, function: str) -> list[str]:
    """The gin binding ``--allow_truncation`` stands for (none without it)."""
    return [f"{function}.allow_truncation = True"] if getattr(
        args, "allow_truncation", False) else []


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose usage errors are one line too
    (``explistops: error: <what> (see <prog> --help)``, exit status 2)."""

    def error(self, message: str):  # argparse's hook; never returns
        sys.exit(fail(f"{message} (see {self.prog} --help)"))


def fail(message: str, status: int = 2) -> int:
    """Prints ``explistops: error: <message>`` as one line; returns ``status``."""
    line = " ".join(str(message).split())  # never more than one line
    print(f"{PROG}: error: {line}", file=sys.stderr)
    return status


def run_guarded(fn: Callable[[], int | None]) -> int:
    """Runs ``fn``; returns its exit status, or 2 after a one-line message for a
    user mistake, or 130 when interrupted. Bugs keep their traceback."""
    try:
        status = int(fn() or 0)
        if status == 0 and _done["distributed"]:
            from explistops_jax import distributed

            distributed.finish()  # the other processes must not take our exit for a crash
        return status
    except UserError as err:
        return fail(err.message)
    except WriteError as err:  # the machine's fault: a full disk, a vanished directory
        status = fail(err.message, 1)
        # Nothing more can be written, and the libraries' exit handlers and threads
        # would each print the same failure again as a traceback: leave now. The
        # run directory holds its complete checkpoints; a rerun resumes.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    except OSError as err:
        where = f"{err.filename}: " if err.filename else ""
        return fail(f"{where}{err.strerror or err}")
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


def check_writable(path: str | Path, what: str = "output directory"):
    """Raises a UserError unless ``path`` is, or can be created as, a writable
    directory; creates nothing. Returns its ``etils.epath`` path. A URL
    (``gs://bucket/run``) is not checked: an object store says whether it can
    be written only when written to."""
    from explistops_jax import rundir

    if not rundir.is_local(path):
        return rundir.run_path(path)
    path = Path(path).expanduser().absolute()
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise UserError(f"cannot create the {what}: {probe} is a file", where=str(path),
                        expected="a directory, or a path under one")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"cannot write the {what}: {probe} is not writable",
                        where=str(path), expected="a writable directory")
    return rundir.run_path(path)


@contextlib.contextmanager
def new_output(path: str | Path | None, what: str = "output directory") -> Iterator[None]:
    """Checks that ``path`` can be written; if it did not exist and the block
    stops on a user mistake before anything worth keeping (a ``checkpoint_*``)
    was written there, removes it again: a mistake leaves nothing half-written.
    A directory that existed before is never removed, nor one after a bug or an
    interruption (its contents are evidence, or work). ``path`` may be a URL
    (``gs://bucket/run``): it is then removed through ``etils.epath``."""
    if path is None:
        yield
        return
    path = check_writable(path, what)
    existed = path.exists()
    try:
        yield
    except (UserError, OSError):
        if not existed and path.is_dir() and not _has_checkpoint(path):
            from explistops_jax import rundir

            if rundir.is_local(path):
                shutil.rmtree(path, ignore_errors=True)
            else:  # an object store: through epath
                with contextlib.suppress(OSError):
                    path.rmtree()
        raise


def _has_checkpoint(path) -> bool:
    """Whether a finished ``checkpoint_<step>`` is anywhere below ``path`` (an
    epath path: local or on an object store); a half-written Orbax temporary is
    not one."""
    from explistops_jax import rundir

    stack = [path]
    while stack:
        try:
            children = list(stack.pop().iterdir())
        except OSError:
            continue
        for child in children:
            if rundir.parse_checkpoint_name(child.name) is not None:
                return True
            if child.is_dir():
                stack.append(child)
    return False
