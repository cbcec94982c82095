"""Every gin file of the own trainer parses, names real things, and trains.

Parses every file under gin_configs/ except t5x/ (T5X's files have their own
test). A representative subset (a study condition, and the other model family with
the run file's defaults), shrunk to a tiny model, short sequences and a batch of
2 by gin bindings, runs one training step; the others would only repeat the same
code with other names (tasks, presets, lengths), which the parse checks resolve.
"""

import math
from pathlib import Path

import gin
import pytest
import seqio

import seqio_tasks  # noqa: F401  (the experiments' `import seqio_tasks`)
from explistops_jax import gin_config, gin_writer, network, study, trainer
from explistops_jax.checkpoints import common

ROOT = Path(__file__).resolve().parent.parent
GIN = ROOT / "gin_configs"
EXPERIMENTS = sorted(p.name for p in (GIN / "experiments").glob("*.gin"))
MODELS = sorted(p.name for p in (GIN / "models").glob("*.gin"))
RUNS = {f"{gin_writer.experiment_stem(r)}.gin": r for r in study.paper_runs()}
# Published parameter counts (with the 32,128-row vocabulary).
PARAMS = {"t5_1_0_small": 60.5e6, "t5_1_0_base": 222.9e6, "t5_1_0_large": 737.7e6,
          "t5_1_0_3B": 2.85e9, "t5_1_1_small": 76.9e6, "t5_1_1_base": 247.6e6,
          "t5_1_1_large": 783.2e6, "t5_1_1_xl": 2.85e9}


@pytest.fixture(autouse=True)
def clean_gin():
    gin.clear_config()
    yield
    gin.clear_config()


def _parse(files, *bindings):
    gin_config.parse([str(GIN / f) for f in files], list(bindings), [str(ROOT)])


def _model_spec() -> trainer.ModelSpec:
    return gin.get_configurable("trainer.ModelSpec")()


def test_every_file_is_covered():
    found = {p.relative_to(GIN).as_posix() for p in GIN.rglob("*.gin")}
    covered = {f"experiments/{n}" for n in EXPERIMENTS} | {f"models/{n}" for n in MODELS} | {
        "runs/finetune.gin", "runs/eval.gin", "runs/infer.gin"}
    assert {f for f in found if not f.startswith("t5x/")} == covered
    assert len(MODELS) == 10 and len(EXPERIMENTS) >= 16 + 1 + 3
    for folder in ("", "models", "runs", "experiments", "t5x"):
        assert (GIN / folder / "__init__.py").is_file()


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_parses_and_names_real_things(name):
    _parse([f"experiments/{name}"], "MODEL_DIR = '/tmp/unused'")
    task = gin.query_parameter("%MIXTURE_OR_TASK_NAME")
    assert task in seqio.TaskRegistry.names()
    spec = _model_spec()
    assert spec.preset in network.PRESETS and spec.dropout_rate == 0.1
    lengths = gin.query_parameter("%TASK_FEATURE_LENGTHS")
    assert set(lengths) == {"inputs", "targets"}
    # the study's definition (explistops_jax.study), which the file is written from
    run = RUNS[name]
    assert lengths == run.feature_lengths
    assert gin.query_parameter("%EPOCHS") == 30 == run.epochs
    assert gin.query_parameter("%BATCH_SIZE") == run.batch_size
    assert gin.query_parameter("input_pipeline.DataConfig.pack") is run.pack
    assert gin.query_parameter("%LEARNING_RATE") == 3e-4  # the study's AdamW
    assert gin.query_parameter("%USE_CACHED_TASKS") is False


@pytest.mark.parametrize("name", MODELS)
def test_model_file_names_a_preset_of_the_published_size(name):
    _parse([f"models/{name}", "runs/finetune.gin"], "DROPOUT_RATE = 0.0")
    spec = _model_spec()
    assert spec.preset == name[:-4]
    if spec.preset in PARAMS:
        config = spec.config()  # default vocabulary: 32,128 rows
        count = sum(math.prod(s) for s in common.expected_shapes(config).values())
        assert count == pytest.approx(PARAMS[spec.preset], rel=0.03)


@pytest.mark.parametrize("name", ["eval.gin", "infer.gin"])
def test_eval_and_infer_files_parse(name):
    _parse([f"runs/{name}"], "CHECKPOINT_PATH = '/tmp/run'", "INFER_OUTPUT_DIR = '/tmp/o'")
    assert str(gin.query_parameter("evaluate.split")) == "%EVAL_SPLIT"
    assert gin.query_parameter("%EVAL_SPLIT") == "test"
    output = "%INFER_OUTPUT_DIR" if name == "infer.gin" else "%EVAL_OUTPUT_DIR"
    assert str(gin.query_parameter("evaluate.output_dir")) == output


SHRINK = ("TASK_FEATURE_LENGTHS = {'inputs': 32, 'targets': 16}", "BATCH_SIZE = 2",
          "TRAIN_STEPS = 1", "EPOCHS = None", "EVAL_PERIOD = None",
          "train.evaluation = None", "train.progress = False",
          "input_pipeline.DataConfig.shuffle = False",  # no shuffle buffer to fill: the first batch at once
          # lengths this short cut the study's examples: allowed here, and no
          # packing (its sizes pass would read the whole training split)
          "train.allow_truncation = True", "input_pipeline.DataConfig.pack = False")


@pytest.mark.parametrize("files, tiny", [
    # a study condition (T5 1.0, AdamW, EPOCHS) ...
    (["experiments/length_generalization_t5_1_0_large_medium.gin"], "t5_1_0_tiny"),
    # ... and the other model family with the run file's defaults (Adafactor)
    (["models/t5_1_1_base.gin", "runs/finetune.gin"], "t5_1_1_tiny"),
])
def test_one_training_step(files, tiny, tmp_path):
    extra = ["MIXTURE_OR_TASK_NAME = 'explistops30_medium_n2000'"] if "runs/finetune.gin" in files else []
    _parse(files, f"MODEL_DIR = '{tmp_path}'", f"trainer.ModelSpec.preset = '{tiny}'",
           *SHRINK, *extra)
    result = trainer.train(**gin_config.train_arguments())
    gin_config.write_config(tmp_path)
    assert result.step == 1 and math.isfinite(result.metrics["loss"])
    assert (tmp_path / "checkpoint_1").is_dir() and (tmp_path / "config.gin").is_file()
