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
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from explistops_jax.errors import ConfigError, UnknownFieldError, UnknownNameError

Array = jax.Array
# Added to attention logits where attention is not allowed. Finite, so that a row
# with nothing to attend to gives a uniform (not NaN) distribution.
NEG_INF = -1e10

__all__ = [
    "ACTIVATION_DTYPES",
    "T5Config",
    "PRESETS",
    "get_config",
    "Transformer",
    "relative_position_bucket",
    "Dropout",
    "random_bits",
]


# --------------------------------------------------------------------- config


@dataclasses.dataclass(frozen=True)
class T5Config:
    """Shapes and options of one T5 network. Variants by ``dataclasses.replace``
    (or ``config.replace(...)``)."""

    vocab_size: int = 32128
    emb_dim: int = 512
    num_heads: int = 8
    num_encoder_layers: int = 6
    num_decoder_layers: int = 6
    head_dim: int = 64
    mlp_dim: int = 2048
    # ("relu",) = T5 1.0 MLP `wi`; ("gelu", "linear") = T5 1.1 gated GELU `wi_0 * wi_1`.
    mlp_activations: tuple[str, ...] = ("relu",)
    dropout_rate: float = 0.0
    # True: dropout masks shared along the length axis of hidden states and the
    # query axis of attention weights, as T5X does (cheaper: one draw per row);
    # False: one draw per element, as Hugging Face's T5 does.
    broadcast_dropout: bool = False
    # True (T5 1.0): output head = token embedding, logits scaled by emb_dim**-0.5.
    logits_via_embedding: bool = True
    # Activation/computation dtype (name or jnp dtype); parameters stay float32.
    dtype: Any = "float32"
    # Attention logits and softmax in float32 even when dtype is bfloat16.
    float32_attention_logits: bool = True
    # How attention is computed where no dropout applies to its weights (always in
    # evaluation; in training only with dropout_rate 0; cached decoding always uses
    # "einsum"): "einsum" (two einsums and a softmax, the weights materialised),
    # "xla" (jax.nn.dot_product_attention's XLA implementation, the same sums) or
    # "cudnn" (its fused cuDNN kernel: NVIDIA GPUs, bfloat16/float16 activations).
    # Not saved with checkpoints (checkpoints.common.config_to_dict).
    attention_kernel: str = "einsum"
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    layer_norm_epsilon: float = 1e-6
    # Layers stay unrolled (T5X's `layers_{i}` names); True is rejected.
    scan_layers: bool = False
    # Rematerialisation of each layer in training: "none" | "full" | "dots"
    # ("dots" saves matmul outputs, recomputes the rest).
    remat_policy: str = "none"

    def __post_init__(self):
        if not 0.0 <= self.dropout_rate <= 1.0:
            raise ConfigError(f"T5Config.dropout_rate: {self.dropout_rate!r} is not a rate",
                              expected="a number in [0, 1]")
        for act in self.mlp_activations:
            if act not in _ACTIVATIONS:
                raise ConfigError(
                    f"T5Config.mlp_activations: unknown activation {act!r}",
                    expected="one of " + ", ".join(sorted(_ACTIVATIONS)))
        if self.scan_layers:
            raise ConfigError(
                "T5Config.scan_layers=True is not supported: layers are unrolled so "
                "that the parameter tree keeps T5X's `layers_{i}` names",
                expected="scan_layers = False")
        if self.remat_policy not in _REMAT_POLICIES:
            raise ConfigError(
                f"T5Config.remat_policy: {self.remat_policy!r} is not one of "
                f"{sorted(_REMAT_POLICIES)}", expected="one of " + ", ".join(_REMAT_POLICIES))
        try:
            dtype = jnp.dtype(self.dtype)
        except TypeError:
            raise UnknownFieldError(f"T5Config.dtype: unknown dtype {self.dtype!r}",
                                    expected="e.g. 'float32' or 'bfloat16'") from None
        if dtype not in ACTIVATION_DTYPES:  # float64 would be float32 without jax_enable_x64
            raise ConfigError(f"T5Config.dtype: {dtype.name} activations are not supported",
                              expected="float32, bfloat16 or float16")
        for name in _POSITIVE_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ConfigError(f"T5Config.{name}: {value!r}", expected="a positive integer")
        if self.attention_kernel not in _ATTENTION_KERNELS:
            raise ConfigError(
                f"T5Config.attention_kernel: {self.attention_kernel!r} is not one of "
                f"{list(_ATTENTION_KERNELS)}", expected="one of " + ", ".join(_ATTENTION_KERNELS))
        if (self.attention_kernel == "cudnn"
                and jnp.dtype(self.dtype) not in (jnp.bfloat16, jnp.float16)):
            raise ConfigError(
                f"T5Config.attention_kernel='cudnn' needs bfloat16 or float16 activations, "
                f"got dtype {jnp.dtype(self.dtype).name}",
                expected="dtype 'bfloat16' (or attention_kernel 'einsum'/'xla')")

    def replace(self, **changes) -> "T5Config":
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    @property
    def activation_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.dtype)


