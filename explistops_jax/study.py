"""Every run of the study, defined once.

A :class:`Run` is one training run and the evaluations that follow it: model,
task, vocabulary, lengths, epochs, batch, optimizer and schedule, dropout,
evaluation splits and period, initial checkpoint. The presets are lists of runs:

* ``cpu``: a tiny T5 trained from scratch on a small Explained-ListOps config
  (:data:`CPU_DATASET`), without explanations and with medium ones, at an equal
  number of training examples (the study's protocol); minutes on a laptop CPU.
* ``cpu-study``: the study's findings at that scale (:data:`FINDINGS`), reusing
  the ``cpu`` runs and adding evaluation splits, subsets and the modular-sum
  dataset.
* ``paper``: the study's grid for accelerators (T5 1.0 small/base/large/3B x
  none/short/medium/long on explistops30, 30 epochs, AdamW 3e-4, about 8 examples
  a step; the length-generalization, larger-numbers and data-efficiency runs),
  from scratch with the compact vocabulary, or fine-tuned from a pretrained
  checkpoint per size with T5's SentencePiece vocabulary (the ``_sp`` tasks).

Everything else reads these: ``explistops reproduce`` trains them
(:mod:`explistops_jax.reproduce`), the gin files under ``gin_configs/experiments``
and ``gin_configs/t5x`` are written from them (:mod:`explistops_jax.gin_writer`),
and the report reads the run records they leave.

Lengths come from the data (:mod:`explistops_jax.lengths`): a run's rows hold the
longest example of every split it trains and validates on, and its evaluation
lengths the longest of every split it scores, each rounded up to a multiple of 8,
so nothing is cut. The paper grid packs the styles whose rows would otherwise be
mostly padding (:data:`PAPER_PACKING`). Pure Python: no JAX, TensorFlow or SeqIO.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
from typing import Any, Mapping, Sequence

from explistops_jax import data, explain, lengths, run_info
from explistops_jax.errors import UserError
from explistops_jax.task_spec import TaskSpec

__all__ = [
    "CPU_DATASET",
    "FINDINGS",
    "PAPER_SIZES",
    "PRESETS",
    "Run",
    "cpu_runs",
    "cpu_study_runs",
    "gin_runs",
    "paper_runs",
    "run_lengths",
    "runs_for",
    "t5x_lengths",
    "t5x_smoke_run",
    "t5x_train_steps",
]


@dataclasses.dataclass(frozen=True)
class Run:
    """One training run and the evaluations that follow it.

    ``train_examples`` and ``epochs`` fix how many examples the model sees, the
    same for every style of a preset (the study's protocol: equal examples, not
    equal wall time). ``batch_size`` counts rows; a packed row holds several
    examples (``pack``; the targets of a row hold ``targets_factor`` times the
    longest target, :func:`lengths.row_lengths`).
    """

    name: str
    model: str                       # the label in the report (a preset name)
    model_preset: str
    model_overrides: Mapping[str, Any]
    style: str
    seed: int
    dataset: str
    condition: str                   # main | length_generalization | larger_numbers | data_efficiency | ...
    task: str
    train_examples: int
    epochs: int
    batch_size: int
    feature_lengths: Mapping[str, int]
    optimizer: str = "adamw"
    learning_rate: float = 3e-4
    schedule: str = "constant"       # constant | linear (warmup, then linear decay to 0)
    warmup_steps: int = 0
    pack: bool = False
    targets_factor: int = 1
    eval_splits: tuple[str, ...] = ("test",)
    eval_feature_lengths: Mapping[str, int] | None = None
    eval_period: int | None = None
    eval_max_examples: int | None = None
    validation_examples: int | None = 200
    initial_checkpoint: str | None = None
    dropout_rate: float = 0.0
    train_steps: int | None = None   # None: ``epochs`` passes over the training split

    @property
    def spec(self) -> TaskSpec:
        return TaskSpec.parse(self.task)

    def run_info(self, preset: str) -> dict[str, Any]:
        """What the run records in run.json beside the trainer's facts
        (:func:`explistops_jax.run_info.study_facts`; the report reads them)."""
        return run_info.study_facts(
            run_name=self.name, preset=preset, model=self.model, style=self.style,
            seed=self.seed, dataset=self.dataset, train_examples=self.train_examples,
            condition=self.condition, epochs=self.epochs,
            from_pretrained=self.initial_checkpoint is not None, batch_size=self.batch_size,
            optimizer=self.optimizer, learning_rate=self.learning_rate,
            schedule=self.schedule, warmup_steps=self.warmup_steps)

    def with_eval_splits(self, splits: Sequence[str]) -> "Run":
        """The run scoring ``splits`` too, its evaluation lengths grown to hold them."""
        extra = tuple(s for s in splits if s not in self.eval_splits)
        if not extra:
            return self
        eval_splits = self.eval_splits + extra
        return dataclasses.replace(self, eval_splits=eval_splits,
                                   eval_feature_lengths=eval_lengths(self.task, eval_splits))


def run_lengths(task: str, splits: Sequence[str], *, pack: bool = False,
                targets_factor: int = 1, vocabulary: Any = None) -> dict[str, int]:
    """The row lengths of a run that reads ``splits`` of ``task`` (the first one
    decides the packing's input share: the training split)."""
    parts = [lengths.split_lengths(task, split, vocabulary=vocabulary) for split in splits]
    need = dataclasses.replace(lengths.combine(parts), total=parts[0].total,
                               num_examples=parts[0].num_examples)
    return lengths.row_lengths(need, pack=pack, targets_factor=targets_factor)


def eval_lengths(task: str, splits: Sequence[str]) -> dict[str, int]:
    """Lengths that hold every example of the splits a run scores."""
    return run_lengths(task, splits)


# ----------------------------------------------------------------- the CPU preset

# Smaller problems than explistops30 (defined with the other dataset configs in
# data.py, so every tool knows it), so that a tiny model learns the steps in minutes
# on a CPU: values 0-9 with SM modulo 10, at most 4 arguments, nesting depth at most
# 3, lengths 10-20; the "longer" generalization split has lengths 20-40, depth <= 4.
CPU_DATASET = data.get_config("explistops10_cpu")
CPU_TRAIN_EXAMPLES = CPU_DATASET.split("train").num_examples

# A tiny T5 1.1 (gated GELU, untied head), sized for 2 CPU cores.
CPU_MODEL = "t5_1_1_tiny"
CPU_MODEL_OVERRIDES = dict(emb_dim=128, num_heads=4, head_dim=32, mlp_dim=256,
                           num_encoder_layers=3, num_decoder_layers=3)
CPU_EPOCHS = 3
CPU_BATCH_SIZE = 64
# AdamW's peak learning rate per style (200 warm-up steps, then linear decay to 0),
# chosen on the validation split (200 examples, seed 0, 3 epochs) among 1e-3, 2e-3
# and 3e-3: without explanations 42.5 / 44.0 / 20.5% (at 3e-3 the model never left
# its first plateau); with medium explanations - / 66.5 / 76.0%. The other explained
# styles take medium's.
CPU_LEARNING_RATES = {"none": 2e-3, "short": 3e-3, "medium": 3e-3, "long": 3e-3}
CPU_WARMUP_STEPS = 200
CPU_EVAL_PERIOD = 313        # about one epoch: validation accuracy over training
CPU_VALIDATION_EXAMPLES = 200


def cpu_runs(styles: Sequence[str] = ("none", "medium"), seeds: Sequence[int] = (0,),
             *, dataset: data.DatasetConfig = CPU_DATASET, epochs: int = CPU_EPOCHS,
             batch_size: int = CPU_BATCH_SIZE,
             model_overrides: Mapping[str, Any] = CPU_MODEL_OVERRIDES,
             feature_lengths: Mapping[str, Mapping[str, int]] | None = None,
             eval_feature_lengths: Mapping[str, int] | None = None,
             eval_period: int | None = CPU_EVAL_PERIOD, vocabulary: str = "domain",
             eval_splits: Sequence[str] = ("test", "longer")) -> list[Run]:
    """The CPU demo: one tiny model from scratch per style and seed, each seeing
    ``epochs`` passes over the same training split (equal examples per style).
    Lengths: from the data unless given."""
    train_examples = dataset.split("train").num_examples
    eval_splits = tuple(s for s in eval_splits if s in dataset.splits)
    runs = []
    for seed in seeds:
        for style in styles:
            task = TaskSpec(dataset.name, style, vocabulary=vocabulary).name
            runs.append(Run(
                name=f"cpu_{style}_seed{seed}", model="cpu_tiny", model_preset=CPU_MODEL,
                model_overrides=dict(model_overrides), style=style, seed=seed,
                dataset=dataset.name, condition="main", task=task,
                train_examples=train_examples, epochs=epochs, batch_size=batch_size,
                feature_lengths=dict(feature_lengths[style]) if feature_lengths
                else run_lengths(task, ("train", "validation")),
                optimizer="adamw", learning_rate=CPU_LEARNING_RATES[style],
                schedule="linear", warmup_steps=CPU_WARMUP_STEPS, pack=False,
                eval_splits=eval_splits,
                eval_feature_lengths=dict(eval_feature_lengths) if eval_feature_lengths
                else eval_lengths(task, eval_splits),
                eval_period=eval_period, validation_examples=CPU_VALIDATION_EXAMPLES))
    return runs


# ----------------------------------------------------------------- the paper grid

PAPER_SIZES = ("small", "base", "large", "3B")
PAPER_EPOCHS = 30
PAPER_BATCH_SIZE = 8          # the study's batch, in examples
PAPER_LEARNING_RATE = 3e-4
PAPER_DROPOUT = 0.1           # T5's fine-tuning default (the study does not say)
PAPER_SUBSETS = (2_000, 10_000)
# Packing per style (the project's choice, measured by `explistops reproduce
# --preset paper --dry-run`, table in docs/reproduce.md): unpacked, explistops30's
# rows would be 52-75% padding in every style (none's targets are 2 tokens in rows
# of 8; medium's average 100 tokens in rows of 192). Packed, with the targets of a
# row holding this factor times the longest target, every style's target padding
# is 1.5-14%: the smallest factor under 20%.
PAPER_PACKING = {"none": 1, "short": 2, "medium": 2, "long": 2}
# A packed row then holds about 3.3 (medium) to 3.9 (none) examples, so a batch of
# 2 rows trains on about 7-8 examples a step, as the study's batch of 8 did.
PAPER_PACKED_ROWS = 2
# Public T5X checkpoints (gs://t5-data/pretrained_models/t5x/...) and their steps.
PUBLIC_T5X_CHECKPOINTS = {
    "small": ("gs://t5-data/pretrained_models/t5x/t5_small/checkpoint_1000000", 1_000_000),
    "base": ("gs://t5-data/pretrained_models/t5x/t5_base/checkpoint_999900", 999_900),
    "large": ("gs://t5-data/pretrained_models/t5x/t5_large/checkpoint_1000700", 1_000_700),
    "3B": ("gs://t5-data/pretrained_models/t5x/t5_3B/checkpoint_1000000", 1_000_000),
}

PAPER_CONDITIONS = ("main", "length_generalization", "larger_numbers", "data_efficiency")


def _paper_run(size: str, style: str, seed: int, dataset: str, condition: str,
               eval_splits: tuple[str, ...], *, subset: int | None = None,
               suffix: str = "", checkpoint: str | None = None) -> Run:
    preset = f"t5_1_0_{size}"
    sp = checkpoint is not None
    task = TaskSpec(dataset, style, subset=subset, vocabulary="sp" if sp else "domain").name
    factor = PAPER_PACKING[style]
    pack = factor is not None
    # An _sp task's lengths are measured with T5's SentencePiece (configured by the
    # caller: $EXPLISTOPS_SPM_PATH), the others' read from the table.
    feature_lengths = run_lengths(task, ("train", "validation"), pack=pack,
                                  targets_factor=factor or 1)
    train_examples = subset or data.get_config(dataset).split("train").num_examples
    return Run(
        name=f"{preset}_{style}{suffix}_seed{seed}", model=preset, model_preset=preset,
        model_overrides={}, style=style, seed=seed, dataset=dataset, condition=condition,
        task=task, train_examples=train_examples, epochs=PAPER_EPOCHS,
        batch_size=PAPER_PACKED_ROWS if pack else PAPER_BATCH_SIZE,
        feature_lengths=feature_lengths, optimizer="adamw",
        learning_rate=PAPER_LEARNING_RATE, pack=pack, targets_factor=factor or 1,
        eval_splits=eval_splits, eval_feature_lengths=eval_lengths(task, eval_splits),
        # validation about once an epoch (a step trains on about 8 examples)
        eval_period=math.ceil(train_examples / PAPER_BATCH_SIZE),
        validation_examples=None, initial_checkpoint=checkpoint, dropout_rate=PAPER_DROPOUT)


def paper_runs(styles: Sequence[str] = explain.STYLES, seeds: Sequence[int] = (0,),
               sizes: Sequence[str] = PAPER_SIZES,
               checkpoints: Mapping[str, str] | None = None,
               conditions: Sequence[str] = PAPER_CONDITIONS) -> list[Run]:
    """The study's grid. ``checkpoints`` maps a size (``small``) or preset name
    (``t5_1_0_small``) to a pretrained checkpoint; those runs fine-tune it with
    T5's SentencePiece vocabulary, the others train from scratch."""
    checkpoints = dict(checkpoints or {})
    runs: list[Run] = []

    def add(size: str, style: str, seed: int, dataset: str, condition: str,
            eval_splits: tuple[str, ...], **options) -> None:
        checkpoint = checkpoints.get(size) or checkpoints.get(f"t5_1_0_{size}")
        runs.append(_paper_run(size, style, seed, dataset, condition, eval_splits,
                               checkpoint=checkpoint, **options))

    for seed in seeds:
        if "main" in conditions:
            for size in sizes:
                for style in styles:
                    add(size, style, seed, "explistops30", "main", ("test",))
        if "length_generalization" in conditions:
            add("large", "medium", seed, "explistops30_len50_100", "length_generalization",
                ("test", "len100_200"), suffix="_len50_100")
        if "larger_numbers" in conditions:  # both styles: do explanations help here?
            for style in ("none", "medium"):
                add("large", style, seed, "explistops30_larger_numbers", "larger_numbers",
                    ("test",), suffix="_larger_numbers")
        if "data_efficiency" in conditions:
            for n in PAPER_SUBSETS:
                add("large", "medium", seed, "explistops30", "data_efficiency", ("test",),
                    subset=n, suffix=f"_n{n}")
    return runs


def t5x_smoke_run() -> Run:
    """A tiny T5 1.0 from scratch on explistops30 with medium explanations, for
    minutes-long smoke runs of T5X on a CPU (tests shrink it further)."""
    task = "explistops30_medium"
    return Run(
        name="t5_1_0_tiny_medium", model="t5_1_0_tiny", model_preset="t5_1_0_tiny",
        model_overrides={}, style="medium", seed=0, dataset="explistops30",
        condition="smoke", task=task, train_examples=98_000, epochs=1, batch_size=32,
        feature_lengths=run_lengths(task, ("train", "validation")), train_steps=3000,
        eval_splits=("test",), eval_feature_lengths=eval_lengths(task, ("test",)),
        eval_period=1000, validation_examples=200, optimizer="adafactor",
        learning_rate=1e-3)


@functools.lru_cache(maxsize=None)
def _t5x_lengths(task: str, splits: tuple[str, ...], pack: bool,
                 targets_factor: int) -> dict[str, int]:
    found = run_lengths(task, splits, pack=pack, targets_factor=targets_factor)
    logging.info("%s: feature lengths %s, measured on %s", task, found, ", ".join(splits))
    return found


def t5x_lengths(task: str, splits: Sequence[str] = ("train", "validation"), *,
                pack: bool = False, targets_factor: int = 1) -> dict[str, int]:
    """``TASK_FEATURE_LENGTHS`` of a T5X run, measured when it starts with the
    task's own vocabulary (T5's SentencePiece for the ``_sp`` tasks), by the rule
    of the own runs (:func:`run_lengths`): nothing is cut."""
    return dict(_t5x_lengths(task, tuple(splits), pack, targets_factor))


def t5x_train_steps(task: str, *, start_step: int, epochs: int, batch_size: int,
                    pack: bool = False, targets_factor: int = 1) -> int:
    """``TRAIN_STEPS`` of a T5X run: the initial checkpoint's step plus ``epochs``
    passes over the training split in batches of ``batch_size`` rows (packed rows
    counted as :func:`lengths.packing` lays the split out)."""
    if pack:
        rows = lengths.packing(task, "train", t5x_lengths(
            task, pack=True, targets_factor=targets_factor)).rows
    else:
        rows = lengths.split_lengths(task, "train").num_examples
    return start_step + epochs * math.ceil(rows / batch_size)


def gin_runs() -> list[Run]:
    """The runs the committed gin files describe: the paper grid's first seed,
    and the T5X smoke run."""
    return paper_runs() + [t5x_smoke_run()]


# ----------------------------------------------------------------- the CPU study

FINDINGS = ("headline", "ladder", "data_efficiency", "length", "larger_numbers",
            "modular_sum")
"""The study's findings that ``--preset cpu-study`` tests at CPU scale (the report
has one section per finding; see explistops_jax.report.findings)."""
CPU_SM_DATASET = data.get_config("explistops10_cpu_sm")
# Larger numbers: trained on values 0-9, tested on 10-99, with numbers from 10 up
# spelled in digit pieces the training data holds (the `_digits` tasks); the
# positive control is medium trained on values 0-99 (explistops10_cpu_wide), scored
# on the same items: the explained arm, shown the wider range, passes the test.
# (None trained on 0-99 was the first control and stayed near chance, 8.6%, at
# this budget: a control that fails shows nothing.)
CPU_WIDE_DATASET = data.get_config("explistops10_cpu_wide")
# Length generalization: the headline runs (lengths 10-20) tested on lengths 20-40;
# the positive control is medium trained on lengths 10-40 (explistops10_cpu_len10_40)
# and scored on the same items: a "does not help" outcome counts only beside a
# model that passes the test.
CPU_LENGTH_DATASET = data.get_config("explistops10_cpu_len10_40")
# Seeds of every arm, and of the headline's none and medium arms (five: the
# finding every other one leans on).
CPU_STUDY_SEEDS = (0, 1, 2)
CPU_HEADLINE_SEEDS = (0, 1, 2, 3, 4)
# Unique training examples of the data-efficiency runs (the study's 2,000 among
# them; the full split, 20,000, is the main runs). The optimizer steps stay those
# of the full run (the subset repeated): the model starts from scratch, so equal
# epochs on 2,000 examples would be 94 steps and teach nothing. With the full
# split the curve has two points per arm; 1,000 and 5,000 were dropped for the
# budget (36 minutes each for none and medium at three seeds).
CPU_STUDY_SUBSETS = (2_000,)
# None trained for medium's compute: a medium step costs 3.6x a none step in model
# FLOPs (plan.train_flops at their row lengths, 32/96 against 32/8; a test checks
# the ratio), so 3 x 3.6 = 11 epochs. Its validation curve also shows whether
# none had reached its plateau at 3 epochs.
CPU_COMPUTE_EPOCHS = 11
# Evaluation splits the headline runs also get (no retraining): the study's length
# generalization (longer expressions within the training caps) and larger numbers.
CPU_STUDY_SPLITS = ("len20_40", "larger_numbers")


def cpu_study_runs(findings: Sequence[str] = FINDINGS,
                   seeds: Sequence[int] = CPU_STUDY_SEEDS) -> list[Run]:
    """Every run the CPU-scale findings need, each once, seed by seed and
    cheapest first within a seed, so that an interrupted study has whole findings.

    Runs shared between findings (the headline's none and medium runs serve the
    style ladder, length generalization and larger numbers) appear once, with the
    union of the evaluation splits the findings ask of them. The runs are the CPU
    preset's (same names and training), so a finished demo is reused. With the
    default seeds, the headline's none and medium arms get
    :data:`CPU_HEADLINE_SEEDS`.
    """
    unknown = [f for f in findings if f not in FINDINGS]
    if unknown:
        raise UserError(f"unknown finding {unknown[0]!r}",
                        expected="one of " + ", ".join(FINDINGS))
    wanted = set(findings)
    runs: dict[str, Run] = {}
    every = sorted(set(seeds) | (set(CPU_HEADLINE_SEEDS) if tuple(seeds) == CPU_STUDY_SEEDS
                                 else set()))

    def add(run: Run, splits: Sequence[str] = ()) -> None:
        run = runs.get(run.name, run)
        runs[run.name] = run.with_eval_splits(splits)

    for seed in every:
        main = {r.style: r for r in cpu_runs(explain.STYLES, [seed])}
        if wanted & {"headline", "ladder", "length", "larger_numbers"}:
            splits = [s for f, s in (("length", "len20_40"), ("larger_numbers",
                      "larger_numbers")) if f in wanted]
            for style in ("none", "medium"):
                add(main[style], splits)
        if seed not in seeds:
            continue  # the headline's extra seeds
        if "headline" in wanted:
            none = main["none"]
            add(dataclasses.replace(none, name=f"cpu_none_compute_seed{seed}",
                                    condition="equal_compute", epochs=CPU_COMPUTE_EPOCHS))
        if "larger_numbers" in wanted:
            for style in ("none", "medium"):
                add(dataclasses.replace(
                    cpu_runs([style], [seed], vocabulary="digits",
                             eval_splits=("test", "larger_numbers"))[0],
                    name=f"cpu_digits_{style}_seed{seed}", condition="larger_numbers"))
            add(dataclasses.replace(
                cpu_runs(["medium"], [seed], dataset=CPU_WIDE_DATASET, vocabulary="digits",
                         eval_splits=("larger_numbers",))[0],
                name=f"cpu_wide_medium_seed{seed}", condition="larger_numbers_control"))
        if "length" in wanted:
            add(dataclasses.replace(
                cpu_runs(["medium"], [seed], dataset=CPU_LENGTH_DATASET,
                         eval_splits=("len20_40",))[0],
                name=f"cpu_len10_40_medium_seed{seed}", condition="length_control"))
        if "modular_sum" in wanted:
            for style in ("none", "medium"):
                add(dataclasses.replace(
                    cpu_runs([style], [seed], dataset=CPU_SM_DATASET)[0],
                    name=f"cpu_sm_{style}_seed{seed}", condition="modular_sum"))
        if "ladder" in wanted:
            for style in ("short", "long"):
                add(main[style])
        if "data_efficiency" in wanted:
            for n in CPU_STUDY_SUBSETS:
                for style in ("none", "medium"):
                    full = main[style]
                    task = TaskSpec(full.dataset, style, subset=n).name
                    add(dataclasses.replace(
                        full, name=f"cpu_{style}_n{n}_seed{seed}", condition="data_efficiency",
                        task=task, train_examples=n,
                        epochs=full.epochs * full.train_examples // n,
                        feature_lengths=run_lengths(task, ("train", "validation")),
                        eval_splits=("test",), eval_feature_lengths=eval_lengths(task, ("test",))))
    return list(runs.values())


PRESETS = ("cpu", "cpu-study", "paper")


def runs_for(preset: str, *, styles: Sequence[str] | None = None,
             seeds: Sequence[int] = (0,), checkpoints: Mapping[str, str] | None = None,
             sizes: Sequence[str] | None = None,
             findings: Sequence[str] | None = None) -> list[Run]:
    """The runs of a preset (``styles``: default none+medium for cpu, all for paper;
    ``findings``: cpu-study only, default all of :data:`FINDINGS`)."""
    if findings and preset != "cpu-study":
        raise UserError(f"--finding applies to --preset cpu-study, not {preset!r}",
                        expected="--preset cpu-study --finding NAME")
    for style in styles or ():
        if style not in explain.STYLES:
            raise UserError(f"unknown explanation style {style!r}",
                            expected="one of " + ", ".join(explain.STYLES))
    if preset == "cpu":
        return cpu_runs(styles or ("none", "medium"), seeds)
    if preset == "cpu-study":
        if styles:
            raise UserError("--styles does not apply to --preset cpu-study (each finding "
                            "has its styles)", expected="--finding NAME to choose findings")
        return cpu_study_runs(findings or FINDINGS, seeds)
    for size in list(sizes or ()) + list(checkpoints or ()):
        if size not in PAPER_SIZES and size.removeprefix("t5_1_0_") not in PAPER_SIZES:
            raise UserError(f"unknown T5 size {size!r}",
                            expected="one of " + ", ".join(PAPER_SIZES))
    if preset == "paper":
        return paper_runs(styles or explain.STYLES, seeds, sizes or PAPER_SIZES,
                          checkpoints)
    raise UserError(f"unknown preset {preset!r}", expected="one of " + ", ".join(PRESETS))
