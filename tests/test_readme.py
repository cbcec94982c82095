"""The README's CPU-study table and summary are the committed report's
(scripts/sync_readme_findings.py copies them)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _sync():
    spec = importlib.util.spec_from_file_location(
        "sync_readme_findings", ROOT / "scripts" / "sync_readme_findings.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_findings_match_the_report():
    sync = _sync()
    readme = (ROOT / "README.md").read_text()
    assert sync.synced(readme, sync.sections()) == readme, (
        "README.md's findings differ from docs/cpu_study: run "
        "python scripts/sync_readme_findings.py")


def test_the_summary_names_every_finding_and_its_verdict():
    sync = _sync()
    record = {"findings": [
        {"title": "A", "verdict": "reproduced", "arms": [{"num_seeds": 5}, {"num_seeds": 3}],
         "effects": [{"label": "x − y", "d": 0.3, "low": 0.25, "high": 0.35}]},
        {"title": "B", "verdict": "not run yet", "arms": [], "effects": [{"label": "z"}]}]}
    assert sync.summary(record) == (
        "- **A**: reproduced (x − y: +30.0 points [+25.0, +35.0]; 3-5 seeds per arm).\n"
        "- **B**: not run yet (z: not measured).")
