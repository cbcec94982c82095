"""Checkpoints by Hugging Face Hub model id, without a network: a tiny random T5
is written into a temporary hub cache in the hub's own layout
(``models--OWNER--NAME/refs/main`` naming a snapshot under ``snapshots/``), and
``HF_HUB_OFFLINE=1`` makes huggingface_hub read that cache only."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from explistops_jax import checkpoints, network
from explistops_jax.errors import UserError
from explistops_jax.model import EncoderDecoderModel

ROOT = Path(__file__).resolve().parent.parent
REVISION = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory):
    """(cache dir, config, params) of `test-org/tiny-t5` cached at REVISION."""
    from flax import linen as nn

    from explistops_jax import vocab

    cache = tmp_path_factory.mktemp("hub")
    repo = cache / "models--test-org--tiny-t5"
    snapshot = repo / "snapshots" / REVISION
    config = network.get_config("t5_1_0_tiny", vocab_size=256)
    model = EncoderDecoderModel(config)
    params = nn.unbox(model.get_initial_variables(jax.random.key(0), {
        "encoder_input_tokens": (1, 4), "decoder_input_tokens": (1, 4)}))["params"]
    params = jax.tree.map(np.asarray, params)
    staging = tmp_path_factory.mktemp("export") / "model"
    checkpoints.export_hf(config, params, staging)
    snapshot.mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        (snapshot / name).write_bytes((staging / name).read_bytes())
    texts = [f"[MAX {i} {i + 1} ] Final answer: {i + 1}" for i in range(200)]
    spm = vocab.train_sentencepiece_model(texts, str(tmp_path_factory.mktemp("spm") / "sp"),
                                          vocab_size=60)
    (snapshot / "spiece.model").write_bytes(Path(spm).read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REVISION)
    return cache, config, params


@pytest.fixture
def offline(hub_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache[0]))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return hub_cache


@pytest.mark.parametrize("name", ["test-org/tiny-t5", "hf://test-org/tiny-t5",
                                  f"hf://test-org/tiny-t5@{REVISION}"])
def test_hub_ids_load_from_the_cache(offline, name):
    _, config, params = offline
    assert checkpoints.is_hub_id(name)
    assert checkpoints.detect_format(name) == "hf"
    got_config, got = checkpoints.load_any(name, config)
    assert got_config == config
    jax.tree.map(np.testing.assert_array_equal, got, params)
    assert checkpoints.sentencepiece_model(name).endswith("spiece.model")


def test_local_paths_are_not_hub_ids(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "org" / "model").mkdir(parents=True)
    assert not checkpoints.is_hub_id("org/model")  # exists here: a local path
    assert not checkpoints.is_hub_id("/abs/path") and not checkpoints.is_hub_id("./x/y")
    assert checkpoints.resolve("org/model") == Path("org/model")


def test_offline_with_nothing_cached_is_one_clear_error(offline):
    cache = str(offline[0])
    with pytest.raises(UserError) as e:
        checkpoints.load_any("hf://test-org/not-there")
    message = str(e.value)
    assert "test-org/not-there" in message and cache in message
    assert "HF_HUB_OFFLINE=1" in message and "\n" not in message


def test_t5x_run_records_its_vocabulary(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoint_100").mkdir(parents=True)
    (run / "config.gin").write_text(
        "seqio.SentencePieceVocabulary.sentencepiece_model_file = "
        "'gs://t5-data/vocabs/cc_all.32000/sentencepiece.model'\n")
    assert checkpoints.sentencepiece_model(run / "checkpoint_100") == \
        "gs://t5-data/vocabs/cc_all.32000/sentencepiece.model"
    assert checkpoints.sentencepiece_model(tmp_path) is None


def _cli(args, hub_cache, **extra_env):
    env = dict(os.environ, HF_HUB_CACHE=str(hub_cache), HF_HUB_OFFLINE="1",
               JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT), **extra_env)
    env.pop("EXPLISTOPS_SPM_PATH", None)
    return subprocess.run([sys.executable, "-m", "explistops_jax.cli", *args], env=env,
                          capture_output=True, text=True, timeout=300, cwd=ROOT)


def test_convert_and_reproduce_take_hub_ids(offline, tmp_path):
    cache = offline[0]
    out = tmp_path / "converted"
    proc = _cli(["convert", "--from", "hf", "test-org/tiny-t5", "--to", "explistops",
                 str(out)], cache)
    assert proc.returncode == 0, proc.stderr[-2000:]
    config = json.loads((out / "config.json").read_text())
    assert config["vocab_size"] == 256 and config["emb_dim"] == offline[1].emb_dim
    # the paper preset with a Hub checkpoint is a complete command: the _sp tasks
    # take the checkpoint's own spiece.model
    proc = _cli(["reproduce", "--preset", "paper", "--sizes", "small", "--styles", "medium",
                 "--checkpoint", "small=test-org/tiny-t5", "--out", str(tmp_path / "paper"),
                 "--dry-run"], cache)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "_sp" in proc.stdout
    missing = _cli(["convert", "--from", "hf", "hf://test-org/not-there", "--to",
                    "explistops", str(tmp_path / "x")], cache)
    assert missing.returncode == 2
    assert len(missing.stderr.strip().splitlines()) == 1 and "not-there" in missing.stderr
    assert not (tmp_path / "x").exists()


def test_eval_and_predict_load_hub_ids(offline):
    """train_state.load_model_and_params (what eval and predict call) resolves
    a Hub id to its cached snapshot."""
    from explistops_jax import train_state

    _, config, params = offline
    model, placed, step, info = train_state.load_model_and_params("hf://test-org/tiny-t5")
    assert model.config == config and step == 0 and "model_config" in info
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(placed), params)
