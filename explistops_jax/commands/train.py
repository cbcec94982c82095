"""``explistops train``: fine-tune a T5 model from gin files (the own trainer).

    explistops train --gin_file gin_configs/experiments/explistops30_medium_t5_1_0_small.gin \
        --model_dir runs/small_medium [--train_steps 1000] [--gin_bindings 'BATCH_SIZE = 16']

The same as ``python -m explistops_jax.train`` (whose ``--gin.NAME=VALUE`` flags
are ``--gin_bindings 'NAME = VALUE'`` here); ``--model_dir``, ``--train_steps``,
``--epochs``, ``--batch_size`` and ``--task`` are shortcuts for the macros
MODEL_DIR, TRAIN_STEPS, EPOCHS, BATCH_SIZE and MIXTURE_OR_TASK_NAME. A model
directory that holds a checkpoint resumes from it.
"""

from __future__ import annotations

import argparse

# flag -> gin macro
SHORTCUTS = {"model_dir": "MODEL_DIR", "train_steps": "TRAIN_STEPS", "epochs": "EPOCHS",
             "batch_size": "BATCH_SIZE", "task": "MIXTURE_OR_TASK_NAME"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from explistops_jax import train

    train.add_arguments(parser)
    parser.add_argument("--model_dir", metavar="DIR", help="the run directory (MODEL_DIR)")
    parser.add_argument("--train_steps", type=int, metavar="N", help="TRAIN_STEPS")
    parser.add_argument("--epochs", type=int, metavar="N", help="EPOCHS")
    parser.add_argument("--batch_size", type=int, metavar="N", help="BATCH_SIZE")
    parser.add_argument("--task", metavar="NAME", help="MIXTURE_OR_TASK_NAME")
    parser.add_argument("--data_backend", choices=("grain", "seqio"),
                        help="input pipeline (input_pipeline.DataConfig.data_backend): grain "
                             "(the default; the project's own tasks without TensorFlow) or seqio")


def shortcut_bindings(args: argparse.Namespace) -> list[str]:
    """Gin bindings for the shortcut flags that were given."""
    bindings = []
    for flag, macro in SHORTCUTS.items():
        value = getattr(args, flag, None)
        if value is not None:
            bindings.append(f"{macro} = {value!r}")
    if getattr(args, "data_backend", None):
        bindings.append(f"input_pipeline.DataConfig.data_backend = {args.data_backend!r}")
    return bindings


def run(args: argparse.Namespace) -> int:
    from explistops_jax import train

    # --gin.NAME=VALUE first, the shortcut flags over them
    return train.run(args, list(getattr(args, "dot_bindings", None) or [])
                     + shortcut_bindings(args))
