"""Errors a user can act on.

Every problem caused by the user's input (a malformed expression, a bad file, an
unknown dataset name) is raised as a :class:`UserError`. Its message says *what* is
wrong, *where* (file, line, column) and what was *expected*, so the command line can
print it as one line and exit with status 2 instead of showing a traceback (a
traceback is reserved for bugs). Pure Python: no project imports, so every layer can
use it.
"""

from __future__ import annotations

import logging
import re

__all__ = ["UserError", "ListOpsError", "ConfigError", "UnknownNameError", "UnknownFieldError",
           "WriteError", "write_failure", "WriteFailureLogFilter"]


class UserError(Exception):
    """A problem with the user's input, worded so the user can fix it.

    Attributes:
      what: the problem itself, e.g. ``"unknown operator 'FOO'"``.
      where: the place, e.g. ``"preds.jsonl:3:17"`` or ``"line 1, column 5"``.
      expected: what would have been accepted there, e.g. ``"one of MAX, MIN, MED, SM"``.
      message: the full one-line message, ``"<where>: <what> (expected <expected>)"``.
    """

    def __init__(self, what: str, *, where: str | None = None, expected: str | None = None):
        self.what = what
        self.where = where
        self.expected = expected
        self.message = _compose(what, where, expected)
        super().__init__(self.message)


class WriteError(Exception):
    """The machine could not write what a run writes (a full disk, a directory
    that turned read-only or disappeared): not the user's mistake, and not a bug.
    ``message`` is one line: what failed, where, and what to do (for a training
    run: the last complete checkpoint, from which rerunning the same command
    resumes)."""

    def __init__(self, message: str):
        self.message = message
        super().__init__(message)


class ListOpsError(UserError, ValueError):
    """A malformed ListOps expression or file, with its position.

    It is a ``ValueError`` too, so callers that only know the standard library can
    still catch it. ``line`` and ``column`` are 1-based; either may be ``None`` when
    unknown. ``source`` names the file (or other origin) if there is one.
    """

    def __init__(
        self,
        what: str,
        *,
        line: int | None = None,
        column: int | None = None,
        expected: str | None = None,
        source: str | None = None,
    ):
        self.line = line
        self.column = column
        self.source = source
        super().__init__(what, where=_position(source, line, column), expected=expected)

    def at(self, *, line: int | None = None, source: str | None = None) -> "ListOpsError":
        """A copy placed at another line / file (the column is kept).

        Used by file readers: the parser only sees one expression, the reader knows
        which line of which file it came from.
        """
        return ListOpsError(
            self.what,
            line=self.line if line is None else line,
            column=self.column,
            expected=self.expected,
            source=self.source if source is None else source,
        )


class ConfigError(UserError, ValueError):
    """A configuration value that cannot work (a mesh that does not divide the
    devices, feature lengths too short for the data, ...).

    Also a ``ValueError``, which library callers caught before it existed.
    """


class UnknownNameError(UserError, KeyError):
    """A name that is not in its registry (a model preset, a mesh axis, ...).

    Also a ``KeyError``, which library callers caught before it existed.
    """


class UnknownFieldError(UserError, TypeError):
    """A keyword (e.g. a ``T5Config`` field) that the receiver does not have.

    Also a ``TypeError``, as for an unexpected keyword argument.
    """


def _position(source: str | None, line: int | None, column: int | None) -> str | None:
    """``file:line:column`` style position text, or None when nothing is known."""
    parts = []
    if source is not None:
        parts.append(str(source))
    if line is not None:
        parts.append(f"line {line}")
    if column is not None:
        parts.append(f"column {column}")
    return ", ".join(parts) if parts else None


def _compose(what: str, where: str | None, expected: str | None) -> str:
    """The one-line message of a :class:`UserError`."""
    message = what if where is None else f"{where}: {what}"
    if expected:
        message += f" (expected {expected})"
    return message


# What a failed write says, in the messages of OSError and of TensorStore (through
# Orbax): "... No space left on device [os_error_code='28']", "RESOURCE_EXHAUSTED".
_WRITE_FAILURE = re.compile(
    r"(No space left on device|Read-only file system|Permission denied|"
    r"No such file or directory|Disk quota exceeded|RESOURCE_EXHAUSTED|os_error_code)")


def write_failure(err: BaseException) -> str | None:
    """The short reason of a failed write (``No space left on device``), or None
    when ``err`` is not one (a bug keeps its traceback)."""
    if isinstance(err, OSError) and err.strerror:
        where = f" ({err.filename})" if err.filename else ""
        return f"{err.strerror}{where}"
    text = str(err)
    if not _WRITE_FAILURE.search(text):
        return None
    for known in ("No space left on device", "Read-only file system", "Permission denied",
                  "No such file or directory", "Disk quota exceeded"):
        if known in text:
            return known
    return text.splitlines()[0][:160]


class WriteFailureLogFilter(logging.Filter):
    """Drops the error records, with their tracebacks, that a library's background
    threads log for a failed write (Orbax's async saves): the run reports that
    failure once, as a :class:`WriteError`, in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR or not record.exc_info:
            return True
        return write_failure(record.exc_info[1]) is None
