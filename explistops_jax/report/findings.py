"""The study's findings at CPU scale, each with our figure and a verdict.

``explistops reproduce --preset cpu-study`` trains the runs each finding needs
(:func:`explistops_jax.study.cpu_study_runs`); this module reads them back from
the report's :class:`RunResult` s and decides, for each finding, whether our runs
reproduce the study's claim. One rule decides every verdict (:data:`VERDICT_RULE`):

* an *arm* is one style of one condition over its seeds; every seed of every arm
  of a finding answers the same test items, and its metrics file records which
  it got right;
* an *effect* is the difference of two arms' mean accuracies (or of an arm and a
  constant, chance), with a 95% interval from a paired bootstrap that resamples
  the test items (the same draw for both arms) and each arm's seeds
  (:func:`statistics.paired_bootstrap`): both sources of error, and the pairing
  of arms that answer the same items;
* the smallest effect that counts, ``delta``, is 10 points (the study's effects of
  explanations are 20 points and more; a smaller difference is not the effect it
  reports);
* a claim that something helps is *reproduced* when the interval lies above
  ``+delta``, *not reproduced* when it lies below ``+delta``, *inconclusive* when it
  straddles it; a claim that something does not help is the mirror image
  (*reproduced* below ``+delta``, *not reproduced* above); on a test of
  generalization, an outcome of no help (either kind) needs a positive control,
  the explained arm trained on the test's range passing the same items, or the
  test could not have shown help; a claim of "at least as good" is *reproduced*
  above ``-delta`` and *not reproduced* below. An interval wider than ±10 points is
  *inconclusive*.
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from explistops_jax import data, study
from explistops_jax.report.runs import TEST_SPLIT, RunResult
from explistops_jax.report.statistics import (BOOTSTRAP_RESAMPLES, MISSING, Interval, Stat,
                                              paired_bootstrap, points)

__all__ = ["Arm", "Effect", "Finding", "VERDICT_RULE", "evaluate_findings", "has_cpu_runs",
           "main_arm", "render_findings", "verdict"]

# The CPU study's runs, as explistops_jax.study defines them.
DATASET = study.CPU_DATASET.name
SM_DATASET = study.CPU_SM_DATASET.name
FULL_EXAMPLES = study.CPU_TRAIN_EXAMPLES
SUBSET = 2_000  # the study's subset (one of study.CPU_STUDY_SUBSETS)
DELTA = 0.10  # the smallest effect that counts (10 points)
MIN_SEEDS = 3  # fewer seeds cannot show the spread between them: inconclusive
TOO_WIDE = 0.10  # an interval wider than ±10 points decides nothing

REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE, NOT_RUN = (
    "reproduced", "not reproduced", "inconclusive", "not run yet")

VERDICT_RULE = (
    "Each arm (one style of one condition) is its seeds' runs, every one scored on the "
    "same test items. An effect is the difference of two arms' mean accuracies (or of an "
    "arm and chance), with a 95% interval from a paired bootstrap: each resample draws "
    "the test items with replacement, the same items for both arms, and each arm's "
    "seeds with replacement, so the interval holds both the test set's error and the "
    "spread between seeds; an arm needs at least 3 seeds, or the effect is "
    "inconclusive. The smallest effect that counts is δ = 10 points (the "
    "study's gains from explanations are 20 points and more). A claim that something "
    "helps is **reproduced** when the interval lies above +δ, **not reproduced** when "
    "it lies below +δ, and **inconclusive** when it straddles +δ; a claim that "
    "something does not help is the mirror image (reproduced below +δ, not reproduced "
    "above). On a test of generalization (longer inputs, larger numbers), an outcome "
    "of no help, whether a \"does not help\" claim reproduced or a \"helps\" claim not "
    "reproduced, counts only beside a positive control: the explained arm trained on "
    "the test's range beats the tested explained arm on the same items by more than "
    "δ; otherwise the test may not be passable at all, and the verdict is "
    "inconclusive. A claim of \"at least as good\" is reproduced when the interval lies "
    "above −δ and not reproduced when it lies below. An interval wider than ±10 points "
    "is **inconclusive** whatever its side.")
METHOD = ("paired bootstrap over seeds and test items, 95% percentile interval, "
          f"{BOOTSTRAP_RESAMPLES} resamples")


def chance_level(dataset: str = SM_DATASET, split: str = "train") -> float:
    """What answering without reading the input scores: the share of the training
    split's most common answer (the best constant answer a model can learn from its
    training data; never taken from test labels). At least 1 / modulus, a uniform
    guess. The split is regenerated from its config (20,000 examples: about a
    second)."""
    config = data.get_config(dataset)
    count = config.split(split).num_examples
    answers = Counter(ex["answer"] for ex in data.examples(dataset, split, 0, count))
    return max(max(answers.values()) / count, 1.0 / config.modulus)


@dataclass(frozen=True)
class Arm:
    """One compared accuracy: a style of one condition, pooled over seeds."""

    label: str
    values: tuple[float, ...]
    """Accuracy of each seed's run (fractions)."""
    num_examples: int | None
    """Examples of the evaluated split per run (the smallest, to be safe)."""
    style: str = ""
    train_examples: int | None = None
    """Unique training examples of the runs (None: any)."""
    items: tuple[tuple[int, ...], ...] = ()
    """Each seed's per-example correctness (1/0), where every run recorded it."""
    seeds: tuple[int | None, ...] = ()

    @property
    def measured(self) -> bool:
        return bool(self.values)

    @property
    def stat(self) -> Stat | None:
        return Stat.of(self.values)

    @property
    def mean(self) -> float:
        return sum(self.values) / len(self.values)

    def to_json(self) -> dict[str, Any]:
        stat = self.stat
        return {"label": self.label, "per_seed": list(self.values), "seeds": list(self.seeds),
                "mean": stat.mean if stat else None, "std": stat.std if stat else None,
                "num_seeds": len(self.values), "num_examples": self.num_examples}


