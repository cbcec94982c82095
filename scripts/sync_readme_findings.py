"""Copy the CPU study's findings table and summary from its report into README.md.

The README shows the table of docs/cpu_study/report.md and a summary written from
docs/cpu_study/findings.json, between their markers; tests/test_readme.py checks
that they match. Run after `explistops report docs/cpu_study/runs --out docs/cpu_study`.

    python scripts/sync_readme_findings.py          # rewrite README.md
    python scripts/sync_readme_findings.py --check  # exit 1 if README.md is stale
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from explistops_jax.report.statistics import points

ROOT = Path(__file__).resolve().parent.parent
TABLE = ("<!-- findings table: from docs/cpu_study/report.md -->", "<!-- end of findings table -->")
SUMMARY = ("<!-- findings summary -->", "<!-- end of findings summary -->")


def report_table(report: str) -> str:
    """The findings summary table of a report (its first table after the heading)."""
    section = report.split("## The study's findings at CPU scale", 1)[1]
    table: list[str] = []
    for line in section.splitlines():
        if line.startswith("|"):
            table.append(line)
        elif table:
            break
    return "\n".join(table)


def summary(record: dict) -> str:
    """One line per finding: its verdict, effect, interval and seeds."""
    lines = []
    for finding in record["findings"]:
        effect = finding["effects"][0]
        seeds = sorted({a["num_seeds"] for a in finding["arms"] if a.get("num_seeds")})
        what = (f"{points(effect['d'])} points [{points(effect['low'])}, "
                f"{points(effect['high'])}]" if "d" in effect else "not measured")
        count = f"{seeds[0]}-{seeds[-1]}" if len(seeds) > 1 else str(seeds[0]) if seeds else ""
        noun = "seed" if count == "1" else "seeds"
        seed_text = f"; {count} {noun} per arm" if seeds and "d" in effect else ""
        verdict = finding["verdict"] + (f", {finding['scope']}" if finding.get("scope") else "")
        lines.append(f"- **{finding['title']}**: {verdict} ({effect['label']}: "
                     f"{what}{seed_text}).")
    return "\n".join(lines)


def sections(root: Path = ROOT) -> dict[tuple[str, str], str]:
    report = (root / "docs" / "cpu_study" / "report.md").read_text()
    record = json.loads((root / "docs" / "cpu_study" / "findings.json").read_text())
    return {TABLE: report_table(report), SUMMARY: summary(record)}


def synced(readme: str, parts: dict[tuple[str, str], str]) -> str:
    for (start, end), body in parts.items():
        head, rest = readme.split(start, 1)
        _, tail = rest.split(end, 1)
        readme = f"{head}{start}\n{body}\n{end}{tail}"
    return readme


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args(argv)
    path = ROOT / "README.md"
    text = path.read_text()
    new = synced(text, sections())
    if args.check:
        print("up to date" if new == text else "README.md is stale", file=sys.stderr)
        return 0 if new == text else 1
    path.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
