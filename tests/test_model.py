"""EncoderDecoderModel: loss, training signal, scoring and prediction (tiny T5)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn

from explistops_jax.model import EncoderDecoderModel, cross_entropy_with_logits
from explistops_jax.network import get_config

VOCAB = 32
CONFIG = get_config("t5_1_1_tiny", vocab_size=VOCAB, num_encoder_layers=1,
                    num_decoder_layers=1)
SHAPES = {"encoder_input_tokens": (4, 8), "decoder_input_tokens": (4, 8)}


def _batch():
    """Four examples; targets of 3-5 tokens ending in EOS (1), 0-padded."""
    enc = np.array([[5, 6, 7, 1, 0, 0, 0, 0], [9, 8, 1, 0, 0, 0, 0, 0],
                    [3, 4, 5, 6, 7, 1, 0, 0], [12, 1, 0, 0, 0, 0, 0, 0]], np.int32)
    targets = np.array([[7, 6, 5, 1, 0, 0, 0, 0], [8, 9, 1, 0, 0, 0, 0, 0],
                        [7, 6, 5, 4, 1, 0, 0, 0], [12, 3, 1, 0, 0, 0, 0, 0]], np.int32)
    inputs = np.pad(targets, ((0, 0), (1, 0)))[:, :-1]
    return {"encoder_input_tokens": jnp.asarray(enc), "decoder_input_tokens": jnp.asarray(inputs),
            "decoder_target_tokens": jnp.asarray(targets),
            "decoder_loss_weights": jnp.asarray(targets > 0, jnp.float32)}


# The fit the decoding tests rely on, stated as a property of the training set
# rather than as a number of steps (which converges on one processor and falls a
# token short on another, where XLA's CPU kernels round differently): every
# target sequence has probability >= FIT_PROB under teacher forcing. Then every
# target token is the argmax after its true prefix (so greedy and near-zero
# temperature sampling reproduce the targets, EOS included), and each target is
# the most likely sequence by a margin (p >= 0.9 against < 0.1 for all others
# together), which beam search with T5's length penalty cannot overturn for
# lengths <= 8.
FIT_PROB = 0.9
MAX_FIT_STEPS = 600
# Losses computed two ways (per sequence vs per batch, packed vs unpacked) differ
# only by float32 rounding of log-softmax over logits of magnitude ~10 (about
# 1e-6 a token) summed over the batch's 15 target tokens; the fitted losses are
# small (~0.1), so a relative tolerance alone would be tighter than that rounding.
ATOL = 5e-5


@functools.lru_cache(maxsize=None)
def _trained():
    """(model, params, losses) after fitting the batch with Adam until every
    target has probability >= FIT_PROB (checked every 10 steps; at most
    MAX_FIT_STEPS steps)."""
    model = EncoderDecoderModel(CONFIG)
    init = jax.jit(lambda rng: model.get_initial_variables(rng, SHAPES))
    params = nn.unbox(init(jax.random.key(0))["params"])
    optimizer = optax.adam(1e-2)
    batch = _batch()

    @jax.jit
    def step(params, opt_state, rng):
        (loss, _), grads = jax.value_and_grad(model.loss_fn, has_aux=True)(params, batch, rng)
        updates, opt_state = optimizer.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state, loss

    score = jax.jit(model.score_batch)
    opt_state, losses = optimizer.init(params), []
    for i in range(MAX_FIT_STEPS):
        params, opt_state, loss = step(params, opt_state, jax.random.key(i))
        losses.append(float(loss))
        if (i + 1) % 10 == 0 and _fitted(score(params, batch)):
            break
    return model, params, losses


def _fitted(scores) -> bool:
    """Every target's log-likelihood is at least log(FIT_PROB)."""
    return bool(np.all(np.asarray(scores) >= np.log(FIT_PROB)))


