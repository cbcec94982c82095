"""Every entry point turns a user mistake into one line, exit status 2, no traceback.

Drives ``python -m explistops_jax.train`` and ``.eval`` (their ``main(argv)``) and
``explistops train|eval|predict|reproduce|convert|params`` (``cli.main(argv)``)
in-process with at least ten mistakes per family (train, eval, predict, reproduce,
convert), and each entry point once as a subprocess (the real exit status, and
that standard error holds exactly that one line: no traceback, no TensorFlow
start-up noise). Every case asserts that the output it named was not left
behind. Most mistakes fail before any model is built; the few that need a model
use a tiny T5 checkpoint written once per module.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from explistops_jax import cli
from explistops_jax import eval as eval_main
from explistops_jax import train as train_main

ROOT = Path(__file__).resolve().parent.parent
FINETUNE = "--gin_file=gin_configs/runs/finetune.gin"
EVAL_GIN = "--gin_file=gin_configs/runs/eval.gin"
PREFIX = "explistops: error: "


@pytest.fixture(autouse=True)
def _run_in_repo_root(monkeypatch):
    monkeypatch.chdir(ROOT)  # gin files are named relative to the repository


@pytest.fixture(scope="module")
def task() -> str:
    """A registered task of the CPU demo's dataset (no explanations: short targets)."""
    import seqio

    import seqio_tasks  # noqa: F401

    name = "explistops10_cpu_none"  # the demo's own task, not one of its controls
    assert name in seqio.TaskRegistry.names(), "seqio_tasks registers the CPU demo's tasks"
    return name


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny T5 (domain vocabulary) as an explistops params checkpoint."""
    import jax
    from flax.core import meta

    from explistops_jax import checkpoints, network
    from explistops_jax.model import EncoderDecoderModel

    config = network.get_config("t5_1_1_tiny", vocab_size=128)
    shapes = {"encoder_input_tokens": (1, 4), "decoder_input_tokens": (1, 4)}
    params = meta.unbox(EncoderDecoderModel(config).get_initial_variables(
        jax.random.PRNGKey(0), shapes)["params"])
    out = tmp_path_factory.mktemp("ckpt") / "tiny"
    checkpoints.save(config, jax.device_get(params), out, "explistops")
    return out


@pytest.fixture
def corrupt(tmp_path) -> Path:
    path = tmp_path / "corrupt"
    path.mkdir()
    (path / "config.json").write_text("{not json")
    return path


@pytest.fixture
def a_file(tmp_path) -> Path:
    path = tmp_path / "a_file"
    path.write_text("not a directory\n")
    return path


def status_of(main, argv) -> int:
    """``main(argv)``'s exit status, also when argparse exits (a usage error)."""
    try:
        return main(argv)
    except SystemExit as stop:
        return stop.code


def one_line_error(status: int, err: str, *names: str) -> str:
    """Asserts exit status 2 and one line naming ``names``; returns the line."""
    assert status == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(PREFIX), err
    for name in names:
        assert name in lines[0], (name, lines[0])
    return lines[0]


# ----------------------------------------------------------------- train


def _train_cases(tmp: Path, task: str, a_file: Path):
    run = tmp / "run"
    model = ["--gin_bindings=MODEL = @trainer.ModelSpec()",
             "--gin_bindings=trainer.ModelSpec.preset = 't5_1_1_tiny'",
             f"--gin_bindings=MIXTURE_OR_TASK_NAME = '{task}'",
             "--gin_bindings=TASK_FEATURE_LENGTHS = {'inputs': 32, 'targets': 4}",
             "--gin_bindings=BATCH_SIZE = 2", "--gin_bindings=TRAIN_STEPS = 1",
             "--gin_bindings=EVAL_PERIOD = None", "--gin_bindings=train.progress = False",
             "--gin_bindings=input_pipeline.DataConfig.shuffle = False"]
    ok = [FINETUNE, *model, f"--gin_bindings=MODEL_DIR = '{run}'"]

    def bind(binding):
        return ok + [f"--gin_bindings={binding}"]

    return run, [
        ([], ["no gin file"]),
        (["--gin_file=no/such/file.gin"], ["no/such/file.gin", "not found"]),
        (bind("TRAIN_STEPS = ("), ["gin configuration"]),
        (bind("nosuch.thing = 1"), ["nosuch.thing"]),
        (bind("train.nosuch = 1"), ["nosuch"]),
        ([FINETUNE, *model], ["MODEL_DIR", "not set"]),
        (bind("MIXTURE_OR_TASK_NAME = 'no_such_task'"), ["no_such_task"]),
        (bind("trainer.ModelSpec.preset = 't5_nosuch'"), ["t5_nosuch", "t5_1_1_tiny"]),
        (bind("trainer.ModelSpec.overrides = {'emb_size': 8}"), ["emb_size"]),
        (bind("trainer.ModelSpec.overrides = {'attention_kernel': 'flash'}"),
         ["attention_kernel", "'flash'", "einsum"]),
        (bind("trainer.ModelSpec.overrides = {'attention_kernel': 'cudnn', "
              "'dtype': 'bfloat16'}"), ["attention_kernel='cudnn'", "NVIDIA GPU"]),
        (bind("partitioning.PartitionConfig.num_partitions = 3"), ["num_partitions=3"]),
        (bind("partitioning.PartitionConfig.logical_axis_rules = (('embed', 'nosuch'),)"),
         ["nosuch", "logical_axis_rules"]),
        (bind("TASK_FEATURE_LENGTHS = {'inputs': 0, 'targets': 4}"),
         ["TASK_FEATURE_LENGTHS"]),
        (bind("TASK_FEATURE_LENGTHS = {'inputs': 32}"), ["TASK_FEATURE_LENGTHS"]),
        (bind("train.num_microbatches = 3"), ["num_microbatches"]),
        (bind("USE_CACHED_TASKS = True"), ["USE_CACHED_TASKS"]),
        (bind("INITIAL_CHECKPOINT_PATH = '/no/such/checkpoint'"), ["/no/such/checkpoint"]),
        (bind(f"MODEL_DIR = '{a_file}/run'"), [str(a_file), "is a file"]),
    ]


