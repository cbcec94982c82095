"""Mesh, logical axis rules and shardings (explistops_jax.partitioning), on the
devices of this process (one CPU); tests/test_sharding.py runs on eight."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from jax.sharding import PartitionSpec as P

from explistops_jax import optimizers, partitioning
from explistops_jax.partitioning import PartitionConfig, Partitioner


def test_mesh_axes_and_errors():
    mesh = partitioning.create_mesh()
    assert mesh.axis_names == ("data", "model")
    assert mesh.shape["data"] * mesh.shape["model"] == len(jax.devices())
    with pytest.raises(ValueError, match="must divide"):
        partitioning.create_mesh(num_partitions=len(jax.devices()) + 1)
    with pytest.raises(ValueError, match="disagrees"):
        partitioning.create_mesh(num_partitions=3, model_parallel_submesh=(1, 1, 1, 2))
    # the submesh's product is the model-axis size
    assert partitioning.create_mesh(model_parallel_submesh=(1, 1, 1, 1)).shape["model"] == 1


def test_standard_rules_like_t5x():
    rules = dict(partitioning.STANDARD_LOGICAL_AXIS_RULES)
    assert rules["batch"] == "data"
    for name in ("vocab", "mlp", "heads", "joined_kv"):
        assert rules[name] == "model"
    for name in ("embed", "kv", "length", "relpos_buckets"):
        assert rules[name] is None


def test_logical_names_to_shardings():
    p = Partitioner()
    shardings = p.logical_to_sharding({"wi": P("embed", "mlp"), "emb": P("vocab", "embed"),
                                       "scale": P("embed"), "bias": P()})
    assert shardings["wi"].spec == P(None, "model")
    assert shardings["emb"].spec == P("model", None)
    assert shardings["scale"].spec == P(None)
    assert p.batch_sharding().spec == P("data")
    # rules given in the config come first
    custom = Partitioner(PartitionConfig(logical_axis_rules=(("embed", "model"),)))
    assert custom.logical_to_sharding(P("embed")).spec == P("model")


class _Dense(nn.Module):
    @nn.compact
    def __call__(self, x):
        w = self.param("kernel", nn.with_logical_partitioning(
            nn.initializers.ones, ("embed", "mlp")), (256, 128))
        scale = self.param("scale", nn.with_logical_partitioning(
            nn.initializers.ones, ("embed",)), (256,))
        return (x * scale) @ w


def test_params_and_optimizer_state_shardings():
    p = Partitioner()
    boxed = jax.eval_shape(lambda: _Dense().init(jax.random.PRNGKey(0), jnp.ones((1, 256))))
    logical = partitioning.logical_axes(boxed["params"])
    shardings = p.params_shardings(boxed["params"])
    assert shardings["kernel"].spec == P(None, "model")
    params = nn.meta.unbox(boxed["params"])
    for optimizer in (optimizers.adafactor(), optimizers.adamw()):
        tx, _ = optimizer.build()
        state = jax.eval_shape(tx.init, params)
        state_shardings = p.state_like_params_shardings(state, params, logical)
        flat = {jax.tree_util.keystr(k): (leaf.shape, sh.spec) for (k, leaf), sh in zip(
            jax.tree_util.tree_flatten_with_path(state)[0], jax.tree.leaves(state_shardings))}
        for key, (shape, spec) in flat.items():
            if shape == (256, 128):      # Adam's moments: the parameter's axes
                assert spec == P(None, "model"), key
            elif shape == (128,) and "kernel" in key:   # factored row: mlp stays
                assert spec == P("model"), key
            elif shape == (256,) and "kernel" in key:   # factored column: embed stays
                assert spec == P(None), key
            elif shape == ():                 # counters
                assert spec == P(), key


def test_spec_for_shape():
    spec = P("embed", "mlp")
    assert partitioning._spec_for_shape(spec, (4, 6), (4, 6)) == P("embed", "mlp")
    assert partitioning._spec_for_shape(spec, (4, 6), (6,)) == P("mlp")
    assert partitioning._spec_for_shape(spec, (4, 6), (4,)) == P("embed")
    assert partitioning._spec_for_shape(spec, (4, 6), (1,)) == P()


def test_jit_applies_logical_constraints_and_shards_batch():
    p = Partitioner()

    def fn(x):
        return nn.with_logical_constraint(x * 2, ("batch", "embed"))

    jitted = p.jit(fn, in_shardings=p.batch_sharding(), out_shardings=p.batch_sharding())
    batch = p.shard_batch({"x": np.ones((4, 3), np.float32)})
    out = jitted(batch["x"])
    assert out.sharding.spec == P("data")
    np.testing.assert_array_equal(np.asarray(out), 2 * np.ones((4, 3)))
    assert "sharding_constraint" in jitted.lower(batch["x"]).as_text()


def test_initialize_distributed_is_a_noop_for_one_process():
    from explistops_jax import distributed

    distributed.initialize(None, None, None)
    assert jax.process_count() == 1
