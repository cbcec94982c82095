"""Reproduce the study: presets of runs, run them resumably, then report.

A preset is a list of :class:`Run` s (model x explanation style x seed, plus the
generalization and data-efficiency conditions). :func:`run_all` trains each run
in its own directory with :func:`trainer.train` (which resumes from the run's last
checkpoint), evaluates it on its test and generalization splits with
:func:`evaluator.evaluate`, and marks it done; a second invocation skips finished
runs and resumes unfinished ones. :func:`report.write_report` then summarizes.

Three presets:

* ``cpu``: a tiny T5 trained from scratch on a small Explained-ListOps config
  (:data:`CPU_DATASET`), without explanations and with medium ones, at an equal
  number of training examples (the study's protocol); minutes on a laptop CPU.
* ``cpu-study``: the study's findings at that scale (:data:`FINDINGS`: the
  headline, the style ladder, data efficiency, length generalization, larger
  numbers, modular sum), reusing the ``cpu`` runs and adding evaluation splits,
  subsets and the modular-sum dataset; the report gives each finding a verdict.
* ``paper``: the study's grid for accelerators (T5 1.0 small/base/large/3B x
  none/short/medium/long on explistops30, 30 epochs, AdamW 3e-4, batch 8; the
  length-generalization, larger-numbers and data-efficiency runs), from scratch
  with the compact vocabulary, or fine-tuned from a pretrained checkpoint per size
  (Hugging Face or T5X, with T5's SentencePiece vocabulary and the ``_sp`` tasks).

Tasks read through SeqIO are registered by the caller (the CLI imports ``seqio_tasks``
when a run needs it; the grain backend needs no registry); this module
only names them, so the library stays free of the task registry.
"""

from __future__ import annotations

import dataclasses
import shlex
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from etils import epath

from explistops_jax import data, explain, rundir
from explistops_jax.errors import UserError
from explistops_jax.rundir import RunDir
from explistops_jax.task_spec import TaskSpec

__all__ = [
    "CPU_DATASET",
    "PRESETS",
    "Run",
    "cpu_runs",
    "paper_runs",
    "run_all",
    "runs_for",
    "t5x_commands",
]

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
# styles take medium's. (The preset before: 6 epochs at 1e-3 for both styles.)
CPU_LEARNING_RATES = {"none": 2e-3, "short": 3e-3, "medium": 3e-3, "long": 3e-3}
CPU_WARMUP_STEPS = 200
# Domain-vocabulary tokens (targets with EOS): inputs <= 26 on the train
# distribution (<= 50 on 'longer'); targets: short <= 23, medium <= 85 (<= 167 on
# 'longer'), long <= 196 (4 of the 20,000 training targets exceed 192).
CPU_FEATURE_LENGTHS = {
    "none": {"inputs": 32, "targets": 4},
    "short": {"inputs": 32, "targets": 32},
    "medium": {"inputs": 32, "targets": 96},
    "long": {"inputs": 32, "targets": 200},
}
CPU_EVAL_LENGTHS = {"inputs": 64, "targets": 256}
CPU_EVAL_PERIOD = 313        # about one epoch: validation accuracy over training
CPU_VALIDATION_EXAMPLES = 200


@dataclasses.dataclass(frozen=True)
class Run:
    """One training run and the evaluations that follow it.

    ``train_examples`` and ``epochs`` fix how many examples the model sees, the
    same for every style of a preset (the study's protocol: equal examples, not
    equal wall time).
    """

    name: str
    model: str                       # the label in the report (a preset name)
    model_preset: str
    model_overrides: Mapping[str, Any]
    style: str
    seed: int
    dataset: str
    condition: str                   # main | length_generalization | larger_numbers | data_efficiency
    task: str
    train_examples: int
    epochs: int
    batch_size: int
    feature_lengths: Mapping[str, int]
    optimizer: str = "adamw"
    learning_rate: float = 3e-4
    schedule: str = "constant"       # constant | linear (warmup, then linear decay to 0)
    warmup_steps: int = 0
    pack: bool = True
    eval_splits: tuple[str, ...] = ("test",)
    eval_feature_lengths: Mapping[str, int] | None = None
    eval_period: int | None = None
    eval_max_examples: int | None = None
    validation_examples: int | None = 200
    initial_checkpoint: str | None = None
    dropout_rate: float = 0.0

    def run_info(self, preset: str) -> dict[str, Any]:
        """What the run records in run.json (the report reads these keys)."""
        return {"run_name": self.name, "preset": preset, "model": self.model,
                "style": self.style, "seed": self.seed, "dataset": self.dataset,
                "train_examples": self.train_examples, "condition": self.condition,
                "epochs": self.epochs, "from_pretrained": self.initial_checkpoint is not None,
                "batch_size": self.batch_size, "optimizer": self.optimizer,
                "learning_rate": self.learning_rate, "schedule": self.schedule,
                "warmup_steps": self.warmup_steps}


