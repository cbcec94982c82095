"""Named dataset configurations and the examples they define.

A dataset is a modulus plus named splits; a split is a sampler config, a size and a
seed. Example ``i`` of a split is ``listops.sample(sampler, seed, i)``: any slice of
any split can be generated alone, in any process, and always gives the same bytes.
Explanation targets are added by the callers (the CLI, the SeqIO tasks) with
:mod:`explistops_jax.explain`; this module stays below it in the layering.

Splits use different seeds, so they are independent draws. Exact duplicates across
splits are possible but rare and are *not* removed: removing test trees that also
occur in train would require generating the whole training split to produce any
test example, which defeats per-example generation; the measured overlap is
recorded in docs/benchmarks.md.

Built-in datasets (sizes as in the study: 98,000 / 2,000 / 2,000):

* ``explistops30``: values 0-29, SM modulo 30, lengths 20 < L < 50, max_depth 10,
  max_args 10 (LRA's generator settings).
* ``explistops30_len50_100``: the same with lengths 50 < L < 100, plus a
  ``len100_200`` split (100 < L < 200) for length generalization.
* ``explistops30_larger_numbers``: train and validation are those of
  ``explistops30`` (same seeds, so identical); ``test`` draws values 30-99, all
  beyond the training range (answers of SM stay modulo 30).
* ``listops10``: the original ListOps numbers: values 0-9, SM modulo 10, lengths
  20-50.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

from explistops_jax.errors import UserError
from explistops_jax.listops import SamplerConfig, Tree, depth, evaluate, format, length, sample

__all__ = [
    "SplitConfig",
    "DatasetConfig",
    "DATASETS",
    "BUILTIN",
    "BUILTIN_CONFIGS",
    "get_config",
    "register_config",
    "examples",
]


@dataclass(frozen=True)
class SplitConfig:
    """One split: its tree distribution, its size and the seed of its stream."""

    sampler: SamplerConfig
    num_examples: int
    seed: int


@dataclass(frozen=True)
class DatasetConfig:
    """A named dataset: the SM modulus and its splits (e.g. train/validation/test)."""

    name: str
    modulus: int
    splits: Mapping[str, SplitConfig]
    description: str = field(default="", compare=False)

    def split(self, name: str) -> SplitConfig:
        """The split called ``name``; a clear error lists the known ones."""
        try:
            return self.splits[name]
        except KeyError:
            raise UserError(f"dataset {self.name!r} has no split {name!r}",
                            expected="one of " + ", ".join(self.splits)) from None


def _standard_splits(sampler: SamplerConfig, seed: int, train: int = 98_000,
                     validation: int = 2_000, test: int = 2_000) -> dict[str, SplitConfig]:
    """train/validation/test from one sampler, seeds ``seed + 1, + 2, + 3``."""
    return {
        "train": SplitConfig(sampler, train, seed + 1),
        "validation": SplitConfig(sampler, validation, seed + 2),
        "test": SplitConfig(sampler, test, seed + 3),
    }


_LEN_20_50 = SamplerConfig(min_length=20, max_length=50, max_depth=10, max_args=10,
                           min_value=0, max_value=29)
_LEN_50_100 = SamplerConfig(min_length=50, max_length=100, max_depth=10, max_args=10,
                            min_value=0, max_value=29)
_LEN_100_200 = SamplerConfig(min_length=100, max_length=200, max_depth=10, max_args=10,
                             min_value=0, max_value=29)
_LARGER_NUMBERS = SamplerConfig(min_length=20, max_length=50, max_depth=10, max_args=10,
                                min_value=30, max_value=99)
_LISTOPS10 = SamplerConfig(min_length=20, max_length=50, max_depth=10, max_args=10,
                           min_value=0, max_value=9)
# The CPU demo's smaller problems (explistops_jax.study): values 0-9, SM mod 10,
# 2-4 arguments, depth at most 3, lengths 10-20; "longer": lengths 20-40, depth <= 4.
_CPU = SamplerConfig(min_length=10, max_length=20, max_depth=4, max_args=4,
                     min_value=0, max_value=9)
_CPU_LONGER = SamplerConfig(min_length=20, max_length=40, max_depth=5, max_args=4,
                            min_value=0, max_value=9)
# The study's kinds of generalization test at CPU scale (explistops_jax.study's
# cpu-study): longer expressions within the training caps (depth <= 3, <= 4
# arguments, values 0-9), and the training distribution with values never seen in
# training inputs (10-99; one token each in the domain vocabulary).
_CPU_LEN_20_40 = SamplerConfig(min_length=20, max_length=40, max_depth=4, max_args=4,
                               min_value=0, max_value=9)
_CPU_LARGER_NUMBERS = SamplerConfig(min_length=10, max_length=20, max_depth=4, max_args=4,
                                    min_value=10, max_value=99)
# The larger-numbers finding's positive control: the CPU demo's trees with values
# 0-99 in training, scored on the same larger_numbers split (values 10-99).
_CPU_WIDE = SamplerConfig(min_length=10, max_length=20, max_depth=4, max_args=4,
                          min_value=0, max_value=99)
# The length finding's positive control: lengths 10-40 (the training and the test
# range) within the same caps, scored on explistops10_cpu's len20_40 split.
_CPU_LEN_10_40 = SamplerConfig(min_length=10, max_length=40, max_depth=4, max_args=4,
                               min_value=0, max_value=9)
# The study's "modular sum" task at CPU scale: the CPU demo's trees with SM only.
_CPU_SM = SamplerConfig(min_length=10, max_length=20, max_depth=4, max_args=4,
                        min_value=0, max_value=9, operators=("SM",))


def _cpu_control(cpu: DatasetConfig, name: str, sampler: SamplerConfig, seed: int,
                 split: str, description: str) -> DatasetConfig:
    """A positive control of the CPU study: its own training and validation splits
    (seeds ``seed + 1``, ``seed + 2``), scored on ``cpu``'s ``split`` (the same items)."""
    return DatasetConfig(name, cpu.modulus,
                         {"train": SplitConfig(sampler, 20_000, seed + 1),
                          "validation": SplitConfig(sampler, 500, seed + 2),
                          split: cpu.split(split)},
                         f"{description}; '{split}' is {cpu.name}'s split (the same items)")


