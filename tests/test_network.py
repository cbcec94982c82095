"""The Flax T5 network: parameter tree, presets, masks, packing, cached decoding.

Golden files tests/testdata/param_shapes_<preset>.json hold every preset's
parameter shapes and logical axes (from jax.eval_shape, no allocation).
Regenerate after an intended change with:
    EXPLISTOPS_REGEN_GOLDEN=1 python -m pytest tests/test_network.py -k golden
"""

import functools
import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from explistops_jax import layers
from explistops_jax.errors import ConfigError
from explistops_jax.network import PRESETS, Transformer, get_config

TESTDATA = Path(__file__).parent / "testdata"
VOCAB = 64


def _tiny(name="t5_1_1_tiny", **overrides):
    return get_config(name, vocab_size=VOCAB, **overrides)


def _random_params(config, seed=0):
    """Random float32 params of the right shapes, made in numpy (no init compile)."""
    model = Transformer(config)
    ones = jnp.ones((1, 1), jnp.int32)
    shapes = jax.eval_shape(lambda: nn.unbox(model.init(jax.random.key(0), ones, ones)))
    rng = np.random.RandomState(seed)

    def make(path, leaf):
        name = path[-1].key
        if name == "scale":
            return jnp.asarray(1.0 + 0.1 * rng.randn(*leaf.shape), jnp.float32)
        std = 1.0 if name in ("embedding", "rel_embedding") else leaf.shape[0] ** -0.5
        return jnp.asarray(std * rng.randn(*leaf.shape), jnp.float32)

    return jax.tree_util.tree_map_with_path(make, shapes["params"])


_STATIC = ("method", "mutable", "decode", "max_decode_length", "enable_dropout",
           "capture_intermediates")


@functools.lru_cache(maxsize=None)
def _init(config, seed=0):
    """(model with a jitted `apply`, params): compiled once per shape."""
    model = Transformer(config)
    return _Jitted(model), _random_params(config, seed)


class _Jitted:
    def __init__(self, model):
        self.module = model
        self.apply = jax.jit(model.apply, static_argnames=_STATIC)


def _flat(tree) -> dict[str, object]:
    flat = jax.tree_util.tree_flatten_with_path(
        tree, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))[0]
    return {"/".join(k.key for k in path): leaf for path, leaf in flat}


def _abstract(config):
    """(shapes, logical axes) of a preset without allocating it."""
    model = Transformer(config)
    ones = jnp.ones((1, 1), jnp.int32)
    boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), ones, ones))["params"]
    shapes = {k: list(v.shape) for k, v in _flat(nn.unbox(boxed)).items()}
    axes = {k: list(v) for k, v in _flat(nn.get_partition_spec(boxed)).items()}
    return shapes, axes


# ------------------------------------------------------------ parameter tree


def _dump(golden: dict) -> str:
    """JSON with one parameter per line (readable diffs)."""
    lines = ["{"]
    for i, (key, value) in enumerate(sorted(golden.items())):
        comma = "," if i < len(golden) - 1 else ""
        if isinstance(value, dict):
            items = [f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in sorted(value.items())]
            lines.append(f" {json.dumps(key)}: {{\n" + ",\n".join(items) + f"\n }}{comma}")
        else:
            lines.append(f" {json.dumps(key)}: {json.dumps(value)}{comma}")
    return "\n".join(lines) + "\n}\n"


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_param_shapes_match_golden(name):
    shapes, axes = _abstract(PRESETS[name])
    golden = {"preset": name, "num_params": int(sum(np.prod(s) for s in shapes.values())),
              "shapes": shapes, "logical_axes": axes}
    path = TESTDATA / f"param_shapes_{name}.json"
    if os.environ.get("EXPLISTOPS_REGEN_GOLDEN"):
        path.write_text(_dump(golden))
    assert json.loads(path.read_text()) == golden


