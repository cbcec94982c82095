"""A tiny SeqIO task and a tiny stand-in model for the trainer's tests.

The task (``tiny_reverse``): inputs are short lowercase words, targets the same
words reversed, byte vocabulary. The model (``TinyModel``) has the trainer's view
of a model (``get_initial_variables``, ``loss_fn``, ``predict_batch``,
``score_batch``) and logically partitioned parameters (vocab / embed / mlp), so it
exercises sharding, checkpoints and the loop in a fraction of a second per step.
Imported by the tests and by the subprocesses they start (``PYTHONPATH=tests``).
"""

from __future__ import annotations

import dataclasses
import random
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn

import seqio
import tensorflow as tf

TASK = "tiny_reverse"
LENGTHS = {"inputs": 12, "targets": 12}
SIZES = {"train": 48, "validation": 10}


def _words(split: str, n: int) -> list[str]:
    rng = random.Random(f"{split}-{n}")
    return ["".join(rng.choice("abcdefgh") for _ in range(rng.randint(2, 8)))
            for _ in range(n)]


def register_tiny_task(name: str = TASK, sizes: Mapping[str, int] = SIZES) -> str:
    if name in seqio.TaskRegistry.names():
        return name

    def dataset_fn(split, shuffle_files=False, seed=None):
        words = _words(split, sizes[split])
        return tf.data.Dataset.from_tensor_slices(
            {"inputs": words, "targets": [w[::-1] for w in words]})

    vocab = seqio.ByteVocabulary()
    features = {k: seqio.Feature(vocab, add_eos=True) for k in ("inputs", "targets")}

    def postprocess(text, example=None, is_target=False):
        return text

    def exact_match(targets, predictions):
        return {"exact_match": 100.0 * float(np.mean(
            [t == p for t, p in zip(targets, predictions)]))}

    seqio.TaskRegistry.add(
        name,
        source=seqio.FunctionDataSource(dataset_fn, splits=list(sizes),
                                        num_input_examples=dict(sizes)),
        preprocessors=[seqio.preprocessors.tokenize,
                       seqio.preprocessors.append_eos_after_trim],
        output_features=features,
        postprocess_fn=postprocess,
        metric_fns=[exact_match])
    return name


@dataclasses.dataclass(frozen=True)
class TinyConfig:
    vocab_size: int = 260
    emb_dim: int = 16
    mlp_dim: int = 32
    dropout_rate: float = 0.0


class _Net(nn.Module):
    config: TinyConfig

    @nn.compact
    def __call__(self, encoder_tokens, decoder_tokens, deterministic=True):
        c = self.config
        embed = self.param("embedding", nn.with_logical_partitioning(
            nn.initializers.normal(1.0), ("vocab", "embed")), (c.vocab_size, c.emb_dim))
        mask = (encoder_tokens > 0)[..., None]
        pooled = (embed[encoder_tokens] * mask).sum(1) / jnp.maximum(mask.sum(1), 1)
        x = embed[decoder_tokens] + pooled[:, None, :]  # [b, l, embed]
        x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
        h = nn.Dense(c.mlp_dim, use_bias=False, kernel_init=nn.with_logical_partitioning(
            nn.initializers.lecun_normal(), ("embed", "mlp")), name="wi")(x)
        h = nn.Dropout(c.dropout_rate)(nn.relu(h), deterministic=deterministic)
        h = nn.Dense(c.emb_dim, use_bias=False, kernel_init=nn.with_logical_partitioning(
            nn.initializers.lecun_normal(), ("mlp", "embed")), name="wo")(h)
        return (x + h) @ embed.T  # [b, l, vocab]


