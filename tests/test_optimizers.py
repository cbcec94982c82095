"""Optimizers and learning-rate schedules (explistops_jax.optimizers)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from explistops_jax import optimizers
from explistops_jax.optimizers import Schedule


def test_constant_schedule():
    schedule = Schedule("constant", 1e-3).build()
    assert [float(schedule(s)) for s in (0, 10, 10_000)] == pytest.approx([1e-3] * 3)


def test_rsqrt_schedule_is_t5_pretraining():
    # T5: 1 / sqrt(max(step, 10_000)) = 0.01 flat, then inverse square root.
    schedule = Schedule("rsqrt", 0.01, warmup_steps=10_000).build()
    for step in (0, 5_000, 10_000, 40_000, 1_000_000):
        assert float(schedule(step)) == pytest.approx(1 / np.sqrt(max(step, 10_000)), rel=1e-6)


def test_rsqrt_schedule_with_linear_warmup():
    schedule = Schedule("rsqrt", 0.01, warmup_steps=100, linear_warmup=True).build()
    assert float(schedule(0)) == 0.0
    assert float(schedule(50)) == pytest.approx(0.005)
    assert float(schedule(100)) == pytest.approx(0.01)
    assert float(schedule(400)) == pytest.approx(0.005)


def test_linear_schedule_decays_over_the_run():
    schedule = Schedule("linear", 3e-4, warmup_steps=10).build(total_steps=110)
    assert float(schedule(0)) == 0.0
    assert float(schedule(5)) == pytest.approx(1.5e-4)
    assert float(schedule(10)) == pytest.approx(3e-4)
    assert float(schedule(60)) == pytest.approx(1.5e-4)
    assert float(schedule(110)) == pytest.approx(0.0, abs=1e-12)
    # an explicit decay_steps wins over the run's length
    fixed = Schedule("linear", 1.0, decay_steps=10).build(total_steps=1000)
    assert float(fixed(5)) == pytest.approx(0.5)


def test_schedule_errors():
    with pytest.raises(ValueError, match="kind"):
        Schedule("cosine")
    with pytest.raises(ValueError, match="decay_steps"):
        Schedule("linear").build()


def _quadratic_steps(optimizer, steps=20):
    params = {"w": jnp.full((256, 128), 2.0), "b": jnp.full((8,), -1.0)}
    loss = lambda p: sum(jnp.sum(x**2) for x in jax.tree.leaves(p))
    tx, _ = optimizer.build(total_steps=steps)
    state = tx.init(params)
    losses = []
    for _ in range(steps):
        value, grads = jax.value_and_grad(loss)(params)
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        losses.append(float(value))
    return losses, state


def test_adafactor_t5_defaults():
    optimizer = optimizers.adafactor()
    assert optimizer.name == "adafactor" and optimizer.schedule == Schedule("constant", 1e-3)
    losses, state = _quadratic_steps(optimizer)
    assert losses[-1] < losses[0]
    # factored second moments for the 256x128 matrix, none kept at full size
    factored = [s for s in jax.tree.leaves(state, is_leaf=lambda x: hasattr(x, "v_row"))
                if hasattr(s, "v_row")][0]
    assert {factored.v_row["w"].shape, factored.v_col["w"].shape} == {(256,), (128,)}
    assert factored.v["w"].shape == (1,)
    # no momentum: no first-moment tree of the parameters' shapes
    shapes = {tuple(x.shape) for x in jax.tree.leaves(state)}
    assert (256, 128) not in shapes


def test_adamw_the_study_setup():
    optimizer = optimizers.adamw()
    assert optimizer.schedule.learning_rate == 3e-4
    losses, _ = _quadratic_steps(optimizers.adamw(1e-1))
    assert losses[-1] < losses[0]


def test_grad_clip_norm_and_lookup():
    optimizer = optimizers.get_optimizer("adamw", learning_rate=1.0, grad_clip_norm=1e-3)
    tx, schedule = optimizer.build()
    params = {"w": jnp.ones(3)}
    updates, _ = tx.update({"w": jnp.full(3, 1e6)}, tx.init(params), params)
    assert float(schedule(0)) == 1.0
    assert np.all(np.abs(np.asarray(updates["w"])) <= 1.0 + 1e-6)  # Adam's step ~ lr
    with pytest.raises(ValueError, match="unknown optimizer"):
        optimizers.get_optimizer("sgd")