# Exact counts (equal to Hugging Face's for the same checkpoints), and the
# nominal published sizes they round to.
_COUNTS = {
    "t5_1_0_small": (60_506_624, 60e6), "t5_1_0_base": (222_903_552, 220e6),
    "t5_1_0_large": (737_668_096, 770e6), "t5_1_0_3B": (2_851_598_336, 2.8e9),
    "t5_1_1_small": (76_961_152, 77e6), "t5_1_1_base": (247_577_856, 248e6),
    "t5_1_1_large": (783_150_080, 783e6), "t5_1_1_xl": (2_849_757_184, 2.85e9),
}


@pytest.mark.parametrize("name", sorted(_COUNTS))
def test_parameter_counts_match_published_sizes(name):
    golden = json.loads((TESTDATA / f"param_shapes_{name}.json").read_text())
    exact, nominal = _COUNTS[name]
    assert golden["num_params"] == exact
    assert abs(exact - nominal) / nominal < 0.05


def test_tree_uses_t5x_names_tied_vs_untied():
    v10, _ = _abstract(PRESETS["t5_1_0_small"])
    v11, _ = _abstract(PRESETS["t5_1_1_small"])
    assert v10["token_embedder/embedding"] == [32128, 512]
    assert v10["encoder/relpos_bias/rel_embedding"] == [8, 32]
    assert v10["encoder/layers_5/attention/query/kernel"] == [512, 512]
    assert v10["encoder/layers_0/mlp/wi/kernel"] == [512, 2048]
    assert v10["encoder/layers_0/mlp/wo/kernel"] == [2048, 512]
    assert v10["decoder/layers_0/encoder_decoder_attention/out/kernel"] == [512, 512]
    assert v10["decoder/layers_0/pre_cross_attention_layer_norm/scale"] == [512]
    assert "decoder/logits_dense/kernel" not in v10  # tied head
    assert v11["decoder/logits_dense/kernel"] == [512, 32128]
    assert v11["decoder/layers_7/mlp/wi_0/kernel"] == [512, 1024]
    assert v11["decoder/layers_7/mlp/wi_1/kernel"] == [512, 1024]
    assert "encoder/layers_0/mlp/wi/kernel" not in v11
    assert {k for k in v10 if not k.startswith(("encoder/layers", "decoder/layers"))} == {
        "token_embedder/embedding", "encoder/relpos_bias/rel_embedding",
        "encoder/encoder_norm/scale", "decoder/relpos_bias/rel_embedding",
        "decoder/decoder_norm/scale"}


def test_every_param_has_logical_axes():
    shapes, axes = _abstract(PRESETS["t5_1_1_tiny"])
    assert shapes.keys() == axes.keys()
    for key, names in axes.items():
        assert len(names) == len(shapes[key]) and all(names), key
    assert axes["decoder/layers_0/self_attention/query/kernel"] == ["embed", "joined_kv"]
    assert axes["decoder/layers_0/self_attention/out/kernel"] == ["joined_kv", "embed"]
    assert axes["decoder/logits_dense/kernel"] == ["embed", "vocab"]
    assert axes["token_embedder/embedding"] == ["vocab", "embed"]
    assert axes["encoder/relpos_bias/rel_embedding"] == ["heads", "relpos_buckets"]
    assert axes["encoder/layers_1/mlp/wi_0/kernel"] == ["embed", "mlp"]


