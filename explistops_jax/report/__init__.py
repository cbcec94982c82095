"""Tables and plots of finished runs, measured figures beside the study's published ones.

:func:`collect` reads run directories (:mod:`.runs`, through
:mod:`explistops_jax.rundir`); :func:`write_report` writes ``report.md``
(:mod:`.markdown`, atomically) and PNG plots (:mod:`.plots`) beside it. The study's
table has models as rows and explanation styles as columns; runs that differ only
in their seed are pooled into one cell, shown as mean ± sample standard deviation
and the number of seeds (:mod:`.statistics`); the study's own figures are
:mod:`.published`.

Reading never fails on a missing or half-written file: what is absent shows as
"—" (not measured) and is listed under the run's problems, and a metric that does
not apply (step faithfulness without explanations: ``null`` in the metrics file)
shows as "n/a". Output is deterministic: rows and columns are sorted, and there is
no timestamp.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Sequence

from etils import epath

from explistops_jax import rundir
from explistops_jax.report.findings import (VERDICT_RULE, Finding, evaluate_findings,
                                            has_cpu_runs)
from explistops_jax.report.markdown import render_markdown
from explistops_jax.report.plots import write_finding_plots, write_plots
from explistops_jax.report.published import (PUBLISHED, STUDY_DATASET, STUDY_TRAIN_EXAMPLES,
                                             Published, published_rows)
from explistops_jax.report.runs import (CONDITIONS, LONGER_SPLITS, NOT_HELD_OUT, TEST_SPLIT,
                                        RunResult, SplitResult, collect, find_runs,
                                        longer_split, model_rank, read_run)
from explistops_jax.report.statistics import (MISSING, NOT_APPLICABLE, GroupKey, Margin, Stat,
                                              format_stat, margins)

__all__ = [
    "CONDITIONS",
    "Finding",
    "GroupKey",
    "LONGER_SPLITS",
    "MISSING",
    "Margin",
    "NOT_APPLICABLE",
    "NOT_HELD_OUT",
    "PUBLISHED",
    "Published",
    "RunResult",
    "STUDY_DATASET",
    "STUDY_TRAIN_EXAMPLES",
    "SplitResult",
    "Stat",
    "TEST_SPLIT",
    "collect",
    "evaluate_findings",
    "find_runs",
    "format_stat",
    "longer_split",
    "margins",
    "model_rank",
    "published_rows",
    "read_run",
    "render_markdown",
    "write_plots",
    "write_report",
    "write_report_from_runs",
]


def write_report(run_dirs_or_parent: str | os.PathLike | Iterable[str | os.PathLike],
                 out_dir: str | os.PathLike) -> Path | epath.Path:
    """Reads the runs and writes ``out_dir/report.md`` plus its PNG plots
    (``out_dir`` may be a URL such as ``gs://bucket/runs``).

    Returns the path of report.md (a ``pathlib.Path`` when local, else an
    ``epath.Path``).

    Raises:
      UserError: no run found under the given paths.
    """
    return write_report_from_runs(collect(run_dirs_or_parent), out_dir)


def write_report_from_runs(runs: Sequence[RunResult],
                           out_dir: str | os.PathLike) -> Path | epath.Path:
    """:func:`write_report` for runs already read by :func:`collect`."""
    out_dir = epath.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = write_plots(runs, out_dir)
    found, finding_plots = [], {}
    if has_cpu_runs(runs):  # the CPU study's findings, with their verdicts
        found = evaluate_findings(runs)
        finding_plots = write_finding_plots(found, runs, out_dir)
        rundir.write_json(out_dir / rundir.FINDINGS_JSON,
                          {"verdict_rule": VERDICT_RULE,
                           "findings": [f.to_json() for f in found]})
    path = out_dir / rundir.REPORT_FILE
    rundir.write_text(path, render_markdown(runs, out_dir, plots, found, finding_plots))
    return Path(path) if rundir.is_local(path) else path  # pathlib's API where it can
