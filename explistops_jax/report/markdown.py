"""The report's text: Markdown tables of the runs, rendered in a fixed order.

Sections: the headline margin, main results (model x style), the published
figures beside the measured ones, held-out splits, breakdowns by length and depth,
plots, datasets, and every run with its problems. Output is deterministic: rows and
columns are sorted, and there is no timestamp.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from explistops_jax import rundir
from explistops_jax.scoring import bucket_label, bucket_start
from explistops_jax.report.findings import render_findings
from explistops_jax.report.published import (STUDY_DATASET, STUDY_TRAIN_EXAMPLES,
                                             published_rows)
from explistops_jax.report.runs import (NOT_HELD_OUT, TEST_SPLIT, RunResult, longer_split,
                                        split_key)
from explistops_jax.report.statistics import (MISSING, NOT_APPLICABLE, Stat, format_stat,
                                              group_runs, margins, metric_stat, pct,
                                              points, row_labels, styles_of)


def table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """A Markdown table's lines (``|`` in a cell escaped)."""
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return [line(header), "|" + "|".join("---" for _ in header) + "|", *map(line, rows)]


def _headline_lines(runs: Sequence[RunResult]) -> list[str]:
    found = [m for m in margins(runs) if m.headline]
    if not found:
        return ["No margin: the report needs runs with and without explanations "
                "(condition main) with test metrics."]
    labels = row_labels(list(group_runs([r for r in runs if r.condition == "main"])))
    lines = []
    for m in found:
        seeds = ", ".join(points(d) for _, d in m.per_seed)
        if not m.paired:
            detail = "no common seed: difference of the means"
        elif len(m.per_seed) == 1:
            detail = "1 seed"
        else:
            detail = (f"{len(m.per_seed)} seeds; per seed {seeds}; smallest "
                      f"{points(min(d for _, d in m.per_seed))}")
        lines.append(f"- **{labels[m.group]}**: test accuracy with {m.style} explanations "
                     f"minus without = **{format_stat(m.stat, sign=True, seeds=False)} "
                     f"points** ({detail}).")
    return lines


def _main_tables(runs: Sequence[RunResult]) -> list[str]:
    groups = group_runs([r for r in runs if r.condition == "main"])
    if not groups:
        return ["No run of condition `main`."]
    labels, styles = row_labels(list(groups)), styles_of(groups)
    out: list[str] = []
    for title, metric in (("Test accuracy (%)", "accuracy"),
                          ("Step faithfulness (%): every step right, in order",
                           "step_faithfulness"),
                          ("Parse failures (%): no answer could be read", "parse_failure_rate")):
        out += [f"### {title}", ""]
        out += table(["Model", *styles], (
            [labels[key], *(format_stat(metric_stat(by_style.get(s, []), metric)) for s in styles)]
            for key, by_style in groups.items()))
        out.append("")
    out += ["### Margin over no explanation (test accuracy, points)", ""]
    rows = [[labels[m.group], m.style, format_stat(m.stat, sign=True, seeds=False),
             str(len(m.per_seed)) if m.paired else "0 (unpaired)",
             ", ".join(points(d) for _, d in m.per_seed) or MISSING,
             ", ".join(r for r, on in (("headline", m.headline), ("best", m.best)) if on)]
            for m in margins(runs)]
    out += table(["Model", "Style", "Margin", "Seeds paired", "Per seed", "Role"], rows) \
        if rows else ["No margin: no row has runs with and without explanations."]
    return out + [""]


def _breakdown_tables(runs: Sequence[RunResult], kind: str) -> list[str]:
    main = [r for r in runs if r.condition == "main"]
    groups = group_runs(main)
    labels = row_labels(list(groups))
    splits = sorted({s for r in main for s in r.splits if s not in NOT_HELD_OUT}, key=split_key)
    out: list[str] = []
    for key, by_style in groups.items():
        for split in splits:
            buckets = sorted({b for rs in by_style.values() for r in rs
                              for b in r.breakdown(kind, split)}, key=_bucket_key)
            if not buckets:
                continue
            styles = list(by_style)
            out += [f"### {labels[key]}, split `{split}`", ""]
            out += table([kind.capitalize(), *styles], (
                [bucket_label(bucket),
                 *(format_stat(Stat.of(r.breakdown(kind, split).get(bucket)
                                       for r in by_style[s])) for s in styles)]
                for bucket in buckets))
            out.append("")
    return out or ["No breakdown in the metrics files.", ""]


def _bucket_key(bucket: str) -> tuple[int, str]:
    return (bucket_start(bucket) or 0, bucket)