@dataclass(frozen=True)
class Effect:
    """``a - b`` with its bootstrap interval; ``kind``: the claim about its sign."""

    label: str
    a: Arm
    b: Arm | None  # None: against the constant `baseline`
    kind: str  # "helps" | "does_not_help" | "at_least"
    baseline: float = 0.0

    @property
    def measured(self) -> bool:
        return self.a.measured and (self.b is None or self.b.measured)

    @property
    def interval(self) -> Interval | None:
        """The paired bootstrap's interval; None when a run lacks per-example records
        (or the arms were scored on different items)."""
        if not self.measured or not self.a.items or (self.b is not None and not self.b.items):
            return None
        sizes = {len(row) for row in self.a.items + (self.b.items if self.b else ())}
        if len(sizes) != 1:
            return None
        return _bootstrap(self.a.items, self.b.items if self.b else None, self.baseline)

    @property
    def d(self) -> float:
        return self.a.mean - (self.b.mean if self.b is not None else self.baseline)

    @property
    def seeds_short(self) -> bool:
        """Whether an arm has fewer than :data:`MIN_SEEDS` seeds (too few to see
        the spread between seeds)."""
        return any(len(arm.values) < MIN_SEEDS for arm in (self.a, self.b) if arm is not None)

    @property
    def verdict(self) -> str:
        interval = self.interval
        if interval is None:
            return NOT_RUN if not self.measured else INCONCLUSIVE
        if self.seeds_short:
            return INCONCLUSIVE
        return verdict(self.kind, interval.low, interval.high)

    def text(self) -> str:
        interval = self.interval
        if interval is None:
            return f"{self.label}: {MISSING}" + (
                " (no per-example records)" if self.measured else "")
        short = f"; fewer than {MIN_SEEDS} seeds" if self.seeds_short else ""
        return (f"{self.label}: {points(interval.d)} [{points(interval.low)}, "
                f"{points(interval.high)}] ({self.verdict}{short})")

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"label": self.label, "claim": self.kind,
                               "verdict": self.verdict}
        interval = self.interval
        if interval is not None:
            out.update(d=interval.d, low=interval.low, high=interval.high, method=METHOD)
        if self.b is None:
            out["baseline"] = self.baseline
        return out


@functools.lru_cache(maxsize=256)
def _bootstrap(a: tuple, b: tuple | None, baseline: float) -> Interval:
    return paired_bootstrap(a, b, baseline=baseline)


