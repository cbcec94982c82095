"""What a preset's runs will cost, before any is trained: ``reproduce --dry-run``.

One row per run: its task, lengths, packing, batch, optimizer steps, the share
of its target positions that are padding and the model FLOPs it spends per
training example against the same run unpacked at the same lengths rule; with a
device memory, the per-device peak of its train step (``explistops plan``) and
the largest batch that fits. Padding and steps are measured over the training
split in index order: a packed epoch in its shuffled order packs the same
independent draws, so its rows differ by a fraction of a percent.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Sequence

from explistops_jax import lengths
from explistops_jax.study import Run

__all__ = ["Row", "rows_for", "format_rows"]


@dataclasses.dataclass(frozen=True)
class Row:
    run: Run
    steps: int
    examples_per_step: float
    target_padding: float
    flops_ratio: float | None        # FLOPs per example, packed / unpacked
    peak_gib: float | None = None
    largest_batch: int | None = None

    def to_json(self) -> dict[str, Any]:
        r = self.run
        return {"run": r.name, "task": r.task, "lengths": dict(r.feature_lengths),
                "eval_lengths": dict(r.eval_feature_lengths or {}), "pack": r.pack,
                "batch_size": r.batch_size, "steps": self.steps,
                "examples_per_step": round(self.examples_per_step, 2),
                "target_padding": round(self.target_padding, 4),
                "flops_per_example_vs_unpacked": self.flops_ratio,
                "peak_gib": self.peak_gib, "largest_batch": self.largest_batch}


@functools.lru_cache(maxsize=None)
def _packing(task: str, inputs: int, targets: int) -> lengths.Packing:
    return lengths.packing(task, "train", {"inputs": inputs, "targets": targets})


def _unpacked(run: Run) -> dict[str, int]:
    from explistops_jax import study

    return study.run_lengths(run.task, ("train", "validation"))


def _flops_ratio(run: Run, per_row: float) -> float | None:
    """Model FLOPs per training example of the run against the same run unpacked."""
    from explistops_jax import network, plan

    if not run.pack:
        return 1.0
    rows = 32_128 if run.spec.vocabulary == "sp" else 384  # the embedding's rows
    config = network.get_config(run.model_preset, vocab_size=rows, **run.model_overrides)
    unpacked = _unpacked(run)
    packed = plan.train_flops(config, 1, (run.feature_lengths["inputs"],
                                          run.feature_lengths["targets"])) / per_row
    plain = plan.train_flops(config, 1, (unpacked["inputs"], unpacked["targets"]))
    return round(packed / plain, 3)


def _row(run: Run) -> Row:
    train = lengths.split_lengths(run.task, "train")
    size = train.num_examples
    if run.pack:
        packed = _packing(run.task, run.feature_lengths["inputs"], run.feature_lengths["targets"])
        rows, padding = packed.rows, packed.padding["targets"]
    else:
        rows, padding = size, train.padding(run.feature_lengths)
    per_row = size / rows
    steps = run.train_steps or run.epochs * math.ceil(rows / run.batch_size)
    return Row(run, steps, per_row * run.batch_size, padding, _flops_ratio(run, per_row))


def rows_for(runs: Sequence[Run], *, device_memory: float | None = None,
             log: Callable[[str], None] | None = None) -> list[Row]:
    """The rows of ``runs`` (a pass over each packed task's training split;
    with ``device_memory``, one train-step compilation per shape and more for
    the largest batch)."""
    out = []
    for i, run in enumerate(runs, 1):
        if log:
            log(f"[{i}/{len(runs)}] {run.name}")
        row = _row(run)
        if device_memory is not None:
            row = _with_memory(row, device_memory)
        out.append(row)
    return out


def _with_memory(row: Row, device_memory: float) -> Row:
    from explistops_jax import plan

    r = row.run
    kwargs = dict(mesh={"data": 1, "model": 1},
                  lengths=(r.feature_lengths["inputs"], r.feature_lengths["targets"]),
                  dtype="bfloat16", optimizer=r.optimizer, vocab_size=None, backend="cpu")
    first = plan.plan(r.model_preset, batch_size=r.batch_size, **kwargs)
    largest = plan.largest_batch(device_memory, first, **kwargs)
    return dataclasses.replace(row, peak_gib=round(first.peak_bytes / plan.GIB, 2),
                               largest_batch=largest.batch)


def format_rows(rows: Sequence[Row]) -> str:
    """A Markdown table."""
    memory = any(r.peak_gib is not None for r in rows)
    head = ["run", "task", "lengths (in/tgt)", "pack", "batch", "≈ examples/step", "steps",
            "target padding", "FLOPs/example vs unpacked", "eval lengths"]
    if memory:
        head += ["peak GiB/device", "largest batch"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        r = row.run
        ev = r.eval_feature_lengths or r.feature_lengths
        cells = [r.name, r.task, f"{r.feature_lengths['inputs']}/{r.feature_lengths['targets']}",
                 "yes" if r.pack else "no", str(r.batch_size), f"{row.examples_per_step:.1f}",
                 f"{row.steps:,}", f"{100 * row.target_padding:.1f}%",
                 "" if row.flops_ratio is None else f"{row.flops_ratio:.2f}",
                 f"{ev['inputs']}/{ev['targets']}"]
        if memory:
            cells += [f"{row.peak_gib}", str(row.largest_batch)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
