"""run.json: one module writes and reads a run's record."""

import json

import pytest

from explistops_jax import network, run_info, rundir, study
from explistops_jax.errors import UserError
from explistops_jax.input_pipeline import DataConfig


def test_training_and_study_facts_round_trip(tmp_path):
    config = network.get_config("t5_1_1_tiny", dtype="bfloat16", attention_kernel="xla")
    data = DataConfig("explistops10_cpu_medium", {"inputs": 32, "targets": 96}, batch_size=8,
                      pack=True, num_epochs=3)
    run = study.cpu_runs(["medium"], [1])[0]
    info = {**run_info.training_facts(config, data, 939), **run.run_info("cpu")}
    run_info.write(tmp_path, info)
    read = run_info.read(tmp_path)
    assert read == json.loads(json.dumps(info))
    assert read["model_config"]["dtype"] == "bfloat16"         # dtypes by name
    assert "attention_kernel" not in read["model_config"]        # a machine's choice
    assert read["mixture_or_task_name"] == "explistops10_cpu_medium"
    assert (read["total_steps"], read["pack"], read["seed"]) == (939, True, 1)
    assert set(run_info.STUDY_KEYS) <= set(read)
    assert run_info.training_facts(None, data, 1)["model_config"] is None


def test_study_facts_name_every_key_and_no_other():
    facts = dict.fromkeys(run_info.STUDY_KEYS, 0)
    assert run_info.study_facts(**facts) == facts
    with pytest.raises(TypeError, match="missing \\['warmup_steps'\\]"):
        run_info.study_facts(**{k: 0 for k in run_info.STUDY_KEYS if k != "warmup_steps"})
    with pytest.raises(TypeError, match="unknown \\['colour'\\]"):
        run_info.study_facts(**facts, colour=1)
    assert set(run_info.SAME_TRAINING) <= set(run_info.STUDY_KEYS)


def test_readers_say_what_is_wrong(tmp_path):
    assert run_info.read_lenient(tmp_path) == ({}, "no run.json")
    with pytest.raises(UserError):
        run_info.read(tmp_path)
    (tmp_path / rundir.RUN_JSON).write_text("[1, 2]")
    assert run_info.read_lenient(tmp_path) == ({}, "run.json is not a JSON object")
    with pytest.raises(UserError, match="JSON object"):
        run_info.read(tmp_path)
    (tmp_path / rundir.RUN_JSON).write_text("{")
    assert run_info.read_lenient(tmp_path)[1] == "run.json unreadable (JSONDecodeError)"


def test_recorded_for_finds_the_run_of_a_checkpoint(tmp_path):
    run_info.write(tmp_path, {"mixture_or_task_name": "explistops10_cpu_none"})
    checkpoint = rundir.RunDir(tmp_path).checkpoint(10)
    for item in (rundir.STATE_ITEM, rundir.RUN_ITEM):  # a finished checkpoint of ours
        (checkpoint / item).mkdir(parents=True)
    assert run_info.recorded_for(checkpoint)["mixture_or_task_name"] == "explistops10_cpu_none"
    assert run_info.recorded_for(tmp_path)["mixture_or_task_name"] == "explistops10_cpu_none"
    assert run_info.recorded_for(tmp_path / "elsewhere") is None  # not one of ours
