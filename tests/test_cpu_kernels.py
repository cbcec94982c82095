"""The CPU kernels (explistops_jax.cpu_kernels) and the switch that chooses them.

Each kernel claims the plain formulation's values: the fused threefry gives
``jax.random.bits`` bit for bit, the dropout built on it flax's ``nn.Dropout``
bit for bit, ``add_bias`` the values of ``+`` and its gradients to float32
rounding, the 2-D dense the N-D contraction to float32 rounding. So the network
with ``T5Config.cpu_kernels`` on and off is the same function (same masks for
the same key), which the last tests check on the whole network.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from explistops_jax import cpu_kernels, layers
from explistops_jax.errors import ConfigError
from explistops_jax.network import Transformer
from explistops_jax.t5_config import get_config

VOCAB = 64


@pytest.mark.parametrize("shape", [(), (1,), (7,), (3, 1001), (2, 3, 5, 64)])
def test_random_bits_are_jax_random_bits(shape):
    """The fused threefry gives jax.random.bits's uint32 draws bit for bit, for
    typed and raw keys, jitted or not (JAX's hash is the reference)."""
    for key in (jax.random.key(3), jax.random.PRNGKey(1 << 31), jax.random.key(0)):
        want = np.asarray(jax.random.bits(key, shape, jnp.uint32))
        np.testing.assert_array_equal(cpu_kernels.random_bits(key, shape), want)
        np.testing.assert_array_equal(
            jax.jit(cpu_kernels.random_bits, static_argnums=1)(key, shape), want)
    # Other key implementations are drawn by jax.random.bits itself.
    rbg = jax.random.key(3, impl="rbg")
    np.testing.assert_array_equal(cpu_kernels.random_bits(rbg, (5, 9)),
                                  jax.random.bits(rbg, (5, 9), jnp.uint32))


def _flax_and_own_dropout(x, rate, broadcast_dims=(), seed=0):
    rngs = {"dropout": jax.random.key(seed)}
    own = cpu_kernels.Dropout(rate, broadcast_dims=broadcast_dims)
    ref = nn.Dropout(rate, broadcast_dims=broadcast_dims)
    run = lambda m: jax.jit(lambda v: m.apply({}, v, deterministic=False, rngs=rngs))(x)
    return run(own), run(ref)


@pytest.mark.parametrize("rate,broadcast_dims,dtype", [
    (0.1, (), jnp.float32), (0.5, (), jnp.bfloat16), (0.9, (), jnp.float32),
    (1 / 3, (), jnp.float32), (1e-9, (), jnp.float32),  # a rate float32 cannot see
    (0.1, (-2,), jnp.float32), (0.3, (0, 2), jnp.bfloat16),
    (0.0, (), jnp.float32), (1.0, (), jnp.float32)])
def test_dropout_is_flax_dropout_bit_for_bit(rate, broadcast_dims, dtype):
    x = jax.random.normal(jax.random.key(1), (4, 33, 65)).astype(dtype)
    own, ref = _flax_and_own_dropout(x, rate, broadcast_dims)
    assert own.dtype == ref.dtype == dtype
    own, ref = np.asarray(own.astype(jnp.float32)), np.asarray(ref.astype(jnp.float32))
    np.testing.assert_array_equal(own, ref)
    if 0.0 < rate < 1e-3:
        assert (own != 0).all()
    elif 0.0 < rate < 1.0:  # a real mask: some dropped, some kept, as flax does
        assert 0 < (own == 0).mean() < 1


@pytest.mark.parametrize("keep_prob", [0.9, 0.5, 2 / 3, 0.1, 1 - 1e-9, 1e-9])
def test_keep_threshold_is_flax_uniform_test_at_its_edge(keep_prob):
    """At the draws around the threshold (where sampling never lands), the integer
    test keeps exactly what ``jax.random.uniform(...) < keep_prob`` keeps: the
    uniform built from the draw's top 23 bits as JAX builds it."""
    below = cpu_kernels._keep_below(keep_prob)
    edge = min(below, (1 << 32) - 1)
    bits = np.array(sorted({max(0, min(b, (1 << 32) - 1)) for b in (
        0, edge - 513, edge - 512, edge - 1, edge, edge + 1, edge + 511, edge + 512,
        (1 << 32) - 1)}), np.uint32)
    one = np.float32(1.0).view(np.uint32)
    uniform = jax.lax.bitcast_convert_type(jnp.asarray((bits >> 9) | one), jnp.float32) - 1.0
    flax_keeps = np.asarray(uniform < jnp.float32(keep_prob))
    np.testing.assert_array_equal(bits.astype(np.uint64) < below, flax_keeps)


def test_per_element_dropout_compiles_without_a_loop():
    """JAX's own threefry is a five-step loop on CPU; the per-element mask is
    straight-line code that XLA fuses (a shared mask keeps JAX's draw)."""
    x = jnp.ones((8, 64, 32))

    def mask_loops(module):  # while loops over arrays of the mask's shape
        hlo = jax.jit(lambda v: module.apply({}, v, deterministic=False, rngs={
            "dropout": jax.random.key(0)})).lower(x).compile().as_text()
        return [line for line in hlo.splitlines()
                if " while(" in line and "u32[8,64,32]" in line]

    assert not mask_loops(cpu_kernels.Dropout(0.1))
    assert mask_loops(nn.Dropout(0.1))  # the check can see JAX's loop


def test_dropout_rate_scale_and_edges():
    x = jnp.full((400, 500), 2.0)
    apply = lambda rate, seed=0, **kw: np.asarray(cpu_kernels.Dropout(rate, **kw).apply(
        {}, x, deterministic=False, rngs={"dropout": jax.random.key(seed)}))
    out = apply(0.1)
    dropped = (out == 0).mean()
    assert abs(dropped - 0.1) < 5 * np.sqrt(0.1 * 0.9 / x.size)
    np.testing.assert_allclose(out[out != 0], 2.0 / 0.9, rtol=1e-6)
    assert (apply(0.1, seed=1) != out).any()
    np.testing.assert_array_equal(apply(0.1), out)
    # off, deterministic, all-dropped
    np.testing.assert_array_equal(apply(0.0), x)
    np.testing.assert_array_equal(cpu_kernels.Dropout(0.5).apply({}, x, deterministic=True), x)
    np.testing.assert_array_equal(apply(1.0), np.zeros_like(x))
    # a mask shared along an axis is the same along it; negative axes name the
    # same axis as positive ones
    a = apply(0.5, broadcast_dims=(-2,))
    np.testing.assert_array_equal(a, np.broadcast_to(a[:1], a.shape))
    np.testing.assert_array_equal(a, apply(0.5, broadcast_dims=(0,)))
    with pytest.raises(ConfigError, match="dropout_rate"):
        get_config("t5_1_1_tiny", dropout_rate=1.5)


@pytest.mark.parametrize("bias_shape", [(1, 3, 5, 7), (4, 3, 5, 7), (4, 1, 5, 7), (1, 1, 5, 7)])
def test_add_bias_is_plain_addition_with_the_same_gradients(bias_shape):
    """add_bias only rewrites the bias's gradient (a sum over broadcast axes,
    done as a matrix-vector product): values and both gradients equal `+`'s."""
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(0), 3)
    logits = jax.random.normal(k1, (4, 3, 5, 7))
    bias = jax.random.normal(k2, bias_shape)
    weights = jax.random.normal(k3, (4, 3, 5, 7))
    loss = lambda add: lambda x, b: jnp.sum(jnp.tanh(add(x, b)) * weights)
    np.testing.assert_array_equal(cpu_kernels.add_bias(logits, bias), logits + bias)
    got = jax.grad(loss(cpu_kernels.add_bias), argnums=(0, 1))(logits, bias)
    want = jax.grad(loss(jnp.add), argnums=(0, 1))(logits, bias)
    for g, w in zip(got, want):
        assert g.shape == w.shape
        # sums of <= 4 float32 terms in another order: a few ulps
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("switch", [True, False])
def test_dense_over_leading_axes_equals_one_einsum(switch):
    """Dense, with the 2-D matmul of the CPU kernels or the plain contraction:
    the [..., in] x [in, out] product over any number of leading axes."""
    layer = layers.Dense(6, ("embed", "mlp"), cpu_kernels=switch)
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 3, 4, 5))
    params = layer.init(jax.random.PRNGKey(2), x)
    kernel = nn.unbox(params)["params"]["kernel"]
    y = layer.apply(params, x)
    assert y.shape == (2, 3, 4, 6)
    np.testing.assert_allclose(y, jnp.einsum("abci,io->abco", x, kernel), rtol=1e-5, atol=1e-6)


