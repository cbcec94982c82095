"""Hugging Face transformers T5 directories <-> our (config, params).

A HF T5 directory holds ``config.json`` and the weights as ``model.safetensors``
(or ``pytorch_model.bin``, or either one sharded with an ``*.index.json``). Every
HF key is translated by one explicit rule of :data:`HF_RULES`; anything else is an
error, as is any parameter the network needs and the file lacks, and any tensor
whose shape is off.

Two HF quirks shape the rules:
- HF stores linear weights as ``[out, in]``; T5X kernels are ``[in, out]``, so
  every dense weight is transposed, and the relative-position table
  ``[buckets, heads]`` becomes T5X's ``rel_embedding [heads, buckets]``.
- The output head. T5 1.0 reuses the embedding (``logits_via_embedding``) and
  scales the decoder output by ``d_model**-0.5``; T5 1.1 has its own
  ``lm_head`` and no scaling. transformers 4 keys both on
  ``tie_word_embeddings``; transformers 5 always ties weights it finds missing
  and records the scaling as ``scale_decoder_outputs``. Both are read here.
"""

from __future__ import annotations

import json
import logging
import mmap
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from explistops_jax.errors import UserError
from explistops_jax import rundir
from explistops_jax.checkpoints import common

log = logging.getLogger(__name__)


# ----------------------------------------------------------------- the rules


@dataclass(frozen=True)
class Rule:
    """One HF key pattern <-> one T5X path pattern; ``{i}`` is a layer index."""

    hf: str
    t5x: str
    transpose: bool

    def _regex(self, template: str) -> re.Pattern:
        return re.compile("^" + re.escape(template).replace(r"\{i\}", r"(?P<i>\d+)") + "$")

    def hf_to_t5x(self, key: str) -> str | None:
        m = self._regex(self.hf).match(key)
        return None if m is None else self.t5x.format(**m.groupdict())

    def t5x_to_hf(self, path: str) -> str | None:
        m = self._regex(self.t5x).match(path)
        return None if m is None else self.hf.format(**m.groupdict())


def _attention(hf: str, t5x: str) -> list[Rule]:
    names = {"q": "query", "k": "key", "v": "value", "o": "out"}
    return [Rule(f"{hf}.{a}.weight", f"{t5x}/{b}/kernel", True) for a, b in names.items()]


def _mlp(hf: str, t5x: str) -> list[Rule]:
    return [Rule(f"{hf}.{w}.weight", f"{t5x}/{w}/kernel", True) for w in ("wi", "wi_0", "wi_1", "wo")]


_E, _D = "encoder.block.{i}.layer", "decoder.block.{i}.layer"
_TE, _TD = "encoder/layers_{i}", "decoder/layers_{i}"

HF_RULES: tuple[Rule, ...] = (
    Rule("shared.weight", "token_embedder/embedding", False),
    # encoder
    Rule("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
         "encoder/relpos_bias/rel_embedding", True),
    Rule(f"{_E}.0.layer_norm.weight", f"{_TE}/pre_attention_layer_norm/scale", False),
    *_attention(f"{_E}.0.SelfAttention", f"{_TE}/attention"),
    Rule(f"{_E}.1.layer_norm.weight", f"{_TE}/pre_mlp_layer_norm/scale", False),
    *_mlp(f"{_E}.1.DenseReluDense", f"{_TE}/mlp"),
    Rule("encoder.final_layer_norm.weight", "encoder/encoder_norm/scale", False),
    # decoder
    Rule("decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
         "decoder/relpos_bias/rel_embedding", True),
    Rule(f"{_D}.0.layer_norm.weight", f"{_TD}/pre_self_attention_layer_norm/scale", False),
    *_attention(f"{_D}.0.SelfAttention", f"{_TD}/self_attention"),
    Rule(f"{_D}.1.layer_norm.weight", f"{_TD}/pre_cross_attention_layer_norm/scale", False),
    *_attention(f"{_D}.1.EncDecAttention", f"{_TD}/encoder_decoder_attention"),
    Rule(f"{_D}.2.layer_norm.weight", f"{_TD}/pre_mlp_layer_norm/scale", False),
    *_mlp(f"{_D}.2.DenseReluDense", f"{_TD}/mlp"),
    Rule("decoder.final_layer_norm.weight", "decoder/decoder_norm/scale", False),
    Rule("lm_head.weight", "decoder/logits_dense/kernel", True),
)