def verdict(kind: str, low: float, high: float) -> str:
    """The verdict on an effect with 95% interval ``[low, high]`` for a claim of
    ``kind`` (the rule in :data:`VERDICT_RULE`)."""
    if kind not in ("helps", "does_not_help", "at_least"):
        raise ValueError(f"unknown claim kind {kind!r}")
    if high - low > 2 * TOO_WIDE:
        return INCONCLUSIVE
    bar = -DELTA if kind == "at_least" else DELTA
    if low > bar:
        return NOT_REPRODUCED if kind == "does_not_help" else REPRODUCED
    if high < bar:
        return REPRODUCED if kind == "does_not_help" else NOT_REPRODUCED
    return INCONCLUSIVE


@dataclass(frozen=True)
class Finding:
    """One claim of the study, our measurement of it, and the verdict."""

    name: str
    title: str
    claim: str
    study: str
    setup: str
    arms: tuple[Arm, ...]
    effects: tuple[Effect, ...]
    verdict: str
    notes: tuple[str, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)
    summary_arms: tuple[str, ...] | None = None
    """Labels of the arms the summary table shows (default: all)."""
    scope: str = ""
    """What the verdict holds for when less than the claim (e.g. an equal training
    budget at which the arms were still learning); empty: the claim as stated."""

    @property
    def verdict_text(self) -> str:
        return f"{self.verdict} ({self.scope})" if self.scope else self.verdict

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "title": self.title, "claim": self.claim,
                "study": self.study, "setup": self.setup, "verdict": self.verdict,
                "scope": self.scope,
                "arms": [a.to_json() for a in self.arms],
                "effects": [e.to_json() for e in self.effects],
                "notes": list(self.notes), **dict(self.extra)}


# ----------------------------------------------------------------- selecting runs


def _arm(runs: Sequence[RunResult], label: str, *, style: str, condition: str,
         dataset: str = DATASET, examples: int | None = FULL_EXAMPLES,
         split: str = TEST_SPLIT) -> Arm:
    values, sizes, items, seeds = [], [], [], []
    for run in sorted(runs, key=lambda r: (r.seed is None, r.seed or 0)):
        if (run.style, run.condition, run.dataset) != (style, condition, dataset):
            continue
        if examples is not None and run.train_examples != examples:
            continue
        accuracy = run.metric("accuracy", split)
        if accuracy is None or math.isnan(accuracy):
            continue
        values.append(accuracy)
        seeds.append(run.seed)
        size = run.splits[split].num_examples
        if size:
            sizes.append(size)
        items.append(run.splits[split].correct)
    every = tuple(items) if items and all(i is not None for i in items) else ()
    return Arm(label, tuple(values), min(sizes) if sizes else None, style, examples,
               every, tuple(seeds))


def _combine(effects: Sequence[Effect]) -> str:
    """One verdict from several effects: every one must hold."""
    verdicts = [e.verdict for e in effects]
    if NOT_RUN in verdicts:
        return NOT_RUN
    if NOT_REPRODUCED in verdicts:
        return NOT_REPRODUCED
    if INCONCLUSIVE in verdicts:
        return INCONCLUSIVE
    return REPRODUCED


def main_arm(runs: Sequence[RunResult], style: str, split: str = TEST_SPLIT,
             label: str | None = None) -> Arm:
    """The arm of one style of the CPU preset's main runs on a split."""
    return _arm(runs, label or style, style=style, condition="main", split=split)


# ----------------------------------------------------------------- the findings


