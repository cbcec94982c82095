"""Tasks from files: read the authors' released data, check it, write a normalised copy.

The authors of the study released their data as TSV (``basic_{train,val,test}.tsv``
of BalloutAI/Fine-tuning-with-Explanation): one row per example, the input in
LRA's parenthesized notation (``( ( [MAX 2 ) 9 ) ]``) with operators spelled
``[MEDIAN``/``[SUM`` (``[MED``/``[SM`` in the test file), the target either the
bare answer (``7``) or a medium explanation in a double-quoted field that spans
several lines; the test file starts with a ``Source<TAB>Target`` header. Values
are 0-9 and SUM is modulo 10, hence :data:`DEFAULT_MODULUS`. JSONL (one object per
line, ``input``/``target`` keys, or ``inputs``/``targets`` as ``explistops data``
writes them, or ``source``/``target``; a target may be a JSON string with
newlines or a number) is read too.

:func:`import_files` reads such files (one per split), checks every row against
the project's own evaluation of its input (the answer, and for an explained
target every step: ``explain.read_steps`` of the target against
``explain.steps`` of the parsed tree, compared with ``scoring.same_step``) and
writes a directory, whole or not at all (``rundir.atomic_directory``)::

    DIR/task.json            name, modulus, splits {split: {file, num_examples, source}}
    DIR/<split>.jsonl        one normalised row per example (see :func:`normalised_row`)
    DIR/import_report.json   counts of agreements, disagreements by file and line

A malformed row (an unbalanced expression, an unterminated quote, a missing
column) stops the import with one :class:`~explistops_jax.errors.ListOpsError`
naming the file, line and column; nothing is written. A row whose target
disagrees with the project's evaluation is imported as it is (its target is what
the model is trained on) unless ``drop_disagreements`` is set, and is listed in
the report. :func:`load` reads a written directory back (``own_tasks.FileTask``).

Pure Python (no TensorFlow, no JAX).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from explistops_jax import explain, listops, rundir, scoring
from explistops_jax.errors import ListOpsError, UserError

__all__ = [
    "DEFAULT_MODULUS",
    "FORMATS",
    "FileData",
    "ImportReport",
    "RawRow",
    "check_row",
    "import_files",
    "load",
    "normalised_row",
    "read_rows",
]

DEFAULT_MODULUS = 10   # the authors' data: values 0-9, SUM modulo 10
FORMATS = ("jsonl", "tsv")
TASK_JSON = "task.json"
REPORT_JSON = "import_report.json"
FORMAT_VERSION = 1

# Header rows that are skipped (compared case-insensitively).
_HEADERS = {("source", "target"), ("input", "target"), ("inputs", "targets")}
# JSONL keys of the input and the target, in order of preference.
_INPUT_KEYS = ("input", "inputs", "source")
_TARGET_KEYS = ("target", "targets")
_INTEGER = re.compile(r"[0-9]+")


@dataclasses.dataclass(frozen=True)
class RawRow:
    """One row as read from a file: its text fields and where they start.

    ``line`` is the 1-based line the row starts on; ``input_column`` the 1-based
    column of the input's first character in that line (None when it cannot be
    mapped, e.g. a JSON string with escapes).
    """

    source: str
    line: int
    input: str
    target: str
    input_column: int | None = 1


# ------------------------------------------------------------------- reading


def _format_of(path: Path, fmt: str | None) -> str:
    if fmt is not None:
        if fmt not in FORMATS:
            raise UserError(f"unknown format {fmt!r}", expected="one of " + ", ".join(FORMATS))
        return fmt
    suffix = path.suffix.lower()
    if suffix == ".tsv":
        return "tsv"
    if suffix in (".jsonl", ".json"):
        return "jsonl"
    raise UserError(f"cannot tell the format of {path} from its name",
                    expected="a .tsv or .jsonl file, or --format jsonl|tsv")


def read_rows(path: str | os.PathLike, fmt: str | None = None) -> Iterator[RawRow]:
    """The rows of a TSV or JSONL file (``fmt`` default: from the file name).

    Blank lines and a header row are skipped. Raises a ListOpsError naming the
    file, line and column for a row that cannot be split into input and target.
    """
    path = Path(path)
    kind = _format_of(path, fmt)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"no such file: {path}") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text (byte {e.start})") from None
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if kind == "tsv":
        yield from _tsv_rows(text, str(path))
    else:
        yield from _jsonl_rows(text, str(path))


@dataclasses.dataclass(frozen=True)
class _Field:
    text: str
    line: int          # where its text starts (after an opening quote)
    column: int
    end_line: int      # where the field ends (after a closing quote)
    end_column: int


def _tsv_records(text: str, source: str) -> Iterator[tuple[int, list[_Field]]]:
    """``(line, fields)`` per record; quoted fields (``"..."``, ``""`` for a
    quote) may span lines."""
    pos, line, column = 0, 1, 1
    n = len(text)
    while pos < n:
        start_line = line
        fields: list[_Field] = []
        while True:  # one field per iteration
            field_line, field_column = line, column
            if pos < n and text[pos] == '"':
                parts, pos, column = [], pos + 1, column + 1
                while True:
                    if pos >= n:
                        raise ListOpsError("unterminated quote", line=field_line,
                                           column=field_column, source=source,
                                           expected='a closing " for the quoted field')
                    char = text[pos]
                    if char == '"':
                        if pos + 1 < n and text[pos + 1] == '"':
                            parts.append('"')
                            pos, column = pos + 2, column + 2
                            continue
                        pos, column = pos + 1, column + 1
                        break
                    parts.append(char)
                    if char == "\n":
                        line, column = line + 1, 1
                    else:
                        column += 1
                    pos += 1
                if pos < n and text[pos] not in "\t\n":
                    raise ListOpsError(f"text {text[pos]!r} after a closing quote",
                                       line=line, column=column, source=source,
                                       expected="a tab or the end of the line")
                fields.append(_Field("".join(parts), field_line, field_column + 1, line, column))
            else:
                end = pos
                while end < n and text[end] not in "\t\n":
                    end += 1
                column += end - pos
                fields.append(_Field(text[pos:end], field_line, field_column, line, column))
                pos = end
            if pos < n and text[pos] == "\t":
                pos, column = pos + 1, column + 1
                continue
            break
        if pos < n:  # the newline ending the record
            pos, line, column = pos + 1, line + 1, 1
        yield start_line, fields


def _tsv_rows(text: str, source: str) -> Iterator[RawRow]:
    first = True
    for line, fields in _tsv_records(text, source):
        if len(fields) == 1 and not fields[0].text.strip():
            continue  # a blank line
        if first:
            first = False
            if tuple(f.text.strip().lower() for f in fields) in _HEADERS:
                continue
        if len(fields) < 2:
            raise ListOpsError("missing target column", line=fields[0].end_line,
                               column=fields[0].end_column, source=source,
                               expected="input<TAB>target")
        if len(fields) > 2:  # at the tab that starts the third column
            raise ListOpsError(f"{len(fields)} columns", line=fields[1].end_line,
                               column=fields[1].end_column, source=source,
                               expected="2: input<TAB>target")
        inputs, target = fields
        column = inputs.column if '"' not in inputs.text and "\n" not in inputs.text else None
        yield RawRow(source, inputs.line, inputs.text, target.text, column)


def _jsonl_rows(text: str, source: str) -> Iterator[RawRow]:
    for number, raw in enumerate(text.split("\n"), start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except json.JSONDecodeError as e:
            raise ListOpsError(f"not JSON: {e.msg}", line=number, column=e.colno,
                               source=source, expected="one JSON object per line") from None
        if not isinstance(record, dict):
            raise ListOpsError(f"a JSON {type(record).__name__}, not an object", line=number,
                               column=len(raw) - len(raw.lstrip()) + 1, source=source,
                               expected="an object with input and target")
        values = []
        for keys, what in ((_INPUT_KEYS, "input"), (_TARGET_KEYS, "target")):
            key = next((k for k in keys if k in record), None)
            if key is None:
                raise ListOpsError(f"missing {what} column", line=number,
                                   column=len(raw.rstrip()), source=source,
                                   expected="a key " + " or ".join(repr(k) for k in keys))
            value = record[key]
            if isinstance(value, bool) or not isinstance(value, (str, int)):
                raise ListOpsError(f"{key!r} is a JSON {type(value).__name__}", line=number,
                                   column=_value_column(raw, key, None) or 1, source=source,
                                   expected="a string" + (" or an integer" if what == "target"
                                                          else ""))
            values.append((key, str(value)))
        (input_key, inputs), (_, target) = values
        yield RawRow(source, number, inputs, target, _value_column(raw, input_key, inputs))


def _value_column(raw: str, key: str, value: str | None) -> int | None:
    """1-based column of a string value's first character in the raw JSON line
    (None when the raw text is not the value itself, i.e. it has escapes)."""
    match = re.search(re.escape(json.dumps(key)) + r'\s*:\s*"?', raw)
    if match is None:
        return None
    if value is not None and raw[match.end():match.end() + len(value)] != value:
        return None
    return match.end() + 1


# ------------------------------------------------------------------- checking


def _parse_input(row: RawRow) -> listops.Tree:
    """The row's tree; unbalanced brackets or parentheses are errors at their column."""
    def error(what: str, column: int | None, expected: str | None = None) -> ListOpsError:
        where = None if column is None or row.input_column is None else row.input_column + column - 1
        return ListOpsError(what, line=row.line, column=where, source=row.source,
                            expected=expected)

    try:
        tree = listops.parse(row.input)
    except ListOpsError as err:
        raise error(err.what, err.column, err.expected) from None
    open_columns: list[int] = []
    for match in re.finditer(r"[()]", row.input):
        if match.group() == "(":
            open_columns.append(match.start() + 1)
        elif open_columns:
            open_columns.pop()
        else:
            raise error("unbalanced expression: ')' closes nothing", match.start() + 1,
                        "as many '(' before it as ')'")
    if open_columns:
        raise error("unbalanced expression: '(' is never closed", open_columns[-1],
                    "a ')' for every '('")
    return tree


