"""``explistops predict``: the model's explanation and answer for one expression.

    explistops predict "[MAX 2 9 [MIN 4 7 ] 0 ]" --checkpoint runs/small_medium [--style medium]

Prints the explanation the model writes, its parsed final answer and the true
answer. The expression goes through the run's task preprocessing; --style picks
the style of a run on several styles (or the task for a foreign checkpoint).
Greedy decoding unless the decoding flags, Hugging Face ``generate``'s names
(``--num_beams``, ``--do_sample``, ``--temperature``, ``--top_k``, ``--top_p``,
``--max_new_tokens``), ask otherwise.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from explistops_jax import explain

    parser.add_argument("expression", metavar="EXPR",
                        help="a ListOps expression, bracket or parenthesized notation")
    parser.add_argument("--checkpoint", required=True, metavar="DIR",
                        help="run dir, checkpoint_N dir, or HF/T5X/explistops checkpoint")
    parser.add_argument("--style", choices=explain.STYLES,
                        help="explanation style (runs on several styles; foreign checkpoints)")
    parser.add_argument("--task", metavar="NAME", help="task (default: the run's)")
    parser.add_argument("--modulus", type=int, default=None,
                        help="SM modulus (default: the task's dataset's, e.g. 10 for "
                             "explistops10_cpu, 30 for explistops30)")
    parser.add_argument("--step", type=int, help="checkpoint step (default latest)")
    from explistops_jax.commands.eval import add_decode_arguments

    add_decode_arguments(parser)  # --num_beams, --do_sample, --temperature, --top_k, --top_p, ...
    parser.add_argument("--data_backend", choices=("grain", "seqio"), default="grain",
                        help="input pipeline: grain (default; the project's own tasks without "
                             "TensorFlow, others fall back to seqio) or seqio")
    from explistops_jax import runtime

    runtime.add_task_file_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from explistops_jax import listops, runtime

    listops.parse(args.expression)  # a malformed expression fails before the model loads
    if args.modulus is not None and args.modulus < 1:
        from explistops_jax.errors import UserError

        raise UserError(f"--modulus {args.modulus}", expected="a positive integer")
    started = runtime.start(args)
    from explistops_jax.commands.eval import decode_options

    decode = decode_options(args)  # checked before the model loads
    started.register([args.task or runtime.run_task(args.checkpoint)],
                     data_backend=args.data_backend, checkpoint=args.checkpoint)
    from explistops_jax import predict

    [result] = predict.predict_expressions(
        args.checkpoint, [args.expression], mixture_or_task_name=args.task,
        style=args.style, modulus=args.modulus, step=args.step,
        decode=decode, data_backend=args.data_backend)
    print(result["prediction"])
    answer = result.get("answer")
    verdict = "correct" if result.get("correct") else "wrong"
    print(f"answer: {'(none)' if answer is None else answer} "
          f"(true answer {result.get('true_answer')}: {verdict})")
    return 0
