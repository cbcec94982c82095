"""``explistops params``: parameter count and shapes of a model preset.

    explistops params --model t5_1_0_small [--vocab-size N] [--json]

Shapes come from ``jax.eval_shape``: nothing is allocated, so even the 3B and xl
presets print instantly. The text output lists one parameter per line with its
shape and T5X logical axes, then the total; ``--json`` prints
``{"model", "config", "num_params", "params": {path: {"shape", "axes"}}}``.
"""

from __future__ import annotations

import argparse
import json

from explistops_jax.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", metavar="PRESET", required=True,
                        help="model preset, e.g. t5_1_0_small or t5_1_1_xl")
    parser.add_argument("--vocab-size", type=int, default=None,
                        help="override the preset's vocabulary size (32128)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def describe(name: str, vocab_size: int | None = None) -> dict:
    """{"model", "config", "num_params", "params": {path: {"shape", "axes"}}}."""
    from explistops_jax import network
    from explistops_jax.checkpoints.common import config_to_dict
    from explistops_jax.model import EncoderDecoderModel

    if name not in network.PRESETS:
        raise UserError(f"unknown model preset {name!r}", expected=", ".join(network.PRESETS))
    overrides = {} if vocab_size is None else {"vocab_size": vocab_size}
    config = network.get_config(name, **overrides)
    model = EncoderDecoderModel(config)
    shapes = _flatten(model.param_shapes())
    axes = _flatten(model.param_logical_axes())
    params = {k: {"shape": list(v.shape), "axes": list(axes[k])} for k, v in shapes.items()}
    total = sum(_size(p["shape"]) for p in params.values())
    return {"model": name, "config": config_to_dict(config), "num_params": total,
            "params": params}


def run(args: argparse.Namespace) -> int:
    from explistops_jax import runtime

    if args.vocab_size is not None and args.vocab_size < 1:
        raise UserError(f"--vocab-size {args.vocab_size}", expected="a positive integer")
    runtime.start()
    info = describe(args.model, args.vocab_size)
    if args.json:
        print(json.dumps(info, indent=1, default=str))
        return 0
    width = max(len(k) for k in info["params"])
    for key, p in info["params"].items():
        shape = "x".join(map(str, p["shape"]))
        print(f"{key:<{width}}  {shape:>12}  {_size(p['shape']):>12,}  ({', '.join(p['axes'])})")
    total = info["num_params"]
    print(f"{args.model}: {total:,} parameters ({_human(total)}), {len(info['params'])} tensors")
    return 0


def _flatten(tree) -> dict:
    import jax

    leaves = jax.tree_util.tree_flatten_with_path(
        tree, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))[0]
    return {"/".join(k.key for k in path): leaf for path, leaf in leaves}


def _size(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _human(n: int) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f}{unit}"
    return str(n)