_ACTIVATIONS = {
    "relu": nn.relu,
    "gelu": functools.partial(nn.gelu, approximate=True),  # HF "gelu_new"
    "gelu_exact": functools.partial(nn.gelu, approximate=False),
    "silu": nn.silu,
    "linear": lambda x: x,
}

_ATTENTION_KERNELS = ("einsum", "xla", "cudnn")
ACTIVATION_DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
_POSITIVE_FIELDS = ("vocab_size", "emb_dim", "num_heads", "num_encoder_layers",
                    "num_decoder_layers", "head_dim", "mlp_dim",
                    "relative_attention_num_buckets", "relative_attention_max_distance")

_REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}

_T5_1_0 = T5Config(mlp_activations=("relu",), logits_via_embedding=True)
_T5_1_1 = T5Config(mlp_activations=("gelu", "linear"), logits_via_embedding=False)


def _shape(base: T5Config, d, h, layers, dk, ff) -> T5Config:
    return base.replace(emb_dim=d, num_heads=h, num_encoder_layers=layers,
                        num_decoder_layers=layers, head_dim=dk, mlp_dim=ff)


# Published shapes (d_model, heads, layers per stack, d_kv, d_ff); vocab 32128.
PRESETS: dict[str, T5Config] = {
    "t5_1_0_tiny": _shape(_T5_1_0, 64, 2, 2, 32, 128),
    "t5_1_0_small": _shape(_T5_1_0, 512, 8, 6, 64, 2048),
    "t5_1_0_base": _shape(_T5_1_0, 768, 12, 12, 64, 3072),
    "t5_1_0_large": _shape(_T5_1_0, 1024, 16, 24, 64, 4096),
    "t5_1_0_3B": _shape(_T5_1_0, 1024, 32, 24, 128, 16384),
    "t5_1_1_tiny": _shape(_T5_1_1, 64, 2, 2, 32, 128),
    "t5_1_1_small": _shape(_T5_1_1, 512, 6, 8, 64, 1024),
    "t5_1_1_base": _shape(_T5_1_1, 768, 12, 12, 64, 2048),
    "t5_1_1_large": _shape(_T5_1_1, 1024, 16, 24, 64, 2816),
    "t5_1_1_xl": _shape(_T5_1_1, 2048, 32, 24, 64, 5120),
}


