"""What the collectives between processes cost: one process x 2 devices against
2 processes x 1 device, the same run.

    python scripts/bench_multiprocess.py [--steps 40] [--skip 10] [--repeats 2]
        [--json out.json]

Both configurations train the e128 shape of ``scripts/bench_t5x_vs_own.py``
(T5 1.0 tiny with emb 128, 4 heads x 32, mlp 256, 3+3 layers, 384 embedding
rows, z-loss 1e-4, float32, dropout 0, Adafactor at a constant 1e-3) on
explistops30_medium (the grain backend), batch 8, lengths 64/192, no evaluation,
one checkpoint after the last step, data parallel over 2 CPU devices:

- ``1x2``: ``explistops train`` in one process with two forced host devices
  (the gradient all-reduce stays inside one XLA process);
- ``2x1``: ``explistops launch --processes 2 --devices-per-process 1`` (the same
  all-reduce between two processes over gloo on 127.0.0.1).

The same global batches, so the same losses (checked: the largest relative
difference is reported). A run's step time is the median ``step_time_s`` of
``train_log.jsonl`` after ``--skip`` warm-up steps (wall time between consecutive
steps' metrics, input included); runs alternate, and the figure of a
configuration is the median over its runs. Reported: step times, the
collectives' cost per step (2x1 minus 1x2) and the ratio 2x1 / 1x2.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import machine_info  # noqa: E402
from bench_t5x_vs_own import BATCH, LENGTHS, SHAPES, TASK, VOCAB_ROWS, Z_LOSS  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def train_arguments(model_dir: Path, steps: int) -> list[str]:
    preset, dims = SHAPES["e128"]
    bindings = [
        f"trainer.ModelSpec.preset = '{preset}'",
        f"trainer.ModelSpec.overrides = {dict(dims, dtype='float32')!r}",
        f"trainer.ModelSpec.vocab_size = {VOCAB_ROWS}",
        f"trainer.ModelSpec.z_loss = {Z_LOSS}",
        f"MIXTURE_OR_TASK_NAME = '{TASK}'", f"TASK_FEATURE_LENGTHS = {LENGTHS!r}",
        f"TRAIN_STEPS = {steps}", f"BATCH_SIZE = {BATCH}", "DROPOUT_RATE = 0.0",
        "OPTIMIZER = @optimizers.adafactor()", "LEARNING_RATE = 1e-3",
        "EVAL_PERIOD = None", "train.evaluation = None",
        f"trainer.CheckpointConfig.period = {steps}", "train.progress = False",
    ]
    args = ["--gin_file", "gin_configs/models/t5_1_0_tiny.gin",
            "--gin_file", "gin_configs/runs/finetune.gin", "--model_dir", str(model_dir)]
    for binding in bindings:
        args += ["--gin_bindings", binding]
    return args


def command(kind: str, model_dir: Path, steps: int) -> tuple[list[str], dict]:
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3",
               PYTHONUNBUFFERED="1")
    args = train_arguments(model_dir, steps)
    if kind == "1x2":
        env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
        return [sys.executable, "-m", "explistops_jax.cli", "train", *args], env
    return [sys.executable, "-m", "explistops_jax.cli", "launch", "--processes", "2",
            "--devices-per-process", "1", "--", *args], env


def bench(kind: str, steps: int, skip: int, work: Path, timeout: float) -> dict:
    model_dir = work / f"run_{kind}_{time.monotonic_ns()}"
    cmd, env = command(kind, model_dir, steps)
    load = os.getloadavg()[0]
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    wall = time.perf_counter() - start
    if done.returncode:
        raise RuntimeError(f"{kind} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    log = [json.loads(line) for line in open(model_dir / "train_log.jsonl") if line.strip()]
    times = [r["step_time_s"] for r in log if r["step"] > skip]
    return {"kind": kind, "step_time_s": statistics.median(times),
            "losses": [r["loss"] for r in log], "process_wall_s": wall,
            "load_before": load, "load_after": os.getloadavg()[0]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--skip", type=int, default=10, help="warm-up steps left out")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=900, help="seconds per run")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            for kind in ("1x2", "2x1"):
                runs.append(bench(kind, args.steps, args.skip, Path(tmp), args.timeout))
                print(f"{kind}: {runs[-1]['step_time_s'] * 1000:.1f} ms/step "
                      f"(load {runs[-1]['load_before']:.1f})", flush=True)
    one = statistics.median(r["step_time_s"] for r in runs if r["kind"] == "1x2")
    two = statistics.median(r["step_time_s"] for r in runs if r["kind"] == "2x1")
    reference = next(r["losses"] for r in runs if r["kind"] == "1x2")
    worst = max(abs(a - b) / abs(b) for r in runs for a, b in zip(r["losses"], reference))
    result = {"machine": {"cpu": machine_info.cpu_model(), "cores": os.cpu_count()},
              "steps": args.steps, "skip": args.skip,
              "step_time_1x2_s": one, "step_time_2x1_s": two,
              "collectives_cost_per_step_s": two - one, "ratio_2x1_over_1x2": two / one,
              "max_relative_loss_difference": worst, "runs": runs}
    print(f"{machine_info.cpu_model()}, {os.cpu_count()} cores: 1 process x 2 devices "
          f"{one * 1000:.1f} ms/step, 2 processes x 1 device {two * 1000:.1f} ms/step; "
          f"collectives between processes {1000 * (two - one):+.1f} ms/step, ratio "
          f"{two / one:.2f}; losses equal within {worst:.1e}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
