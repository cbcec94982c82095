"""The run directory: the name of every file a run has, and atomic reads and writes.

This is the only module that knows a run's file names (docs/architecture.md,
"Run directory")::

    MODEL_DIR/
      run.json                  the run's facts (trainer.train; reproduce adds more)
      config.gin                the gin configuration (runs started from gin)
      train_log.jsonl           one object per logged step
      eval_log.jsonl            one object per evaluation during training
      tensorboard/{train,eval}/ TensorBoard events
      checkpoint_<step>/        an Orbax step: state/, data/, run/ (T5X's layout)
      eval/<task>/<split>/
        predictions_<step>.jsonl
        metrics_<step>.json
      done.json                 reproduce: the run is trained and evaluated

and what ``explistops reproduce`` / ``explistops report`` write beside the runs
(``report.md``, its PNG plots, ``t5x_commands.sh``).

Every write goes through one scheme: the bytes go to a hidden temporary file in
the same directory (``.<name>.<random>.tmp``), are flushed and fsynced, and the file
is renamed over the target with ``os.replace``, so a reader (or a run killed
mid-write) sees the old file or the new one, never half of one. Directories that
must appear whole (converted checkpoints) use :func:`atomic_directory`, the same
scheme for a directory. Logs that grow line by line are appended
(:func:`append_jsonl`); their readers skip a last line cut short by a kill
(``read_jsonl(..., lenient=True)``).

Pure Python: no JAX, TensorFlow or Orbax, so the report and the CLI read runs
without loading them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import operator
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import IO, Any, Iterable, Iterator

from explistops_jax.errors import UserError

__all__ = [
    "RunDir",
    "checkpoint_name",
    "parse_checkpoint_name",
    "is_run_content",
    "find_run_checkpoint",
    "atomic_open",
    "atomic_directory",
    "write_text",
    "write_json",
    "write_jsonl",
    "append_jsonl",
    "read_json",
    "read_json_lenient",
    "read_jsonl",
]

# ------------------------------------------------------------------ file names

RUN_JSON = "run.json"
CONFIG_GIN = "config.gin"
TRAIN_LOG = "train_log.jsonl"
EVAL_LOG = "eval_log.jsonl"
TENSORBOARD_DIR = "tensorboard"
EVAL_DIR = "eval"
DONE_JSON = "done.json"

CHECKPOINT_PREFIX = "checkpoint"
"""Orbax's ``step_prefix``: checkpoints are ``checkpoint_<step>`` (as in T5X)."""
STATE_ITEM, DATA_ITEM, RUN_ITEM = "state", "data", "run"
CHECKPOINT_ITEMS = (STATE_ITEM, DATA_ITEM, RUN_ITEM)
"""The Orbax items of a checkpoint: the train state (T5X's PyTree), the input
position, the run's description."""

REPORT_FILE = "report.md"
ACCURACY_CURVES_PNG = "accuracy_curves.png"
LOSS_CURVES_PNG = "loss_curves.png"
TEST_ACCURACY_PNG = "test_accuracy.png"
T5X_COMMANDS_FILE = "t5x_commands.sh"

_CHECKPOINT_NAME = re.compile(rf"{CHECKPOINT_PREFIX}_(0|[1-9][0-9]*)")
_CHECKPOINT_LIKE = re.compile(rf"{CHECKPOINT_PREFIX}_[0-9]+.*")  # Orbax temporaries too
_METRICS_NAME = re.compile(r"metrics_(0|[1-9][0-9]*)\.json")


def checkpoint_name(step: int) -> str:
    """``checkpoint_<step>``: the directory name of a checkpoint (Orbax's and T5X's)."""
    return _step_file(CHECKPOINT_PREFIX, step, "")


def parse_checkpoint_name(name: str) -> int | None:
    """The step of a ``checkpoint_<step>`` name; None for anything else (an Orbax
    temporary such as ``checkpoint_5.orbax-checkpoint-tmp-1``, ``checkpoint_05``,
    ``checkpoint_x``), so that ``checkpoint_name(parse_checkpoint_name(n)) == n``."""
    match = _CHECKPOINT_NAME.fullmatch(name)
    return int(match.group(1)) if match else None


def is_run_content(name: str) -> bool:
    """Whether a directory name inside a run is the run's own (checkpoints,
    finished or being written, TensorBoard, evaluations, hidden temporaries):
    never a run directory of its own, so searches for runs skip it."""
    return (name in (TENSORBOARD_DIR, EVAL_DIR) or name.startswith(".")
            or _CHECKPOINT_LIKE.fullmatch(name) is not None)


