"""Memory plan of a train step: will this model, mesh and batch fit a device?

``plan(...)`` builds the train state abstractly (``train_step.state_layout``:
shapes and shardings, nothing allocated), lowers and compiles the sharded train
step for abstract batches, and reads XLA's memory analysis of the compiled
per-device program: arguments (state and batch), outputs, what outputs reuse of
the donated state (aliases) and temporaries (activations, gradients). Their sum
less the aliased bytes is the step's peak per device: what T5X users ask before
they rent a pod.

The compiler is the one of the devices given: forced host CPU devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=N``, which
``explistops plan`` sets) answer for any mesh on a laptop; a GPU or TPU backend
answers for its own kernels and fusions. CPU temporaries are an estimate of an
accelerator's (XLA's CPU backend fuses less and computes bf16 dots in float32);
docs/benchmarks.md compares both against a measured peak on an H200.

Runtime overheads outside the program (CUDA context, allocator fragmentation,
a second copy of the state while a checkpoint is written without donation) are
not in the plan.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

from explistops_jax.errors import UserError

__all__ = ["GIB", "DEVICE_SIZES_GIB", "MemoryPlan", "LargestBatch", "parse_mesh", "plan",
           "largest_batch", "format_largest", "format_plan", "abstract_batch", "random_batch",
           "train_flops"]

GIB = 1024 ** 3
# Common accelerator memory sizes (GiB): v5e/T4, A10/v4-ish, A100-40, A100/H100-80, H200.
DEVICE_SIZES_GIB = (16, 24, 40, 80, 141)


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
    """Per-device bytes of one compiled train step."""

    model: str
    mesh: dict[str, int]
    batch_size: int
    lengths: dict[str, int]
    dtype: str
    optimizer: str
    backend: str
    num_params: int
    params_bytes: int  # this device's shard of the parameters
    optimizer_bytes: int  # this device's shard of the optimizer state
    argument_bytes: int  # XLA: state + batch
    output_bytes: int  # XLA: new state + metrics
    alias_bytes: int  # XLA: outputs written over donated arguments
    temp_bytes: int  # XLA: activations, gradients, workspace

    @property
    def peak_bytes(self) -> int:
        """Arguments + outputs + temporaries, outputs over donated inputs counted once."""
        return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes

    def fits(self, device_gib: float) -> bool:
        return self.peak_bytes <= device_gib * GIB

    def to_json(self) -> dict:
        out = dataclasses.asdict(self)
        out["peak_bytes"] = self.peak_bytes
        out["fits_gib"] = {str(g): self.fits(g) for g in DEVICE_SIZES_GIB}
        return out


def parse_mesh(text: str) -> dict[str, int]:
    """``"data=1,model=8"`` -> ``{"data": 1, "model": 8}`` (either may be left out: 1)."""
    mesh = {"data": 1, "model": 1}
    seen = set()
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = (x.strip() for x in part.partition("="))
        if not sep or name not in mesh or not (value.isascii() and value.isdigit()) \
                or int(value) < 1:
            raise UserError(f"bad mesh entry {part!r}", where="--mesh",
                            expected="data=N,model=M with positive integers")
        if name in seen:
            raise UserError(f"the {name} axis is given twice in {text!r}", where="--mesh",
                            expected="each of data and model at most once")
        seen.add(name)
        mesh[name] = int(value)
    return mesh


def _check(config, mesh: dict[str, int], batch_size: int) -> None:
    """The mistakes that would otherwise surface as XLA sharding errors."""
    model_ways = mesh["model"]
    dims = {"num_heads": config.num_heads, "mlp_dim": config.mlp_dim,
            "vocab_size": config.vocab_size}
    bad = [f"{k}={v}" for k, v in dims.items() if v % model_ways]
    if bad:
        raise UserError(f"model axis {model_ways} does not divide {', '.join(bad)}",
                        where="--mesh", expected="a model axis dividing the heads, MLP "
                                                 "width and vocabulary")
    if batch_size < 1 or batch_size % mesh["data"]:
        raise UserError(f"batch {batch_size} is not divisible by the data axis "
                        f"{mesh['data']}", where="--batch",
                        expected="a positive multiple of the data axis")


def _devices(count: int, backend: str | None) -> list:
    import jax

    try:
        devices = jax.devices(backend) if backend else jax.devices()
    except RuntimeError as e:  # a platform JAX has no backend for here
        raise UserError(f"no {backend} devices: {str(e).splitlines()[0]}", where="--backend",
                        expected="cpu, or the platform of this machine's accelerator") from None
    if len(devices) < count:
        raise UserError(
            f"the mesh needs {count} devices, {len(devices)} "
            f"{devices[0].platform} device(s) are available",
            where="--mesh", expected=f"at most {len(devices)} devices, or --backend cpu "
                                     "(forced host devices)")
    return devices[:count]


def _shard_bytes(tree: Any) -> int:
    """Bytes of one device's shard of every leaf (abstract, with shardings)."""
    import jax
    import numpy as np

    total = 0
    for leaf in jax.tree.leaves(tree):
        shape = leaf.sharding.shard_shape(leaf.shape)
        total += math.prod(shape) * np.dtype(leaf.dtype).itemsize
    return total


