"""Flax (linen) T5 encoder-decoder: T5 1.0 and 1.1, tiny to 3B.

The parameter tree uses T5X's names (``token_embedder/embedding``,
``encoder/layers_{i}/attention/query/kernel``, ..., ``decoder/logits_dense/kernel``),
so a T5X checkpoint's ``target`` tree and ours are the same tree, and every
parameter carries T5X's logical axis names (batch, length, embed, mlp, heads, kv,
joined_kv, vocab, relpos_buckets) so T5X-style rules shard it. The numerics follow
Hugging Face / Mesh-TensorFlow T5 exactly: RMS norm without mean subtraction,
unscaled attention logits (the 1/sqrt(d_kv) lives in the query initialisation),
one relative-position-bias table per stack added in every layer, and for T5 1.0 a
tied output head whose logits are scaled by d_model**-0.5.

Parameters are always float32; activations run in ``config.dtype``; logits are
returned in float32. ``decode=True`` runs the decoder one token at a time against
a flax ``cache`` collection (see ``Transformer.decode``).

This module wires the stacks and their masks; the configuration and presets are
:mod:`explistops_jax.t5_config` (re-exported here), the layers
:mod:`explistops_jax.layers`.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from explistops_jax import layers
from explistops_jax.t5_config import (  # noqa: F401  (re-exported: network.get_config, ...)
    ACTIVATION_DTYPES,
    PRESETS,
    REMAT_POLICIES,
    T5Config,
    get_config,
)

Array = jax.Array
# Added to attention logits where attention is not allowed. Finite, so that a row
# with nothing to attend to gives a uniform (not NaN) distribution.
NEG_INF = -1e10

__all__ = [
    "ACTIVATION_DTYPES",
    "T5Config",
    "PRESETS",
    "get_config",
    "Encoder",
    "Decoder",
    "Transformer",
]


def _layer_class(cls, config: T5Config, static_argnums: Sequence[int]):
    """`cls`, rematerialised in training when config.remat_policy asks for it."""
    if config.remat_policy == "none":
        return cls
    return nn.remat(cls, policy=REMAT_POLICIES[config.remat_policy],
                    static_argnums=tuple(static_argnums))


# ----------------------------------------------------------------- masks


def _mask_to_bias(mask: Array, dtype) -> Array:
    """[b, q, k] bool -> [b, 1, q, k] additive bias (0 allowed, NEG_INF not)."""
    return jnp.where(mask[:, None], 0.0, NEG_INF).astype(dtype)


def _attention_mask(key_valid: Array, q_segments: Array | None,
                    k_segments: Array | None, q_len: int) -> Array:
    """[b, q, k]: a key is visible if it is not padding and (when packed) in the
    query's segment. Padding queries are not masked: their outputs are ignored,
    and leaving them unmasked keeps them finite and equal to HF's."""
    if (q_segments is None) != (k_segments is None):
        raise ValueError("packed inputs need both encoder_segment_ids and "
                         "decoder_segment_ids (or neither)")
    batch, k_len = key_valid.shape
    mask = jnp.broadcast_to(key_valid[:, None, :], (batch, q_len, k_len))
    if q_segments is not None:
        mask = mask & (q_segments[:, :, None] == k_segments[:, None, :])
    return mask


def _default_positions(tokens: Array) -> Array:
    return jnp.arange(tokens.shape[1], dtype=jnp.int32)[None, :]  # [1, l]


# ----------------------------------------------------------------- stacks


