"""The trainer's only view of the network: loss, prediction and scoring.

`EncoderDecoderModel` wraps `network.Transformer` with a small fixed API
(`get_initial_variables`, `loss_fn`, `predict_batch`, `score_batch`), so
trainers and evaluators never touch modules. Batches are seqio
EncDecFeatureConverter dicts:

    encoder_input_tokens   int [batch, encoder_length]
    decoder_input_tokens   int [batch, decoder_length]  (targets shifted right, 0 first)
    decoder_target_tokens  int [batch, decoder_length]
    decoder_loss_weights   [batch, decoder_length]      (optional: targets > 0)
    encoder_segment_ids, decoder_segment_ids, encoder_positions, decoder_positions
                           int, only in packed batches

Token 0 is padding and the decoder start token; EOS is 1.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
from flax import linen as nn

from explistops_jax import decoding
from explistops_jax.network import T5Config, Transformer

Array = jax.Array
Batch = Mapping[str, Array]

__all__ = ["EncoderDecoderModel", "cross_entropy_with_logits"]

_PACKING_KEYS = ("encoder_segment_ids", "decoder_segment_ids",
                 "encoder_positions", "decoder_positions")
DECODE_METHODS = ("greedy", "sample", "beam")


def cross_entropy_with_logits(logits: Array, targets: Array, *, z_loss: float = 0.0,
                              label_smoothing: float = 0.0) -> tuple[Array, Array]:
    """Per-token cross entropy and z-loss, both [batch, length] float32.

    Label smoothing puts 1 - label_smoothing on the target and spreads the rest
    over the other tokens; the entropy of that soft target is subtracted so a
    perfect prediction scores 0. The z-loss term z_loss * log(Z)**2 (included in
    the first result, and also returned alone) keeps the softmax normaliser near 1.
    """
    logits = logits.astype(jnp.float32)
    vocab = logits.shape[-1]
    log_z = jax.nn.logsumexp(logits, axis=-1)  # [batch, length]
    log_probs = logits - log_z[..., None]
    target_log_prob = jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
    if label_smoothing:
        on, off = 1.0 - label_smoothing, label_smoothing / (vocab - 1)
        mean_log_prob = jnp.sum(log_probs, axis=-1)
        ce = -(on - off) * target_log_prob - off * mean_log_prob
        ce += on * jnp.log(on) + (vocab - 1) * off * jnp.log(off + 1e-20)  # - entropy
    else:
        ce = -target_log_prob
    z = z_loss * jnp.square(log_z)
    return ce + z, z


class EncoderDecoderModel:
    """T5 loss, prediction and scoring over `params` (a pytree of arrays).

    Args:
      config: the network.
      z_loss: weight of the log(Z)**2 auxiliary loss (T5X uses 1e-4; default 0).
      label_smoothing: mass moved from the target to the other tokens.
      loss_normalizing_factor: how the summed weighted loss is normalised:
        "tokens" (default) divides by the sum of the loss weights (a per-token
        mean); "sum" does not divide; a number divides by that constant (T5X's
        `loss_normalizing_factor`, which keeps the gradient scale independent of
        how many target tokens a batch happens to have).
      eos_id: end-of-sequence token id.
    """

    def __init__(self, config: T5Config, *, z_loss: float = 0.0,
                 label_smoothing: float = 0.0,
                 loss_normalizing_factor: str | float = "tokens", eos_id: int = 1):
        if not (isinstance(loss_normalizing_factor, (int, float))
                or loss_normalizing_factor in ("tokens", "sum")):
            raise ValueError("loss_normalizing_factor must be 'tokens', 'sum' or a "
                             f"number, got {loss_normalizing_factor!r}")
        self.config = config
        self.module = Transformer(config)
        self.z_loss = z_loss
        self.label_smoothing = label_smoothing
        self.loss_normalizing_factor = loss_normalizing_factor
        self.eos_id = eos_id
        self._abstract: dict | None = None

    # ------------------------------------------------------------ variables

    def get_initial_variables(self, rng: Array, input_shapes: Mapping[str, tuple[int, ...]],
                              input_types: Mapping[str, Any] | None = None) -> dict:
        """Flax variables {"params": ...} of freshly initialised parameters.

        Leaves are `nn.LogicallyPartitioned` boxes carrying T5X logical axis
        names (`nn.get_partition_spec` reads them, `nn.unbox` strips them);
        apply and the methods below accept boxed or plain params. Works under
        `jax.eval_shape` (no allocation) for any size.
        """
        enc = jnp.ones(input_shapes["encoder_input_tokens"], jnp.int32)
        dec = jnp.ones(input_shapes["decoder_input_tokens"], jnp.int32)
        return self.module.init(rng, enc, dec)

    def abstract_variables(self) -> dict:
        """``{"params": ...}`` as boxed ``jax.ShapeDtypeStruct`` leaves (their
        logical axis names kept), without allocating: the one place the
        parameter shapes are computed (T5's shapes do not depend on lengths)."""
        if self._abstract is None:
            shapes = {"encoder_input_tokens": (1, 1), "decoder_input_tokens": (1, 1)}
            self._abstract = jax.eval_shape(
                lambda: self.get_initial_variables(jax.random.key(0), shapes))
        return self._abstract

    def param_shapes(self) -> Any:
        """Abstract params (jax.ShapeDtypeStruct pytree, unboxed), no allocation."""
        return nn.unbox(self.abstract_variables())["params"]

    def param_logical_axes(self) -> Any:
        """PartitionSpec of T5X logical axis names per parameter (same tree)."""
        return nn.get_partition_spec(self.abstract_variables())["params"]

    # ------------------------------------------------------------ forward

    def _logits(self, params, batch: Batch, dropout_rng: Array | None) -> Array:
        """Teacher-forced logits [batch, length, vocab] (float32)."""
        packing = {k: batch[k] for k in _PACKING_KEYS if k in batch}
        return self.module.apply(
            {"params": params}, batch["encoder_input_tokens"],
            batch["decoder_input_tokens"], **packing,
            enable_dropout=dropout_rng is not None,
            rngs=None if dropout_rng is None else {"dropout": dropout_rng})

    @staticmethod
    def _weights(batch: Batch) -> Array:
        weights = batch.get("decoder_loss_weights")
        if weights is None:
            weights = batch["decoder_target_tokens"] > 0
        return jnp.asarray(weights, jnp.float32)

    def loss_fn(self, params, batch: Batch,
                dropout_rng: Array | None) -> tuple[Array, dict[str, Array]]:
        """(loss, metrics). Dropout is on iff `dropout_rng` is given.

        metrics (float32 scalars): loss; cross_entropy and z_loss (per-token
        means over the weighted tokens, z_loss is part of the loss); accuracy
        (weighted argmax accuracy); num_tokens (sum of weights); num_examples.
        """
        logits = self._logits(params, batch, dropout_rng)
        targets = batch["decoder_target_tokens"]
        weights = self._weights(batch)
        token_loss, token_z = cross_entropy_with_logits(
            logits, targets, z_loss=self.z_loss, label_smoothing=self.label_smoothing)
        total = jnp.sum(token_loss * weights)
        num_tokens = jnp.sum(weights)
        if self.loss_normalizing_factor == "tokens":
            loss = total / jnp.maximum(num_tokens, 1e-8)
        elif self.loss_normalizing_factor == "sum":
            loss = total
        else:
            loss = total / self.loss_normalizing_factor
        per_token = lambda x: jnp.sum(x * weights) / jnp.maximum(num_tokens, 1e-8)
        correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
        metrics = {
            "loss": loss,
            "cross_entropy": per_token(token_loss - token_z),
            "z_loss": per_token(token_z),
            "accuracy": per_token(correct),
            "num_tokens": num_tokens,
            "num_examples": jnp.asarray(targets.shape[0], jnp.float32),
        }
        return loss, metrics

    def score_batch(self, params, batch: Batch) -> Array:
        """Log-likelihood of each example's targets, [batch] float32: the sum of
        log p(target token) over the weighted tokens (no smoothing, no z-loss)."""
        logits = self._logits(params, batch, None)
        token_loss, _ = cross_entropy_with_logits(logits, batch["decoder_target_tokens"])
        return -jnp.sum(token_loss * self._weights(batch), axis=-1)

    # ------------------------------------------------------------ decoding

    def _decoder_fns(self, params, encoder_tokens: Array, length: int):
        """(initial cache, tokens_to_logits) for cached decoding of `length` steps."""
        module = self.module
        encoded = module.apply({"params": params}, encoder_tokens, method=module.encode)
        kwargs = dict(decode=True, max_decode_length=length, method=module.decode,
                      mutable=["cache"])
        start = jnp.zeros((encoder_tokens.shape[0], length), jnp.int32)
        # Under jit only the cache survives this pass (cross-attention K/V of
        # `encoded`, zeroed self-attention slots); the logits are dead code.
        _, state = module.apply({"params": params}, encoded, encoder_tokens, start, **kwargs)

        def tokens_to_logits(ids: Array, cache) -> tuple[Array, Any]:
            rows = ids.shape[0] // encoder_tokens.shape[0]  # beams share the encoding
            enc, enc_tokens = encoded, encoder_tokens
            if rows > 1:
                enc = jnp.repeat(encoded, rows, axis=0)
                enc_tokens = jnp.repeat(encoder_tokens, rows, axis=0)
            logits, new = module.apply({"params": params, "cache": cache}, enc,
                                       enc_tokens, ids, **kwargs)
            return logits[:, 0], new["cache"]

        return state["cache"], tokens_to_logits

    def predict_batch_with_aux(self, params, batch: Batch, *, method: str = "greedy",
                               max_decode_length: int | None = None,
                               rng: Array | None = None, temperature: float = 1.0,
                               top_k: int = 0, top_p: float = 1.0, beam_size: int = 4,
                               alpha: float = 0.6, early_stop: bool = True) -> tuple[Array, dict[str, Array]]:
        """Decoded token ids [batch, length] plus {"scores": [batch] log-likelihood
        (beam: length-normalised), "num_steps": decoder steps run}.

        method: "greedy", "sample" (temperature, top_k, top_p, rng; default seed 0) or
        "beam" (beam_size, alpha; the best beam). length = max_decode_length, or
        the width of batch["decoder_input_tokens"]. Sequences stop at EOS and
        are padded with 0; decoding ends once every row has produced EOS.
        """
        if method not in DECODE_METHODS:
            raise ValueError(f"method must be one of {DECODE_METHODS}, got {method!r}")
        encoder_tokens = batch["encoder_input_tokens"]
        length = max_decode_length or batch["decoder_input_tokens"].shape[1]
        cache, tokens_to_logits = self._decoder_fns(params, encoder_tokens, length)
        inputs = jnp.zeros((encoder_tokens.shape[0], length), jnp.int32)
        common = dict(eos_id=self.eos_id, early_stop=early_stop)
        if method == "greedy":
            out = decoding.greedy(inputs, cache, tokens_to_logits, **common)
        elif method == "sample":
            rng = jax.random.key(0) if rng is None else rng
            out = decoding.temperature_sample(inputs, cache, tokens_to_logits, rng,
                                              temperature=temperature, top_k=top_k,
                                              top_p=top_p, **common)
        else:
            out = decoding.beam_search(inputs, cache, tokens_to_logits,
                                       beam_size=beam_size, alpha=alpha, **common)
            out = out._replace(sequences=out.sequences[:, 0], scores=out.scores[:, 0])
        return out.sequences, {"scores": out.scores, "num_steps": out.num_steps}

    def predict_batch(self, params, batch: Batch, **kwargs) -> Array:
        """Decoded token ids [batch, length]; see `predict_batch_with_aux`."""
        return self.predict_batch_with_aux(params, batch, **kwargs)[0]
