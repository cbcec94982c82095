"""Tests of the report: fake run directories in the trainer's and evaluator's layout,
their metrics computed by the scoring functions from hand-written predictions."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from explistops_jax import cli, report, scoring
from explistops_jax.explain import explain
from explistops_jax.listops import parse

EXPRESSIONS = ["[MAX 2 9 [MIN 4 7 ] 0 ]", "[SM 3 4 [MED 1 8 5 ] ]",
               "[MIN 12 [MAX 3 25 ] 17 ]", "[MED 6 [SM 20 15 ] 2 9 ]"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _metrics(style: str, num_correct: int) -> dict:
    """all_metrics of predictions whose first ``num_correct`` answers are right:
    right ones are the true target, wrong ones a bare (wrong) answer."""
    targets, predictions = [], []
    for i, expression in enumerate(EXPRESSIONS):
        tree = parse(expression)
        text = explain(tree, style)
        targets.append(scoring.postprocess(text, {"expression": expression}, is_target=True))
        wrong = str((scoring.parse_answer(explain(tree, "none")) + 1) % 30)
        predictions.append(scoring.postprocess(text if i < num_correct else wrong))
    metrics = scoring.all_metrics(targets, predictions)
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()}


def _write_run(parent: Path, style: str, seed: int, correct: dict[str, int], *,
               model: str = "cpu_tiny", condition: str = "main",
               dataset: str = "explistops30", train_examples: int = 1_000) -> Path:
    """A run directory as train() + evaluate() leave it."""
    name = f"{condition}-{model}-{style}-s{seed}"
    run_dir = parent / name
    task = f"{dataset}_{style}"
    run_dir.mkdir(parents=True)
    (run_dir / "run.json").write_text(json.dumps({
        "model_config": {"emb_dim": 64}, "mixture_or_task_name": task, "total_steps": 20,
        "run_name": name, "preset": "cpu", "model": model, "style": style, "seed": seed,
        "dataset": dataset, "train_examples": train_examples, "condition": condition}))
    with open(run_dir / "train_log.jsonl", "w") as f:
        for step in range(1, 21):
            f.write(json.dumps({"step": step, "loss": 3.0 / step, "accuracy": 0.5}) + "\n")
        f.write('{"step": 21, "loss"')  # a line cut short by a kill
    with open(run_dir / "eval_log.jsonl", "w") as f:
        for step, num in ((10, 1), (20, correct["test"])):
            f.write(json.dumps({"step": step, "task": task, "split": "validation",
                                **_metrics(style, num)}) + "\n")
    for split, num in correct.items():
        out = run_dir / "eval" / task / split
        out.mkdir(parents=True)
        for step, n in ((10, 0), (20, num)):  # the newest step must win
            (out / f"metrics_{step}.json").write_text(json.dumps(
                {"step": step, "task": task, "split": split,
                 "num_examples": len(EXPRESSIONS), "metrics": _metrics(style, n)}))
    return run_dir


@pytest.fixture
def runs_dir(tmp_path: Path) -> Path:
    """none: 1/4 and 2/4 right; medium: 3/4 and 4/4 (test); long split: 0 and 2."""
    parent = tmp_path / "runs"
    _write_run(parent, "none", 0, {"test": 1, "long": 0})
    _write_run(parent, "none", 1, {"test": 2, "long": 0})
    _write_run(parent, "medium", 0, {"test": 3, "long": 2})
    _write_run(parent, "medium", 1, {"test": 4, "long": 2})
    empty = parent / "data_efficiency-run"  # a run that has not written anything else
    empty.mkdir()
    (empty / "run.json").write_text(json.dumps({"condition": "data_efficiency",
                                                "model": "cpu_tiny", "style": "medium"}))
    return parent


def _section(text: str, title: str) -> str:
    start = text.index(f"\n## {title}")
    end = text.find("\n## ", start + 1)
    return text[start:end if end >= 0 else None]


def _row(text: str, first_cell: str) -> list[str]:
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0] == first_cell:
            return cells
    raise AssertionError(f"no row {first_cell!r} in:\n{text}")


def test_collect_reads_run_json_newest_metrics_and_logs(runs_dir):
    runs = report.collect(runs_dir)
    assert [(r.condition, r.style, r.seed) for r in runs] == [
        ("main", "none", 0), ("main", "none", 1), ("main", "medium", 0), ("main", "medium", 1),
        ("data_efficiency", "medium", None)]
    first = runs[0]
    assert first.model == "cpu_tiny" and first.dataset == "explistops30"
    assert first.train_examples == 1_000 and first.preset == "cpu"
    assert first.splits["test"].step == 20 and first.metric("accuracy") == 0.25
    assert math.isnan(first.metric("step_faithfulness"))  # none: not applicable
    assert first.breakdown("depth")  # accuracy_depth_* keys from scoring
    assert first.last_step == 20 and len(first.losses) == 20
    assert first.curve_split == "validation" and [p["step"] for p in first.eval_points] == [10, 20]
    assert runs[-1].splits == {} and runs[-1].problems  # tolerated, noted


def test_report_tables_show_mean_std_seeds_and_margin(runs_dir, tmp_path):
    path = report.write_report(runs_dir, tmp_path / "out")
    text = path.read_text()
    main = _section(text, "Main results")
    accuracy = main[:main.index("### Step faithfulness")]
    # none: 25, 50 -> 37.5 ± 17.7; medium: 75, 100 -> 87.5 ± 17.7
    assert _row(accuracy, "cpu_tiny")[1:] == ["37.5 ± 17.7 (n=2)", "87.5 ± 17.7 (n=2)"]
    faithfulness = main[main.index("### Step faithfulness"):main.index("### Parse failures")]
    assert _row(faithfulness, "cpu_tiny")[1:] == ["n/a", "87.5 ± 17.7 (n=2)"]
    failures = main[main.index("### Parse failures"):main.index("### Margin")]
    assert _row(failures, "cpu_tiny")[1:] == ["0.0 ± 0.0 (n=2)", "0.0 ± 0.0 (n=2)"]
    # per seed: 75-25 = 50, 100-50 = 50
    margin = _row(main[main.index("### Margin"):], "cpu_tiny")
    assert margin[1:] == ["medium", "+50.0 ± 0.0", "2", "+50.0, +50.0", "headline, best"]
    assert "medium explanations minus without = **+50.0 ± 0.0 points**" in text
    splits = _section(text, "Held-out and generalization")
    assert "The longer-sequence split is `long`." in splits
    assert _row(splits, "main")[4:] in (["none", "37.5 ± 17.7 (n=2)", "0.0 ± 0.0 (n=2)"],
                                        ["medium", "87.5 ± 17.7 (n=2)", "50.0 ± 0.0 (n=2)"])
    assert "| data_efficiency | cpu_tiny | ? | ? | medium | — | — |" in splits
    depth = _section(text, "Accuracy by depth")
    assert "### cpu_tiny, split `test`" in depth and "### cpu_tiny, split `long`" in depth


def test_report_puts_published_beside_measured_with_differences(runs_dir, tmp_path):
    text = report.write_report(runs_dir, tmp_path / "out").read_text()
    published = _section(text, "Measured beside published")
    row = _row(published, "No explanation, t5-small")
    assert row[2:5] == ["65.1", "37.5 ± 17.7 (n=2)", "cpu_tiny, none"]
    assert "model cpu_tiny, not t5_1_0_small" in row[5] and "1,000 training examples" in row[5]
    assert _row(published, "Long explanations, t5-small")[3] == "—"  # no long run
    assert _row(published, "Modular sum, t5-small, with explanations")[3:5] == ["—", "not run"]
    assert _row(published, "With explanations, all sizes and styles")[3] == "87.5"


def test_plots_are_png_linked_and_output_is_deterministic(runs_dir, tmp_path):
    path = report.write_report(runs_dir, tmp_path / "out")
    first = path.read_bytes()
    for name in ("accuracy_curves.png", "loss_curves.png", "test_accuracy.png"):
        png = path.parent / name
        assert png.read_bytes()[:8] == PNG_SIGNATURE and png.stat().st_size > 1000
        assert f"]({name})" in first.decode()
    images = {n: (path.parent / n).read_bytes() for n in ("test_accuracy.png",)}
    assert report.write_report(runs_dir, tmp_path / "out").read_bytes() == first
    assert all((path.parent / n).read_bytes() == b for n, b in images.items())
    assert not list(path.parent.glob(".*.tmp"))


def test_cli_writes_the_report(runs_dir, tmp_path, capsys):
    out = tmp_path / "cli_out"
    assert cli.main(["report", str(runs_dir), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "5 run(s)" in printed and "medium - none = +50.0 ± 0.0 (n=2) points" in printed
    assert (out / "report.md").exists()


def test_cli_without_runs_is_a_user_error(tmp_path, capsys):
    assert cli.main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err == f"explistops: error: no runs found under {tmp_path}: expected run.json files\n"
    assert cli.main(["report", str(tmp_path / "missing")]) == 2
    assert "no such directory" in capsys.readouterr().err
