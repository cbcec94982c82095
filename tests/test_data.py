"""Tests of explistops_jax.data: the named configs and the examples they define."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from explistops_jax import data
from explistops_jax.data import DatasetConfig, SplitConfig, examples, get_config, register_config
from explistops_jax.errors import UserError
from explistops_jax.listops import SamplerConfig, depth, evaluate, length, parse

ROOT = Path(__file__).resolve().parents[1]


def test_explistops30_is_the_studys_main_set():
    config = get_config("explistops30")
    assert config.modulus == 30
    assert {name: s.num_examples for name, s in config.splits.items()} == {
        "train": 98_000, "validation": 2_000, "test": 2_000}
    for split in config.splits.values():
        sampler = split.sampler
        assert (sampler.min_length, sampler.max_length) == (20, 50)
        assert (sampler.max_depth, sampler.max_args) == (10, 10)
        assert (sampler.min_value, sampler.max_value) == (0, 29)


def test_length_generalization_config():
    config = get_config("explistops30_len50_100")
    assert (config.splits["train"].sampler.min_length,
            config.splits["train"].sampler.max_length) == (50, 100)
    test = config.splits["len100_200"].sampler
    assert (test.min_length, test.max_length, test.max_depth) == (100, 200, 10)


def test_larger_numbers_config_tests_beyond_the_training_range():
    config = get_config("explistops30_larger_numbers")
    train, test = config.splits["train"].sampler, config.splits["test"].sampler
    assert train.max_value == 29
    assert test.min_value > train.max_value
    # the training split is explistops30's, so one model serves both evaluations
    assert config.splits["train"] == get_config("explistops30").splits["train"]
    for example in examples(config, "test", 0, 20):
        values = [int(t) for t in example["expression"].split() if t.isdigit()]
        assert min(values) >= 30


def test_listops10_is_the_original_number_range():
    config = get_config("listops10")
    assert config.modulus == 10
    assert all(s.sampler.max_value == 9 for s in config.splits.values())
    assert all(0 <= e["answer"] <= 9 for e in examples(config, "validation", 0, 50))


def test_splits_use_distinct_seeds():
    for config in data.DATASETS.values():
        seeds = {}
        for name, split in config.splits.items():
            seeds.setdefault((split.sampler, split.seed), []).append(name)
        assert all(len(names) == 1 for names in seeds.values()), config.name


def test_examples_are_consistent_and_deterministic():
    first = list(examples("explistops30", "validation", 0, 40))
    assert first == list(examples("explistops30", "validation", 0, 40))
    assert list(examples("explistops30", "validation", 25, 40)) == first[25:]
    for index, example in enumerate(first):
        tree = parse(example["expression"])
        assert example["id"] == f"explistops30/validation/{index}"
        assert example["index"] == index
        assert example["answer"] == evaluate(tree, 30)
        assert example["length"] == length(tree) and 20 < example["length"] < 50
        assert example["depth"] == depth(tree) <= 9
        assert example["modulus"] == 30
    with_tree = next(examples("explistops30", "validation", 3, 4, with_tree=True))
    assert with_tree["tree"] == parse(first[3]["expression"])


def test_splits_differ():
    validation = {e["expression"] for e in examples("explistops30", "validation", 0, 200)}
    test = {e["expression"] for e in examples("explistops30", "test", 0, 200)}
    assert not validation & test


def test_errors_list_the_known_names():
    with pytest.raises(UserError, match="explistops30"):
        get_config("explistops31")
    with pytest.raises(UserError, match="train, validation, test"):
        list(examples("explistops30", "dev"))
    with pytest.raises(UserError, match="0 <= start <= stop <= 2000"):
        list(examples("explistops30", "test", 0, 2001))


def test_register_config():
    sampler = SamplerConfig(min_length=5, max_length=15, max_depth=4, max_args=4)
    demo = DatasetConfig("unit_test_demo", 30, {"train": SplitConfig(sampler, 10, 1)})
    try:
        register_config(demo)
        register_config(demo)  # idempotent
        assert get_config("unit_test_demo") is demo
        assert len(list(examples("unit_test_demo", "train"))) == 10
        other = DatasetConfig("unit_test_demo", 10, {"train": SplitConfig(sampler, 5, 1)})
        with pytest.raises(UserError, match="already registered"):
            register_config(other)
        register_config(other, replace=True)
        assert get_config("unit_test_demo").modulus == 10
        with pytest.raises(UserError, match="no splits"):
            register_config(DatasetConfig("unit_test_empty", 30, {}))
    finally:
        data.DATASETS.pop("unit_test_demo", None)


def test_answers_cover_all_classes():
    answers = {e["answer"] for e in itertools.islice(examples("explistops30", "train"), 3000)}
    assert answers == set(range(30))


def test_same_bytes_in_another_process():
    # Seeds come from BLAKE2b, not Python's salted hash(): another process with another
    # hash seed must produce the same examples.
    code = ("import json; from explistops_jax.data import examples; "
            "print(json.dumps(list(examples('explistops30', 'test', 0, 30))))")
    env = dict(os.environ, PYTHONHASHSEED="12345")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60, check=True)
    assert json.loads(result.stdout) == list(examples("explistops30", "test", 0, 30))
