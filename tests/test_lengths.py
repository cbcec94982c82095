"""Lengths from the data: the committed table, the rule every study run takes its
lengths from, the check that stops a run whose lengths would cut examples, and
the generated gin files that carry them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from explistops_jax import data, explain, gin_writer, lengths, study
from explistops_jax.errors import UserError
from explistops_jax.task_spec import TaskSpec

ROOT = Path(__file__).resolve().parent.parent
GIN = ROOT / "gin_configs"
CPU_DATASETS = ("explistops10_cpu", "explistops10_cpu_sm", "explistops10_cpu_wide",
                "explistops10_cpu_len10_40")


# ----------------------------------------------------------------- the table


def test_table_rows_of_the_cpu_datasets_regenerate_exactly():
    rows = lengths.build_table(CPU_DATASETS)
    committed = lengths.table()["datasets"]
    for name in CPU_DATASETS:
        assert rows[name] == committed[name], name


@pytest.mark.parametrize("split", ["validation", "test"])
def test_table_spot_checks_explistops30(split):
    """Whole small splits and every style, against a fresh pass (both notations)."""
    for style in explain.STYLES:
        task = f"explistops30_{style}"
        assert lengths.split_lengths(task, split).source == "table"
        assert lengths.split_lengths(task, split) == lengths.SplitLengths(
            task, split, **_fields(lengths.measure(task, split)), source="table")
    paren = lengths.measure("explistops30_none_paren", split)
    assert lengths.split_lengths("explistops30_none_paren", split).longest == paren.longest


def _fields(found: lengths.SplitLengths) -> dict:
    return {"num_examples": found.num_examples, "longest": found.longest, "total": found.total}


def test_table_spot_checks_explistops30_train():
    """The training split's first 3,000 examples stay within the table's longest,
    and the longest example it names exists (the long style's 401 tokens)."""
    row = lengths.table()["datasets"]["explistops30"]["train"]
    assert row["num_examples"] == 98_000
    for style in explain.STYLES:
        head = lengths.measure(f"explistops30_{style}", "train", limit=3000)
        assert head.longest["targets"] <= row["targets"][style][0]
        assert head.longest["inputs"] <= row["inputs"]["bracket"][0]
    assert row["targets"]["long"][0] == 401 and row["targets"]["none"][0] == 2


def test_tagged_tasks_and_subsets_count_their_own_tokens():
    tagged = "explistops10_cpu_medium_tagged"
    assert lengths.split_lengths(tagged, "test") == lengths.SplitLengths(
        tagged, "test", **_fields(lengths.measure(tagged, "test")), source="table")
    subset = lengths.split_lengths("explistops10_cpu_long_n500", "train")
    assert subset.num_examples == 500 and subset.source == "measured"
    assert subset == lengths.measure("explistops10_cpu_long_n500", "train")


def test_a_replaced_dataset_is_measured_not_read_from_the_table():
    original = data.get_config("explistops10_cpu_sm")
    smaller = data.DatasetConfig(original.name, original.modulus,
                                 {"test": data.SplitConfig(original.split("test").sampler, 7, 5)})
    data.register_config(smaller, replace=True)
    try:
        found = lengths.split_lengths("explistops10_cpu_sm_long", "test")
        assert found.source == "measured" and found.num_examples == 7
    finally:
        data.register_config(original, replace=True)


# ----------------------------------------------------------------- the rule


def _need(longest_in, longest_out, mean_in, mean_out, n=10):
    return lengths.SplitLengths("t", "train", n, {"inputs": longest_in, "targets": longest_out},
                                {"inputs": mean_in * n, "targets": mean_out * n})


def test_row_lengths_round_up_and_size_packed_inputs_by_the_targets():
    need = _need(61, 189, 37, 100)
    assert lengths.row_lengths(need) == {"inputs": 64, "targets": 192}
    packed = lengths.row_lengths(need, pack=True, targets_factor=2)
    # targets: 2 x 192; inputs: 1.25 * 384 * 37 / 100 = 177.6 -> 184
    assert packed == {"inputs": 184, "targets": 384}
    assert lengths.row_lengths(_need(61, 2, 37, 2), pack=True) == {"inputs": 192, "targets": 8}
    assert lengths.round_up(8) == 8 and lengths.round_up(9) == 16


def test_no_built_in_split_is_cut_by_any_study_run():
    runs = (study.runs_for("paper") + study.runs_for("cpu-study", seeds=(0,))
            + study.runs_for("cpu", seeds=(0,)) + [study.t5x_smoke_run()])
    for run in runs:
        for split in ("train", "validation"):
            found = lengths.split_lengths(run.task, split)
            assert found.fits(run.feature_lengths), (run.name, split, found.longest)
        for split in run.eval_splits:
            found = lengths.split_lengths(run.task, split)
            assert found.fits(run.eval_feature_lengths), (run.name, split, found.longest)


def test_unpacked_runs_pad_only_to_the_next_multiple_of_8():
    for run in study.runs_for("cpu", seeds=(0,)):
        need = study.run_lengths(run.task, ("train", "validation"))
        assert run.feature_lengths == need
        longest = lengths.combine([lengths.split_lengths(run.task, s)
                                   for s in ("train", "validation")]).longest
        for feature in lengths.FEATURES:
            assert longest[feature] <= need[feature] < longest[feature] + lengths.MULTIPLE


@pytest.mark.parametrize("style", explain.STYLES)
def test_the_paper_grid_packs_to_at_most_20_percent_target_padding(style):
    """Measured on the first 10,000 training examples of explistops30 (the same
    draws as the rest of the split); would fail if a style's packing or lengths
    left its rows mostly padding."""
    run = next(r for r in study.runs_for("paper", sizes=["small"], styles=[style])
               if r.condition == "main")
    packed = lengths.packing(run.task, "train", run.feature_lengths, limit=10_000)
    assert packed.padding["targets"] <= 0.20, packed
    # about the study's 8 examples a step
    assert 6 <= packed.examples_per_row * run.batch_size <= 10, packed
    unpacked = lengths.split_lengths(run.task, "train").padding(
        study.run_lengths(run.task, ("train", "validation")))
    assert unpacked > 0.40  # what packing saves: unpacked rows are mostly padding


# ----------------------------------------------------------------- the check


def test_check_fit_counts_what_would_be_cut():
    task = "explistops10_cpu_long"
    fits = study.run_lengths(task, ("test",))
    assert lengths.check_fit(task, ["test"], fits) == {}
    short = {"inputs": 32, "targets": 150}
    expected = sum(1 for i in range(1000)
                   if len(_example(task, i)["targets"]) > 150)
    assert expected > 0
    with pytest.raises(lengths.TruncationError) as err:
        lengths.check_fit(task, ["test"], short)
    message = err.value.message
    assert "\n" not in message
    assert f"explistops10_cpu_long/test: {expected:,} of 1,000 examples would be cut" in message
    assert f"targets {lengths.split_lengths(task, 'test').longest['targets']}" in message
    assert "allow_truncation" in message
    assert lengths.check_fit(task, ["test"], short, allow=True) == {f"{task}/test": expected}
    # a mixture checks every member
    with pytest.raises(lengths.TruncationError, match="explistops10_cpu_long_tagged/test"):
        lengths.check_fit("explistops10_cpu_all_styles", ["test"], short)


def _example(task: str, index: int) -> dict:
    from explistops_jax import own_tasks

    (own,) = own_tasks.get_tasks(task)
    return own.example("test", index, None)


def test_sentencepiece_tasks_are_measured_with_their_vocabulary(tmp_path, monkeypatch):
    from explistops_jax import vocab

    texts = ["[MAX 2 9 [MIN 4 7 ] 0 ]", "Final answer: 7", "SUM, add [0, 8, 4], sum is 12"] * 50
    texts += [str(i) for i in range(300)]
    model = vocab.train_sentencepiece_model(texts, str(tmp_path / "sp"), vocab_size=200)
    monkeypatch.setenv(vocab.SPM_PATH_ENV, model)
    sp = vocab.sentencepiece_vocabulary(model)
    found = lengths.split_lengths("explistops10_cpu_medium_sp", "test")
    assert found.source == "measured"
    own = [_example("explistops10_cpu_medium", i) for i in range(1000)]
    longest = max(len(sp.encode(ex["targets_pretokenized"].decode())) + 1 for ex in own)
    assert found.longest["targets"] == longest
    assert found.longest["targets"] != lengths.split_lengths(
        "explistops10_cpu_medium", "test").longest["targets"]
    # what a T5X run binds: the same rule as the own runs, on these counts
    assert study.t5x_lengths("explistops10_cpu_medium_sp", ["test"]) == {
        f: lengths.round_up(n) for f, n in found.longest.items()}
    steps = study.t5x_train_steps("explistops10_cpu_medium_sp", start_step=100, epochs=2,
                                  batch_size=8)
    assert steps == 100 + 2 * 20_000 // 8


# ----------------------------------------------------------------- gin files


def test_committed_gin_files_are_the_generated_ones(tmp_path):
    written = gin_writer.write(study.gin_runs(), tmp_path)
    assert len(written) == len(set(written)) > 60
    for folder in ("experiments", "t5x"):
        generated = {p.name: p.read_text() for p in (tmp_path / folder).glob("*.gin")}
        committed = {p.name: p.read_text() for p in (GIN / folder).glob("*.gin")}
        assert sorted(committed) == sorted(generated), folder
        for name, text in generated.items():
            assert committed[name] == text, (
                f"gin_configs/{folder}/{name} differs from its definition: "
                f"regenerate with `{gin_writer.COMMAND}`")
            assert text.startswith(f"# Generated by `{gin_writer.COMMAND}`")


def test_generated_experiments_carry_the_definition():
    import ast
    import re

    for run in study.runs_for("paper"):
        text = (GIN / "experiments" / f"{gin_writer.experiment_stem(run)}.gin").read_text()
        macros = dict(re.findall(r"^([A-Z_]+) = (.+)$", text, re.M))
        assert macros["MIXTURE_OR_TASK_NAME"] == repr(run.task)
        assert ast.literal_eval(macros["TASK_FEATURE_LENGTHS"]) == run.feature_lengths
        assert int(macros["BATCH_SIZE"]) == run.batch_size
        assert int(macros["EPOCHS"]) == run.epochs
        assert float(macros["LEARNING_RATE"]) == run.learning_rate
        assert f"input_pipeline.DataConfig.pack = {run.pack}" in text


def test_write_gin_refuses_what_it_does_not_write(tmp_path):
    from explistops_jax import cli

    assert cli.main(["reproduce", "--preset", "cpu", "--write-gin", str(tmp_path)]) == 2
    assert cli.main(["reproduce", "--preset", "paper", "--sizes", "small",
                     "--write-gin", str(tmp_path)]) == 2
    assert not any(tmp_path.iterdir())


def test_write_gin_leaves_hand_written_files_alone(tmp_path):
    (tmp_path / "experiments").mkdir()
    mine = tmp_path / "experiments" / "mine.gin"
    mine.write_text("# my own experiment\n")
    stale = tmp_path / "experiments" / "old.gin"
    stale.write_text(f"# Generated by `{gin_writer.COMMAND}` once\n")
    gin_writer.write([study.t5x_smoke_run()], tmp_path)
    assert mine.exists() and not stale.exists()


# ----------------------------------------------------------------- entry points


def _tiny_train_args(tmp_path: Path, targets: int) -> list[str]:
    bindings = ["MIXTURE_OR_TASK_NAME = 'explistops10_cpu_medium'",
                f"TASK_FEATURE_LENGTHS = {{'inputs': 32, 'targets': {targets}}}",
                "TRAIN_STEPS = 1", "BATCH_SIZE = 2", "train.evaluation = None",
                f"MODEL_DIR = '{tmp_path / 'run'}'"]
    return ["--gin_file=gin_configs/models/t5_1_1_tiny.gin",
            "--gin_file=gin_configs/runs/finetune.gin",
            *(f"--gin_bindings={b}" for b in bindings)]


@pytest.mark.parametrize("entry", [["-m", "explistops_jax.train"],
                                   ["-m", "explistops_jax.cli", "train"]])
def test_a_cut_run_exits_2_with_one_line_and_writes_nothing(tmp_path, entry):
    proc = subprocess.run([sys.executable, *entry, *_tiny_train_args(tmp_path, 64)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("explistops: error: TASK_FEATURE_LENGTHS: "
                               "explistops10_cpu_medium/train: ")
    assert "examples would be cut (they need targets 89;" in lines[0]
    assert not (tmp_path / "run").exists()


def test_allowed_truncation_is_recorded(tmp_path):
    from explistops_jax import input_pipeline, trainer

    config = input_pipeline.DataConfig("explistops10_cpu_medium",
                                       {"inputs": 32, "targets": 80}, batch_size=2)
    with pytest.raises(lengths.TruncationError):
        trainer.train(trainer.ModelSpec("t5_1_1_tiny"), config, tmp_path / "no",
                      train_steps=1, progress=False)
    assert not (tmp_path / "no").exists()
    result = trainer.train(trainer.ModelSpec("t5_1_1_tiny"), config, tmp_path / "run",
                           train_steps=1, progress=False, allow_truncation=True)
    assert result.step == 1
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    cut = lengths.count_cut("explistops10_cpu_medium", "train", {"inputs": 32, "targets": 80})
    assert info["truncated"] == {"explistops10_cpu_medium/train": cut} and cut > 0
    # scoring with lengths that cut: an error, then allowed, counted, and reported
    from explistops_jax import evaluator, report

    short = {"inputs": 32, "targets": 40}
    options = dict(split="test", task_feature_lengths=short, max_examples=8, batch_size=8)
    with pytest.raises(lengths.TruncationError, match="explistops10_cpu_medium/test: "):
        evaluator.evaluate(tmp_path / "run", **options)
    evaluator.evaluate(tmp_path / "run", allow_truncation=True, **options)
    metrics = json.loads(next((tmp_path / "run" / "eval").rglob("metrics_1.json")).read_text())
    scored = lengths.count_cut("explistops10_cpu_medium", "test", short, limit=8)
    assert metrics["truncated"] == scored > 0
    text = report.write_report([tmp_path / "run"], tmp_path / "report").read_text()
    assert "## Truncated examples" in text
    assert f"explistops10_cpu_medium/train: {cut:,} examples cut" in text
    assert f"scored on test: {scored:,} examples cut" in text


def test_dry_run_prints_a_row_per_run(capsys):
    from explistops_jax import cli

    assert cli.main(["reproduce", "--preset", "cpu", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "| cpu_none_seed0 | explistops10_cpu_none | 32/8 | no | 64 |" in out
    none = lengths.split_lengths("explistops10_cpu_none", "train")
    assert f"| {100 * none.padding({'inputs': 32, 'targets': 8}):.1f}% |" in out  # 75.0%
    assert cli.main(["reproduce", "--preset", "cpu", "--dry-run", "--device-memory", "-1"]) == 2


def test_unknown_lengths_source_is_a_user_error():
    with pytest.raises(UserError):
        lengths.split_lengths(TaskSpec("explistops10_cpu", "none").name, "nosuchsplit")


@pytest.mark.parametrize("backend", ["grain", "seqio"])
def test_the_evaluator_stops_before_reading_on_either_backend(backend, monkeypatch):
    from explistops_jax import evaluator, own_tasks, seqio_backend

    if backend == "seqio":
        import seqio_tasks  # noqa: F401  (the registered tasks)

    def unread(*args, **kwargs):
        raise AssertionError("read before the lengths were checked")

    # the readers behind the input interface (backends.InputTask.read_split)
    monkeypatch.setattr(own_tasks.OwnTask, "read_split", unread)
    monkeypatch.setattr(seqio_backend.SeqioTask, "read_split", unread)
    monkeypatch.setattr(seqio_backend, "read_split", unread)
    with pytest.raises(lengths.TruncationError, match="explistops10_cpu_long/test: "):
        evaluator.Evaluator(None, "explistops10_cpu_long", "test", data_backend=backend,
                            task_feature_lengths={"inputs": 32, "targets": 64})


def test_digit_tasks_spell_larger_numbers_from_digits_and_train(tmp_path):
    """The larger-numbers finding's tasks: 10-99 are two pieces of the digits
    vocabulary (no number token a 0-9 training set never shows), and a run on
    them trains and is scored end to end (grain, no registry)."""
    from explistops_jax import evaluator, input_pipeline, own_tasks, trainer

    (task,) = own_tasks.get_tasks("explistops10_cpu_wide_medium_digits")
    table = task.vocabulary
    assert table.decode(table.encode("[MAX 45 7 ]")) == "[MAX 45 7 ]"
    assert len(table.encode("45")) == 2 and len(table.encode("7")) == 1
    run = next(r for r in study.runs_for("cpu-study", seeds=(0,), findings=["larger_numbers"])
               if r.name == "cpu_wide_medium_seed0")
    assert run.task == "explistops10_cpu_wide_medium_digits"
    config = input_pipeline.DataConfig(run.task, run.feature_lengths, batch_size=2)
    result = trainer.train(trainer.ModelSpec("t5_1_1_tiny"), config, tmp_path / "run",
                           train_steps=1, progress=False)
    assert result.step == 1
    evaluator.evaluate(tmp_path / "run", split="larger_numbers", max_examples=4, batch_size=4,
                       task_feature_lengths=run.eval_feature_lengths)
    metrics = json.loads(next((tmp_path / "run" / "eval").rglob("metrics_1.json")).read_text())
    assert metrics["num_examples"] == 4 and len(metrics["correct"]) == 4
