"""Checkpoint formats without torch: T5X (Orbax as T5X writes it, legacy msgpack +
TensorStore), our params directories, HF files written by export_hf, format
detection, and the errors a user sees for a checkpoint that does not fit."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.core import meta

from explistops_jax import checkpoints, network
from explistops_jax.checkpoints import common, hf as hf_format
from explistops_jax.errors import UserError

SMALL = dict(vocab_size=64, emb_dim=32, num_heads=2, head_dim=16, mlp_dim=48)


def _config(preset: str) -> network.T5Config:
    return network.get_config(preset, **SMALL)


def _params(config, seed=0):
    tokens = jnp.ones((1, 4), jnp.int32)
    variables = network.Transformer(config).init(jax.random.PRNGKey(seed), tokens, tokens)
    return jax.tree.map(np.asarray, meta.unbox(variables["params"]))


def _assert_same(a, b):
    fa, fb = common.flatten(a), common.flatten(b)
    assert sorted(fa) == sorted(fb)
    for k in fa:
        assert np.array_equal(fa[k], fb[k]), k


def _logits(config, params):
    tokens = jnp.array([[5, 6, 7, 1, 0]], jnp.int32)
    return np.asarray(network.Transformer(config).apply({"params": params}, tokens, tokens))


@pytest.fixture(scope="module", params=["t5_1_0_tiny", "t5_1_1_tiny"])
def model(request):
    config = _config(request.param)
    return config, _params(config)


# ------------------------------------------------------------------- T5X


def _write_like_t5x(model_dir: Path, params, step: int):
    """What t5x's OrbaxCheckpointManagerInterface.save writes: a CheckpointManager
    step `checkpoint_{step}` whose item `state` is an OCDBT PyTree of
    train_state.state_dict() (target + Adafactor-style param_states + step)."""
    import orbax.checkpoint as ocp

    param_states = jax.tree.map(
        lambda x: {"v_row": np.zeros(x.shape[:1], np.float32), "v_col": np.zeros(x.shape[-1:], np.float32)}
        if x.ndim == 2 else {"v": np.zeros_like(x)}, params)
    tree = {"target": params, "state": {"step": np.int32(step), "param_states": param_states}}
    manager = ocp.CheckpointManager(
        model_dir,
        item_handlers={"state": ocp.PyTreeCheckpointHandler(use_ocdbt=True)},
        options=ocp.CheckpointManagerOptions(step_prefix="checkpoint", create=True))
    manager.save(step, args=ocp.args.Composite(state=ocp.args.PyTreeSave(tree)))
    manager.wait_until_finished()
    manager.close()


def test_t5x_orbax_checkpoint_restores_into_network(model, tmp_path):
    config, params = model
    _write_like_t5x(tmp_path / "model", params, step=1000)
    assert (tmp_path / "model" / "checkpoint_1000" / "state" / "_METADATA").is_file()
    for path in (tmp_path / "model", tmp_path / "model" / "checkpoint_1000",
                 tmp_path / "model" / "checkpoint_1000" / "state"):
        got_config, got = checkpoints.import_t5x(path)  # config inferred from shapes
        assert got_config == config
        _assert_same(got, params)
    np.testing.assert_array_equal(_logits(got_config, got), _logits(config, params))


def test_t5x_latest_step_is_chosen(model, tmp_path):
    config, params = model
    _write_like_t5x(tmp_path / "model", params, step=10)
    _write_like_t5x(tmp_path / "model", jax.tree.map(lambda x: x + 1, params), step=20)
    _, got = checkpoints.import_t5x(tmp_path / "model")
    _assert_same(got, jax.tree.map(lambda x: x + 1, params))


def test_t5x_export_round_trip(model, tmp_path):
    config, params = model
    ckpt = checkpoints.export_t5x(config, params, tmp_path / "model", step=7)
    assert ckpt == tmp_path / "model" / "checkpoint_7"
    assert (ckpt / "state" / "_METADATA").is_file()
    assert (ckpt / "_CHECKPOINT_METADATA").is_file()
    got_config, got = checkpoints.import_t5x(ckpt, config)
    assert got_config == config
    _assert_same(got, params)
    assert [p.name for p in (tmp_path).iterdir()] == ["model"]  # no temp dirs left


def _write_legacy(ckpt_dir: Path, params):
    """T5X's legacy Checkpointer layout, by hand: `checkpoint` msgpack with
    version 3 / optimizer / target; matrices in zarr arrays (gzip) named by the
    '.'-joined path and referenced by a relative TensorStore spec, the rest inline."""
    import tensorstore as ts
    from flax import serialization

    def leaf(path, x):
        if x.ndim < 2:
            return x
        name = "target." + ".".join(p.key for p in path)
        spec = {"driver": "zarr", "dtype": "float32", "kvstore": {"driver": "file", "path": name},
                "metadata": {"compressor": {"id": "gzip"}, "shape": list(x.shape), "chunks": list(x.shape)}}
        absolute = dict(spec, kvstore={"driver": "file", "path": str(ckpt_dir / name)})
        ts.open(absolute, create=True, open=True).result().write(x).result()
        return spec

    ckpt_dir.mkdir(parents=True)
    target = jax.tree_util.tree_map_with_path(leaf, params)
    contents = {"version": 3, "optimizer": {"target": target, "state": {"step": np.int32(3)}}}
    (ckpt_dir / "checkpoint").write_bytes(serialization.msgpack_serialize(contents))


def test_t5x_legacy_msgpack_checkpoint(model, tmp_path):
    config, params = model
    _write_legacy(tmp_path / "model" / "checkpoint_3", params)
    assert (tmp_path / "model" / "checkpoint_3" / "target.token_embedder.embedding" / ".zarray").is_file()
    for path in (tmp_path / "model", tmp_path / "model" / "checkpoint_3" / "checkpoint"):
        got_config, got = checkpoints.import_t5x(path)
        assert got_config == config
        _assert_same(got, params)


def test_t5x_given_config_must_fit(model, tmp_path):
    config, params = model
    _write_like_t5x(tmp_path / "model", params, step=1)
    with pytest.raises(UserError, match="decoder/layers_1/mlp/wo/kernel") as e:
        checkpoints.import_t5x(tmp_path / "model", config.replace(num_decoder_layers=3, mlp_dim=50))
    assert "decoder/layers_2/self_attention/query/kernel" in str(e.value)  # missing layer


def test_t5x_not_a_checkpoint(tmp_path):
    with pytest.raises(UserError, match="not a T5X checkpoint"):
        checkpoints.import_t5x(tmp_path)
    with pytest.raises(UserError, match="no such file"):
        checkpoints.import_t5x(tmp_path / "absent")


# ------------------------------------------------------------ our format


def test_params_directory_round_trip(model, tmp_path):
    config, params = model
    config = config.replace(dropout_rate=0.1, relative_attention_max_distance=64)
    checkpoints.save_params(tmp_path / "p", config, params)
    assert json.loads((tmp_path / "p" / "config.json").read_text())["emb_dim"] == 32
    got_config, got = checkpoints.load_params(tmp_path / "p")
    assert got_config == config
    _assert_same(got, params)


def test_the_attention_kernel_is_not_saved(model, tmp_path):
    """A config trained with cuDNN attention saves as the model it is: loaded on a
    machine without a GPU it computes attention the default way."""
    config, params = model
    fused = config.replace(dtype="bfloat16", attention_kernel="cudnn")
    checkpoints.save_params(tmp_path / "p", fused, params)
    assert "attention_kernel" not in json.loads((tmp_path / "p" / "config.json").read_text())
    got_config, _ = checkpoints.load_params(tmp_path / "p")
    assert got_config == fused.replace(attention_kernel="einsum")


def test_the_cpu_kernels_switch_is_not_saved(model, tmp_path):
    """T5Config.cpu_kernels chooses how a machine computes: a run trained with the
    CPU kernels loads on a GPU with the default (resolved there, to off)."""
    config, params = model
    checkpoints.save_params(tmp_path / "p", config.replace(cpu_kernels=True), params)
    assert "cpu_kernels" not in json.loads((tmp_path / "p" / "config.json").read_text())
    got_config, _ = checkpoints.load_params(tmp_path / "p")
    assert got_config == config.replace(cpu_kernels=None)


def test_configs_saved_with_scan_layers_still_load():
    """Older runs saved ``"scan_layers": false`` (a field since removed: layers
    are always unrolled); it is dropped on reading, and ``true`` is refused."""
    config = network.get_config("t5_1_1_tiny", vocab_size=64)
    saved = common.config_to_dict(config)
    assert "scan_layers" not in saved
    assert common.config_from_dict({**saved, "scan_layers": False}, source="run.json") == config
    with pytest.raises(UserError, match=r"run\.json: T5Config\.scan_layers=True is not supported"):
        common.config_from_dict({**saved, "scan_layers": True}, source="run.json")
    with pytest.raises(UserError, match="unknown T5Config field"):
        common.config_from_dict({**saved, "scan_layer": False}, source="run.json")


def test_load_any_detects_each_format(model, tmp_path):
    config, params = model
    checkpoints.save_params(tmp_path / "ours", config, params)
    checkpoints.export_hf(config, params, tmp_path / "hf")
    checkpoints.export_t5x(config, params, tmp_path / "t5x")
    for name, fmt in (("ours", "explistops"), ("hf", "hf"), ("t5x", "t5x")):
        assert checkpoints.detect_format(tmp_path / name) == fmt
        got_config, got = checkpoints.load_any(tmp_path / name)
        assert got_config == config
        _assert_same(got, params)
    with pytest.raises(UserError, match="not a checkpoint"):
        checkpoints.load_any(tmp_path)
    with pytest.raises(UserError, match="differs from the requested"):
        checkpoints.load_any(tmp_path / "hf", config.replace(num_heads=4, head_dim=8))


# ------------------------------------------------------- HF-file errors


def _hf_dir(tmp_path, model):
    config, params = model
    checkpoints.export_hf(config, params, tmp_path / "hf")
    return tmp_path / "hf"


def _rewrite(directory: Path, edit):
    from safetensors.numpy import save_file

    tensors = hf_format.read_safetensors(directory / "model.safetensors")
    edit(tensors)
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})


def test_hf_export_files(model, tmp_path):
    config, _ = model
    d = _hf_dir(tmp_path, model)
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["model_type"] == "t5" and cfg["architectures"] == ["T5ForConditionalGeneration"]
    assert (cfg["decoder_start_token_id"], cfg["pad_token_id"], cfg["eos_token_id"]) == (0, 0, 1)
    assert cfg["tie_word_embeddings"] == config.logits_via_embedding
    assert cfg["feed_forward_proj"] == ("relu" if config.logits_via_embedding else "gated-gelu")
    keys = hf_format.read_safetensors(d / "model.safetensors")
    assert ("lm_head.weight" in keys) != config.logits_via_embedding
    assert keys["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"].shape == (32, 2)
    assert keys["encoder.block.0.layer.0.SelfAttention.q.weight"].shape == (32, 32)


def test_hf_unmapped_key_is_named(model, tmp_path):
    d = _hf_dir(tmp_path, model)
    _rewrite(d, lambda t: t.update({"encoder.block.0.layer.0.SelfAttention.extra.weight": np.zeros(3, np.float32)}))
    with pytest.raises(UserError, match=r"unmapped: encoder\.block\.0\.layer\.0\.SelfAttention\.extra\.weight"):
        checkpoints.import_hf(d)


def test_hf_missing_key_is_named(model, tmp_path):
    d = _hf_dir(tmp_path, model)
    _rewrite(d, lambda t: t.pop("decoder.block.1.layer.2.DenseReluDense.wo.weight"))
    with pytest.raises(UserError, match=r"missing: decoder\.block\.1\.layer\.2\.DenseReluDense\.wo\.weight"):
        checkpoints.import_hf(d)


def test_hf_wrong_shape_is_named(model, tmp_path):
    d = _hf_dir(tmp_path, model)
    key = "encoder.block.1.layer.0.SelfAttention.k.weight"
    _rewrite(d, lambda t: t.update({key: np.zeros((32, 30), np.float32)}))
    with pytest.raises(UserError, match=rf"wrong shape: {key.replace('.', '[.]')} .*\[30, 32\].*\[32, 32\]"):
        checkpoints.import_hf(d)


def test_hf_aliases_and_ignored_keys(model, tmp_path):
    """Old files store the embedding copies and an unused cross-attention bias."""
    config, params = model
    d = _hf_dir(tmp_path, model)

    def add(t):
        t["encoder.embed_tokens.weight"] = t["shared.weight"]
        t["decoder.embed_tokens.weight"] = t["shared.weight"]
        t["decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight"] = np.zeros((32, 2), np.float32)
    _rewrite(d, add)
    got_config, got = checkpoints.import_hf(d)
    assert got_config == config
    _assert_same(got, params)
    _rewrite(d, lambda t: t.update({"decoder.embed_tokens.weight": t["shared.weight"] + 1}))
    with pytest.raises(UserError, match="decoder.embed_tokens.weight differs from shared.weight"):
        checkpoints.import_hf(d)


def test_hf_bfloat16_weights_are_read(model, tmp_path):
    import ml_dtypes

    d = _hf_dir(tmp_path, model)
    _rewrite(d, lambda t: t.update({k: v.astype(ml_dtypes.bfloat16) for k, v in t.items()}))
    _, got = checkpoints.import_hf(d)
    emb = common.flatten(got)["token_embedder/embedding"]
    assert emb.dtype == np.float32
    np.testing.assert_allclose(emb, common.flatten(model[1])["token_embedder/embedding"], rtol=1e-2)


def test_hf_bad_directory(tmp_path):
    with pytest.raises(UserError, match="not a directory"):
        checkpoints.import_hf(tmp_path / "absent")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(UserError, match="no weights found"):
        checkpoints.import_hf(tmp_path)


# ------------------------------------------------------- atomic output


def test_export_refuses_existing_output(model, tmp_path):
    config, params = model
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="already exists"):
        checkpoints.export_hf(config, params, tmp_path / "out")
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


def test_failed_export_leaves_nothing(model, tmp_path, monkeypatch):
    config, params = model

    def broken(*args, **kwargs):
        raise OSError("disk full")
    monkeypatch.setattr("safetensors.numpy.save_file", broken)
    with pytest.raises(OSError):
        checkpoints.export_hf(config, params, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_export_checks_params_before_writing(model, tmp_path):
    config, params = model
    with pytest.raises(UserError, match="missing: decoder/decoder_norm/scale"):
        bad = common.unflatten({k: v for k, v in common.flatten(params).items() if k != "decoder/decoder_norm/scale"})
        checkpoints.export_t5x(config, bad, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_rule_table_covers_every_parameter():
    """Every parameter of both T5 versions has an HF name that maps back to it
    (the presets differ from these only in sizes and layer counts)."""
    for name in ("t5_1_0_tiny", "t5_1_1_tiny"):
        for path in common.expected_shapes(network.get_config(name, num_decoder_layers=3)):
            key, _ = hf_format.t5x_to_hf(path)
            assert hf_format.hf_to_t5x(key)[0] == path


# ------------------------------------------------------------------- CLI


def _convert(*argv: str) -> int:
    import argparse

    from explistops_jax.commands import convert

    parser = argparse.ArgumentParser(prog="explistops convert")
    convert.add_arguments(parser)
    return convert.run(parser.parse_args(argv))


def test_convert_chain_is_lossless(model, tmp_path, capsys, monkeypatch):
    config, params = model
    checkpoints.export_hf(config, params, tmp_path / "hf")
    monkeypatch.chdir(tmp_path)  # relative paths (orbax itself wants absolute ones)
    assert _convert("--from", "hf", "hf", "--to", "t5x", "t5x", "--step", "5") == 0
    assert "wrote t5x checkpoint" in capsys.readouterr().out
    assert _convert("--from", "t5x", "t5x/checkpoint_5", "--to", "explistops", "ours") == 0
    assert _convert("--from", "explistops", "ours", "--to", "hf", "hf2") == 0
    a = hf_format.read_safetensors(tmp_path / "hf" / "model.safetensors")
    b = hf_format.read_safetensors(tmp_path / "hf2" / "model.safetensors")
    assert sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a)
    assert json.loads((tmp_path / "hf" / "config.json").read_text()) == json.loads(
        (tmp_path / "hf2" / "config.json").read_text())


def test_convert_with_preset(tmp_path):
    config = network.get_config("t5_1_1_tiny", vocab_size=64)
    checkpoints.export_t5x(config, _params(config), tmp_path / "t5x")
    with pytest.raises(UserError, match="token_embedder/embedding has shape \\[64, 64\\], the model expects \\[32128, 64\\]"):
        _convert("--from", "t5x", str(tmp_path / "t5x"), "--to", "hf", str(tmp_path / "a"),
                 "--model", "t5_1_1_tiny")
    with pytest.raises(UserError, match="unknown model preset 't5_9'"):
        _convert("--from", "t5x", str(tmp_path / "t5x"), "--to", "hf", str(tmp_path / "a"), "--model", "t5_9")
    assert not (tmp_path / "a").exists()


def test_convert_bad_input_writes_nothing(tmp_path):
    with pytest.raises(UserError, match="absent"):
        _convert("--from", "hf", str(tmp_path / "absent"), "--to", "t5x", str(tmp_path / "out"))
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def _edit_config(directory: Path, **changes):
    cfg = json.loads((directory / "config.json").read_text())
    for k, v in changes.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    (directory / "config.json").write_text(json.dumps(cfg))


def test_hf_head_variants(tmp_path, caplog):
    """How the output head is read: transformers 4 configs (tie_word_embeddings
    only), transformers 5 ones (scale_decoder_outputs), a missing lm_head."""
    c11 = _config("t5_1_1_tiny")
    p11 = _params(c11)
    flat11 = common.flatten(p11)
    # transformers 4 style: no scale_decoder_outputs, tie_word_embeddings false.
    d = tmp_path / "v4"
    checkpoints.export_hf(c11, p11, d)
    _edit_config(d, scale_decoder_outputs=None)
    assert checkpoints.import_hf(d)[0] == c11
    # Unscaled head without lm_head: transformers ties it to the embedding.
    _rewrite(d, lambda t: t.pop("lm_head.weight"))
    config, got = checkpoints.import_hf(d)
    assert not config.logits_via_embedding
    np.testing.assert_array_equal(common.flatten(got)["decoder/logits_dense/kernel"],
                                  flat11["token_embedder/embedding"].T)
    # Scaled head (T5 1.0 config) with its own lm_head: the scale is folded in.
    c10 = _config("t5_1_0_tiny")
    d = tmp_path / "scaled"
    checkpoints.export_hf(c10, _params(c10), d)
    head = np.random.default_rng(0).standard_normal((64, 32)).astype(np.float32)
    _rewrite(d, lambda t: t.update({"lm_head.weight": head}))
    with caplog.at_level("WARNING"):
        config, got = checkpoints.import_hf(d)
    assert "folding" in caplog.text
    assert not config.logits_via_embedding
    np.testing.assert_allclose(common.flatten(got)["decoder/logits_dense/kernel"], head.T * 32 ** -0.5)


def test_cli_reports_errors_without_traceback(model, tmp_path, capsys):
    from explistops_jax import cli

    config, params = model
    checkpoints.export_hf(config, params, tmp_path / "hf")
    _rewrite(tmp_path / "hf", lambda t: t.update({"encoder.block.9.layer.0.SelfAttention.q.weight": t["shared.weight"]}))
    status = cli.main(["convert", "--from", "hf", str(tmp_path / "hf"), "--to", "explistops", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith("explistops: error: ") and "Traceback" not in err
    assert "unexpected: encoder.block.9.layer.0.SelfAttention.q.weight" in err
    assert not (tmp_path / "out").exists()
