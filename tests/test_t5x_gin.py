"""The T5X gin files (gin_configs/t5x/): textual checks always, real T5X where installed.

Always (no T5X needed): every experiment file includes a T5X model file, the
matching vocabulary layer and the run layer of its kind, names a task that
``seqio_tasks`` registers, and comes with its finetune/eval/infer siblings;
the run layers import ``seqio_tasks`` and include T5X's run files; every folder
has an ``__init__.py``; the domain-vocabulary embedding is large enough.

With T5X importable (see docs/t5x.md; skipped otherwise): every file parses with
T5X's own modules; the tiny CPU experiment trains a few steps through
``python -m t5x.train``, is scored by ``t5x.eval`` and decoded by ``t5x.infer``;
and the checkpoint T5X wrote imports with ``explistops_jax.checkpoints.import_t5x``
into a network that gives T5X's logits.
"""

from __future__ import annotations

import ast
import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
T5X_DIR = REPO / "gin_configs" / "t5x"
KINDS = ("finetune", "eval", "infer")
# T5X's run file and the entry point of each kind.
T5X_RUN_FILES = {kind: f"t5x/configs/runs/{kind}.gin" for kind in KINDS}
MAIN_MODULES = {"finetune": "t5x.train", "eval": "t5x.eval", "infer": "t5x.infer"}
TINY = "t5_1_0_tiny_medium"  # the CPU experiment the T5X tests run

# The public T5 1.0 checkpoints of T5X (docs/models.md) and their steps.
PUBLIC_CHECKPOINT = re.compile(r"gs://t5-data/pretrained_models/t5x/t5_(small|base|large|3B)/checkpoint_(\d+)$")
PUBLIC_STEPS = {"small": 1_000_000, "base": 999_900, "large": 1_000_700, "3B": 1_000_000}

_INCLUDE = re.compile(r"^include\s+['\"]([^'\"]+)['\"]", re.M)
_IMPORT = re.compile(r"^import\s+([\w.]+)", re.M)
_MACRO = re.compile(r"^([A-Z][A-Z0-9_]*)\s*=\s*(.+?)\s*(?:#.*)?$", re.M)


def gin_files() -> list[Path]:
    return sorted(T5X_DIR.rglob("*.gin"))


def experiment_files() -> list[Path]:
    """The files a user passes to --gin_file: gin_configs/t5x/*_{finetune,eval,infer}.gin."""
    return sorted(p for p in T5X_DIR.glob("*.gin") if p.stem.rsplit("_", 1)[-1] in KINDS)


def kind_of(path: Path) -> str:
    return path.stem.rsplit("_", 1)[-1]


def includes(path: Path) -> list[str]:
    return _INCLUDE.findall(path.read_text())


def macros(path: Path) -> dict[str, object]:
    """Top-level macros of one file, values parsed as Python literals where they are."""
    out: dict[str, object] = {}
    for name, value in _MACRO.findall(path.read_text()):
        try:
            out[name] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[name] = value  # a reference such as @vocab.DomainVocabulary()
    return out


def repo_include(include: str) -> Path | None:
    """The repository file an include names, or None for a T5X file."""
    return REPO / include if include.startswith("gin_configs/") else None


@pytest.fixture(scope="module")
def seqio_tasks():
    """The task registrations (importing ``seqio_tasks`` registers them)."""
    return pytest.importorskip("seqio_tasks")


def sp_task_base(task: str) -> str:
    return task[: -len("_sp")] if task.endswith("_sp") else task


# --------------------------------------------------------- textual (always on)


def test_there_are_experiments_of_every_kind():
    files = experiment_files()
    assert files, f"no experiment files under {T5X_DIR}"
    stems = {p.stem.rsplit("_", 1)[0] for p in files}
    assert f"{TINY}" in stems


def test_every_folder_gin_includes_from_is_a_package():
    for folder in {p.parent for p in gin_files()} | {T5X_DIR.parent}:
        assert (folder / "__init__.py").is_file(), f"{folder} lacks __init__.py (gin includes by package)"


def test_every_include_resolves():
    for path in gin_files():
        for inc in includes(path):
            local = repo_include(inc)
            if local is not None:
                assert local.is_file(), f"{path.relative_to(REPO)} includes missing {inc}"
            else:
                assert inc.startswith("t5x/"), f"{path.relative_to(REPO)}: unexpected include {inc}"