# Other names of `shared.weight` (transformers ties them; old files store copies).
HF_ALIASES = {
    "encoder.embed_tokens.weight": "shared.weight",
    "decoder.embed_tokens.weight": "shared.weight",
}
# Keys some files carry that T5 never uses (transformers ignores them on load too).
HF_IGNORED = ("decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight",)


def hf_to_t5x(key: str) -> tuple[str, bool] | None:
    """(T5X path, transpose?) for a HF key, or None when no rule maps it."""
    for rule in HF_RULES:
        path = rule.hf_to_t5x(key)
        if path is not None:
            return path, rule.transpose
    return None


def t5x_to_hf(path: str) -> tuple[str, bool] | None:
    """(HF key, transpose?) for a T5X path, or None when no rule maps it."""
    for rule in HF_RULES:
        key = rule.t5x_to_hf(path)
        if key is not None:
            return key, rule.transpose
    return None


# ---------------------------------------------------------------- the config

# feed_forward_proj -> (our mlp_activations, HF dense_act_fn). T5 1.0 is "relu",
# T5 1.1 "gated-gelu"; HF runs gated-gelu with "gelu_new" (tanh approximation, our
# "gelu"), while plain "gelu" is the exact erf form (our "gelu_exact").
_ACTIVATIONS = {
    "relu": (("relu",), "relu"),
    "gated-gelu": (("gelu", "linear"), "gelu_new"),
    "gated-relu": (("relu", "linear"), "relu"),
    "gelu": (("gelu_exact",), "gelu"),
    "silu": (("silu",), "silu"),
    "gated-silu": (("silu", "linear"), "silu"),
}


def config_from_hf(hf: Mapping[str, Any], *, tied: bool, source: str):
    """Our T5Config from a HF config.json dict (architecture keys only)."""
    from explistops_jax import network

    proj = hf.get("feed_forward_proj", "relu")
    if proj not in _ACTIVATIONS:
        raise UserError(
            f"unsupported feed_forward_proj {proj!r}",
            where=source,
            expected=" or ".join(repr(k) for k in _ACTIVATIONS),
        )
    required = ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads")
    absent = [k for k in required if k not in hf]
    if absent:
        raise UserError(f"config.json lacks {', '.join(absent)}", where=source)
    return network.T5Config(
        vocab_size=int(hf["vocab_size"]),
        emb_dim=int(hf["d_model"]),
        num_heads=int(hf["num_heads"]),
        num_encoder_layers=int(hf["num_layers"]),
        num_decoder_layers=int(hf.get("num_decoder_layers") or hf["num_layers"]),
        head_dim=int(hf["d_kv"]),
        mlp_dim=int(hf["d_ff"]),
        mlp_activations=_ACTIVATIONS[proj][0],
        logits_via_embedding=tied,
        relative_attention_num_buckets=int(hf.get("relative_attention_num_buckets", 32)),
        relative_attention_max_distance=int(hf.get("relative_attention_max_distance", 128)),
        layer_norm_epsilon=float(hf.get("layer_norm_epsilon", 1e-6)),
    )