def test_the_switch_defaults_to_the_cpu_kernels_on_a_cpu():
    """None (the default) means "where JAX's backend is the CPU", asked when the
    network is traced; True and False force the choice."""
    on_cpu = jax.default_backend() == "cpu"
    assert get_config("t5_1_1_tiny").cpu_kernels is None
    assert cpu_kernels.enabled(None) is on_cpu
    assert cpu_kernels.enabled(True) is True and cpu_kernels.enabled(False) is False
    cfg = get_config("t5_1_1_tiny", dropout_rate=0.1)
    assert isinstance(layers.dropout(cfg), cpu_kernels.Dropout if on_cpu else nn.Dropout)
    assert isinstance(layers.dropout(cfg.replace(cpu_kernels=True)), cpu_kernels.Dropout)
    assert type(layers.dropout(cfg.replace(cpu_kernels=False))) is nn.Dropout
    with pytest.raises(ConfigError, match="cpu_kernels"):
        get_config("t5_1_1_tiny", cpu_kernels="yes")


def _loss_and_grads(config, params, enc, dec, seed):
    """Logits, loss and gradients of a training pass with dropout."""

    def loss(p):
        logits = Transformer(config).apply({"params": p}, enc, dec, enable_dropout=True,
                                           rngs={"dropout": jax.random.key(seed)})
        return jnp.mean(jax.nn.log_softmax(logits) ** 2), logits

    (value, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    return logits, value, grads


def _custom_vjps(config, params, enc, dec) -> int:
    """How many custom-VJP calls (the CPU bias add) the training pass traces."""
    jaxpr = jax.make_jaxpr(lambda p: Transformer(config).apply(
        {"params": p}, enc, dec, enable_dropout=True,
        rngs={"dropout": jax.random.key(0)}))(params)
    return str(jaxpr).count("custom_vjp_call")


@pytest.mark.parametrize("name,broadcast", [("t5_1_0_tiny", False), ("t5_1_1_tiny", True)])
def test_network_with_and_without_cpu_kernels_is_the_same_function(name, broadcast):
    """Switch on vs off, same parameters and dropout key: the same dropout masks
    (a different mask changes logits by O(1), as a different seed shows), so the
    logits, loss and gradients agree to float32 rounding. What differs is
    summation order only: matmul blocking ([b*l, in] vs [b, l, in]) and the
    relative position bias's gradient (a matrix-vector product vs a reduction
    over the batch), hence 2e-5 on logits of order 1-10 and 1e-4 of each
    gradient's largest entry."""
    base = get_config(name, vocab_size=VOCAB, dropout_rate=0.2, broadcast_dropout=broadcast)
    on, off = base.replace(cpu_kernels=True), base.replace(cpu_kernels=False)
    rng = np.random.default_rng(0)
    enc = jnp.asarray(rng.integers(1, VOCAB, (3, 10)), jnp.int32).at[0, 7:].set(0)
    dec = jnp.asarray(rng.integers(1, VOCAB, (3, 8)), jnp.int32).at[1, 5:].set(0)
    params = nn.unbox(Transformer(base).init(jax.random.key(0), enc, dec))["params"]
    assert _custom_vjps(on, params, enc, dec) > 0 and _custom_vjps(off, params, enc, dec) == 0
    want_logits, want_loss, want_grads = _loss_and_grads(on, params, enc, dec, seed=5)
    got_logits, got_loss, got_grads = _loss_and_grads(off, params, enc, dec, seed=5)
    other_seed = _loss_and_grads(off, params, enc, dec, seed=6)[0]
    assert float(jnp.abs(other_seed - want_logits).max()) > 1e-2
    np.testing.assert_allclose(got_logits, want_logits, atol=2e-5, rtol=2e-5)
    np.testing.assert_allclose(got_loss, want_loss, rtol=1e-5)
    flat_want = jax.tree_util.tree_flatten_with_path(want_grads)[0]
    flat_got = jax.tree_util.tree_leaves(got_grads)
    assert "rel_embedding" in "".join(jax.tree_util.keystr(p) for p, _ in flat_want)
    for (path, w), g in zip(flat_want, flat_got):
        np.testing.assert_allclose(g, w, atol=1e-4 * float(jnp.abs(w).max()) + 1e-7,
                                   err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("broadcast", [False, True])
def test_network_dropout_masks_are_the_same_with_and_without_cpu_kernels(broadcast):
    """The dropout the layers build: with the switch on or off, the same key gives
    the same outputs, bit for bit (per-element and shared masks, bfloat16)."""
    cfg = get_config("t5_1_1_tiny", dropout_rate=0.1, broadcast_dropout=broadcast)
    x = jax.random.normal(jax.random.key(2), (2, 4, 17, 33)).astype(jnp.bfloat16)
    run = lambda c: np.asarray(jax.jit(lambda v: layers.dropout(c).apply(
        {}, v, deterministic=False, rngs={"dropout": jax.random.key(9)}))(x).astype(jnp.float32))
    on, off = run(cfg.replace(cpu_kernels=True)), run(cfg.replace(cpu_kernels=False))
    np.testing.assert_array_equal(on, off)
    assert 0 < (on == 0).mean() < 0.5
