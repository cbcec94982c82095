"""The CPU study's findings: the verdict rule, the arms' standard errors, each
finding from hand-written runs, the report's findings section, plots and JSON,
and the cpu-study preset's runs."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

import dataclasses

from explistops_jax import data, rundir, study as study_lib
from explistops_jax.errors import UserError
from explistops_jax.report import findings as f
from explistops_jax.report import write_report_from_runs
from explistops_jax.report.runs import RunResult, SplitResult
from explistops_jax.report.statistics import Interval, paired_bootstrap


def _run(style, seed, splits, *, condition="main", dataset=f.DATASET, examples=20_000,
         n=1000, length_buckets=None):
    """A run as read: ``splits`` maps a split to its accuracy."""
    results = {}
    for split, accuracy in splits.items():
        metrics = {"accuracy": accuracy}
        for bucket, value in (length_buckets or {}).get(split, {}).items():
            metrics[f"accuracy_length_{bucket}"] = value
        right = round(accuracy * n)  # per-example records: the first `right` correct
        results[split] = SplitResult("task", split, 100, n, metrics,
                                     correct=(1,) * right + (0,) * (n - right))
    name = f"{style}_{condition}_{examples}_{seed}"
    return RunResult(run_dir=Path(f"/runs/{name}"), name=name, model="cpu_tiny", style=style,
                     seed=seed, condition=condition, dataset=dataset,
                     train_examples=examples, preset="cpu", info={}, splits=results)


# ----------------------------------------------------------------- the rule


@pytest.mark.parametrize("kind, low, high, want", [
    ("helps", 0.16, 0.24, f.REPRODUCED),          # above +10 points
    ("helps", 0.08, 0.16, f.INCONCLUSIVE),        # straddles +10
    ("helps", 0.03, 0.07, f.NOT_REPRODUCED),      # real, but under 10 points
    ("helps", -0.14, -0.06, f.NOT_REPRODUCED),
    ("helps", 0.18, 0.42, f.INCONCLUSIVE),        # wider than ±10 points
    ("does_not_help", -0.03, 0.05, f.REPRODUCED),
    ("does_not_help", -0.24, -0.16, f.REPRODUCED),
    ("does_not_help", 0.07, 0.15, f.INCONCLUSIVE),
    ("does_not_help", 0.16, 0.24, f.NOT_REPRODUCED),
    ("at_least", -0.06, 0.02, f.REPRODUCED),      # above -10
    ("at_least", -0.14, -0.06, f.INCONCLUSIVE),
    ("at_least", -0.24, -0.16, f.NOT_REPRODUCED),
    ("at_least", 0.06, 0.14, f.REPRODUCED),
])
def test_verdict_rule(kind, low, high, want):
    assert f.verdict(kind, low, high) == want


def test_verdict_rejects_an_unknown_claim():
    with pytest.raises(ValueError, match="claim kind"):
        f.verdict("maybe", 0.1, 0.2)


# ----------------------------------------------------------------- the bootstrap


def _items(right: int, n: int = 1000, start: int = 0) -> tuple[int, ...]:
    """``right`` correct examples from ``start`` on (wrapping), the rest wrong."""
    out = [0] * n
    for i in range(right):
        out[(start + i) % n] = 1
    return tuple(out)


def test_bootstrap_of_identical_arms_centres_on_zero():
    arm = [_items(500, start=0), _items(520, start=100), _items(480, start=300)]
    interval = paired_bootstrap(arm, arm)
    assert interval.d == 0.0
    assert interval.low <= 0.0 <= interval.high
    # the seeds differ by 2 points: each arm's seed draw moves its mean
    assert 0.02 < interval.high - interval.low < 0.1


def test_bootstrap_of_certain_answers_has_no_width():
    assert paired_bootstrap([_items(1000)] * 3, [_items(0)] * 3) == Interval(1.0, 1.0, 1.0)
    assert paired_bootstrap([_items(300)] * 3, baseline=0.1).d == pytest.approx(0.2)


def test_bootstrap_sees_the_spread_between_seeds():
    """Two seeds at 40% and 80% (mean 60%) against a steady 50%: the seed-to-seed
    spread makes the interval wide (the per-seed formula's binomial term alone
    would say ±3 points)."""
    a = [_items(400), _items(800)]
    b = [_items(500)] * 2
    interval = paired_bootstrap(a, b)
    assert interval.d == pytest.approx(0.1)
    assert interval.low < -0.05 and interval.high > 0.25
    assert f.verdict("helps", interval.low, interval.high) == f.INCONCLUSIVE


def test_bootstrap_pairs_the_items_both_arms_answer():
    """Arm a gets right every item b gets right plus 50 more: paired, the
    difference is known far better than two independent 1,000-item samples."""
    b = [_items(500, start=s) for s in (0, 1, 2)]
    a = [_items(550, start=s) for s in (0, 1, 2)]
    paired = paired_bootstrap(a, b)
    shuffled = [tuple(reversed(row)) for row in a]  # the same accuracies, other items
    unpaired = paired_bootstrap(shuffled, b)
    assert paired.d == pytest.approx(0.05) == pytest.approx(unpaired.d)
    assert paired.high - paired.low < 0.5 * (unpaired.high - unpaired.low)


def test_bootstrap_rejects_arms_on_different_items():
    with pytest.raises(ValueError, match="the same items"):
        paired_bootstrap([_items(5, n=10)], [_items(5, n=12)])


def test_effect_without_per_example_records_is_inconclusive():
    a = f.Arm("a", (0.9, 0.9, 0.9), 1000)
    b = f.Arm("b", (0.1, 0.1, 0.1), 1000)
    effect = f.Effect("a − b", a, b, "helps")
    assert effect.interval is None and effect.verdict == f.INCONCLUSIVE
    assert "no per-example records" in effect.text()


def test_modular_sum_chance_comes_from_the_training_split():
    chance = f.chance_level()
    train = Counter(ex["answer"] for ex in data.examples(f.SM_DATASET, "train"))
    assert chance == max(train.values()) / 20_000
    assert 0.095 < chance < 0.11  # about uniform over ten answers


# ----------------------------------------------------------------- the findings


def _study_runs(*, long=0.88, sm_none=0.11, larger=(0.20, 0.21), control=0.70,
                longer_medium=0.60, length_control=0.85):
    runs = []
    for seed in (0, 1, 2):
        eps = 0.01 * seed
        runs += [
            _run("none", seed, {"test": 0.55 + eps, "len20_40": 0.30 + eps,
                                "larger_numbers": larger[0] + eps, "longer": 0.3},
                 length_buckets={"test": {"10_19": 0.55}, "len20_40": {"20_29": 0.35,
                                                                      "30_39": 0.25}}),
            _run("medium", seed, {"test": 0.82 + eps, "len20_40": longer_medium + eps,
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
            _run("none", seed, {"larger_numbers": larger[0] + eps, "test": 0.5},
                 condition="larger_numbers"),
            _run("medium", seed, {"larger_numbers": larger[1] + eps, "test": 0.8},
                 condition="larger_numbers"),
            _run("medium", seed, {"larger_numbers": control}, condition="larger_numbers_control",
                 dataset="explistops10_cpu_wide"),
            _run("medium", seed, {"len20_40": length_control}, condition="length_control",
                 dataset="explistops10_cpu_len10_40"),
        ]
    runs += [_run("long", seed, {"test": long}) for seed in (0, 1, 2)]
    return runs


def test_every_finding_from_hand_written_runs():
    found = {x.name: x for x in f.evaluate_findings(_study_runs())}
    assert list(found) == list(study_lib.FINDINGS)  # one section per preset finding
    assert found["headline"].verdict == f.REPRODUCED
    assert found["headline"].effects[0].d == pytest.approx(0.27)
    # the headline's medium against none at medium's compute: not run here
    assert found["headline"].effects[1].verdict == f.NOT_RUN
    assert found["ladder"].verdict == f.REPRODUCED
    assert found["data_efficiency"].verdict == f.REPRODUCED  # 60.5 vs 55.5: at least
    assert found["length"].verdict == f.REPRODUCED
    assert found["larger_numbers"].verdict == f.REPRODUCED  # +1 point: no help
    assert found["modular_sum"].verdict == f.REPRODUCED
    assert found["ladder"].extra["size_claim"] == "not tested (one model size)"


def test_equal_compute_compares_with_nones_better_training_chosen_on_validation():
    """At medium's compute none may train 3 epochs or 11: the one with the higher
    final validation accuracy (never test) is the baseline."""
    def with_validation(run, final):
        run.eval_points = [{"step": 100, "accuracy": 0.1}, {"step": 200, "accuracy": final}]
        return run

    def runs(long_validation):
        out = [r for r in _study_runs() if r.condition == "main"
               and r.style in ("none", "medium")]
        out = [with_validation(r, 0.4) if r.style == "none" else r for r in out]
        out += [with_validation(_run("none", s, {"test": 0.20}, condition="equal_compute"),
                                long_validation) for s in (0, 1, 2)]
        return {x.name: x for x in f.evaluate_findings(out)}["headline"]

    collapsed = runs(0.2).effects[1]  # 11 epochs worse on validation: 3 epochs chosen
    assert "chosen on validation: 3 epochs" in collapsed.label
    assert collapsed.d == pytest.approx(0.27)  # medium 82-84 against none 55-57
    improved = runs(0.6).effects[1]
    assert "chosen on validation: 11 epochs" in improved.label
    assert improved.d == pytest.approx(0.82 + 0.01 - 0.20)


def test_does_not_help_needs_a_positive_control_that_passes():
    no_control = [r for r in _study_runs() if r.condition != "larger_numbers_control"]
    found = {x.name: x for x in f.evaluate_findings(no_control)}
    assert found["larger_numbers"].verdict == f.INCONCLUSIVE
    failing = {x.name: x for x in f.evaluate_findings(_study_runs(control=0.25))}
    assert failing["larger_numbers"].verdict == f.INCONCLUSIVE  # the test is not passable


def test_length_does_not_help_only_beside_a_passing_control():
    """Medium no better than none on longer inputs: "not reproduced" only when the
    control (medium trained on lengths 10-40) passes the same items."""
    flat = _study_runs(longer_medium=0.31)
    assert {x.name: x for x in f.evaluate_findings(flat)}["length"].verdict \
        == f.NOT_REPRODUCED
    no_control = [r for r in flat if r.condition != "length_control"]
    assert {x.name: x for x in f.evaluate_findings(no_control)}["length"].verdict \
        == f.INCONCLUSIVE
    failing = _study_runs(longer_medium=0.31, length_control=0.33)
    assert {x.name: x for x in f.evaluate_findings(failing)}["length"].verdict \
        == f.INCONCLUSIVE
    # explanations that help need no control
    helped = [r for r in _study_runs() if r.condition != "length_control"]
    assert {x.name: x for x in f.evaluate_findings(helped)}["length"].verdict == f.REPRODUCED


def test_findings_that_do_not_reproduce_say_so():
    found = {x.name: x for x in f.evaluate_findings(
        _study_runs(long=0.60, sm_none=0.50, larger=(0.20, 0.40)))}
    # medium (82-83%) beats long (60%) by far more than 10 points: not the study's order
    assert found["ladder"].verdict == f.NOT_REPRODUCED
    assert found["modular_sum"].verdict == f.NOT_REPRODUCED  # none far above chance
    assert found["larger_numbers"].verdict == f.NOT_REPRODUCED  # explanations helped


def test_findings_without_runs_are_not_run_yet():
    only_headline = [r for r in _study_runs() if r.condition == "main"
                     and r.style in ("none", "medium")]
    found = {x.name: x for x in f.evaluate_findings(only_headline)}
    assert found["headline"].verdict == f.REPRODUCED
    one_seed = {x.name: x for x in f.evaluate_findings(
        [r for r in only_headline if r.seed == 0])}
    assert one_seed["headline"].verdict == f.INCONCLUSIVE  # fewer than 3 seeds
    assert "fewer than 3 seeds" in one_seed["headline"].effects[0].text()
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
    assert headline["arms"][1]["per_seed"] == pytest.approx([0.82, 0.83, 0.84])
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
    runs = study_lib.runs_for("cpu-study", seeds=study_lib.CPU_STUDY_SEEDS)
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
    # at least 3 seeds for every arm, 5 for the headline's none and medium
    arms: dict[tuple, set] = {}
    for run in runs:
        arms.setdefault((run.condition, run.style, run.dataset, run.train_examples),
                        set()).add(run.seed)
    assert all(len(seeds) >= 3 for seeds in arms.values()), arms
    assert arms[("main", "none", f.DATASET, 20_000)] == set(range(5))
    assert arms[("main", "medium", f.DATASET, 20_000)] == set(range(5))
    # data efficiency: the full run's optimizer steps on fewer unique examples
    full = by_name["cpu_medium_seed0"]
    for run in (r for r in runs if r.condition == "data_efficiency"):
        assert run.train_examples in study_lib.CPU_STUDY_SUBSETS
        assert run.epochs * run.train_examples == full.epochs * full.train_examples
        assert run.task.endswith(f"_n{run.train_examples}")
    assert f.SUBSET in study_lib.CPU_STUDY_SUBSETS
    # none at medium's compute
    compute = [r for r in runs if r.condition == "equal_compute"]
    assert {r.style for r in compute} == {"none"}
    assert {r.epochs for r in compute} == {study_lib.CPU_COMPUTE_EPOCHS}
    # the length finding's positive control answers the headline runs' len20_40 items
    control = [r for r in runs if r.condition == "length_control"]
    assert {(r.style, r.dataset) for r in control} == {("medium", "explistops10_cpu_len10_40")}
    assert {r.eval_splits for r in control} == {("len20_40",)}
    assert (data.get_config("explistops10_cpu_len10_40").split("len20_40")
            == data.get_config(f.DATASET).split("len20_40"))
    sm = [r for r in runs if r.condition == "modular_sum"]
    assert {r.dataset for r in sm} == {"explistops10_cpu_sm"}
    assert {r.style for r in sm} == {"none", "medium"}
    # seed by seed: an interrupted study has whole findings for the first seeds
    assert [r.seed for r in runs] == sorted(r.seed for r in runs)


def test_equal_compute_epochs_match_the_flops_ratio():
    from explistops_jax import network, plan

    config = network.get_config(study_lib.CPU_MODEL, vocab_size=384,
                                **study_lib.CPU_MODEL_OVERRIDES)
    none, medium = (r.feature_lengths for r in study_lib.runs_for("cpu"))
    ratio = (plan.train_flops(config, 64, (medium["inputs"], medium["targets"]))
             / plan.train_flops(config, 64, (none["inputs"], none["targets"])))
    assert study_lib.CPU_COMPUTE_EPOCHS == round(study_lib.CPU_EPOCHS * ratio)


def test_cpu_study_one_finding_and_errors():
    runs = study_lib.runs_for("cpu-study", seeds=(0,), findings=["modular_sum"])
    assert [r.name for r in runs] == ["cpu_sm_none_seed0", "cpu_sm_medium_seed0"]
    length = study_lib.runs_for("cpu-study", seeds=(0,), findings=["length"])
    assert [r.name for r in length] == ["cpu_none_seed0", "cpu_medium_seed0",
                                        "cpu_len10_40_medium_seed0"]
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
    # the training split's most common answer (never the test labels); a uniform
    # guess would score 10%
    assert f.chance_level() == pytest.approx(0.1031)
    assert f.chance_level("explistops30") >= 1 / 30


def test_length_generalization_is_broken_down_by_steps_and_explanation_length():
    steps, beyond = f.item_traits(f.DATASET, "len20_40")
    assert len(steps) == len(beyond) == 500
    many = sum(n >= f.MANY_STEPS for n in steps) / 500
    assert 0.4 < many < 0.6  # about half need more steps than training trees have
    train_steps, _ = f.item_traits(f.DATASET, "train")
    assert sum(n >= f.MANY_STEPS for n in train_steps) <= 5  # of 20,000
    # medium right exactly where an item has few steps, none right nowhere
    few = tuple(int(n < f.MANY_STEPS) for n in steps)

    def run(style, seed, correct):
        split = SplitResult("task", "len20_40", 100, 500,
                            {"accuracy": sum(correct) / 500}, correct=correct)
        return RunResult(run_dir=Path(f"/runs/{style}{seed}"), name=f"{style}{seed}",
                         model="cpu_tiny", style=style, seed=seed, condition="main",
                         dataset=f.DATASET, train_examples=20_000, preset="cpu", info={},
                         splits={"len20_40": split})

    runs = [run("medium", s, few) for s in range(3)] + [run("none", s, (0,) * 500)
                                                         for s in range(3)]
    notes = next(x for x in f.evaluate_findings(runs) if x.name == "length").notes
    text = "\n".join(notes)
    assert f"under {f.MANY_STEPS} steps ({sum(few)} of 500 items): none 0.0%, medium 100.0%" in text
    assert f"{f.MANY_STEPS} or more steps ({500 - sum(few)} of 500 items): none 0.0%, medium 0.0%" in text


def test_plateau_rule_reads_the_last_third_of_the_validation_curve():
    """A run is still rising when validation accuracy gains over 2 points across
    the last third of its evaluations; the ladder states it for every arm."""
    def with_curve(style, seed, curve):
        run = _run(style, seed, {"test": 0.5})
        run.eval_points = [{"step": 100 * (i + 1), "accuracy": a} for i, a in enumerate(curve)]
        return run

    rising = f._plateau_note(with_curve("long", 0, [0.10, 0.22, 0.435]))
    assert "still rising" in rising and "22.0% at step 200, 43.5% at step 300" in rising
    flat = f._plateau_note(with_curve("none", 0, [0.30, 0.40, 0.44, 0.45, 0.455, 0.46]))
    assert "at a plateau" in flat and "45.5% at step 500" in flat
    ladder = next(x for x in f.evaluate_findings(
        [with_curve(s, 0, [0.2, 0.5]) for s in ("none", "short", "medium", "long")])
        if x.name == "ladder")
    assert sum("still rising" in note for note in ladder.notes) == 4
    # most runs still learning at the equal budget: the verdict says it holds there only
    assert ladder.scope.startswith(f"at the equal budget of {study_lib.CPU_EPOCHS} epochs")
    assert "long 1 of 1" in ladder.scope and ladder.verdict_text.endswith(
        "not compared at a plateau)")
    assert ladder.to_json()["scope"] == ladder.scope
    settled = next(x for x in f.evaluate_findings(
        [with_curve(s, 0, [0.2, 0.5, 0.505]) for s in ("none", "short", "medium", "long")])
        if x.name == "ladder")
    assert settled.scope == "" and settled.verdict_text == settled.verdict


def test_points_never_print_minus_zero():
    from explistops_jax.report.statistics import format_stat, points

    assert [points(x) for x in (-0.0004, 0.0, 0.366, -0.028)] == ["+0.0", "+0.0", "+36.6",
                                                                 "-2.8"]
    assert points(-0.0004, sign=False) == "0.0"
    assert format_stat(f.Stat(-0.0004, None, 1), sign=True) == "+0.0"
