"""`explistops plan`: the ahead-of-time memory plan of a train step.

The plan compiles the sharded step for abstract inputs; on a case small enough
to allocate (a tiny T5 1.1 on a 2 x 2 mesh of forced host devices) its
per-device parameter and optimizer-state bytes must equal the bytes of the real
arrays' shards on one device, exactly: both come from the same shapes and
shardings, so any difference is a bug, not rounding.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = textwrap.dedent("""
    import json
    import jax
    import numpy as np
    from explistops_jax import network, optimizers, partitioning, plan, train_step
    from explistops_jax.model import EncoderDecoderModel

    kwargs = dict(mesh={"data": 2, "model": 2}, batch_size=4, lengths=(16, 8),
                  dtype="float32", optimizer="adafactor", backend="cpu")
    predicted = plan.plan("t5_1_1_tiny", **kwargs)
    model = EncoderDecoderModel(network.get_config("t5_1_1_tiny"))
    p = partitioning.Partitioner(partitioning.PartitionConfig(num_partitions=2))
    tx, _ = optimizers.adafactor().build(1000)
    layout = train_step.state_layout(model, tx, p)
    state = train_step.initial_state(model, tx, p, layout, seed=0)
    device = jax.devices()[0]

    def on_device(tree):
        return sum(s.data.nbytes for leaf in jax.tree.leaves(tree)
                   for s in leaf.addressable_shards if s.device == device)

    batch = {k: np.zeros(v.shape, np.int32)
             for k, v in plan.abstract_batch(p, 4, (16, 8)).items()}
    print(json.dumps({"plan": predicted.to_json(),
                      "params": on_device(state.params), "opt": on_device(state.opt_state),
                      "state": on_device(state), "batch": on_device(p.shard_batch(batch))}))