def _target_text(target: str) -> str:
    """The target with its lines stripped, blank lines dropped, joined by newlines."""
    return "\n".join(line.strip() for line in target.strip().split("\n") if line.strip())


def check_row(tree: listops.Tree, target: str, modulus: int) -> tuple[str, list[dict]]:
    """``(kind, problems)`` of one target against the tree's own evaluation.

    ``kind`` is ``"answer"`` (a bare number) or ``"explanation"``; ``problems`` is
    empty when the target agrees: its answer equals ``evaluate(tree, modulus)`` and,
    for an explanation, its steps are exactly ``explain.steps(tree, modulus)`` in
    order (``scoring.same_step`` each: operator, result, operands as shown, a
    stated sum). Each problem is ``{"check", "expected", "found"}`` (+ ``"step"``,
    1-based).
    """
    truth = listops.evaluate(tree, modulus)
    if _INTEGER.fullmatch(target):
        kind, answer = "answer", int(target)
    else:
        kind, answer = "explanation", scoring.parse_answer(target)
    problems = []
    if answer != truth:
        problems.append({"check": "answer", "expected": truth, "found": answer})
    if kind == "explanation":
        found, true = explain.read_steps(target), explain.steps(tree, modulus)
        for number, (a, b) in enumerate(zip(found, true), start=1):
            if not scoring.same_step(a, b):
                problems.append({"check": "step", "step": number,
                                 "expected": explain.render_step(b, "medium", modulus),
                                 "found": explain.render_step(a, "medium", modulus)})
        if len(found) != len(true):
            problems.append({"check": "steps", "expected": len(true), "found": len(found)})
    return kind, problems


