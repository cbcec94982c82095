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
            # TRAIN_STEPS counts the pre-training steps too (measured at start:
            # explistops_jax.study.t5x_train_steps from the checkpoint's step)
            assert m["TRAIN_STEPS"] == "@study.t5x_train_steps()"
            start = re.search(r"^\s+start_step = (\d+)$", path.read_text(), re.M)
            assert start and int(start.group(1)) == int(step)
            assert m["TASK_FEATURE_LENGTHS"] == "@study.t5x_lengths()"


@pytest.mark.parametrize("stem", sorted({p.stem.rsplit("_", 1)[0] for p in experiment_files()}))
def test_experiments_come_in_consistent_triples(stem):
    files = {kind: T5X_DIR / f"{stem}_{kind}.gin" for kind in KINDS}
    for kind, path in files.items():
        assert path.is_file(), f"{stem}: {path.name} is missing"
    model = {k: [i for i in includes(p) if ("/model/" in i or i.startswith("t5x/examples"))
                 and not i.endswith("/adamw.gin")] for k, p in files.items()}  # the optimizer trains only
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


def test_every_experiment_parses_with_t5x(seqio_tasks, sp_model, monkeypatch):
    """Parse each experiment with T5X's modules, its entry point bound as `__main__`
    as the launcher does, and resolve the task and the model macros."""
    _t5x_or_skip()
    import gin
    import seqio

    monkeypatch.setenv("EXPLISTOPS_SPM_PATH", sp_model)
    seqio_tasks.register_sentencepiece_tasks(sp_model)
    monkeypatch.chdir(REPO)
    failures = []
    for path in experiment_files():
        monkeypatch.setitem(sys.modules, "__main__", importlib.import_module(MAIN_MODULES[kind_of(path)]))
        gin.clear_config(clear_constants=False)
        try:
            gin.parse_config_files_and_bindings([str(path.relative_to(REPO))], [], finalize_config=False)
            seqio.get_mixture_or_task(gin.query_parameter("%MIXTURE_OR_TASK_NAME"))
            assert gin.query_parameter("%MODEL") is not None
            if kind_of(path) == "finetune":
                assert gin.query_parameter("%USE_CACHED_TASKS") is False
        except Exception as e:  # collect all, report together
            failures.append(f"{path.name}: {type(e).__name__}: {e}")
        finally:
            gin.clear_config(clear_constants=False)
    assert not failures, "\n".join(failures)


def test_adamw_layer_parses_after_an_experiment(seqio_tasks, sp_model, monkeypatch):
    """model/adamw.gin (the authors' optimizer) goes after an experiment file."""
    _t5x_or_skip()
    import gin

    monkeypatch.setitem(sys.modules, "__main__", importlib.import_module("t5x.train"))
    monkeypatch.setenv("EXPLISTOPS_SPM_PATH", sp_model)
    monkeypatch.chdir(REPO)
    gin.clear_config(clear_constants=False)
    try:
        gin.parse_config_files_and_bindings(
            ["gin_configs/t5x/t5_1_0_small_medium_finetune.gin", "gin_configs/t5x/model/adamw.gin"],
            [], finalize_config=False)
        assert gin.query_parameter("optax.adamw.learning_rate") == 3e-4
    finally:
        gin.clear_config(clear_constants=False)


# A small dataset for the T5X runs: 32 examples a split instead of 98,000/2,000,
# so that T5X's evaluator and infer (which read whole splits) take seconds. The
# experiment files run unchanged otherwise: a wrapper gin file includes them and
# only renames the task and shrinks steps, batch and lengths.
_SMALL_TASKS = """
from explistops_jax import data, vocab
from explistops_jax.listops import SamplerConfig
import seqio_tasks

_sampler = SamplerConfig(min_length=10, max_length=20, max_depth=3, max_args=4)
data.register_config(data.DatasetConfig(
    "t5x_test_small", 30,
    {split: data.SplitConfig(_sampler, 32, seed) for seed, split in enumerate(("train", "validation", "test"))}))
seqio_tasks.register_dataset_tasks("t5x_test_small", styles=["medium"],
                                   sentencepiece_path=vocab.sentencepiece_model_path())
"""
_SMALL_TASK = "t5x_test_small_medium"
_SHRINK = {
    "finetune": """
TRAIN_STEPS = 3
BATCH_SIZE = 4
TASK_FEATURE_LENGTHS = {'inputs': 32, 'targets': 96}
EVAL_PERIOD = 3
EVAL_STEPS = 1
EVALUATOR_NUM_EXAMPLES = 4
utils.SaveCheckpointConfig.period = 3
""",
    "eval": "utils.DatasetConfig.batch_size = 8\n",
    "infer": "utils.DatasetConfig.batch_size = 8\nTASK_FEATURE_LENGTHS = {'inputs': 32, 'targets': 16}\n",
}


