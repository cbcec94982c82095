"""``python -m explistops_jax.train``: fine-tune from gin files, T5X style.

    python -m explistops_jax.train \\
        --gin_file=gin_configs/experiments/t5_1_0_small_medium.gin \\
        --gin.MODEL_DIR=\\"runs/small_medium\\" [--gin.TRAIN_STEPS=1000] \\
        [--gin_bindings='BATCH_SIZE = 16'] [--gin_search_paths=DIR,...] \\
        [--coordinator_address=HOST:PORT --num_processes=N --process_id=I]

Gin files come in three layers (model / run / experiment) as in T5X; an
experiment file ``include``s a model file and ``runs/finetune.gin`` and sets the
run macros, which have T5X's names and meanings:

    MIXTURE_OR_TASK_NAME   registered SeqIO task or mixture (``import seqio_tasks``)
    TASK_FEATURE_LENGTHS   {"inputs": n, "targets": m}
    TRAIN_STEPS            optimizer steps of this run (None: use EPOCHS)
    EPOCHS                 passes over the training split (None: use TRAIN_STEPS)
    BATCH_SIZE             global batch, in rows
    DROPOUT_RATE           the network's dropout
    MODEL_DIR              the run directory (resumes if it has a checkpoint)
    INITIAL_CHECKPOINT_PATH  Hugging Face / T5X / explistops checkpoint, or None
    EVAL_PERIOD            decode + score the validation split every N steps
                           (and at the end; None: only at the end)
    USE_CACHED_TASKS       must be False for the (uncached) explistops tasks

Unlike T5X, TRAIN_STEPS counts the steps of this run, not including the 1,000,000
pre-training steps of a public checkpoint. Relative ``--gin_file`` and
``include`` paths are looked up in the current directory, the
``--gin_search_paths`` and the directory that holds the installed
``gin_configs`` package. Everything here only turns flags and gin bindings into
arguments of :func:`explistops_jax.trainer.train`.
"""

from __future__ import annotations

if __name__ == "__main__":
    # `python -m explistops_jax.train` runs this file as __main__; hand over to the
    # module under its own name, which is what gin files `import` (otherwise its
    # configurables would be registered twice).
    import sys

    from explistops_jax.train import main

    sys.exit(main())

import argparse
import sys
from pathlib import Path
from typing import Callable, Mapping, Sequence

import gin

from explistops_jax import input_pipeline, optimizers, partitioning, trainer
from explistops_jax.errors import UserError
from explistops_jax.train_state import CheckpointConfig

__all__ = ["train_from_gin", "parse_gin", "add_gin_arguments", "main"]

# Gin names: optimizers.adafactor(), optimizers.Schedule(), trainer.ModelSpec(), ...
for _fn in (optimizers.adafactor, optimizers.adamw):
    gin.external_configurable(_fn, module="optimizers")
gin.external_configurable(optimizers.Schedule, module="optimizers")
gin.external_configurable(trainer.ModelSpec, module="trainer")
gin.external_configurable(trainer.EvalConfig, module="trainer")
gin.external_configurable(CheckpointConfig, module="trainer")
gin.external_configurable(partitioning.PartitionConfig, module="partitioning")


@gin.configurable("train", module="explistops")
def train_from_gin(
    *,
    model: trainer.ModelSpec = gin.REQUIRED,
    mixture_or_task_name: str = gin.REQUIRED,
    task_feature_lengths: Mapping[str, int] = gin.REQUIRED,
    model_dir: str = gin.REQUIRED,
    train_steps: int | None = None,
    epochs: int | None = None,
    batch_size: int = 8,
    initial_checkpoint_path: str | None = None,
    eval_period: int | None = None,
    evaluation: trainer.EvalConfig | None = None,
    use_cached_tasks: bool = False,
    pack: bool = False,
    shuffle: bool = True,
    shuffle_buffer_size: int | None = None,
    data_seed: int = 0,
    seed: int = 0,
    optimizer: optimizers.Optimizer | None = None,
    checkpoint: CheckpointConfig = CheckpointConfig(),
    partition: partitioning.PartitionConfig = partitioning.PartitionConfig(),
    num_microbatches: int = 1,
    progress: bool = True,
) -> trainer.TrainResult:
    """The gin face of :func:`trainer.train` (``train.*`` bindings).

    ``eval_period`` (``EVAL_PERIOD``) is the period of ``evaluation`` (an
    ``EvalConfig``, default one if None); ``eval_period=None`` evaluates only at
    the end; ``evaluation=None`` and ``eval_period=None`` not at all.
    """
    data = input_pipeline.DataConfig(
        mixture_or_task_name=mixture_or_task_name,
        task_feature_lengths=dict(task_feature_lengths), batch_size=batch_size,
        shuffle=shuffle, seed=data_seed, pack=pack, use_cached=use_cached_tasks,
        shuffle_buffer_size=shuffle_buffer_size, num_epochs=epochs)
    if evaluation is not None or eval_period is not None:
        evaluation = _with_period(evaluation or trainer.EvalConfig(), eval_period)
    Path(model_dir).mkdir(parents=True, exist_ok=True)
    (Path(model_dir) / "config.gin").write_text(gin.config_str())
    return trainer.train(
        model, data, model_dir, optimizer=optimizer, train_steps=train_steps,
        initial_checkpoint_path=initial_checkpoint_path or None, checkpoint=checkpoint,
        partition=partition, evaluation=evaluation, num_microbatches=num_microbatches,
        seed=seed, progress=progress)


