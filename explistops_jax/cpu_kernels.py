"""Kernels for XLA's CPU backend: the same values as the plain formulations,
written so that XLA's CPU backend computes them faster.

* `Dropout`: ``flax.linen.Dropout``'s masks, bit for bit, drawn by `random_bits`,
  a threefry written out as elementwise ops that XLA fuses into the mask's
  consumer (JAX's own threefry is a loop on CPU).
* `add_bias`: ``logits + bias`` whose bias gradient (a sum over the broadcast
  batch axis) is a matrix-vector product.
* `dense`: ``x @ kernel`` over any leading axes as one 2-D matmul.

The network uses them when ``T5Config.cpu_kernels`` resolves to True (`enabled`):
by default where JAX's backend is the CPU. Elsewhere it uses ``nn.Dropout``,
``+`` and a plain contraction, as T5X does.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

Array = jax.Array

__all__ = ["enabled", "random_bits", "Dropout", "add_bias", "dense"]


def enabled(flag: bool | None) -> bool:
    """``T5Config.cpu_kernels`` resolved: None means "where JAX's default backend
    is the CPU" (asked when the network is traced)."""
    return jax.default_backend() == "cpu" if flag is None else bool(flag)


# ------------------------------------------------------------------ dropout


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


# ------------------------------------------------------------ bias, dense


@jax.custom_vjp
def add_bias(logits: Array, bias: Array) -> Array:
    """``logits + bias`` for attention logits [b, h, q, k] and a bias whose
    leading (batch) axis may be 1 (the relative position bias shared by every
    example).

    The same sum as ``+``; only the bias's gradient is computed differently.
    Broadcasting over the batch makes the bias's gradient a sum over the
    leading axis, which XLA's CPU backend runs about 7x slower than the same
    sum written as a matrix-vector product (ones[b] @ g[b, -1]); in the CPU
    preset's train step that sum alone took 8% of the step.
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


def dense(x: Array, kernel: Array) -> Array:
    """``x @ kernel`` ([..., in] x [in, out] -> [..., out]) as one 2-D matmul over
    all leading axes: the same product, but XLA's CPU backend turns the gradient
    of a [b, l, in] @ [in, out] dot into a slow fused transpose, which the
    [b*l, in] form avoids (the gated MLP's gradient 1.45x faster)."""
    y = jnp.dot(x.reshape(-1, x.shape[-1]), kernel)
    return y.reshape(x.shape[:-1] + (kernel.shape[-1],))
