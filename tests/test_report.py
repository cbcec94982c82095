"""Tests of the report: fake run directories in the trainer's and evaluator's layout,
their metrics computed by the scoring functions from hand-written predictions; and
the pure parts (statistics, Markdown tables, published figures, run reading) on
hand-written run records."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from explistops_jax import cli, report, rundir, scoring, task_spec
from explistops_jax.explain import explain
from explistops_jax.listops import parse
from explistops_jax.report import markdown, published, statistics
from explistops_jax.report import runs as report_runs
from explistops_jax.report.runs import RunResult, SplitResult

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
    assert _row(published, "With explanations, t5-small to t5-3B")[3] == "87.5"


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


# ------------------------------------------------- pure parts, on hand-written records


def _record(style: str, seed: int | None, accuracy: float | None, *, model: str = "m_small",
            condition: str = "main", **metrics: float) -> RunResult:
    """A run as read, with test accuracy ``accuracy`` (None: no test metrics)."""
    splits = {}
    if accuracy is not None:
        splits["test"] = SplitResult("task", "test", 10, 4, {"accuracy": accuracy, **metrics})
    return RunResult(run_dir=Path(f"/runs/{style}-{seed}"), name=f"{style}-{seed}", model=model,
                     style=style, seed=seed, condition=condition, dataset="d",
                     train_examples=100, preset=None, info={}, splits=splits)


def test_stat_pools_seeds_and_leaves_not_applicable_out():
    assert statistics.Stat.of([]) is None and statistics.Stat.of([None, None]) is None
    one = statistics.Stat.of([0.5, None])
    assert (one.mean, one.std, one.n) == (0.5, None, 1)
    two = statistics.Stat.of([0.25, 0.75, math.nan])  # NaN: does not apply, left out
    assert two.mean == 0.5 and two.n == 2 and two.std == pytest.approx(math.sqrt(0.125))
    none_apply = statistics.Stat.of([math.nan, math.nan])
    assert math.isnan(none_apply.mean) and none_apply.n == 0


def test_format_stat_and_pct():
    assert statistics.format_stat(None) == "—"
    assert statistics.format_stat(statistics.Stat(math.nan, None, 0)) == "n/a"
    assert statistics.format_stat(statistics.Stat(0.875, None, 1)) == "87.5"
    stat = statistics.Stat(0.375, 0.1768, 2)
    assert statistics.format_stat(stat) == "37.5 ± 17.7 (n=2)"
    assert statistics.format_stat(stat, sign=True, seeds=False) == "+37.5 ± 17.7"
    assert statistics.format_stat(statistics.Stat(-0.05, None, 1), sign=True) == "-5.0"
    assert (statistics.pct(None), statistics.pct(math.nan), statistics.pct(0.123, sign=True)) \
        == ("—", "n/a", "+12.3")


def test_margins_pair_seeds_and_pick_headline_and_best():
    records = [_record("none", 0, 0.5), _record("none", 1, 0.6), _record("short", 0, 0.9),
               _record("short", 1, 0.7), _record("medium", 0, 0.7), _record("medium", 1, 0.7),
               _record("long", 5, 0.9)]  # no common seed with none: unpaired
    found = {m.style: m for m in statistics.margins(records)}
    assert list(found) == ["short", "medium", "long"]
    short, medium, long = found["short"], found["medium"], found["long"]
    assert short.paired and [s for s, _ in short.per_seed] == [0, 1]
    assert [d for _, d in short.per_seed] == pytest.approx([0.4, 0.1])
    assert short.stat.mean == pytest.approx(0.25) and not (short.headline or short.best)
    assert medium.stat.mean == pytest.approx(0.15) and medium.headline and not medium.best
    # unpaired: the difference of the means, 0.9 - 0.55, the largest margin
    assert not long.paired and long.per_seed == () and long.stat.mean == pytest.approx(0.35)
    assert long.best and not long.headline and long.stat.std is None


def test_margins_need_a_baseline_and_an_explained_run():
    assert statistics.margins([_record("medium", 0, 0.9)]) == []
    assert statistics.margins([_record("none", 0, 0.5), _record("medium", 0, None)]) == []
    assert statistics.margins([_record("none", 0, 0.5), _record("medium", 0, 0.9)],
                              condition="data_efficiency") == []
    only = statistics.margins([_record("none", 0, 0.5), _record("long", 0, 0.6)])
    assert len(only) == 1 and only[0].headline and only[0].best  # no medium: the best


def test_groups_and_row_labels():
    records = [_record("medium", 0, 0.9, model="m_large"), _record("none", 0, 0.5),
               _record("long", 0, 0.7), _record("none", 0, 0.4, condition="larger_numbers")]
    groups = statistics.group_runs(records)
    assert list(groups) == [("main", "m_small", "d", 100), ("main", "m_large", "d", 100),
                            ("larger_numbers", "m_small", "d", 100)]
    assert list(groups[("main", "m_small", "d", 100)]) == ["none", "long"]
    assert statistics.styles_of(groups) == ["none", "medium", "long"]
    assert set(statistics.row_labels(list(groups)).values()) == {"m_small", "m_large"}
    other = _record("none", 0, 0.5)
    other.train_examples = 2_000
    labels = statistics.row_labels(list(statistics.group_runs([records[1], other])))
    assert sorted(labels.values()) == ["m_small (d, 100 ex.)", "m_small (d, 2,000 ex.)"]


def test_markdown_table_escapes_pipes():
    assert markdown.table(["A", "B"], [["x|y", 1]]) == ["| A | B |", "|---|---|", "| x\\|y | 1 |"]
    assert markdown.table(["A"], []) == ["| A |", "|---|"]


def test_render_markdown_of_hand_written_records(tmp_path):
    records = [_record("none", 0, 0.5, step_faithfulness=math.nan),
               _record("medium", 0, 0.75, step_faithfulness=0.5),
               _record("medium", 1, None)]
    records[2].problems.append("no train_log.jsonl")
    text = markdown.render_markdown(records, tmp_path, {})
    assert text.startswith("# Explained-ListOps: results\n\n3 run(s).") and text.endswith("\n")
    assert "| m_small | 50.0 | 75.0 |" in text  # accuracy: the seed without metrics is left out
    assert "| m_small | n/a | 50.0 |" in text  # step faithfulness
    assert "| m_small | medium | +25.0 | 1 | +25.0 | headline, best |" in text
    assert "No plot: the runs have no logs or test metrics." in text
    assert "| no train_log.jsonl |" in text
    assert markdown.render_markdown(records, tmp_path, {}) == text


def test_published_figure_measured_on_the_closest_model():
    records = [_record("none", 0, 0.5, model="t5_1_0_base"), _record("long", 0, 0.9,
                                                                    model="t5_1_0_base")]
    rows = {r["figure"]: r for r in published.published_rows(records)}
    small = rows["No explanation, t5-small"]
    assert small["measured"] == "50.0" and small["measured_on"] == "t5_1_0_base, none"
    assert "model t5_1_0_base, not t5_1_0_small" in small["differences"]
    assert rows["No explanation, t5-3B"]["measured"] == "—"  # no fallback for 3B
    assert rows["With explanations, t5-small to t5-3B"]["measured"] == "90.0"
    assert published.published_value("t5-small", "long") == 87.8
    assert published.published_value("t5-small", "medium") is None


def test_published_range_with_explanations_takes_each_models_best_style():
    """The study's 87-99 runs from t5-small's best style (long) to t5-3B: a model's
    weaker styles are not part of the range."""
    records = [_record("short", 0, 0.3, model="t5_1_0_small"),
               _record("long", 0, 0.8, model="t5_1_0_small"),
               _record("medium", 0, 0.95, model="t5_1_0_base"),
               _record("long", 0, 0.9, model="t5_1_0_base")]
    rows = {r["figure"]: r for r in published.published_rows(records)}
    assert rows["With explanations, t5-small to t5-3B"]["measured"] == "80.0-95.0"


def _scored(record: RunResult, split: str, accuracy: float) -> RunResult:
    record.splits[split] = SplitResult("task", split, 10, 4, {"accuracy": accuracy})
    return record


def test_published_larger_numbers_margin_is_on_the_larger_values():
    """Scored on the split of larger values when the runs have one, not on the
    training range's test split; the paper grid's runs (test = larger values) use test."""
    cpu = [_scored(_record("none", s, 0.4, condition="larger_numbers"), "larger_numbers", 0.05)
           for s in (0, 1)]
    cpu += [_scored(_record("medium", s, 0.8, condition="larger_numbers"), "larger_numbers",
                    0.04) for s in (0, 1)]
    row = {r["figure"]: r for r in published.published_rows(cpu)}[
        "Larger numbers: gain from explanations (points)"]
    assert row["measured"].startswith("-1.0 ") and row["measured_on"].endswith(
        "split larger_numbers")
    assert "0-29" not in row["setting"].split("(")[0]  # the ranges are this project's
    paper = [_record("none", 0, 0.2, condition="larger_numbers"),
             _record("medium", 0, 0.3, condition="larger_numbers")]
    row = {r["figure"]: r for r in published.published_rows(paper)}[
        "Larger numbers: gain from explanations (points)"]
    assert row["measured"].startswith("+10.0") and row["measured_on"] == "1 model(s)"


def test_published_length_figure_falls_back_to_the_main_runs_longer_split():
    records = [_scored(_record("medium", s, 0.8), "len20_40", 0.3 + 0.1 * s) for s in (0, 1)]
    row = {r["figure"]: r for r in published.published_rows(records)}[
        "Length generalization, t5-large, medium"]
    assert row["measured"].startswith("35.0 ± ") and row["measured_on"].endswith("len20_40")
    assert row["differences"].startswith("the main runs scored on split len20_40, "
                                         "not a length_generalization run")
    length = [_scored(_record("medium", 0, 0.8, condition="length_generalization"),
                      "test_100_200", 0.6)]
    row = {r["figure"]: r for r in published.published_rows(records + length)}[
        "Length generalization, t5-large, medium"]
    assert "the main runs" not in row["differences"]  # a real run of the condition wins


def test_order_helpers_and_task_name_parsing():
    assert [report_runs.model_rank(m) for m in ("cpu_tiny", "t5-small", "t5_1_0_base",
                                                "t5_1_1_large", "t5-3b", "t5_1_1_xxl", "x")] \
        == [0, 1, 2, 3, 4, 5, 0]
    assert task_spec.style_of("explistops30_medium_sp") == "medium"
    assert task_spec.style_of("explistops10_cpu_none_n500") == "none"
    assert task_spec.style_of("glue_sst2") is None
    assert report_runs.as_float(True) is None and report_runs.as_float("inf") is None
    assert report_runs.as_float("0.5") == 0.5
    splits = {"test": None, "validation": None, "zeta": None, "alpha": None}
    record = _record("none", 0, 0.5)
    record.splits = dict(splits)
    assert report.longer_split([record]) == "alpha"
    record.splits["longer"] = None
    assert report.longer_split([record]) == "longer"


def _json(path: Path, value) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(value if isinstance(value, str) else json.dumps(value))


def test_read_run_of_hand_written_files(tmp_path):
    run = rundir.RunDir(tmp_path / "r")
    _json(run.run_json, {"mixture_or_task_name": "explistops30_short", "seed": "3",
                         "model_config": {"emb_dim": 64, "num_encoder_layers": 2}})
    _json(run.metrics("explistops30_short", "test", 5),
          {"task": "explistops30_short", "num_examples": 8,
           "metrics": {"accuracy": 0.5, "step_faithfulness": None, "flag": True, "text": "x"}})
    _json(run.metrics("explistops30_short", "test", 9), "{broken")  # newest, unreadable
    _json(run.metrics("other_task", "test", 50), {"metrics": {"accuracy": 1.0}})
    _json(run.metrics("other_task", "long", 50), {"metrics": {"accuracy": 0.25}})
    _json(run.eval_log, "\n".join([json.dumps({"step": 2, "split": "validation", "accuracy": 0.1}),
                                   json.dumps({"step": 2, "split": "validation", "accuracy": 0.2}),
                                   json.dumps({"step": 4, "split": "train", "accuracy": 0.3}),
                                   '{"step": 6, "spl']))
    _json(run.train_log, '{"step": 1, "loss": 2.0}\n{"step": 2, "loss": NaN}\n{"step": 3, "lo')
    (run.checkpoint(4) / "run.json").parent.mkdir(parents=True)
    (run.checkpoint(4) / "run.json").write_text("{}")  # not a run of its own

    assert report.find_runs(tmp_path) == [run.path]
    read = report.read_run(run.path)
    assert (read.name, read.model, read.style, read.seed, read.condition) == \
        ("r", "d64-2+?", "short", 3, "main")
    test = read.splits["test"]  # the run's own task wins over a newer step of another
    assert (test.task, test.step, test.num_examples) == ("explistops30_short", 5, 8)
    assert test.metrics["accuracy"] == 0.5 and math.isnan(test.metrics["step_faithfulness"])
    assert set(test.metrics) == {"accuracy", "step_faithfulness"}  # flags and text left out
    assert read.splits["long"].task == "other_task" and read.splits["long"].num_examples is None
    assert read.problems == ["metrics_9.json unreadable (JSONDecodeError)"]
    assert read.curve_split == "validation"
    assert [(p["step"], p["accuracy"]) for p in read.eval_points] == [(2, 0.2)]  # last of a step
    assert read.losses == [(1, 2.0)] and read.last_step == 1  # NaN loss and cut line skipped


def test_read_run_notes_what_is_missing(tmp_path):
    run = rundir.RunDir(tmp_path / "empty")
    _json(run.run_json, "[1, 2]")
    read = report.read_run(run.path)
    assert read.info == {} and read.style == "unknown" and read.model == "unknown"
    assert read.problems == ["run.json is not a JSON object",
                             "no eval/<task>/test/metrics_<step>.json", "no train_log.jsonl"]
    assert read.splits == {} and read.losses == [] and read.eval_points == []
