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

Paths are ``etils.epath`` paths, so a run directory may be a local directory or
a URL of an object store (``gs://bucket/run``, ``s3://...``, any scheme registered
with ``epath``): :func:`run_path` turns what a user gives into one, and every read
and write below goes through it.

Every write is atomic, as the store allows:

- on a local filesystem the bytes go to a hidden temporary file in the same
  directory (``.<name>.<random>.tmp``), are flushed and fsynced, and the file is
  renamed over the target with ``os.replace``, so a reader (or a run killed
  mid-write) sees the old file or the new one, never half of one;
- an object store (any ``scheme://`` path) has no rename, but an object becomes
  visible whole when its upload completes: the bytes are gathered in memory and
  the object is written in one upload (``epath``'s ``write_bytes``), so a reader
  sees the old object or the new one. No temporary object is ever created.

Directories that must appear whole (converted checkpoints) use
:func:`atomic_directory`, the local scheme for a directory (local paths only).
Logs that grow line by line are appended (:class:`JsonlLog`, :func:`append_jsonl`):
on a local filesystem a line at a time, and their readers skip a last line cut
short by a kill (``read_jsonl(..., lenient=True)``); objects cannot be appended
to, so on an object store a log is rewritten whole (one upload) when flushed.

Pure Python and ``etils.epath``: no JAX, TensorFlow or Orbax (epath loads
TensorFlow only to open a ``gs://`` file), so the report and the CLI read runs
without loading them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import operator
import os
import re
import shutil
import time
import uuid
from pathlib import Path
from typing import IO, Any, Iterable, Iterator

from etils import epath

from explistops_jax.errors import UserError

__all__ = [
    "PathLike",
    "run_path",
    "is_local",
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
    "write_bytes",
    "append_jsonl",
    "JsonlLog",
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
FINDINGS_JSON = "findings.json"
"""The CPU study's findings: each one's arms, effect, standard error and verdict."""


def finding_png(name: str) -> str:
    """The plot of one finding of the CPU study (``finding_ladder.png``)."""
    return f"finding_{name}.png"
T5X_COMMANDS_FILE = "t5x_commands.sh"

_CHECKPOINT_NAME = re.compile(rf"{CHECKPOINT_PREFIX}_(0|[1-9][0-9]*)")
_CHECKPOINT_LIKE = re.compile(rf"{CHECKPOINT_PREFIX}_[0-9]+.*")  # Orbax temporaries too
_METRICS_NAME = re.compile(r"metrics_(0|[1-9][0-9]*)\.json")


PathLike = str | os.PathLike
"""What the functions below accept for a path: a string (a local path or a URL
such as ``gs://bucket/run``), a ``pathlib`` path or an ``epath.Path``."""


def is_local(path: PathLike) -> bool:
    """Whether ``path`` is on the local filesystem (no ``scheme://`` prefix):
    there files can be renamed atomically and appended to; on an object store
    (``gs://``, ``s3://``, ...) they cannot."""
    return "://" not in os.fspath(path)


def split_url(path: PathLike) -> tuple[str | None, str]:
    """``(scheme, rest)`` of a URL (``"gs://b/run"`` -> ``("gs", "b/run")``);
    ``(None, path)`` for a local path."""
    text = os.fspath(path)
    if is_local(text):
        return None, text
    scheme, rest = text.split("://", 1)
    return scheme, rest


def run_path(path: PathLike) -> epath.Path:
    """The ``epath.Path`` of a run directory or any file in one: a local path
    with ``~`` expanded and made absolute; a URL (``gs://bucket/run``) as it is
    (never ``os.path`` on a URL, which would mangle ``//``)."""
    if not is_local(path):
        return epath.Path(os.fspath(path))
    return epath.Path(os.path.abspath(os.path.expanduser(os.fspath(path))))


def _as_path(path: PathLike) -> epath.Path:
    """``epath.Path`` of ``path``, relative local paths left relative."""
    return epath.Path(os.fspath(path)) if not isinstance(path, epath.Path) else path


def _children(path: epath.Path) -> list[epath.Path]:
    """The entries of a directory; none when it is missing or unreadable."""
    try:
        return list(path.iterdir())
    except (OSError, NotImplementedError):
        return []


def _reason(err: BaseException) -> str:
    """An OS error's reason in words (object-store errors may have no strerror)."""
    return getattr(err, "strerror", None) or str(err) or type(err).__name__


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

    path: epath.Path
    """An ``epath.Path`` (local or a URL such as ``gs://bucket/run``); a ``str``
    or ``pathlib`` path given is converted (not made absolute: see
    :func:`run_path`)."""

    def __post_init__(self):
        object.__setattr__(self, "path", _as_path(self.path))

    @property
    def run_json(self) -> epath.Path:
        return self.path / RUN_JSON

    @property
    def config_gin(self) -> epath.Path:
        return self.path / CONFIG_GIN

    @property
    def train_log(self) -> epath.Path:
        return self.path / TRAIN_LOG

    @property
    def eval_log(self) -> epath.Path:
        return self.path / EVAL_LOG

    @property
    def done_json(self) -> epath.Path:
        return self.path / DONE_JSON

    def tensorboard(self, kind: str) -> epath.Path:
        """TensorBoard events of ``kind`` (``train`` or ``eval``)."""
        return self.path / TENSORBOARD_DIR / kind

    # ------------------------------------------------------------- checkpoints

    def checkpoint(self, step: int) -> epath.Path:
        """``checkpoint_<step>/``."""
        return self.path / checkpoint_name(step)

    def checkpoint_steps(self) -> list[int]:
        """Steps of the finished checkpoints (those with a ``state`` item; Orbax
        renames a checkpoint into place only when it is complete), ascending."""
        steps = (parse_checkpoint_name(child.name) for child in _children(self.path)
                 if parse_checkpoint_name(child.name) is not None
                 and (child / STATE_ITEM).is_dir())
        return sorted(step for step in steps if step is not None)

    # ------------------------------------------------------------- evaluations

    def eval_dir(self, task: str, split: str) -> epath.Path:
        """``eval/<task>/<split>/``: where an evaluation of ``task``/``split`` writes."""
        return self.path / EVAL_DIR / task / split

    def predictions(self, task: str, split: str, step: int) -> epath.Path:
        return self.eval_dir(task, split) / _step_file("predictions", step, ".jsonl")

    def metrics(self, task: str, split: str, step: int) -> epath.Path:
        return self.eval_dir(task, split) / _step_file("metrics", step, ".json")

    def eval_splits(self) -> list[tuple[str, str]]:
        """The ``(task, split)`` directories under ``eval/``, sorted."""
        found = []
        for task_dir in sorted(p for p in _children(self.path / EVAL_DIR) if p.is_dir()):
            found += [(task_dir.name, split_dir.name)
                      for split_dir in sorted(p for p in _children(task_dir) if p.is_dir())]
        return found

    def metrics_steps(self, task: str, split: str) -> list[int]:
        """Steps with a ``metrics_<step>.json`` file of ``task``/``split``, ascending."""
        steps = []
        for path in _children(self.eval_dir(task, split)):
            match = _METRICS_NAME.fullmatch(path.name)
            if match:
                steps.append(int(match.group(1)))
        return sorted(steps)


def find_run_checkpoint(path: PathLike) -> tuple[RunDir, int | None] | None:
    """``(run, step)`` when ``path`` is a ``checkpoint_<step>`` directory written
    by this project's trainer (it has a ``run`` item), ``(run, None)`` when it is a
    run directory holding such checkpoints, None otherwise (e.g. a T5X or Hugging
    Face checkpoint)."""
    path = _as_path(path)
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


def _write_error(path: PathLike, err: BaseException) -> UserError:
    return UserError(f"cannot write {path}: {_reason(err)}",
                     expected="a writable file in an existing directory")


@contextlib.contextmanager
def atomic_open(path: PathLike, mode: str = "w") -> Iterator[IO]:
    """A file handle whose content replaces ``path`` when the block succeeds
    (``"w"``: UTF-8 text with ``\\n`` line ends; ``"wb"``: bytes); when the block
    raises, ``path`` is left as it was.

    Local path: a temporary file beside ``path``, fsynced and renamed over it
    (``os.replace``), deleted on failure. Object store (``gs://``, ...): the
    content is gathered in memory and written as the object in one upload
    when the block succeeds (objects appear whole; nothing is written on failure).

    Raises:
      UserError: the file cannot be created (no such directory, no permission,
        the store refused the write).
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"mode {mode!r}: expected 'w' or 'wb'")
    if not is_local(path):
        buffer = io.StringIO(newline="\n") if mode == "w" else io.BytesIO()
        yield buffer
        data = buffer.getvalue()
        write_bytes(path, data.encode("utf-8") if mode == "w" else data)
        return
    path = Path(os.fspath(path))
    tmp = _temporary(path)
    text = {"encoding": "utf-8", "newline": "\n"} if mode == "w" else {}
    try:
        handle = open(tmp, mode.replace("w", "x"), **text)
    except OSError as e:
        raise _write_error(path, e) from None
    try:
        with handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes(path: PathLike, data: bytes) -> None:
    """``data`` to ``path``, atomically: on a local filesystem through
    :func:`atomic_open`; on an object store as one write of the whole object.

    Raises:
      UserError: the store refused the write (no such bucket, no permission).
    """
    if is_local(path):
        with atomic_open(path, "wb") as handle:
            handle.write(data)
        return
    try:
        _as_path(path).write_bytes(data)
    except OSError as e:
        raise _write_error(path, e) from None


def write_text(path: PathLike, text: str) -> None:
    """``text`` (UTF-8) to ``path``, atomically."""
    with atomic_open(path) as handle:
        handle.write(text)


def _json_text(value: Any, *, sort_keys: bool = False) -> str:
    return json.dumps(value, indent=2, sort_keys=sort_keys, default=str) + "\n"


def write_json(path: PathLike, value: Any, *, sort_keys: bool = False) -> None:
    """``value`` as indented JSON (values JSON lacks as ``str``), atomically."""
    write_text(path, _json_text(value, sort_keys=sort_keys))


def _jsonl_line(record: Any) -> str:
    return json.dumps(record, ensure_ascii=False) + "\n"


def write_jsonl(path: PathLike, records: Iterable[Any]) -> None:
    """One JSON value per line (UTF-8, not escaped), atomically."""
    with atomic_open(path) as handle:
        for record in records:
            handle.write(_jsonl_line(record))


def _read_bytes_or_empty(path: PathLike) -> bytes:
    """The bytes of ``path``; none when it does not exist yet."""
    path = _as_path(path)
    return path.read_bytes() if path.exists() else b""


def append_jsonl(path: PathLike, record: Any) -> None:
    """Appends one line to a JSONL log. Local: not atomic, a kill mid-line
    leaves a broken last line, which ``read_jsonl(..., lenient=True)`` skips.
    Object store: the object is read and written whole with the new line (one
    request each; for logs written often use :class:`JsonlLog`)."""
    if not is_local(path):
        write_bytes(path, _read_bytes_or_empty(path) + _jsonl_line(record).encode("utf-8"))
        return
    with open(path, "a", encoding="utf-8", newline="\n") as handle:
        handle.write(_jsonl_line(record))


class JsonlLog:
    """A JSONL log that grows a line at a time (``train_log.jsonl``,
    ``eval_log.jsonl``).

    On a local filesystem each line is appended at once (:func:`append_jsonl`).
    An object cannot be appended to, so on an object store the log's content is
    read once, kept in memory, and the whole object is rewritten (one upload)
    when :meth:`flush` is called, and at most every ``interval_s`` seconds as
    lines arrive: a run killed between two writes loses at most those lines
    (the trainer flushes whenever it saves a checkpoint, so a resumed run's log
    still reads as one run).
    """

    def __init__(self, path: PathLike, *, interval_s: float = 60.0):
        self.path = _as_path(path)
        self.interval_s = interval_s
        self._local = is_local(path)
        self._content: bytes | None = None  # object store: the whole log
        self._dirty = False
        self._written = time.monotonic()

    def append(self, record: Any) -> None:
        """One line (a JSON value)."""
        if self._local:
            append_jsonl(self.path, record)
            return
        if self._content is None:
            self._content = _read_bytes_or_empty(self.path)
        self._content += _jsonl_line(record).encode("utf-8")
        self._dirty = True
        if time.monotonic() - self._written >= self.interval_s:
            self.flush()

    def flush(self) -> None:
        """Makes every line appended so far readable (object store: one write)."""
        if self._dirty and self._content is not None:
            write_bytes(self.path, self._content)
            self._dirty = False
        self._written = time.monotonic()


@contextlib.contextmanager
def atomic_directory(out_dir: PathLike) -> Iterator[Path]:
    """Yields a fresh temporary directory beside ``out_dir``; renames it to
    ``out_dir`` when the block succeeds, deletes it when the block raises.

    ``out_dir`` must not exist yet (an empty directory is accepted and replaced),
    so a failed or interrupted conversion never leaves a half-written checkpoint
    where a complete one is expected.

    An object store (``gs://bucket/ckpt``) has no directory rename: there the
    block writes ``out_dir`` itself (an ``etils.epath`` path; each file one
    upload, and Orbax's own commit marking a checkpoint complete), and what it
    wrote is removed again when it raises.

    Raises:
      UserError: ``out_dir`` exists and is not empty, or cannot be created.
    """
    if not is_local(out_dir):
        yield from _written_in_place(epath.Path(out_dir))
        return
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


def _written_in_place(out: epath.Path) -> Iterator[epath.Path]:
    """:func:`atomic_directory` on an object store."""
    try:
        if out.exists() and any(out.iterdir()):
            raise UserError(f"output {out} already exists",
                            expected="a new path (remove the old one first)")
    except OSError as e:
        raise UserError(f"cannot read output {out}: {e}") from None
    try:
        yield out
    except BaseException:
        with contextlib.suppress(OSError):
            if out.exists():
                out.rmtree()
        raise


# ------------------------------------------------------------------- reading


def _read_text(path: PathLike, *, lenient: bool = False) -> str:
    """The UTF-8 text of ``path`` (``lenient``: undecodable bytes replaced)."""
    data = _as_path(path).read_bytes()
    return data.decode("utf-8", errors="replace" if lenient else "strict")


def read_json(path: PathLike) -> dict[str, Any]:
    """A JSON object from ``path``.

    Raises:
      UserError: the file is missing or unreadable, is not JSON (naming
        ``file:line:column``), or holds something other than an object.
    """
    try:
        data = json.loads(_read_text(path))
    except json.JSONDecodeError as e:
        raise UserError(f"not valid JSON: {e.msg}", where=f"{path}:{e.lineno}:{e.colno}") from None
    except UnicodeDecodeError:
        raise UserError("not valid JSON: not UTF-8 text", where=str(path)) from None
    except OSError as e:
        raise UserError(f"cannot read {path}: {_reason(e)}") from None
    if not isinstance(data, dict):
        raise UserError("expected a JSON object", where=str(path))
    return data


def read_json_lenient(path: PathLike) -> tuple[Any, str | None]:
    """``(value, None)``, or ``(None, problem)`` where the problem is a short
    phrase (``"no run.json"``, ``"run.json unreadable (JSONDecodeError)"``): for
    readers that report what is missing instead of stopping (the report)."""
    path = _as_path(path)
    try:
        return json.loads(_read_text(path)), None
    except FileNotFoundError:
        return None, f"no {path.name}"
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        return None, f"{path.name} unreadable ({type(err).__name__})"


def read_jsonl(path: PathLike, *, lenient: bool = False) -> list[dict[str, Any]]:
    """The JSON objects of a JSONL file, one per non-blank line.

    ``lenient`` (for logs a run is still appending to): a missing file has no
    records, and lines that are not a JSON object (a last line cut short by a
    kill, undecodable bytes) are skipped.

    Raises:
      UserError: (not lenient) the file is missing or unreadable, or a line is
        not a JSON object (naming ``file:line``).
    """
    try:
        text = _read_text(path, lenient=lenient)
    except UnicodeDecodeError:
        raise UserError("not UTF-8 text", where=str(path)) from None
    except OSError as e:
        if lenient:
            return []
        raise UserError(f"cannot read {path}: {_reason(e)}") from None
    records = []
    for number, line in enumerate(text.split("\n"), 1):
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
    return records
