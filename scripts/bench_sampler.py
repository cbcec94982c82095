#!/usr/bin/env python
"""Benchmark the ListOps sampler against naive whole-tree rejection, side by side.

For each configuration it measures samples per second of

* ``sample``: the project's sampler (shape first, early abort; per-example seeds),
* ``sample_naive``: LRA's procedure (grow the whole tree, then reject) with the same
  random primitives, so the ratio measures the algorithm,
* ``lra_style``: the same procedure written with the standard library's
  ``randint``/``choice`` calls, as LRA's generator code does (for scale only),

interleaving short slices of each. Time is the process's CPU time, so load from
other processes on a shared machine changes the rates little and the ratios less.
Every slice finishes the sample it is working on, so rates are unbiased. It then compares the distributions of the trees each produced (chi-square
tests of length, depth, root operator and argument counts; scipy needed for the
p-values) and prints a Markdown table plus the machine it ran on.

    python scripts/bench_sampler.py                 # about 2 x 3 x 20 s
    python scripts/bench_sampler.py --seconds 5     # quicker, noisier
"""

from __future__ import annotations

import argparse
import collections
import gc
import os
import platform
import random
import sys
import time
from typing import Callable

from explistops_jax.listops import (
    Node,
    SamplerConfig,
    Tree,
    depth,
    length,
    sample,
    sample_naive,
    sample_with_attempts,
)
from machine_info import cpu_model, load_average

CONFIGS = {
    "explistops30 (20-50, depth 10)": SamplerConfig(min_length=20, max_length=50),
    "len100_200 (100-200, depth 10)": SamplerConfig(min_length=100, max_length=200),
}


def lra_style(config: SamplerConfig, rng: random.Random) -> Tree:
    """Whole-tree rejection written with randint/choice per node, like LRA's code."""
    values = range(config.min_value, config.max_value + 1)

    def grow(node_depth: int) -> tuple[Tree, int]:
        if node_depth < config.max_depth and rng.random() <= config.value_p:
            size, args = 2, []
            for _ in range(rng.randint(config.min_args, config.max_args)):
                child, child_size = grow(node_depth + 1)
                args.append(child)
                size += child_size
            return Node(rng.choice(config.operators), tuple(args)), size
        return rng.choice(values), 1

    while True:
        size, args = 2, []
        for _ in range(rng.randint(config.min_args, config.max_args)):  # the root
            child, child_size = grow(2)
            args.append(child)
            size += child_size
        if config.min_length < size < config.max_length:
            return Node(rng.choice(config.operators), tuple(args))


def measure(config: SamplerConfig, seconds: float, slice_seconds: float = 0.5,
            keep: int = 20_000) -> dict:
    """Interleaved timing of the three samplers; returns rates and (up to ``keep``) trees."""
    naive_rng, lra_rng = random.Random(1), random.Random(2)
    index = 0

    def project() -> Tree:
        nonlocal index
        index += 1
        return sample(config, 0, index)

    samplers: dict[str, Callable[[], Tree]] = {
        "sample": project,
        "sample_naive": lambda: sample_naive(config, naive_rng),
        "lra_style": lambda: lra_style(config, lra_rng),
    }
    elapsed = dict.fromkeys(samplers, 0.0)
    counts = dict.fromkeys(samplers, 0)
    trees: dict[str, list[Tree]] = {name: [] for name in samplers}
    # Trees hold no reference cycles, so the cyclic garbage collector only adds
    # traversals of the kept trees, at times that would depend on the interleaving:
    # it is paused while timing and run between slices.
    while min(elapsed.values()) < seconds:
        for name, draw in samplers.items():
            kept = trees[name]
            gc.collect()
            gc.disable()
            start = time.process_time()
            while time.process_time() - start < slice_seconds:
                tree = draw()
                counts[name] += 1
                if len(kept) < keep:
                    kept.append(tree)
            elapsed[name] += time.process_time() - start
            gc.enable()
    rates = {name: counts[name] / elapsed[name] for name in samplers}
    attempts = [sample_with_attempts(config, 0, i)[1] for i in range(2000)]
    return {"rates": rates, "trees": trees, "attempts": sum(attempts) / len(attempts)}


def histograms(trees: list[Tree]) -> dict[str, collections.Counter]:
    """Length, depth, root operator, root argument count of each tree."""
    out: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for tree in trees:
        assert isinstance(tree, Node)
        out["length"][length(tree)] += 1
        out["depth"][depth(tree)] += 1
        out["root operator"][tree.op] += 1
        out["root arguments"][len(tree.args)] += 1
    return out


def chi_square_p(left: collections.Counter, right: collections.Counter) -> float | None:
    """p-value that two histograms come from one distribution (sparse bins merged)."""
    try:
        from scipy import stats
    except ImportError:
        return None
    rows, pending = [], [0, 0]
    for key in sorted(set(left) | set(right), key=str):
        pending = [pending[0] + left[key], pending[1] + right[key]]
        if sum(pending) >= 10:
            rows.append(pending)
            pending = [0, 0]
    if rows and sum(pending):
        rows[-1] = [rows[-1][0] + pending[0], rows[-1][1] + pending[1]]
    if len(rows) < 2:
        return 1.0
    return float(stats.chi2_contingency(list(zip(*rows)))[1])


def machine() -> str:
    """One line about the machine: CPU model, cores, Python, load."""
    return (f"{cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
            f"load average {load_average():.1f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0,
                        help="CPU seconds per sampler per configuration (default: 20)")
    args = parser.parse_args(argv)
    print(f"machine: {machine()}")
    print()
    print("| configuration | sample /CPU s | sample_naive /CPU s | lra_style /CPU s | speedup vs naive "
          "| vs lra_style | attempts per tree |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    comparisons = []
    for name, config in CONFIGS.items():
        result = measure(config, args.seconds)
        rates = result["rates"]
        print(f"| {name} | {rates['sample']:,.0f} | {rates['sample_naive']:,.0f} | "
              f"{rates['lra_style']:,.0f} | {rates['sample'] / rates['sample_naive']:.1f}x | "
              f"{rates['sample'] / rates['lra_style']:.1f}x | {result['attempts']:.1f} |",
              flush=True)
        ours = histograms(result["trees"]["sample"])
        naive = histograms(result["trees"]["sample_naive"] + result["trees"]["lra_style"])
        for feature in ours:
            comparisons.append((name, feature, len(result["trees"]["sample"]),
                                sum(naive[feature].values()),
                                chi_square_p(ours[feature], naive[feature])))
    print()
    print("| configuration | feature | trees (sample) | trees (naive) | chi-square p |")
    print("|---|---|---:|---:|---:|")
    for name, feature, n_ours, n_naive, p in comparisons:
        shown = "n/a (no scipy)" if p is None else f"{p:.3f}"
        print(f"| {name} | {feature} | {n_ours:,} | {n_naive:,} | {shown} |")
    print()
    print(f"after: {machine()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