def plan(model_name: str, *, mesh: dict[str, int], batch_size: int,
         lengths: Sequence[int], dtype: str = "float32", optimizer: str = "adafactor",
         vocab_size: int | None = None, backend: str | None = None,
         remat_policy: str | None = None) -> MemoryPlan:
    """Compiles the train step for this shape ahead of time and measures it.

    Args:
      model_name: a ``network.PRESETS`` name.
      mesh: ``{"data": D, "model": M}``; the first D*M devices of ``backend`` are used.
      batch_size: the global batch.
      lengths: ``(inputs, targets)`` token lengths.
      dtype: activation dtype (parameters stay float32, as in T5X).
      optimizer: ``adafactor`` or ``adamw``.
      backend: ``jax.devices(backend)``; None: the default backend.
      remat_policy: override the preset's rematerialisation ("none", "full", "dots").
    """
    import jax

    from explistops_jax import network, optimizers, partitioning, train_step
    from explistops_jax.model import EncoderDecoderModel

    if model_name not in network.PRESETS:
        raise UserError(f"unknown model preset {model_name!r}", where="--model",
                        expected=", ".join(network.PRESETS))
    if optimizer not in ("adafactor", "adamw"):
        raise UserError(f"unknown optimizer {optimizer!r}", where="--optimizer",
                        expected="adafactor or adamw")
    if len(lengths) != 2 or min(lengths) < 1:
        raise UserError(f"bad lengths {tuple(lengths)}", where="--lengths",
                        expected="INPUTS,TARGETS, two positive integers")
    try:
        known = jax.numpy.dtype(dtype) in network.ACTIVATION_DTYPES
    except TypeError:
        known = False
    if not known:
        raise UserError(f"unknown dtype {dtype!r}", where="--dtype",
                        expected="float32, bfloat16 or float16 (the activations' dtype)")
    if vocab_size is not None and vocab_size < 1:
        raise UserError(f"vocabulary size {vocab_size}", where="--vocab-size",
                        expected="a positive integer")
    overrides: dict[str, Any] = {"dtype": dtype}
    if vocab_size is not None:
        overrides["vocab_size"] = vocab_size
    if remat_policy:
        overrides["remat_policy"] = remat_policy
    config = network.get_config(model_name, **overrides)
    _check(config, mesh, batch_size)
    devices = _devices(mesh["data"] * mesh["model"], backend)

    model = EncoderDecoderModel(config)
    partitioner = partitioning.Partitioner(
        partitioning.PartitionConfig(num_partitions=mesh["model"]), devices=devices)
    tx, schedule = optimizers.get_optimizer(optimizer).build(total_steps=1000)
    layout = train_step.state_layout(model, tx, partitioner)
    batch = abstract_batch(partitioner, batch_size, lengths)
    step = partitioner.jit(train_step.make_train_step(model, tx, schedule),
                           in_shardings=(layout.shardings, partitioner.batch_sharding()),
                           out_shardings=(layout.shardings, partitioner.sharding()),
                           donate_argnums=0)
    memory = step.lower(layout.abstract, batch).compile().memory_analysis()
    return MemoryPlan(
        model=model_name, mesh=dict(mesh), batch_size=batch_size,
        lengths={"inputs": lengths[0], "targets": lengths[1]}, dtype=str(dtype),
        optimizer=optimizer, backend=devices[0].platform,
        num_params=sum(math.prod(x.shape) for x in jax.tree.leaves(layout.abstract.params)),
        params_bytes=_shard_bytes(layout.abstract.params),
        optimizer_bytes=_shard_bytes(layout.abstract.opt_state),
        argument_bytes=int(memory.argument_size_in_bytes),
        output_bytes=int(memory.output_size_in_bytes),
        alias_bytes=int(memory.alias_size_in_bytes),
        temp_bytes=int(memory.temp_size_in_bytes))


