"""``explistops plan``: will a train step fit, before renting the devices?

    explistops plan --model t5_1_0_3B --mesh data=1,model=8 --batch 8 \\
        --lengths 256,512 --dtype bfloat16 --optimizer adafactor [--device-memory 80]

Compiles the sharded train step ahead of time for abstract inputs (nothing is
allocated) and prints per device: parameters, optimizer state and XLA's memory
analysis (arguments, outputs, temporaries, peak), whether it fits 16-141 GiB
devices and, with ``--device-memory``, the largest batch that fits. With
``--backend cpu`` (the default) the mesh is made of forced host CPU devices, so
any mesh can be planned on a laptop; ``--backend gpu`` plans on the local GPUs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

from explistops_jax.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, metavar="PRESET", help="model preset")
    parser.add_argument("--mesh", default="data=1,model=1", help="data=N,model=M")
    parser.add_argument("--batch", type=int, required=True, help="global batch size")
    parser.add_argument("--lengths", default="64,192", help="INPUTS,TARGETS token lengths")
    parser.add_argument("--dtype", default="float32", help="activation dtype")
    parser.add_argument("--optimizer", default="adafactor", help="adafactor or adamw")
    parser.add_argument("--vocab-size", type=int, default=None)
    parser.add_argument("--remat", default=None, choices=("none", "full", "dots"),
                        help="rematerialisation policy (default: the preset's)")
    parser.add_argument("--device-memory", type=float, default=None, metavar="GIB",
                        help="also search the largest batch that fits this many GiB")
    parser.add_argument("--backend", default="cpu",
                        help="cpu (forced host devices, any mesh) or the local "
                             "accelerator's platform (gpu, tpu)")
    parser.add_argument("--json", action="store_true", help="print JSON")


def _lengths(text: str) -> tuple[int, int]:
    parts = text.split(",")
    if len(parts) != 2 or not all(p.strip().isascii() and p.strip().isdigit() and int(p) > 0
                                  for p in parts):
        raise UserError(f"bad lengths {text!r}", where="--lengths",
                        expected="INPUTS,TARGETS, two positive integers")
    return int(parts[0]), int(parts[1])


def _force_host_devices(count: int) -> None:
    """Asks XLA for ``count`` CPU devices; only effective before JAX starts."""
    if "jax" in sys.modules:
        return
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
             if not f.startswith("--xla_force_host_platform_device_count")]
    os.environ["XLA_FLAGS"] = " ".join(flags + [
        f"--xla_force_host_platform_device_count={count}"])


def run(args: argparse.Namespace) -> int:
    from explistops_jax import plan as plan_lib

    mesh = plan_lib.parse_mesh(args.mesh)
    lengths = _lengths(args.lengths)
    if args.device_memory is not None and not 0 < args.device_memory < math.inf:
        raise UserError(f"--device-memory {args.device_memory:g}", where="--device-memory",
                        expected="a positive, finite number of GiB")
    if args.backend == "cpu":
        _force_host_devices(mesh["data"] * mesh["model"])
    kwargs = dict(mesh=mesh, lengths=lengths, dtype=args.dtype, optimizer=args.optimizer,
                  vocab_size=args.vocab_size, backend=args.backend,
                  remat_policy=args.remat)
    result = plan_lib.plan(args.model, batch_size=args.batch, **kwargs)
    largest = None
    if args.device_memory is not None:
        largest = plan_lib.largest_batch(args.device_memory, result, **kwargs)
    if args.json:
        out = result.to_json()
        if largest is not None:
            out["largest_batch"] = largest.to_json()
        print(json.dumps(out, indent=2))
    else:
        print(plan_lib.format_plan(result, largest=largest))
    return 0
