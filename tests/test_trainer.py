"""The trainer: input stream, train step, checkpoints, resume after SIGKILL,
NaN stop, logs. A tiny stand-in model (tests/tiny_trainer_fixtures.py) on a tiny
task keeps every step a millisecond."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tiny_trainer_fixtures as tiny
from explistops_jax import input_pipeline, optimizers, rundir, train_step
from explistops_jax.errors import UserError
from explistops_jax.train_state import checkpoint_steps

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


@pytest.fixture(scope="module", autouse=True)
def task():
    tiny.register_tiny_task()


def _log(model_dir) -> list[dict]:
    return rundir.read_jsonl(rundir.RunDir(model_dir).train_log, lenient=True)


def _decode_rows(batch) -> list[str]:
    return [bytes(int(t) - 3 for t in row if t > 2).decode() for row in batch["encoder_input_tokens"]]


# ----------------------------------------------------------------- input stream


def test_stream_epochs_cover_every_example_once_and_resume_exactly():
    config = input_pipeline.DataConfig(tiny.TASK, tiny.LENGTHS, batch_size=8, seed=3,
                                       num_epochs=2)
    stream = input_pipeline.BatchStream(config)
    assert stream.steps_per_epoch == 6 and stream.total_steps() == 12  # 48 examples
    items = list(stream.iterate())
    assert [p for p, _ in items][:7] == [input_pipeline.Position(0, i) for i in range(1, 7)] + [
        input_pipeline.Position(1, 1)]
    words = tiny._words("train", 48)
    for epoch in (0, 1):
        rows = [w for _, b in items[epoch * 6:(epoch + 1) * 6] for w in _decode_rows(b)]
        assert sorted(w for w in rows if w) == sorted(words)
    order = lambda e: [w for _, b in items[e * 6:(e + 1) * 6] for w in _decode_rows(b)]
    assert order(0) != order(1)  # a new shuffle each epoch
    # resuming at any position gives the same batches as going on
    resumed = list(input_pipeline.BatchStream(config).iterate(items[3][0]))
    assert len(resumed) == len(items) - 4
    for (p1, b1), (p2, b2) in zip(items[4:], resumed):
        assert p1 == p2
        for key in b1:
            np.testing.assert_array_equal(b1[key], b2[key])


def test_stream_packing_and_errors():
    config = input_pipeline.DataConfig(tiny.TASK, tiny.LENGTHS, batch_size=4, pack=True,
                                       num_epochs=1)
    stream = input_pipeline.BatchStream(config)
    batches = [b for _, b in stream.iterate()]
    assert len(batches) == stream.steps_per_epoch < 48 / 4  # packed: fewer rows
    assert batches[0]["encoder_segment_ids"].max() > 1
    with pytest.raises(UserError, match="USE_CACHED_TASKS"):
        input_pipeline.BatchStream(
            input_pipeline.DataConfig(tiny.TASK, tiny.LENGTHS, use_cached=True))
    with pytest.raises(UserError, match="unknown SeqIO task"):
        input_pipeline.get_provider("no_such_task_anywhere")


# ----------------------------------------------------------------- the step


def test_microbatches_give_the_full_batch_update():
    model = tiny.TinyModel()
    stream = input_pipeline.BatchStream(
        input_pipeline.DataConfig(tiny.TASK, tiny.LENGTHS, batch_size=8))
    batch = next(stream.iterate())[1]
    params = jax.tree.map(jnp.asarray, model.get_initial_variables(
        jax.random.PRNGKey(0), {"encoder_input_tokens": (1, 12),
                                "decoder_input_tokens": (1, 12)})["params"])
    params = jax.tree.map(lambda x: getattr(x, "value", x), params,
                          is_leaf=lambda x: hasattr(x, "value"))
    tx, schedule = optimizers.adamw(1e-2).build()
    state = train_step.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                               opt_state=tx.init(params), rng=jax.random.PRNGKey(1))
    results = [jax.jit(train_step.make_train_step(model, tx, schedule, k))(state, batch)
               for k in (1, 4)]
    (s1, m1), (s4, m4) = results
    assert float(m4["loss"]) == pytest.approx(float(m1["loss"]), rel=1e-6)
    assert float(m4["accuracy"]) == pytest.approx(float(m1["accuracy"]), rel=1e-6)
    assert float(m4["num_tokens"]) == float(m1["num_tokens"])
    for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s4.params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------- runs


def test_run_directory_logs_checkpoints_and_resume(tmp_path):
    run = tmp_path / "run"
    result = tiny.train_tiny(run, 8, period=4, keep=1)
    assert result.step == 8 and checkpoint_steps(run) == [8]  # keep=1
    log = _log(run)
    assert [r["step"] for r in log] == list(range(1, 9))
    for key in ("loss", "accuracy", "learning_rate", "tokens_per_s", "step_time_s",
                "num_tokens", "grad_norm"):
        assert all(math.isfinite(r[key]) for r in log), key
    assert log[0]["learning_rate"] == pytest.approx(1e-2)
    info = json.loads((run / "run.json").read_text())
    assert info["mixture_or_task_name"] == tiny.TASK and info["total_steps"] == 8
    assert list((run / "tensorboard" / "train").glob("events.out.tfevents.*"))
    # a longer run in the same directory continues from step 8
    tiny.train_tiny(run, 12, period=4, keep=1)
    assert [r["step"] for r in _log(run)] == list(range(1, 13))
    assert checkpoint_steps(run) == [12]
    # a finished run returns at once, with its last logged metrics
    again = tiny.train_tiny(run, 12, period=4, keep=1)
    assert again.step == 12 and again.metrics["loss"] == _log(run)[-1]["loss"]


def test_epochs_set_the_length(tmp_path):
    result = tiny.train_tiny(tmp_path / "run", None, epochs=2, period=0)
    assert result.step == 12  # 2 epochs x 6 batches


def test_sigkill_resumes_the_same_loss_curve(tmp_path):
    """A run killed with SIGKILL (no chance to clean up) resumes from its last
    checkpoint and logs exactly the losses of an uninterrupted run."""
    steps = 20
    reference = tmp_path / "reference"
    tiny.train_tiny(reference, steps)
    killed = tmp_path / "killed"
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=f"{HERE}{os.pathsep}{ROOT}")
    proc = subprocess.Popen([sys.executable, str(HERE / "tiny_trainer_fixtures.py"),
                             str(killed), str(steps), "0.05"], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    try:
        while time.time() < deadline and proc.poll() is None:
            logged = _log(killed)
            if 10 in checkpoint_steps(killed) and logged and logged[-1]["step"] >= 12:
                break
            time.sleep(0.02)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    last = max(checkpoint_steps(killed))
    assert last < steps and _log(killed)[-1]["step"] > last  # steps beyond it are lost
    tiny.train_tiny(killed, steps)
    got, want = _log(killed), _log(reference)
    assert [r["step"] for r in got] == list(range(1, steps + 1))
    np.testing.assert_allclose([r["loss"] for r in got], [r["loss"] for r in want],
                               rtol=0, atol=1e-6)


def test_nan_loss_stops_with_the_last_good_checkpoint(tmp_path, capsys):
    """lr 1e30 blows the parameters up: the run exits 1 with a clear message and
    keeps the checkpoints saved before the loss stopped being finite."""
    from explistops_jax import train

    tiny.register_gin()
    run = tmp_path / "run"
    status = train.main([
        "--gin_file=gin_configs/runs/finetune.gin",
        f"--gin.MODEL_DIR='{run}'", f"--gin.MIXTURE_OR_TASK_NAME='{tiny.TASK}'",
        f"--gin.TASK_FEATURE_LENGTHS={tiny.LENGTHS}", "--gin.TRAIN_STEPS=20",
        "--gin.OPTIMIZER=@optimizers.adamw()", "--gin.LEARNING_RATE=1e30",
        "--gin.EVAL_PERIOD=None", "--gin_bindings=MODEL = @tiny.TinyModel()",
        "--gin_bindings=trainer.CheckpointConfig.period = 1",
        "--gin_bindings=train.progress = False"])
    err = capsys.readouterr().err
    assert status == 1
    assert "training stopped" in err and "last good checkpoint is step" in err
    steps = checkpoint_steps(run)
    assert steps and max(steps) < 20
    assert all(math.isfinite(r["loss"]) for r in _log(run))
    assert _log(run)[-1]["step"] == max(steps)  # nothing logged past the last good one
    from explistops_jax.checkpoints import t5x  # the checkpoint reads back, finite

    params = t5x.read_orbax_tree(run / f"checkpoint_{max(steps)}" / "state", "target")
    assert params and all(np.isfinite(v).all() for v in params.values())


def test_run_needs_a_length(tmp_path):
    with pytest.raises(UserError, match="TRAIN_STEPS or EPOCHS"):
        tiny.train_tiny(tmp_path / "run", None)


def test_command_line_flags_become_gin_bindings():
    import argparse

    from explistops_jax import gin_config
    from explistops_jax.commands import train as train_command

    rest, bindings = gin_config.split_dot_flags(
        ["--gin_file=x.gin", '--gin.MODEL_DIR="/tmp/run"', "--gin.TRAIN_STEPS=5"])
    assert rest == ["--gin_file=x.gin"]
    assert bindings == ['MODEL_DIR = "/tmp/run"', "TRAIN_STEPS = 5"]
    args = argparse.Namespace(model_dir="runs/a", train_steps=10, epochs=None,
                              batch_size=None, task="explistops30_medium")
    assert train_command.shortcut_bindings(args) == [
        "MODEL_DIR = 'runs/a'", "TRAIN_STEPS = 10",
        "MIXTURE_OR_TASK_NAME = 'explistops30_medium'"]
    with pytest.raises(UserError, match="gin file not found"):
        gin_config.parse(["no/such/file.gin"], [])


def test_the_step_compiled_ahead_is_used_only_for_a_batch_laid_out_like_its_own(caplog):
    """train() compiles the step in a thread while the state initialises; the loop
    takes that program when the first real batch has the template's layout, and
    otherwise (or when the compilation failed) compiles for the real batch."""
    import concurrent.futures

    from explistops_jax import trainer

    step = jax.jit(lambda state, batch: (state + batch["x"].sum(), {}))
    batch = {"x": jnp.ones((4, 3), jnp.int32)}
    state = jnp.int32(0)

    def loop_with(result=None, error=None, template=batch):
        future = concurrent.futures.Future()
        future.set_exception(error) if error else future.set_result(result)
        none = dict.fromkeys(("stream", "checkpoints", "writer", "progress", "evaluator",
                              "eval_period", "total_steps", "run_info", "partitioner"))
        loop = trainer._Loop(step_fn=step, compiling=(future, template), **none)
        loop._compile(state, batch)
        return loop._compiled

    ahead = step.lower(state, batch).compile()
    assert loop_with(ahead) is ahead
    other = loop_with(ahead, template={"x": jnp.ones((2, 3), jnp.int32)})
    assert other is not ahead and int(other(state, batch)[0]) == 12
    with caplog.at_level("WARNING"):
        again = loop_with(error=RuntimeError("out of memory while compiling"))
    assert int(again(state, batch)[0]) == 12
    assert "compiling the step ahead failed (RuntimeError: out of memory" in caplog.text
