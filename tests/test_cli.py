"""Tests of the ``explistops`` command line (data, explain, score) and its error handling."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from explistops_jax import cli
from explistops_jax.explain import explain
from explistops_jax.listops import parse

ROOT = Path(__file__).resolve().parents[1]


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# -------------------------------------------------------------------------- parser


def test_top_level_help_lists_every_command_without_importing_them(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for name in cli.COMMANDS:
        assert name in out


@pytest.mark.parametrize("command", ["data", "explain", "score"])
def test_each_command_has_help(capsys, command):
    with pytest.raises(SystemExit) as info:
        cli.main([command, "--help"])
    assert info.value.code == 0
    assert cli.COMMANDS[command][1] in capsys.readouterr().out


def test_command_modules_provide_the_interface():
    import importlib

    for name in ("data", "explain", "score"):
        module = importlib.import_module(cli.COMMANDS[name][0])
        assert callable(module.add_arguments) and callable(module.run)


# ------------------------------------------------------------------------- explain


def test_explain_prints_explanation_and_answer(capsys):
    code, out, err = run(capsys, "explain", "[MAX 2 9 [MIN 4 7 ] 0 ]", "--style", "long")
    assert code == 0
    tree = parse("[MAX 2 9 [MIN 4 7 ] 0 ]")
    assert out == explain(tree, "long") + "\nanswer: 9 (length 9, depth 2)\n"


def test_explain_reads_paren_notation_and_modulus(capsys):
    code, out, _ = run(capsys, "explain", "( ( ( ( [SM 15 ) 27 ) 1 ) ] )", "--style", "medium",
                       "--modulus", "10")
    assert code == 0
    assert out.startswith("SUM, add [15, 27, 1], sum is 43, answer is 3\nFinal answer: 3\n")


@pytest.mark.parametrize("expression, position", [
    ("[MAX 2 9 [MIN 4 7 ] 0", "line 1, column 22"),
    ("[MAX 2 [POW 3 ] ]", "line 1, column 8"),
])
def test_explain_malformed_expression_exits_2_with_position(capsys, expression, position):
    code, out, err = run(capsys, "explain", expression)
    assert code == 2 and out == ""
    assert err.startswith(f"explistops: error: {position}: ")
    assert "Traceback" not in err


def test_subprocess_error_has_no_traceback():
    result = subprocess.run(
        [sys.executable, "-m", "explistops_jax.cli", "explain", "[MAX 1 [FOO 2 ] ]"],
        cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.startswith("explistops: error: line 1, column 8: unknown operator")
    assert "Traceback" not in result.stderr


# ---------------------------------------------------------------------------- data


def test_data_jsonl_fields(tmp_path, capsys):
    out_file = tmp_path / "val.jsonl"
    code, _, err = run(capsys, "data", "--config", "explistops30", "--split", "validation",
                       "--style", "medium", "--out", str(out_file), "--limit", "20")
    assert code == 0 and "wrote 20 examples" in err
    rows = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert len(rows) == 20
    for index, row in enumerate(rows):
        assert {"id", "expression", "inputs", "targets", "answer", "length", "depth",
                "style"} <= set(row)
        assert row["id"] == f"explistops30/validation/{index}"
        tree = parse(row["inputs"])
        assert row["targets"] == explain(tree, "medium")
        assert row["targets"].endswith(f"Final answer: {row['answer']}")
        assert row["style"] == "medium"
    assert not list(tmp_path.glob(".*tmp*"))  # the temporary file was renamed


@pytest.mark.parametrize("fmt", ["jsonl", "tsv"])
def test_shards_concatenate_to_the_unsharded_bytes(tmp_path, capsys, fmt):
    common = ["data", "--config", "explistops30", "--split", "test", "--style", "long",
              "--limit", "37", "--format", fmt, "--quiet"]
    whole = tmp_path / f"whole.{fmt}"
    assert cli.main(common + ["--out", str(whole)]) == 0
    parts = []
    for index in range(4):
        part = tmp_path / f"part{index}.{fmt}"
        assert cli.main(common + ["--out", str(part), "--num-shards", "4",
                                  "--shard-index", str(index)]) == 0
        parts.append(part.read_bytes())
    assert b"".join(parts) == whole.read_bytes()
    lines = whole.read_bytes().splitlines()
    assert len(lines) == 37 + (fmt == "tsv")


def test_tsv_format(tmp_path, capsys):
    out_file = tmp_path / "x.tsv"
    assert cli.main(["data", "--config", "listops10", "--split", "train", "--out", str(out_file),
                     "--limit", "3", "--style", "short", "--notation", "paren", "--quiet"]) == 0
    header, *rows = out_file.read_text().splitlines()
    assert header.split("\t") == ["id", "inputs", "targets", "answer", "length", "depth"]
    assert len(rows) == 3
    fields = rows[0].split("\t")
    assert fields[1].startswith("( ")
    assert fields[2].replace("\\n", "\n") == explain(parse(fields[1]), "short", 10)


@pytest.mark.parametrize("argv, fragment", [
    (["--config", "nope"], "unknown dataset 'nope'"),
    (["--config", "explistops30", "--split", "dev"], "has no split 'dev'"),
    (["--config", "explistops30", "--num-shards", "2", "--shard-index", "2"], "shard 2 of 2"),
])
def test_data_user_errors(tmp_path, capsys, argv, fragment):
    code, _, err = run(capsys, "data", *argv, "--out", str(tmp_path / "x.jsonl"))
    assert code == 2 and fragment in err and "Traceback" not in err
    assert not list(tmp_path.iterdir())


def test_data_unwritable_output_is_exit_2(tmp_path, capsys):
    code, _, err = run(capsys, "data", "--config", "explistops30", "--limit", "1",
                       "--out", str(tmp_path / "missing" / "x.jsonl"))
    assert code == 2 and err.startswith("explistops: error: ") and "No such file" in err


# --------------------------------------------------------------------------- score


def _predictions(path: Path) -> Path:
    records = []
    for expression in ["[MAX 2 9 [MIN 4 7 ] 0 ]", "[SM 15 27 1 ]", "[MED 4 9 ]"]:
        tree = parse(expression)
        records.append({"expression": expression, "prediction": explain(tree, "medium"),
                        "target": explain(tree, "medium")})
    records[2]["prediction"] = "Final answer: 7"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_score_table_and_json(tmp_path, capsys):
    path = _predictions(tmp_path / "preds.jsonl")
    code, out, _ = run(capsys, "score", str(path))
    assert code == 0
    assert "accuracy" in out and "66.67%" in out and "num_examples" in out
    code, out, _ = run(capsys, "score", str(path), "--json")
    metrics = json.loads(out)
    assert metrics["accuracy"] == pytest.approx(2 / 3)
    assert metrics["exact_match"] == pytest.approx(2 / 3)
    assert metrics["num_examples"] == 3


def test_score_malformed_file_names_line_and_column(tmp_path, capsys):
    path = _predictions(tmp_path / "preds.jsonl")
    lines = path.read_text().splitlines()
    lines[1] = '{"expression": "[SM 1 2 ]", "prediction": }'
    path.write_text("\n".join(lines) + "\n")
    code, out, err = run(capsys, "score", str(path))
    assert code == 2 and out == ""
    assert err.startswith(f"explistops: error: {path}, line 2, column 43: invalid JSON")

    lines[1] = '{"expression": "[SM 1 [XX 2 ] ]", "prediction": "3"}'
    path.write_text("\n".join(lines) + "\n")
    code, _, err = run(capsys, "score", str(path))
    assert code == 2 and "line 2, column 7: expression: unknown operator '[XX'" in err


def test_score_missing_file_and_empty_file(tmp_path, capsys):
    code, _, err = run(capsys, "score", str(tmp_path / "absent.jsonl"))
    assert code == 2 and "absent.jsonl" in err
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    code, _, err = run(capsys, "score", str(empty))
    assert code == 2 and "no predictions" in err
