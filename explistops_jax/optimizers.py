"""Optimizers and learning-rate schedules (optax), with T5's and the study's defaults.

- :func:`adafactor`: T5's fine-tuning optimizer. Defaults are T5's: constant
  learning rate 1e-3, factored second moments, no momentum, decay rate 0.8,
  update clipping at 1.0, updates scaled by the parameter's RMS.
- :func:`adamw`: the study's setup (the authors' PyTorch code: AdamW, learning
  rate 3e-4).
- :class:`Schedule`: ``constant``; ``rsqrt`` (T5 pre-training: flat or linear
  warmup, then inverse square root decay); ``linear`` (linear warmup, then linear
  decay to ``end_learning_rate``, Hugging Face's default fine-tuning schedule).

An :class:`Optimizer` is a recipe, not yet an optax transformation: the trainer
calls :meth:`Optimizer.build` with the run's total number of steps, which a
``linear`` schedule without explicit ``decay_steps`` decays over (so an
``EPOCHS``-long run needs no hand-computed step count). Gradient accumulation over
microbatches lives in the train step (``trainer.TrainConfig.num_microbatches``).
Everything here is plain Python; ``explistops_jax.train`` registers it with gin.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax.numpy as jnp
import optax

__all__ = ["Schedule", "Optimizer", "adafactor", "adamw", "get_optimizer"]

SCHEDULE_KINDS = ("constant", "rsqrt", "linear")


@dataclasses.dataclass(frozen=True)
class Schedule:
    """A learning-rate schedule: step -> learning rate.

    Attributes:
      kind: ``constant`` | ``rsqrt`` | ``linear``.
      learning_rate: the peak (and for ``constant`` the only) value.
      warmup_steps: ``rsqrt``: steps before the decay starts (flat at the peak, as
        in T5's ``1/sqrt(max(step, 10_000))``, or a linear ramp with
        ``linear_warmup``); ``linear``: steps of the linear ramp from 0.
      linear_warmup: ``rsqrt`` only: ramp up from 0 instead of a flat start.
      decay_steps: ``linear`` only: the step at which ``end_learning_rate`` is
        reached; None = the run's total number of steps.
      end_learning_rate: ``linear`` only.
    """

    kind: str = "constant"
    learning_rate: float = 1e-3
    warmup_steps: int = 0
    linear_warmup: bool = False
    decay_steps: int | None = None
    end_learning_rate: float = 0.0

    def __post_init__(self):
        if self.kind not in SCHEDULE_KINDS:
            raise ValueError(f"Schedule.kind {self.kind!r} is not one of {SCHEDULE_KINDS}")
        if self.warmup_steps < 0:
            raise ValueError(f"Schedule.warmup_steps must be >= 0, got {self.warmup_steps}")

    def build(self, total_steps: int | None = None) -> optax.Schedule:
        """The optax schedule; ``total_steps`` is used by ``linear`` when
        ``decay_steps`` is None."""
        peak, warmup = self.learning_rate, self.warmup_steps
        if self.kind == "constant":
            return optax.constant_schedule(peak)
        if self.kind == "rsqrt":
            return _rsqrt(peak, warmup, self.linear_warmup)
        decay_steps = self.decay_steps or total_steps
        if not decay_steps:
            raise ValueError("a linear schedule needs decay_steps or the run's total steps")
        decay = optax.linear_schedule(peak, self.end_learning_rate,
                                      max(decay_steps - warmup, 1))
        if not warmup:
            return decay
        return optax.join_schedules(
            [optax.linear_schedule(0.0, peak, warmup), decay], boundaries=[warmup])


def _rsqrt(peak: float, warmup_steps: int, linear_warmup: bool) -> optax.Schedule:
    """``peak * sqrt(warmup / max(step, warmup))``, optionally ramped up from 0."""
    warmup = max(warmup_steps, 1)

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        decay = jnp.sqrt(warmup / jnp.maximum(step, warmup))
        if linear_warmup:
            decay = decay * jnp.minimum(step / warmup, 1.0)
        return peak * decay

    return schedule


@dataclasses.dataclass(frozen=True)
class Optimizer:
    """An optimizer recipe: a factory from a schedule to an optax transformation,
    plus the schedule (kept so the trainer can log the learning rate)."""

    name: str
    schedule: Schedule
    make: Callable[[optax.Schedule], optax.GradientTransformation]
    grad_clip_norm: float | None = None

    def build(self, total_steps: int | None = None
              ) -> tuple[optax.GradientTransformation, optax.Schedule]:
        """``(transformation, schedule)`` for a run of ``total_steps`` steps."""
        schedule = self.schedule.build(total_steps)
        tx = self.make(schedule)
        if self.grad_clip_norm:
            tx = optax.chain(optax.clip_by_global_norm(self.grad_clip_norm), tx)
        return tx, schedule


def adafactor(
    learning_rate: float = 1e-3,
    schedule: Schedule | None = None,
    *,
    decay_rate: float = 0.8,
    clipping_threshold: float | None = 1.0,
    multiply_by_parameter_scale: bool = True,
    momentum: float | None = None,
    factored: bool = True,
    min_dim_size_to_factor: int = 128,
    epsilon: float = 1e-30,
    weight_decay_rate: float | None = None,
    grad_clip_norm: float | None = None,
) -> Optimizer:
    """Adafactor with T5's fine-tuning defaults (constant 1e-3).

    ``schedule`` overrides ``learning_rate`` (which means ``Schedule("constant",
    learning_rate)``). ``grad_clip_norm`` adds global-norm clipping before the
    update (T5 uses none: Adafactor clips its updates by ``clipping_threshold``).
    """
    schedule = schedule or Schedule("constant", learning_rate)

    def make(lr: optax.Schedule) -> optax.GradientTransformation:
        return optax.adafactor(
            learning_rate=lr, min_dim_size_to_factor=min_dim_size_to_factor,
            decay_rate=decay_rate, multiply_by_parameter_scale=multiply_by_parameter_scale,
            clipping_threshold=clipping_threshold, momentum=momentum, eps=epsilon,
            factored=factored, weight_decay_rate=weight_decay_rate)

    return Optimizer("adafactor", schedule, make, grad_clip_norm)


def adamw(
    learning_rate: float = 3e-4,
    schedule: Schedule | None = None,
    *,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    grad_clip_norm: float | None = None,
) -> Optimizer:
    """AdamW, the study's optimizer (learning rate 3e-4, constant by default).

    ``weight_decay`` defaults to 0.0 (Hugging Face's ``AdamW``/Trainer default;
    ``torch.optim.AdamW`` uses 0.01). Decay applies to every parameter, as in
    the authors' code, which passed ``model.parameters()`` unfiltered.
    """
    schedule = schedule or Schedule("constant", learning_rate)

    def make(lr: optax.Schedule) -> optax.GradientTransformation:
        return optax.adamw(lr, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)

    return Optimizer("adamw", schedule, make, grad_clip_norm)


_OPTIMIZERS = {"adafactor": adafactor, "adamw": adamw}


def get_optimizer(name: str, **kwargs) -> Optimizer:
    """``adafactor`` or ``adamw`` by name (for command-line flags)."""
    if name not in _OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; known: {', '.join(_OPTIMIZERS)}")
    return _OPTIMIZERS[name](**kwargs)
