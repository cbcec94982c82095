"""The T5 network's configuration: one frozen dataclass, its checks, the presets.

``T5Config`` says what the network is (shapes, activations, dtype, dropout) and a
few choices of how a machine computes it (``attention_kernel``, ``cpu_kernels``,
``remat_policy``). Variants by ``config.replace(...)``; the published sizes are
``PRESETS``, read with ``get_config(name, **overrides)``.
"""

from __future__ import annotations

import dataclasses
import functools
import numbers
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from explistops_jax.errors import ConfigError, UnknownFieldError, UnknownNameError

__all__ = [
    "ACTIVATIONS",
    "ACTIVATION_DTYPES",
    "ATTENTION_KERNELS",
    "REMAT_POLICIES",
    "T5Config",
    "PRESETS",
    "get_config",
]

ACTIVATIONS = {
    "relu": nn.relu,
    "gelu": functools.partial(nn.gelu, approximate=True),  # HF "gelu_new"
    "gelu_exact": functools.partial(nn.gelu, approximate=False),
    "silu": nn.silu,
    "linear": lambda x: x,
}

ATTENTION_KERNELS = ("einsum", "xla", "cudnn")
ACTIVATION_DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
_POSITIVE_FIELDS = ("vocab_size", "emb_dim", "num_heads", "num_encoder_layers",
                    "num_decoder_layers", "head_dim", "mlp_dim",
                    "relative_attention_num_buckets", "relative_attention_max_distance")

# remat_policy -> what a rematerialised layer saves (None: no rematerialisation).
REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


@dataclasses.dataclass(frozen=True)
class T5Config:
    """Shapes and options of one T5 network. Variants by ``dataclasses.replace``
    (or ``config.replace(...)``). Layers are always unrolled, so the parameter
    tree keeps T5X's ``layers_{i}`` names."""

    vocab_size: int = 32128
    emb_dim: int = 512
    num_heads: int = 8
    num_encoder_layers: int = 6
    num_decoder_layers: int = 6
    head_dim: int = 64
    mlp_dim: int = 2048
    # ("relu",) = T5 1.0 MLP `wi`; ("gelu", "linear") = T5 1.1 gated GELU `wi_0 * wi_1`.
    mlp_activations: tuple[str, ...] = ("relu",)
    dropout_rate: float = 0.0
    # True: dropout masks shared along the length axis of hidden states and the
    # query axis of attention weights, as T5X does (cheaper: one draw per row);
    # False: one draw per element, as Hugging Face's T5 does.
    broadcast_dropout: bool = False
    # True (T5 1.0): output head = token embedding, logits scaled by emb_dim**-0.5.
    logits_via_embedding: bool = True
    # Activation/computation dtype (name or jnp dtype); parameters stay float32.
    dtype: Any = "float32"
    # Attention logits and softmax in float32 even when dtype is bfloat16.
    float32_attention_logits: bool = True
    # How attention is computed where no dropout applies to its weights (always in
    # evaluation; in training only with dropout_rate 0; cached decoding always uses
    # "einsum"): "einsum" (two einsums and a softmax, the weights materialised),
    # "xla" (jax.nn.dot_product_attention's XLA implementation, the same sums) or
    # "cudnn" (its fused cuDNN kernel: NVIDIA GPUs, bfloat16/float16 activations).
    # Not saved with checkpoints (checkpoints.common.config_to_dict).
    attention_kernel: str = "einsum"
    # The kernels of explistops_jax.cpu_kernels (dropout masks by a fused threefry,
    # the bias gradient as a matrix-vector product, dense layers as one 2-D
    # matmul): the same values, computed faster by XLA's CPU backend. None: on
    # where jax.default_backend() is "cpu" when the network is traced. Not saved
    # with checkpoints.
    cpu_kernels: bool | None = None
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    layer_norm_epsilon: float = 1e-6
    # Rematerialisation of each layer in training: "none" | "full" | "dots"
    # ("dots" saves matmul outputs, recomputes the rest).
    remat_policy: str = "none"

    def __post_init__(self):
        if not 0.0 <= self.dropout_rate <= 1.0:
            raise ConfigError(f"T5Config.dropout_rate: {self.dropout_rate!r} is not a rate",
                              expected="a number in [0, 1]")
        for act in self.mlp_activations:
            if act not in ACTIVATIONS:
                raise ConfigError(
                    f"T5Config.mlp_activations: unknown activation {act!r}",
                    expected="one of " + ", ".join(sorted(ACTIVATIONS)))
        if self.remat_policy not in REMAT_POLICIES:
            raise ConfigError(
                f"T5Config.remat_policy: {self.remat_policy!r} is not one of "
                f"{sorted(REMAT_POLICIES)}", expected="one of " + ", ".join(REMAT_POLICIES))
        try:
            dtype = jnp.dtype(self.dtype)
        except TypeError:
            raise UnknownFieldError(f"T5Config.dtype: unknown dtype {self.dtype!r}",
                                    expected="e.g. 'float32' or 'bfloat16'") from None
        if dtype not in ACTIVATION_DTYPES:  # float64 would be float32 without jax_enable_x64
            raise ConfigError(f"T5Config.dtype: {dtype.name} activations are not supported",
                              expected="float32, bfloat16 or float16")
        for name in _POSITIVE_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ConfigError(f"T5Config.{name}: {value!r}", expected="a positive integer")
        if self.cpu_kernels not in (None, True, False):
            raise ConfigError(f"T5Config.cpu_kernels: {self.cpu_kernels!r}",
                              expected="True, False or None (on when JAX's backend is the CPU)")
        if self.attention_kernel not in ATTENTION_KERNELS:
            raise ConfigError(
                f"T5Config.attention_kernel: {self.attention_kernel!r} is not one of "
                f"{list(ATTENTION_KERNELS)}", expected="one of " + ", ".join(ATTENTION_KERNELS))
        if (self.attention_kernel == "cudnn"
                and jnp.dtype(self.dtype) not in (jnp.bfloat16, jnp.float16)):
            raise ConfigError(
                f"T5Config.attention_kernel='cudnn' needs bfloat16 or float16 activations, "
                f"got dtype {jnp.dtype(self.dtype).name}",
                expected="dtype 'bfloat16' (or attention_kernel 'einsum'/'xla')")

    def replace(self, **changes) -> "T5Config":
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    @property
    def activation_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.dtype)