def hf_config(config) -> dict[str, Any]:
    """The config.json transformers' T5ForConditionalGeneration reads."""
    proj = next((k for k, (acts, _) in _ACTIVATIONS.items() if acts == tuple(config.mlp_activations)), None)
    if proj is None:
        raise UserError(
            f"mlp_activations {config.mlp_activations!r} has no transformers equivalent",
            expected=" or ".join(repr(a) for a, _ in _ACTIVATIONS.values()),
        )
    tied = bool(config.logits_via_embedding)
    return {
        "architectures": ["T5ForConditionalGeneration"],
        "model_type": "t5",
        "vocab_size": config.vocab_size,
        "d_model": config.emb_dim,
        "d_kv": config.head_dim,
        "d_ff": config.mlp_dim,
        "num_layers": config.num_encoder_layers,
        "num_decoder_layers": config.num_decoder_layers,
        "num_heads": config.num_heads,
        "relative_attention_num_buckets": config.relative_attention_num_buckets,
        "relative_attention_max_distance": config.relative_attention_max_distance,
        "dropout_rate": float(config.dropout_rate),
        "layer_norm_epsilon": float(config.layer_norm_epsilon),
        "initializer_factor": 1.0,
        "feed_forward_proj": proj,
        "is_gated_act": proj.startswith("gated-"),
        "dense_act_fn": _ACTIVATIONS[proj][1],
        # transformers 4 reads tying and scaling from tie_word_embeddings;
        # transformers 5 reads the scaling from scale_decoder_outputs.
        "tie_word_embeddings": tied,
        "scale_decoder_outputs": tied,
        "is_encoder_decoder": True,
        "use_cache": True,
        "pad_token_id": 0,
        "eos_token_id": 1,
        "decoder_start_token_id": 0,
        "dtype": "float32",
    }


# ---------------------------------------------------------------- the files

_SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
    "BOOL": np.bool_,
}


def _np_dtype(name: str, where: str):
    if name == "BF16":
        import ml_dtypes

        return ml_dtypes.bfloat16
    if name not in _SAFETENSORS_DTYPES:
        raise UserError(f"unsupported safetensors dtype {name}", where=where)
    return _SAFETENSORS_DTYPES[name]


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """All tensors of a .safetensors file as numpy arrays (bfloat16 included,
    which ``safetensors.numpy`` cannot read)."""
    where = str(path)
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            n = int.from_bytes(mm[:8], "little")
            header = json.loads(mm[8 : 8 + n])
            start = 8 + n
            out = {}
            for key, info in header.items():
                if key == "__metadata__":
                    continue
                begin, end = info["data_offsets"]
                dtype = _np_dtype(info["dtype"], f"{where}: {key}")
                arr = np.frombuffer(mm[start + begin : start + end], dtype=dtype)
                out[key] = arr.reshape(info["shape"]).copy()
            return out
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"cannot read safetensors file: {e}", where=where) from None


def read_torch_bin(path: Path) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError:
        raise UserError(
            "reading pytorch_model.bin needs torch, which is not installed",
            where=str(path),
            expected="model.safetensors, or `pip install torch`",
        ) from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a bad file
        raise UserError(f"cannot read PyTorch weights: {e}", where=str(path)) from None
    return {k: v.detach().float().numpy() if v.is_floating_point() else v.numpy() for k, v in state.items()}


def read_hf_tensors(directory: Path) -> dict[str, np.ndarray]:
    """The weights of a HF directory, single file or sharded, safetensors first."""
    for name, reader in (("model.safetensors", read_safetensors), ("pytorch_model.bin", read_torch_bin)):
        if (directory / name).is_file():
            return reader(directory / name)
        index = directory / f"{name}.index.json"
        if index.is_file():
            shards = sorted(set(rundir.read_json(index).get("weight_map", {}).values()))
            tensors: dict[str, np.ndarray] = {}
            for shard in shards:
                tensors.update(reader(directory / shard))
            return tensors
    raise UserError(
        "no weights found",
        where=str(directory),
        expected="model.safetensors or pytorch_model.bin (or a sharded *.index.json)",
    )


def is_hf_directory(path: Path) -> bool:
    if not (path / "config.json").is_file():
        return False
    names = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
             "pytorch_model.bin.index.json")
    return any((path / n).is_file() for n in names)


# ---------------------------------------------------------------- import / export


def _scales_decoder_output(hf: Mapping[str, Any]) -> bool:
    if "scale_decoder_outputs" in hf:  # written by transformers >= 5
        return bool(hf["scale_decoder_outputs"])
    return hf.get("tie_word_embeddings", True) is not False


