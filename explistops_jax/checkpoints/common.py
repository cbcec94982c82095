"""What every checkpoint format shares: flat parameter dicts, the shapes a config
expects, the loud check of a loaded tree against them, config inference from
shapes, and config <-> JSON. Output directories that appear whole or not at all and
JSON files are :mod:`explistops_jax.rundir`'s (``atomic_directory`` is re-exported).

Parameters travel between formats as a *flat* dict of numpy arrays keyed by the
T5X path, ``"encoder/layers_0/attention/query/kernel"``. The network's own tree
(``variables["params"]``) is the unflattened form of the same dict.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np

from explistops_jax.errors import UserError
from explistops_jax.rundir import atomic_directory  # noqa: F401  (checkpoints' API)

FlatParams = dict[str, np.ndarray]  # T5X path ("a/b/kernel") -> array


# ---------------------------------------------------------------- flat trees


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": x}}`` -> ``{"a/b": x}`` (any Mapping counts as a node)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, path + "/"))
        else:
            flat[path] = value
    return flat


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`flatten`; returns plain (mutable) dicts."""
    tree: dict[str, Any] = {}
    for path, value in flat.items():
        node = tree
        *parents, leaf = path.split("/")
        for name in parents:
            node = node.setdefault(name, {})
        node[leaf] = value
    return tree


def to_numpy(flat: Mapping[str, Any], dtype=np.float32) -> FlatParams:
    """Host copies of every leaf (jax or numpy), cast to ``dtype``."""
    return {k: np.asarray(v).astype(dtype, copy=False) for k, v in flat.items()}


# ------------------------------------------------------------ shape checking


@functools.lru_cache(maxsize=32)
def _expected_shapes_cached(config) -> tuple[tuple[str, tuple[int, ...]], ...]:
    from explistops_jax.model import EncoderDecoderModel

    flat = flatten(EncoderDecoderModel(config).param_shapes())  # eval_shape: no allocation
    return tuple(sorted((k, tuple(v.shape)) for k, v in flat.items()))


def expected_shapes(config) -> dict[str, tuple[int, ...]]:
    """The parameter shapes of ``config``'s network, without allocating them."""
    return dict(_expected_shapes_cached(config))


def describe_problems(title: str, groups: Mapping[str, list[str]]) -> str:
    """A message naming every problem, grouped: ``title`` then one line each."""
    counts = ", ".join(f"{len(items)} {name}" for name, items in groups.items() if items)
    lines = [f"{title} ({counts})"]
    for name, items in groups.items():
        for item in items:
            lines.append(f"  {name}: {item}")
    return "\n".join(lines)


def check_params(
    flat: Mapping[str, Any],
    config,
    *,
    source: str,
    describe=lambda path: path,
    extra_problems: Mapping[str, list[str]] | None = None,
) -> None:
    """Raises one :class:`UserError` naming every missing, unexpected or misshapen
    parameter of ``flat`` against what ``config``'s network expects.

    ``describe(path)`` renders a T5X path in the source's own naming (e.g. the
    Hugging Face key it came from), so the message names what the user has on disk.
    ``extra_problems`` (e.g. unmapped keys found by the caller) go in the same report.
    """
    expected = expected_shapes(config)
    groups: dict[str, list[str]] = {name: list(items) for name, items in (extra_problems or {}).items()}
    groups.setdefault("missing", [])
    groups.setdefault("unexpected", [])
    groups.setdefault("wrong shape", [])
    for path in sorted(expected):
        if path not in flat:
            groups["missing"].append(describe(path))
    for path in sorted(flat):
        if path not in expected:
            groups["unexpected"].append(describe(path))
        elif tuple(np.shape(flat[path])) != expected[path]:
            groups["wrong shape"].append(
                f"{describe(path)} has shape {list(np.shape(flat[path]))}, "
                f"the model expects {list(expected[path])}"
            )
    if any(groups.values()):
        raise UserError(describe_problems("checkpoint does not fit the model", groups), where=source)


# ----------------------------------------------------------- config handling


# T5Config fields that choose how this machine computes, not what the model is:
# not saved, so that a run trained with cuDNN attention evaluates on a CPU, and one
# trained with the CPU kernels uses the plain ones on a GPU.
_MACHINE_FIELDS = ("attention_kernel", "cpu_kernels")

# Fields that saved configs may hold but T5Config does not -> the one value they
# may have (dropped on reading); any other value is an error.
_RETIRED_FIELDS = {"scan_layers": False}