def abstract_batch(partitioner, batch_size: int, lengths: Sequence[int]) -> dict:
    """The trainer's batch features as sharded ``jax.ShapeDtypeStruct``s."""
    import jax
    import jax.numpy as jnp

    sharding = partitioner.batch_sharding()
    shapes = {"encoder_input_tokens": (batch_size, lengths[0]),
              "decoder_input_tokens": (batch_size, lengths[1]),
              "decoder_target_tokens": (batch_size, lengths[1]),
              "decoder_loss_weights": (batch_size, lengths[1])}
    return {k: jax.ShapeDtypeStruct(s, jnp.int32, sharding=sharding)
            for k, s in shapes.items()}


def train_flops(config, batch_size: int, lengths: Sequence[int]) -> float:
    """Model FLOPs of one train step of ``config`` (a ``network.T5Config``) on
    ``batch_size`` examples of ``lengths`` (inputs, targets): the numerator of MFU
    as PaLM defines it (Chowdhery et al. 2022, appendix B), so that figures compare
    across hardware and code: 2 x m x n x k for every matrix product of the
    forward pass (projections, MLP, attention's two products, the output head;
    causal attention counted whole, as it is computed), three times that for
    forward and backward, and nothing for element-wise work, gathers, the
    optimizer or rematerialised recomputation."""
    inputs, targets = lengths
    d, joined = config.emb_dim, config.num_heads * config.head_dim
    mlp = 2 * d * config.mlp_dim * (len(config.mlp_activations) + 1)  # per token
    projection = 2 * d * joined  # one of q, k, v, out, per token
    products = lambda queries, keys: 2 * 2 * queries * keys * joined  # logits, weights @ v
    encoder = config.num_encoder_layers * (
        inputs * (4 * projection + mlp) + products(inputs, inputs))
    decoder = config.num_decoder_layers * (
        targets * (4 * projection + mlp) + products(targets, targets)  # self-attention
        + targets * 2 * projection + inputs * 2 * projection  # cross: q, out; k, v
        + products(targets, inputs))
    head = 2 * d * config.vocab_size * targets
    return 3.0 * batch_size * (encoder + decoder + head)


def random_batch(rng, batch_size: int, lengths: Sequence[int], vocab_size: int) -> dict:
    """A host batch of random token ids in :func:`abstract_batch`'s layout (for
    benchmarks: a train step does not care where its tokens come from)."""
    import numpy as np

    targets = rng.integers(2, vocab_size, (batch_size, lengths[1])).astype(np.int32)
    return {"encoder_input_tokens":
                rng.integers(2, vocab_size, (batch_size, lengths[0])).astype(np.int32),
            "decoder_input_tokens": np.pad(targets, ((0, 0), (1, 0)))[:, :-1],
            "decoder_target_tokens": targets,
            "decoder_loss_weights": np.ones_like(targets)}


@dataclasses.dataclass(frozen=True)
class LargestBatch:
    """What :func:`largest_batch` found: ``batch`` fits (0: not even one row per
    data shard does) and, when ``over`` is set, ``batch`` + one row per data shard
    does not; ``over`` is None only when the search stopped at its compile budget,
    so ``batch`` fits but may not be the largest."""

    device_gib: float
    batch: int
    plan: MemoryPlan | None  # the plan of ``batch`` (None when batch is 0)
    over: MemoryPlan | None  # the plan of the next batch, which does not fit
    compilations: int  # plans compiled, the first one included

    def to_json(self) -> dict:
        return {"device_gib": self.device_gib, "batch": self.batch,
                "peak_bytes": self.plan.peak_bytes if self.plan else None,
                "next_batch": self.over.batch_size if self.over else None,
                "next_peak_bytes": self.over.peak_bytes if self.over else None,
                "compilations": self.compilations}