def import_hf(path: str | Path):
    """(T5Config, params) from a transformers T5 directory.

    ``params`` is the network's parameter tree (nested dicts of float32 numpy
    arrays with T5X names). Raises UserError naming every unmapped key, missing
    parameter and wrong shape.
    """
    directory = Path(path).expanduser()
    source = str(directory)
    if not directory.is_dir():
        raise UserError("not a directory", where=source, expected="a Hugging Face T5 directory")
    hf = rundir.read_json(directory / "config.json")
    if hf.get("model_type", "t5") not in ("t5", "mt5"):
        raise UserError(f"model_type is {hf.get('model_type')!r}", where=f"{source}/config.json",
                        expected="'t5' (T5ForConditionalGeneration)")
    tensors = read_hf_tensors(directory)
    return _import_tensors(hf, tensors, source)


def _import_tensors(hf: Mapping[str, Any], tensors: dict[str, np.ndarray], source: str):
    config = config_from_hf(hf, tied=True, source=f"{source}/config.json")  # head decided below
    tensors = dict(tensors)
    problems: dict[str, list[str]] = {"unmapped": [], "inconsistent": []}
    for alias, target in HF_ALIASES.items():
        if alias in tensors:
            value = tensors.pop(alias)
            if target not in tensors:
                tensors[target] = value
            elif not np.array_equal(value, tensors[target]):
                problems["inconsistent"].append(f"{alias} differs from {target}, which it must equal")
    for key in HF_IGNORED:
        tensors.pop(key, None)

    # The output head (see the module docstring).
    shared = tensors.get("shared.weight")
    lm_head = tensors.pop("lm_head.weight", None)
    same_as_shared = lm_head is None or (
        shared is not None and lm_head.shape == shared.shape and np.array_equal(lm_head, shared)
    )
    if _scales_decoder_output(hf):
        tied = same_as_shared
        if not tied:
            log.warning(
                "%s: lm_head differs from the embedding but the config scales the decoder "
                "output; folding the d_model**-0.5 scale into an untied logits_dense", source)
            lm_head = lm_head.astype(np.float32) * np.float32(config.emb_dim**-0.5)
    else:
        tied = False
        if lm_head is None:
            lm_head = shared  # transformers ties a missing lm_head to the embedding
    if not tied and lm_head is not None:
        tensors["lm_head.weight"] = lm_head

    flat: dict[str, np.ndarray] = {}
    for key in sorted(tensors):
        mapped = hf_to_t5x(key)
        if mapped is None:
            problems["unmapped"].append(key)
            continue
        t5x_path, transpose = mapped
        value = tensors[key]
        if transpose:
            if value.ndim != 2:
                problems["inconsistent"].append(f"{key} has shape {list(value.shape)}, expected a matrix")
                continue
            value = value.T
        flat[t5x_path] = np.ascontiguousarray(value, dtype=np.float32)

    config = config.replace(logits_via_embedding=tied)

    def describe(p: str) -> str:
        mapped = t5x_to_hf(p)
        if mapped is None:
            return p
        key, transpose = mapped
        return f"{key} ({'transposed to ' if transpose else 'as '}{p})"

    common.check_params(flat, config, source=source, describe=describe, extra_problems=problems)
    return config, common.unflatten(flat)


def hf_tensors(config, params: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The HF state dict (float32, contiguous) of our params; checks them first."""
    flat = common.to_numpy(common.flatten(params))
    common.check_params(flat, config, source="params")
    out = {}
    for path, value in flat.items():
        mapped = t5x_to_hf(path)
        if mapped is None:  # every network parameter has a rule; this is a bug
            raise AssertionError(f"no HF rule for parameter {path}")
        key, transpose = mapped
        out[key] = np.ascontiguousarray(value.T if transpose else value)
    return out


def export_hf(config, params: Mapping[str, Any], out_dir: str | Path):
    """Writes ``out_dir`` (local, or a URL such as ``gs://bucket/hf``) with
    config.json + model.safetensors, whole or not at all; returns its path."""
    from safetensors import numpy as st

    tensors = hf_tensors(config, params)
    cfg = hf_config(config)
    with common.atomic_directory(out_dir) as tmp:
        if rundir.is_local(out_dir):
            st.save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        else:  # an object store: the file is one upload
            (tmp / "model.safetensors").write_bytes(st.save(tensors, metadata={"format": "pt"}))
        rundir.write_json(tmp / "config.json", cfg, sort_keys=True)
    return Path(out_dir) if rundir.is_local(out_dir) else rundir.run_path(out_dir)
