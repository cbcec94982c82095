"""The study runner: presets, T5X command lines, and a tiny end-to-end run that
trains, evaluates, reports, and is skipped when run again."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import dataclasses

from explistops_jax import data, gin_writer, reproduce, rundir, study
from explistops_jax.errors import UserError
from explistops_jax.listops import SamplerConfig

REPO = Path(__file__).resolve().parent.parent


def test_cpu_preset_compares_styles_at_equal_examples():
    runs = study.runs_for("cpu", seeds=(0, 1))
    assert [r.name for r in runs] == ["cpu_none_seed0", "cpu_medium_seed0",
                                      "cpu_none_seed1", "cpu_medium_seed1"]
    assert {(r.train_examples, r.epochs, r.batch_size) for r in runs} == {
        (study.CPU_TRAIN_EXAMPLES, study.CPU_EPOCHS, study.CPU_BATCH_SIZE)}
    assert {r.task for r in runs} == {"explistops10_cpu_none", "explistops10_cpu_medium"}
    assert all(r.eval_splits == ("test", "longer") for r in runs)
    # The preset's data is still Explained-ListOps: all four operators, the LRA sampler.
    sampler = study.CPU_DATASET.split("train").sampler
    assert set(sampler.operators) == {"MAX", "MIN", "MED", "SM"}
    longer = study.CPU_DATASET.split("longer").sampler
    assert longer.min_length >= sampler.max_length - 1


def test_paper_grid_covers_the_study():
    runs = study.runs_for("paper")
    main = [r for r in runs if r.condition == "main"]
    assert len(main) == 4 * 4
    assert {r.model for r in main} == {"t5_1_0_small", "t5_1_0_base", "t5_1_0_large",
                                       "t5_1_0_3B"}
    assert all(r.epochs == 30 and r.learning_rate == 3e-4 and r.train_examples == 98_000
               for r in main)
    conditions = {r.condition for r in runs}
    assert conditions == {"main", "length_generalization", "larger_numbers", "data_efficiency"}
    lengthgen = next(r for r in runs if r.condition == "length_generalization")
    assert lengthgen.eval_splits == ("test", "len100_200")
    assert sorted(r.train_examples for r in runs if r.condition == "data_efficiency") == [
        2_000, 10_000]
    assert {r.style for r in runs if r.condition == "larger_numbers"} == {"none", "medium"}


def test_paper_checkpoints_switch_to_sentencepiece_tasks(tmp_path, monkeypatch):
    from explistops_jax import lengths, vocab

    texts = ["[MAX 2 9 [MIN 4 7 ] 0 ]", "Final answer: 7", "SUM, add [0, 8, 4], sum is 12"] * 50
    model = vocab.train_sentencepiece_model(texts + [str(i) for i in range(300)],
                                            str(tmp_path / "sp"), vocab_size=200)
    monkeypatch.setenv(vocab.SPM_PATH_ENV, model)  # what --checkpoint sets from spiece.model
    runs = study.runs_for("paper", sizes=["small"], styles=["medium"],
                              checkpoints={"small": str(tmp_path)})
    small = next(r for r in runs if r.model == "t5_1_0_small")
    assert small.task == "explistops30_medium_sp"
    assert small.initial_checkpoint == str(tmp_path)
    assert small.run_info("paper")["from_pretrained"] is True
    # its lengths are measured with that vocabulary: they hold the _sp examples
    need = lengths.combine([lengths.split_lengths(small.task, s) for s in ("train", "validation")])
    assert need.longest["targets"] * 2 <= small.feature_lengths["targets"]  # packed, 2 x longest
    assert need.longest["targets"] > lengths.split_lengths(
        "explistops30_medium", "train").longest["targets"]  # more SentencePiece tokens
    # Sizes without a checkpoint (here the large length-generalization run) stay from scratch.
    large = next(r for r in runs if r.model == "t5_1_0_large")
    assert large.task == "explistops30_len50_100_medium" and large.initial_checkpoint is None


def test_t5x_commands_name_existing_gin_files(tmp_path):
    commands = gin_writer.t5x_commands(study.runs_for("paper"), tmp_path)
    assert len(commands) >= 16
    for line in commands:
        gin_file = line.split("--gin_file=")[1].split()[0]
        assert (REPO / gin_file).is_file(), gin_file
        assert f'MODEL_DIR="{tmp_path}/t5x/' in line


def test_unknown_preset_and_style_are_user_errors():
    with pytest.raises(UserError, match="unknown preset"):
        study.runs_for("gpu")
    with pytest.raises(UserError, match="explanation style"):
        study.runs_for("cpu", styles=["verbose"])


TINY = data.DatasetConfig(
    name="explistops_test_tiny", modulus=10,
    splits={
        "train": data.SplitConfig(SamplerConfig(min_length=4, max_length=8, max_depth=3,
                                                max_args=3, max_value=9), 48, 901),
        "test": data.SplitConfig(SamplerConfig(min_length=4, max_length=8, max_depth=3,
                                               max_args=3, max_value=9), 8, 902),
        "validation": data.SplitConfig(SamplerConfig(min_length=4, max_length=8, max_depth=3,
                                                     max_args=3, max_value=9), 4, 904),
        "longer": data.SplitConfig(SamplerConfig(min_length=8, max_length=12, max_depth=3,
                                                 max_args=3, max_value=9), 4, 903),
    })


@pytest.fixture(scope="module")
def tiny_tasks():
    seqio_tasks = pytest.importorskip("seqio_tasks")
    data.register_config(TINY)
    seqio_tasks.register_dataset_tasks(TINY.name, styles=["none", "medium"])
    return seqio_tasks


def test_tiny_run_end_to_end_and_resume(tiny_tasks, tmp_path):
    from explistops_jax import report

    runs = study.cpu_runs(
        ["none", "medium"], [0], dataset=TINY, epochs=1, batch_size=16,
        model_overrides=dict(num_encoder_layers=1, num_decoder_layers=1),
        feature_lengths={"none": {"inputs": 16, "targets": 4},
                         "medium": {"inputs": 16, "targets": 48}},
        eval_feature_lengths={"inputs": 24, "targets": 64}, eval_period=2)
    lines: list[str] = []
    records = tmp_path / "records"
    dirs = reproduce.run_all(runs, tmp_path, preset="cpu", progress=False, log=lines.append,
                             records=records)
    for run, run_dir in zip(runs, dirs):
        done = rundir.read_json(rundir.RunDir(run_dir).done_json)
        assert set(done["metrics"]) == {"test", "longer"}
        assert done["metrics"]["test"]["num_examples"] == 8
        assert 0.0 <= done["metrics"]["test"]["accuracy"] <= 1.0
        evals = [json.loads(line) for line in (run_dir / "eval_log.jsonl").read_text().splitlines()]
        assert [e["step"] for e in evals] == [2, 3]  # every EVAL_PERIOD steps and at the end
        info = json.loads((run_dir / "run.json").read_text())
        assert info["style"] == run.style and info["preset"] == "cpu"
    # A second invocation skips both runs and trains nothing.
    again: list[str] = []
    reproduce.run_all(runs, tmp_path, preset="cpu", progress=False, log=again.append)
    assert again == [f"[1/2] {runs[0].name}: done (skipped)",
                     f"[2/2] {runs[1].name}: done (skipped)"]
    # The records (no checkpoints) let another machine take the runs instead of training
    elsewhere: list[str] = []
    moved = reproduce.run_all(runs, tmp_path / "elsewhere", preset="cpu", progress=False,
                              log=elsewhere.append, records=records)
    assert elsewhere == [f"[{i}/2] {r.name}: {what}" for i, r in enumerate(runs, 1)
                         for what in (f"taken from {records}", "done (skipped)")]
    assert not list((tmp_path / "elsewhere").rglob("checkpoint_*"))
    # the same report (the records' loss curves keep every 10th step: plots aside)
    assert (report.write_report(moved, tmp_path / "from_records").read_text().split("## Plots")[0]
            == report.write_report(dirs, tmp_path / "from_runs").read_text().split("## Plots")[0])
    # A finding asking a finished run for a new split evaluates that split only.
    logged = (dirs[1] / "train_log.jsonl").read_text()
    wider = [dataclasses.replace(r, eval_splits=r.eval_splits + ("validation",))
             for r in runs]
    third: list[str] = []
    reproduce.run_all(wider, tmp_path, preset="cpu", progress=False, log=third.append)
    assert f"[2/2] {runs[1].name}: done; evaluating validation" in third
    done = rundir.read_json(rundir.RunDir(dirs[1]).done_json)
    assert set(done["metrics"]) == {"test", "longer", "validation"}
    assert done["metrics"]["validation"]["num_examples"] == 4
    assert (dirs[1] / "train_log.jsonl").read_text() == logged  # no retraining
    # Runs made with other settings (here: another learning rate) are not reused.
    changed = [dataclasses.replace(r, learning_rate=r.learning_rate * 2)
               for r in runs]
    with pytest.raises(UserError, match="trained with other settings.*learning_rate"):
        reproduce.run_all(changed, tmp_path, preset="cpu", progress=False, log=print)
    path = report.write_report(dirs, tmp_path)
    text = path.read_text()
    assert "cpu_tiny" in text and "medium" in text
