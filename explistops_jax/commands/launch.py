"""``explistops launch``: a multi-process training job on this machine.

    explistops launch --processes 2 [--devices-per-process 2] -- \\
        --gin_file gin_configs/experiments/... --model_dir runs/x

Starts N processes of ``explistops train <arguments after -->`` on a free
127.0.0.1 port (``--coordinator_address/--num_processes/--process_id`` added),
prefixes their output with the process index and stops them all when one fails
(:mod:`explistops_jax.launcher`). ``--devices-per-process K`` forces K host
devices per process (CPU). Real hosts: see docs/multihost.md.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from explistops_jax import launcher

    parser.add_argument("--processes", "-n", type=int, required=True, metavar="N",
                        help="number of processes")
    parser.add_argument("--devices-per-process", type=int, metavar="K",
                        help="forced host (CPU) devices per process (XLA_FLAGS)")
    parser.add_argument("--command", choices=tuple(launcher.COMMANDS), default="train",
                        help="train (explistops train arguments, the default) or eval "
                             "(python -m explistops_jax.eval gin flags)")
    parser.add_argument("--port", type=int, help="coordinator port (default: a free one)")
    parser.add_argument("arguments", nargs=argparse.REMAINDER,
                        help="-- then the arguments of every process")


def run(args: argparse.Namespace) -> int:
    from explistops_jax import launcher

    arguments = list(args.arguments)
    if arguments[:1] == ["--"]:
        arguments = arguments[1:]
    return launcher.launch(arguments, args.processes,
                           devices_per_process=args.devices_per_process,
                           command=args.command, port=args.port)