class Encoder(nn.Module):
    """Embedding, relative position bias, encoder layers, final norm."""

    config: T5Config
    shared_embedding: nn.Module

    @nn.compact
    def __call__(self, tokens: Array, segment_ids: Array | None = None,
                 positions: Array | None = None, deterministic: bool = True) -> Array:
        # tokens: [b, l] -> [b, l, embed]
        cfg = self.config
        drop = lambda y: layers.dropout(cfg)(y, deterministic=deterministic)
        pos = _default_positions(tokens) if positions is None else positions
        bias = layers.RelativePositionBias(cfg, True, name="relpos_bias")(pos, pos)
        mask = _attention_mask(tokens > 0, segment_ids, segment_ids, tokens.shape[1])
        mask_bias = _mask_to_bias(mask, bias.dtype)  # [b, 1, l, l]
        mask_bias = jnp.broadcast_to(mask_bias, mask_bias.shape[:1] + bias.shape[1:])
        bias = layers.add_bias(cfg, mask_bias, bias)  # [b, h, l, l]
        x = layers.constrain(drop(self.shared_embedding(tokens)))
        layer = _layer_class(layers.EncoderLayer, cfg, static_argnums=(3,))
        for i in range(cfg.num_encoder_layers):
            x = layer(cfg, name=f"layers_{i}")(x, bias, deterministic)
        x = layers.RMSNorm(cfg.layer_norm_epsilon, cfg.activation_dtype, name="encoder_norm")(x)
        return layers.constrain(drop(x))


class Decoder(nn.Module):
    """Embedding, causal relative position bias, decoder layers, final norm,
    output head (tied and scaled for 1.0, `logits_dense` for 1.1)."""

    config: T5Config
    shared_embedding: nn.Module

    def _self_bias(self, tokens, segment_ids, positions, decode, max_decode_length):
        """Self-attention bias [b|1, h, q, k] and the decode step (or None)."""
        cfg = self.config
        relpos = layers.RelativePositionBias(cfg, False, name="relpos_bias")
        if decode and self.has_variable("cache", "index"):
            # One step: query at `index`, keys = every cache slot up to it.
            index = self.variable("cache", "index", jnp.zeros, (), jnp.int32)
            step = index.value
            index.value = step + 1
            if max_decode_length is None:
                raise ValueError("decode=True needs max_decode_length (the cache length)")
            k_pos = jnp.arange(max_decode_length, dtype=jnp.int32)[None, :]
            q_pos = jnp.reshape(step, (1, 1)) if positions is None else positions
            bias = relpos(q_pos, k_pos)  # [1|b, h, 1, max_len]
            causal = (k_pos <= step)[:, None, :]  # [1, 1, max_len]
            return bias + _mask_to_bias(causal, bias.dtype), step
        length = tokens.shape[1]
        if decode:  # the pass that creates the cache: its length is the input's
            if max_decode_length not in (None, length):
                raise ValueError(
                    f"creating the decode cache: decoder_input_tokens has length {length} "
                    f"but max_decode_length is {max_decode_length}; pass "
                    f"[batch, max_decode_length] tokens (e.g. zeros)")
            self.variable("cache", "index", jnp.zeros, (), jnp.int32)
        pos = _default_positions(tokens) if positions is None else positions
        bias = relpos(pos, pos)
        idx = jnp.arange(length)
        mask = jnp.broadcast_to(idx[None, :] <= idx[:, None], (1, length, length))
        if segment_ids is not None:
            mask = mask & (segment_ids[:, :, None] == segment_ids[:, None, :])
        return bias + _mask_to_bias(mask, bias.dtype), None

    @nn.compact
    def __call__(self, encoded: Array, encoder_tokens: Array, tokens: Array,
                 encoder_segment_ids: Array | None = None,
                 segment_ids: Array | None = None, positions: Array | None = None,
                 deterministic: bool = True, decode: bool = False,
                 max_decode_length: int | None = None) -> Array:
        # encoded: [b, le, embed], tokens: [b, ld] -> logits [b, ld, vocab] float32
        cfg = self.config
        drop = lambda y: layers.dropout(cfg)(y, deterministic=deterministic)
        self_bias, step = self._self_bias(tokens, segment_ids, positions, decode,
                                          max_decode_length)
        cross_mask = _attention_mask(encoder_tokens > 0, segment_ids,
                                     encoder_segment_ids, tokens.shape[1])
        cross_bias = _mask_to_bias(cross_mask, cfg.activation_dtype)  # [b, 1, q, le]
        y = layers.constrain(drop(self.shared_embedding(tokens)))
        layer = layers.DecoderLayer if decode else _layer_class(layers.DecoderLayer, cfg, (5, 6))
        for i in range(cfg.num_decoder_layers):
            y = layer(cfg, name=f"layers_{i}")(
                y, encoded, self_bias, cross_bias, deterministic, decode, step)
        y = layers.RMSNorm(cfg.layer_norm_epsilon, cfg.activation_dtype, name="decoder_norm")(y)
        y = layers.constrain(drop(y))
        if cfg.logits_via_embedding:
            logits = self.shared_embedding.attend(y) * (cfg.emb_dim ** -0.5)
        else:
            logits = layers.Dense(cfg.vocab_size, ("embed", "vocab"), cfg.activation_dtype,
                                  cpu_kernels=cfg.cpu_kernels, name="logits_dense")(y)
        logits = nn.with_logical_constraint(logits, ("batch", "length", "vocab"))
        return logits.astype(jnp.float32)


