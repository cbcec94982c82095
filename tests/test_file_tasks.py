"""Tasks from files: ``explistops data import`` of the authors' released format,
the checks and report, malformed rows, and training and evaluating on the result
through the grain backend (explistops_jax.file_tasks, own_tasks.FileTask)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from explistops_jax import cli, explain, file_tasks, listops, own_tasks
from explistops_jax.errors import ListOpsError, UserError

ROOT = Path(__file__).resolve().parents[1]

# The authors' train file, as released: LRA parentheses, [MEDIAN / [SUM, no header,
# medium explanations in double-quoted multi-line fields, bare answers.
EXPLAINED_1 = ('MED, sorted list, [4, 9], MEDIAN is 6\n'
               'Max, largest number of [4, 6, 8] is 8\n'
               'Final answer: 8')
EXPLAINED_2 = ('SUM, add [6, 8], sum is 14, answer is 4\n'
               'Min, smallest number of [4, 7, 5] is 4\n'
               'Final answer: 4')
TRAIN_TSV = (
    f'( ( ( ( [MAX 4 ) ( ( ( [MEDIAN 4 ) 9 ) ] ) ) 8 ) ] )\t"{EXPLAINED_1}"\n'       # 1-3
    f'( ( ( ( [MIN ( ( ( [SUM 6 ) 8 ) ] ) ) 7 ) 5 ) ] )\t"{EXPLAINED_2}"\n'          # 4-6
    '( ( ( [SUM 7 ) 5 ) ] )\t2\n'                                                    # 7
    '( ( ( [MIN 7 ) 5 ) ] )\t3\n'                                                    # 8: wrong
    '( ( ( ( [MEDIAN 1 ) 2 ) 9 ) ] )\t2\n'                                           # 9
    '( ( ( [MAX 3 ) ( ( ( [SUM 9 ) 9 ) ] ) ) ] )\t8\n'                                # 10
    '\n'                                                                             # blank
    '( ( ( ( [MAX 0 ) 1 ) 6 ) ] )\t6\n'                                              # 12
    '( ( ( ( ( [MIN 9 ) 8 ) 7 ) 1 ) ] )\t1\n'                                        # 13
)
# A wrong step in an explanation whose final answer is right.
BAD_STEP = ('( ( ( [MAX 2 ) ( ( ( [MIN 4 ) 3 ) ] ) ) ] )\t'
            '"Min, smallest number of [4, 3] is 4\nMax, largest number of [2, 4] is 3\n'
            'Final answer: 3"\n')
# The authors' test file: a Source/Target header, [MED / [SM spellings.
TEST_TSV = ("Source\tTarget\n"
            "( ( ( [MED 1 ) 5 ) ] )\t3\n"
            "( ( ( ( [SM 4 ) 4 ) 4 ) ] )\t2\n"
            "( ( ( [MAX 1 ) 6 ) ] )\t6\n")


def _jsonl(rows) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


VALIDATION_JSONL = _jsonl([
    {"input": "( ( ( [MEDIAN 3 ) 5 ) ] )", "target": "MED, sorted list, [3, 5], MEDIAN is 4\n"
                                                   "Final answer: 4"},
    {"input": "[SUM 5 6 ]", "target": 1},
    {"inputs": "[MIN 2 [MAX 1 0 ] ]", "targets": "1"},   # explistops data's keys
])


@pytest.fixture
def files(tmp_path):
    paths = {"train": tmp_path / "basic_train.tsv", "test": tmp_path / "basic_test.tsv",
             "validation": tmp_path / "basic_val.jsonl"}
    paths["train"].write_text(TRAIN_TSV + BAD_STEP)
    paths["test"].write_text(TEST_TSV)
    paths["validation"].write_text(VALIDATION_JSONL)
    return paths


@pytest.fixture
def imported(files, tmp_path):
    out = tmp_path / "authors"
    report = file_tasks.import_files(files, "authors", out)
    return out, report


# -------------------------------------------------------------------- reading and checks


def test_rows_of_the_authors_tsv(files):
    rows = list(file_tasks.read_rows(files["train"]))
    assert [r.line for r in rows] == [1, 4, 7, 8, 9, 10, 12, 13, 14]
    assert rows[0].target == EXPLAINED_1 and rows[1].target == EXPLAINED_2
    assert rows[2].input == "( ( ( [SUM 7 ) 5 ) ] )" and rows[2].target == "2"
    test = list(file_tasks.read_rows(files["test"]))   # header skipped
    assert [(r.line, r.target) for r in test] == [(2, "3"), (3, "2"), (4, "6")]


def test_import_checks_every_target_and_reports_disagreements_by_line(imported, files):
    out, report = imported
    assert sorted(p.name for p in out.iterdir()) == [
        "import_report.json", "task.json", "test.jsonl", "train.jsonl", "validation.jsonl"]
    assert report.modulus == 10 == file_tasks.DEFAULT_MODULUS
    train = report.splits["train"]
    assert (train["rows"], train["answers"], train["explanations"]) == (9, 6, 3)
    assert (train["answers_agree"], train["steps_agree"], train["imported"]) == (8, 2, 9)
    assert report.splits["test"]["answers_agree"] == 3
    assert report.splits["validation"]["rows"] == 3
    assert report.splits["validation"]["answers_agree"] == 3
    assert report.splits["validation"]["steps_agree"] == 1
    # One wrong answer (line 8: MIN of 7 5 is 5) and one explanation whose first step
    # is wrong and whose answer is right (line 14).
    written = json.loads((out / "import_report.json").read_text())
    assert written["num_disagreements"] == 2
    assert [(d["split"], d["line"]) for d in written["disagreements"]] == [
        ("train", 8), ("train", 14)]
    assert written["disagreements"][0]["problems"] == [
        {"check": "answer", "expected": 5, "found": 3}]
    step_problems = written["disagreements"][1]["problems"]
    assert [p["check"] for p in step_problems] == ["step", "step"]
    assert step_problems[0] == {"check": "step", "step": 1,
                                "expected": "Min, smallest number of [4, 3] is 3",
                                "found": "Min, smallest number of [4, 3] is 4"}
    task = json.loads((out / "task.json").read_text())
    assert task["name"] == "authors" and task["modulus"] == 10
    assert {s: v["num_examples"] for s, v in task["splits"].items()} == {
        "train": 9, "test": 3, "validation": 3}


def test_normalised_rows(imported):
    out, _ = imported
    rows = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    assert rows[0] == {
        "index": 0, "line": 1, "expression": "[MAX 4 [MED 4 9 ] 8 ]", "target": EXPLAINED_1,
        "target_kind": "explanation", "agrees": True, "answer": 8, "length": 8, "depth": 2,
        "modulus": 10}
    assert [r["expression"] for r in rows[2:4]] == ["[SM 7 5 ]", "[MIN 7 5 ]"]
    assert (rows[3]["target"], rows[3]["answer"], rows[3]["agrees"]) == ("3", 5, False)
    for row in rows:  # the bracket text is the canonical form of the parsed input
        assert listops.format(listops.parse(row["expression"])) == row["expression"]


def test_drop_disagreements_and_modulus(files, tmp_path):
    report = file_tasks.import_files({"train": files["train"]}, "clean", tmp_path / "clean",
                                     drop_disagreements=True)
    assert report.splits["train"]["imported"] == 7 and len(report.disagreements) == 2
    # With modulus 30 the SUM rows disagree: 7 + 5 = 12, not 2.
    report = file_tasks.import_files({"train": files["train"]}, "m30", tmp_path / "m30",
                                     modulus=30)
    assert {d["line"] for d in report.disagreements} >= {4, 7, 10}


def test_the_projects_own_medium_explanations_agree():
    tree = listops.parse("( ( ( [MAX 3 ) ( ( ( [SUM 9 ) 9 ) ] ) ) ] )")
    assert file_tasks.check_row(tree, explain.explain(tree, "medium", 10), 10) == (
        "explanation", [])
    assert file_tasks.check_row(tree, "8", 10) == ("answer", [])


# ------------------------------------------------------------------------ malformed rows

MALFORMED = [
    # (file name, content, message: file, line and column)
    ("unbalanced.tsv", "[MAX 1 2 ]\t2\n( ( [MAX 1 ) 2 ) ] ) )\t2\n",
     "line 2, column 20: unbalanced expression: ')' closes nothing"),
    ("unclosed.tsv", "[MAX 1 2 ]\t2\n( ( ( [MAX 1 ) 2 ) ]\t2\n",
     "line 2, column 1: unbalanced expression: '(' is never closed"),
    ("bracket.tsv", "[MAX 1 2 ]\t2\n[MAX 1 [MIN 2 3 ]\t2\n",
     "line 2, column 18: operator MAX opened at column 1 is not closed"),
    ("quote.tsv", '[MAX 1 2 ]\t2\n[MAX 1 2 ]\t"Max, largest number of [1, 2] is 2\nFinal\n',
     "line 2, column 12: unterminated quote"),
    ("after_quote.tsv", '[MAX 1 2 ]\t"2" 3\n', "line 1, column 15: text ' ' after a closing quote"),
    ("missing.tsv", "[MAX 1 2 ]\t2\n[MAX 1 2 ]\n",
     "line 2, column 11: missing target column (expected input<TAB>target)"),
    ("extra.tsv", "[MAX 1 2 ]\t2\tx\n", "line 1, column 13: 3 columns"),
    ("operator.tsv", '"[MAX 1 2 ]"\t2\n( [MAXX 1 ) ]\t1\n', "line 2, column 3: unknown operator"),
    ("quoted_input.tsv", '"[MAX 1 [MIN 2 ]"\t2\n', "line 1, column 17: operator MAX opened at column 1 is not closed"),
    ("unbalanced.jsonl", '{"input": "[MAX 1 2 ]", "target": 2}\n{"input": "( [MAX 1 2 ]", '
                         '"target": "2"}\n', "line 2, column 12: unbalanced expression"),
    ("quote.jsonl", '{"input": "[MAX 1 2 ]", "target": "2}\n',
     "line 1, column 35: not JSON: Unterminated string"),
    ("missing.jsonl", '{"input": "[MAX 1 2 ]", "target": "2"}\n{"input": "[MAX 1 2 ]"}\n',
     "line 2, column 23: missing target column"),
]


@pytest.mark.parametrize("name, content, message", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_rows_name_file_line_and_column(tmp_path, capsys, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    out = tmp_path / "out"
    code = cli.main(["data", "import", str(path), "--name", "t", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith(f"explistops: error: {path}, {message}"), err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_whole_or_nothing_when_a_later_file_is_malformed(files, tmp_path):
    bad = tmp_path / "bad.tsv"
    bad.write_text("[MAX 1 2 ]\t2\n[MAX 1 2\t2\n")
    out = tmp_path / "out"
    with pytest.raises(ListOpsError, match="bad.tsv, line 2, column 9"):
        file_tasks.import_files({"train": files["train"], "test": bad}, "t", out)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("name, problem", [
    ("explistops30_medium", "reads as a generated task"),
    ("authors_paren", "ends in '_paren'"),
    ("a b", "bad task name"),
])
def test_bad_task_names(tmp_path, files, name, problem):
    with pytest.raises(UserError, match=problem):
        file_tasks.import_files({"train": files["train"]}, name, tmp_path / "x")


def test_cli_import_prints_the_summary(files, tmp_path, capsys):
    out = tmp_path / "cli"
    code = cli.main(["data", "import", str(files["train"]), f"test={files['test']}",
                     "--name", "authors", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    assert "train: 9 rows" in printed and "answers agree 8/9" in printed
    assert f"{files['train']}, line 8: answer: expected 5, found 3" in printed
    assert json.loads((out / "task.json").read_text())["splits"].keys() == {"train", "test"}
    # the old form of the command is unchanged
    code = cli.main(["data", "--config", "listops10", "--limit", "2", "--quiet",
                     "--out", str(tmp_path / "g.jsonl")])
    assert code == 0 and len((tmp_path / "g.jsonl").read_text().splitlines()) == 2
    assert cli.main(["data", "--config", "listops10"]) == 2
    assert "required: --out" in capsys.readouterr().err


# ------------------------------------------------------------------------ the task


def test_file_task_examples_in_both_notations(imported):
    out, _ = imported
    names = own_tasks.register_file_task(out)
    assert names == ["authors", "authors_paren"]
    assert own_tasks.is_own("authors") and own_tasks.is_own("authors_paren")
    bracket, paren = own_tasks.get_tasks("authors")[0], own_tasks.get_tasks("authors_paren")[0]
    assert bracket.splits == ("train", "test", "validation")
    assert bracket.num_examples("train") == 9
    table = own_tasks.domain_table()
    ex = bracket.example("train", 0, {"inputs": 64, "targets": 64})
    assert ex["inputs_pretokenized"] == b"[MAX 4 [MED 4 9 ] 8 ]"
    assert ex["targets_pretokenized"].decode() == EXPLAINED_1
    assert table.decode(ex["inputs"].tolist()) == "[MAX 4 [MED 4 9 ] 8 ]"
    assert int(ex["answer"]) == 8 and int(ex["modulus"]) == 10
    ex = paren.example("train", 0, {"inputs": 64, "targets": 64})
    assert ex["inputs_pretokenized"] == b"( ( ( ( [MAX 4 ) ( ( ( [MED 4 ) 9 ) ] ) ) 8 ) ] )"
    assert table.unk_id not in ex["inputs"].tolist()
    assert paren.example("train", 2, None)["targets_pretokenized"] == b"2"
    assert own_tasks.register_file_task(out) == names   # the same directory again: fine
    with pytest.raises(UserError, match="already registered"):
        own_tasks.register_file_task(_copy(out), "authors")


def _copy(out: Path) -> Path:
    import shutil

    other = out.parent / "copy"
    shutil.copytree(out, other)
    return other


def test_train_and_evaluate_on_an_imported_task(imported, tmp_path, capsys, monkeypatch):
    """explistops train --task_file DIR (a tiny T5, grain backend), then explistops eval
    of the run, which finds the file task in its run.json."""
    out, _ = imported
    monkeypatch.chdir(ROOT)
    run = tmp_path / "run"
    code = cli.main([
        "train", "--gin_file", "gin_configs/models/t5_1_1_tiny.gin",
        "--gin_file", "gin_configs/runs/finetune.gin", "--task_file", str(out),
        "--task", "authors_paren", "--model_dir", str(run), "--train_steps", "3",
        "--batch_size", "4",
        "--gin_bindings", "TASK_FEATURE_LENGTHS = {'inputs': 64, 'targets': 96}",
        "--gin_bindings", "EVAL_PERIOD = None",
        "--gin_bindings", "trainer.CheckpointConfig.async_save = False",
        "--gin_bindings", "trainer.EvalConfig.max_examples = 2",
        "--gin_bindings", "trainer.EvalConfig.batch_size = 2"])
    captured = capsys.readouterr()
    assert code == 0, captured.err[-2000:]
    info = json.loads((run / "run.json").read_text())
    assert info["mixture_or_task_name"] == "authors_paren"
    assert info["task_files"] == {"authors": str(out)}
    assert (run / "eval" / "authors_paren" / "validation" / "metrics_3.json").is_file()

    own_tasks._FILE_TASKS.clear()   # a fresh process knows no file task
    code = cli.main(["eval", str(run), "--split", "test", "--max_examples", "3",
                     "--batch_size", "3"])
    captured = capsys.readouterr()
    assert code == 0, captured.err[-2000:]
    metrics = json.loads((run / "eval" / "authors_paren" / "test" / "metrics_3.json").read_text())
    assert metrics["num_examples"] == 3 and 0.0 <= metrics["metrics"]["accuracy"] <= 1.0
    rows = [json.loads(line) for line in
            (run / "eval" / "authors_paren" / "test" / "predictions_3.jsonl").read_text().splitlines()]
    assert [r["input"] for r in rows][0] == "( ( ( [MED 1 ) 5 ) ] )"
    assert [r["target"] for r in rows] == ["3", "2", "6"]