def test_run_layers_import_tasks_and_include_t5x_run_files():
    for kind in KINDS:
        layer = T5X_DIR / "run" / f"{kind}.gin"
        text = layer.read_text()
        assert "seqio_tasks" in _IMPORT.findall(text), f"{layer.name} must `import seqio_tasks`"
        assert T5X_RUN_FILES[kind] in includes(layer)
        assert "dynamic_registration" in text
    finetune = macros(T5X_DIR / "run" / "finetune.gin")
    assert finetune["USE_CACHED_TASKS"] is False, "the tasks are not cached: USE_CACHED_TASKS = False"


@pytest.mark.parametrize("path", experiment_files(), ids=lambda p: p.name)
def test_experiment_layers(path):
    kind = kind_of(path)
    incs = includes(path)
    model = [i for i in incs if i.startswith("t5x/examples/t5/") or i.startswith("gin_configs/t5x/model/t5_")]
    assert len(model) == 1, f"{path.name}: includes exactly one model file, got {model}"
    assert incs[-1] == f"gin_configs/t5x/run/{kind}.gin", f"{path.name}: the run layer of its kind comes last"
    m = macros(path)
    task = m.get("MIXTURE_OR_TASK_NAME")
    assert isinstance(task, str), f"{path.name}: sets MIXTURE_OR_TASK_NAME"
    vocab_layer = (
        "gin_configs/t5x/model/sentencepiece_vocab.gin" if task.endswith("_sp")
        else "gin_configs/t5x/model/domain_vocab.gin"
    )
    assert vocab_layer in incs, f"{path.name}: task {task} needs {vocab_layer}"
    assert incs.index(vocab_layer) > incs.index(model[0]), "the vocabulary overrides the model file's"
    if kind == "finetune":
        assert "TRAIN_STEPS" in m and "INITIAL_CHECKPOINT_PATH" in m
        ckpt = m["INITIAL_CHECKPOINT_PATH"]
        if ckpt is not None:  # None: from scratch, with either vocabulary
            match = PUBLIC_CHECKPOINT.match(str(ckpt))
            assert match, f"{path.name}: unexpected INITIAL_CHECKPOINT_PATH {ckpt}"
            size, step = match.groups()
            assert int(step) == PUBLIC_STEPS[size]
            assert f"t5_1_0/{size}.gin" in model[0], f"{path.name}: checkpoint {size} vs model {model[0]}"
            assert task.endswith("_sp"), "a public checkpoint's embedding is SentencePiece's"
            assert m["TRAIN_STEPS"] > int(step), "TRAIN_STEPS counts the pre-training steps too"


@pytest.mark.parametrize("stem", sorted({p.stem.rsplit("_", 1)[0] for p in experiment_files()}))
def test_experiments_come_in_consistent_triples(stem):
    files = {kind: T5X_DIR / f"{stem}_{kind}.gin" for kind in KINDS}
    for kind, path in files.items():
        assert path.is_file(), f"{stem}: {path.name} is missing"
    model = {k: [i for i in includes(p) if "/model/" in i or i.startswith("t5x/examples")] for k, p in files.items()}
    assert model["finetune"] == model["eval"] == model["infer"], f"{stem}: model layers differ: {model}"
    tasks = {k: macros(p)["MIXTURE_OR_TASK_NAME"] for k, p in files.items()}
    # eval/infer may score a sibling task (a generalization split lives in the same
    # task), but the vocabulary must match what was trained.
    assert len({t.endswith("_sp") for t in tasks.values()}) == 1, tasks


def test_experiment_tasks_are_registered(seqio_tasks):
    import seqio

    known = set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names())
    for path in experiment_files():
        task = macros(path)["MIXTURE_OR_TASK_NAME"]
        # The _sp tasks exist only with a SentencePiece model configured; their
        # domain-vocabulary twins always do.
        assert task in known or sp_task_base(task) in known, f"{path.name}: unknown task {task}"


