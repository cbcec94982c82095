"""Cost of dropout in the network: forward + backward of the loss, per step.

    python scripts/bench_dropout.py [--preset t5_1_0_small] [--steps 5]

Times `jax.jit(jax.value_and_grad(loss_fn))` on one fixed batch (8 x (64, 192),
vocabulary 384, float32) with dropout off, per-element dropout 0.1 (Hugging Face's
masks) and broadcast dropout 0.1 (T5X's masks, `T5Config.broadcast_dropout`), and
prints wall and process CPU seconds per step after one warm-up step.
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np
from flax import linen as nn

from explistops_jax.model import EncoderDecoderModel
from explistops_jax.network import get_config


def seconds_per_step(preset: str, rate: float, broadcast: bool, steps: int) -> tuple[float, float]:
    model = EncoderDecoderModel(get_config(preset, vocab_size=384, dropout_rate=rate,
                                           broadcast_dropout=broadcast), z_loss=1e-4)
    rng = np.random.default_rng(0)
    targets = rng.integers(2, 384, (8, 192)).astype(np.int32)
    batch = {"encoder_input_tokens": rng.integers(2, 384, (8, 64)).astype(np.int32),
             "decoder_input_tokens": np.pad(targets, ((0, 0), (1, 0)))[:, :-1],
             "decoder_target_tokens": targets,
             "decoder_loss_weights": np.ones((8, 192), np.int32)}
    shapes = {"encoder_input_tokens": (8, 64), "decoder_input_tokens": (8, 192)}
    params = nn.unbox(model.get_initial_variables(jax.random.key(0), shapes))["params"]
    step = jax.jit(jax.value_and_grad(lambda p, b, r: model.loss_fn(p, b, r)[0]))
    key = jax.random.key(1)
    jax.block_until_ready(step(params, batch, key))
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        jax.block_until_ready(step(params, batch, key))
    return (time.perf_counter() - wall) / steps, (time.process_time() - cpu) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="t5_1_0_small")
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    base = None
    for label, rate, broadcast in (("off", 0.0, False), ("per-element 0.1", 0.1, False),
                                   ("broadcast 0.1", 0.1, True)):
        wall, cpu = seconds_per_step(args.preset, rate, broadcast, args.steps)
        base = base or cpu
        print(f"{label:16s} wall {wall:.2f} s/step  cpu {cpu:.2f} s/step  "
              f"cpu vs off {cpu / base:.2f}x", flush=True)


if __name__ == "__main__":
    main()