def _splits_table(runs: Sequence[RunResult]) -> list[str]:
    groups = group_runs(runs)
    splits = sorted({s for r in runs for s in r.splits if s not in NOT_HELD_OUT}, key=split_key)
    if not splits:
        return ["No held-out split was evaluated.", ""]
    rows = []
    for (condition, model, dataset, examples), by_style in groups.items():
        for style, style_runs in by_style.items():
            rows.append([condition, model, dataset or "?",
                         f"{examples:,}" if examples is not None else "?", style,
                         *(format_stat(metric_stat(style_runs, "accuracy", s)) for s in splits)])
    return table(["Condition", "Model", "Dataset", "Train examples", "Style",
                   *(f"`{s}`" for s in splits)], rows) + [""]


def _published_table(runs: Sequence[RunResult]) -> list[str]:
    rows = [[r["figure"], r["setting"], r["published"], r["measured"], r["measured_on"],
             r["differences"]] for r in published_rows(runs)]
    return table(["Figure", "Study setting", "Published (%)", "Measured (%)",
                   "Measured on", "Measured setup differs"], rows) + [""]


def _dataset_configs() -> dict[str, Any]:
    """Known dataset configs (the built-ins, the CPU demo's included, and any
    registered in this process)."""
    from explistops_jax import data

    return dict(data.DATASETS)


def _dataset_lines(runs: Sequence[RunResult]) -> list[str]:
    names = sorted({run.dataset for run in runs if run.dataset})
    if not names:
        return ["The runs do not name their dataset.", ""]
    configs = _dataset_configs()
    study = configs.get(STUDY_DATASET)
    lines = []
    for name in names:
        config = configs.get(name)
        if config is None:
            described = next((str(r.info["dataset_description"]) for r in runs
                              if r.dataset == name and r.info.get("dataset_description")),
                             "not a built-in dataset; see the preset that made the runs")
            lines.append(f"- `{name}`: {described}.")
            continue
        text = f"- `{name}`: {_describe(config)}"
        if study is not None and name != STUDY_DATASET:
            diff = _compare(config, study)
            text += f" Differs from {STUDY_DATASET}: {diff}." if diff else ""
        lines.append(text)
    return lines + [""]


def _describe(config) -> str:
    """One line: description, split sizes, and the trees of each distinct sampler."""
    sizes = ", ".join(f"{name} {split.num_examples:,}" for name, split in config.splits.items())
    text = (f"{config.description}. " if config.description else "")
    text += f"SM modulo {config.modulus}; {sizes} examples"
    samplers: dict[Any, list[str]] = {}
    for name, split in config.splits.items():
        samplers.setdefault(split.sampler, []).append(name)
    for sampler, names in samplers.items():
        where = "" if len(samplers) == 1 else f" ({', '.join(names)})"
        text += f"; trees{where}: {_sampler_text(sampler)}"
    return text + "."


def _sampler_text(s) -> str:
    # The length window is strict (min_length < length < max_length): shown inclusive.
    return (f"values {s.min_value}-{s.max_value}, lengths {s.min_length + 1}-"
            f"{s.max_length - 1}, depth < {s.max_depth}, {s.min_args}-{s.max_args} arguments")


def _compare(config, study) -> str:
    if "train" not in config.splits or "train" not in study.splits:
        return ""
    mine, theirs = config.splits["train"], study.splits["train"]
    diffs = []
    for label, attr in (("values", ("min_value", "max_value")),
                        ("lengths", ("min_length", "max_length")),
                        ("max depth", ("max_depth",)), ("arguments", ("min_args", "max_args")),
                        ("operators", ("operators",))):
        a = [getattr(mine.sampler, n) for n in attr]
        b = [getattr(theirs.sampler, n) for n in attr]
        if label == "lengths":  # strict window, shown inclusive as in _sampler_text
            a, b = [a[0] + 1, a[1] - 1], [b[0] + 1, b[1] - 1]
        if a != b:
            diffs.append(f"{label} {_span(a)} vs {_span(b)}")
    if config.modulus != study.modulus:
        diffs.append(f"modulus {config.modulus} vs {study.modulus}")
    if mine.num_examples != theirs.num_examples:
        diffs.append(f"{mine.num_examples:,} vs {theirs.num_examples:,} training examples")
    return ", ".join(diffs)


def _span(values: list) -> str:
    if len(values) == 1:
        value = values[0]
        return "/".join(value) if isinstance(value, tuple) else str(value)
    return "-".join(map(str, values))