def _step_file(prefix: str, step: int, suffix: str) -> str:
    """``<prefix>_<step><suffix>``; ``step`` is any integer >= 0 (numpy's too)."""
    number = operator.index(step) if not isinstance(step, bool) else -1
    if number < 0:
        raise ValueError(f"a step is an integer >= 0, not {step!r}")
    return f"{prefix}_{number}{suffix}"


@dataclasses.dataclass(frozen=True)
class RunDir:
    """The files of one run directory (or of an evaluation's output directory,
    which has the ``eval/`` part of the layout). Nothing is read or created
    until asked."""

    path: Path

    def __post_init__(self):
        object.__setattr__(self, "path", Path(self.path))

    @property
    def run_json(self) -> Path:
        return self.path / RUN_JSON

    @property
    def config_gin(self) -> Path:
        return self.path / CONFIG_GIN

    @property
    def train_log(self) -> Path:
        return self.path / TRAIN_LOG

    @property
    def eval_log(self) -> Path:
        return self.path / EVAL_LOG

    @property
    def done_json(self) -> Path:
        return self.path / DONE_JSON

    def tensorboard(self, kind: str) -> Path:
        """TensorBoard events of ``kind`` (``train`` or ``eval``)."""
        return self.path / TENSORBOARD_DIR / kind

    # ------------------------------------------------------------- checkpoints

    def checkpoint(self, step: int) -> Path:
        """``checkpoint_<step>/``."""
        return self.path / checkpoint_name(step)

    def checkpoint_steps(self) -> list[int]:
        """Steps of the finished checkpoints (those with a ``state`` item; Orbax
        renames a checkpoint into place only when it is complete), ascending."""
        try:
            children = list(self.path.iterdir())
        except OSError:
            return []
        steps = (parse_checkpoint_name(child.name) for child in children
                 if (child / STATE_ITEM).is_dir())
        return sorted(step for step in steps if step is not None)

    # ------------------------------------------------------------- evaluations

    def eval_dir(self, task: str, split: str) -> Path:
        """``eval/<task>/<split>/``: where an evaluation of ``task``/``split`` writes."""
        return self.path / EVAL_DIR / task / split

    def predictions(self, task: str, split: str, step: int) -> Path:
        return self.eval_dir(task, split) / _step_file("predictions", step, ".jsonl")

    def metrics(self, task: str, split: str, step: int) -> Path:
        return self.eval_dir(task, split) / _step_file("metrics", step, ".json")

    def eval_splits(self) -> list[tuple[str, str]]:
        """The ``(task, split)`` directories under ``eval/``, sorted."""
        root = self.path / EVAL_DIR
        found = []
        for task_dir in sorted(p for p in root.glob("*") if p.is_dir()):
            found += [(task_dir.name, split_dir.name)
                      for split_dir in sorted(p for p in task_dir.glob("*") if p.is_dir())]
        return found

    def metrics_steps(self, task: str, split: str) -> list[int]:
        """Steps with a ``metrics_<step>.json`` file of ``task``/``split``, ascending."""
        steps = []
        for path in self.eval_dir(task, split).glob("metrics_*.json"):
            match = _METRICS_NAME.fullmatch(path.name)
            if match:
                steps.append(int(match.group(1)))
        return sorted(steps)


def find_run_checkpoint(path: str | os.PathLike) -> tuple[RunDir, int | None] | None:
    """``(run, step)`` when ``path`` is a ``checkpoint_<step>`` directory written
    by this project's trainer (it has a ``run`` item), ``(run, None)`` when it is a
    run directory holding such checkpoints, None otherwise (e.g. a T5X or Hugging
    Face checkpoint)."""
    path = Path(path)
    step = parse_checkpoint_name(path.name)
    if step is not None and (path / RUN_ITEM).exists():
        return RunDir(path.parent), step
    run = RunDir(path)
    if any((run.checkpoint(s) / RUN_ITEM).exists() for s in run.checkpoint_steps()):
        return run, None
    return None


# ------------------------------------------------------------- atomic writes


