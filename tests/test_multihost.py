"""Several processes on one machine (loopback, gloo, forced host devices) give
the same run as one process: losses (padded and packed batches), checkpoints,
evaluation, a resume after a process was killed; packing's sizes pass is split
between them; and a job that cannot form fails in one line.

Every process is a subprocess with a timeout, so no test can hang. Reference
runs are one process with 4 host devices; the multi-process runs are 2
processes x 2 devices, started with ``explistops launch``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from explistops_jax import launcher, rundir

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
RUN_TIMEOUT_S = 300       # one training run, every process (a loaded 2-core machine)
FAIL_TIMEOUT_S = 60       # a job that cannot form: initialization timeout 5 s + start-up
LOST_PEER_TIMEOUT_S = 30  # the survivor of a SIGKILL exits within this
RTOL = 1e-5

TASK = "explistops10_cpu_none"
STEPS = 20
# data x model mesh (with packing) -> (num_partitions, pack). 2x2: one data
# shard per process, the model split within each; 4x1 packed: two data shards per
# process, whose processes split the examples' sizes pass (an allgather) and lay
# out the rows. A padded 4x1 run would add a third of this module's time and no
# new case: its processes cut their rows as 2x2's do (half the global batch
# each) and place them on two data shards as the packed run's do.
MESHES = {"2x2": (2, False), "4x1_packed": (1, True)}


def train_arguments(model_dir: Path, num_partitions: int, pack: bool = False) -> list[str]:
    """``explistops train`` arguments: a T5 1.1 tiny shrunk further, 20 steps,
    checkpoints every 10, evaluation of 8 validation examples at the end."""
    bindings = [
        "MODEL = @trainer.ModelSpec()",
        "trainer.ModelSpec.preset = 't5_1_1_tiny'",
        "trainer.ModelSpec.overrides = {'num_encoder_layers': 1, 'num_decoder_layers': 1, "
        "'emb_dim': 16, 'num_heads': 2, 'head_dim': 8, 'mlp_dim': 32}",
        f"MIXTURE_OR_TASK_NAME = '{TASK}'",
        "TASK_FEATURE_LENGTHS = {'inputs': 32, 'targets': 4}",
        "BATCH_SIZE = 8", f"TRAIN_STEPS = {STEPS}", "EVAL_PERIOD = None",
        "DROPOUT_RATE = 0.1", "LEARNING_RATE = 0.01",
        "trainer.EvalConfig.max_examples = 12", "trainer.EvalConfig.batch_size = 8",
        "trainer.CheckpointConfig.period = 10", "trainer.CheckpointConfig.keep = None",
        "train.progress = False",
        f"partitioning.PartitionConfig.num_partitions = {num_partitions}",
        f"input_pipeline.DataConfig.pack = {pack}",
    ]
    args = ["--gin_file", "gin_configs/runs/finetune.gin", "--model_dir", str(model_dir)]
    for binding in bindings:
        args += ["--gin_bindings", binding]
    return args


def environment(devices: int | None = None) -> dict[str, str]:
    env = launcher.child_environment(devices)
    env.update(PYTHONPATH=os.pathsep.join([str(ROOT), str(HERE)]), JAX_PLATFORMS="cpu",
               TF_CPP_MIN_LOG_LEVEL="3")
    return env


def run_single(model_dir: Path, num_partitions: int,
               pack: bool = False) -> subprocess.CompletedProcess:
    """One process, 4 host devices."""
    return subprocess.run(
        [sys.executable, "-m", "explistops_jax.cli", "train",
         *train_arguments(model_dir, num_partitions, pack)],
        cwd=ROOT, env=environment(4), capture_output=True, text=True,
        timeout=RUN_TIMEOUT_S)


def run_launched(model_dir: Path, num_partitions: int,
                 pack: bool = False) -> subprocess.CompletedProcess:
    """``explistops launch --processes 2 --devices-per-process 2``."""
    return subprocess.run(
        [sys.executable, "-m", "explistops_jax.cli", "launch", "--processes", "2",
         "--devices-per-process", "2", "--",
         *train_arguments(model_dir, num_partitions, pack)],
        cwd=ROOT, env=environment(), capture_output=True, text=True,
        timeout=RUN_TIMEOUT_S)


def losses(model_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in rundir.read_jsonl(Path(model_dir) / "train_log.jsonl")}


def assert_close_losses(got: dict[int, float], want: dict[int, float], steps) -> None:
    for step in steps:
        assert got[step] == pytest.approx(want[step], rel=RTOL), step


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, dict[str, Path]]:
    """For each mesh: the run of one process x 4 devices and of 2 processes x 2."""
    out = {}
    for mesh, (partitions, pack) in MESHES.items():
        base = tmp_path_factory.mktemp(f"mesh_{mesh}")
        single, multi = base / "single", base / "multi"
        done = run_single(single, partitions, pack)
        assert done.returncode == 0, done.stderr[-3000:]
        done = run_launched(multi, partitions, pack)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
        for index in (0, 1):  # every line carries its process index
            assert f"[{index}] trained {multi} to step {STEPS}" in done.stdout
        out[mesh] = {"single": single, "multi": multi}
    return out


@pytest.mark.parametrize("mesh", list(MESHES))
def test_two_processes_train_with_the_losses_of_one(runs, mesh):
    single, multi = losses(runs[mesh]["single"]), losses(runs[mesh]["multi"])
    assert sorted(single) == sorted(multi) == list(range(1, STEPS + 1))
    assert_close_losses(multi, single, range(1, STEPS + 1))
    assert len({round(v, 3) for v in single.values()}) > 5  # it trains: the losses move


@pytest.mark.parametrize("mesh", list(MESHES))
def test_evaluation_across_processes_equals_one_process(runs, mesh):
    """Each process decodes its rows; process 0 writes the files: the same
    predictions and metrics as one process."""
    def read(model_dir):
        run = rundir.RunDir(model_dir)
        metrics = rundir.read_json(run.metrics(TASK, "validation", STEPS))
        predictions = rundir.read_jsonl(run.predictions(TASK, "validation", STEPS))
        return metrics, [(p["index"], p["prediction"]) for p in predictions]

    (m1, p1), (m2, p2) = read(runs[mesh]["single"]), read(runs[mesh]["multi"])
    assert len(p1) == 12 and p2 == p1
    assert m2["num_examples"] == m1["num_examples"] == 12
    assert sorted(m2["metrics"]) == sorted(m1["metrics"])
    for name, value in m1["metrics"].items():  # None: NaN, nothing to count
        assert (m2["metrics"][name] is None) == (value is None), name
        if value is not None:
            assert m2["metrics"][name] == pytest.approx(value, rel=RTOL), name


def test_checkpoints_of_two_processes_restore_in_one(runs):
    """Orbax checkpoints written by both processes of a (2, 2) mesh restore in
    this single process with the parameters of the one-process run."""
    from explistops_jax import train_state

    for step in (10, STEPS):
        params = {}
        for kind in ("single", "multi"):
            _, tree, got_step, _ = train_state.load_model_and_params(
                runs["2x2"][kind], step=step)
            assert got_step == step
            params[kind] = {k: np.asarray(v) for k, v in _flat(tree).items()}
        assert sorted(params["multi"]) == sorted(params["single"])
        for name, value in params["single"].items():
            np.testing.assert_allclose(params["multi"][name], value, rtol=1e-4, atol=1e-6,
                                       err_msg=name)


def _flat(tree) -> dict:
    import jax

    return {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def test_a_killed_process_stops_the_other_and_both_resume_exactly(runs, tmp_path):
    """SIGKILL process 1 after the step-10 checkpoint: process 0 exits with one
    line within LOST_PEER_TIMEOUT_S; both started again resume from step 10 and
    log the losses of the uninterrupted run for steps 11-20."""
    model_dir = tmp_path / "killed"
    port = launcher.free_port()
    procs = [subprocess.Popen(
        [sys.executable, str(HERE / "multihost_worker.py"), "0.5",
         *train_arguments(model_dir, 2), "--coordinator_address", f"127.0.0.1:{port}",
         "--num_processes", "2", "--process_id", str(i), "--initialization_timeout", "60"],
        cwd=ROOT, env=environment(2), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True) for i in range(2)]
    try:
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while 10 not in rundir.RunDir(model_dir).checkpoint_steps():
            assert time.monotonic() < deadline, "no step-10 checkpoint"
            assert all(p.poll() is None for p in procs), procs[0].communicate()[1][-3000:]
            time.sleep(0.2)
        procs[1].send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        _, err = procs[0].communicate(timeout=LOST_PEER_TIMEOUT_S)
        waited = time.monotonic() - killed_at
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    assert procs[0].returncode == 1, err[-3000:]
    assert waited < LOST_PEER_TIMEOUT_S
    assert "explistops: error: process 1 of 2 stopped before finishing" in err
    assert 10 in rundir.RunDir(model_dir).checkpoint_steps()
    assert 20 not in rundir.RunDir(model_dir).checkpoint_steps()

    done = run_launched(model_dir, 2)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    resumed, whole = losses(model_dir), losses(runs["2x2"]["multi"])
    assert sorted(resumed) == list(range(1, STEPS + 1))  # the log reads as one run
    assert_close_losses(resumed, whole, range(11, STEPS + 1))


# One process of a two-process job that builds a packing stream of a 37-example
# split and writes which examples it generated and the sizes it ended with.
_SIZES_PROCESS = """
import json, sys
import jax
index, port, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
jax.distributed.initialize(f"127.0.0.1:{port}", 2, index, initialization_timeout=60)
from explistops_jax import data, grain_pipeline, input_pipeline, own_tasks
from explistops_jax.listops import SamplerConfig