def _with_period(config: trainer.EvalConfig, period: int | None) -> trainer.EvalConfig:
    import dataclasses

    return dataclasses.replace(config, period=period)


# ----------------------------------------------------------------- flags and gin


def add_gin_arguments(parser: argparse.ArgumentParser) -> None:
    """T5X's gin flags plus the multi-host flags."""
    parser.add_argument("--gin_file", action="append", default=[], metavar="FILE",
                        help="gin file (repeatable; later files override earlier)")
    parser.add_argument("--gin_bindings", action="append", default=[], metavar="BINDING",
                        help="gin binding, e.g. 'TRAIN_STEPS = 100' (repeatable); "
                             "python -m explistops_jax.train/.eval also take "
                             "--gin.NAME=VALUE for --gin_bindings='NAME = VALUE'")
    parser.add_argument("--gin_search_paths", action="append", default=[], metavar="DIRS",
                        help="comma-separated directories where gin files and their "
                             "includes are looked up (besides . and the installed "
                             "gin_configs' parent)")
    group = parser.add_argument_group(
        "multi-host", "for jobs over several hosts (jax.distributed.initialize); "
        "every process runs the same command with its own --process_id")
    group.add_argument("--coordinator_address", metavar="HOST:PORT",
                       help="address of process 0")
    group.add_argument("--num_processes", type=int, help="number of processes")
    group.add_argument("--process_id", type=int, help="this process's index, 0-based")


def split_gin_dot_flags(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """``--gin.NAME=VALUE`` flags -> bindings ``NAME = VALUE``; other args kept."""
    rest, bindings = [], []
    for arg in argv:
        if arg.startswith("--gin.") and "=" in arg:
            name, value = arg[len("--gin."):].split("=", 1)
            bindings.append(f"{name} = {value}")
        else:
            rest.append(arg)
    return rest, bindings


def default_search_paths() -> list[str]:
    import gin_configs

    return [str(Path.cwd()), str(Path(gin_configs.__file__).resolve().parent.parent)]


def parse_gin(files: Sequence[str], bindings: Sequence[str],
              search_paths: Sequence[str] = ()) -> None:
    """Parses gin files and bindings (after clearing earlier configuration)."""
    gin.clear_config()
    paths = [p for entry in search_paths for p in entry.split(",") if p]
    for path in paths + default_search_paths():
        gin.add_config_file_search_path(path)
    resolved = [_find(f, paths) for f in files]
    try:
        gin.parse_config_files_and_bindings(resolved, list(bindings),
                                            finalize_config=False)
    except (ValueError, KeyError, TypeError, ImportError, SyntaxError) as e:
        raise UserError(f"gin configuration: {e}") from None


def _find(file: str, search_paths: Sequence[str]) -> str:
    candidates = [Path(file)] + [Path(d) / file for d in
                                 list(search_paths) + default_search_paths()]
    for candidate in candidates:
        if candidate.is_file():
            return str(candidate)
    raise UserError("gin file not found", where=file,
                    expected="a path relative to . or to --gin_search_paths")


def initialize(args: argparse.Namespace) -> None:
    """Multi-host start-up (a no-op for one process)."""
    partitioning.initialize_distributed(args.coordinator_address, args.num_processes,
                                        args.process_id)


def run(args: argparse.Namespace, extra_bindings: Sequence[str] = ()) -> int:
    """Parses the gin configuration and trains; the exit status."""
    initialize(args)
    if not args.gin_file:
        raise UserError("no gin file given", expected="--gin_file=...")
    parse_gin(args.gin_file, list(args.gin_bindings) + list(extra_bindings),
              args.gin_search_paths)
    try:
        result = train_from_gin()
    except trainer.NonFiniteLossError as e:
        print(f"explistops: training stopped: {e}", file=sys.stderr)
        return 1
    print(f"trained {result.model_dir} to step {result.step}: " + ", ".join(
        f"{k}={v:.4g}" for k, v in result.metrics.items()
        if k in ("loss", "accuracy", "tokens_per_s")))
    return 0


def gin_main(argv: Sequence[str] | None, prog: str, description: str,
             run_fn: Callable[[argparse.Namespace, Sequence[str]], int]) -> int:
    """A T5X-style entry point: ``--gin_file``, ``--gin.X=...`` and friends, then
    ``run_fn(args, dot_bindings)``; a UserError prints one line and exits 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    argv, dot_bindings = split_gin_dot_flags(argv)
    parser = argparse.ArgumentParser(prog=prog, description=description)
    add_gin_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run_fn(args, dot_bindings)
    except UserError as e:
        print(f"explistops: error: {e}", file=sys.stderr)
        return 2


def main(argv: Sequence[str] | None = None) -> int:
    return gin_main(argv, "python -m explistops_jax.train", __doc__.split("\n\n")[0], run)