def test_get_config_overrides_and_errors():
    cfg = get_config("t5_1_0_small", dropout_rate=0.1, vocab_size=100)
    assert (cfg.dropout_rate, cfg.vocab_size, cfg.emb_dim) == (0.1, 100, 512)
    assert cfg.replace(num_heads=4).num_heads == 4
    with pytest.raises(KeyError, match="t5_1_0_small"):
        get_config("t5_9_small")
    with pytest.raises(TypeError, match="emb_size"):
        get_config("t5_1_0_small", emb_size=3)
    with pytest.raises(TypeError, match="scan_layers"):  # layers are always unrolled
        get_config("t5_1_0_small", scan_layers=True)
    with pytest.raises(ValueError, match="swish"):
        get_config("t5_1_0_small", mlp_activations=("swish",))
    for dtype in ("int32", "float64", "bool"):  # float64 would run as float32
        with pytest.raises(ValueError, match=f"{dtype} activations are not supported"):
            get_config("t5_1_0_small", dtype=dtype)
    assert get_config("t5_1_0_small", dtype="float16").activation_dtype == np.float16
    for field, value in [("vocab_size", 0), ("num_heads", -2), ("mlp_dim", 2.0),
                         ("emb_dim", True), ("num_decoder_layers", 0)]:
        with pytest.raises(ValueError, match=f"T5Config.{field}: {value!r}"):
            get_config("t5_1_0_small", **{field: value})
    assert get_config("t5_1_0_small", vocab_size=np.int64(7)).vocab_size == 7


# ------------------------------------------------------------ numerics


def test_relative_position_buckets_match_t5():
    rel = np.array([-300, -128, -127, -100, -64, -63, -33, -32, -31, -17, -16, -15, -9,
                    -8, -7, -1, 0, 1, 2, 7, 8, 15, 16, 17, 31, 32, 64, 100, 127, 128, 1000])
    # Values of Hugging Face's T5Attention._relative_position_bucket (= Mesh TF).
    bidirectional = [15, 15, 15, 15, 14, 13, 12, 12, 11, 10, 10, 9, 8, 8, 7, 1, 0, 17,
                     18, 23, 24, 25, 26, 26, 27, 28, 30, 31, 31, 31, 31]
    causal = [31, 31, 31, 30, 26, 26, 21, 21, 21, 16, 16, 15, 9, 8, 7, 1, 0, 0, 0, 0, 0,
              0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    np.testing.assert_array_equal(layers.relative_position_bucket(rel, True), bidirectional)
    np.testing.assert_array_equal(layers.relative_position_bucket(rel, False), causal)


ENC, DEC = 8, 6  # one shape for most tests: one compile per config


def _tokens(rng, length, lengths):
    """[len(lengths), length] random ids, row i padded after lengths[i]."""
    tokens = rng.randint(2, VOCAB, size=(len(lengths), length))
    for row, n in enumerate(lengths):
        tokens[row, n:] = 0
    return jnp.asarray(tokens)


def _batch(seed, enc_lengths=(ENC, 5), dec_lengths=(DEC, 4)):
    rng = np.random.RandomState(seed)
    dec = _tokens(rng, DEC, dec_lengths).at[:, 0].set(0)  # start token first
    return _tokens(rng, ENC, enc_lengths), dec


@pytest.mark.parametrize("name", ["t5_1_0_tiny", "t5_1_1_tiny"])
def test_forward_shapes_and_dtypes(name):
    model, params = _init(_tiny(name))
    enc, dec = _batch(0)
    logits = model.apply({"params": params}, enc, dec)
    assert logits.shape == (2, DEC, VOCAB) and logits.dtype == jnp.float32
    encoded = model.apply({"params": params}, enc, method="encode")
    assert encoded.shape == (2, ENC, 64)
    assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(params))


def test_bfloat16_activations_close_to_float32():
    cfg = _tiny()
    model, params = _init(cfg)
    enc, dec = _batch(1)
    ref = model.apply({"params": params}, enc, dec)
    low = _init(cfg.replace(dtype="bfloat16"))[0].apply({"params": params}, enc, dec)
    assert low.dtype == jnp.float32  # logits always float32
    scale = float(jnp.abs(ref).max())
    assert float(jnp.abs(low - ref).max()) < 0.1 * scale


