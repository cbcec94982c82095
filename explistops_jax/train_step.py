"""The train step and the train state's layout: what compiling and running one
optimizer step needs, and nothing else (no input pipeline, no TensorFlow), so
that the trainer, ``explistops plan`` and the device check share it.

    layout = state_layout(model, tx, partitioner)     # abstract state + shardings
    state  = initial_state(model, tx, partitioner, layout, seed)
    step   = partitioner.jit(make_train_step(model, tx, schedule), ...)
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import optax
from flax.core import meta

from explistops_jax import partitioning
from explistops_jax.errors import ConfigError
from explistops_jax.train_state import TrainState

__all__ = ["StateLayout", "TrainState", "make_train_step", "state_layout", "initial_state",
           "INIT_SHAPES"]

# Parameter shapes of T5 do not depend on the sequence lengths: initialise on
# one token (cheap to trace), the same values as on any other length.
INIT_SHAPES = {"encoder_input_tokens": (1, 1), "decoder_input_tokens": (1, 1)}


def make_train_step(model, tx: optax.GradientTransformation, schedule: optax.Schedule,
                    num_microbatches: int = 1) -> Callable:
    """``train_step(state, batch) -> (state, metrics)``.

    With ``num_microbatches > 1`` the batch is split into that many microbatches
    (rows ``i, i+k, i+2k, ...``, so each device keeps a share of every one),
    whose gradients are combined in a ``lax.scan`` before one optimizer update;
    memory is that of one microbatch. The combination reproduces the full
    batch's loss exactly: for a per-token mean (``loss_normalizing_factor ==
    "tokens"``) microbatches are weighted by their target tokens, otherwise
    (sums, or division by a constant) they are summed.
    """
    grad_fn = jax.value_and_grad(model.loss_fn, has_aux=True)
    per_token = getattr(model, "loss_normalizing_factor", "sum") == "tokens"

    def loss_and_grads(params, batch, rng):
        if num_microbatches == 1:
            (loss, aux), grads = grad_fn(params, batch, rng)
            return loss, aux, grads
        micro = jax.tree.map(lambda x: _split_microbatches(x, num_microbatches), batch)

        def accumulate(total, inputs):
            mb, index = inputs
            (loss, aux), grads = grad_fn(params, mb, jax.random.fold_in(rng, index))
            weight = aux["num_tokens"] if per_token else 1.0
            scaled = jax.tree.map(lambda x: x * weight, (loss, grads))
            metrics = {k: v if k in _COUNTS else v * aux["num_tokens"] for k, v in aux.items()}
            return jax.tree.map(jnp.add, total, (*scaled, metrics)), None

        first = jax.tree.map(lambda x: x[0], micro)
        (loss_s, aux_s), grads_s = jax.eval_shape(lambda: grad_fn(params, first, rng))
        zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), (loss_s, grads_s, aux_s))
        (loss, grads, aux), _ = jax.lax.scan(
            accumulate, zeros, (micro, jnp.arange(num_microbatches)))
        tokens = jnp.maximum(aux["num_tokens"], 1e-8)
        if per_token:
            loss, grads = jax.tree.map(lambda x: x / tokens, (loss, grads))
        aux = {k: v if k in _COUNTS else v / tokens for k, v in aux.items()}
        if "loss" in aux:
            aux["loss"] = loss
        return loss, aux, grads

    def train_step(state: TrainState, batch: Mapping[str, jax.Array]):
        rng = jax.random.fold_in(state.rng, state.step)
        loss, aux, grads = loss_and_grads(state.params, batch, rng)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {**aux, **_input_tokens(batch), "loss": loss,
                   "grad_norm": optax.tree.norm(grads),
                   "param_norm": optax.tree.norm(params),
                   "learning_rate": schedule(state.step)}
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
        return new_state, metrics

    return train_step


def _input_tokens(batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    """``num_input_tokens``: the batch's non-padding encoder tokens (id 0 is
    padding), over the global batch, for the log's total tokens/s."""
    if "encoder_input_tokens" not in batch:
        return {}
    return {"num_input_tokens": (batch["encoder_input_tokens"] > 0).sum(dtype=jnp.float32)}


# Metrics of loss_fn that are counts (summed over microbatches); the others are
# per-token means (averaged, weighted by each microbatch's tokens).
_COUNTS = ("num_tokens", "num_examples")


def _split_microbatches(x: jax.Array, k: int) -> jax.Array:
    """[batch, ...] -> [k, batch // k, ...], microbatch i = rows i, i+k, ..."""
    if x.shape[0] % k:
        raise ConfigError(f"batch size {x.shape[0]} is not divisible by "
                          f"num_microbatches={k}")
    return jnp.swapaxes(x.reshape((x.shape[0] // k, k) + x.shape[1:]), 0, 1)


# ----------------------------------------------------------------- state


@dataclasses.dataclass
class StateLayout:
    """The abstract train state (shapes) with its shardings."""

    abstract: TrainState  # leaves: jax.ShapeDtypeStruct with .sharding
    shardings: TrainState


def state_layout(model, tx: optax.GradientTransformation,
                 partitioner: partitioning.Partitioner) -> StateLayout:
    """Shapes and shardings of the train state, without allocating it."""
    params = partitioner.abstract_params(model)
    params_shardings = jax.tree.map(lambda s: s.sharding, params)
    opt_state = jax.eval_shape(tx.init, params)
    opt_shardings = partitioner.state_like_params_shardings(
        opt_state, params, model.param_logical_axes())
    replicated = partitioner.sharding()
    shardings = TrainState(step=replicated, params=params_shardings,
                           opt_state=opt_shardings, rng=replicated)
    shapes = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=params,
                        opt_state=opt_state, rng=jax.ShapeDtypeStruct((2,), jnp.uint32))
    abstract = jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)
    return StateLayout(abstract, shardings)


def initial_state(model, tx: optax.GradientTransformation,
                  partitioner: partitioning.Partitioner, layout: StateLayout, seed: int,
                  initial_params: Any | None = None) -> TrainState:
    """A fresh state, created directly in its shardings; with ``initial_params``
    (a host tree, e.g. from a pretrained checkpoint) instead of random ones."""
    init_rng, train_rng = jax.random.split(jax.random.PRNGKey(seed))  # raw uint32 keys

    if initial_params is None:
        def init_params(rng):
            return meta.unbox(model.get_initial_variables(rng, INIT_SHAPES)["params"])

        params = partitioner.jit(init_params, in_shardings=None,
                                 out_shardings=layout.shardings.params)(init_rng)
    else:
        params = partitioner.place(initial_params, layout.abstract.params,
                                   what="initial checkpoint")
    opt_state = partitioner.jit(tx.init, in_shardings=(layout.shardings.params,),
                                out_shardings=layout.shardings.opt_state)(params)
    step = jax.device_put(jnp.zeros((), jnp.int32), layout.shardings.step)
    rng = jax.device_put(train_rng, layout.shardings.rng)
    return TrainState(step=step, params=params, opt_state=opt_state, rng=rng)
