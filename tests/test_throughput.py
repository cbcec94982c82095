"""Speed in the step log (tokens/s, model TFLOP/s, MFU against a device's peak)
and the profile of chosen steps (train.profile_steps): a tiny T5 on the tiny
task, on the CPU."""

import types

import pytest

import tiny_trainer_fixtures as tiny
from explistops_jax import plan, rundir, summaries, throughput
from explistops_jax.errors import ConfigError, UserError
from explistops_jax.network import get_config


@pytest.fixture(scope="module", autouse=True)
def task():
    tiny.register_tiny_task()


def _train_t5(model_dir, steps, **kwargs):
    from explistops_jax import input_pipeline, optimizers, trainer
    from explistops_jax.train_state import CheckpointConfig

    data = input_pipeline.DataConfig(tiny.TASK, tiny.LENGTHS, batch_size=8)
    spec = trainer.ModelSpec("t5_1_1_tiny", vocab_size=384)
    result = trainer.train(spec, data, model_dir, optimizer=optimizers.adamw(1e-3),
                           train_steps=steps, checkpoint=CheckpointConfig(period=0, keep=1),
                           progress=False, **kwargs)
    return result, rundir.read_jsonl(rundir.RunDir(model_dir).train_log), spec.config()


def test_a_given_peak_gives_mfu_and_the_profile_of_steps_is_written(tmp_path):
    """MFU = plan.train_flops / step time / given peak (one CPU device), within
    1%; TFLOP/s from the same count; total tokens = non-padding inputs + targets;
    steps 1-2 traced into the TensorBoard folder."""
    import jax

    run = tmp_path / "run"
    _, log, config = _train_t5(run, 3, peak_flops=2e9, profile_steps="1:2")
    assert [r["step"] for r in log] == [1, 2, 3]
    flops = plan.train_flops(config, 8, (tiny.LENGTHS["inputs"], tiny.LENGTHS["targets"]))
    devices = len(jax.devices())
    for r in log:
        assert r["model_tflops_per_s"] == pytest.approx(flops / r["step_time_s"] / 1e12,
                                                        rel=1e-6)
        assert r["mfu"] == pytest.approx(flops / r["step_time_s"] / (2e9 * devices), rel=0.01)
        assert 0 < r["num_input_tokens"] <= 8 * tiny.LENGTHS["inputs"]
        assert r["total_tokens_per_s"] == pytest.approx(
            (r["num_input_tokens"] + r["num_tokens"]) / r["step_time_s"], rel=1e-6)
    traces = list((run / "tensorboard" / "train").rglob("*.xplane.pb"))
    assert traces and traces[0].stat().st_size > 0


def _device_kind() -> str:
    import jax

    return jax.devices()[0].device_kind


def test_no_peak_on_an_unknown_device_logs_tflops_but_no_mfu(tmp_path):
    _, log, _ = _train_t5(tmp_path / "run", 1)
    assert _device_kind() not in throughput.PEAK_BF16_FLOPS
    assert "mfu" not in log[0] and log[0]["model_tflops_per_s"] > 0
    assert not list((tmp_path / "run").rglob("*.xplane.pb"))  # no profile asked for


def test_throughput_fields_from_the_table_the_override_or_nothing():
    config = get_config("t5_1_1_tiny", vocab_size=128)
    flops = plan.train_flops(config, 4, (16, 8))
    h100 = types.SimpleNamespace(device_kind="NVIDIA H100 80GB HBM3")
    cpu = types.SimpleNamespace(device_kind="cpu")
    two = throughput.Throughput.for_run(config, 4, (16, 8), [h100, h100])
    assert two.model_flops_per_step == flops and two.peak_flops == 2 * 989e12
    fields = two.fields(0.5, 40.0, 20.0)
    assert fields == pytest.approx({"total_tokens_per_s": 120.0,
                                    "model_tflops_per_s": flops / 0.5 / 1e12,
                                    "mfu": flops / 0.5 / (2 * 989e12)})
    unknown = throughput.Throughput.for_run(config, 4, (16, 8), [cpu])
    assert unknown.peak_flops is None and "mfu" not in unknown.fields(0.5, 40.0, 20.0)
    given = throughput.Throughput.for_run(config, 4, (16, 8), [cpu], peak_flops=1e11)
    assert given.fields(0.5, 40.0, 20.0)["mfu"] == pytest.approx(flops / 0.5 / 1e11)
    other_model = throughput.Throughput.for_run(tiny.TinyConfig(), 4, (16, 8), [h100])
    assert other_model.fields(0.5, None, 20.0) == {}  # FLOPs unknown: no TFLOP/s, no MFU
    for kind in ("NVIDIA H200", "NVIDIA A100-SXM4-80GB", "TPU v4", "TPU v5 lite", "TPU v5p",
                 "TPU v6 lite"):
        assert throughput.PEAK_BF16_FLOPS[kind] > 1e14


def test_tiny_model_without_a_flop_count_logs_token_rates_only(tmp_path):
    tiny.train_tiny(tmp_path / "run", 2, period=0)
    log = rundir.read_jsonl(rundir.RunDir(tmp_path / "run").train_log)
    assert all(r["total_tokens_per_s"] > r["tokens_per_s"] > 0 for r in log)
    assert not any("mfu" in r or "model_tflops_per_s" in r for r in log)


@pytest.mark.parametrize("value", ["2-3", "3:1", "0:2", "a:b", "1:2:3", (1.0, 2.0), 5,
                                   [1], True])
def test_bad_profile_steps_are_a_user_error_before_anything_is_written(tmp_path, value):
    with pytest.raises(UserError, match="train.profile_steps") as err:
        _train_t5(tmp_path / "run", 3, profile_steps=value)
    assert "expected" in str(err.value) and not (tmp_path / "run").exists()


def test_profile_steps_forms_and_the_run_length():
    assert summaries.parse_profile_steps(None) is None
    assert summaries.parse_profile_steps("") is None
    assert summaries.parse_profile_steps("4:6") == (4, 6)
    assert summaries.parse_profile_steps((2, 2)) == (2, 2)
    assert summaries.parse_profile_steps([3, 5], total_steps=5) == (3, 5)
    with pytest.raises(ConfigError, match=r"past the run's last step \(4\).*1:4"):
        summaries.parse_profile_steps("3:5", total_steps=4)


@pytest.mark.parametrize("value", [0, -1.0, "fast", float("nan"), True])
def test_bad_peak_flops_is_a_user_error(value):
    with pytest.raises(ConfigError, match="train.peak_flops"):
        throughput.check_peak_flops(value)
    assert throughput.check_peak_flops("989e12") == 989e12