@pytest.mark.parametrize("front", ["module", "cli"])
def test_train_mistakes_are_one_line(front, tmp_path, task, a_file, capsys):
    run, cases = _train_cases(tmp_path, task, a_file)
    assert len(cases) >= 10
    for argv, names in cases:
        if front == "module":
            status = status_of(train_main.main, argv)
        else:
            status = status_of(cli.main, ["train", *argv])
        one_line_error(status, capsys.readouterr().err, *names)
        assert not run.exists(), (argv, "left a run directory behind")


# ----------------------------------------------------------------- eval


def test_eval_module_mistakes_are_one_line(tmp_path, task, checkpoint, corrupt, a_file,
                                           capsys):
    out = tmp_path / "out"
    good = [EVAL_GIN, f"--gin.CHECKPOINT_PATH='{checkpoint}'",
            f"--gin.MIXTURE_OR_TASK_NAME='{task}'", f"--gin.EVAL_OUTPUT_DIR='{out}'",
            "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 4}",
            "--gin.evaluate.max_examples=2"]
    cases = [
        ([], ["no gin file", "eval.gin"]),
        ([EVAL_GIN], ["CHECKPOINT_PATH", "not set"]),
        (good + ["--gin.EVAL_SPLIT=("], ["gin configuration"]),
        (good + ["--gin.evaluate.nosuch=1"], ["nosuch"]),
        (good + ["--gin.CHECKPOINT_PATH='/no/such/ckpt'"], ["/no/such/ckpt"]),
        (good + [f"--gin.CHECKPOINT_PATH='{corrupt}'"], [str(corrupt)]),
        (good + ["--gin.MIXTURE_OR_TASK_NAME=None"], ["task"]),
        (good + ["--gin.MIXTURE_OR_TASK_NAME='no_such_task'"], ["no_such_task"]),
        (good + ["--gin.EVAL_SPLIT='no_such_split'"], ["no_such_split"]),
        (good + ["--gin.partitioning.PartitionConfig.num_partitions=3"], ["num_partitions=3"]),
        (good + ["--gin.partitioning.PartitionConfig.logical_axis_rules="
                 "(('embed', 'nosuch'),)"], ["nosuch"]),
        (good + [f"--gin.EVAL_OUTPUT_DIR='{a_file}/out'"], [str(a_file)]),
    ]
    for argv, names in cases:
        one_line_error(status_of(eval_main.main, argv), capsys.readouterr().err, *names)
        assert not out.exists(), (argv, "left an output directory behind")


