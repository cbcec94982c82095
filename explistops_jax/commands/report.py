"""``explistops report``: the study's tables and plots from finished runs.

Each RUN_DIR is a run directory (holding ``run.json``) or a folder with run
directories below it, such as the ``--out`` folder of ``explistops reproduce``.
Writes ``report.md`` and PNG plots into ``--out`` (default: the folder that holds
all the given RUN_DIRs) and prints the path of the report and the headline margins.
"""

from __future__ import annotations

import argparse
import os
import posixpath
from pathlib import Path

from etils import epath

from explistops_jax import rundir


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``explistops report``."""
    parser.add_argument("run_dirs", metavar="RUN_DIR", nargs="+",
                        help="a run directory, or a folder holding run directories")
    parser.add_argument("--out", metavar="DIR", default=None,
                        help="where report.md and the plots go (default: the common "
                             "parent of the RUN_DIRs; the RUN_DIR itself when one is given)")


def run(args: argparse.Namespace) -> int:
    """Collect, write, and print where the report is."""
    from explistops_jax import report  # matplotlib and friends only when running

    out = epath.Path(args.out) if args.out else _default_out(args.run_dirs)
    runs = report.collect(args.run_dirs)
    path = report.write_report_from_runs(runs, out)
    print(f"{len(runs)} run(s); report: {path}")
    for m in report.margins(runs):
        if m.headline:
            print(f"  {m.group[1]}: {m.style} - none = "
                  f"{report.format_stat(m.stat, sign=True)} points (test accuracy)")
    return 0


def _default_out(run_dirs: list[str]) -> epath.Path:
    urls = [rundir.split_url(p) for p in run_dirs]
    if any(scheme for scheme, _ in urls):  # URLs (gs://...): no os.path on them
        schemes = {scheme for scheme, _ in urls}
        if len(schemes) == 1:
            scheme = schemes.pop()
            common = posixpath.commonpath([rest for _, rest in urls])
            if common:
                return epath.Path(f"{scheme}://{common}")
        return epath.Path(run_dirs[0])
    paths = [os.path.abspath(p) for p in run_dirs]
    try:
        return Path(os.path.commonpath(paths))
    except ValueError:  # different drives
        return Path(paths[0])
