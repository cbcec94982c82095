"""The CPU preset's train step with and without the network's CPU rewrites,
side by side in one process.

    python scripts/bench_cpu_step.py [--shape 64x32x96] [--rounds 6]

The rewrites (explistops_jax/cpu_kernels.py, layers.py) change no value, only how XLA's CPU
backend computes: ``add_bias`` sums the relative position bias's gradient over
the batch as a matrix-vector product, ``Dense`` multiplies ``[b*l, in]`` instead
of ``[b, l, in]``, and ``Attention`` contracts heads-first ``[b, h, len, kv]``
operands instead of ``[b, len, h, kv]``. Variants, each compiled once and timed in
interleaved rounds of 3 steps (after 2 warm-up steps), the median reported:

* ``plain``: none (the code before the rewrites, rebuilt here);
* ``bias``: ``add_bias`` only;
* ``both``: ``add_bias`` and ``Dense`` (attention as it was);
* ``all``: the network as it is.

The model is the CPU preset's (T5 1.1, d_model 128, 3+3 layers, vocabulary 384),
AdamW, random full batches of ``--shape`` (batch x inputs x targets; the default
is the medium run's).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from machine_info import cpu_model, load_average  # noqa: E402

from explistops_jax import (  # noqa: E402
    cpu_kernels, layers, network, optimizers, partitioning, study, train_step)
from explistops_jax.model import EncoderDecoderModel  # noqa: E402
from explistops_jax.plan import random_batch  # noqa: E402


class PlainDense(nn.Module):
    """Dense as it was: one dot over [b, l, in]."""

    features: int
    kernel_axes: tuple[str, str]
    dtype: object = jnp.float32
    kernel_init: object = layers._kernel_init()
    cpu_kernels: object = None

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", nn.with_logical_partitioning(self.kernel_init,
                                                                   self.kernel_axes),
                            (x.shape[-1], self.features), jnp.float32)
        return jnp.dot(x.astype(self.dtype), kernel.astype(self.dtype))


class LengthFirstAttention(layers.Attention):
    """Attention as it was: products of [b, len, h, kv] operands."""

    @nn.compact
    def __call__(self, inputs_q, inputs_kv, bias, *, deterministic=True, decode=False,
                 decode_index=None):
        cfg = self.config
        query = layers.Dense(cfg.num_heads * cfg.head_dim, ("embed", "joined_kv"),
                             cfg.activation_dtype, layers._kernel_init(1.0 / cfg.head_dim),
                             name="query")(inputs_q)
        query = self._heads(query)
        key, value = self._key_value(inputs_kv, decode, decode_index)
        logits = jnp.einsum("bqhd,bkhd->bhqk", query.astype(jnp.float32),
                            key.astype(jnp.float32))
        if bias is not None:
            logits = layers.add_bias(cfg, logits, bias.astype(logits.dtype))
        weights = jax.nn.softmax(logits, axis=-1).astype(cfg.activation_dtype)
        weights = layers.dropout(cfg)(weights, deterministic=deterministic)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, value.astype(cfg.activation_dtype))
        out = out.reshape(out.shape[:2] + (-1,))
        return layers.Dense(cfg.emb_dim, ("joined_kv", "embed"), cfg.activation_dtype,
                            name="out")(out)


def _variant(name: str):
    """Patches the layers (and the CPU bias add) for a variant; returns the undo."""
    dense, add_bias, attention = layers.Dense, cpu_kernels.add_bias, layers.Attention
    if name != "all":
        layers.Attention = LengthFirstAttention
    if name in ("plain", "bias"):
        layers.Dense = PlainDense
    if name == "plain":
        cpu_kernels.add_bias = lambda logits, bias: logits + bias

    def undo():
        layers.Dense, cpu_kernels.add_bias, layers.Attention = dense, add_bias, attention
    return undo


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="64x32x96")
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args(argv)
    b, i, t = map(int, args.shape.split("x"))
    print(f"machine: {os.cpu_count()} CPUs ({cpu_model()}), load {load_average():.1f}")
    rng = np.random.default_rng(0)
    host_batches = [random_batch(rng, b, (i, t), 384) for _ in range(2)]
    built = {}
    for name in ("plain", "bias", "both", "all"):
        undo = _variant(name)
        try:
            config = network.get_config(study.CPU_MODEL, vocab_size=384,
                                        **study.CPU_MODEL_OVERRIDES)
            model = EncoderDecoderModel(config)
            p = partitioning.Partitioner()
            tx, schedule = optimizers.adamw(learning_rate=1e-3).build()
            layout = train_step.state_layout(model, tx, p)
            state = train_step.initial_state(model, tx, p, layout, seed=0)
            step = p.jit(train_step.make_train_step(model, tx, schedule),
                         in_shardings=(layout.shardings, p.batch_sharding()),
                         out_shardings=(layout.shardings, p.sharding()), donate_argnums=0)
            batches = [p.shard_batch(x) for x in host_batches]
            compiled = step.lower(state, batches[0]).compile()
        finally:
            undo()
        for k in range(2):
            state, metrics = compiled(state, batches[k])
        jax.block_until_ready(metrics)
        built[name] = {"fn": compiled, "state": state, "batches": batches, "times": [],
                       "loss": float(metrics["loss"])}
    for _ in range(args.rounds):
        for entry in built.values():
            state = entry["state"]
            for k in range(3):
                start = time.perf_counter()
                state, metrics = entry["fn"](state, entry["batches"][k % 2])
                jax.block_until_ready(metrics)
                entry["times"].append(time.perf_counter() - start)
            entry["state"] = state
    base = float(np.median(built["plain"]["times"]))
    print(f"train step, batch {b} x (inputs {i}, targets {t}), median of "
          f"{3 * args.rounds} steps per variant; load at the end {load_average():.1f}")
    print("| variant | step (ms) | speed-up over plain | loss after 2 steps |")
    print("|---|---:|---:|---:|")
    for name, entry in built.items():
        median = float(np.median(entry["times"]))
        print(f"| {name} | {1e3 * median:.1f} | {base / median:.2f}x | {entry['loss']:.5f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