class TinyModel:
    """The trainer's view of a model, over a tiny non-transformer network."""

    def __init__(self, config: TinyConfig = TinyConfig()):
        self.config = config
        self.module = _Net(config)

    def get_initial_variables(self, rng, input_shapes: Mapping[str, tuple[int, ...]],
                              input_types=None) -> dict:
        enc = jnp.ones(input_shapes["encoder_input_tokens"], jnp.int32)
        dec = jnp.ones(input_shapes["decoder_input_tokens"], jnp.int32)
        return self.module.init(rng, enc, dec)

    def abstract_variables(self) -> dict:
        """Boxed abstract variables (the model API's shape-only initialisation)."""
        shapes = {"encoder_input_tokens": (1, 1), "decoder_input_tokens": (1, 1)}
        return jax.eval_shape(lambda: self.get_initial_variables(jax.random.key(0), shapes))

    def param_logical_axes(self):
        return nn.get_partition_spec(self.abstract_variables())["params"]

    loss_normalizing_factor = "tokens"

    def loss_fn(self, params, batch, dropout_rng) -> tuple[jax.Array, dict]:
        """Per-token mean cross entropy; the metrics of model.EncoderDecoderModel."""
        logits = self.module.apply(
            {"params": params}, batch["encoder_input_tokens"], batch["decoder_input_tokens"],
            deterministic=dropout_rng is None,
            rngs=None if dropout_rng is None else {"dropout": dropout_rng})
        targets = batch["decoder_target_tokens"]
        weights = batch["decoder_loss_weights"].astype(jnp.float32)
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
        num_tokens = weights.sum()
        loss = (losses * weights).sum() / jnp.maximum(num_tokens, 1e-8)
        correct = ((logits.argmax(-1) == targets) * weights).sum()
        return loss, {"loss": loss, "accuracy": correct / jnp.maximum(num_tokens, 1e-8),
                      "num_tokens": num_tokens,
                      "num_examples": jnp.asarray(targets.shape[0], jnp.float32)}

    def predict_batch(self, params, batch, *, max_decode_length: int | None = None,
                      rng=None, **unused) -> jax.Array:
        enc = batch["encoder_input_tokens"]
        length = max_decode_length or batch["decoder_input_tokens"].shape[1]
        tokens = jnp.zeros((enc.shape[0], length), jnp.int32)

        def body(i, tokens):
            inputs = jnp.pad(tokens, ((0, 0), (1, 0)))[:, :-1]
            logits = self.module.apply({"params": params}, enc, inputs)
            return tokens.at[:, i].set(logits[:, i].argmax(-1))

        return jax.lax.fori_loop(0, length, body, tokens)

    def score_batch(self, params, batch) -> jax.Array:
        logits = self.module.apply({"params": params}, batch["encoder_input_tokens"],
                                   batch["decoder_input_tokens"])
        logp = -optax.softmax_cross_entropy_with_integer_labels(
            logits, batch["decoder_target_tokens"])
        return (logp * batch["decoder_loss_weights"]).sum(-1)


# ----------------------------------------------------------------- runs


def train_tiny(model_dir, steps: int, *, learning_rate: float = 1e-2, period: int = 5,
               keep: int | None = 3, epochs: int | None = None, seed: int = 0,
               dropout_rate: float = 0.1, evaluation=None, progress: bool = False):
    """A tiny training run (TinyModel on tiny_reverse, AdamW, batch 8)."""
    from explistops_jax import input_pipeline, optimizers, trainer
    from explistops_jax.train_state import CheckpointConfig

    register_tiny_task()
    data = input_pipeline.DataConfig(TASK, LENGTHS, batch_size=8, seed=seed,
                                     num_epochs=epochs)
    return trainer.train(
        TinyModel(TinyConfig(dropout_rate=dropout_rate)), data, model_dir,
        optimizer=optimizers.adamw(learning_rate), train_steps=steps,
        checkpoint=CheckpointConfig(period=period, keep=keep), evaluation=evaluation,
        seed=seed, progress=progress)


def register_gin() -> None:
    """``@TinyModel()`` for gin configurations of the tests."""
    import gin

    if not getattr(register_gin, "done", False):
        gin.external_configurable(TinyModel, module="tiny")
        register_gin.done = True


if __name__ == "__main__":
    # python tests/tiny_trainer_fixtures.py MODEL_DIR STEPS SECONDS_PER_BATCH:
    # a tiny run whose input is slowed down, to be killed by a test.
    import sys

    from slow_batches import slow_batches

    model_dir, steps, delay = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    slow_batches(delay)
    train_tiny(model_dir, steps)