def _builtin() -> dict[str, DatasetConfig]:
    main = _standard_splits(_LEN_20_50, 30_000)
    longer = _standard_splits(_LEN_50_100, 50_000)
    longer["len100_200"] = SplitConfig(_LEN_100_200, 2_000, 50_004)
    cpu = DatasetConfig("explistops10_cpu", 10,
                        {"train": SplitConfig(_CPU, 20_000, 70_001),
                         "validation": SplitConfig(_CPU, 500, 70_002),
                         "test": SplitConfig(_CPU, 1_000, 70_003),
                         "longer": SplitConfig(_CPU_LONGER, 500, 70_004),
                         "len20_40": SplitConfig(_CPU_LEN_20_40, 500, 70_005),
                         "larger_numbers": SplitConfig(_CPU_LARGER_NUMBERS, 500, 70_006)},
                        "CPU demo: values 0-9, SM mod 10, 2-4 arguments, depth <= 3, "
                        "lengths 10-20; 'longer': lengths 20-40, depth <= 4; 'len20_40': "
                        "lengths 20-40 within the training caps; 'larger_numbers': "
                        "values 10-99")
    configs = [
        DatasetConfig("explistops30", 30, main,
                      "Explained-ListOps-30: values 0-29, SM mod 30, lengths 20-50"),
        DatasetConfig("explistops30_len50_100", 30, longer,
                      "lengths 50-100 for training; len100_200 tests length generalization"),
        DatasetConfig("explistops30_larger_numbers", 30,
                      {"train": main["train"], "validation": main["validation"],
                       "test": SplitConfig(_LARGER_NUMBERS, 2_000, 31_003)},
                      "train as explistops30 (values 0-29); test values 30-99"),
        DatasetConfig("listops10", 10, _standard_splits(_LISTOPS10, 10_000),
                      "original ListOps numbers: values 0-9, SM mod 10, lengths 20-50"),
        cpu,
        _cpu_control(cpu, "explistops10_cpu_wide", _CPU_WIDE, 72_000, "larger_numbers",
                     "positive control for larger numbers: the CPU demo's trees with "
                     "values 0-99"),
        _cpu_control(cpu, "explistops10_cpu_len10_40", _CPU_LEN_10_40, 73_000, "len20_40",
                     "positive control for length generalization: the CPU demo's caps "
                     "with lengths 10-40"),
        DatasetConfig("explistops10_cpu_sm", 10,
                      {"train": SplitConfig(_CPU_SM, 20_000, 71_001),
                       "validation": SplitConfig(_CPU_SM, 500, 71_002),
                       "test": SplitConfig(_CPU_SM, 1_000, 71_003)},
                      "modular sum at CPU scale: the CPU demo's trees with SM (mod 10) only"),
    ]
    return {config.name: config for config in configs}