def get_config(name: str, **overrides) -> T5Config:
    """The preset `name` with some fields overridden, e.g.
    ``get_config("t5_1_1_tiny", vocab_size=128, dtype="bfloat16")``."""
    if name not in PRESETS:
        raise UnknownNameError(f"unknown model preset {name!r}",
                               expected="one of " + ", ".join(PRESETS))
    fields = {f.name for f in dataclasses.fields(T5Config)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise UnknownFieldError(f"get_config({name!r}): unknown T5Config fields {unknown}",
                                expected="fields of T5Config")
    return PRESETS[name].replace(**overrides)


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


# Threefry-2x32's rotation distances, by group of four rounds (alternating), and
# the constant of its key schedule (Salmon et al., "Parallel random numbers: as
# easy as 1, 2, 3", SC 2011; the same hash as jax.random's threefry2x32).
_THREEFRY_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_THREEFRY_PARITY = 0x1BD11BDA


def _threefry2x32(k0: Array, k1: Array, x0: Array, x1: Array) -> tuple[Array, Array]:
    """Threefry-2x32 (20 rounds) of the counters (x0, x1) under the key (k0, k1),
    written out round by round as uint32 elementwise ops."""
    ks = (k0, k1, k0 ^ k1 ^ np.uint32(_THREEFRY_PARITY))
    x0, x1 = x0 + ks[0], x1 + ks[1]
    for group in range(5):
        for r in _THREEFRY_ROTATIONS[group % 2]:
            x0 = x0 + x1
            x1 = x0 ^ ((x1 << np.uint32(r)) | (x1 >> np.uint32(32 - r)))
        x0 = x0 + ks[(group + 1) % 3]
        x1 = x1 + ks[(group + 2) % 3] + np.uint32(group + 1)
    return x0, x1


def _position(shape: tuple[int, ...]) -> Array:
    """uint32 row-major position of every element of an array of `shape`."""
    index = jnp.zeros(shape, jnp.uint32)
    stride = 1
    for axis in reversed(range(len(shape))):
        index = index + jax.lax.broadcasted_iota(jnp.uint32, shape, axis) * np.uint32(stride)
        stride *= shape[axis]
    return index


def random_bits(key: Array, shape: tuple[int, ...]) -> Array:
    """``jax.random.bits(key, shape, jnp.uint32)``, bit for bit, as ops XLA fuses.

    With a threefry key (typed or raw uint32[2]) and JAX's partitionable threefry
    (its default), the draw at each position is the xor of the two words of one
    threefry2x32 hash of (0, position). JAX lowers that hash on CPU as a loop of
    five steps, each a pass over the whole array in memory, which its consumer
    cannot fuse; here its twenty rounds are plain elementwise ops, which XLA fuses
    into the consumer (a dropout mask costs half as much in the CPU train step;
    accelerators already lower JAX's hash this way). Each draw depends only on the
    key and its position, so a sharded array's shards are drawn where they live.
    Other keys, other threefry modes and arrays of 2**32 elements or more go
    through ``jax.random.bits`` itself.
    """
    shape = tuple(shape)
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        threefry = str(jax.random.key_impl(key)) == "threefry2x32"
    else:  # raw key data: uint32[2] is threefry's (rbg's are uint32[4])
        threefry = key.shape == (2,)
    if (not threefry or not getattr(jax.config, "jax_threefry_partitionable", True)
            or math.prod(shape) >= 1 << 32):
        return jax.random.bits(key, shape, jnp.uint32)
    data = jax.random.key_data(key)
    hi, lo = _threefry2x32(data[0], data[1], jnp.zeros(shape, jnp.uint32), _position(shape))
    return hi ^ lo


def _keep_below(keep_prob: float) -> int:
    """The 32-bit draws below which flax's dropout keeps an element: its test
    ``uniform < keep_prob`` in float32, the uniform being the draw's top 23 bits
    over 2**23 (exact in float32)."""
    return math.ceil(float(np.float32(keep_prob)) * (1 << 23)) << 9


class Dropout(nn.Module):
    """``flax.linen.Dropout`` (same contract: rate, broadcast_dims, the "dropout"
    rng stream; same masks and outputs, bit for bit) whose per-element masks are
    drawn by `random_bits`, which XLA's CPU backend fuses into their consumers.

    flax keeps an element when ``uniform < 1 - rate``, its float32 uniform being
    the top 23 bits of a 32-bit draw over 2**23 (with JAX's 64-bit mode off, its
    default); that is the draw below ``ceil(float32(1 - rate) * 2**23) * 2**9``
    (`_keep_below`), compared here as integers.
    """

    rate: float
    broadcast_dims: Sequence[int] = ()

    @nn.compact
    def __call__(self, x: Array, deterministic: bool) -> Array:
        if deterministic or self.rate == 0.0:
            return x
        if self.rate == 1.0:
            return jnp.zeros_like(x)
        keep_prob = 1.0 - self.rate
        broadcast = {axis % x.ndim for axis in self.broadcast_dims}
        mask_shape = tuple(1 if axis in broadcast else size for axis, size in enumerate(x.shape))
        key = self.make_rng("dropout")
        below = _keep_below(keep_prob)
        if below >= 1 << 32:
            keep = jnp.ones(mask_shape, bool)
        elif mask_shape == x.shape:
            keep = random_bits(key, mask_shape) < np.uint32(below)
        else:  # a shared mask is drawn once, into memory; fused into its consumer,
            # it would be hashed again for every element it covers
            keep = jax.random.bits(key, mask_shape, jnp.uint32) < np.uint32(below)
        return jax.lax.select(jnp.broadcast_to(keep, x.shape), x / keep_prob, jnp.zeros_like(x))


def _dropout(cfg: T5Config) -> Dropout:
    """Dropout at the config's rate; axis -2 (length, or the query axis of
    [b, h, q, k] attention weights) shares its mask when ``broadcast_dropout``."""
    return Dropout(cfg.dropout_rate, broadcast_dims=(-2,) if cfg.broadcast_dropout else ())


def _kernel_init(scale: float = 1.0):
    """T5X's kernel initialiser, fan-in scaled truncated normal."""
    return nn.initializers.variance_scaling(scale, "fan_in", "truncated_normal")


class Dense(nn.Module):
    """Bias-free dense layer over the last axis; kernel [in, features]."""

    features: int
    kernel_axes: tuple[str, str]
    dtype: Any = jnp.float32
    kernel_init: Any = _kernel_init()

    @nn.compact
    def __call__(self, x: Array) -> Array:
        kernel = self.param(
            "kernel", nn.with_logical_partitioning(self.kernel_init, self.kernel_axes),
            (x.shape[-1], self.features), jnp.float32)
        # One 2-D matmul over all leading axes: the same product, but XLA's CPU
        # backend turns the gradient of a [b, l, in] @ [in, out] dot into a
        # slow fused transpose, which the [b*l, in] form avoids (the gated MLP's
        # gradient 1.45x faster; a no-op on accelerators).
        y = jnp.dot(x.reshape(-1, x.shape[-1]).astype(self.dtype), kernel.astype(self.dtype))
        return y.reshape(x.shape[:-1] + (self.features,))


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

    `bias` ([b|1, heads|1, q, k]) carries both the mask (NEG_INF where not
    allowed) and the relative position bias. In decode mode a self-attention
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
            self._heads(Dense(joined, ("embed", "joined_kv"), dtype, name="key")(inputs_kv)),
            self._heads(Dense(joined, ("embed", "joined_kv"), dtype, name="value")(inputs_kv)))
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
        query = Dense(joined, ("embed", "joined_kv"), dtype, q_init, name="query")(inputs_q)
        query = self._heads(query)  # [b, q, h, kv]
        key, value = self._key_value(inputs_kv, decode, decode_index)  # [b, k, h, kv]
        # Initialisation (shapes only) takes the einsum path on any backend.
        fused = (cfg.attention_kernel != "einsum" and not decode
                 and (deterministic or cfg.dropout_rate == 0.0) and not self.is_initializing())
        attend = self._fused if fused else self._einsum
        out = attend(query, key, value, bias, deterministic)  # [b, q, h, kv]
        out = out.reshape(out.shape[:2] + (joined,))
        out = nn.with_logical_constraint(out, ("batch", "length", "joined_kv"))
        return Dense(cfg.emb_dim, ("joined_kv", "embed"), dtype, name="out")(out)

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
            logits = add_bias(logits, bias.astype(logits.dtype))
        weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(cfg.activation_dtype)
        weights = _dropout(cfg)(weights, deterministic=deterministic)  # [b, h, q, k]
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
            y = _ACTIVATIONS[act](Dense(cfg.mlp_dim, ("embed", "mlp"), dtype, name=name)(x))
            h = y if h is None else h * y
        h = nn.with_logical_constraint(h, ("batch", "length", "mlp"))
        h = _dropout(cfg)(h, deterministic=deterministic)
        return Dense(cfg.emb_dim, ("mlp", "embed"), dtype, name="wo")(h)