def test_tied_head_scales_logits_by_inverse_sqrt_dim():
    cfg = _tiny("t5_1_0_tiny")
    model, params = _init(cfg)
    enc, dec = _batch(2)
    logits, state = model.apply({"params": params}, enc, dec,
                                capture_intermediates=lambda m, _: isinstance(m, layers.RMSNorm))
    normed = state["intermediates"]["decoder"]["decoder_norm"]["__call__"][0]
    expected = normed @ params["token_embedder"]["embedding"].T / np.sqrt(cfg.emb_dim)
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)


def test_encoder_padding_does_not_change_outputs():
    model, params = _init(_tiny())
    enc, dec = _batch(3, enc_lengths=(8, 3))
    padded = jnp.pad(enc, ((0, 0), (0, 6)))
    a = model.apply({"params": params}, enc, dec)
    b = model.apply({"params": params}, padded, dec)
    np.testing.assert_allclose(a, b, atol=1e-5)
    ea = model.apply({"params": params}, enc, method="encode")
    eb = model.apply({"params": params}, padded, method="encode")
    np.testing.assert_allclose(ea[0], eb[0, :8], atol=1e-5)
    np.testing.assert_allclose(ea[1, :3], eb[1, :3], atol=1e-5)


def test_decoder_is_causal():
    model, params = _init(_tiny())
    enc, dec = _batch(4)
    a = model.apply({"params": params}, enc, dec)
    b = model.apply({"params": params}, enc, dec.at[0, 4].set(2 + (dec[0, 4] == 2)))
    np.testing.assert_allclose(a[:, :4], b[:, :4], atol=1e-6)
    assert float(jnp.abs(a[0, 4:] - b[0, 4:]).max()) > 1e-4


@pytest.mark.parametrize("name", ["t5_1_0_tiny", "t5_1_1_tiny"])
def test_packed_batch_matches_segments_run_separately(name):
    model, params = _init(_tiny(name))
    rng = np.random.RandomState(5)
    # Row 0 packs two examples, row 1 holds one; each runs alone in its own row.
    enc_parts = [rng.randint(2, VOCAB, size=n) for n in (3, 4)]
    dec_parts = [np.r_[0, rng.randint(2, VOCAB, size=n - 1)] for n in (2, 3)]

    def packed_row(parts, total):
        tokens = np.zeros(total, np.int32)
        segments, positions = np.zeros(total, np.int32), np.zeros(total, np.int32)
        start = 0
        for i, part in enumerate(parts):
            tokens[start:start + len(part)] = part
            segments[start:start + len(part)] = i + 1
            positions[start:start + len(part)] = np.arange(len(part))
            start += len(part)
        return tokens, segments, positions

    def rows(parts, total):  # each part alone, padded, one per row
        out = np.zeros((2, total), np.int32)
        for i, part in enumerate(parts):
            out[i, :len(part)] = part
        return jnp.asarray(out)

    enc_row, enc_seg, enc_pos = packed_row(enc_parts, ENC)
    dec_row, dec_seg, dec_pos = packed_row(dec_parts, DEC)
    two = lambda row, other: jnp.asarray(np.stack([row, other]))
    alone_enc, alone_dec = rows(enc_parts, ENC), rows(dec_parts, DEC)
    packed = model.apply(
        {"params": params}, two(enc_row, alone_enc[1]), two(dec_row, alone_dec[1]),
        encoder_segment_ids=two(enc_seg, alone_enc[1] > 0),
        decoder_segment_ids=two(dec_seg, np.arange(DEC) < 3),
        encoder_positions=two(enc_pos, np.arange(ENC)),
        decoder_positions=two(dec_pos, np.arange(DEC)))
    alone = model.apply({"params": params}, alone_enc, alone_dec)
    np.testing.assert_allclose(packed[0, :2], alone[0, :2], atol=2e-5)
    np.testing.assert_allclose(packed[0, 2:5], alone[1, :3], atol=2e-5)
    np.testing.assert_allclose(packed[1, :3], alone[1, :3], atol=2e-5)