def test_eval_command_mistakes_are_one_line(tmp_path, task, checkpoint, corrupt, a_file,
                                            capsys):
    out = tmp_path / "out"
    good = [str(checkpoint), "--task", task, "--output_dir", str(out),
            "--inputs_length", "32", "--targets_length", "4", "--max_examples", "2"]
    cases = [
        ([], ["CHECKPOINT", "--help"]),
        (["/no/such/ckpt"], ["/no/such/ckpt"]),
        ([str(corrupt), "--task", task, "--output_dir", str(out)], [str(corrupt)]),
        (good + ["--decode", "nosuch"], ["nosuch"]),
        ([str(checkpoint), "--inputs_length", "32"], ["--targets_length"]),
        (good + ["--inputs_length", "0"], ["--inputs_length"]),
        ([str(checkpoint), "--task", task, "--inputs_length", "32", "--targets_length",
          "4"], ["--output_dir"]),
        (good + ["--task", "no_such_task"], ["no_such_task"]),
        (good + ["--split", "no_such_split"], ["no_such_split"]),
        (good + ["--num_partitions", "3"], ["num_partitions=3"]),
        (good + ["--output_dir", f"{a_file}/out"], [str(a_file)]),
        ([str(checkpoint), "--output_dir", str(out)], ["task"]),
    ]
    for argv, names in cases:
        status = status_of(cli.main, ["eval", *argv])
        one_line_error(status, capsys.readouterr().err, *names)
        assert not out.exists(), (argv, "left an output directory behind")


# ----------------------------------------------------------------- predict


def test_predict_mistakes_are_one_line(tmp_path, task, checkpoint, corrupt, capsys):
    expr = "[MAX 2 9 [MIN 4 7 ] 0 ]"
    ckpt = ["--checkpoint", str(checkpoint)]
    cases = [
        (["[FOO 1 2 ]", *ckpt], ["FOO"]),
        (["[MAX 1 2", *ckpt], ["expected"]),
        (["", *ckpt], ["expected"]),
        ([expr], ["--checkpoint"]),
        ([expr, "--checkpoint", "/no/such/ckpt"], ["/no/such/ckpt"]),
        ([expr, "--checkpoint", str(corrupt)], [str(corrupt)]),
        ([expr, *ckpt, "--style", "nosuch"], ["nosuch"]),
        ([expr, *ckpt, "--decode", "nosuch"], ["nosuch"]),
        ([expr, *ckpt, "--modulus", "0"], ["--modulus"]),
        ([expr, *ckpt], ["--task", "--style"]),
        ([expr, *ckpt, "--task", "no_such_task"], ["no_such_task"]),
    ]
    for argv, names in cases:
        status = status_of(cli.main, ["predict", *argv])
        one_line_error(status, capsys.readouterr().err, *names)


# ----------------------------------------------------------------- reproduce


def test_reproduce_mistakes_are_one_line(tmp_path, a_file, monkeypatch, capsys):
    out = tmp_path / "runs"
    good = ["--out", str(out), "--dry-run"]
    monkeypatch.delenv("EXPLISTOPS_SPM_PATH", raising=False)
    cases = [
        (good + ["--seeds", "0,x"], ["--seeds"]),
        (good + ["--styles", "none,bogus"], ["bogus"]),
        (good + ["--styles", "all,none"], ["all"]),
        (good + ["--preset", "nosuch"], ["nosuch"]),
        (good + ["--nosuch-flag"], ["--nosuch-flag"]),
        (good + ["--preset", "paper", "--checkpoint", "small"], ["small", "SIZE=PATH"]),
        (good + ["--preset", "paper", "--checkpoint", "small=/no/such/ckpt"],
         ["/no/such/ckpt"]),
        (good + ["--preset", "paper", "--checkpoint", f"small={a_file}"],
         ["EXPLISTOPS_SPM_PATH"]),
        (good + ["--preset", "paper", "--sizes", "small,huge"], ["huge"]),
        (good + ["--preset", "cpu-study", "--finding", "headline,bogus"], ["bogus"]),
        (good + ["--preset", "cpu", "--finding", "length"], ["--finding", "cpu-study"]),
        (good + ["--preset", "cpu-study", "--styles", "long"], ["--styles"]),
        (["--out", f"{a_file}/runs", "--dry-run"], [str(a_file)]),
    ]
    for argv, names in cases:
        status = status_of(cli.main, ["reproduce", *argv])
        one_line_error(status, capsys.readouterr().err, *names)
        assert not out.exists(), (argv, "left an output directory behind")
    monkeypatch.setenv("EXPLISTOPS_SPM_PATH", str(a_file))
    argv = good + ["--preset", "paper", "--checkpoint", f"huge={a_file}"]
    status = status_of(cli.main, ["reproduce", *argv])
    one_line_error(status, capsys.readouterr().err, "huge")
    assert not out.exists()


# ----------------------------------------------------------------- convert, params