""")


def _env(devices: int) -> dict:
    return dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT),
                XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")


def test_plan_equals_the_measured_shards_of_the_real_state():
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=_env(4), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    plan = got["plan"]
    assert plan["params_bytes"] == got["params"] > 0
    assert plan["optimizer_bytes"] == got["opt"] > 0
    # XLA's argument bytes are the state and batch shards, less what the
    # compiled program does not read at all (scalars: a few hundred bytes here)
    assert abs(plan["argument_bytes"] - (got["state"] + got["batch"])) <= 1e-3 * plan["argument_bytes"]
    # the state is donated: the new state is written over it (all of it but a
    # few scalars, such as the optimizer's step count)
    assert plan["alias_bytes"] >= 0.999 * (got["params"] + got["opt"])
    assert plan["peak_bytes"] == (plan["argument_bytes"] + plan["output_bytes"]
                                  - plan["alias_bytes"] + plan["temp_bytes"])
    assert plan["temp_bytes"] > 0 and plan["fits_gib"]["16"] is True
    # a 2-way model axis halves the sharded (mlp, heads, vocab) parameters
    assert plan["num_params"] * 4 / 2 < plan["params_bytes"] < plan["num_params"] * 4


def _cli(*args: str, devices: int = 1) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "explistops_jax.cli", "plan", *args],
                          env=_env(devices), capture_output=True, text=True, timeout=300,
                          cwd=ROOT)


def test_plan_command_prints_the_plan_and_the_largest_batch():
    # From batch 64 up, XLA's CPU peak here grows by about 1.5 MiB a row (below
    # it stays flat: the synthetic-peak tests below cover that shape without
    # compiling), so the secant lands at once: four compilations.
    proc = _cli("--model", "t5_1_1_tiny", "--mesh", "data=2", "--batch", "64",
                "--lengths", "8,8", "--device-memory", "0.2", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert out["mesh"] == {"data": 2, "model": 1} and out["backend"] == "cpu"
    largest = out["largest_batch"]
    # the answer is a batch that fits next to the one two rows larger that does
    # not, both compiled
    assert largest["batch"] % 2 == 0 and largest["batch"] > 64
    assert largest["peak_bytes"] <= 0.2 * 2 ** 30 < largest["next_peak_bytes"]
    assert largest["next_batch"] == largest["batch"] + 2
    assert 4 <= largest["compilations"] <= 16


@pytest.mark.parametrize("args, message", [
    (["--model", "t5_9_9", "--batch", "8"], "unknown model preset"),
    (["--model", "t5_1_1_tiny", "--batch", "3", "--mesh", "data=2"], "not divisible by the data axis"),
    (["--model", "t5_1_1_tiny", "--batch", "4", "--mesh", "model=3"], "does not divide num_heads=2"),
    (["--model", "t5_1_1_tiny", "--batch", "4", "--mesh", "data=2;model=2"], "bad mesh entry"),
    (["--model", "t5_1_1_tiny", "--batch", "4", "--lengths", "16"], "bad lengths"),
    (["--model", "t5_1_1_tiny", "--batch", "4", "--dtype", "float7"], "unknown dtype"),
    (["--model", "t5_1_1_tiny", "--batch", "4", "--dtype", "int32"], "unknown dtype"),
    (["--model", "t5_1_1_tiny", "--batch", "4", "--dtype", "float64"], "unknown dtype"),
    (["--model", "t5_1_1_tiny", "--batch", "4", "--vocab-size", "0"], "vocabulary size 0"),
    (["--model", "t5_1_1_tiny", "--batch", "4", "--vocab-size", "-5"], "vocabulary size -5"),
    (["--model", "t5_1_1_tiny", "--batch", "4", "--lengths", "\u00b2,4"], "bad lengths"),
    (["--model", "t5_1_1_tiny", "--batch", "4", "--mesh", "data=\u00b2"], "bad mesh entry"),
    (["--model", "t5_1_1_tiny", "--batch", "4", "--mesh", "data=2,model=1,data=1"],
     "data axis is given twice"),
    (["--model", "t5_1_1_tiny", "--batch", "4", "--optimizer", "sgd"], "unknown optimizer"),
    (["--model", "t5_1_1_tiny", "--batch", "4", "--device-memory", "0"], "--device-memory"),
    (["--model", "t5_1_1_tiny", "--batch", "4", "--device-memory", "nan"], "--device-memory"),
    (["--model", "t5_1_1_tiny", "--batch", "4", "--device-memory", "inf"], "--device-memory"),
    (["--model", "t5_1_1_tiny", "--batch", "4", "--backend", "tpu"], "no tpu devices"),
])
def test_plan_mistakes_are_one_line(args, message):
    proc = _cli(*args)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in proc.stderr, lines


@pytest.mark.parametrize("preset", ["t5_1_0_tiny", "t5_1_1_tiny"])
def test_train_flops_matches_xla_count_of_the_step(preset):
    """plan.train_flops counts the matrix products by hand; XLA's cost analysis of
    the compiled forward and backward pass on CPU counts every operation. XLA's
    count must be at least ours (nothing we count is missing) and at most 2% more
    (the element-wise work, under 1% at these widths: d_model 256, MLP 1024)."""
    import jax
    from flax import linen as nn

    from explistops_jax import network, partitioning, plan
    from explistops_jax.model import EncoderDecoderModel

    config = network.get_config(preset, vocab_size=512, emb_dim=256, num_heads=4,
                                head_dim=64, mlp_dim=1024, num_encoder_layers=2,
                                num_decoder_layers=2)
    model = EncoderDecoderModel(config)
    batch = plan.abstract_batch(partitioning.Partitioner(), 8, (32, 48))
    params = nn.unbox(jax.eval_shape(lambda: model.get_initial_variables(
        jax.random.key(0), {"encoder_input_tokens": (8, 32),
                            "decoder_input_tokens": (8, 48)}))["params"])
    step = jax.jit(jax.value_and_grad(lambda p, b: model.loss_fn(p, b, None)[0]))
    cost = step.lower(params, batch).compile().cost_analysis()
    xla = (cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"]
    ours = plan.train_flops(config, 8, (32, 48))
    assert ours > 1e9
    assert 1.0 <= xla / ours <= 1.02, (xla, ours)


def _fake_plans(monkeypatch, peak_gib):
    """plan.plan replaced by one that "compiles" a plan whose peak is
    ``peak_gib(batch)``; returns the batches asked for, in order."""
    from explistops_jax import plan

    asked = []

    def fake(model, *, batch_size, mesh, **_):
        asked.append(batch_size)
        return plan.MemoryPlan(model=model, mesh=mesh, batch_size=batch_size,
                               lengths={"inputs": 8, "targets": 8}, dtype="float32",
                               optimizer="adafactor", backend="cpu", num_params=1,
                               params_bytes=0, optimizer_bytes=0,
                               argument_bytes=int(peak_gib(batch_size) * plan.GIB),
                               output_bytes=0, alias_bytes=0, temp_bytes=0)

    monkeypatch.setattr(plan, "plan", fake)
    return asked


@pytest.mark.parametrize("peak_gib, device_gib, first, unit, want, most", [
    # affine (state + rows): the secant is exact, four plans in all
    (lambda b: 30 + 0.37 * b, 80, 8, 1, 135, 4),
    (lambda b: 30 + 0.37 * b, 141, 8, 8, 296, 4),
    # flat over small batches, then affine (XLA's CPU peak for a tiny model): the
    # secant sees no growth at first; an affine-only search answered 4 here
    (lambda b: max(0.08, 0.146 + (b - 64) * 0.00153), 0.2, 2, 2, 98, 12),
    # a step (another algorithm past batch 40): bisection, not the secant, closes it
    (lambda b: 1 + 0.01 * b + (5 if b > 40 else 0), 4, 4, 4, 40, 12),
    # the first batch does not fit
    (lambda b: 10 + b, 20, 64, 2, 10, 12),
    # not even one row per data shard fits
    (lambda b: 10 + b, 11, 8, 4, 0, 12),
])
def test_largest_batch_is_bracketed_by_a_batch_that_does_not_fit(
        monkeypatch, peak_gib, device_gib, first, unit, want, most):
    from explistops_jax import plan

    asked = _fake_plans(monkeypatch, peak_gib)
    first_plan = plan.plan("m", batch_size=first, mesh={"data": unit, "model": 1})
    found = plan.largest_batch(device_gib, first_plan, mesh={"data": unit, "model": 1})
    assert found.batch == want, (asked, found)
    assert found.over is not None and found.over.batch_size == want + unit
    assert found.over.peak_bytes > device_gib * plan.GIB
    if want:
        assert found.plan.peak_bytes <= device_gib * plan.GIB
    assert all(b % unit == 0 and b > 0 for b in asked)
    assert found.compilations == len(set(asked)) <= most, asked
    line = plan.format_largest(found)
    assert f"batch {want + unit} needs" in line or "none" in line


def test_largest_batch_stops_at_its_compile_budget(monkeypatch):
    from explistops_jax import plan

    _fake_plans(monkeypatch, lambda b: 1 + 0.01 * b + (5 if b > 40 else 0))
    first = plan.plan("m", batch_size=4, mesh={"data": 4, "model": 1})
    found = plan.largest_batch(4, first, mesh={"data": 4, "model": 1}, max_compilations=3)
    assert found.compilations == 3 and found.over is None and found.batch > 4
    assert "at least" in plan.format_largest(found)