def _headline(runs: Sequence[RunResult]) -> Finding:
    none, medium = main_arm(runs, "none"), main_arm(runs, "medium")
    effect = Effect("medium − none", medium, none, "helps")
    compute = _arm(runs, f"none, {study.CPU_COMPUTE_EPOCHS} epochs (medium's compute)",
                   style="none", condition="equal_compute")
    # At medium's compute none may train 3 epochs or 11: its better use of that
    # budget, chosen on validation (never on test), is the fair baseline.
    validation = _final_validation(runs, "none", {study.CPU_EPOCHS: "main",
                                                  study.CPU_COMPUTE_EPOCHS: "equal_compute"})
    chosen = compute
    if compute.measured and None not in validation.values() and (
            validation[study.CPU_EPOCHS] > validation[study.CPU_COMPUTE_EPOCHS]):
        chosen = none
    epochs = study.CPU_EPOCHS if chosen is none else study.CPU_COMPUTE_EPOCHS
    how = (f"none's better training within medium's compute, chosen on validation: "
           f"{epochs} epochs" if None not in validation.values()
           else f"none trained {epochs} epochs")
    at_compute = Effect(f"medium − none at equal compute ({how})", medium, chosen, "helps")
    notes = tuple(_plateau_note(run) for run in runs
                  if run.condition == "equal_compute" and len(run.eval_points) > 2)
    if None not in validation.values():
        notes += (f"none's final validation accuracy, mean over the seeds both have: "
                  f"{100 * validation[study.CPU_EPOCHS]:.1f}% after {study.CPU_EPOCHS} epochs, "
                  f"{100 * validation[study.CPU_COMPUTE_EPOCHS]:.1f}% after "
                  f"{study.CPU_COMPUTE_EPOCHS} (the learning rate is the one chosen for "
                  f"{study.CPU_EPOCHS} epochs).",)
    return Finding(
        "headline", "Explanations beat bare answers",
        "Fine-tuning on targets that explain each step beats fine-tuning on the answer alone.",
        "No explanation: about 65% (t5-small 65.1%, t5-3B 65.8%); with explanations: "
        "87-99% (t5-small with long explanations 87.8%, t5-3B 99.3%).",
        "Test split of explistops10_cpu, the CPU preset's runs (none and medium, equal "
        f"training examples: 3 epochs). Beside them, none trained {study.CPU_COMPUTE_EPOCHS} "
        "epochs, medium's compute (a medium step is 3.6x a none step in model FLOPs), "
        "which also shows whether none was still learning at 3 epochs; at equal compute "
        "medium is compared with none's better training of the two, chosen on "
        "validation.",
        (none, medium, compute), (effect, at_compute), effect.verdict, notes,
        summary_arms=(none.label, medium.label))


def _final_validation(runs: Sequence[RunResult], style: str,
                      conditions: Mapping[int, str]) -> dict[int, float | None]:
    """Per key of ``conditions``, the mean last validation accuracy of that
    condition's runs of ``style``, over the seeds every condition has (None: none)."""
    finals: dict[int, dict[int | None, float]] = {}
    for key, condition in conditions.items():
        finals[key] = {run.seed: run.eval_points[-1]["accuracy"] for run in runs
                       if (run.style, run.condition, run.dataset) == (style, condition, DATASET)
                       and run.eval_points and run.eval_points[-1].get("accuracy") is not None}
    shared = set.intersection(*(set(f) for f in finals.values())) if finals else set()
    return {key: (sum(f[s] for s in shared) / len(shared) if shared else None)
            for key, f in finals.items()}


# The project's rule for "still learning": validation accuracy rose more than this
# over the last third of the run's evaluations.
PLATEAU_RISE = 0.02