sampler = SamplerConfig(min_length=4, max_length=12, max_depth=3, max_args=4, max_value=9)
data.register_config(data.DatasetConfig(name="explistops_test_split", modulus=10,
                                        splits={"train": data.SplitConfig(sampler, 37, 1101)}))
generated, real = [], data.examples

def counting(config, split, start=0, stop=None, **kwargs):
    generated.extend(range(start, stop))
    return real(config, split, start, stop, **kwargs)

data.examples = counting
lengths = {"inputs": 48, "targets": 96}
config = input_pipeline.DataConfig("explistops_test_split_medium", lengths, batch_size=4,
                                   pack=True, shuffle=True)
stream = input_pipeline.BatchStream(config, shard_index=index, num_shards=2)
mine = sorted(generated)
one = grain_pipeline.GrainSource(own_tasks.get_tasks("explistops_test_split_medium")[0],
                                 split="train", lengths=lengths, local_batch_size=4,
                                 pack=True, shuffle=True)
json.dump({"generated": mine, "sizes": stream.source._sizes().tolist(),
           "one_process": one._sizes().tolist(), "steps": stream.steps_per_epoch},
          open(out, "w"))
"""


def test_packing_processes_split_the_sizes_pass(tmp_path):
    """Two real processes (gloo): building a packing stream, each generates
    only its block of the split (19 and 18 of 37 examples) and both end with
    every example's size, equal to one process's whole pass."""
    port = str(launcher.free_port())
    procs = [subprocess.Popen([sys.executable, "-c", _SIZES_PROCESS, str(i), port,
                               str(tmp_path / f"{i}.json")], cwd=ROOT, env=environment(1),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    try:
        for proc in procs:
            _, err = proc.communicate(timeout=RUN_TIMEOUT_S)
            assert proc.returncode == 0, err[-3000:]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    got = [json.loads((tmp_path / f"{i}.json").read_text()) for i in range(2)]
    assert got[0]["generated"] == list(range(19)) and got[1]["generated"] == list(range(19, 37))
    for result in got:
        assert len(result["sizes"]) == 37 and result["sizes"] == result["one_process"]
        assert all(1 <= a <= 48 and 1 <= b <= 96 for a, b in result["sizes"])
    assert got[0]["steps"] == got[1]["steps"] >= 1


# ----------------------------------------------------------------- a job that cannot form


def start(process_id: int, num_processes: int, port: int, tmp_path: Path,
          timeout: int = 5) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "explistops_jax.train",
         "--gin_file=gin_configs/runs/finetune.gin", f"--gin.MODEL_DIR='{tmp_path}/run'",
         "--coordinator_address", f"127.0.0.1:{port}", "--num_processes", str(num_processes),
         "--process_id", str(process_id), "--initialization_timeout", str(timeout)],
        cwd=ROOT, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)


def one_line_error(proc: subprocess.Popen, *words: str) -> str:
    """Waits (bounded); the process failed with exit 2 and one error line."""
    _, err = proc.communicate(timeout=FAIL_TIMEOUT_S)
    lines = [line for line in err.splitlines() if line.strip()]
    assert proc.returncode == 2, err[-3000:]
    assert len(lines) == 1 and lines[0].startswith("explistops: error: "), err[-3000:]
    for word in words:
        assert word in lines[0]
    return lines[0]


def test_an_unreachable_coordinator_is_one_line(tmp_path):
    port = launcher.free_port()  # nothing listens there
    start_s = time.monotonic()
    one_line_error(start(1, 2, port, tmp_path), f"127.0.0.1:{port}", "within 5 s")
    assert time.monotonic() - start_s < FAIL_TIMEOUT_S


def test_a_missing_process_is_one_line(tmp_path):
    """--num_processes 2 but only process 0 started."""
    one_line_error(start(0, 2, launcher.free_port(), tmp_path), "only 1 of 2 processes",
                   "missing process ids 1")


def test_disagreeing_process_counts_are_one_line(tmp_path):
    port = launcher.free_port()
    procs = [start(0, 3, port, tmp_path), start(1, 2, port, tmp_path)]
    try:
        for proc in procs:
            one_line_error(proc, "--num_processes 2", "process 0 with 3")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()


def test_a_process_id_out_of_range_is_one_line(tmp_path):
    one_line_error(start(2, 2, launcher.free_port(), tmp_path), "process id 2", "0 ... 1")


# ----------------------------------------------------------------- the launcher itself


def test_the_launcher_prefixes_lines_and_stops_the_others(monkeypatch, capsys):
    """Process 1 fails at once: process 0 (which would sleep a minute) is
    stopped, one line names the failure, the status is process 1's."""
    code = ("import sys, time; i = int(sys.argv[-1]); print('hello from', i, flush=True);"
            "sys.exit(3) if i == 1 else time.sleep(60)")
    monkeypatch.setattr(launcher, "child_command",
                        lambda command, args, port, n, i: [sys.executable, "-c", code, str(i)])
    start_s = time.monotonic()
    status = launcher.launch([], 2, devices_per_process=2, grace_s=5)
    out, err = capsys.readouterr()
    assert status == 3
    assert time.monotonic() - start_s < 30
    assert "[0] hello from 0" in out and "[1] hello from 1" in out
    assert "explistops: error: process 1 of 2 exited with status 3; stopping process 0" in err


def test_child_environment_forces_the_device_count():
    env = launcher.child_environment(3, {"XLA_FLAGS": "--xla_foo=1 "
                                         "--xla_force_host_platform_device_count=8"})
    assert env["XLA_FLAGS"].split() == ["--xla_foo=1",
                                        "--xla_force_host_platform_device_count=3"]


@pytest.mark.parametrize("address", ["127.0.0.1", ":1234", "host:0", "host:65536", "host:x",
                                     "host:\u00b2", "host:\u0661\u0662"])
def test_bad_coordinator_addresses_are_config_errors(address):
    from explistops_jax import distributed
    from explistops_jax.errors import ConfigError

    with pytest.raises(ConfigError, match="coordinator address"):
        distributed.initialize(address, 2, 0)