@pytest.mark.parametrize("name", ["t5_1_0_tiny", "t5_1_1_tiny"])
def test_cached_decode_matches_full_forward(name):
    model, params = _init(_tiny(name))
    enc, dec = _batch(6, enc_lengths=(8, 4), dec_lengths=(DEC, DEC))
    full = model.apply({"params": params}, enc, dec)
    encoded = model.apply({"params": params}, enc, method="encode")
    kwargs = dict(decode=True, max_decode_length=DEC, method="decode", mutable="cache")
    _, state = model.apply({"params": params}, encoded, enc, jnp.zeros_like(dec), **kwargs)
    cache, steps = state["cache"], []
    for t in range(DEC):
        logits, state = model.apply({"params": params, "cache": cache}, encoded, enc,
                                    dec[:, t:t + 1], **kwargs)
        cache = state["cache"]
        steps.append(logits)
    np.testing.assert_allclose(jnp.concatenate(steps, axis=1), full, atol=2e-5)
    assert int(cache["decoder"]["index"]) == DEC


def test_misuse_gives_clear_errors():
    model, params = _init(_tiny())
    enc, dec = _batch(9)
    with pytest.raises(ValueError, match="segment_ids"):
        model.apply({"params": params}, enc, dec, decoder_segment_ids=jnp.ones_like(dec))
    encoded = jnp.zeros((2, ENC, 64))
    with pytest.raises(ValueError, match="max_decode_length is 12"):
        model.apply({"params": params}, encoded, enc, dec, decode=True, max_decode_length=12,
                    method="decode", mutable="cache")


def test_dropout_only_when_enabled():
    model, params = _init(_tiny(dropout_rate=0.3, num_encoder_layers=1, num_decoder_layers=1))
    enc, dec = _batch(7)
    plain = model.apply({"params": params}, enc, dec)  # dropout off by default
    drop = lambda seed: model.apply({"params": params}, enc, dec, enable_dropout=True,
                                    rngs={"dropout": jax.random.key(seed, impl="rbg")})
    np.testing.assert_array_equal(drop(1), drop(1))
    assert float(jnp.abs(drop(1) - plain).max()) > 1e-3
    assert float(jnp.abs(drop(1) - drop(2)).max()) > 1e-3


def test_broadcast_dropout_shares_masks_along_length_and_query_axes():
    keep_pattern = lambda cfg, shape: np.asarray(layers.dropout(cfg).apply(
        {}, jnp.ones(shape), deterministic=False,
        rngs={"dropout": jax.random.key(0)})) != 0
    per_element = keep_pattern(_tiny(dropout_rate=0.5), (2, 16, 8))
    assert not (per_element == per_element[:, :1]).all()  # masks differ along length
    hidden = keep_pattern(_tiny(dropout_rate=0.5, broadcast_dropout=True), (2, 16, 8))
    assert (hidden == hidden[:, :1]).all() and 0 < hidden.mean() < 1
    weights = keep_pattern(_tiny(dropout_rate=0.5, broadcast_dropout=True), (2, 3, 16, 16))
    assert (weights == weights[:, :, :1]).all()  # [b, h, q, k]: shared across queries
    # And the network trains with it: dropout changes the output, deterministically.
    cfg = _tiny(dropout_rate=0.3, broadcast_dropout=True, num_encoder_layers=1,
                num_decoder_layers=1)
    model, params = _init(cfg)
    enc, dec = _batch(7)
    drop = lambda seed: model.apply({"params": params}, enc, dec, enable_dropout=True,
                                    rngs={"dropout": jax.random.key(seed)})
    np.testing.assert_array_equal(drop(1), drop(1))
    assert float(jnp.abs(drop(1) - model.apply({"params": params}, enc, dec)).max()) > 1e-3


