"""Training throughput of the own trainer side by side with T5X's, same model and data.

    python scripts/bench_t5x_vs_own.py [--shapes e128,small] [--steps 60] [--skip 10]
        [--block 10] [--repeats 2] [--settle 20] [--t5x_python /tmp/t5x-venv/bin/python]
        [--json out.json]

Runs, one after the other (never at once), alternating:

- T5X: ``python -m t5x.train`` in the T5X environment (``--t5x_python``) with
  ``gin_configs/t5x/t5_1_0_tiny_medium_finetune.gin`` (T5X's own
  ``t5x.examples.t5.network`` and ``models.EncoderDecoderModel``, T5X's Adafactor
  at a constant 1e-3, the domain vocabulary) and ``network.T5Config`` bindings for
  the shape;
- own: ``python -m explistops_jax.train`` in this environment with
  ``gin_configs/models/t5_1_0_tiny.gin`` + ``runs/finetune.gin`` and
  ``trainer.ModelSpec`` bindings for the same shape (``optimizers.adafactor``,
  constant 1e-3).

Both: task explistops30_medium (generated on the fly: T5X through the SeqIO task,
the own trainer through its grain pipeline by default, ``--data_backend seqio`` for
the SeqIO task), batch 8, lengths inputs 64 / targets 192, no packing, float32,
dropout ``--dropout`` (default 0.1, T5's fine-tuning rate; each trainer's own
masks: T5X's shared along the length axis, ours per element unless ``--own_masks
broadcast`` gives it T5X's), 384 embedding rows,
z-loss 1e-4, no evaluation, a checkpoint only after the last step.

Timing: steps are grouped in blocks of ``--block`` steps and the first ``--skip``
steps (compilation is done before step 1 in both; these are warm-up) are left out.
T5X: its own ``timing/steps_per_second`` summaries (``stats_period = --block``:
the duration of each ``trainer.train`` call of ``--block`` steps, from the
TensorBoard events in ``MODEL_DIR/train``). Own: ``--block`` over the sum of
``step_time_s`` of each block, from ``MODEL_DIR/train_log.jsonl`` (wall time between
consecutive steps' metrics, the input pipeline included). Reported: the median
over the blocks of each run (and, beside it, all timed steps over their total
time: the blocks' harmonic mean), then the median over runs; the ratio is own
steps/s over T5X steps/s (> 1: the own trainer is faster). Examples/s = batch x
steps/s in both (no packing: every row is one example). Each run starts after
``--settle`` idle seconds (the same for both): on a 2-core VM, own runs that came
right after a T5X process (TensorFlow, a few GB) were often slower than own runs
after own runs, with nothing of T5X's left running in the VM; the pause shortens,
but does not always remove, whatever the machine does after such a process.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# T5 1.0 shapes: (emb_dim, num_heads, head_dim, mlp_dim, layers per stack) and the
# own preset they are expressed on.
SHAPES = {
    "e128": ("t5_1_0_tiny", dict(emb_dim=128, num_heads=4, head_dim=32, mlp_dim=256,
                                 num_encoder_layers=3, num_decoder_layers=3)),
    "small": ("t5_1_0_small", dict(emb_dim=512, num_heads=8, head_dim=64, mlp_dim=2048,
                                   num_encoder_layers=6, num_decoder_layers=6)),
}
TASK = "explistops30_medium"
BATCH = 8
LENGTHS = {"inputs": 64, "targets": 192}
VOCAB_ROWS = 384
Z_LOSS = 1e-4


def _env() -> dict:
    env = dict(os.environ)
    env.update(JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    return env


def _run(cmd: list[str], log: Path, timeout: float) -> float:
    start = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, cwd=ROOT, env=_env(), stdout=f, stderr=subprocess.STDOUT,
                              timeout=timeout)
    wall = time.perf_counter() - start
    if proc.returncode:
        tail = log.read_text()[-4000:]
        raise RuntimeError(f"{cmd[:3]} failed ({proc.returncode}):\n{tail}")
    return wall


def _blocks(values: list[float], skip: int, block: int) -> list[list[float]]:
    timed = values[skip:]
    return [timed[i:i + block] for i in range(0, len(timed) - block + 1, block)]


def t5x_command(shape: str, steps: int, block: int, model_dir: str, python: str,
                dropout: float = 0.0) -> list[str]:
    _, dims = SHAPES[shape]
    lengths = "{'inputs': %d, 'targets': %d}" % (LENGTHS["inputs"], LENGTHS["targets"])
    cmd = [python, "-m", "t5x.train",
           "--gin_file=gin_configs/t5x/t5_1_0_tiny_medium_finetune.gin",
           f'--gin.MODEL_DIR="{model_dir}"',
           f"--gin.MIXTURE_OR_TASK_NAME='{TASK}'",
           f"--gin.TRAIN_STEPS={steps}", f"--gin.BATCH_SIZE={BATCH}",
           f"--gin.TASK_FEATURE_LENGTHS={lengths}",
           f"--gin.DROPOUT_RATE={dropout}", f"--gin.Z_LOSS={Z_LOSS}", "--gin.RANDOM_SEED=0",
           "--gin.network.T5Config.dtype='float32'",
           f"--gin.network.T5Config.vocab_size={VOCAB_ROWS}",
           # no evaluation; one checkpoint, after the last step; summaries every block
           "--gin.train.train_eval_dataset_cfg=None",
           "--gin.train.infer_eval_dataset_cfg=None",
           f"--gin.utils.SaveCheckpointConfig.period={steps}",
           f"--gin.train.stats_period={block}"]
    cmd += [f"--gin.network.T5Config.{k}={v}" for k, v in dims.items()]
    return cmd


def own_command(shape: str, steps: int, model_dir: str, python: str,
                dropout: float = 0.0, data_backend: str = "grain",
                masks: str = "element") -> list[str]:
    preset, dims = SHAPES[shape]
    overrides = dict(dims, dtype="float32")
    if masks == "broadcast":  # T5X's masks: shared along the length axis
        overrides["broadcast_dropout"] = True
    bindings = [
        "import seqio_tasks",
        f"trainer.ModelSpec.preset = '{preset}'",
        f"trainer.ModelSpec.overrides = {overrides!r}",
        f"trainer.ModelSpec.vocab_size = {VOCAB_ROWS}",
        f"trainer.ModelSpec.z_loss = {Z_LOSS}",
        f"MODEL_DIR = '{model_dir}'",
        f"MIXTURE_OR_TASK_NAME = '{TASK}'",
        f"TASK_FEATURE_LENGTHS = {LENGTHS!r}",
        f"TRAIN_STEPS = {steps}", f"BATCH_SIZE = {BATCH}", f"DROPOUT_RATE = {dropout}",
        "OPTIMIZER = @optimizers.adafactor()", "LEARNING_RATE = 1e-3",
        # no evaluation; one checkpoint, after the last step
        "EVAL_PERIOD = None", "train.evaluation = None",
        f"trainer.CheckpointConfig.period = {steps}", "train.progress = False",
        f"input_pipeline.DataConfig.data_backend = '{data_backend}'",
    ]
    cmd = [python, "-m", "explistops_jax.train",
           "--gin_file=gin_configs/models/t5_1_0_tiny.gin",
           "--gin_file=gin_configs/runs/finetune.gin"]
    return cmd + [f"--gin_bindings={b}" for b in bindings]


def read_t5x_timing(model_dir: str) -> list[dict]:
    """T5X's train summaries: step, timing/seconds, timing/steps_per_second,
    timing/seqs_per_second, timing/target_tokens_per_second, event wall time."""
    import tensorflow as tf

    rows: dict[int, dict] = {}
    for path in sorted(glob.glob(os.path.join(model_dir, "train", "events.out.tfevents*"))):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if not value.tag.startswith("timing/"):
                    continue
                x = float(tf.make_ndarray(value.tensor)) if value.HasField("tensor") \
                    else float(value.simple_value)
                row = rows.setdefault(event.step, {"step": event.step})
                row[value.tag] = x
                row["wall"] = event.wall_time
    return [rows[s] for s in sorted(rows) if "timing/steps_per_second" in rows[s]]


def bench_t5x(shape: str, args, work: Path) -> dict:
    model_dir = work / f"t5x_{shape}"
    cmd = t5x_command(shape, args.steps, args.block, str(model_dir), args.t5x_python,
                      args.dropout)
    load = os.getloadavg()[0]
    wall = _run(cmd, work / f"t5x_{shape}.log", args.timeout)
    rows = read_t5x_timing(str(model_dir))
    # summaries at steps block, 2*block, ...; the first skip // block are warm-up
    timed = [r for r in rows if r["step"] > args.skip]
    if not timed:
        raise RuntimeError(f"no T5X timing summaries after step {args.skip}: {rows}")
    rates = [r["timing/steps_per_second"] for r in timed]
    shutil.rmtree(model_dir, ignore_errors=True)
    return {"trainer": "t5x", "shape": shape, "steps_per_s": statistics.median(rates),
            "block_steps_per_s": rates, "total_steps_per_s": statistics.harmonic_mean(rates),
            "process_wall_s": wall, "load_before": load, "load_after": os.getloadavg()[0]}


def bench_own(shape: str, args, work: Path) -> dict:
    model_dir = work / f"own_{shape}"
    cmd = own_command(shape, args.steps, str(model_dir), args.own_python, args.dropout,
                      args.data_backend, args.own_masks)
    load = os.getloadavg()[0]
    wall = _run(cmd, work / f"own_{shape}.log", args.timeout)
    log = [json.loads(line) for line in open(model_dir / "train_log.jsonl") if line.strip()]
    log.sort(key=lambda r: r["step"])
    blocks = _blocks(log, args.skip, args.block)
    rates = [len(b) / sum(r["step_time_s"] for r in b) for b in blocks]
    timed = [r for b in blocks for r in b]
    shutil.rmtree(model_dir, ignore_errors=True)
    return {"trainer": "own", "shape": shape, "steps_per_s": statistics.median(rates),
            "block_steps_per_s": rates, "total_steps_per_s": statistics.harmonic_mean(rates),
            "median_step_s": statistics.median(r["step_time_s"] for r in timed),
            "real_target_tokens_per_s": sum(r["num_tokens"] for r in timed)
            / sum(r["step_time_s"] for r in timed),
            "process_wall_s": wall, "load_before": load, "load_after": os.getloadavg()[0]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default="e128", help=f"comma-separated: {', '.join(SHAPES)}")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--skip", type=int, default=10, help="warm-up steps left out")
    parser.add_argument("--block", type=int, default=10,
                        help="steps per timing block (T5X's stats_period)")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each trainer")
    parser.add_argument("--dropout", type=float, default=0.1,
                        help="DROPOUT_RATE of both (0.1: T5's fine-tuning default)")
    parser.add_argument("--data_backend", default="grain", choices=("grain", "seqio"),
                        help="the own trainer's input backend")
    parser.add_argument("--own_masks", default="element", choices=("element", "broadcast"),
                        help="the own trainer's dropout masks: per element (its default) "
                             "or T5X's, shared along the length axis")
    parser.add_argument("--t5x_python", default="/tmp/t5x-venv/bin/python")
    parser.add_argument("--own_python", default=sys.executable)
    parser.add_argument("--timeout", type=float, default=600, help="per run, seconds")
    parser.add_argument("--settle", type=float, default=20,
                        help="seconds of idle before each run (the machine's clean-up "
                             "after the previous process is not timed)")
    parser.add_argument("--json", help="append the runs as JSON lines to this file")
    parser.add_argument("--keep", help="keep the runs' logs in this directory")
    args = parser.parse_args(argv)
    if args.skip % args.block or (args.steps - args.skip) < args.block:
        parser.error("--skip must be a multiple of --block, with a block left to time")
    if args.settle < 0:
        parser.error(f"--settle must be zero or more seconds, not {args.settle}")

    work = Path(args.keep or tempfile.mkdtemp(prefix="bench_t5x_vs_own_"))
    work.mkdir(parents=True, exist_ok=True)
    results = []
    for shape in args.shapes.split(","):
        runs = {"t5x": [], "own": []}
        for i in range(args.repeats):
            # alternate which goes first, so a drift in the machine's load is shared
            order = [("t5x", bench_t5x), ("own", bench_own)]
            for name, fn in (order if i % 2 == 0 else order[::-1]):
                time.sleep(args.settle)
                row = fn(shape, args, work)
                row["repeat"] = i
                print(json.dumps(row), flush=True)
                runs[name].append(row)
                if args.json:
                    with open(args.json, "a") as f:
                        f.write(json.dumps(row) + "\n")
        summary = {"shape": shape}
        for name, rs in runs.items():
            summary[name] = statistics.median(r["steps_per_s"] for r in rs)
            summary[name + "_total"] = statistics.median(r["total_steps_per_s"] for r in rs)
            summary[name + "_runs"] = [r["steps_per_s"] for r in rs]
        summary["ratio"] = summary["own"] / summary["t5x"]
        summary["ratio_total"] = summary["own_total"] / summary["t5x_total"]
        results.append(summary)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)

    print(f"\nbatch {BATCH}, lengths {LENGTHS}, {TASK}, float32, dropout {args.dropout} "
          f"(own masks: {args.own_masks}), steps {args.skip + 1}.."
          f"{args.steps} in blocks of {args.block}; median over blocks, then over "
          f"{args.repeats} run(s) each")
    print("| shape | trainer | steps/s (runs) | steps/s | examples/s | ratio own/T5X |")
    print("|---|---|---|---:|---:|---:|")
    for s in results:
        for name in ("t5x", "own"):
            runs = ", ".join(f"{x:.3g}" for x in s[name + "_runs"])
            ratio = f"**{s['ratio']:.2f}**" if name == "own" else ""
            print(f"| {s['shape']} | {name} | {runs} | {s[name]:.3g} | "
                  f"{BATCH * s[name]:.3g} | {ratio} |")
        print(f"  ({s['shape']}: all timed steps over their total time, median over runs: "
              f"T5X {s['t5x_total']:.3g}, own {s['own_total']:.3g} steps/s, "
              f"ratio {s['ratio_total']:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