def test_eval_splits_exist(seqio_tasks):
    import seqio

    for path in experiment_files():
        if kind_of(path) == "finetune":
            continue
        split = re.search(r"^utils\.DatasetConfig\.split\s*=\s*['\"](\w+)['\"]", path.read_text(), re.M)
        split = split.group(1) if split else "test"  # T5X's eval.gin and infer.gin read 'test'
        task = sp_task_base(macros(path)["MIXTURE_OR_TASK_NAME"])
        assert split in seqio.get_mixture_or_task(task).splits, f"{path.name}: {task} has no split {split}"


def test_domain_vocab_embedding_is_large_enough(seqio_tasks):
    from explistops_jax import vocab

    text = (T5X_DIR / "model" / "domain_vocab.gin").read_text()
    size = int(re.search(r"network\.T5Config\.vocab_size\s*=\s*(\d+)", text).group(1))
    domain = seqio_tasks.tasks.domain_vocabulary()
    assert domain == vocab.DomainVocabulary(), "the gin file builds DomainVocabulary() with defaults"
    assert domain.vocab_size <= size, f"embedding {size} rows < vocabulary {domain.vocab_size}"
    assert size % 128 == 0 and size - domain.vocab_size < 128


# ------------------------------------------------------------ with real T5X


def _t5x_or_skip():
    try:
        return importlib.import_module("t5x")
    except Exception as e:  # ImportError, or a broken install
        pytest.skip(f"T5X not importable ({type(e).__name__}: {e}); install it with scripts/install_t5x.sh")


@pytest.fixture(scope="module")
def sp_model(tmp_path_factory):
    """A small stand-in for T5's SentencePiece model (the real one is not bundled)."""
    from explistops_jax import vocab

    texts = ["[MAX 2 9 [MIN 4 7 ] 0 ]", "Final answer: 7", "SUM, add [0, 8, 4], sum is 12"] * 50
    texts += [str(i) for i in range(300)]
    return vocab.train_sentencepiece_model(texts, str(tmp_path_factory.mktemp("spm") / "spm"), vocab_size=200)


@pytest.mark.parametrize("path", experiment_files(), ids=lambda p: p.name)
def test_parses_with_t5x(path, seqio_tasks, sp_model, monkeypatch):
    """Parse each experiment with T5X's modules bound as `__main__`, as the launcher does."""
    _t5x_or_skip()
    import gin

    main = importlib.import_module(MAIN_MODULES[kind_of(path)])
    monkeypatch.setitem(sys.modules, "__main__", main)
    monkeypatch.setenv("EXPLISTOPS_SPM_PATH", sp_model)
    seqio_tasks.register_sentencepiece_tasks(sp_model)
    monkeypatch.chdir(REPO)
    gin.clear_config(clear_constants=False)
    try:
        gin.parse_config_files_and_bindings([str(path.relative_to(REPO))], [], finalize_config=False)
        task = gin.query_parameter("%MIXTURE_OR_TASK_NAME")
        import seqio

        seqio.get_mixture_or_task(task)  # raises for an unknown name
        model = gin.query_parameter("%MODEL")
        assert model is not None
        if kind_of(path) == "finetune":
            assert gin.query_parameter("%USE_CACHED_TASKS") is False
    finally:
        gin.clear_config(clear_constants=False)


def _run(module: str, gin_file: str, bindings: dict[str, str], log: Path) -> str:
    """Run one T5X entry point in a subprocess, as a user would; returns its log."""
    cmd = [sys.executable, "-m", module, f"--gin_file={gin_file}"]
    cmd += [f"--gin.{k}={v}" for k, v in bindings.items()]
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    log.write_text(proc.stdout + proc.stderr)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed; tail of log:\n{(proc.stdout + proc.stderr)[-4000:]}"
    return proc.stdout + proc.stderr


TINY_SHRINK = {
    # Shrink the CPU experiment further: a few steps, short features, small batches.
    "TRAIN_STEPS": "3",
    "BATCH_SIZE": "4",
    "TASK_FEATURE_LENGTHS": "{'inputs': 64, 'targets': 64}",
    "EVAL_PERIOD": "3",
    "EVAL_STEPS": "1",
    "EVALUATOR_NUM_EXAMPLES": "4",
    "utils.SaveCheckpointConfig.period": "3",
}