# What must match between a run's recorded run.json and the run asked for, before a
# run directory is resumed or its results reused (the rest, e.g. the evaluation
# splits, may grow).
_SAME_TRAINING = ("style", "seed", "dataset", "train_examples", "epochs", "batch_size",
                  "optimizer", "learning_rate", "schedule", "warmup_steps")


def _check_same_training(run: Run, run_dir: epath.Path, preset: str) -> None:
    """A run directory made with other settings (an older preset) is not reused."""
    path = RunDir(run_dir).run_json
    if not path.exists():
        return
    recorded = rundir.read_json(path)
    wanted = run.run_info(preset)
    differ = [k for k in _SAME_TRAINING if k in recorded and recorded[k] != wanted[k]]
    if differ:
        raise UserError(
            f"run directory {run_dir} was trained with other settings ("
            + ", ".join(f"{k} {recorded[k]!r}, now {wanted[k]!r}" for k in differ) + ")",
            expected="another --out directory, or remove that run directory")


def cpu_runs(styles: Sequence[str] = ("none", "medium"), seeds: Sequence[int] = (0,),
             *, dataset: data.DatasetConfig = CPU_DATASET, epochs: int = CPU_EPOCHS,
             batch_size: int = CPU_BATCH_SIZE,
             model_overrides: Mapping[str, Any] = CPU_MODEL_OVERRIDES,
             feature_lengths: Mapping[str, Mapping[str, int]] = CPU_FEATURE_LENGTHS,
             eval_feature_lengths: Mapping[str, int] = CPU_EVAL_LENGTHS,
             eval_period: int | None = CPU_EVAL_PERIOD) -> list[Run]:
    """The CPU demo: one tiny model from scratch per style and seed, each seeing
    ``epochs`` passes over the same training split (equal examples per style)."""
    train_examples = dataset.split("train").num_examples
    runs = []
    for seed in seeds:
        for style in styles:
            runs.append(Run(
                name=f"cpu_{style}_seed{seed}", model="cpu_tiny", model_preset=CPU_MODEL,
                model_overrides=dict(model_overrides), style=style, seed=seed,
                dataset=dataset.name, condition="main", task=TaskSpec(dataset.name, style).name,
                train_examples=train_examples, epochs=epochs, batch_size=batch_size,
                feature_lengths=dict(feature_lengths[style]), optimizer="adamw",
                learning_rate=CPU_LEARNING_RATES[style], schedule="linear",
                warmup_steps=CPU_WARMUP_STEPS,
                pack=False, eval_splits=tuple(s for s in ("test", "longer") if s in dataset.splits),
                eval_feature_lengths=dict(eval_feature_lengths), eval_period=eval_period,
                validation_examples=CPU_VALIDATION_EXAMPLES))
    return runs


# ----------------------------------------------------------------- the paper grid

PAPER_SIZES = ("small", "base", "large", "3B")
PAPER_EPOCHS = 30
PAPER_BATCH_SIZE = 8
PAPER_LEARNING_RATE = 3e-4
PAPER_LENGTHS = {"inputs": 64, "targets": 512}      # domain vocabulary
PAPER_LENGTHS_SP = {"inputs": 256, "targets": 512}  # T5 SentencePiece (the study: 512)
PAPER_LONG_LENGTHS = {"inputs": 256, "targets": 1024}


