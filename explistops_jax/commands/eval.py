"""``explistops eval``: decode a task split with a checkpoint and score it.

    explistops eval runs/small_medium [--split test] [--task NAME] [--step N]
        [--batch_size 32] [--max_examples N] [--output_dir DIR]
        [--num_beams N | --do_sample [--temperature T] [--top_k K] [--top_p P]]
        [--max_new_tokens N]

CHECKPOINT is a run directory (its latest checkpoint, or --step), one of its
``checkpoint_N`` directories, or a Hugging Face / T5X / explistops checkpoint
(then --task, --output_dir and the lengths are needed). Writes
``<output>/eval/<task>/<split>/predictions_<step>.jsonl`` and
``metrics_<step>.json`` and prints the metrics. Greedy decoding unless the
decoding flags (Hugging Face ``generate``'s names) ask for beam search or
sampling. A thin wrapper of
``explistops_jax.evaluator.evaluate``; ``python -m explistops_jax.eval`` is the
gin-configured equivalent.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", metavar="CHECKPOINT", nargs="?",
                        help="run dir, checkpoint_N dir, or HF/T5X/explistops checkpoint "
                             "(or the gin flags below, as python -m explistops_jax.eval)")
    parser.add_argument("--task", metavar="NAME",
                        help="task or mixture (default: the one the run trained on)")
    parser.add_argument("--split", default="test", help="split to decode (default test)")
    parser.add_argument("--step", type=int, help="checkpoint step of a run dir (default latest)")
    parser.add_argument("--inputs_length", type=int, metavar="N",
                        help="input length (default: the run's)")
    parser.add_argument("--targets_length", type=int, metavar="N",
                        help="maximum decode length (default: the run's)")
    parser.add_argument("--batch_size", type=int, default=32, help="decoding batch (default 32)")
    parser.add_argument("--max_examples", type=int, metavar="N",
                        help="decode only the first N examples")
    parser.add_argument("--output_dir", metavar="DIR", help="default: the run directory")
    add_decode_arguments(parser)
    parser.add_argument("--num_partitions", type=int, default=1,
                        help="model-parallel ways (default 1)")
    parser.add_argument("--data_backend", choices=("grain", "seqio"), default="grain",
                        help="input pipeline: grain (default; the project's own tasks without "
                             "TensorFlow, others fall back to seqio) or seqio")
    from explistops_jax import runtime

    runtime.add_task_file_arguments(parser)
    runtime.add_truncation_argument(parser, "evaluate")
    runtime.add_distributed_arguments(parser)  # what python -m explistops_jax.eval takes
    runtime.add_absl_arguments(parser)
    from explistops_jax import gin_config

    gin_config.add_arguments(parser)


# The flags of the CHECKPOINT form, which gin configures in the --gin_file form.
_FLAG_FORM = ("task", "split", "step", "inputs_length", "targets_length", "batch_size",
              "max_examples", "output_dir", "num_partitions", "data_backend", "num_beams",
              "do_sample", "temperature", "top_k", "top_p", "max_new_tokens", "seed")


def add_decode_arguments(parser: argparse.ArgumentParser) -> None:
    """The decoding flags, named as Hugging Face ``generate`` names its options
    (``explistops_jax.decoding.GenerateConfig``); default greedy."""
    group = parser.add_argument_group("decoding (default greedy)")
    group.add_argument("--num_beams", type=int, metavar="N",
                       help="beam search with N beams (default 1: greedy)")
    group.add_argument("--do_sample", action="store_true", default=None,
                       help="sample each token instead of taking the most likely")
    group.add_argument("--temperature", type=float, metavar="T",
                       help="with --do_sample: divide the logits by T > 0 (default 1.0)")
    group.add_argument("--top_k", type=int, metavar="K",
                       help="with --do_sample: only the K most likely tokens (default 0: all)")
    group.add_argument("--top_p", type=float, metavar="P",
                       help="with --do_sample: only the most likely tokens whose "
                            "probability reaches P, in (0, 1] (default 1.0: all)")
    group.add_argument("--max_new_tokens", type=int, metavar="N",
                       help="tokens to generate, EOS included (default: the targets length)")
    group.add_argument("--seed", type=int, metavar="N",
                       help="with --do_sample: the sampling seed (default 0)")


_DECODE_FLAGS = ("num_beams", "do_sample", "temperature", "top_k", "top_p",
                 "max_new_tokens", "seed")


def decode_options(args: argparse.Namespace) -> dict:
    """The decoding flags given, checked (a one-line ``UserError`` naming the
    flag otherwise), as the ``decode`` dict of the library."""
    from explistops_jax import decoding

    options = {k: getattr(args, k) for k in _DECODE_FLAGS if getattr(args, k) is not None}
    decoding.GenerateConfig.from_options(options, where="command line", prefix="--")
    return options


def lengths(args: argparse.Namespace) -> dict | None:
    if args.inputs_length is None and args.targets_length is None:
        return None
    from explistops_jax.errors import UserError

    if args.inputs_length is None or args.targets_length is None:
        raise UserError("give both --inputs_length and --targets_length, or neither")
    for flag, value in (("--inputs_length", args.inputs_length),
                        ("--targets_length", args.targets_length)):
        if value < 2:
            raise UserError(f"{flag} {value}", expected="at least 2 (a token and EOS)")
    return {"inputs": args.inputs_length, "targets": args.targets_length}


def run(args: argparse.Namespace) -> int:
    dot_bindings = list(getattr(args, "dot_bindings", None) or [])
    if args.gin_file or args.gin_bindings or dot_bindings:  # the module entry's way
        from explistops_jax import eval as eval_cli
        from explistops_jax.errors import UserError

        if args.checkpoint is not None:
            raise UserError("give CHECKPOINT or gin files, not both",
                            expected="explistops eval CHECKPOINT [flags], or explistops eval "
                                     "--gin_file=F [--gin.NAME=VALUE] (CHECKPOINT_PATH in gin)")
        defaults = argparse.ArgumentParser()
        add_arguments(defaults)
        given = [f"--{k}" for k, v in vars(defaults.parse_args([])).items()
                 if k in _FLAG_FORM and getattr(args, k, v) != v]
        if given:  # a flag the gin path would not read: refused, never ignored
            raise UserError(f"{', '.join(given)} with --gin_file: the gin files configure "
                            "the evaluation", expected="gin bindings instead, e.g. "
                            "--gin.evaluate.batch_size=8 or --gin.evaluate.decode=\"{...}\"")
        return eval_cli.run(args, dot_bindings)
    if args.checkpoint is None:
        from explistops_jax.errors import UserError

        raise UserError("no checkpoint to evaluate",
                        expected="explistops eval CHECKPOINT, or --gin_file=F (see "
                                 "explistops eval --help)")
    feature_lengths = lengths(args)  # flags are checked before TensorFlow and JAX load
    from explistops_jax import runtime

    started = runtime.start(args)
    decode = decode_options(args)  # before anything is read or written
    started.register([args.task or runtime.run_task(args.checkpoint)],
                     data_backend=args.data_backend, checkpoint=args.checkpoint)
    from explistops_jax import eval as eval_cli
    from explistops_jax import evaluator, partitioning

    with started.output(args.output_dir, "--output_dir"):
        results = evaluator.evaluate(
            args.checkpoint, args.task, args.split, step=args.step,
            task_feature_lengths=feature_lengths, batch_size=args.batch_size,
            max_examples=args.max_examples, output_dir=args.output_dir,
            partition=partitioning.PartitionConfig(num_partitions=args.num_partitions),
            decode=decode, data_backend=args.data_backend,
            allow_truncation=args.allow_truncation)
    eval_cli.print_results(results)
    return 0
