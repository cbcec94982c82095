"""Where the CPU demo's time goes: one row per run, runs side by side.

    python scripts/demo_phases.py runs/cpu [runs/cpu_before ...] [--runs all]

For each run directory below each given directory (``explistops reproduce``
output), from its own files: the run's wall time (done.json ``seconds``), the
training steps (the sum of train_log.jsonl's ``step_time_s``), the periodic
validation evaluations (eval_log.jsonl's ``eval_seconds``, written since this
script exists), the rest of training (start-up, imports, compilation,
checkpoints: done.json ``train_seconds`` minus both), and the final evaluation
of the test and generalization splits (done.json ``eval_seconds``). Runs written
before those fields existed show "?" where a phase cannot be told apart.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            pass  # a line cut by a kill
    return rows


def phases(run_dir: Path) -> dict:
    done = json.loads((run_dir / "done.json").read_text())
    train_log = _jsonl(run_dir / "train_log.jsonl")
    eval_log = _jsonl(run_dir / "eval_log.jsonl")
    steps = sum(r.get("step_time_s", 0.0) for r in train_log)
    timed = [r["eval_seconds"] for r in eval_log if "eval_seconds" in r]
    validation = sum(timed) if timed or not eval_log else None
    train = done.get("train_seconds")
    other = (train - steps - validation) if train is not None and validation is not None else None
    return {"run": run_dir.name, "total": done.get("seconds"), "steps": steps,
            "num_steps": len(train_log), "step_s": steps / max(len(train_log), 1),
            "validation": validation, "other_train": other,
            "final_eval": done.get("eval_seconds")}


def _fmt(value, unit=60.0) -> str:
    return "?" if value is None else f"{value / unit:.1f}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dirs", nargs="+", help="reproduce output directories")
    parser.add_argument("--runs", default="cpu_none_seed0,cpu_medium_seed0",
                        help="comma-separated run names (default: the README demo's two "
                             "runs); 'all' for every finished run")
    args = parser.parse_args(argv)
    names = None if args.runs == "all" else set(args.runs.split(","))
    print("| runs | run | total (min) | steps (min) | steps x s/step | validation evals "
          "(min) | start-up, compile, checkpoints (min) | final evaluation (min) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for top in args.dirs:
        runs = sorted(p.parent for p in Path(top).glob("*/done.json")
                      if names is None or p.parent.name in names)
        if not runs:
            print(f"no finished run (done.json) under {top}", file=sys.stderr)
            return 2
        total = 0.0
        for run in runs:
            row = phases(run)
            total += row["total"] or 0.0
            print(f"| {top} | {row['run']} | {_fmt(row['total'])} | {_fmt(row['steps'])} | "
                  f"{row['num_steps']} x {row['step_s']:.3f} | {_fmt(row['validation'])} | "
                  f"{_fmt(row['other_train'])} | {_fmt(row['final_eval'])} |")
        print(f"| {top} | **all** | **{total / 60:.1f}** | | | | | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