def normalised_row(tree: listops.Tree, target: str, modulus: int, *, index: int,
                   line: int, kind: str, agrees: bool) -> dict[str, Any]:
    """One row of ``<split>.jsonl``: ``index``, ``line`` (in the source file),
    ``expression`` (bracket notation, canonical operator names), ``target`` (the
    file's target, lines stripped), ``target_kind`` (answer | explanation),
    ``agrees``, ``answer`` (the project's evaluation), ``length``, ``depth``,
    ``modulus``."""
    return {"index": index, "line": line, "expression": listops.format(tree),
            "target": target, "target_kind": kind, "agrees": agrees,
            "answer": listops.evaluate(tree, modulus), "length": listops.length(tree),
            "depth": listops.depth(tree), "modulus": modulus}


@dataclasses.dataclass
class ImportReport:
    """What an import found: per split the counts, and every disagreement."""

    name: str
    modulus: int
    splits: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    disagreements: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "modulus": self.modulus, "splits": self.splits,
                "num_disagreements": len(self.disagreements),
                "disagreements": self.disagreements}

    def summary(self) -> str:
        """A few lines for the terminal."""
        lines = []
        for split, c in self.splits.items():
            lines.append(
                f"{split}: {c['rows']} rows from {c['source']} ({c['answers']} bare answers, "
                f"{c['explanations']} explanations); answers agree {c['answers_agree']}/"
                f"{c['rows']}, explanations agree in every step {c['steps_agree']}/"
                f"{c['explanations']}; imported {c['imported']}")
        for item in self.disagreements[:10]:
            lines.append(f"  {item['source']}, line {item['line']}: " + "; ".join(
                _problem_text(p) for p in item["problems"]))
        if len(self.disagreements) > 10:
            lines.append(f"  ... {len(self.disagreements) - 10} more in {REPORT_JSON}")
        return "\n".join(lines)


