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
(see :mod:`explistops_jax.evaluator`). A thin wrapper of
:func:`explistops_jax.evaluator.evaluate`.
"""

from __future__ import annotations

if __name__ == "__main__":
    # `python -m explistops_jax.eval` runs this file as __main__; hand over to the
    # module under its own name, which is what gin files `import` (otherwise its
    # configurables would be registered twice).
    import sys

    from explistops_jax.eval import main

    sys.exit(main())

import argparse
import json
from typing import Any, Mapping, Sequence

import gin

from explistops_jax import evaluator, partitioning
from explistops_jax import train as train_cli  # gin registrations, flag helpers
from explistops_jax.errors import UserError

__all__ = ["evaluate_from_gin", "main"]


@gin.configurable("evaluate", module="explistops")
def evaluate_from_gin(
    *,
    checkpoint_path: str = gin.REQUIRED,
    mixture_or_task_name: str | None = None,
    split: str = "test",
    step: int | None = None,
    task_feature_lengths: Mapping[str, int] | None = None,
    batch_size: int = 32,
    max_examples: int | None = None,
    output_dir: str | None = None,
    partition: partitioning.PartitionConfig = partitioning.PartitionConfig(),
    decode: Mapping[str, Any] | None = None,
    use_cached_tasks: bool = False,
) -> dict:
    """The gin face of :func:`evaluator.evaluate` (``evaluate.*`` bindings)."""
    return evaluator.evaluate(
        checkpoint_path, mixture_or_task_name, split, step=step,
        task_feature_lengths=task_feature_lengths, batch_size=batch_size,
        max_examples=max_examples, output_dir=output_dir, partition=partition,
        decode=decode, use_cached=use_cached_tasks)


def print_results(results: Mapping) -> None:
    """One line per task/split: the scalar metrics."""
    for (task, split), metrics in results.items():
        scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
        print(f"{task}/{split}: {json.dumps(scalars)}")


def run(args: argparse.Namespace, extra_bindings: Sequence[str] = ()) -> int:
    train_cli.initialize(args)
    if not args.gin_file:
        raise UserError("no gin file given", expected="--gin_file=gin_configs/runs/eval.gin")
    train_cli.parse_gin(args.gin_file, list(args.gin_bindings) + list(extra_bindings),
                        args.gin_search_paths)
    print_results(evaluate_from_gin())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return train_cli.gin_main(argv, "python -m explistops_jax.eval",
                              __doc__.split("\n\n")[0], run)