_T5_1_0 = T5Config(mlp_activations=("relu",), logits_via_embedding=True)
_T5_1_1 = T5Config(mlp_activations=("gelu", "linear"), logits_via_embedding=False)


def _shape(base: T5Config, d, h, layers, dk, ff) -> T5Config:
    return base.replace(emb_dim=d, num_heads=h, num_encoder_layers=layers,
                        num_decoder_layers=layers, head_dim=dk, mlp_dim=ff)


# Published shapes (d_model, heads, layers per stack, d_kv, d_ff); vocab 32128.
PRESETS: dict[str, T5Config] = {
    "t5_1_0_tiny": _shape(_T5_1_0, 64, 2, 2, 32, 128),
    "t5_1_0_small": _shape(_T5_1_0, 512, 8, 6, 64, 2048),
    "t5_1_0_base": _shape(_T5_1_0, 768, 12, 12, 64, 3072),
    "t5_1_0_large": _shape(_T5_1_0, 1024, 16, 24, 64, 4096),
    "t5_1_0_3B": _shape(_T5_1_0, 1024, 32, 24, 128, 16384),
    "t5_1_1_tiny": _shape(_T5_1_1, 64, 2, 2, 32, 128),
    "t5_1_1_small": _shape(_T5_1_1, 512, 6, 8, 64, 1024),
    "t5_1_1_base": _shape(_T5_1_1, 768, 12, 12, 64, 2048),
    "t5_1_1_large": _shape(_T5_1_1, 1024, 16, 24, 64, 2816),
    "t5_1_1_xl": _shape(_T5_1_1, 2048, 32, 24, 64, 5120),
}


def get_config(name: str, **overrides) -> T5Config:
    """The preset `name` with some fields overridden, e.g.
    ``get_config("t5_1_1_tiny", vocab_size=128, dtype="bfloat16")``."""
    if name not in PRESETS:
        raise UnknownNameError(f"unknown model preset {name!r}",
                               expected="one of " + ", ".join(PRESETS))
    fields = {f.name for f in dataclasses.fields(T5Config)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise UnknownFieldError(f"get_config({name!r}): unknown T5Config fields {unknown}",
                                expected="fields of T5Config")
    return PRESETS[name].replace(**overrides)