def _runs_table(runs: Sequence[RunResult], out_dir: Path) -> list[str]:
    rows = []
    for run in runs:
        test = run.splits.get(TEST_SPLIT)
        rows.append([
            f"[{run.name}]({_relative(run.run_dir, out_dir)})", run.condition, run.model,
            run.style, str(run.seed) if run.seed is not None else MISSING,
            run.dataset or MISSING,
            f"{run.train_examples:,}" if run.train_examples is not None else MISSING,
            str(run.last_step) if run.last_step is not None else MISSING,
            f"{pct(run.metric('accuracy'))} (step {test.step}, "
            f"{test.num_examples if test.num_examples is not None else '?'} ex.)"
            if test else MISSING,
            ", ".join(sorted(run.splits, key=split_key)) or MISSING,
            "; ".join(run.problems) or "",
        ])
    return table(["Run", "Condition", "Model", "Style", "Seed", "Dataset", "Train examples",
                   "Last step", "Test accuracy (%)", "Splits", "Problems"], rows) + [""]


def _relative(path: Path, start: Path) -> str:
    """``path`` as a link from ``start``: relative when both are local, or when
    both are URLs and ``path`` is below ``start``; else ``path`` itself."""
    if not (rundir.is_local(path) and rundir.is_local(start)):
        inside = str(path).startswith(str(start).rstrip("/") + "/")
        return str(path)[len(str(start).rstrip("/")) + 1:] if inside else str(path)
    try:
        return Path(os.path.relpath(path.resolve(), start.resolve())).as_posix()
    except ValueError:  # another drive
        return path.resolve().as_posix()


def _truncation_lines(runs: Sequence[RunResult]) -> list[str]:
    """A section naming every run whose lengths cut examples (allowed), if any."""
    cut = [(run, run.truncated()) for run in runs if run.truncated()]
    if not cut:
        return []
    lines = ["## Truncated examples", "",
             "These runs were trained or scored with lengths that cut some examples "
             "(`--allow_truncation`): a cut explanation loses its final answer, so their "
             "figures are not comparable with runs that saw every example whole.", ""]
    for run, counts in cut:
        lines.append(f"- {run.name}: " + "; ".join(
            f"{where}: {count:,} examples cut" for where, count in sorted(counts.items())))
    return lines + [""]


def render_markdown(runs: Sequence[RunResult], out_dir: Path,
                    plots: Mapping[str, str], findings: Sequence[Any] = (),
                    finding_plots: Mapping[str, str] | None = None) -> str:
    """The report's text; ``plots`` maps a plot file name to its caption;
    ``findings``: the CPU study's (report.findings), shown first when given."""
    longer = longer_split([r for r in runs if r.condition == "main"])
    lines = [
        "# Explained-ListOps: results",
        "",
        f"{len(runs)} run(s). Cells are percentages on held-out data: the mean over seeds "
        "± the sample standard deviation, with the number of seeds (n) when more than "
        f"one. {MISSING} = not measured (no run or no metrics file); {NOT_APPLICABLE} = "
        "does not apply (e.g. step faithfulness without explanations). Answers are "
        "parsed in full (not by their last character, as in the study's code).",
        "",
        *(render_findings(findings, finding_plots or {}) if findings else []),
        "## Headline: explanations versus none",
        "",
        *_headline_lines(runs),
        "",
        "## Main results (model × explanation style, test split)",
        "",
        *_main_tables(runs),
        "## Measured beside published",
        "",
        "Published = the study's figures (Ballout et al., ACML 2023; pretrained T5, "
        f"{STUDY_DATASET}, {STUDY_TRAIN_EXAMPLES:,} training examples, 30 epochs). "
        "Measured = the runs of this report. Where the measured setup differs (the last "
        "column; e.g. the CPU preset trains a tiny model from scratch on smaller problems), "
        "compare the effect of explanations, not the level.",
        "",
        *_published_table(runs),
        "## Held-out and generalization splits (accuracy %)",
        "",
        (f"The longer-sequence split is `{longer}`." if longer else
         "No longer-sequence split was evaluated for the main runs."),
        "",
        *_splits_table(runs),
        "## Accuracy by expression length (%)",
        "",
        *_breakdown_tables(runs, "length"),
        "## Accuracy by depth (%)",
        "",
        *_breakdown_tables(runs, "depth"),
        "## Plots",
        "",
    ]
    if plots:
        for name, caption in plots.items():
            lines += [f"![{caption}]({name})", "", f"*{caption}* ([{name}]({name}))", ""]
    else:
        lines += ["No plot: the runs have no logs or test metrics.", ""]
    lines += _truncation_lines(runs)
    lines += ["## Datasets", "", *_dataset_lines(runs), "## Runs", "", *_runs_table(runs, out_dir)]
    return "\n".join(lines).rstrip() + "\n"