class Transformer(nn.Module):
    """T5 encoder-decoder. Token id 0 is padding (and the decoder start token).

    Inputs are seqio EncDecFeatureConverter features; `*_segment_ids` and
    `*_positions` are given for packed batches (attention stays inside a segment,
    relative positions come from the positions).
    """

    config: T5Config

    def setup(self):
        cfg = self.config
        self.token_embedder = layers.Embed(cfg.vocab_size, cfg.emb_dim, cfg.activation_dtype)
        self.encoder = Encoder(cfg, self.token_embedder)
        self.decoder = Decoder(cfg, self.token_embedder)

    def encode(self, encoder_input_tokens: Array, encoder_segment_ids: Array | None = None,
               encoder_positions: Array | None = None, *,
               enable_dropout: bool = False) -> Array:
        """[b, le] token ids -> encoder output [b, le, embed]."""
        return self.encoder(encoder_input_tokens, encoder_segment_ids, encoder_positions,
                            deterministic=not enable_dropout)

    def decode(self, encoded: Array, encoder_input_tokens: Array,
               decoder_input_tokens: Array, encoder_segment_ids: Array | None = None,
               decoder_segment_ids: Array | None = None,
               decoder_positions: Array | None = None, *, enable_dropout: bool = False,
               decode: bool = False, max_decode_length: int | None = None) -> Array:
        """Decoder logits [b, ld, vocab] (float32).

        Cached decoding: first call with ``decode=True`` and
        ``decoder_input_tokens`` of shape [b, max_decode_length] and
        ``mutable=["cache"]`` (with the real params and encoder output: the
        cross-attention keys/values are projected into the cache then); then
        call once per token with [b, 1] tokens, the same `encoded` and
        ``max_decode_length``, getting [b, 1, vocab] and the updated cache.
        """
        return self.decoder(encoded, encoder_input_tokens, decoder_input_tokens,
                            encoder_segment_ids, decoder_segment_ids, decoder_positions,
                            deterministic=not enable_dropout, decode=decode,
                            max_decode_length=max_decode_length)

    def __call__(self, encoder_input_tokens: Array, decoder_input_tokens: Array, *,
                 encoder_segment_ids: Array | None = None,
                 decoder_segment_ids: Array | None = None,
                 encoder_positions: Array | None = None,
                 decoder_positions: Array | None = None,
                 enable_dropout: bool = False, decode: bool = False,
                 max_decode_length: int | None = None) -> Array:
        """Teacher-forced forward pass: logits [b, ld, vocab] (float32)."""
        encoded = self.encode(encoder_input_tokens, encoder_segment_ids, encoder_positions,
                              enable_dropout=enable_dropout)
        return self.decode(encoded, encoder_input_tokens, decoder_input_tokens,
                           encoder_segment_ids, decoder_segment_ids, decoder_positions,
                           enable_dropout=enable_dropout, decode=decode,
                           max_decode_length=max_decode_length)
