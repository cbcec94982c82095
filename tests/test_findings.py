"""The CPU study's findings: the verdict rule, the arms' standard errors, each
finding from hand-written runs, the report's findings section, plots and JSON,
and the cpu-study preset's runs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

import dataclasses

from explistops_jax import rundir, study as study_lib
from explistops_jax.errors import UserError
from explistops_jax.report import findings as f
from explistops_jax.report import write_report_from_runs
from explistops_jax.report.runs import RunResult, SplitResult


def _run(style, seed, splits, *, condition="main", dataset=f.DATASET, examples=20_000,
         n=1000, length_buckets=None):
    """A run as read: ``splits`` maps a split to its accuracy."""
    results = {}
    for split, accuracy in splits.items():
        metrics = {"accuracy": accuracy}
        for bucket, value in (length_buckets or {}).get(split, {}).items():
            metrics[f"accuracy_length_{bucket}"] = value
        results[split] = SplitResult("task", split, 100, n, metrics)
    name = f"{style}_{condition}_{examples}_{seed}"
    return RunResult(run_dir=Path(f"/runs/{name}"), name=name, model="cpu_tiny", style=style,
                     seed=seed, condition=condition, dataset=dataset,
                     train_examples=examples, preset="cpu", info={}, splits=results)


# ----------------------------------------------------------------- the rule


@pytest.mark.parametrize("kind, d, se, want", [
    ("helps", 0.20, 0.02, f.REPRODUCED),          # [0.16, 0.24] above +10 points
    ("helps", 0.12, 0.02, f.INCONCLUSIVE),        # [0.08, 0.16] straddles +10
    ("helps", 0.05, 0.01, f.NOT_REPRODUCED),      # [0.03, 0.07]: real, but under 10 points
    ("helps", -0.10, 0.02, f.NOT_REPRODUCED),
    ("helps", 0.30, 0.06, f.INCONCLUSIVE),        # wider than ±10 points
    ("does_not_help", 0.01, 0.02, f.REPRODUCED),
    ("does_not_help", -0.20, 0.02, f.REPRODUCED),
    ("does_not_help", 0.11, 0.02, f.INCONCLUSIVE),
    ("does_not_help", 0.20, 0.02, f.NOT_REPRODUCED),
    ("at_least", -0.02, 0.02, f.REPRODUCED),      # [-0.06, 0.02] above -10
    ("at_least", -0.10, 0.02, f.INCONCLUSIVE),
    ("at_least", -0.20, 0.02, f.NOT_REPRODUCED),
    ("at_least", 0.10, 0.02, f.REPRODUCED),
])
def test_verdict_rule(kind, d, se, want):
    assert f.verdict(kind, d, se) == want


def test_verdict_rejects_an_unknown_claim():
    with pytest.raises(ValueError, match="claim kind"):
        f.verdict("maybe", 0.1, 0.01)


def test_arm_standard_error_adds_seed_spread_to_the_binomial_error():
    one = f.Arm("a", (0.8,), 1000)
    assert one.se == pytest.approx(math.sqrt(0.8 * 0.2 / 1000))
    two = f.Arm("a", (0.7, 0.9), 1000)  # mean 0.8, sample std sqrt(0.02)
    assert two.se == pytest.approx(math.sqrt((0.02 + 0.8 * 0.2 / 1000) / 2))
    effect = f.Effect("a - b", two, one, "helps")
    assert effect.d == pytest.approx(0.0)
    assert effect.se == pytest.approx(math.hypot(one.se, two.se))
    assert f.Effect("a - 0.1", one, None, "helps", 0.1).d == pytest.approx(0.7)


# ----------------------------------------------------------------- the findings


def _study_runs(*, long=0.88, sm_none=0.11, larger=(0.20, 0.21)):
    runs = []
    for seed in (0, 1):
        eps = 0.01 * seed
        runs += [
            _run("none", seed, {"test": 0.55 + eps, "len20_40": 0.30 + eps,
                                "larger_numbers": larger[0] + eps, "longer": 0.3},
                 length_buckets={"test": {"10_19": 0.55}, "len20_40": {"20_29": 0.35,
                                                                      "30_39": 0.25}}),
            _run("medium", seed, {"test": 0.82 + eps, "len20_40": 0.60 + eps,
                                  "larger_numbers": larger[1] + eps, "longer": 0.2},
                 length_buckets={"test": {"10_19": 0.82}, "len20_40": {"20_29": 0.65,
                                                                       "30_39": 0.55}}),
            _run("short", seed, {"test": 0.70 + eps}),
            _run("none", seed, {"test": sm_none}, condition="modular_sum",
                 dataset=f.SM_DATASET),
            _run("medium", seed, {"test": 0.75 + eps}, condition="modular_sum",
                 dataset=f.SM_DATASET),
            _run("none", seed, {"test": 0.35}, condition="data_efficiency", examples=2000),
            _run("medium", seed, {"test": 0.60 + eps}, condition="data_efficiency",
                 examples=2000),
        ]
    runs.append(_run("long", 0, {"test": long}))
    return runs


def test_every_finding_from_hand_written_runs():
    found = {x.name: x for x in f.evaluate_findings(_study_runs())}
    assert list(found) == list(study_lib.FINDINGS)  # one section per preset finding
    assert found["headline"].verdict == f.REPRODUCED
    assert found["headline"].effects[0].d == pytest.approx(0.27)
    assert found["ladder"].verdict == f.REPRODUCED
    assert found["data_efficiency"].verdict == f.REPRODUCED  # 60.5 vs 55.5: at least
    assert found["length"].verdict == f.REPRODUCED
    assert found["larger_numbers"].verdict == f.REPRODUCED  # +1 point: no help
    assert found["modular_sum"].verdict == f.REPRODUCED


def test_findings_that_do_not_reproduce_say_so():
    found = {x.name: x for x in f.evaluate_findings(
        _study_runs(long=0.60, sm_none=0.50, larger=(0.20, 0.40)))}
    # medium (82-83%) beats long (60%) by far more than 10 points: not the study's order
    assert found["ladder"].verdict == f.NOT_REPRODUCED
    assert found["modular_sum"].verdict == f.NOT_REPRODUCED  # none far above chance
    assert found["larger_numbers"].verdict == f.NOT_REPRODUCED  # explanations helped


def test_findings_without_runs_are_not_run_yet():
    only_headline = [r for r in _study_runs() if r.condition == "main"
                     and r.style in ("none", "medium") and r.seed == 0]
    found = {x.name: x for x in f.evaluate_findings(only_headline)}
    assert found["headline"].verdict == f.REPRODUCED
    assert found["modular_sum"].verdict == f.NOT_RUN
    assert found["data_efficiency"].verdict == f.NOT_RUN
    assert found["ladder"].verdict == f.NOT_RUN


def test_report_writes_findings_section_json_and_plots(tmp_path):
    runs = _study_runs()
    path = write_report_from_runs(runs, tmp_path)
    text = path.read_text()
    assert "## The study's findings at CPU scale" in text
    assert text.count("| reproduced |") == 6  # the summary table
    assert "**Verdict rule.**" in text
    record = json.loads((tmp_path / rundir.FINDINGS_JSON).read_text())
    assert [x["name"] for x in record["findings"]] == list(study_lib.FINDINGS)
    headline = record["findings"][0]
    assert headline["effects"][0]["low"] > 0 and headline["verdict"] == f.REPRODUCED
    assert headline["arms"][1]["per_seed"] == pytest.approx([0.82, 0.83])
    for name in study_lib.FINDINGS:
        png = tmp_path / rundir.finding_png(name)
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert rundir.finding_png(name) in text
    # deterministic bytes
    again = tmp_path / "again"
    write_report_from_runs(runs, again)
    # (the runs table links the run directories relative to the report)
    assert (again / rundir.REPORT_FILE).read_text().split("## Runs")[0] == text.split(
        "## Runs")[0]
    assert ((again / rundir.finding_png("ladder")).read_bytes()
            == (tmp_path / rundir.finding_png("ladder")).read_bytes())


def test_report_of_other_runs_has_no_findings(tmp_path):
    runs = [_run("none", 0, {"test": 0.5}, dataset="explistops30"),
            _run("medium", 0, {"test": 0.9}, dataset="explistops30")]
    text = write_report_from_runs(runs, tmp_path).read_text()
    assert "findings at CPU scale" not in text
    assert not (tmp_path / rundir.FINDINGS_JSON).exists()


# ----------------------------------------------------------------- the preset


def test_cpu_study_runs_share_the_demo_runs_and_add_splits():
    runs = study_lib.runs_for("cpu-study", seeds=(0, 1))
    names = [r.name for r in runs]
    assert len(names) == len(set(names))
    demo = {r.name: r for r in study_lib.runs_for("cpu", seeds=(0, 1))}
    by_name = {r.name: r for r in runs}
    for name, run in demo.items():  # the same training: finished demo runs are reused
        study = by_name[name]
        assert study.eval_splits[:len(run.eval_splits)] == run.eval_splits
        assert set(study.eval_splits) - set(run.eval_splits) == set(study_lib.CPU_STUDY_SPLITS)
        assert study == dataclasses.replace(run, eval_splits=study.eval_splits,
                                             eval_feature_lengths=study.eval_feature_lengths)
    # long costs over 10 minutes: the first seed only; the others have two seeds
    assert [r.seed for r in runs if r.style == "long"] == [0]
    assert sorted(r.seed for r in runs if r.style == "short") == [0, 1]
    # data efficiency: the full run's optimizer steps on fewer unique examples
    full = by_name["cpu_medium_seed0"]
    for run in (r for r in runs if r.condition == "data_efficiency"):
        assert run.train_examples in study_lib.CPU_STUDY_SUBSETS
        assert run.epochs * run.train_examples == full.epochs * full.train_examples
        assert run.task.endswith(f"_n{run.train_examples}")
    sm = [r for r in runs if r.condition == "modular_sum"]
    assert {r.dataset for r in sm} == {"explistops10_cpu_sm"}
    assert {r.style for r in sm} == {"none", "medium"}
    # seed 0's runs come first: an interrupted study has whole findings for seed 0
    assert [r.seed for r in runs] == sorted(r.seed for r in runs)


def test_cpu_study_one_finding_and_errors():
    runs = study_lib.runs_for("cpu-study", seeds=(0,), findings=["modular_sum"])
    assert [r.name for r in runs] == ["cpu_sm_none_seed0", "cpu_sm_medium_seed0"]
    length = study_lib.runs_for("cpu-study", seeds=(0,), findings=["length"])
    assert [r.name for r in length] == ["cpu_none_seed0", "cpu_medium_seed0"]
    assert all("len20_40" in r.eval_splits and "larger_numbers" not in r.eval_splits
               for r in length)
    with pytest.raises(UserError, match="unknown finding 'speed'"):
        study_lib.runs_for("cpu-study", findings=["speed"])
    with pytest.raises(UserError, match="--finding applies"):
        study_lib.runs_for("cpu", findings=["length"])
    with pytest.raises(UserError, match="--styles does not apply"):
        study_lib.runs_for("cpu-study", styles=["long"])


def test_cpu_study_splits_keep_the_training_caps():
    from explistops_jax import data

    config = data.get_config("explistops10_cpu")
    train = config.split("train").sampler
    within = config.split("len20_40").sampler
    assert (within.max_depth, within.max_args, within.max_value) == (
        train.max_depth, train.max_args, train.max_value)
    assert within.min_length >= train.max_length - 1
    larger = config.split("larger_numbers").sampler
    assert larger.min_value > train.max_value
    assert (larger.min_length, larger.max_length, larger.max_depth) == (
        train.min_length, train.max_length, train.max_depth)
    sm = data.get_config("explistops10_cpu_sm").split("train").sampler
    assert sm.operators == ("SM",)


def test_chance_is_the_most_common_answers_share():
    # explistops10_cpu_sm's test split (pinned in test_listops_family): answer 2 is
    # the most common, 125 of 1,000; a uniform guess would score 10%.
    assert f.chance_level() == pytest.approx(0.125)
    assert f.chance_level("explistops30") >= 1 / 30