def paper_runs(styles: Sequence[str] = explain.STYLES, seeds: Sequence[int] = (0,),
               sizes: Sequence[str] = PAPER_SIZES,
               checkpoints: Mapping[str, str] | None = None,
               conditions: Sequence[str] = ("main", "length_generalization",
                                            "larger_numbers", "data_efficiency")) -> list[Run]:
    """The study's grid. ``checkpoints`` maps a size (``small``) or preset name
    (``t5_1_0_small``) to a pretrained checkpoint; those runs fine-tune it with
    T5's SentencePiece vocabulary, the others train from scratch."""
    checkpoints = dict(checkpoints or {})
    runs: list[Run] = []

    def add(size: str, style: str, seed: int, dataset: str, condition: str,
            eval_splits: tuple[str, ...], subset: int | None = None, suffix: str = "") -> None:
        preset = f"t5_1_0_{size}"
        ckpt = checkpoints.get(size) or checkpoints.get(preset)
        sp = ckpt is not None
        train_examples = subset or data.get_config(dataset).split("train").num_examples
        lengths = PAPER_LENGTHS_SP if sp else PAPER_LENGTHS
        runs.append(Run(
            name=f"{preset}_{style}{suffix}_seed{seed}", model=preset, model_preset=preset,
            model_overrides={}, style=style, seed=seed, dataset=dataset, condition=condition,
            task=TaskSpec(dataset, style, subset=subset, vocabulary="sp" if sp else "domain").name,
            train_examples=train_examples, epochs=PAPER_EPOCHS, batch_size=PAPER_BATCH_SIZE,
            feature_lengths=lengths, optimizer="adamw", learning_rate=PAPER_LEARNING_RATE,
            pack=False, eval_splits=eval_splits,
            eval_feature_lengths=PAPER_LONG_LENGTHS if condition == "length_generalization"
            else None, eval_period=5000, eval_max_examples=None,
            initial_checkpoint=ckpt, dropout_rate=0.1))

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
            for n in (2_000, 10_000):
                add("large", "medium", seed, "explistops30", "data_efficiency", ("test",),
                    subset=n, suffix=f"_n{n}")
    return runs


def t5x_commands(runs: Iterable[Run], out_dir: str | Path) -> list[str]:
    """The equivalent ``python -m t5x.train`` command lines (gin_configs/t5x/),
    for the runs T5X configs exist for."""
    root = Path(__file__).resolve().parent.parent / "gin_configs" / "t5x"
    lines = []
    for run in runs:
        size = run.model_preset.removeprefix("t5_1_0_")
        name = {"main": f"t5_1_0_{size}_{run.style}",
                "length_generalization": f"t5_1_0_{size}_len50_100_{run.style}",
                "larger_numbers": f"t5_1_0_{size}_larger_numbers_{run.style}",
                "data_efficiency": f"t5_1_0_{size}_{run.style}_n{run.train_examples}"
                }[run.condition]
        gin_file = root / f"{name}_finetune.gin"
        if not gin_file.exists():
            continue
        model_dir = epath.Path(out_dir) / "t5x" / run.name  # a URL stays one
        args = [f"--gin_file=gin_configs/t5x/{gin_file.name}",
                f'--gin.MODEL_DIR="{model_dir}"']
        if run.initial_checkpoint:
            args.append(f'--gin.INITIAL_CHECKPOINT_PATH="{run.initial_checkpoint}"')
        lines.append("python -m t5x.train " + " ".join(shlex.quote(a) for a in args))
    return lines


# ----------------------------------------------------------------- the CPU study

FINDINGS = ("headline", "ladder", "data_efficiency", "length", "larger_numbers",
            "modular_sum")
