"""``explistops convert``: move T5 weights between checkpoint formats.

    explistops convert --from hf|t5x|explistops PATH --to hf|t5x|explistops OUT
                       [--model PRESET] [--step N]

hf: a transformers T5 directory (config.json + model.safetensors);
t5x: a T5X checkpoint (``checkpoint_N/``; Orbax or the older msgpack layout;
written as Orbax, ``OUT/checkpoint_N/``); explistops: this project's params
directory (config.json + params/). OUT must not exist; it appears complete or
not at all.
"""

from __future__ import annotations

import argparse

from explistops_jax import checkpoints
from explistops_jax.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    formats = checkpoints.FORMATS
    parser.add_argument("--from", dest="source_format", choices=formats, required=True,
                        help="format of PATH")
    parser.add_argument("source", metavar="PATH", help="checkpoint to read")
    parser.add_argument("--to", dest="target_format", choices=formats, required=True,
                        help="format to write")
    parser.add_argument("out", metavar="OUT", help="new directory to write")
    parser.add_argument("--model", metavar="PRESET",
                        help="model preset (e.g. t5_1_1_base): the config of a T5X checkpoint "
                             "instead of inferring it from shapes; for other formats, a check "
                             "that the checkpoint is this model")
    parser.add_argument("--step", type=int, default=0,
                        help="step number of the written T5X checkpoint (default 0)")


def _preset(name: str | None):
    if name is None:
        return None
    from explistops_jax import network

    if name not in network.PRESETS:
        raise UserError(f"unknown model preset {name!r}", expected=", ".join(network.PRESETS))
    return network.get_config(name)


def run(args: argparse.Namespace) -> int:
    from explistops_jax import runtime

    if args.step < 0:
        raise UserError(f"--step {args.step}", expected="a step number >= 0")
    runtime.check_writable(args.out, "output directory OUT")
    runtime.start()
    config, params = checkpoints.load(args.source, args.source_format, _preset(args.model))
    written = checkpoints.save(config, params, args.out, args.target_format, step=args.step)
    count = sum(int(x.size) for x in checkpoints.flatten(params).values())
    kind = "T5 1.0-style tied head" if config.logits_via_embedding else "untied head"
    print(f"wrote {args.target_format} checkpoint to {written}: {count:,} parameters, "
          f"{config.num_encoder_layers}+{config.num_decoder_layers} layers, "
          f"d_model {config.emb_dim}, {kind}")
    return 0
