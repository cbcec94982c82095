"""Checkpoint interop: Hugging Face T5, T5X (Orbax and legacy msgpack), and this
project's own params directories. Every import returns ``(T5Config, params)``,
``params`` being the network's parameter tree (T5X names, float32 numpy arrays),
i.e. ``variables["params"]`` of ``network.Transformer``.

Each format lives in its own module (``hf``, ``t5x``, ``native``); ``common``
holds the checks they share. Every import checks every parameter: unmapped keys,
missing parameters and wrong shapes are reported together in one UserError.
Every export writes a new directory whole or not at all.
"""

from __future__ import annotations

import re
from pathlib import Path

from explistops_jax import rundir
from explistops_jax.errors import UserError
from explistops_jax.checkpoints.common import atomic_directory, expected_shapes, flatten, unflatten
from explistops_jax.checkpoints.hf import HF_RULES, export_hf, import_hf, is_hf_directory
from explistops_jax.checkpoints.hub import is_hub_id, resolve
from explistops_jax.checkpoints.native import is_params_directory, load_params, save_params
from explistops_jax.checkpoints.t5x import export_t5x, import_t5x, is_t5x_checkpoint

__all__ = [
    "FORMATS",
    "HF_RULES",
    "detect_format",
    "expected_shapes",
    "export_hf",
    "export_t5x",
    "flatten",
    "import_hf",
    "import_t5x",
    "is_hub_id",
    "load_any",
    "load_params",
    "resolve",
    "save_params",
    "sentencepiece_model",
    "unflatten",
]

FORMATS = ("hf", "t5x", "explistops")


def detect_format(path: str | Path) -> str:
    """"hf", "t5x" or "explistops" for an existing checkpoint path or a Hub id."""
    p = resolve(path)
    if not p.exists():
        raise UserError("no such file or directory", where=str(p), expected="a checkpoint")
    if p.is_dir() and is_params_directory(p):
        return "explistops"
    if p.is_dir() and is_hf_directory(p):
        return "hf"
    if is_t5x_checkpoint(p):
        return "t5x"
    raise UserError(
        "not a checkpoint this project reads",
        where=str(p),
        expected="a Hugging Face T5 dir (config.json + model.safetensors), a T5X "
        "checkpoint_N dir, or an explistops params dir (config.json + params/)",
    )


def load(path: str | Path, fmt: str, config=None):
    """(config, params) from ``path`` read as format ``fmt``. ``config`` is used
    as is for T5X (instead of inferring it) and must match for the others.
    ``path`` may be a Hugging Face Hub model id (``hf://owner/name``)."""
    path = resolve(path)
    if fmt == "hf":
        loaded = import_hf(path)
    elif fmt == "t5x":
        return import_t5x(path, config)
    elif fmt == "explistops":
        loaded = load_params(path)
    else:
        raise UserError(f"unknown checkpoint format {fmt!r}", expected=" or ".join(FORMATS))
    if config is not None:
        from explistops_jax.checkpoints.common import architecture_differences

        diffs = architecture_differences(loaded[0], config)
        if diffs:
            raise UserError(
                "checkpoint's model differs from the requested one: " + "; ".join(diffs), where=str(path)
            )
    return loaded


# T5X's model gin files name their vocabulary like this (config.gin beside the
# checkpoints records the gin of the run).
_GIN_SPM = re.compile(r"""sentencepiece_model_file\s*=\s*['"]([^'"]+)['"]""")


def sentencepiece_model(path: str | Path) -> str | None:
    """T5's SentencePiece model that comes with a checkpoint, if it has one:
    ``spiece.model`` of a Hugging Face checkpoint (a Hub id is resolved first),
    else the vocabulary path recorded in a T5X run's ``config.gin`` (in the
    checkpoint's directory or the run directory above it). None otherwise."""
    local = resolve(path)
    if (local / "spiece.model").is_file():
        return str(local / "spiece.model")
    for directory in (local, local.parent):
        gin_file = directory / rundir.CONFIG_GIN
        if gin_file.is_file():
            found = _GIN_SPM.search(gin_file.read_text(errors="replace"))
            if found:
                return found.group(1)
    return None


def load_any(path: str | Path, config=None):
    """(config, params) from a checkpoint of any supported format, detected from
    its files (used for INITIAL_CHECKPOINT_PATH)."""
    return load(path, detect_format(path), config)


def save(config, params, out_dir: str | Path, fmt: str, *, step: int = 0):
    """Writes ``params`` as format ``fmt`` into the new directory ``out_dir``
    (local, or a URL such as ``gs://bucket/ckpt``); returns the written path."""
    if fmt == "hf":
        return export_hf(config, params, out_dir)
    if fmt == "t5x":
        return export_t5x(config, params, out_dir, step=step)
    if fmt == "explistops":
        return save_params(out_dir, config, params)
    raise UserError(f"unknown checkpoint format {fmt!r}", expected=" or ".join(FORMATS))