"""The study's findings that ``--preset cpu-study`` tests at CPU scale (the report
has one section per finding; see explistops_jax.report.findings)."""
CPU_SM_DATASET = data.get_config("explistops10_cpu_sm")
CPU_STUDY_SEEDS = (0, 1)
# Runs that cost more than 10 minutes on 2 cores get the first seed only (the
# long style: about twice the medium run's target tokens).
CPU_STUDY_ONE_SEED_STYLES = ("long",)
# Unique training examples of the data-efficiency runs (the study's 2,000). The
# optimizer steps stay those of the full run (the subset repeated): the model starts
# from scratch, so equal epochs on 2,000 examples would be 94 steps and teach
# nothing. Each such run costs what a full run costs (medium: 9.5 minutes), so one
# size, with two seeds, rather than a curve of sizes with one.
CPU_STUDY_SUBSETS = (2_000,)
# Evaluation splits the headline runs also get (no retraining): the study's length
# generalization (longer expressions within the training caps) and larger numbers.
CPU_STUDY_SPLITS = ("len20_40", "larger_numbers")


def cpu_study_runs(findings: Sequence[str] = FINDINGS,
                   seeds: Sequence[int] = CPU_STUDY_SEEDS) -> list[Run]:
    """Every run the CPU-scale findings need, each once, cheapest-first within a
    seed and seed by seed, so that an interrupted study has whole findings.

    Runs shared between findings (the headline's none and medium runs serve the
    style ladder, length generalization and larger numbers) appear once, with the
    union of the evaluation splits the findings ask of them. The runs are the CPU
    preset's (same names and training), so a finished demo is reused.
    """
    unknown = [f for f in findings if f not in FINDINGS]
    if unknown:
        raise UserError(f"unknown finding {unknown[0]!r}",
                        expected="one of " + ", ".join(FINDINGS))
    wanted = set(findings)
    runs: dict[str, Run] = {}

    def add(run: Run, splits: Sequence[str] = ()) -> None:
        if run.name in runs:
            run = runs[run.name]
        extra = tuple(s for s in splits if s not in run.eval_splits)
        runs[run.name] = dataclasses.replace(run, eval_splits=run.eval_splits + extra)

    for i, seed in enumerate(seeds):
        main = {r.style: r for r in cpu_runs(explain.STYLES, [seed])}
        if wanted & {"headline", "ladder", "length", "larger_numbers"}:
            splits = [s for f, s in (("length", "len20_40"), ("larger_numbers",
                      "larger_numbers")) if f in wanted]
            for style in ("none", "medium"):
                add(main[style], splits)
        if "modular_sum" in wanted:
            for style in ("none", "medium"):
                add(dataclasses.replace(
                    cpu_runs([style], [seed], dataset=CPU_SM_DATASET)[0],
                    name=f"cpu_sm_{style}_seed{seed}", condition="modular_sum"))
        if "ladder" in wanted:
            for style in ("short", "long"):
                if i == 0 or style not in CPU_STUDY_ONE_SEED_STYLES:
                    add(main[style])
        if "data_efficiency" in wanted:
            for n in CPU_STUDY_SUBSETS:
                for style in ("none", "medium"):
                    full = main[style]
                    add(dataclasses.replace(
                        full, name=f"cpu_{style}_n{n}_seed{seed}", condition="data_efficiency",
                        task=TaskSpec(full.dataset, style, subset=n).name, train_examples=n,
                        epochs=full.epochs * full.train_examples // n,
                        eval_splits=("test",)))
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


# ----------------------------------------------------------------- running


