#!/usr/bin/env python
"""Start-up cost of a process: the installed ml_dtypes against another version,
side by side.

Every Python process of the project imports jax, and jax imports ml_dtypes,
whose extension registers its dtypes' NumPy loops and casts when it loads.
ml_dtypes 0.7.0 takes 0.6 to 1.3 s for that on the machine measured here,
0.6.0 a few milliseconds (docs/benchmarks.md), which is why pyproject.toml
excludes 0.7.0. This script measures, in fresh processes, alternating:

* ``import ml_dtypes`` after ``import numpy`` (the extension's load alone),
* ``import explistops_jax.train, explistops_jax.trainer`` (what ``explistops
  train`` imports before it reads its gin files), whole-process wall time,

for the installed ml_dtypes and, with ``--baseline DIR``, for the ml_dtypes
installed in DIR (put first on ``PYTHONPATH``):

    pip install --no-deps --target /tmp/ml_dtypes_070 ml_dtypes==0.7.0
    python scripts/bench_startup.py --baseline /tmp/ml_dtypes_070 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from machine_info import cpu_model, load_average

_EXTENSION = ("import json, time, numpy\n"
              "t = time.perf_counter()\n"
              "import ml_dtypes\n"
              "print(json.dumps({'version': ml_dtypes.__version__, "
              "'seconds': time.perf_counter() - t}))\n")
_ENTRY = "import explistops_jax.train, explistops_jax.trainer\n"


def _environment(path: str | None) -> dict[str, str]:
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
    if path:
        env["PYTHONPATH"] = os.pathsep.join(
            [path, *filter(None, [env.get("PYTHONPATH")])])
    return env


def extension_seconds(path: str | None) -> tuple[str, float]:
    """(version, seconds) of ``import ml_dtypes`` in a fresh process."""
    out = subprocess.run([sys.executable, "-c", _EXTENSION], env=_environment(path),
                         capture_output=True, text=True, check=True).stdout
    got = json.loads(out.strip().splitlines()[-1])
    return got["version"], got["seconds"]


def entry_seconds(path: str | None) -> float:
    """Wall time of a fresh process that imports the training entry point."""
    began = time.perf_counter()
    subprocess.run([sys.executable, "-c", _ENTRY], env=_environment(path),
                   capture_output=True, check=True)
    return time.perf_counter() - began


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", help="a folder holding another ml_dtypes "
                        "(pip install --no-deps --target DIR ml_dtypes==VERSION)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    if args.baseline and not (Path(args.baseline) / "ml_dtypes").is_dir():
        print(f"bench_startup: error: no ml_dtypes package in {args.baseline} "
              "(expected: pip install --no-deps --target DIR ml_dtypes==VERSION)",
              file=sys.stderr)
        return 2
    if args.repeats < 1:
        print(f"bench_startup: error: --repeats {args.repeats}: expected at least 1",
              file=sys.stderr)
        return 2
    runs = {"installed": None} | ({"baseline": args.baseline} if args.baseline else {})
    versions: dict[str, str] = {}
    times: dict[str, dict[str, list[float]]] = {
        name: {"extension": [], "entry": []} for name in runs}
    print(f"{cpu_model()}, {os.cpu_count()} cores, Python {sys.version.split()[0]}, "
          f"load {load_average():.1f}")
    for _ in range(args.repeats):  # alternating, so load drifts hit both alike
        for name, path in runs.items():
            try:
                versions[name], seconds = extension_seconds(path)
                times[name]["extension"].append(seconds)
                times[name]["entry"].append(entry_seconds(path))
            except subprocess.CalledProcessError as error:
                last = (error.stderr or b"")
                last = (last.decode() if isinstance(last, bytes) else last).strip()
                print(f"bench_startup: error: the {name} ml_dtypes"
                      f"{f' in {path}' if path else ''} failed to import: "
                      f"{last.splitlines()[-1] if last else f'exit {error.returncode}'}",
                      file=sys.stderr)
                return 1
    print("\n| ml_dtypes | import ml_dtypes (median ms) | import the training entry "
          "point, whole process (median s) |\n|---|---:|---:|")
    for name in runs:
        ext, entry = (statistics.median(times[name][k]) for k in ("extension", "entry"))
        print(f"| {versions[name]} ({name}) | {ext * 1e3:.0f} | {entry:.2f} |")
    if "baseline" in runs:
        ratio = {k: statistics.median(times["installed"][k])
                 / statistics.median(times["baseline"][k]) for k in ("extension", "entry")}
        print(f"\ninstalled / baseline: extension {ratio['extension']:.3f}, "
              f"entry point {ratio['entry']:.2f}")
    print("\nruns (s): " + json.dumps(
        {f"{versions[n]} ({n})": {k: [round(v, 3) for v in vs] for k, vs in t.items()}
         for n, t in times.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
