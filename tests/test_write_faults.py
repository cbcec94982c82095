"""Faults of the machine while a run writes (a full disk): one line naming what
failed and the checkpoint a rerun resumes from, a non-zero exit, no traceback,
no hang; then the same command resumes.

The end-to-end case fills a real 6 MiB tmpfs (where this machine lets the test
mount one: root, in a sandbox that allows it; skipped otherwise); the others
inject the errors Orbax's TensorStore and tensorboardX's writer thread raise.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from explistops_jax import summaries
from explistops_jax.errors import UserError, WriteError, WriteFailureLogFilter, write_failure
from explistops_jax.train_state import RunCheckpoints, complete_checkpoints

ROOT = Path(__file__).resolve().parent.parent
TENSORSTORE_FULL = ValueError(
    'RESOURCE_EXHAUSTED: Error writing local file "/x/checkpoint_30.orbax-checkpoint-tmp/'
    'manifest.ocdbt": Failed to write 116 bytes to file 11: No space left on device '
    "[os_error_code='28']")


def test_write_failures_are_told_from_bugs():
    assert write_failure(TENSORSTORE_FULL) == "No space left on device"
    assert write_failure(OSError(30, "Read-only file system", "/runs/x")) == (
        "Read-only file system (/runs/x)")
    assert write_failure(ValueError("shapes (2, 3) and (4,) do not match")) is None


def test_a_failed_save_names_the_last_complete_checkpoint(tmp_path):
    checkpoints = RunCheckpoints(tmp_path / "run")
    for name in ("checkpoint_10", "checkpoint_20", "checkpoint_30.orbax-checkpoint-tmp"):
        (tmp_path / "run" / name).mkdir(parents=True)
    assert complete_checkpoints(tmp_path / "run") == [10, 20]
    with pytest.raises(WriteError) as err:
        with checkpoints.writing():
            raise TENSORSTORE_FULL
    assert err.value.message == (
        f"writing run directory {tmp_path / 'run'} failed: No space left on device; the "
        "last complete checkpoint is checkpoint_20: rerunning the same command resumes from it")
    with checkpoints.writing():  # the same failure again, in the cleanup: reported once
        raise TENSORSTORE_FULL
    with pytest.raises(ValueError, match="shapes"), checkpoints.writing():
        raise ValueError("shapes do not match")  # a bug keeps its traceback
    with pytest.raises(UserError), checkpoints.writing():
        raise UserError("no such checkpoint: /nowhere (No such file or directory)")


def test_orbax_thread_tracebacks_of_a_failed_write_are_not_logged():
    keep = WriteFailureLogFilter()

    def record(level, exc):
        return logging.LogRecord("absl", level, __file__, 1, "failed", None,
                                 (type(exc), exc, None) if exc else None)

    assert not keep.filter(record(logging.ERROR, TENSORSTORE_FULL))
    assert keep.filter(record(logging.ERROR, ValueError("a bug")))
    assert keep.filter(record(logging.ERROR, None))
    assert keep.filter(record(logging.WARNING, TENSORSTORE_FULL))


def test_a_dead_tensorboard_thread_raises_instead_of_hanging(tmp_path):
    (tmp_path / "run").mkdir()
    writer = summaries.MetricsWriter(tmp_path / "run")
    writer.write_train(1, {"loss": 1.0})
    summaries._TB_THREAD_ERRORS.append(OSError(28, "No space left on device"))
    with pytest.raises(OSError, match="No space left"):
        writer.write_train(2, {"loss": 0.5})
    assert not summaries._TB_THREAD_ERRORS
    writer.write_train(3, {"loss": 0.25})  # TensorBoard off; the JSONL log goes on
    writer.close()  # returns: no wait on the dead thread
    lines = (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()
    assert [line.split(",")[0] for line in lines] == ['{"step": 1', '{"step": 2', '{"step": 3']


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


def _train(model_dir: Path, steps: int) -> subprocess.CompletedProcess:
    bindings = ["MIXTURE_OR_TASK_NAME = 'explistops10_cpu_none'",
                "TASK_FEATURE_LENGTHS = {'inputs': 32, 'targets': 8}",
                f"TRAIN_STEPS = {steps}", "BATCH_SIZE = 8", "train.evaluation = None",
                "train.progress = False", "trainer.CheckpointConfig.period = 10",
                "trainer.CheckpointConfig.keep = 10", f"MODEL_DIR = '{model_dir}'"]
    return subprocess.run(
        [sys.executable, "-m", "explistops_jax.train",
         "--gin_file=gin_configs/models/t5_1_1_tiny.gin",
         "--gin_file=gin_configs/runs/finetune.gin", *(f"--gin_bindings={b}" for b in bindings)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "JAX_PLATFORMS": "cpu"})


@pytest.mark.slow
def test_a_full_disk_is_one_line_and_the_same_command_resumes(tmp_path):
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "6m"):
        pytest.skip("cannot mount a tmpfs here (needs root in a sandbox that allows it)")
    try:
        proc = _train(disk / "run", 60)  # a checkpoint is 2 MiB: the third fills the disk
        assert proc.returncode == 1, proc.stderr[-3000:]
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        # The last line says it all; nothing traces through the project's code.
        # (TensorStore's callbacks into Orbax's closed event loop can still print
        # "Event loop is closed" from native threads, depending on timing.)
        assert "explistops_jax" not in proc.stderr.replace(lines[-1], ""), proc.stderr[:3000]
        assert lines[-1].startswith(f"explistops: error: writing run directory {disk / 'run'} "
                                   "failed: No space left on device; the last complete "
                                   "checkpoint is checkpoint_")
        last = int(lines[-1].split("checkpoint is checkpoint_")[1].split(":")[0])
        assert complete_checkpoints(disk / "run")[-1] == last
        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
        again = _train(disk / "run", 60)
        assert again.returncode == 0, again.stderr[-3000:]
        assert complete_checkpoints(disk / "run")[-1] == 60
        assert not [p for p in (disk / "run").iterdir() if "tmp" in p.name]
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)