def _constrain(x: Array) -> Array:
    return nn.with_logical_constraint(x, ("batch", "length", "embed"))


class EncoderLayer(nn.Module):
    """Pre-norm self-attention then MLP, each with dropout and a residual."""

    config: T5Config

    @nn.compact
    def __call__(self, x: Array, bias: Array, deterministic: bool = True) -> Array:
        cfg = self.config
        norm = lambda name: RMSNorm(cfg.layer_norm_epsilon, cfg.activation_dtype, name=name)
        drop = lambda y: _dropout(cfg)(y, deterministic=deterministic)
        y = norm("pre_attention_layer_norm")(x)
        y = Attention(cfg, name="attention")(y, y, bias, deterministic=deterministic)
        x = _constrain(x + drop(y))
        y = Mlp(cfg, name="mlp")(norm("pre_mlp_layer_norm")(x), deterministic)
        return _constrain(x + drop(y))


class DecoderLayer(nn.Module):
    """Pre-norm causal self-attention, cross-attention, MLP; dropout + residuals."""

    config: T5Config

    @nn.compact
    def __call__(self, x: Array, encoded: Array, self_bias: Array, cross_bias: Array,
                 deterministic: bool = True, decode: bool = False,
                 decode_index: Array | None = None) -> Array:
        cfg = self.config
        norm = lambda name: RMSNorm(cfg.layer_norm_epsilon, cfg.activation_dtype, name=name)
        drop = lambda y: _dropout(cfg)(y, deterministic=deterministic)
        y = norm("pre_self_attention_layer_norm")(x)
        y = Attention(cfg, True, name="self_attention")(
            y, y, self_bias, deterministic=deterministic, decode=decode,
            decode_index=decode_index)
        x = _constrain(x + drop(y))
        y = norm("pre_cross_attention_layer_norm")(x)
        y = Attention(cfg, False, name="encoder_decoder_attention")(
            y, encoded, cross_bias, deterministic=deterministic, decode=decode)
        x = _constrain(x + drop(y))
        y = Mlp(cfg, name="mlp")(norm("pre_mlp_layer_norm")(x), deterministic)
        return _constrain(x + drop(y))


