"""Tests that need a GPU (marked ``gpu``; skipped without one).

Run on the lent accelerator by scripts/device_check.sh (``pytest -m gpu``). A
T5 1.0 small shape cut to two layers per stack keeps compilation short while
keeping the real widths (d_model 512, 8 heads, MLP 2048, vocabulary 32128).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from explistops_jax import cpu_kernels, layers, network, optimizers, partitioning, train_step
from explistops_jax.model import EncoderDecoderModel

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(jax.default_backend() != "gpu",
                       reason=f"needs a GPU (default JAX backend: {jax.default_backend()})"),
]

SMALL = dict(num_encoder_layers=2, num_decoder_layers=2)


def _batch(vocab, batch=8, inputs=64, targets=48, seed=0):
    rng = np.random.default_rng(seed)
    tgt = rng.integers(2, vocab, (batch, targets)).astype(np.int32)
    return {"encoder_input_tokens": jnp.asarray(rng.integers(2, vocab, (batch, inputs)), jnp.int32),
            "decoder_input_tokens": jnp.asarray(np.pad(tgt, ((0, 0), (1, 0)))[:, :-1]),
            "decoder_target_tokens": jnp.asarray(tgt),
            "decoder_loss_weights": jnp.ones(tgt.shape, jnp.float32)}


def _params(model):
    init = jax.jit(lambda r: model.get_initial_variables(r, train_step.INIT_SHAPES))
    return nn.unbox(init(jax.random.key(0)))["params"]


def test_bf16_network_matches_float32():
    """The same parameters with bf16 activations (float32 attention logits and
    softmax, float32 parameters) give the float32 log-probabilities within bf16
    rounding: bf16 keeps 8 significant bits (relative 2^-8 = 0.4% per rounding);
    over 2+2 layers the log-probabilities move by a few hundredths of a nat. The
    bound (mean absolute 0.05 nat, 99% of top-1 tokens agreeing where float32's
    margin exceeds 0.1 nat) is loose for rounding and tight for a real bug (a
    wrong cast or mask shifts them by whole nats)."""
    config = network.get_config("t5_1_0_small", **SMALL)
    f32, bf16 = EncoderDecoderModel(config), EncoderDecoderModel(config.replace(dtype="bfloat16"))
    params = _params(f32)
    batch = _batch(config.vocab_size)

    def logprobs(model):
        logits = jax.jit(lambda p: model._logits(p, batch, None))(params)
        return jax.nn.log_softmax(jnp.asarray(logits, jnp.float32), -1)

    a, b = np.asarray(logprobs(f32)), np.asarray(logprobs(bf16))
    assert np.isfinite(b).all()
    assert np.mean(np.abs(a - b)) < 0.05
    top2 = np.sort(a, -1)[..., -2:]
    clear = (top2[..., 1] - top2[..., 0]) > 0.1
    agree = a.argmax(-1) == b.argmax(-1)
    assert agree[clear].mean() >= 0.99


def test_greedy_decoding_scores_what_it_decodes():
    """Cached greedy decoding on the GPU: each decoded row's score is the
    teacher-forced log-likelihood of that row (1e-3 relative: bf16-free float32,
    different reduction orders), and without early stop it runs every step.
    A row's score counts every generated token up to and including its first
    EOS (an untrained model may generate padding ids, which count too)."""
    config = network.get_config("t5_1_0_small", **SMALL)
    model = EncoderDecoderModel(config)
    params = _params(model)
    batch = _batch(config.vocab_size, batch=4, targets=16)
    tokens, aux = jax.jit(lambda p, b: model.predict_batch_with_aux(
        p, b, max_decode_length=16, early_stop=False))(params, batch)
    assert tokens.shape == (4, 16) and int(aux["num_steps"]) == 16
    eos_before = jnp.cumsum(tokens == 1, axis=1) - (tokens == 1)  # EOS ids before i
    decoded = {"encoder_input_tokens": batch["encoder_input_tokens"],
               "decoder_input_tokens": jnp.pad(tokens, ((0, 0), (1, 0)))[:, :-1],
               "decoder_target_tokens": tokens,
               "decoder_loss_weights": (eos_before == 0).astype(jnp.float32)}
    scores = jax.jit(model.score_batch)(params, decoded)
    np.testing.assert_allclose(aux["scores"], scores, rtol=1e-3, atol=1e-3)


def test_sharded_train_step_on_one_device():
    """The trainer's sharded step (mesh 1x1 on the GPU, state donated, bf16
    activations, dropout 0.1 through flax's nn.Dropout, the GPU's default) lowers
    its loss on a repeated batch: loss after 5 Adafactor steps is below the
    first (a fit, not a trajectory)."""
    config = network.get_config("t5_1_0_small", dtype="bfloat16", dropout_rate=0.1, **SMALL)
    model = EncoderDecoderModel(config)
    p = partitioning.Partitioner(devices=jax.devices()[:1])
    tx, schedule = optimizers.adafactor().build()
    layout = train_step.state_layout(model, tx, p)
    state = train_step.initial_state(model, tx, p, layout, seed=0)
    step = p.jit(train_step.make_train_step(model, tx, schedule),
                 in_shardings=(layout.shardings, p.batch_sharding()),
                 out_shardings=(layout.shardings, p.sharding()), donate_argnums=0)
    batch = p.shard_batch({k: np.asarray(v) for k, v in _batch(config.vocab_size).items()})
    losses = []
    for _ in range(6):
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    assert all(np.isfinite(losses))
    assert losses[-1] < losses[0] - 0.1, losses
    leaf = jax.tree.leaves(state.params)[0]
    assert leaf.devices() == {jax.devices()[0]} and leaf.dtype == jnp.float32


def test_dropout_is_flax_dropout_on_the_gpu():
    """cpu_kernels.Dropout's fused threefry gives flax's masks on the GPU's JAX too."""
    x = jax.random.normal(jax.random.key(1), (8, 128, 512), jnp.bfloat16)
    rngs = {"dropout": jax.random.key(5)}
    run = lambda m: np.asarray(jax.jit(lambda v: m.apply(
        {}, v, deterministic=False, rngs=rngs))(x).astype(jnp.float32))
    own = run(cpu_kernels.Dropout(0.1))
    np.testing.assert_array_equal(own, run(nn.Dropout(0.1)))
    assert 0.09 < (own == 0).mean() < 0.11