DATASETS: dict[str, DatasetConfig] = _builtin()
# The names of the configs this module defines (DATASETS also holds registered ones).
BUILTIN: tuple[str, ...] = tuple(DATASETS)
# The built-in configs as defined here (a config registered later under the same
# name with replace=True differs from its entry).
BUILTIN_CONFIGS: Mapping[str, DatasetConfig] = dict(DATASETS)
"""Every known dataset by name (built-ins plus :func:`register_config` additions)."""


def get_config(name: str) -> DatasetConfig:
    """The dataset config called ``name``; the error lists the known names."""
    try:
        return DATASETS[name]
    except KeyError:
        raise UserError(f"unknown dataset {name!r}",
                        expected="one of " + ", ".join(sorted(DATASETS))) from None


def register_config(config: DatasetConfig, *, replace: bool = False) -> DatasetConfig:
    """Add a dataset (presets such as the CPU demo register their own).

    Registering an equal config again is a no-op, so modules that register on import
    can be imported twice. A different config under a taken name is an error unless
    ``replace`` is set.
    """
    existing = DATASETS.get(config.name)
    if existing is not None and existing != config and not replace:
        raise UserError(f"dataset {config.name!r} is already registered with another config",
                        expected="a new name, or replace=True")
    if not config.splits:
        raise UserError(f"dataset {config.name!r} has no splits", expected="at least one split")
    DATASETS[config.name] = config
    return config


def examples(name_or_config: str | DatasetConfig, split: str, start: int = 0,
             stop: int | None = None, *, with_tree: bool = False) -> Iterator[dict[str, Any]]:
    """Examples ``start..stop-1`` of a split (``stop`` defaults to its size).

    Each is ``{"id": "explistops30/train/17", "index": 17, "expression": bracket text,
    "answer", "length", "depth", "modulus"}``, plus ``"tree"`` (the :data:`Tree`) when
    ``with_tree`` is set.
    """
    config = get_config(name_or_config) if isinstance(name_or_config, str) else name_or_config
    split_config = config.split(split)
    stop = split_config.num_examples if stop is None else stop
    if not 0 <= start <= stop <= split_config.num_examples:
        raise UserError(f"range {start}..{stop} of split {config.name}/{split}",
                        expected=f"0 <= start <= stop <= {split_config.num_examples}")
    for index in range(start, stop):
        tree = sample(split_config.sampler, split_config.seed, index)
        yield _example(config, split, index, tree, with_tree)


def _example(config: DatasetConfig, split: str, index: int, tree: Tree,
             with_tree: bool) -> dict[str, Any]:
    example: dict[str, Any] = {
        "id": f"{config.name}/{split}/{index}",
        "index": index,
        "expression": format(tree),
        "answer": evaluate(tree, config.modulus),
        "length": length(tree),
        "depth": depth(tree),
        "modulus": config.modulus,
    }
    if with_tree:
        example["tree"] = tree
    return example