def _layer_class(cls, config: T5Config, static_argnums: Sequence[int]):
    """`cls`, rematerialised in training when config.remat_policy asks for it."""
    if config.remat_policy == "none":
        return cls
    return nn.remat(cls, policy=_REMAT_POLICIES[config.remat_policy],
                    static_argnums=tuple(static_argnums))


# ----------------------------------------------------------------- masks


@jax.custom_vjp
def add_bias(logits: Array, bias: Array) -> Array:
    """``logits + bias`` for attention logits [b, h, q, k] and a bias whose
    leading (batch) axis may be 1 (the relative position bias shared by every
    example).

    The same sum as ``+``; only the bias's gradient is computed differently.
    Broadcasting over the batch makes the bias's gradient a sum over the
    leading axis, which XLA's CPU backend runs about 7x slower than the same
    sum written as a matrix-vector product (ones[b] @ g[b, -1]); in the CPU
    preset's train step that sum alone took 8% of the step. On accelerators the
    product is as fast as the reduction.
    """
    return logits + bias


def _add_bias_fwd(logits: Array, bias: Array):
    return logits + bias, bias.shape


def _add_bias_bwd(bias_shape, g: Array):
    lead = bias_shape[0]
    if lead == 1 and g.shape[0] > 1:
        ones = jnp.ones((g.shape[0],), g.dtype)
        gb = jnp.einsum("b,b...->...", ones, g)[None]
    else:
        gb = g
    # Any other broadcast axes (heads = 1): sum them, keeping the bias's rank.
    axes = tuple(i for i, (n, m) in enumerate(zip(bias_shape, gb.shape)) if n == 1 and m > 1)
    if axes:
        gb = gb.sum(axes, keepdims=True)
    return g, gb.reshape(bias_shape)