def config_to_dict(config) -> dict[str, Any]:
    """JSON-ready dict of a T5Config (tuples become lists), without the fields
    that only choose a kernel (``_MACHINE_FIELDS``); dtypes by name. The one
    serialiser of a model config: checkpoints, exports and run.json use it."""
    out = {}
    for field in dataclasses.fields(config):
        if field.name in _MACHINE_FIELDS:
            continue
        value = getattr(config, field.name)
        if isinstance(value, tuple):
            value = list(value)
        elif not isinstance(value, (int, float, str, bool, type(None))):
            value = jnp.dtype(value).name if "dtype" in field.name else str(value)
        out[field.name] = value
    return out


def config_from_dict(data: Mapping[str, Any], *, source: str):
    """T5Config from :func:`config_to_dict`'s output; unknown keys are an error.
    Retired fields at the value they may still hold (``"scan_layers": false``,
    which older runs saved) are dropped."""
    from explistops_jax.t5_config import T5Config

    data = dict(data)
    for name, allowed in _RETIRED_FIELDS.items():
        value = data.pop(name, allowed)
        if value != allowed:
            raise UserError(
                f"T5Config.{name}={value!r} is not supported: layers are unrolled, so "
                "that the parameter tree keeps T5X's `layers_{i}` names",
                where=source, expected=f"{name} absent or {allowed!r}")
    names = {f.name for f in dataclasses.fields(T5Config)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise UserError(
            f"unknown T5Config field(s) {', '.join(unknown)}",
            where=source,
            expected=f"fields of T5Config: {', '.join(sorted(names))}",
        )
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    try:
        return T5Config(**values)
    except TypeError as e:  # a required field is absent
        raise UserError(f"incomplete T5Config: {e}", where=source) from None


def architecture_differences(a, b) -> list[str]:
    """Fields that change the parameter tree or the function (not dtype/dropout)."""
    keys = (
        "vocab_size", "emb_dim", "num_heads", "num_encoder_layers", "num_decoder_layers",
        "head_dim", "mlp_dim", "mlp_activations", "logits_via_embedding",
        "relative_attention_num_buckets", "relative_attention_max_distance",
        "layer_norm_epsilon",
    )
    return [f"{k}: {getattr(a, k)!r} vs {getattr(b, k)!r}" for k in keys if getattr(a, k) != getattr(b, k)]


_LAYER = re.compile(r"^(encoder|decoder)/layers_(\d+)/")


def infer_config(flat: Mapping[str, Any], *, source: str, **overrides):
    """A T5Config whose network has exactly the parameter shapes in ``flat``.

    Read from shapes: vocabulary and width (embedding), layer counts, heads and
    buckets (relative position table ``[heads, buckets]``), head size (query
    kernel), MLP width and kind (``wi`` = ReLU, ``wi_0``/``wi_1`` = gated GELU),
    tied head (no ``decoder/logits_dense``). Not visible in shapes and so left at
    T5Config's defaults unless overridden: max distance, epsilon, dtype, dropout.
    """
    from explistops_jax.t5_config import T5Config

    def need(path: str) -> tuple[int, ...]:
        if path not in flat:
            raise UserError(
                f"cannot infer the model config: no parameter {path}",
                where=source,
                expected="a T5 parameter tree with T5X names, or give the config (--model PRESET)",
            )
        return tuple(np.shape(flat[path]))

    vocab, emb = need("token_embedder/embedding")
    layers = {"encoder": set(), "decoder": set()}
    for path in flat:
        m = _LAYER.match(path)
        if m:
            layers[m.group(1)].add(int(m.group(2)))
    heads, buckets = need("encoder/relpos_bias/rel_embedding")
    joined = need("encoder/layers_0/attention/query/kernel")[1]
    gated = "encoder/layers_0/mlp/wi_0/kernel" in flat
    mlp = need("encoder/layers_0/mlp/wi_0/kernel" if gated else "encoder/layers_0/mlp/wi/kernel")[1]
    values = dict(
        vocab_size=vocab,
        emb_dim=emb,
        num_heads=heads,
        num_encoder_layers=len(layers["encoder"]),
        num_decoder_layers=len(layers["decoder"]),
        head_dim=joined // heads,
        mlp_dim=mlp,
        mlp_activations=("gelu", "linear") if gated else ("relu",),
        logits_via_embedding="decoder/logits_dense/kernel" not in flat,
        relative_attention_num_buckets=buckets,
    )
    values.update(overrides)
    return T5Config(**values)
