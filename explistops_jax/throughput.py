"""How fast a train step goes: the step log's token rates, model TFLOP/s and
MFU, and the bfloat16 peak of each accelerator that MFU is measured against.

MFU (model FLOPs utilisation, as PaLM defines it: Chowdhery et al. 2022,
appendix B) = model FLOPs per step / step time / peak FLOP/s of all the devices
in use. The FLOPs are the one count of the project, ``plan.train_flops``: the
matrix products of forward and backward over every position of the batch
(padding included, as it is computed), nothing for the optimizer or
rematerialisation, so figures compare across code and hardware. The peak is a
chip's dense bfloat16 matrix rate from its vendor's figures (:data:`PEAK_BF16_FLOPS`),
or the trainer's ``peak_flops`` (gin ``train.peak_flops``) where given; a device
kind not in the table (a CPU, a GPU not listed) with no peak given has no MFU:
the key is left out of the log rather than guessed, and TFLOP/s is still logged.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterable, Mapping

from explistops_jax.errors import ConfigError

__all__ = ["PEAK_BF16_FLOPS", "Throughput", "check_peak_flops", "peak_flops_per_device",
           "model_flops_per_step"]

# Dense (no 2:4 sparsity) bfloat16 matrix FLOP/s of one chip, keyed by jax's
# ``device.device_kind``. NVIDIA's datasheets print the sparse figure; the dense
# one is half of it.
#   H100 / H200: NVIDIA H100 Tensor Core GPU datasheet and H200 datasheet
#     (resources.nvidia.com/en-us-tensor-core, nvidia.com/en-us/data-center/h200):
#     BF16 Tensor Core 1,979 TFLOPS (SXM), 1,671 (NVL), 1,513 (PCIe), with sparsity.
#   A100: NVIDIA A100 datasheet (nvidia.com/en-us/data-center/a100): BF16 Tensor
#     Core 312 TFLOPS dense (624 with sparsity), every form factor.
#   TPU: Google Cloud TPU system architecture pages (cloud.google.com/tpu/docs/
#     v4, v5e, v5p, v6e): bf16 peak per chip 275 (v4), 197 (v5e, "TPU v5 lite"),
#     459 (v5p, which jax names "TPU v5"), 918 (v6e, "TPU v6 lite") TFLOPS.
PEAK_BF16_FLOPS: Mapping[str, float] = {
    "NVIDIA H100 80GB HBM3": 989e12,  # SXM5
    "NVIDIA H100 PCIe": 756e12,
    "NVIDIA H100 NVL": 835e12,
    "NVIDIA H200": 989e12,  # SXM
    "NVIDIA H200 NVL": 835e12,
    "NVIDIA A100-SXM4-80GB": 312e12,
    "NVIDIA A100-SXM4-40GB": 312e12,
    "NVIDIA A100 80GB PCIe": 312e12,
    "NVIDIA A100-PCIE-40GB": 312e12,
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5": 459e12,
    "TPU v5p": 459e12,
    "TPU v6 lite": 918e12,
    "TPU v6e": 918e12,
}

_PEAK_WHERE = "train.peak_flops"


def check_peak_flops(value: Any) -> float | None:
    """``peak_flops`` (FLOP/s of one device; a number or a string such as
    ``"989e12"``) as a float, None when not given. Raises ConfigError for
    anything else."""
    if value is None:
        return None
    try:
        peak = None if isinstance(value, bool) else float(value)
    except (TypeError, ValueError):
        peak = None
    if peak is None or not math.isfinite(peak) or peak <= 0:
        raise ConfigError(f"peak_flops={value!r} is not a peak rate", where=_PEAK_WHERE,
                          expected="a positive number of FLOP/s per device, e.g. 989e12 "
                                   "for an H100's dense bfloat16 peak")
    return peak


def peak_flops_per_device(device_kind: str, override: float | None = None) -> float | None:
    """The override, else the table's peak for ``device_kind``, else None."""
    if override is not None:
        return override
    return PEAK_BF16_FLOPS.get(device_kind)


def model_flops_per_step(model_config: Any, batch_size: int,
                         lengths: tuple[int, int]) -> float | None:
    """``plan.train_flops`` for a T5 config; None for a model without one (the
    trainer takes any object with the model API, whose matrix products it
    cannot count)."""
    from explistops_jax import plan

    needed = ("num_encoder_layers", "num_decoder_layers", "emb_dim", "num_heads",
              "head_dim", "mlp_dim", "mlp_activations", "vocab_size")
    if model_config is None or not all(hasattr(model_config, k) for k in needed):
        return None
    return plan.train_flops(model_config, batch_size, lengths)


@dataclasses.dataclass(frozen=True)
class Throughput:
    """What a run's step records add about speed.

    Attributes:
      model_flops_per_step: ``plan.train_flops`` of the global batch (None: the
        model's FLOPs are not known; no TFLOP/s, no MFU).
      peak_flops: peak FLOP/s of all devices in use together (None: unknown; no MFU).
      device_kind: the devices' kind, for the log line that says which peak is used.
      num_devices: devices in use.
    """

    model_flops_per_step: float | None
    peak_flops: float | None
    device_kind: str = ""
    num_devices: int = 1

    @classmethod
    def for_run(cls, model_config: Any, batch_size: int, lengths: tuple[int, int],
                devices: Iterable[Any], peak_flops: float | None = None) -> "Throughput":
        """For a run on ``devices`` (the mesh's): the model's FLOPs per step of
        ``batch_size`` rows of ``lengths`` (inputs, targets), and the sum of the
        devices' peaks (``peak_flops`` per device where given, else the table;
        None when any device's kind is not in it)."""
        devices = list(devices)
        kinds = sorted({d.device_kind for d in devices})
        peaks = [peak_flops_per_device(d.device_kind, peak_flops) for d in devices]
        total = None if not peaks or None in peaks else float(sum(peaks))
        return cls(model_flops_per_step(model_config, batch_size, lengths), total,
                   ", ".join(kinds), len(devices))

    def fields(self, step_time: float, input_tokens: float | None,
               target_tokens: float) -> dict[str, float]:
        """The record's rate fields for one step of ``step_time`` seconds:

        * ``total_tokens_per_s``: non-padding input plus non-padding target
          tokens (``input_tokens + target_tokens``) per second; left out when
          ``input_tokens`` is None.
        * ``model_tflops_per_s``: model FLOPs per step / step time / 1e12.
        * ``mfu``: model FLOPs per step / step time / peak FLOP/s of all devices,
          a fraction (0.4 = 40%); left out when the peak or the FLOPs are unknown.
        """
        if step_time <= 0:
            return {}
        fields = {}
        if input_tokens is not None:
            fields["total_tokens_per_s"] = (input_tokens + target_tokens) / step_time
        if self.model_flops_per_step is not None:
            rate = self.model_flops_per_step / step_time
            fields["model_tflops_per_s"] = rate / 1e12
            if self.peak_flops:
                fields["mfu"] = rate / self.peak_flops
        return fields

    def describe(self) -> str:
        """One line for the log: which peak MFU is measured against."""
        flops = ("unknown model FLOPs (no TFLOP/s, no MFU)"
                 if self.model_flops_per_step is None
                 else f"{self.model_flops_per_step / 1e12:.4g} model TFLOP per step")
        peak = (f"peak {self.peak_flops / 1e12:.4g} TFLOP/s" if self.peak_flops
                else "no known peak (no MFU; set train.peak_flops)")
        return f"{self.num_devices} x {self.device_kind}: {flops}, {peak}"
