"""Cost of dropout in the network: forward + backward of the loss, per step.

    python scripts/bench_dropout.py [--preset t5_1_0_tiny] [--rounds 10]

Times `jax.jit(jax.value_and_grad(loss_fn))` on one fixed batch (8 x (64, 192),
vocabulary 384, float32, z-loss 1e-4) for five variants compiled in one process
and timed in turn, round after round (so that a busy moment of the machine falls
on all of them): dropout off; per-element dropout 0.1 with flax's ``nn.Dropout``
(the baseline: JAX's threefry, a loop on CPU, and a float compare per element);
per-element dropout 0.1 with ``cpu_kernels.Dropout`` (the CPU default: the same masks,
its threefry written out so that XLA fuses it into the mask's consumers);
broadcast dropout 0.1 (T5X's masks, ``T5Config.broadcast_dropout``) with each.
Each round times 3 steps of each variant (fresh dropout keys) after one untimed
step. Prints the median over rounds of wall and process CPU ms per step, and
each against dropout off. ``t5_1_0_tiny`` is widened to the e128 shape of
scripts/bench_t5x_vs_own.py (4 heads of 32, MLP 256, 3 + 3 layers).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import linen as nn  # noqa: E402
from bench_t5x_vs_own import SHAPES  # noqa: E402
from machine_info import cpu_model, load_average  # noqa: E402

from explistops_jax import cpu_kernels, layers, network  # noqa: E402
from explistops_jax.model import EncoderDecoderModel  # noqa: E402
from explistops_jax.plan import random_batch  # noqa: E402


def _flax_dropout(cfg: network.T5Config) -> nn.Dropout:
    return nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,) if cfg.broadcast_dropout else ())


def _cpu_dropout(cfg: network.T5Config) -> cpu_kernels.Dropout:
    return cpu_kernels.Dropout(cfg.dropout_rate,
                               broadcast_dims=(-2,) if cfg.broadcast_dropout else ())


# name -> (rate, broadcast masks, dropout module factory)
VARIANTS = {
    "off": (0.0, False, _cpu_dropout),
    "per-element, nn.Dropout": (0.1, False, _flax_dropout),
    "per-element, cpu_kernels.Dropout": (0.1, False, _cpu_dropout),
    "broadcast, nn.Dropout": (0.1, True, _flax_dropout),
    "broadcast, cpu_kernels.Dropout": (0.1, True, _cpu_dropout),
}


def compiled_steps(preset: str, batch) -> dict:
    """Each variant's compiled loss-and-gradient function and its parameters."""
    overrides = SHAPES["e128"][1] if preset == "t5_1_0_tiny" else {}
    shapes = {"encoder_input_tokens": (8, 64), "decoder_input_tokens": (8, 192)}
    default = layers.dropout
    steps = {}
    try:
        for name, (rate, broadcast, factory) in VARIANTS.items():
            layers.dropout = factory  # read while the step is traced
            model = EncoderDecoderModel(network.get_config(
                preset, vocab_size=384, dropout_rate=rate, broadcast_dropout=broadcast,
                **overrides), z_loss=1e-4)
            params = nn.unbox(model.get_initial_variables(jax.random.key(0), shapes))["params"]
            loss = lambda p, b, r, model=model: model.loss_fn(p, b, r)[0]
            step = jax.jit(jax.value_and_grad(loss)).lower(
                params, batch, jax.random.PRNGKey(0)).compile()
            steps[name] = (step, params)
    finally:
        layers.dropout = default
    return steps


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="t5_1_0_tiny")
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} CPUs ({cpu_model()}), load {load_average():.1f}")
    batch = random_batch(np.random.default_rng(0), 8, (64, 192), 384)
    steps = compiled_steps(args.preset, batch)
    wall = {name: [] for name in steps}
    cpu = {name: [] for name in steps}
    for r in range(args.rounds):
        for name, (step, params) in steps.items():
            jax.block_until_ready(step(params, batch, jax.random.PRNGKey(1000 + r)))
            w, c = time.perf_counter(), time.process_time()
            for i in range(3):
                jax.block_until_ready(step(params, batch, jax.random.PRNGKey(3 * r + i)))
            wall[name].append((time.perf_counter() - w) / 3)
            cpu[name].append((time.process_time() - c) / 3)
    base_wall, base_cpu = np.median(wall["off"]), np.median(cpu["off"])
    print(f"{args.preset}, batch 8 x (64, 192), float32, forward + backward; "
          f"median over {args.rounds} rounds of 3 steps")
    print("| dropout | wall ms/step | vs off | CPU ms/step | vs off |")
    print("|---|---:|---:|---:|---:|")
    for name in steps:
        w, c = np.median(wall[name]), np.median(cpu[name])
        print(f"| {name} | {w * 1e3:.1f} | {w / base_wall:.2f}x | {c * 1e3:.1f} | "
              f"{c / base_cpu:.2f}x |")
    print(f"load at the end: {load_average():.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
