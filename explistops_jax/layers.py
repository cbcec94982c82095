"""The layers of the Flax T5 network: dense, embedding, RMS norm, relative
position bias, attention, MLP, and one encoder and one decoder layer.

Parameters are always float32 and carry T5X's logical axis names; activations run
in ``config.dtype``. Where ``T5Config.cpu_kernels`` resolves to True, dropout, the
attention bias and dense layers go through :mod:`explistops_jax.cpu_kernels`
(the same values, faster on XLA's CPU backend); elsewhere through
``nn.Dropout``, ``+`` and a plain contraction.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from explistops_jax import cpu_kernels
from explistops_jax.errors import ConfigError
from explistops_jax.t5_config import ACTIVATIONS, T5Config

Array = jax.Array

__all__ = [
    "Dense",
    "Embed",
    "RMSNorm",
    "RelativePositionBias",
    "Attention",
    "Mlp",
    "EncoderLayer",
    "DecoderLayer",
    "relative_position_bucket",
    "dropout",
    "add_bias",
    "constrain",
]


# ------------------------------------------------------ switchable kernels


def dropout(cfg: T5Config) -> nn.Module:
    """Dropout at the config's rate; axis -2 (length, or the query axis of
    [b, h, q, k] attention weights) shares its mask when ``broadcast_dropout``.
    ``cpu_kernels.Dropout`` (flax's masks, bit for bit) or ``nn.Dropout``."""
    module = cpu_kernels.Dropout if cpu_kernels.enabled(cfg.cpu_kernels) else nn.Dropout
    return module(cfg.dropout_rate, broadcast_dims=(-2,) if cfg.broadcast_dropout else ())


def add_bias(cfg: T5Config, logits: Array, bias: Array) -> Array:
    """``logits + bias`` (bias broadcast over the batch and heads where it is 1);
    with the CPU kernels, its gradient summed as a matrix-vector product."""
    if cpu_kernels.enabled(cfg.cpu_kernels):
        return cpu_kernels.add_bias(logits, bias)
    return logits + bias


def constrain(x: Array) -> Array:
    """Hidden states [batch, length, embed], sharded by their logical axes."""
    return nn.with_logical_constraint(x, ("batch", "length", "embed"))


# ------------------------------------------------------ relative position buckets


@functools.lru_cache(maxsize=None)
def _bucket_table(bidirectional: bool, num_buckets: int, max_distance: int) -> np.ndarray:
    """Bucket of each distance 0..cap (cap = the distance from which the bucket
    no longer changes), computed once on the host in float32 exactly as
    Mesh-TensorFlow / Hugging Face T5 compute it."""
    n = num_buckets // 2 if bidirectional else num_buckets
    max_exact = n // 2
    cap = max(max_distance, max_exact)
    dist = np.arange(cap + 1, dtype=np.int64)
    with np.errstate(divide="ignore"):
        scaled = (np.log(dist.astype(np.float32) / np.float32(max_exact))
                  / np.float32(math.log(max_distance / max_exact))
                  * np.float32(n - max_exact))
    large = max_exact + np.where(dist >= max_exact, scaled, 0).astype(np.int64)
    large = np.minimum(large, n - 1)
    return np.where(dist < max_exact, dist, large).astype(np.int32)


def relative_position_bucket(relative_position: Array, bidirectional: bool,
                             num_buckets: int = 32, max_distance: int = 128) -> Array:
    """T5's bucket of ``relative_position = key_position - query_position``.

    Bidirectional (encoder): half the buckets for keys to the right. Causal
    (decoder): keys to the right share bucket 0 (they are masked anyway). Small
    distances get one bucket each, larger ones logarithmic buckets up to
    `max_distance`, beyond which all share the last bucket.
    """
    table = _bucket_table(bidirectional, num_buckets, max_distance)
    cap = table.shape[0] - 1
    rel = jnp.asarray(relative_position, jnp.int32)
    if bidirectional:
        offset = jnp.where(rel > 0, num_buckets // 2, 0)
        dist = jnp.abs(rel)
    else:
        offset = 0
        dist = jnp.maximum(-rel, 0)
    return offset + jnp.asarray(table)[jnp.minimum(dist, cap)]


# ----------------------------------------------------------------- layers


def _kernel_init(scale: float = 1.0):
    """T5X's kernel initialiser, fan-in scaled truncated normal."""
    return nn.initializers.variance_scaling(scale, "fan_in", "truncated_normal")


class Dense(nn.Module):
    """Bias-free dense layer over the last axis; kernel [in, features].
    ``cpu_kernels``: as ``T5Config.cpu_kernels`` (None: on where JAX's backend
    is the CPU)."""

    features: int
    kernel_axes: tuple[str, str]
    dtype: Any = jnp.float32
    kernel_init: Any = _kernel_init()
    cpu_kernels: bool | None = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        kernel = self.param(
            "kernel", nn.with_logical_partitioning(self.kernel_init, self.kernel_axes),
            (x.shape[-1], self.features), jnp.float32)
        x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
        if cpu_kernels.enabled(self.cpu_kernels):
            return cpu_kernels.dense(x, kernel)
        return jnp.dot(x, kernel)


class Embed(nn.Module):
    """Token embedding [vocab, embed]; `attend` gives x @ embedding.T (tied head)."""

    num_embeddings: int
    features: int
    dtype: Any = jnp.float32

    def setup(self):
        self.embedding = self.param(
            "embedding",
            nn.with_logical_partitioning(nn.initializers.normal(stddev=1.0),
                                         ("vocab", "embed")),
            (self.num_embeddings, self.features), jnp.float32)

    def __call__(self, ids: Array) -> Array:  # [b, l] -> [b, l, embed]
        return jnp.take(self.embedding, ids, axis=0).astype(self.dtype)

    def attend(self, x: Array) -> Array:  # [b, l, embed] -> [b, l, vocab]
        return jnp.dot(x.astype(self.dtype), self.embedding.T.astype(self.dtype))


class RMSNorm(nn.Module):
    """T5 layer norm: scale only, no mean subtraction, computed in float32."""

    epsilon: float = 1e-6
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        scale = self.param("scale", nn.with_logical_partitioning(
            nn.initializers.ones, ("embed",)), (x.shape[-1],), jnp.float32)
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.epsilon)
        return (y * scale).astype(self.dtype)


class RelativePositionBias(nn.Module):
    """One [heads, buckets] table per stack; bias [b|1, heads, q, k] from positions."""

    config: T5Config
    bidirectional: bool

    @nn.compact
    def __call__(self, q_pos: Array, k_pos: Array) -> Array:
        # q_pos: [b|1, q], k_pos: [b|1, k] (int) -> [b|1, heads, q, k]
        cfg = self.config
        table = self.param(
            "rel_embedding",
            nn.with_logical_partitioning(
                nn.initializers.variance_scaling(1.0, "fan_avg", "uniform"),
                ("heads", "relpos_buckets")),
            (cfg.num_heads, cfg.relative_attention_num_buckets), jnp.float32)
        buckets = relative_position_bucket(
            k_pos[:, None, :] - q_pos[:, :, None], self.bidirectional,
            cfg.relative_attention_num_buckets, cfg.relative_attention_max_distance)
        bias = jnp.take(table, buckets, axis=1)  # [heads, b, q, k]
        return jnp.transpose(bias, (1, 0, 2, 3)).astype(cfg.activation_dtype)


class Attention(nn.Module):
    """Multi-head dot-product attention without logit scaling.

    `bias` ([b|1, heads|1, q, k]) carries both the mask (a large negative
    number where not allowed) and the relative position bias. In decode mode a self-attention
    layer writes the new key/value at `decode_index` into its cache and attends
    over the whole cache; a cross-attention layer projects the encoder output
    once, when the cache is created, and reuses it at every step.
    """

    config: T5Config
    self_attention: bool = True

    def _heads(self, x: Array) -> Array:  # [b, l, h*kv] -> [b, l, h, kv]
        cfg = self.config
        x = x.reshape(x.shape[:2] + (cfg.num_heads, cfg.head_dim))
        return nn.with_logical_constraint(x, ("batch", "length", "heads", "kv"))

    def _key_value(self, inputs_kv: Array, decode: bool, decode_index):
        """Keys and values [b, k, h, kv], through the cache in decode mode."""
        cfg = self.config
        dtype, joined = cfg.activation_dtype, cfg.num_heads * cfg.head_dim
        project = lambda: (
            self._heads(Dense(joined, ("embed", "joined_kv"), dtype,
                              cpu_kernels=cfg.cpu_kernels, name="key")(inputs_kv)),
            self._heads(Dense(joined, ("embed", "joined_kv"), dtype,
                              cpu_kernels=cfg.cpu_kernels, name="value")(inputs_kv)))
        if not decode:
            return project()
        if not self.self_attention:  # encoder output: project once, then reuse
            creating = not self.has_variable("cache", "cached_key")
            kv = project() if creating else (None, None)
            k = self.variable("cache", "cached_key", lambda: kv[0])
            v = self.variable("cache", "cached_value", lambda: kv[1])
            return k.value, v.value
        k_new, v_new = project()
        creating = not self.has_variable("cache", "cached_key")
        k = self.variable("cache", "cached_key", jnp.zeros, k_new.shape, k_new.dtype)
        v = self.variable("cache", "cached_value", jnp.zeros, v_new.shape, v_new.dtype)
        if creating:  # the pass that sizes the cache: [b, max_len, h, kv]
            return k_new, v_new
        if k_new.shape[1] != 1:
            raise ValueError(f"decode=True takes one token per step, got {k_new.shape[1]}")
        start = (0, decode_index, 0, 0)
        k.value = jax.lax.dynamic_update_slice(k.value, k_new, start)
        v.value = jax.lax.dynamic_update_slice(v.value, v_new, start)
        return k.value, v.value

    @nn.compact
    def __call__(self, inputs_q: Array, inputs_kv: Array, bias: Array | None, *,
                 deterministic: bool = True, decode: bool = False,
                 decode_index: Array | None = None) -> Array:
        # inputs_q: [b, q, embed], inputs_kv: [b, k, embed] -> [b, q, embed]
        cfg = self.config
        if (cfg.attention_kernel == "cudnn" and jax.default_backend() != "gpu"
                and not self.is_initializing()):
            # on every applying path (dropout training and decoding use einsum), so
            # the mistake shows when the train step compiles, not at the first
            # evaluation; initialising computes only shapes, which any host may do
            # for a GPU's config (plans, checkpoint checks)
            raise ConfigError(
                f"T5Config.attention_kernel='cudnn' needs an NVIDIA GPU; JAX's backend "
                f"here is {jax.default_backend()!r}",
                expected="attention_kernel 'xla' or 'einsum' off the GPU")
        dtype, joined = cfg.activation_dtype, cfg.num_heads * cfg.head_dim
        q_init = _kernel_init(1.0 / cfg.head_dim)  # the 1/sqrt(d_kv) of attention
        query = Dense(joined, ("embed", "joined_kv"), dtype, q_init, cfg.cpu_kernels,
                      name="query")(inputs_q)
        query = self._heads(query)  # [b, q, h, kv]
        key, value = self._key_value(inputs_kv, decode, decode_index)  # [b, k, h, kv]
        # Initialisation (shapes only) takes the einsum path on any backend.
        fused = (cfg.attention_kernel != "einsum" and not decode
                 and (deterministic or cfg.dropout_rate == 0.0) and not self.is_initializing())
        attend = self._fused if fused else self._einsum
        out = attend(query, key, value, bias, deterministic)  # [b, q, h, kv]
        out = out.reshape(out.shape[:2] + (joined,))
        out = nn.with_logical_constraint(out, ("batch", "length", "joined_kv"))
        return Dense(cfg.emb_dim, ("joined_kv", "embed"), dtype,
                     cpu_kernels=cfg.cpu_kernels, name="out")(out)

    def _einsum(self, query, key, value, bias, deterministic):
        cfg = self.config
        if cfg.float32_attention_logits:
            query, key = query.astype(jnp.float32), key.astype(jnp.float32)
        # Heads ahead of length ([b, h, len, kv]) in both products: the batched
        # matmuls' canonical layout; the CPU step is 4% faster than with
        # [b, len, h, kv] operands (scripts/bench_cpu_step.py).
        heads_first = lambda x: jnp.swapaxes(x, 1, 2)
        logits = jnp.einsum("bhqd,bhkd->bhqk", heads_first(query), heads_first(key))
        if bias is not None:
            logits = add_bias(cfg, logits, bias.astype(logits.dtype))
        weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(cfg.activation_dtype)
        weights = dropout(cfg)(weights, deterministic=deterministic)  # [b, h, q, k]
        out = jnp.einsum("bhqk,bhkd->bhqd", weights,
                         heads_first(value.astype(cfg.activation_dtype)))
        return heads_first(out)

    def _fused(self, query, key, value, bias, deterministic):
        """The same attention through jax.nn.dot_product_attention ([b, len, h, kv]
        operands; scale 1, as T5 folds it into the query kernel). Its bias must
        cover every example and head, so the shared parts are broadcast."""
        del deterministic  # only called where no dropout applies
        cfg = self.config
        if cfg.attention_kernel == "xla" and cfg.float32_attention_logits:
            query, key = query.astype(jnp.float32), key.astype(jnp.float32)
            value = value.astype(jnp.float32)
            if bias is not None:
                bias = bias.astype(jnp.float32)
        else:
            query, key, value = (x.astype(cfg.activation_dtype) for x in (query, key, value))
        if bias is not None:
            full = (query.shape[0], query.shape[2], query.shape[1], key.shape[1])
            bias = jnp.broadcast_to(bias.astype(query.dtype), full)
        out = jax.nn.dot_product_attention(query, key, value, bias, scale=1.0,
                                           implementation=cfg.attention_kernel)
        return out.astype(cfg.activation_dtype)


class Mlp(nn.Module):
    """T5 feed-forward: `wi` + ReLU (1.0) or gelu(`wi_0`) * `wi_1` (1.1), then `wo`."""

    config: T5Config

    @nn.compact
    def __call__(self, x: Array, deterministic: bool = True) -> Array:
        cfg = self.config
        dtype = cfg.activation_dtype
        acts = cfg.mlp_activations
        h = None
        for i, act in enumerate(acts):
            name = "wi" if len(acts) == 1 else f"wi_{i}"
            dense = Dense(cfg.mlp_dim, ("embed", "mlp"), dtype, cpu_kernels=cfg.cpu_kernels,
                          name=name)
            y = ACTIVATIONS[act](dense(x))
            h = y if h is None else h * y
        h = nn.with_logical_constraint(h, ("batch", "length", "mlp"))
        h = dropout(cfg)(h, deterministic=deterministic)
        return Dense(cfg.emb_dim, ("mlp", "embed"), dtype, cpu_kernels=cfg.cpu_kernels,
                     name="wo")(h)


class EncoderLayer(nn.Module):
    """Pre-norm self-attention then MLP, each with dropout and a residual."""

    config: T5Config

    @nn.compact
    def __call__(self, x: Array, bias: Array, deterministic: bool = True) -> Array:
        cfg = self.config
        norm = lambda name: RMSNorm(cfg.layer_norm_epsilon, cfg.activation_dtype, name=name)
        drop = lambda y: dropout(cfg)(y, deterministic=deterministic)
        y = norm("pre_attention_layer_norm")(x)
        y = Attention(cfg, name="attention")(y, y, bias, deterministic=deterministic)
        x = constrain(x + drop(y))
        y = Mlp(cfg, name="mlp")(norm("pre_mlp_layer_norm")(x), deterministic)
        return constrain(x + drop(y))


class DecoderLayer(nn.Module):
    """Pre-norm causal self-attention, cross-attention, MLP; dropout + residuals."""

    config: T5Config

    @nn.compact
    def __call__(self, x: Array, encoded: Array, self_bias: Array, cross_bias: Array,
                 deterministic: bool = True, decode: bool = False,
                 decode_index: Array | None = None) -> Array:
        cfg = self.config
        norm = lambda name: RMSNorm(cfg.layer_norm_epsilon, cfg.activation_dtype, name=name)
        drop = lambda y: dropout(cfg)(y, deterministic=deterministic)
        y = norm("pre_self_attention_layer_norm")(x)
        y = Attention(cfg, True, name="self_attention")(
            y, y, self_bias, deterministic=deterministic, decode=decode,
            decode_index=decode_index)
        x = constrain(x + drop(y))
        y = norm("pre_cross_attention_layer_norm")(x)
        y = Attention(cfg, False, name="encoder_decoder_attention")(
            y, encoded, cross_bias, deterministic=deterministic, decode=decode)
        x = constrain(x + drop(y))
        y = Mlp(cfg, name="mlp")(norm("pre_mlp_layer_norm")(x), deterministic)
        return constrain(x + drop(y))
