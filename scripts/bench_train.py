"""Training throughput of the own trainer: tokens/s, step time, MFU, memory.

    python scripts/bench_train.py [--presets t5_1_1_tiny,t5_1_0_small]
        [--batch_size 8] [--inputs_length 64] [--targets_length 192] [--steps 10]
        [--microbatches 1] [--dtype float32] [--json out.json]

Times the trainer's own jitted train step (``train_step.make_train_step`` under
``Partitioner.jit``, state donated, Adafactor) on full synthetic batches (every
target token counts), after two warm-up steps. Model FLOPs utilisation (MFU) =
model FLOPs per step (analytic: forward matmuls and attention of the
encoder-decoder, times 3 for forward + backward) / step time / peak, where the
peak is measured here with a large float32 ``jnp.dot`` (the best of several).
The XLA cost model's FLOP count of the whole compiled step (optimizer included)
is reported beside it. The peak is measured before and after each model and
the higher value is used (the machine may be shared). Peak memory is the process's maximum resident set size
(and the device's own peak where JAX reports one).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from explistops_jax import network, optimizers, partitioning, plan, train_step, trainer
from explistops_jax.train_state import CheckpointConfig
from explistops_jax.model import EncoderDecoderModel
from explistops_jax.plan import random_batch


def measure_peak_flops(n: int = 2048, repeats: int = 8) -> float:
    """Best float32 matmul rate (FLOP/s) of ``[n, n] @ [n, n]`` through jax."""
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32)
    dot = jax.jit(jnp.dot)
    dot(a, b).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        dot(a, b).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def bench(preset: str, args, peak: float) -> dict:
    config = network.get_config(preset, vocab_size=args.vocab_size, dtype=args.dtype,
                                dropout_rate=args.dropout_rate)
    model = EncoderDecoderModel(config)
    p = partitioning.Partitioner()
    tx, schedule = optimizers.adafactor().build()
    layout = train_step.state_layout(model, tx, p)
    state = train_step.initial_state(model, tx, p, layout, seed=0)
    step = p.jit(train_step.make_train_step(model, tx, schedule, args.microbatches),
                 in_shardings=(layout.shardings, p.batch_sharding()),
                 out_shardings=(layout.shardings, p.sharding()), donate_argnums=0)
    rng = np.random.default_rng(0)
    batches = [p.shard_batch(random_batch(rng, args.batch_size,
                                          (args.inputs_length, args.targets_length),
                                          args.vocab_size))
               for _ in range(2)]
    start = time.perf_counter()
    compiled = step.lower(state, batches[0]).compile()
    compile_s = time.perf_counter() - start
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    xla_flops = float((cost or {}).get("flops", float("nan")))
    for i in range(2):  # warm-up
        state, metrics = compiled(state, batches[i % 2])
    jax.block_until_ready(metrics)
    times = []
    for i in range(args.steps):
        start = time.perf_counter()
        state, metrics = compiled(state, batches[i % 2])
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    step_s = float(np.median(times))
    flops = plan.train_flops(config, args.batch_size,
                             (args.inputs_length, args.targets_length))
    tokens = args.batch_size * args.targets_length
    stats = jax.devices()[0].memory_stats() or {}
    params = sum(x.size for x in jax.tree.leaves(state.params))
    return {
        "preset": preset, "params_M": params / 1e6, "batch": args.batch_size,
        "inputs_length": args.inputs_length, "targets_length": args.targets_length,
        "dtype": args.dtype, "microbatches": args.microbatches,
        "compile_s": compile_s, "step_s": step_s, "step_s_min": float(min(times)),
        "target_tokens_per_s": tokens / step_s,
        "all_tokens_per_s": args.batch_size * (args.inputs_length + args.targets_length) / step_s,
        "model_tflops_per_step": flops / 1e12, "xla_tflops_per_step": xla_flops / 1e12,
        "model_gflops_per_s": flops / step_s / 1e9, "mfu": flops / step_s / peak,
        "xla_flops_utilisation": xla_flops / step_s / peak,
        "loss": float(metrics["loss"]),
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "device_peak_bytes_gib": stats.get("peak_bytes_in_use", 0) / 2**30 or None,
    }


def bench_loop(preset: str, args) -> dict:
    """The whole loop (trainer.train: input pipeline, step, logging) on a real
    task: median step time and real (non-padding) target tokens/s after the
    first two steps, from train_log.jsonl."""
    import tempfile

    import seqio_tasks  # noqa: F401
    from explistops_jax import input_pipeline, rundir

    data = input_pipeline.DataConfig(
        args.task, {"inputs": args.inputs_length, "targets": args.targets_length},
        batch_size=args.batch_size, pack=args.pack)
    spec = trainer.ModelSpec(preset, overrides={"dtype": args.dtype},
                             dropout_rate=args.dropout_rate)
    with tempfile.TemporaryDirectory() as run:
        trainer.train(spec, data, run, train_steps=args.steps + 2, progress=False,
                      checkpoint=CheckpointConfig(period=0, keep=1))
        log = rundir.read_jsonl(rundir.RunDir(run).train_log, lenient=True)[2:]
    return {"loop_task": args.task, "loop_pack": args.pack,
            "loop_step_s": float(np.median([r["step_time_s"] for r in log])),
            "loop_target_tokens_per_s": float(np.median([r["tokens_per_s"] for r in log])),
            "loop_padding_fraction": 1 - float(np.mean([r["num_tokens"] for r in log]))
            / (args.batch_size * args.targets_length)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", default="t5_1_1_tiny,t5_1_0_small")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--inputs_length", type=int, default=64)
    parser.add_argument("--targets_length", type=int, default=192)
    parser.add_argument("--vocab_size", type=int, default=128,
                        help="128: the domain vocabulary; 32128: T5's SentencePiece")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--dropout_rate", type=float, default=0.0,
                        help="dropout on (the train step then draws its masks)")
    parser.add_argument("--microbatches", type=int, default=1)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--task", help="also time the whole training loop (input "
                        "pipeline included) on this SeqIO task, e.g. explistops30_medium")
    parser.add_argument("--pack", action="store_true", help="pack examples (with --task)")
    parser.add_argument("--json", help="append the results as JSON lines to this file")
    args = parser.parse_args(argv)

    peak = measure_peak_flops()
    print(f"device: {jax.devices()[0].device_kind} x{len(jax.devices())}, "
          f"measured float32 matmul peak {peak / 1e9:.1f} GFLOP/s, "
          f"load average {os.getloadavg()[0]:.1f}", file=sys.stderr)
    rows = []
    for preset in args.presets.split(","):
        row = bench(preset, args, peak)
        # the machine may be shared: measure the peak again and keep the higher
        # one (the conservative MFU)
        after = measure_peak_flops()
        if after > peak:
            scale = peak / after
            for key in ("mfu", "xla_flops_utilisation"):
                row[key] *= scale
            peak = after
        row["peak_gflops_per_s"] = peak / 1e9
        if args.task:
            row.update(bench_loop(preset, args))
        row["device"] = jax.devices()[0].device_kind
        row["load_average"] = os.getloadavg()[0]
        rows.append(row)
        print(json.dumps(row))
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps(row) + "\n")
    print("\n| preset | batch x (in, tgt) | step (s) | target tok/s | model GFLOP/s | MFU | "
          "XLA-FLOP util. | peak RSS (GiB) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['preset']} | {r['batch']} x ({r['inputs_length']}, {r['targets_length']}) | "
              f"{r['step_s']:.3f} | {r['target_tokens_per_s']:,.0f} | "
              f"{r['model_gflops_per_s']:.1f} | {100 * r['mfu']:.1f}% | "
              f"{100 * r['xla_flops_utilisation']:.1f}% | {r['peak_rss_gib']:.2f} |")
    for r in rows:
        if "loop_step_s" in r:
            print(f"loop on {r['loop_task']} (pack={r['loop_pack']}): step "
                  f"{r['loop_step_s']:.3f} s, {r['loop_target_tokens_per_s']:,.0f} real target "
                  f"tokens/s, {100 * r['loop_padding_fraction']:.0f}% of target slots padding")
    return 0


if __name__ == "__main__":
    sys.exit(main())