def test_remat_gives_same_loss_and_gradients():
    cfg = _tiny(num_encoder_layers=1, num_decoder_layers=1)
    model, params = _init(cfg)
    enc, dec = _batch(8)

    def loss(params, config):
        return jnp.mean(Transformer(config).apply({"params": params}, enc, dec) ** 2)

    grad = lambda config: jax.jit(jax.value_and_grad(functools.partial(loss, config=config)))
    ref = grad(cfg)(params)
    got = grad(cfg.replace(remat_policy="full"))(params)
    np.testing.assert_allclose(got[0], ref[0], rtol=1e-6)
    for a, b in zip(jax.tree_util.tree_leaves(got[1]), jax.tree_util.tree_leaves(ref[1])):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_params_command_prints_count_and_shapes(capsys):
    from explistops_jax import cli

    assert cli.main(["params", "--model", "t5_1_0_small"]) == 0
    out = capsys.readouterr().out
    assert "t5_1_0_small: 60,506,624 parameters (60.5M)" in out
    assert "encoder/layers_0/attention/query/kernel" in out and "(embed, joined_kv)" in out
    assert cli.main(["params", "--model", "t5_1_1_xl", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["num_params"] == 2_849_757_184
    assert info["params"]["decoder/logits_dense/kernel"] == {"shape": [2048, 32128],
                                                             "axes": ["embed", "vocab"]}
    assert cli.main(["params", "--model", "t5_2_small"]) == 2
    assert "unknown model preset 't5_2_small'" in capsys.readouterr().err


def _logits_loss_and_grads(config, params, enc, dec, **kwargs):
    """Logits, mean next-token cross-entropy (targets = dec shifted) and its
    gradients, in one compiled call."""
    targets = jnp.concatenate([dec[:, 1:], jnp.ones_like(dec[:, :1])], axis=1)

    def loss(p):
        logits = Transformer(config).apply({"params": p}, enc, dec, **kwargs)
        logp = jax.nn.log_softmax(logits, -1)
        return -jnp.mean(jnp.take_along_axis(logp, targets[..., None], -1)), logits

    (value, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    return logits, value, grads


def _count_fused_calls(monkeypatch):
    calls = []
    real = jax.nn.dot_product_attention
    monkeypatch.setattr(jax.nn, "dot_product_attention",
                        lambda *a, **k: calls.append(k["implementation"]) or real(*a, **k))
    return calls


@pytest.mark.parametrize("name", ["t5_1_0_tiny", "t5_1_1_tiny"])
def test_xla_attention_kernel_matches_einsum(name, monkeypatch):
    """attention_kernel="xla" (jax.nn.dot_product_attention) computes the einsum
    path's attention: same logits, loss and gradients in float32, on a padded
    batch and on a packed one (segment ids, positions). Only summation order
    differs, so agreement is to float32 rounding (2e-5 on logits of order 1-10;
    gradients to 1e-4 of their largest entry)."""
    ref_cfg = _tiny(name)
    cfg = ref_cfg.replace(attention_kernel="xla")
    params = _random_params(ref_cfg)
    enc, dec = _batch(11, enc_lengths=(8, 3), dec_lengths=(DEC, 2))
    packed = dict(encoder_segment_ids=jnp.asarray([[1, 1, 1, 2, 2, 2, 2, 0]] * 2),
                  decoder_segment_ids=jnp.asarray([[1, 1, 2, 2, 2, 0]] * 2),
                  encoder_positions=jnp.asarray([[0, 1, 2, 0, 1, 2, 3, 0]] * 2),
                  decoder_positions=jnp.asarray([[0, 1, 0, 1, 2, 0]] * 2))
    calls = _count_fused_calls(monkeypatch)
    for kwargs in ({}, packed):
        (want, l_want, g_want), (got, l_got, g_got) = (
            _logits_loss_and_grads(c, params, enc, dec, **kwargs) for c in (ref_cfg, cfg))
        np.testing.assert_allclose(got, want, atol=2e-5, rtol=2e-5)
        np.testing.assert_allclose(l_got, l_want, rtol=1e-5)
        for a, b in zip(jax.tree_util.tree_leaves(g_got), jax.tree_util.tree_leaves(g_want)):
            np.testing.assert_allclose(a, b, atol=1e-4 * float(jnp.abs(b).max()) + 1e-7)
    # Every attention layer went through the fused call: encoder self-attention,
    # decoder self- and cross-attention.
    layers = cfg.num_encoder_layers + 2 * cfg.num_decoder_layers
    assert calls and set(calls) == {"xla"} and len(calls) % layers == 0


def test_fused_attention_only_where_no_dropout_applies(monkeypatch):
    """Attention weights under dropout and cached decoding take the einsum path
    whatever attention_kernel says: a dropout training pass is bit-identical to
    the einsum config's, cached decoding gives the fused full forward's logits,
    and neither calls jax.nn.dot_product_attention."""
    ref_cfg = _tiny(dropout_rate=0.3, num_encoder_layers=1, num_decoder_layers=1)
    cfg = ref_cfg.replace(attention_kernel="xla")
    params = _random_params(ref_cfg)
    enc, dec = _batch(12, dec_lengths=(DEC, DEC))
    calls = _count_fused_calls(monkeypatch)
    train = jax.jit(lambda c: Transformer(c).apply(
        {"params": params}, enc, dec, enable_dropout=True,
        rngs={"dropout": jax.random.key(3, impl="rbg")}), static_argnums=0)
    np.testing.assert_array_equal(train(cfg), train(ref_cfg))
    assert calls == []
    model = Transformer(cfg)
    full = model.apply({"params": params}, enc, dec)
    assert len(calls) == 3
    encoded = model.apply({"params": params}, enc, method="encode")
    kwargs = dict(decode=True, max_decode_length=DEC, method="decode", mutable="cache")
    _, state = model.apply({"params": params}, encoded, enc, jnp.zeros_like(dec), **kwargs)
    calls.clear()
    step = jax.jit(lambda cache, token: model.apply({"params": params, "cache": cache},
                                                    encoded, enc, token, **kwargs))
    steps = []
    for t in range(DEC):
        logits, state = step(state["cache"], dec[:, t:t + 1])
        steps.append(logits)
    assert calls == []
    np.testing.assert_allclose(jnp.concatenate(steps, axis=1), full, atol=2e-5)


def test_attention_kernel_is_checked():
    with pytest.raises(ConfigError, match="attention_kernel: 'flash'"):
        get_config("t5_1_1_tiny", attention_kernel="flash")
    with pytest.raises(ConfigError, match="needs bfloat16 or float16.*float32"):
        get_config("t5_1_1_tiny", attention_kernel="cudnn")
    cudnn = get_config("t5_1_1_tiny", attention_kernel="cudnn", dtype="bfloat16",
                       vocab_size=VOCAB)
    if jax.default_backend() != "gpu":  # a clear error, from the first applying trace
        enc, dec = _batch(13)
        # shapes only: a CPU host may plan or check checkpoints for a GPU's config
        shapes = jax.eval_shape(
            lambda: nn.unbox(Transformer(cudnn).init(jax.random.key(0), enc, dec)))
        params = _random_params(_tiny())
        assert (jax.tree.map(lambda x: x.shape, shapes["params"])
                == jax.tree.map(lambda x: x.shape, params))
        with pytest.raises(ConfigError, match="needs an NVIDIA GPU.*'cpu'"):
            Transformer(cudnn).apply({"params": params}, enc, dec)
        with pytest.raises(ConfigError, match="needs an NVIDIA GPU.*'cpu'"):
            Transformer(cudnn.replace(dropout_rate=0.1)).apply(
                {"params": params}, enc, dec, enable_dropout=True,
                rngs={"dropout": jax.random.key(0)})