add_bias.defvjp(_add_bias_fwd, _add_bias_bwd)


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
        drop = lambda y: _dropout(cfg)(y, deterministic=deterministic)
        pos = _default_positions(tokens) if positions is None else positions
        bias = RelativePositionBias(cfg, True, name="relpos_bias")(pos, pos)
        mask = _attention_mask(tokens > 0, segment_ids, segment_ids, tokens.shape[1])
        mask_bias = _mask_to_bias(mask, bias.dtype)  # [b, 1, l, l]
        mask_bias = jnp.broadcast_to(mask_bias, mask_bias.shape[:1] + bias.shape[1:])
        bias = add_bias(mask_bias, bias)  # [b, h, l, l]
        x = _constrain(drop(self.shared_embedding(tokens)))
        layer = _layer_class(EncoderLayer, cfg, static_argnums=(3,))
        for i in range(cfg.num_encoder_layers):
            x = layer(cfg, name=f"layers_{i}")(x, bias, deterministic)
        x = RMSNorm(cfg.layer_norm_epsilon, cfg.activation_dtype, name="encoder_norm")(x)
        return _constrain(drop(x))


class Decoder(nn.Module):
    """Embedding, causal relative position bias, decoder layers, final norm,
    output head (tied and scaled for 1.0, `logits_dense` for 1.1)."""

    config: T5Config
    shared_embedding: nn.Module

    def _self_bias(self, tokens, segment_ids, positions, decode, max_decode_length):
        """Self-attention bias [b|1, h, q, k] and the decode step (or None)."""
        cfg = self.config
        relpos = RelativePositionBias(cfg, False, name="relpos_bias")
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
        drop = lambda y: _dropout(cfg)(y, deterministic=deterministic)
        self_bias, step = self._self_bias(tokens, segment_ids, positions, decode,
                                          max_decode_length)
        cross_mask = _attention_mask(encoder_tokens > 0, segment_ids,
                                     encoder_segment_ids, tokens.shape[1])
        cross_bias = _mask_to_bias(cross_mask, cfg.activation_dtype)  # [b, 1, q, le]
        y = _constrain(drop(self.shared_embedding(tokens)))
        layer = DecoderLayer if decode else _layer_class(DecoderLayer, cfg, (5, 6))
        for i in range(cfg.num_decoder_layers):
            y = layer(cfg, name=f"layers_{i}")(
                y, encoded, self_bias, cross_bias, deterministic, decode, step)
        y = RMSNorm(cfg.layer_norm_epsilon, cfg.activation_dtype, name="decoder_norm")(y)
        y = _constrain(drop(y))
        if cfg.logits_via_embedding:
            logits = self.shared_embedding.attend(y) * (cfg.emb_dim ** -0.5)
        else:
            logits = Dense(cfg.vocab_size, ("embed", "vocab"), cfg.activation_dtype,
                           name="logits_dense")(y)
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
        self.token_embedder = Embed(cfg.vocab_size, cfg.emb_dim, cfg.activation_dtype)
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