def _wrapper(tmp: Path, kind: str) -> Path:
    """A gin file that includes the tiny experiment of `kind`, on the small task."""
    path = tmp / f"small_{kind}.gin"
    path.write_text(
        "from __gin__ import dynamic_registration\n"
        "import small_tasks\nfrom t5x import utils\n"
        f"include 'gin_configs/t5x/{TINY}_{kind}.gin'\n"
        f"MIXTURE_OR_TASK_NAME = '{_SMALL_TASK}'\n" + _SHRINK[kind])
    return path


def _run(module: str, gin_file: Path, bindings: dict[str, str], log: Path,
         env: dict[str, str] | None = None) -> str:
    """Run one T5X entry point in a subprocess, as a user would; returns its log."""
    cmd = [sys.executable, "-m", module, f"--gin_file={gin_file}"]
    cmd += [f"--gin.{k}={v}" for k, v in bindings.items()]
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3", **(env or {}),
               PYTHONPATH=os.pathsep.join([str(gin_file.parent), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    output = proc.stdout + proc.stderr
    log.write_text(output)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed; tail of the log:\n{output[-4000:]}"
    return output


@pytest.fixture(scope="module")
def tiny_t5x_run(tmp_path_factory):
    """Train the tiny experiment for 3 steps with `python -m t5x.train`; the model dir."""
    _t5x_or_skip()
    tmp = tmp_path_factory.mktemp("t5x_tiny")
    (tmp / "small_tasks.py").write_text(_SMALL_TASKS)
    model_dir = tmp / "model"
    log = _run("t5x.train", _wrapper(tmp, "finetune"), {"MODEL_DIR": f'"{model_dir}"'}, tmp / "train.log")
    losses = [float(x) for x in re.findall(r"collection=train accuracy=.*?, cross_ent_loss=([^,]+),", log)]
    assert losses, "no training loss in the log"
    assert all(0 < x < float("inf") for x in losses), losses
    return model_dir


@pytest.mark.slow
def test_tiny_t5x_train_writes_orbax_checkpoint(tiny_t5x_run):
    step = tiny_t5x_run / "checkpoint_3"
    assert (step / "state" / "_METADATA").is_file(), sorted(p.name for p in tiny_t5x_run.iterdir())
    assert (tiny_t5x_run / "config.gin").is_file()


@pytest.mark.slow
def test_tiny_t5x_eval_and_infer(tiny_t5x_run):
    tmp = tiny_t5x_run.parent
    ckpt = f'"{tiny_t5x_run / "checkpoint_3"}"'
    eval_dir = tmp / "eval"
    _run("t5x.eval", _wrapper(tmp, "eval"), {"CHECKPOINT_PATH": ckpt, "EVAL_OUTPUT_DIR": f'"{eval_dir}"'},
         tmp / "eval.log")
    metrics = [json.loads(line) for f in eval_dir.rglob("*-metrics.jsonl") for line in f.read_text().splitlines()]
    assert metrics, sorted(str(p.relative_to(eval_dir)) for p in eval_dir.rglob("*"))
    assert any("accuracy" in key for m in metrics for key in m), metrics  # the tasks' own metrics

    infer_dir = tmp / "infer"
    _run("t5x.infer", _wrapper(tmp, "infer"), {"CHECKPOINT_PATH": ckpt, "INFER_OUTPUT_DIR": f'"{infer_dir}"'},
         tmp / "infer.log")
    outputs = [p for p in infer_dir.glob("*-predict.jsonl-*") if not p.name.endswith(".COMPLETED")]
    assert outputs, sorted(p.name for p in infer_dir.iterdir())
    rows = [json.loads(line) for line in outputs[0].read_text().splitlines()]
    assert len(rows) == 32 and all("prediction" in r and "inputs" in r for r in rows)


@pytest.mark.slow
def test_tiny_t5x_train_with_sentencepiece_vocab(tmp_path, sp_model):
    """model/sentencepiece_vocab.gin builds the vocabulary the _sp tasks use
    (T5X refuses to train when the two differ)."""
    _t5x_or_skip()
    (tmp_path / "small_tasks.py").write_text(_SMALL_TASKS)
    gin_file = tmp_path / "small_sp_finetune.gin"
    gin_file.write_text(
        "from __gin__ import dynamic_registration\n"
        "import small_tasks\nfrom t5x import utils\n"
        "include 'gin_configs/t5x/model/t5_1_0_tiny.gin'\n"
        "include 'gin_configs/t5x/model/sentencepiece_vocab.gin'\n"
        "include 'gin_configs/t5x/run/finetune.gin'\n"
        f"MIXTURE_OR_TASK_NAME = '{_SMALL_TASK}_sp'\n"
        "INITIAL_CHECKPOINT_PATH = None\n" + _SHRINK["finetune"])
    model_dir = tmp_path / "model"
    _run("t5x.train", gin_file, {"MODEL_DIR": f'"{model_dir}"'}, tmp_path / "train.log",
         env={"EXPLISTOPS_SPM_PATH": sp_model})
    assert (model_dir / "checkpoint_3" / "state" / "_METADATA").is_file()


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