def test_the_fit_reaches_its_stated_criterion():
    """The precondition of the decoding tests below, asserted on its own."""
    model, params, losses = _trained()
    scores = jax.jit(model.score_batch)(params, _batch())
    assert _fitted(scores), (len(losses), np.exp(np.asarray(scores)))


def _predict(model, **kwargs):
    """Jitted predict_batch_with_aux with fixed decoding options."""
    return jax.jit(functools.partial(model.predict_batch_with_aux, **kwargs))


def test_initial_variables_are_logically_partitioned():
    model = EncoderDecoderModel(CONFIG)
    variables = jax.eval_shape(lambda: model.get_initial_variables(jax.random.key(0), SHAPES))
    specs = nn.get_partition_spec(variables)["params"]
    assert tuple(specs["token_embedder"]["embedding"]) == ("vocab", "embed")
    shapes = model.param_shapes()
    assert shapes["decoder"]["logits_dense"]["kernel"].shape == (64, VOCAB)
    axes = model.param_logical_axes()
    assert tuple(axes["encoder"]["layers_0"]["mlp"]["wi_0"]["kernel"]) == ("embed", "mlp")


def test_loss_decreases_and_metrics():
    _, _, losses = _trained()
    assert losses[-1] < 0.2 * losses[0]
    assert losses[0] > np.log(VOCAB) * 0.5  # started near chance


def test_predict_batch_reproduces_fitted_targets_and_stops_early():
    model, params, _ = _trained()
    batch = _batch()
    tokens, aux = _predict(model, max_decode_length=8)(params, batch)
    np.testing.assert_array_equal(tokens, batch["decoder_target_tokens"])
    assert int(aux["num_steps"]) == 5  # the longest target, not 8
    # The greedy score is the log-likelihood of what it decoded (float32 logits of
    # magnitude ~10 summed over <= 5 tokens: ~1e-5 apart at most by reduction order).
    np.testing.assert_allclose(aux["scores"], jax.jit(model.score_batch)(params, batch), atol=1e-4)


def test_beam_and_sampling_decode_the_fitted_targets():
    model, params, _ = _trained()
    batch = _batch()
    beam, aux = _predict(model, method="beam", beam_size=2)(params, batch)
    np.testing.assert_array_equal(beam, batch["decoder_target_tokens"])
    assert aux["scores"].shape == (4,)
    cold, _ = _predict(model, method="sample", temperature=1e-4)(params, batch,
                                                                  rng=jax.random.key(1))
    np.testing.assert_array_equal(cold, batch["decoder_target_tokens"])
    # a tiny nucleus keeps only the most likely token: greedy's output, at temperature 1
    nucleus, _ = _predict(model, method="sample", top_p=1e-6)(params, batch,
                                                             rng=jax.random.key(2))
    np.testing.assert_array_equal(nucleus, batch["decoder_target_tokens"])
    again, _ = _predict(model, method="sample", top_p=0.9)(params, batch, rng=jax.random.key(3))
    repeat, _ = _predict(model, method="sample", top_p=0.9)(params, batch, rng=jax.random.key(3))
    np.testing.assert_array_equal(again, repeat)  # the same key, the same draw
    with pytest.raises(ValueError, match="method"):
        model.predict_batch(params, batch, method="nucleus")


def test_score_batch_is_consistent_with_loss():
    model, params, _ = _trained()
    batch = _batch()
    variants = {name: EncoderDecoderModel(CONFIG, loss_normalizing_factor=norm)
                for name, norm in (("sum", "sum"), ("tokens", "tokens"), ("constant", 100.0))}

    @jax.jit  # one compile: the forward passes are shared
    def run(params):
        losses = {k: m.loss_fn(params, batch, None) for k, m in variants.items()}
        return model.score_batch(params, batch), losses

    scores, losses = run(params)
    assert scores.shape == (4,) and bool(jnp.all(scores <= 0))
    total, metrics = losses["sum"]
    np.testing.assert_allclose(total, -scores.sum(), rtol=1e-5, atol=ATOL)
    np.testing.assert_allclose(losses["tokens"][0], total / 15.0, rtol=1e-5, atol=ATOL)  # 15 targets
    np.testing.assert_allclose(losses["constant"][0], total / 100.0, rtol=1e-5, atol=ATOL)
    np.testing.assert_allclose(metrics["cross_entropy"], total / 15.0, rtol=1e-5, atol=ATOL)
    assert float(metrics["num_tokens"]) == 15.0
    assert float(metrics["num_examples"]) == 4.0
    assert float(metrics["accuracy"]) == 1.0


