"""``python -m explistops_jax.train``: fine-tune from gin files, T5X style.

    python -m explistops_jax.train \\
        --gin_file=gin_configs/experiments/t5_1_0_small_medium.gin \\
        --gin.MODEL_DIR=\\"runs/small_medium\\" [--gin.TRAIN_STEPS=1000] \\
        [--gin_bindings='BATCH_SIZE = 16'] [--gin_search_paths=DIR,...] \\
        [--coordinator_address=HOST:PORT --num_processes=N --process_id=I]

Gin files come in three layers (model / run / experiment) as in T5X; an
experiment file ``include``s a model file and ``runs/finetune.gin`` and sets the
run macros, which have T5X's names and meanings:

    MIXTURE_OR_TASK_NAME   one of the project's tasks or mixtures, or a SeqIO task
                           registered by a module the gin file imports
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
``gin_configs`` package. A thin shim: :mod:`explistops_jax.runtime` prepares the
process and is the error boundary, :mod:`explistops_jax.gin_config` turns flags
and gin bindings into arguments, and :func:`explistops_jax.trainer.train` trains.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from explistops_jax import runtime

__all__ = ["add_arguments", "run", "main"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The gin flags and the multi-host flags."""
    from explistops_jax import gin_config

    gin_config.add_arguments(parser)
    runtime.add_task_file_arguments(parser)
    runtime.add_distributed_arguments(parser)
    runtime.add_truncation_argument(parser, "train")
    runtime.add_absl_arguments(parser)
    parser.add_argument("--profile_steps", metavar="A:B",
                        help="write a jax.profiler trace of steps A to B (counted from 1) "
                             "into MODEL_DIR/tensorboard/train (gin train.profile_steps)")
    parser.add_argument("--peak_flops", type=float, metavar="FLOPS",
                        help="peak FLOP/s of one device, for the MFU of the step log "
                             "(default: the table for known GPUs and TPUs; gin "
                             "train.peak_flops)")


def run(args: argparse.Namespace, extra_bindings: Sequence[str] = ()) -> int:
    """Sets up the process, parses the gin configuration and trains; the exit
    status (1 when the loss stopped being finite)."""
    started = runtime.start(args)
    from explistops_jax import gin_config, trainer

    gin_config.parse(args.gin_file, list(args.gin_bindings) + list(extra_bindings)
                     + runtime.truncation_bindings(args, "train") + _step_log_bindings(args),
                     args.gin_search_paths)
    arguments = gin_config.train_arguments()
    data, evaluation = arguments.get("data"), arguments.get("evaluation")
    # SeqIO's registry only when a task is read through it
    task_files = started.register(
        [getattr(evaluation, "mixture_or_task_name", None)],
        training_tasks=[getattr(data, "mixture_or_task_name", None)],
        data_backend=getattr(data, "data_backend", "grain"),
        use_cached=bool(getattr(data, "use_cached", False)))
    if task_files:  # recorded in run.json, so an evaluation of the run finds them
        arguments["run_info"] = {**(arguments.get("run_info") or {}), "task_files": task_files}
    with started.output(arguments["model_dir"], "run directory (MODEL_DIR)"):
        gin_config.write_config(arguments["model_dir"])
        try:
            result = trainer.train(**arguments)
        except trainer.NonFiniteLossError as e:
            print(f"explistops: training stopped: {e}", file=sys.stderr)
            return 1
    print(f"trained {result.model_dir} to step {result.step}: " + ", ".join(
        f"{k}={v:.4g}" for k, v in result.metrics.items()
        if k in ("loss", "accuracy", "tokens_per_s")))
    return 0


def _step_log_bindings(args: argparse.Namespace) -> list[str]:
    """``--profile_steps`` and ``--peak_flops`` as gin bindings of ``train``."""
    out = []
    if getattr(args, "profile_steps", None) is not None:
        out.append(f"train.profile_steps = {args.profile_steps!r}")
    if getattr(args, "peak_flops", None) is not None:
        out.append(f"train.peak_flops = {args.peak_flops!r}")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m explistops_jax.train``; the exit status."""
    from explistops_jax import gin_config

    return gin_config.main(argv, "python -m explistops_jax.train",
                           __doc__.split("\n\n")[0], add_arguments, run)


if __name__ == "__main__":
    sys.exit(main())
