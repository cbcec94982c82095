"""``python -m explistops_jax.eval``: decode a split with a checkpoint and score it.

    python -m explistops_jax.eval --gin_file=gin_configs/runs/eval.gin \\
        --gin.CHECKPOINT_PATH=\\"runs/small_medium\\" --gin.EVAL_SPLIT=\\"test\\"

Macros of ``gin_configs/runs/eval.gin`` (``runs/infer.gin`` is the same for
predictions):

    CHECKPOINT_PATH        run dir (latest checkpoint), checkpoint_N dir, or a
                           Hugging Face / T5X / explistops checkpoint
    MIXTURE_OR_TASK_NAME   None: the task the run trained on
    TASK_FEATURE_LENGTHS   None: the run's training lengths
    EVAL_SPLIT             validation | test | len100_200 | ...
    BATCH_SIZE             rows per decoding batch
    EVAL_OUTPUT_DIR        None: the run directory

Writes ``<output>/eval/<task>/<split>/{predictions,metrics}_<step>.*``
(see :mod:`explistops_jax.evaluator`). A thin shim: :mod:`explistops_jax.runtime`
prepares the process and is the error boundary, :mod:`explistops_jax.gin_config`
turns flags and gin bindings into arguments of
:func:`explistops_jax.evaluator.evaluate`.
"""

from __future__ import annotations

import argparse
import json
from typing import Mapping, Sequence

from explistops_jax import runtime

__all__ = ["add_arguments", "print_results", "run", "main"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The gin flags and the multi-host flags."""
    from explistops_jax import gin_config

    gin_config.add_arguments(parser)
    runtime.add_task_file_arguments(parser)
    runtime.add_distributed_arguments(parser)
    runtime.add_truncation_argument(parser, "evaluate")
    runtime.add_absl_arguments(parser)


def print_results(results: Mapping) -> None:
    """One line per task/split: the scalar metrics."""
    for (task, split), metrics in results.items():
        scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
        print(f"{task}/{split}: {json.dumps(scalars)}")


def run(args: argparse.Namespace, extra_bindings: Sequence[str] = ()) -> int:
    """Sets up the process, parses the gin configuration, evaluates; the exit status."""
    started = runtime.start(args)
    from explistops_jax import evaluator, gin_config

    gin_config.parse(args.gin_file, list(args.gin_bindings) + list(extra_bindings)
                     + runtime.truncation_bindings(args, "evaluate"), args.gin_search_paths,
                     expected_file="--gin_file=gin_configs/runs/eval.gin")
    arguments = gin_config.evaluate_arguments()
    task = arguments.get("mixture_or_task_name") or runtime.run_task(arguments["checkpoint"])
    started.register([task], data_backend=arguments.get("data_backend", "grain"),
                     use_cached=bool(arguments.get("use_cached")),
                     checkpoint=arguments["checkpoint"])
    with started.output(arguments.get("output_dir"), "evaluation output directory"):
        print_results(evaluator.evaluate(**arguments))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m explistops_jax.eval``; the exit status."""
    from explistops_jax import gin_config

    return gin_config.main(argv, "python -m explistops_jax.eval",
                           __doc__.split("\n\n")[0], add_arguments, run)


if __name__ == "__main__":
    import sys

    sys.exit(main())