def run_all(runs: Sequence[Run], out_dir: rundir.PathLike, *, preset: str,
            progress: bool = True, log: Callable[[str], None] = print,
            data_backend: str = "grain") -> list[epath.Path]:
    """Trains and evaluates every run not yet done; returns the run directories
    (``out_dir`` may be a URL such as ``gs://bucket/runs``). ``data_backend``: the
    input pipeline (``input_pipeline.DataConfig``)."""
    out = epath.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dirs = []
    for i, run in enumerate(runs, 1):
        run_dir = out / run.name
        dirs.append(run_dir)
        files = RunDir(run_dir)
        _check_same_training(run, run_dir, preset)
        if files.done_json.exists():
            done = rundir.read_json(files.done_json)
            missing = [s for s in run.eval_splits if s not in done.get("metrics", {})]
            if not missing:
                log(f"[{i}/{len(runs)}] {run.name}: done (skipped)")
                continue
            # A finished run asked for new splits (a finding reusing it): evaluate
            # those only; no retraining.
            log(f"[{i}/{len(runs)}] {run.name}: done; evaluating {', '.join(missing)}")
            started = time.time()
            extra = evaluate_run(dataclasses.replace(run, eval_splits=tuple(missing)),
                                 run_dir, done["step"], log=log, data_backend=data_backend)
            done["metrics"] = {**done.get("metrics", {}), **extra}
            done["eval_seconds"] = round(done.get("eval_seconds", 0.0)
                                         + time.time() - started, 1)
            rundir.write_json(files.done_json, done, sort_keys=True)
            continue
        log(f"[{i}/{len(runs)}] {run.name}: {run.style} explanations, "
            f"{run.train_examples} examples x {run.epochs} epochs")
        started = time.time()
        result = train_run(run, run_dir, preset=preset, progress=progress,
                           data_backend=data_backend)
        trained = time.time()
        metrics = evaluate_run(run, run_dir, result.step, log=log, data_backend=data_backend)
        # seconds of this invocation (a resumed run: since it resumed)
        rundir.write_json(RunDir(run_dir).done_json,
                          {"step": result.step, "metrics": metrics,
                           "seconds": round(time.time() - started, 1),
                           "train_seconds": round(trained - started, 1),
                           "eval_seconds": round(time.time() - trained, 1)}, sort_keys=True)
    return dirs


def train_run(run: Run, run_dir: rundir.PathLike, *, preset: str, progress: bool = True,
              data_backend: str = "grain"):
    """Trains one run (resuming its directory)."""
    from explistops_jax import input_pipeline, trainer
    from explistops_jax.train_state import CheckpointConfig

    model = trainer.ModelSpec(run.model_preset, overrides=dict(run.model_overrides),
                              dropout_rate=run.dropout_rate)
    data_config = input_pipeline.DataConfig(
        run.task, dict(run.feature_lengths), batch_size=run.batch_size, seed=run.seed,
        pack=run.pack, num_epochs=run.epochs, data_backend=data_backend)
    evaluation = None
    if run.eval_period:
        evaluation = trainer.EvalConfig(period=run.eval_period, split="validation",
                                        max_examples=run.validation_examples)
    return trainer.train(
        model, data_config, run_dir, optimizer=_optimizer(run),
        initial_checkpoint_path=run.initial_checkpoint,
        checkpoint=CheckpointConfig(period=500, keep=1, async_save=True),
        evaluation=evaluation, seed=run.seed, progress=progress,
        run_info=run.run_info(preset))


def _optimizer(run: Run):
    from explistops_jax import optimizers

    if run.schedule == "constant":
        schedule = optimizers.Schedule("constant", run.learning_rate)
    else:
        schedule = optimizers.Schedule(run.schedule, run.learning_rate,
                                       warmup_steps=run.warmup_steps)
    factory = optimizers.adamw if run.optimizer == "adamw" else optimizers.adafactor
    return factory(schedule=schedule)


def evaluate_run(run: Run, run_dir: rundir.PathLike, step: int, *,
                 log: Callable[[str], None] = print,
                 data_backend: str = "grain") -> dict[str, dict[str, Any]]:
    """Decodes and scores each evaluation split (skipping those already scored)."""
    from explistops_jax import evaluator

    results = {}
    for split in run.eval_splits:
        path = RunDir(run_dir).metrics(run.task, split, step)
        if not path.exists():
            evaluator.evaluate(run_dir, run.task, split, step=step,
                               task_feature_lengths=run.eval_feature_lengths,
                               batch_size=100, max_examples=run.eval_max_examples,
                               data_backend=data_backend)
        record = rundir.read_json(path)
        metrics = {k: v for k, v in record["metrics"].items() if isinstance(v, (int, float))}
        metrics["num_examples"] = record["num_examples"]
        log(f"    {split}: accuracy {metrics.get('accuracy', float('nan')):.3f} "
            f"({record['num_examples']} examples)")
        results[split] = metrics
    return results