def _temporary(path: Path) -> Path:
    """The one temporary-name scheme: hidden, beside ``path``, unique."""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w") -> Iterator[IO]:
    """Opens a temporary file beside ``path`` for writing (``"w"``: UTF-8 text with
    ``\\n`` line ends; ``"wb"``: bytes); when the block succeeds the file is
    fsynced and renamed to ``path``; when it raises, it is deleted and ``path`` is
    left as it was.

    Raises:
      UserError: the file cannot be created (no such directory, no permission).
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"mode {mode!r}: expected 'w' or 'wb'")
    path = Path(path)
    tmp = _temporary(path)
    text = {"encoding": "utf-8", "newline": "\n"} if mode == "w" else {}
    try:
        handle = open(tmp, mode.replace("w", "x"), **text)
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror}",
                        expected="a writable file in an existing directory") from None
    try:
        with handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    """``text`` (UTF-8) to ``path``, atomically."""
    with atomic_open(path) as handle:
        handle.write(text)


def _json_text(value: Any, *, sort_keys: bool = False) -> str:
    return json.dumps(value, indent=2, sort_keys=sort_keys, default=str) + "\n"


def write_json(path: str | os.PathLike, value: Any, *, sort_keys: bool = False) -> None:
    """``value`` as indented JSON (values JSON lacks as ``str``), atomically."""
    write_text(path, _json_text(value, sort_keys=sort_keys))


def _jsonl_line(record: Any) -> str:
    return json.dumps(record, ensure_ascii=False) + "\n"


def write_jsonl(path: str | os.PathLike, records: Iterable[Any]) -> None:
    """One JSON value per line (UTF-8, not escaped), atomically."""
    with atomic_open(path) as handle:
        for record in records:
            handle.write(_jsonl_line(record))


def append_jsonl(path: str | os.PathLike, record: Any) -> None:
    """Appends one line to a JSONL log. Not atomic: a kill mid-line leaves a
    broken last line, which ``read_jsonl(..., lenient=True)`` skips."""
    with open(path, "a", encoding="utf-8", newline="\n") as handle:
        handle.write(_jsonl_line(record))


@contextlib.contextmanager
def atomic_directory(out_dir: str | os.PathLike) -> Iterator[Path]:
    """Yields a fresh temporary directory beside ``out_dir``; renames it to
    ``out_dir`` when the block succeeds, deletes it when the block raises.

    ``out_dir`` must not exist yet (an empty directory is accepted and replaced),
    so a failed or interrupted conversion never leaves a half-written checkpoint
    where a complete one is expected.

    Raises:
      UserError: ``out_dir`` exists and is not empty, or cannot be created.
    """
    out = Path(out_dir).expanduser().absolute()
    if out.exists() and not (out.is_dir() and not any(out.iterdir())):
        raise UserError(f"output {out} already exists",
                        expected="a new path (remove the old one first)")
    tmp = _temporary(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
    except OSError as e:
        raise UserError(f"cannot create output directory {out}: {e.strerror}") from None
    try:
        yield tmp
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# ------------------------------------------------------------------- reading


def read_json(path: str | os.PathLike) -> dict[str, Any]:
    """A JSON object from ``path``.

    Raises:
      UserError: the file is missing or unreadable, is not JSON (naming
        ``file:line:column``), or holds something other than an object.
    """
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except json.JSONDecodeError as e:
        raise UserError(f"not valid JSON: {e.msg}", where=f"{path}:{e.lineno}:{e.colno}") from None
    except UnicodeDecodeError:
        raise UserError("not valid JSON: not UTF-8 text", where=str(path)) from None
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from None
    if not isinstance(data, dict):
        raise UserError("expected a JSON object", where=str(path))
    return data


def read_json_lenient(path: str | os.PathLike) -> tuple[Any, str | None]:
    """``(value, None)``, or ``(None, problem)`` where the problem is a short
    phrase (``"no run.json"``, ``"run.json unreadable (JSONDecodeError)"``): for
    readers that report what is missing instead of stopping (the report)."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8")), None
    except FileNotFoundError:
        return None, f"no {path.name}"
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        return None, f"{path.name} unreadable ({type(err).__name__})"


def read_jsonl(path: str | os.PathLike, *, lenient: bool = False) -> list[dict[str, Any]]:
    """The JSON objects of a JSONL file, one per non-blank line.

    ``lenient`` (for logs a run is still appending to): a missing file has no
    records, and lines that are not a JSON object (a last line cut short by a
    kill, undecodable bytes) are skipped.

    Raises:
      UserError: (not lenient) the file is missing or unreadable, or a line is
        not a JSON object (naming ``file:line``).
    """
    records = []
    try:
        with open(path, encoding="utf-8", errors="replace" if lenient else "strict") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    if lenient:
                        continue
                    raise UserError(f"not valid JSON: {e.msg}",
                                    where=f"{path}:{number}:{e.colno}") from None
                if isinstance(record, dict):
                    records.append(record)
                elif not lenient:
                    raise UserError(f"expected a JSON object, not {type(record).__name__}",
                                    where=f"{path}:{number}")
    except UnicodeDecodeError:
        raise UserError("not UTF-8 text", where=str(path)) from None
    except OSError as e:
        if lenient:
            return []
        raise UserError(f"cannot read {path}: {e.strerror}") from None
    return records