def _last_third(run: RunResult) -> list[Mapping[str, Any]]:
    points = [p for p in run.eval_points if p.get("accuracy") is not None]
    return points[-max(2, len(points) // 3):]


def _still_rising(run: RunResult) -> bool:
    third = _last_third(run)
    return third[-1]["accuracy"] - third[0]["accuracy"] > PLATEAU_RISE


def _plateau_note(run: RunResult) -> str:
    """Whether a run's validation accuracy had stopped rising over its last third."""
    third = _last_third(run)
    state = "still rising" if _still_rising(run) else "at a plateau"
    return (f"{run.name}: validation accuracy {100 * third[0]['accuracy']:.1f}% at step "
            f"{third[0]['step']}, {100 * third[-1]['accuracy']:.1f}% at step "
            f"{third[-1]['step']}: {state} (the project's rule: a rise over 2 points in the "
            f"last third of training is still rising).")


LADDER_STYLES = ("none", "short", "medium", "long")


def _ladder(runs: Sequence[RunResult]) -> Finding:
    arms = tuple(main_arm(runs, s) for s in LADDER_STYLES)
    none, short, medium, long = arms
    gains = tuple(Effect(f"{a.label} − none", a, none, "helps") for a in (short, medium, long))
    # the smallest model gains most from the longest explanations: long is not
    # beaten by another style
    rivals = tuple(Effect(f"{a.label} − long", a, long, "does_not_help")
                   for a in (short, medium))
    effects = gains + rivals
    # equal budget (3 epochs each); whether each arm had stopped learning there
    curves = [run for run in runs if run.condition == "main" and run.dataset == DATASET
              and run.style in LADDER_STYLES and len(_last_third(run)) >= 2]
    notes = tuple(_plateau_note(run) for run in curves)
    return Finding(
        "ladder", "Small models gain most from long explanations",
        "Every explanation style helps, and small models gain most from long "
        "explanations (large models gain about the same from any style; medium is the "
        "most consistent across models).",
        "Small models gain most from long explanations; large models about the same "
        "from any style; medium is the most consistent. t5-small: no explanation "
        "65.1%, long explanations 87.8%.",
        "One tiny model on explistops10_cpu, all four styles at equal training examples. "
        "One size tests what one size can: each style against none, and whether long "
        "is this small model's best style (the verdict needs each style to beat none "
        "and no style to beat long). How the best style changes with model size is "
        "not tested (one size). Learning rates: none's and medium's were chosen on "
        "validation among 1e-3, 2e-3 and 3e-3; short and long take medium's, untuned "
        "(this project's choice, for the budget).",
        arms, effects, _combine(effects), notes + (
            "Not tested: the claim about how the best style changes with model size "
            "needs a second size.",), extra={"size_claim": "not tested (one model size)"},
        scope=_budget_scope(curves))


def _budget_scope(curves: Sequence[RunResult]) -> str:
    """The ladder compares styles at one training budget; when most runs of an arm
    were still learning at its end, the verdict holds for that budget only."""
    counts = {style: (sum(_still_rising(r) for r in curves if r.style == style),
                      sum(r.style == style for r in curves)) for style in LADDER_STYLES}
    if not any(2 * rising > total for rising, total in counts.values()):
        return ""
    shown = ", ".join(f"{style} {rising} of {total}" for style, (rising, total)
                      in counts.items() if total)
    return (f"at the equal budget of {study.CPU_EPOCHS} epochs; runs still rising at its end: "
            f"{shown}; not compared at a plateau")


def _data_efficiency(runs: Sequence[RunResult]) -> Finding:
    arms = []
    for style in ("none", "medium"):
        for n in sorted({r.train_examples for r in runs
                         if r.condition == "data_efficiency" and r.dataset == DATASET
                         and r.train_examples} | {SUBSET}):
            arms.append(_arm(runs, f"{style}, {n:,} examples", style=style,
                             condition="data_efficiency", examples=n))
        arms.append(_arm(runs, f"{style}, {FULL_EXAMPLES:,} examples", style=style,
                         condition="main"))
    by_label = {a.label: a for a in arms}
    effect = Effect(f"medium with {SUBSET:,} − none with {FULL_EXAMPLES:,}",
                    by_label[f"medium, {SUBSET:,} examples"],
                    by_label[f"none, {FULL_EXAMPLES:,} examples"], "at_least")
    equal_n = Effect(f"medium − none, both with {SUBSET:,}",
                     by_label[f"medium, {SUBSET:,} examples"],
                     by_label[f"none, {SUBSET:,} examples"], "helps")
    notes = tuple(_epochs_to_match(runs))
    return Finding(
        "data_efficiency", "Explanations need fewer examples",
        "With explanations, fewer training examples suffice.",
        "T5-large trained on only 2,000 explained examples: 66.1% (no explanation, "
        "all 98,000 examples: about 65% across sizes).",
        f"Subsets of explistops10_cpu's training split, trained for the full run's "
        f"optimizer steps (the subset repeated; our model starts from scratch, so equal "
        f"epochs on {SUBSET:,} examples would teach it nothing). The verdict compares "
        f"medium on {SUBSET:,} examples with none on all {FULL_EXAMPLES:,}.",
        tuple(arms), (effect, equal_n), effect.verdict, notes,
        summary_arms=(effect.a.label, effect.b.label))


def _epochs_to_match(runs: Sequence[RunResult]) -> list[str]:
    """How soon medium's validation accuracy reached none's final one, per seed."""
    out = []
    main = [r for r in runs if r.condition == "main" and r.dataset == DATASET]
    for none in (r for r in main if r.style == "none" and r.eval_points):
        medium = next((r for r in main if r.style == "medium" and r.seed == none.seed
                       and r.eval_points), None)
        if medium is None or not medium.last_step:
            continue
        target = none.eval_points[-1].get("accuracy")
        if target is None:
            continue
        reached = next((p["step"] for p in medium.eval_points
                        if (p.get("accuracy") or 0) >= target), None)
        steps = none.last_step or medium.last_step
        if reached is None:
            out.append(f"seed {none.seed}: medium never reached none's final validation "
                       f"accuracy ({100 * target:.1f}%) during training.")
        else:
            out.append(f"seed {none.seed}: medium reached none's final validation accuracy "
                       f"({100 * target:.1f}%) after {reached} of {steps} steps "
                       f"({reached / steps:.0%} of the training).")
    return out


# The training distribution's step counts: one training tree in 20,000 has 6 or more
# operators (explistops10_cpu), so items with as many steps are beyond it.
MANY_STEPS = 6


@functools.lru_cache(maxsize=8)
def item_traits(dataset: str, split: str) -> tuple[tuple[int, ...], tuple[bool, ...]]:
    """Per test item, in example order: its number of steps (operators), and
    whether its medium explanation is longer, in tokens, than every medium target
    of the training split (both regenerated from the configs: a second)."""
    from explistops_jax import explain, lengths, own_tasks

    config = data.get_config(dataset)
    table = own_tasks.domain_table()
    longest = lengths.split_lengths(f"{dataset}_medium", "train").longest["targets"]
    steps, beyond = [], []
    for example in data.examples(dataset, split, with_tree=True):
        tree = example["tree"]
        steps.append(len(explain.steps(tree, config.modulus)))
        tokens = len(table.encode(explain.explain(tree, "medium", modulus=config.modulus))) + 1
        beyond.append(tokens > longest)
    return tuple(steps), tuple(beyond)


def _subset(arm: Arm, keep: Sequence[bool], label: str) -> Arm:
    """An arm restricted to the items where ``keep`` holds (per-example records)."""
    if not arm.items or len(keep) != len(arm.items[0]):
        return Arm(label, (), None, arm.style)
    items = tuple(tuple(c for c, k in zip(row, keep) if k) for row in arm.items)
    if not items[0]:
        return Arm(label, (), None, arm.style)
    values = tuple(sum(row) / len(row) for row in items)
    return Arm(label, values, len(items[0]), arm.style, arm.train_examples, items, arm.seeds)


def _length_breakdown(none: Arm, medium: Arm, dataset: str, split: str) -> list[str]:
    """Accuracy by number of steps and by explanation length relative to the
    training maximum: are longer inputs hard because they are long, or because
    they need more steps than any training tree?"""
    if not (none.items and medium.items):
        return []
    steps, beyond = item_traits(dataset, split)
    groups = [(f"{MANY_STEPS} or more steps", [n >= MANY_STEPS for n in steps]),
              (f"under {MANY_STEPS} steps", [n < MANY_STEPS for n in steps]),
              ("medium explanation longer than any in training", list(beyond)),
              ("medium explanation within the training maximum", [not b for b in beyond])]
    out = []
    for name, keep in groups:
        a, b = _subset(medium, keep, f"medium, {name}"), _subset(none, keep, f"none, {name}")
        if not a.measured:
            continue
        effect = Effect(f"medium − none, {name}", a, b, "helps")
        out.append(f"{name} ({sum(keep)} of {len(keep)} items): none {100 * b.mean:.1f}%, "
                   f"medium {100 * a.mean:.1f}%; {effect.text()}.")
    return out


def _length(runs: Sequence[RunResult]) -> Finding:
    none, medium = (main_arm(runs, s, "len20_40", f"{s}, lengths 20-40")
                    for s in ("none", "medium"))
    effect = Effect("medium − none on lengths 20-40", medium, none, "helps")
    deeper = tuple(main_arm(runs, s, "longer", f"{s}, lengths 20-40 and depth 4")
                   for s in ("none", "medium"))
    probe = Effect("medium − none on the depth-4 probe", deeper[1], deeper[0], "helps")
    notes: tuple[str, ...] = ()
    if probe.measured:
        notes = (f"Harder probe, outside the verdict: the `longer` split also adds a "
                 f"nesting level never seen in training (depth 4): {probe.text()}.",)
    # the positive control: medium trained on lengths 10-40 answers the same items
    control = _arm(runs, "control: medium trained on lengths 10-40, lengths 20-40",
                   style="medium", condition="length_control",
                   dataset=study.CPU_LENGTH_DATASET.name, split="len20_40")
    passable = Effect("control − medium on lengths 20-40", control, medium, "helps")
    in_distribution = main_arm(runs, "medium")
    if medium.measured and in_distribution.measured:
        notes += (f"What the study reports (medium alone on the longer inputs): medium "
                  f"{100 * medium.mean:.1f}% on lengths 20-40 against "
                  f"{100 * in_distribution.mean:.1f}% on the training lengths' test split.",)
    notes += tuple(_length_breakdown(none, medium, DATASET, "len20_40"))
    return Finding(
        "length", "Explanations help on longer inputs",
        "Trained on shorter expressions and tested on longer ones with the same depth and "
        "argument caps, models trained with explanations generalize better.",
        "t5-large, medium explanations, trained on lengths 50-100, tested on 100-200: 91.2%.",
        "The headline runs (trained on lengths 10-20) tested on lengths 20-40 within the "
        "training caps (depth <= 3, <= 4 arguments, values 0-9): split len20_40. The "
        "positive control, medium trained on lengths 10-40 (explistops10_cpu_len10_40), "
        "answers the same items: a verdict that explanations do not help counts only if "
        "it passes, i.e. beats the tested medium arm by more than 10 points.",
        (none, medium, control, *deeper), (effect, passable), _with_control(effect, passable),
        notes, summary_arms=(none.label, medium.label, control.label))


def _larger_numbers(runs: Sequence[RunResult]) -> Finding:
    none, medium = (_arm(runs, f"{s}, values 10-99", style=s, condition="larger_numbers",
                         split="larger_numbers") for s in ("none", "medium"))
    effect = Effect("medium − none on values 10-99", medium, none, "does_not_help")
    # the positive control: the same model trained on the wider range passes the test
    control = _arm(runs, "control: medium trained on values 0-99, values 10-99",
                   style="medium", condition="larger_numbers_control",
                   dataset=study.CPU_WIDE_DATASET.name, split="larger_numbers")
    passable = Effect("control − medium on values 10-99", control, medium, "helps")
    seen = tuple(_arm(runs, f"{s}, values 0-9 (test)", style=s, condition="larger_numbers")
                 for s in ("none", "medium"))
    return Finding(
        "larger_numbers", "Explanations do not help with larger numbers",
        "Explanations do not help a model generalize to numbers larger than any it saw "
        "in training.",
        "Explanations do not help generalization to larger numbers than seen in "
        "training (stated without a figure; the ranges are not given).",
        "Tiny models trained on values 0-9 (explistops10_cpu) and tested on the same "
        "kind of trees with values 10-99 (split larger_numbers; this project's choice of "
        "ranges), with numbers from 10 up spelled digit by digit (the `_digits` tasks), "
        "so the test's numbers are made of pieces the training data holds. The positive "
        "control, medium trained on values 0-99 (explistops10_cpu_wide), answers the same "
        "items: the verdict counts only if it passes, i.e. beats the tested medium arm by "
        "more than 10 points.",
        (none, medium, control, *seen), (effect, passable), _with_control(effect, passable),
        summary_arms=(none.label, medium.label, control.label))


def _with_control(claim: Effect, control: Effect) -> str:
    """A verdict that the effect is absent (a "does not help" claim reproduced, a
    "helps" claim not reproduced) counts only when the positive control shows the
    test can be passed; without one it is inconclusive."""
    absent = REPRODUCED if claim.kind == "does_not_help" else NOT_REPRODUCED
    if claim.verdict != absent:
        return claim.verdict
    return claim.verdict if control.verdict == REPRODUCED else INCONCLUSIVE


def _modular_sum(runs: Sequence[RunResult]) -> Finding:
    none, medium = (_arm(runs, f"{s} (SM only)", style=s, condition="modular_sum",
                         dataset=SM_DATASET) for s in ("none", "medium"))
    chance = chance_level()
    notes = tuple(_curve_note(run) for run in runs
                  if (run.style, run.condition) == ("medium", "modular_sum") and run.eval_points)
    effects = (Effect("none − chance", none, None, "does_not_help", chance),
               Effect("medium − chance", medium, None, "helps", chance))
    return Finding(
        "modular_sum", "Modular sum is learnable only with explanations",
        "On expressions of SM (sum modulo 10) only, no model beats chance without "
        "explanations; with them, models learn it.",
        "No model beats chance without explanations; with them t5-small reaches 75.7% "
        "and larger models exceed 98%.",
        f"explistops10_cpu_sm (the CPU trees with SM only), none and medium; chance = "
        f"{100 * chance:.1f}%, the share of the training split's most common answer (the "
        f"best constant answer the training data teaches; a uniform guess over ten "
        f"answers: 10%).",
        (none, medium), effects, _combine(effects), notes,
        extra={"chance": chance, "chance_source": "the most common answer of "
               f"{SM_DATASET}'s training split (its share there)"})


def _curve_note(run: RunResult) -> str:
    """How a run's validation accuracy (and step validity) moved during training."""
    def series(key: str) -> str:
        values = [p.get(key) for p in run.eval_points]
        return ", ".join("?" if v is None else f"{100 * v:.1f}" for v in values)

    text = (f"{run.name}: validation accuracy at steps "
            f"{', '.join(str(p['step']) for p in run.eval_points)}: {series('accuracy')}%")
    if any(p.get("step_validity") is not None for p in run.eval_points):
        text += f"; step validity {series('step_validity')}%"
    return text + "."


_BUILDERS = {"headline": _headline, "ladder": _ladder, "data_efficiency": _data_efficiency,
             "length": _length, "larger_numbers": _larger_numbers,
             "modular_sum": _modular_sum}


def evaluate_findings(runs: Sequence[RunResult]) -> list[Finding]:
    """Every finding, in the study's order, from whatever runs exist (a finding
    without its runs says so: ``not run yet``)."""
    return [build(runs) for build in _BUILDERS.values()]


def has_cpu_runs(runs: Sequence[RunResult]) -> bool:
    """Whether any run is one of the CPU study's (the findings then apply)."""
    return any(r.dataset in (DATASET, SM_DATASET) for r in runs)


# ----------------------------------------------------------------- markdown


def summary_table(findings: Sequence[Finding]) -> list[str]:
    """One row per finding: claim, the study's figure, ours, verdict."""
    lines = ["| finding | the study | ours (%: mean ± std over seeds; effect [95% interval]) "
             "| verdict |",
             "|---|---|---|---|"]
    for finding in findings:
        shown = [a for a in finding.arms if a.measured and (
            finding.summary_arms is None or a.label in finding.summary_arms)]
        ours = "; ".join(_arm_text(a) for a in shown) or MISSING
        if shown and finding.effects[0].interval is not None:
            e, interval = finding.effects[0], finding.effects[0].interval
            ours += (f"; {e.label} {points(interval.d)} [{points(interval.low)}, "
                     f"{points(interval.high)}]")
        lines.append(f"| {finding.title} | {finding.study} | {ours} | {finding.verdict_text} |")
    return lines


def _arm_text(arm: Arm) -> str:
    stat = arm.stat
    text = f"{arm.label} {100 * stat.mean:.1f}"
    if stat.std is not None:
        text += f" ± {100 * stat.std:.1f}"
    return text + (f" (n={stat.n})" if stat.n > 1 else "")


def render_findings(findings: Sequence[Finding], plots: Mapping[str, str]) -> list[str]:
    """The report's findings section: the summary, the rule, one part per finding."""
    lines = ["## The study's findings at CPU scale", "",
             "Each finding of the study, tested with the CPU preset's tiny model trained "
             "from scratch (`explistops reproduce --preset cpu-study`). Compare effects, "
             "not levels: the study fine-tuned pretrained T5 on larger problems.", "",
             *summary_table(findings), "", "**Verdict rule.** " + VERDICT_RULE, ""]
    for finding in findings:
        lines += [f"### {finding.title}", "",
                  f"- **Claim**: {finding.claim}",
                  f"- **The study**: {finding.study}",
                  f"- **Here**: {finding.setup}",
                  f"- **Verdict**: {finding.verdict_text}", ""]
        lines += ["| arm | per seed (%) | mean ± std (%) | seeds | test examples |",
                  "|---|---|---|---:|---:|"]
        for arm in finding.arms:
            if arm.measured:
                stat = arm.stat
                spread = f" ± {100 * stat.std:.1f}" if stat.std is not None else ""
                lines.append(f"| {arm.label} | {', '.join(f'{100 * v:.1f}' for v in arm.values)}"
                             f" | {100 * stat.mean:.1f}{spread} | {stat.n} | "
                             f"{arm.num_examples or MISSING} |")
            else:
                lines.append(f"| {arm.label} | {MISSING} | {MISSING} | 0 | {MISSING} |")
        lines += ["", "Effects (points, [95% interval]):", ""]
        lines += [f"- {effect.text()}" for effect in finding.effects]
        lines += [f"- {note}" for note in finding.notes]
        if finding.name in plots:
            lines += ["", f"![{finding.title}]({plots[finding.name]})"]
        lines.append("")
    return lines