def largest_batch(device_gib: float, first: MemoryPlan, *, max_compilations: int = 16,
                  **plan_kwargs) -> LargestBatch:
    """The largest global batch (a multiple of the data axis) whose step fits
    ``device_gib``: a batch that fits next to one a row per data shard larger that
    does not, both compiled (peak memory is taken to grow with the batch).

    Each step compiles one candidate: the secant through the two plans nearest
    the limit (exact where the peak is affine in the batch, state plus per-row
    activations: four compilations for a large model), if it falls inside the
    bracket of the largest batch known to fit and the smallest known not to
    (while nothing is over the limit: at most 64x the largest fitting batch),
    followed by its neighbour, which ends the search when the secant was right.
    Where the secant says nothing or falls outside: the bracket's middle, or 8x
    the largest fitting batch while nothing is over. Stops after
    ``max_compilations`` plans, with ``over`` None.
    """
    limit = device_gib * GIB
    unit = first.mesh["data"]
    points = {first.batch_size: first}

    def at(batch: int) -> MemoryPlan:
        if batch not in points:
            points[batch] = plan(first.model, batch_size=batch, **plan_kwargs)
        return points[batch]

    def fits(batch: int) -> bool:
        return points[batch].fits(device_gib)

    def bracket() -> tuple[int, int | None]:
        lo = max((b for b in points if fits(b)), default=0)
        hi = min((b for b in points if b > lo and not fits(b)), default=None)
        return lo, hi

    def secant() -> float | None:
        # the pair of plans nearest the limit whose peaks differ by enough to
        # give a slope (0.5% of the device: XLA's peak can stay flat over small
        # batches, where neighbouring plans differ by a few bytes)
        near = sorted(points, key=lambda b: abs(points[b].peak_bytes - limit))
        for i, a in enumerate(near):
            for b in near[:i]:
                rise = points[b].peak_bytes - points[a].peak_bytes
                if abs(rise) >= 0.005 * limit and rise / (b - a) > 0:
                    return a + (limit - points[a].peak_bytes) * (b - a) / rise
        return None

    if fits(first.batch_size):
        at(2 * first.batch_size if first.batch_size > unit else first.batch_size + unit)
    elif first.batch_size > unit:
        at(max(first.batch_size // 2 // unit * unit, unit))
    while len(points) < max_compilations:
        lo, hi = bracket()
        if hi is not None and hi - lo <= unit:
            break
        low, high = lo + unit, (hi - unit if hi is not None else 64 * max(lo, unit))
        estimate = secant()
        guess = None if estimate is None else int(max(estimate, 0)) // unit * unit
        placed = guess is not None and low <= guess <= high
        if not placed:
            guess = (lo + (hi - lo) // unit // 2 * unit if hi is not None  # bisect
                     else 8 * max(lo, unit))  # grow
        at(guess)
        neighbour = guess + unit if fits(guess) else guess - unit
        if placed and low <= neighbour <= high and len(points) < max_compilations:
            at(neighbour)
    lo, hi = bracket()
    over = points[hi] if hi is not None and hi - lo <= unit else None
    return LargestBatch(device_gib, lo, points.get(lo), over, len(points))


def format_largest(found: LargestBatch) -> str:
    """One line: the largest batch for the device size, and the evidence."""
    head = f"largest batch for {found.device_gib:g} GiB:"
    tried = f"{found.compilations} plans compiled"
    if found.plan is None and found.over is not None:
        return (f"{head} none (batch {found.over.batch_size}, one row per data shard, "
                f"needs {found.over.peak_bytes / GIB:.3f} GiB; {tried})")
    if found.plan is None:
        return f"{head} none found ({tried})"
    fit = f"{found.batch} (peak {found.plan.peak_bytes / GIB:.3f} GiB"
    if found.over is None:
        return f"{head} at least {fit}; the search stopped after {tried})"
    return (f"{head} {fit}; batch {found.over.batch_size} needs "
            f"{found.over.peak_bytes / GIB:.3f} GiB; {tried})")


def format_plan(p: MemoryPlan, *, largest: LargestBatch | None = None) -> str:
    """The plan as the text ``explistops plan`` prints."""
    def gib(n: int) -> str:
        return f"{n / GIB:8.2f} GiB"

    mesh = ",".join(f"{k}={v}" for k, v in p.mesh.items())
    lines = [
        f"model {p.model} ({p.num_params / 1e6:.1f}M parameters), mesh {mesh}, "
        f"batch {p.batch_size}, lengths {p.lengths['inputs']},{p.lengths['targets']}, "
        f"{p.dtype} activations, {p.optimizer}, compiled for {p.backend}",
        "per device:",
        f"  parameters        {gib(p.params_bytes)}",
        f"  optimizer state   {gib(p.optimizer_bytes)}",
        f"  XLA arguments     {gib(p.argument_bytes)}   (state + batch)",
        f"  XLA outputs       {gib(p.output_bytes)}   ({gib(p.alias_bytes).strip()} "
        "written over the donated state)",
        f"  XLA temporaries   {gib(p.temp_bytes)}   (activations, gradients)",
        f"  peak              {gib(p.peak_bytes)}",
        "fits: " + "  ".join(f"{g} GiB {'yes' if p.fits(g) else 'no'}"
                             for g in DEVICE_SIZES_GIB),
    ]
    if largest is not None:
        lines.append(format_largest(largest))
    return "\n".join(lines)