@pytest.fixture(scope="module")
def tiny_t5x_run(tmp_path_factory):
    """Train the tiny experiment for 3 steps with `python -m t5x.train`; the model dir."""
    _t5x_or_skip()
    model_dir = tmp_path_factory.mktemp("t5x_tiny")
    log = _run("t5x.train", f"gin_configs/t5x/{TINY}_finetune.gin",
               {"MODEL_DIR": f'"{model_dir}"', **TINY_SHRINK}, model_dir / "train.log")
    losses = re.findall(r"collection=train .*?\bloss=([0-9.e+-]+|nan|inf)", log)
    assert losses, "no training loss in the log"
    assert all(float(x) == float(x) and float(x) < float("inf") for x in losses), losses
    return model_dir


@pytest.mark.slow
def test_tiny_t5x_train_writes_orbax_checkpoint(tiny_t5x_run):
    step = tiny_t5x_run / "checkpoint_3"
    assert (step / "state" / "_METADATA").is_file(), sorted(p.name for p in tiny_t5x_run.iterdir())
    assert (tiny_t5x_run / "config.gin").is_file()


@pytest.mark.slow
def test_tiny_t5x_eval_and_infer(tiny_t5x_run):
    ckpt = f'"{tiny_t5x_run / "checkpoint_3"}"'
    small = {"utils.DatasetConfig.batch_size": "4", "seqio.Evaluator.num_examples": "4"}
    eval_dir = tiny_t5x_run / "eval"
    _run("t5x.eval", f"gin_configs/t5x/{TINY}_eval.gin",
         {"CHECKPOINT_PATH": ckpt, "EVAL_OUTPUT_DIR": f'"{eval_dir}"', **small}, tiny_t5x_run / "eval.log")
    metrics = [json.loads(line) for f in eval_dir.glob("*-metrics.jsonl") for line in f.read_text().splitlines()]
    assert metrics and any("accuracy" in k for m in metrics for k in m), metrics

    infer_dir = tiny_t5x_run / "infer"
    _run("t5x.infer", f"gin_configs/t5x/{TINY}_infer.gin",
         {"CHECKPOINT_PATH": ckpt, "INFER_OUTPUT_DIR": f'"{infer_dir}"',
          "utils.DatasetConfig.batch_size": "4", "TASK_FEATURE_LENGTHS": "{'inputs': 64, 'targets': 16}"},
         tiny_t5x_run / "infer.log")
    outputs = [p for p in infer_dir.glob("*-predict.jsonl-*") if not p.name.endswith(".COMPLETED")]
    assert outputs, sorted(p.name for p in infer_dir.iterdir())
    first = json.loads(outputs[0].read_text().splitlines()[0])
    assert "prediction" in first and "inputs" in first


@pytest.mark.slow
def test_t5x_checkpoint_imports_and_matches_t5x_logits(tiny_t5x_run):
    checkpoints = pytest.importorskip("explistops_jax.checkpoints")
    if not hasattr(checkpoints, "import_t5x"):
        pytest.skip("explistops_jax.checkpoints.import_t5x is not there yet")
    import jax.numpy as jnp
    import numpy as np
    from t5x.examples.t5 import network as t5x_network

    from explistops_jax import network

    config, params = checkpoints.import_t5x(tiny_t5x_run / "checkpoint_3")
    assert (config.emb_dim, config.num_encoder_layers, config.mlp_activations) == (32, 2, ("relu",))

    rng = np.random.default_rng(0)
    enc = jnp.asarray(rng.integers(3, 300, (2, 11)), jnp.int32)
    dec_tgt = jnp.asarray(rng.integers(3, 300, (2, 7)), jnp.int32)
    dec_in = jnp.concatenate([jnp.zeros((2, 1), jnp.int32), dec_tgt[:, :-1]], axis=1)

    t5x_config = t5x_network.T5Config(
        vocab_size=config.vocab_size, dtype="float32", emb_dim=config.emb_dim,
        num_heads=config.num_heads, num_encoder_layers=config.num_encoder_layers,
        num_decoder_layers=config.num_decoder_layers, head_dim=config.head_dim,
        mlp_dim=config.mlp_dim, mlp_activations=tuple(config.mlp_activations),
        dropout_rate=0.0, logits_via_embedding=config.logits_via_embedding,
    )
    want = t5x_network.Transformer(t5x_config).apply(
        {"params": params}, enc, dec_in, dec_tgt, enable_dropout=False)
    got = network.Transformer(config).apply({"params": params}, enc, dec_in)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-4)