def test_convert_and_params_mistakes_are_one_line(tmp_path, checkpoint, corrupt, a_file,
                                                  capsys):
    out = tmp_path / "converted"
    empty = tmp_path / "empty"
    empty.mkdir()
    src = ["--from", "explistops", str(checkpoint), "--to", "hf"]
    cases = [
        (["--from", "explistops", "/no/such/ckpt", "--to", "hf", str(out)], ["/no/such/ckpt"]),
        (["--from", "explistops", str(corrupt), "--to", "hf", str(out)], [str(corrupt)]),
        (["--from", "t5x", str(empty), "--to", "hf", str(out)], [str(empty)]),
        (["--from", "hf", str(empty), "--to", "t5x", str(out)], [str(empty)]),
        (["--from", "bogus", str(checkpoint), "--to", "hf", str(out)], ["bogus"]),
        ([*src], ["OUT"]),
        ([*src, str(out), "--model", "t5_nosuch"], ["t5_nosuch"]),
        ([*src, str(out), "--model", "t5_1_0_small"], [str(checkpoint)]),
        ([*src, str(out), "--step", "-1"], ["--step"]),
        ([*src, f"{a_file}/out"], [str(a_file)]),
    ]
    for argv, names in cases:
        status = status_of(cli.main, ["convert", *argv])
        one_line_error(status, capsys.readouterr().err, *names)
        assert not out.exists(), (argv, "left an output directory behind")
    status = status_of(cli.main, ["convert", *src, str(corrupt)])
    one_line_error(status, capsys.readouterr().err, str(corrupt), "exists")
    assert [p.name for p in corrupt.iterdir()] == ["config.json"]  # left as it was
    status = status_of(cli.main, ["params", "--model", "t5_nosuch"])
    one_line_error(status, capsys.readouterr().err, "t5_nosuch")
    status = status_of(cli.main, ["params", "--model", "t5_1_0_tiny", "--vocab-size", "0"])
    one_line_error(status, capsys.readouterr().err, "--vocab-size")


# ----------------------------------------------------------------- real processes


def _run(argv: list[str], **environ: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]),
           **environ}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # the entry point must quiet TensorFlow itself
    return subprocess.run([sys.executable, *argv], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


def test_each_entry_point_as_a_process(tmp_path, a_file):
    run = tmp_path / "run"
    cases = [
        (["-m", "explistops_jax.train", FINETUNE, f"--gin.MODEL_DIR='{run}'",
          "--gin.MODEL=@trainer.ModelSpec()", "--gin.trainer.ModelSpec.preset='t5_1_1_tiny'",
          "--gin.MIXTURE_OR_TASK_NAME='no_such_task'",
          "--gin.TASK_FEATURE_LENGTHS={'inputs': 8, 'targets': 8}"], ["no_such_task"]),
        (["-m", "explistops_jax.cli", "train", FINETUNE, "--model_dir", str(run),
          "--gin_bindings=nosuch.thing = 1"], ["nosuch.thing"]),
        (["-m", "explistops_jax.eval", EVAL_GIN, "--gin.CHECKPOINT_PATH='/no/such/ckpt'"],
         ["/no/such/ckpt"]),
        (["-m", "explistops_jax.cli", "eval", "/no/such/ckpt"], ["/no/such/ckpt"]),
        (["-m", "explistops_jax.cli", "predict", "[MAX 1 2 ]", "--checkpoint",
          "/no/such/ckpt"], ["/no/such/ckpt"]),
        (["-m", "explistops_jax.cli", "reproduce", "--styles", "bogus", "--out",
          str(run), "--dry-run"], ["bogus"]),
        (["-m", "explistops_jax.cli", "convert", "--from", "hf", "/no/such/ckpt", "--to",
          "t5x", str(run)], ["/no/such/ckpt"]),
        (["-m", "explistops_jax.cli", "params", "--model", "t5_nosuch"], ["t5_nosuch"]),
        (["-m", "explistops_jax.cli", "train", "--nosuch-flag"], ["--nosuch-flag"]),
    ]
    for argv, names in cases:
        proc = _run(argv)
        one_line_error(proc.returncode, proc.stderr, *names)
        assert proc.stdout == ""
        assert not run.exists(), (argv, "left a directory behind")


def test_runs_that_fail_while_their_step_compiles_exit_with_their_error(tmp_path, task, a_file):
    """The trainer compiles its step in a thread while it restores the initial
    checkpoint; a missing one fails while XLA is still compiling. Three such runs
    in one process, then exit: the process ends with the runs' error (status 2),
    not an abort from a compiling thread killed at interpreter exit (it did,
    two runs in three, with "FATAL: exception not rethrown" and SIGABRT)."""
    _, cases = _train_cases(tmp_path, task, a_file)
    argv = next(a for a, names in cases if "/no/such/checkpoint" in names)
    script = ("import sys; from explistops_jax import train; "
              f"sys.exit(max(train.main({argv!r}) for _ in range(3)))")
    # no compilation cache: a step loaded from it would be ready before the failure
    proc = _run(["-c", script], EXPLISTOPS_COMPILATION_CACHE="off")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "FATAL" not in proc.stderr
    assert proc.stderr.count("/no/such/checkpoint") == 3
