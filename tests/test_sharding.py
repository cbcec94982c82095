"""Data- and model-parallel training give the loss of a single device.

Runs in a subprocess with eight forced host CPU devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=8`` must be set before JAX
starts, and pytest's own process has started it). A tiny T5 1.1 (one layer per
stack, 4 heads so that 4-way model parallelism splits them), initialised once,
takes three Adafactor steps on the same batch, dropout 0.1 on, on: one device;
8-way data parallel; 4 x 2 (data x model); 2 x 4. The losses must agree within a
relative 1e-5 (float32; the sharded programs only reorder sums, and each dropout
draw depends only on the step's key and the element's position, not on where the
element lives).
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RTOL = 1e-5

SCRIPT = textwrap.dedent("""
    import json
    import jax
    import numpy as np
    from explistops_jax import network, optimizers, partitioning, train_step
    from explistops_jax.model import EncoderDecoderModel

    model = EncoderDecoderModel(network.get_config(
        "t5_1_1_tiny", vocab_size=128, num_heads=4, head_dim=16, mlp_dim=128,
        num_encoder_layers=1, num_decoder_layers=1, dropout_rate=0.1))
    rng = np.random.default_rng(0)
    def batch():
        targets = rng.integers(2, 128, (8, 12)).astype(np.int32)
        return {"encoder_input_tokens": rng.integers(2, 128, (8, 16)).astype(np.int32),
                "decoder_input_tokens": np.pad(targets, ((0, 0), (1, 0)))[:, :-1],
                "decoder_target_tokens": targets,
                "decoder_loss_weights": np.ones((8, 12), np.int32)}
    batches = [batch()] * 3  # the same batch: the loss must go down

    initial = {}

    def run(devices, num_partitions):
        p = partitioning.Partitioner(partitioning.PartitionConfig(num_partitions),
                                     devices=devices)
        tx, schedule = optimizers.adafactor().build()
        layout = train_step.state_layout(model, tx, p)
        # initialised once (on one device), then laid out on each mesh
        state = train_step.initial_state(model, tx, p, layout, seed=0,
                                         initial_params=initial.get("params"))
        initial.setdefault("params", jax.device_get(state.params))
        step = p.jit(train_step.make_train_step(model, tx, schedule),
                     in_shardings=(layout.shardings, p.batch_sharding()),
                     out_shardings=(layout.shardings, p.sharding()), donate_argnums=0)
        losses = []
        for b in batches:
            state, metrics = step(state, p.shard_batch(b))
            losses.append(float(metrics["loss"]))
        kernel = state.params["encoder"]["layers_0"]["mlp"]["wi_0"]["kernel"]
        return {"losses": losses, "mesh": dict(p.mesh.shape),
                "wi_0_spec": str(kernel.sharding.spec),
                "wi_0_shard_shape": list(kernel.addressable_shards[0].data.shape)}

    assert len(jax.devices()) == 8, jax.devices()
    print(json.dumps({"single": run(jax.devices()[:1], 1), "data8": run(None, 1),
                      "model2": run(None, 2), "model4": run(None, 4)}))
""")


@pytest.fixture(scope="module")
def runs():
    # Eight host devices; the backend's cheaper optimisation level only shortens
    # the four compilations (the partitioning being tested happens before it).
    flags = ("--xla_force_host_platform_device_count=8 "
             "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true")
    env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_meshes_are_what_they_claim(runs):
    assert runs["single"]["mesh"] == {"data": 1, "model": 1}
    assert runs["data8"]["mesh"] == {"data": 8, "model": 1}
    assert runs["model2"]["mesh"] == {"data": 4, "model": 2}
    assert runs["model4"]["mesh"] == {"data": 2, "model": 4}
    # the MLP kernel (embed, mlp) is split over the model axis
    assert runs["model4"]["wi_0_spec"] in ("P(None, 'model')", "PartitionSpec(None, 'model')")
    assert runs["model4"]["wi_0_shard_shape"] == [64, 128 // 4]
    assert runs["data8"]["wi_0_shard_shape"] == [64, 128]


@pytest.mark.parametrize("name", ["data8", "model2", "model4"])
def test_same_loss_as_one_device(runs, name):
    single = runs["single"]["losses"]
    assert single[-1] < single[0]  # it trains
    assert runs[name]["losses"] == pytest.approx(single, rel=RTOL)
