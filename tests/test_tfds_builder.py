"""The TFDS builder ``explained_listops`` and the SeqIO tasks that read it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

tf = pytest.importorskip("tensorflow")
tfds = pytest.importorskip("tensorflow_datasets")
seqio = pytest.importorskip("seqio")

from explistops_jax import data, explain, listops  # noqa: E402
from explistops_jax.data import DatasetConfig, SplitConfig  # noqa: E402
from explistops_jax.listops import SamplerConfig  # noqa: E402
from explistops_jax.tfds_builder import ExplainedListops, tfds_name  # noqa: E402

TINY = "tfds_test_tiny"
SIZES = {"train": 8, "validation": 3, "len12_20": 3}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> str:
    """A tiny config registered after import, built into a temporary data_dir."""
    short = SamplerConfig(min_length=5, max_length=12)
    data.register_config(DatasetConfig(TINY, 30, {
        "train": SplitConfig(short, SIZES["train"], 1),
        "validation": SplitConfig(short, SIZES["validation"], 2),
        "len12_20": SplitConfig(SamplerConfig(min_length=12, max_length=20), SIZES["len12_20"], 3),
    }))
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    ExplainedListops(config=TINY, data_dir=data_dir).download_and_prepare()
    return data_dir


def test_builder_configs_follow_the_dataset_configs():
    names = [c.name for c in ExplainedListops.BUILDER_CONFIGS]
    assert names[: len(data.DATASETS)] == list(data.DATASETS)[: len(names)]
    assert {"explistops30", "explistops30_len50_100", "listops10"} <= set(names)
    assert ExplainedListops.name == "explained_listops"
    assert tfds_name("explistops30") == "explained_listops/explistops30:1.0.0"
    with pytest.raises(ValueError):
        ExplainedListops(config="no_such_dataset")


def test_records_equal_the_generated_examples(built):
    builder = tfds.builder(f"explained_listops/{TINY}", data_dir=built)
    assert {s: builder.info.splits[s].num_examples for s in SIZES} == SIZES
    for split in SIZES:
        records = list(builder.as_dataset(split=split, shuffle_files=False).as_numpy_iterator())
        for record, ex in zip(records, data.examples(TINY, split), strict=True):
            assert record["id"].decode() == ex["id"] and record["index"] == ex["index"]
            assert record["expression"].decode() == ex["expression"]
            for key in ("answer", "length", "depth", "modulus"):
                assert int(record[key]) == ex[key]
            tree = listops.parse(ex["expression"])
            for style in explain.STYLES:
                assert record["explanations"][style].decode() == explain.explain(tree, style, 30)


def test_tfds_tasks_match_the_generated_tasks(built):
    import seqio_tasks

    names = seqio_tasks.register_dataset_tasks(
        TINY, source="tfds", data_dir=built, subset_sizes=(5,)
    )
    seqio_tasks.register_dataset_tasks(TINY, subset_sizes=(5,))
    for style in explain.STYLES:
        assert f"{TINY}_{style}_tfds" in names and f"{TINY}_{style}_n5_tfds" in names
    assert f"{TINY}_all_styles_tfds" in names
    for style, split in (("medium", "validation"), ("long", "len12_20"), ("none", "train")):
        from_tfds = seqio.get_mixture_or_task(f"{TINY}_{style}_tfds")
        generated = seqio.get_mixture_or_task(f"{TINY}_{style}")
        a = list(from_tfds.get_dataset(split=split, shuffle=False).as_numpy_iterator())
        b = list(generated.get_dataset(split=split, shuffle=False).as_numpy_iterator())
        assert len(a) == len(b) == SIZES[split]
        for x, y in zip(a, b):
            assert sorted(x) == sorted(y)
            for key in x:
                assert (x[key] == y[key]).all() if hasattr(x[key], "all") else x[key] == y[key], key
    subset = seqio.get_mixture_or_task(f"{TINY}_short_n5_tfds")
    first = list(subset.get_dataset(split="train", shuffle=False).as_numpy_iterator())
    assert [ex["index"] for ex in first] == [0, 1, 2, 3, 4]
    # Shuffled files and a seed are TFDS's business; the examples stay the same set.
    shuffled = seqio.get_mixture_or_task(f"{TINY}_short_tfds").get_dataset(
        split="train", shuffle=True, seed=3, shuffle_buffer_size=16
    )
    assert sorted(ex["index"] for ex in shuffled.as_numpy_iterator()) == list(range(SIZES["train"]))


def _run(args: list[str]) -> subprocess.CompletedProcess:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""),
               TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, *args], cwd=root, env=env, capture_output=True,
                          text=True, timeout=300)


def _check_built(data_dir) -> None:
    builder = tfds.builder_from_directory(str(data_dir / "explained_listops" / "listops10" / "1.0.0"))
    assert {s: i.num_examples for s, i in builder.info.splits.items()} == {
        "train": 3, "validation": 3, "test": 3
    }


@pytest.mark.slow
def test_build_command(tmp_path):
    """``python -m explistops_jax.tfds_builder --config listops10`` (3 examples a split)."""
    result = _run(["-m", "explistops_jax.tfds_builder", "--config", "listops10",
                   "--data_dir", str(tmp_path), "--max_examples_per_split", "3"])
    assert result.returncode == 0, result.stderr[-3000:]
    _check_built(tmp_path)
    result = _run(["-m", "explistops_jax.tfds_builder", "--config", "nope"])
    assert result.returncode == 2 and "unknown dataset 'nope'" in result.stderr


@pytest.mark.slow
def test_tfds_build_command(tmp_path):
    """``tfds build explistops_jax/tfds_builder.py --config listops10``; TFDS 4.9.10's
    command line needs apache_beam (not a dependency), so this runs only where it is."""
    pytest.importorskip("apache_beam")
    result = _run(["-m", "tensorflow_datasets.scripts.cli.main", "build",
                   "explistops_jax/tfds_builder.py", "--config", "listops10",
                   "--data_dir", str(tmp_path), "--max_examples_per_split", "3"])
    assert result.returncode == 0, result.stderr[-3000:]
    _check_built(tmp_path)