def test_loss_weights_and_packing():
    model, params, _ = _trained()
    batch = _batch()
    summed = EncoderDecoderModel(CONFIG, loss_normalizing_factor="sum")
    # Zero weight on row 1: its tokens no longer count.
    weights = batch["decoder_loss_weights"].at[1].set(0.0)
    loss, scores = jax.jit(lambda p: (
        summed.loss_fn(p, dict(batch, decoder_loss_weights=weights), None)[0],
        model.score_batch(p, batch)))(params)
    np.testing.assert_allclose(loss, -(scores.sum() - scores[1]), rtol=1e-5, atol=ATOL)
    # Rows 0 and 1 packed into one row score like the two rows.
    pack = lambda key, a, b, width: np.concatenate(
        [np.asarray(batch[key][0, :a]), np.asarray(batch[key][1, :b]),
         np.zeros(width - a - b, np.int32)])
    packed = {k: pack(k, 4, 3, 8)
              for k in ("encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens")}
    seg = np.array([1, 1, 1, 1, 2, 2, 2, 0])
    pos = np.array([0, 1, 2, 3, 0, 1, 2, 0])
    packed.update(encoder_segment_ids=seg, decoder_segment_ids=seg,
                  encoder_positions=pos, decoder_positions=pos)
    packed = {k: jnp.asarray(v[None]) for k, v in packed.items()}
    packed_loss, _ = jax.jit(summed.loss_fn)(params, packed, None)
    np.testing.assert_allclose(packed_loss, -(scores[0] + scores[1]), rtol=1e-4, atol=ATOL)


def test_dropout_rng_changes_loss_only_with_dropout():
    batch = _batch()
    _, params, _ = _trained()
    model = EncoderDecoderModel(CONFIG.replace(dropout_rate=0.5))
    losses = jax.jit(lambda p, keys: [model.loss_fn(p, batch, k)[0] for k in keys])
    keys = [jax.random.key(i, impl="rbg") for i in (1, 2, 1)]
    a, b, again = losses(params, keys)
    assert abs(float(a) - float(b)) > 1e-4
    assert float(a) == float(again)


def test_cross_entropy_label_smoothing_and_z_loss():
    targets = jnp.array([[2, 0]])
    logits = jnp.log(jnp.array([[[0.1, 0.1, 0.8], [0.8, 0.1, 0.1]]]))
    ce, z = cross_entropy_with_logits(logits, targets)
    np.testing.assert_allclose(ce, -np.log([[0.8, 0.8]]), rtol=1e-6)
    np.testing.assert_allclose(z, 0.0, atol=1e-7)
    # With smoothing 0.2 over 3 classes the soft target is exactly (0.1, 0.1, 0.8):
    # a model predicting it has zero loss.
    smooth, _ = cross_entropy_with_logits(logits, targets, label_smoothing=0.2)
    np.testing.assert_allclose(smooth, 0.0, atol=1e-6)
    shifted = logits + 2.0  # log Z = 2
    ce_z, z = cross_entropy_with_logits(shifted, targets, z_loss=0.1)
    np.testing.assert_allclose(z, 0.4, rtol=1e-5)
    np.testing.assert_allclose(ce_z, ce + 0.4, rtol=1e-5)


def test_bad_normalizing_factor_is_rejected():
    with pytest.raises(ValueError, match="loss_normalizing_factor"):
        EncoderDecoderModel(CONFIG, loss_normalizing_factor="mean")