def _problem_text(problem: Mapping[str, Any]) -> str:
    where = f" {problem['step']}" if "step" in problem else ""
    return f"{problem['check']}{where}: expected {problem['expected']!r}, found {problem['found']!r}"


def _split_name(split: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_]+", split or ""):
        raise UserError(f"bad split name {split!r}", expected="letters, digits and '_'")
    return split


def import_files(files: Mapping[str, str | os.PathLike], name: str, out_dir: str | os.PathLike,
                 *, fmt: str | None = None, modulus: int = DEFAULT_MODULUS,
                 drop_disagreements: bool = False) -> ImportReport:
    """Read, check and write the splits ``files`` (``{split: path}``) as task ``name``.

    Everything is read and checked before anything is written; the directory
    ``out_dir`` (new, or empty) appears whole or not at all. Returns the report
    (also written as ``import_report.json``).
    """
    from explistops_jax.task_spec import check_file_task_name

    check_file_task_name(name)
    if not files:
        raise UserError("no files to import", expected="at least one [SPLIT=]FILE")
    if isinstance(modulus, bool) or not isinstance(modulus, int) or modulus < 2:
        raise UserError(f"modulus {modulus!r}", expected="an integer >= 2")
    report = ImportReport(name, modulus)
    tables: dict[str, list[dict]] = {}
    for split, path in files.items():
        split = _split_name(split)
        rows, counts = [], {"source": str(path), "rows": 0, "answers": 0, "explanations": 0,
                            "answers_agree": 0, "steps_agree": 0, "imported": 0}
        for raw in read_rows(path, fmt):
            tree = _parse_input(raw)
            target = _target_text(raw.target)
            kind, problems = check_row(tree, target, modulus)
            counts["rows"] += 1
            counts["answers" if kind == "answer" else "explanations"] += 1
            counts["answers_agree"] += not any(p["check"] == "answer" for p in problems)
            counts["steps_agree"] += kind == "explanation" and not problems
            if problems:
                report.disagreements.append({"split": split, "source": raw.source,
                                             "line": raw.line, "problems": problems})
                if drop_disagreements:
                    continue
            rows.append(normalised_row(tree, target, modulus, index=len(rows), line=raw.line,
                                       kind=kind, agrees=not problems))
        if not rows:
            raise UserError(f"{path}: no rows to import", expected="at least one row")
        counts["imported"] = len(rows)
        report.splits[split] = counts
        tables[split] = rows
    task = {"format_version": FORMAT_VERSION, "name": name, "modulus": modulus,
            "splits": {split: {"file": f"{split}.jsonl", "num_examples": len(rows),
                               "source": str(Path(files[split]).expanduser().absolute())}
                       for split, rows in tables.items()}}
    with rundir.atomic_directory(out_dir) as tmp:
        for split, rows in tables.items():
            rundir.write_jsonl(tmp / f"{split}.jsonl", rows)
        rundir.write_json(tmp / REPORT_JSON, report.to_json())
        rundir.write_json(tmp / TASK_JSON, task)
    return report


# ------------------------------------------------------------------- loading


@dataclasses.dataclass(frozen=True)
class FileData:
    """An imported directory read back: its name, modulus and rows per split."""

    path: Path
    name: str
    modulus: int
    splits: Mapping[str, Sequence[Mapping[str, Any]]]


def load(path: str | os.PathLike) -> FileData:
    """Read a directory :func:`import_files` wrote (a UserError naming what is wrong)."""
    root = Path(path).expanduser().absolute()
    if not (root / TASK_JSON).is_file():
        raise UserError(f"{root} is not an imported task directory (no {TASK_JSON})",
                        expected="a directory written by 'explistops data import'")
    task = rundir.read_json(root / TASK_JSON)
    if task.get("format_version") != FORMAT_VERSION:
        raise UserError(f"{root / TASK_JSON}: format_version {task.get('format_version')!r}",
                        expected=str(FORMAT_VERSION))
    splits = {}
    for split, info in task["splits"].items():
        rows = rundir.read_jsonl(root / info["file"])
        if len(rows) != info["num_examples"]:
            raise UserError(f"{root / info['file']}: {len(rows)} rows",
                            expected=f"{info['num_examples']} as {TASK_JSON} says")
        splits[split] = rows
    return FileData(root, str(task["name"]), int(task["modulus"]), splits)