def test_the_plain_kernels_are_the_default_on_the_gpu():
    """T5Config.cpu_kernels=None resolves to off here: flax's nn.Dropout, no
    custom-VJP bias add."""
    assert not cpu_kernels.enabled(None)
    config = network.get_config("t5_1_0_tiny", dropout_rate=0.1, vocab_size=64)
    assert type(layers.dropout(config)) is nn.Dropout
    tokens = jnp.ones((2, 8), jnp.int32)
    model = network.Transformer(config)
    params = model.init(jax.random.key(0), tokens, tokens)
    jaxpr = jax.make_jaxpr(lambda p: model.apply(
        p, tokens, tokens, enable_dropout=True, rngs={"dropout": jax.random.key(1)}))(params)
    assert "custom_vjp_call" not in str(jaxpr)


def test_cudnn_attention_matches_einsum():
    """attention_kernel="cudnn" (the fused cuDNN kernel through
    jax.nn.dot_product_attention, bf16 operands) against the einsum path (bf16
    activations, float32 logits and softmax), same parameters: the
    log-probabilities agree within bf16 rounding (mean absolute 0.05 nat, as in
    test_bf16_network_matches_float32), and the gradients of the loss within 5%
    (relative L2 over all parameters; the fused kernel's bf16 logits add a
    rounding the einsum path does not have: XLA's implementation with bf16 logits
    differs from the einsum path by 0.0016 nat and 0.65% on the CPU, same
    shapes). The batch has padded inputs and one
    example that is all padding (every key masked), which must stay finite."""
    config = network.get_config("t5_1_0_small", dtype="bfloat16", **SMALL)
    einsum = EncoderDecoderModel(config)
    cudnn = EncoderDecoderModel(config.replace(attention_kernel="cudnn"))
    params = _params(einsum)
    batch = _batch(config.vocab_size)
    tokens = np.asarray(batch["encoder_input_tokens"]).copy()
    tokens[1, 40:] = 0
    tokens[2, :] = 0
    batch["encoder_input_tokens"] = jnp.asarray(tokens)

    def loss(model, p):
        logits = jnp.asarray(model._logits(p, batch, None), jnp.float32)
        logp = jax.nn.log_softmax(logits, -1)
        nll = -jnp.take_along_axis(logp, batch["decoder_target_tokens"][..., None], -1)
        return jnp.mean(nll), logp

    (l_a, lp_a), g_a = jax.jit(jax.value_and_grad(lambda p: loss(einsum, p), has_aux=True))(params)
    (l_b, lp_b), g_b = jax.jit(jax.value_and_grad(lambda p: loss(cudnn, p), has_aux=True))(params)
    assert np.isfinite(np.asarray(lp_b)).all() and np.isfinite(float(l_b))
    assert float(jnp.mean(jnp.abs(lp_a - lp_b))) < 0.05
    flat = lambda g: jnp.concatenate([x.ravel() for x in jax.tree.leaves(g)])
    ga, gb = flat(g_a), flat(g_b)
    assert bool(jnp.isfinite(gb).all())
    assert float(jnp.linalg.norm(ga - gb) / jnp.linalg.norm(ga)) <= 0.05
