"""SeqIO tasks and mixtures (seqio_tasks): registration, every task and split, metrics."""

from __future__ import annotations

import os
import time

import pytest

tf = pytest.importorskip("tensorflow")
seqio = pytest.importorskip("seqio")

from explistops_jax import data, explain, listops, scoring, vocab  # noqa: E402
from explistops_jax.data import DatasetConfig, SplitConfig  # noqa: E402
from explistops_jax.errors import UserError  # noqa: E402
from explistops_jax.listops import SamplerConfig  # noqa: E402
from explistops_jax.task_spec import TaskSpec  # noqa: E402

TINY = "seqio_test_tiny"


def _normalized(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture(scope="module")
def spm_path(tmp_path_factory) -> str:
    """A tiny SentencePiece stand-in for T5's model, trained on rendered text."""
    sampler = SamplerConfig(min_length=20, max_length=50)
    texts = []
    for i in range(60):
        tree = listops.sample(sampler, seed=3, index=i)
        texts.append(listops.format(tree))
        texts += [explain.explain(tree, style, modulus=m) for style in explain.STYLES for m in (30, 10)]
    prefix = str(tmp_path_factory.mktemp("spm") / "spm")
    return vocab.train_sentencepiece_model(texts, prefix, vocab_size=400)


@pytest.fixture(scope="module")
def tasks(spm_path):
    """seqio_tasks imported, the _sp tasks registered, plus a tiny config of our own."""
    import seqio_tasks

    seqio_tasks.register_sentencepiece_tasks(spm_path)
    tiny = DatasetConfig(TINY, 30, {
        "train": SplitConfig(SamplerConfig(min_length=5, max_length=12), 12, 1),
        "validation": SplitConfig(SamplerConfig(min_length=5, max_length=12), 3, 2),
        "longer": SplitConfig(SamplerConfig(min_length=12, max_length=20), 3, 3),
    })
    data.register_config(tiny)
    seqio_tasks.register_dataset_tasks(TINY, subset_sizes=(5, 100), sentencepiece_path=spm_path)
    return seqio_tasks


def _no_optimizations(ds: tf.data.Dataset) -> tf.data.Dataset:
    """Faster iterator start-up for the many tiny reads below."""
    options = tf.data.Options()
    options.experimental_optimization.apply_default_optimizations = False
    return ds.with_options(options)


def _read(task: seqio.Task, split: str, n: int = 2) -> list[dict]:
    ds = task.get_dataset(split=split, shuffle=False)
    return list(_no_optimizations(ds.take(n)).as_numpy_iterator())


# -- names -----------------------------------------------------------------------------


def test_names_of_every_dataset_and_style(tasks):
    """Every built-in dataset gets every style, tagged and _sp variant and its
    subsets (configs that other tests register with fewer styles are not built-in)."""
    registered = set(seqio.TaskRegistry.names())
    for dataset in data.BUILTIN:
        config = data.DATASETS[dataset]
        train = config.splits["train"].num_examples
        for style in explain.STYLES:
            for suffix in ("", "_tagged"):
                for vocab_suffix in ("", "_sp"):
                    assert f"{dataset}_{style}{suffix}{vocab_suffix}" in registered
            for n in tasks.SUBSET_SIZES:
                assert (f"{dataset}_{style}_n{n}" in registered) == (n <= train)
        assert {f"{dataset}_all_styles", f"{dataset}_all_styles_sp"} <= set(seqio.MixtureRegistry.names())
        task = seqio.get_mixture_or_task(f"{dataset}_medium")
        assert list(task.splits) == list(config.splits)
        assert task.num_input_examples("validation") == config.splits["validation"].num_examples
    assert "explistops30_len50_100_long" in registered
    assert "len100_200" in seqio.get_mixture_or_task("explistops30_len50_100_long").splits
    assert seqio.get_mixture_or_task("explistops30_medium_n2000").num_input_examples("train") == 2000


def test_registration_is_idempotent_and_fast(tasks):
    before = (sorted(seqio.TaskRegistry.names()), sorted(seqio.MixtureRegistry.names()))
    start = time.perf_counter()
    tasks.register_all()
    import importlib

    import seqio_tasks

    importlib.reload(seqio_tasks)  # re-import: registers nothing twice, raises nothing
    assert time.perf_counter() - start < 5.0
    assert (sorted(seqio.TaskRegistry.names()), sorted(seqio.MixtureRegistry.names())) == before


def test_vocabularies(tasks, spm_path):
    domain = seqio.get_mixture_or_task("explistops30_medium").output_features["targets"].vocabulary
    assert isinstance(domain, vocab.DomainVocabulary)
    assert domain is seqio.get_mixture_or_task("listops10_long").output_features["inputs"].vocabulary
    sp = seqio.get_mixture_or_task("explistops30_medium_sp").output_features["targets"].vocabulary
    assert isinstance(sp, seqio.SentencePieceVocabulary)
    assert sp.sentencepiece_model_file == spm_path and sp.extra_ids == vocab.T5_EXTRA_IDS


# -- every task and split ------------------------------------------------------------------


def _check_example(ex: dict, task: seqio.Task, style: str, tagged: bool,
                   notation: str = "bracket") -> None:
    vocabulary = task.output_features["targets"].vocabulary
    assert ex["targets"][-1] == vocabulary.eos_id and ex["inputs"][-1] == vocabulary.eos_id
    expression = ex["expression"].decode()
    modulus = int(ex["modulus"])
    tree = listops.parse(expression)
    truth = listops.evaluate(tree, modulus)
    assert int(ex["answer"]) == truth
    targets = vocabulary.decode(ex["targets"].tolist())
    assert targets == _normalized(explain.explain(tree, style, modulus=modulus))
    assert scoring.parse_answer(targets) == truth
    inputs = vocabulary.decode(ex["inputs"].tolist())
    if notation == "bracket":
        assert inputs == (f"{style}: {expression}" if tagged else expression)
    else:  # LRA's notation: the text, and its ids (T5's SentencePiece may lack "(")
        text = listops.format(tree, notation)
        assert ex["inputs_pretokenized"].decode() == text
        assert ex["inputs"].tolist()[:-1] == list(vocabulary.encode(text))


def _style_of(name: str) -> tuple[str, bool, str]:
    spec = TaskSpec.parse(name)
    return spec.style, spec.tagged, spec.notation


def test_task_count(tasks):
    # 4 built-in datasets x 4 styles x (plain, tagged, 3 subsets, plain _paren)
    # x 2 vocabularies.
    builtin = ("explistops30", "explistops30_len50_100", "explistops30_larger_numbers", "listops10")
    assert sum(len(_group(tasks, d, v)) for d in builtin for v in ("domain", "sp")) == 192


def _group(tasks, dataset: str, vocabulary: str) -> list[str]:
    """The registered tasks of one dataset (generated source) with one vocabulary."""
    mine = [spec.name for spec in map(TaskSpec.parse, tasks.task_names())
            if (spec.dataset, spec.source, spec.vocabulary) == (dataset, "function", vocabulary)]
    assert mine, (dataset, vocabulary)
    return mine


GROUPS = [(d, v) for d in [*data.DATASETS, TINY] for v in ("domain", "sp")]


@pytest.mark.parametrize("dataset, vocabulary", GROUPS)
def test_every_registered_task(tasks, dataset, vocabulary):
    """Two examples of every task. Each task reads one of its splits, in turn, so every
    split of the dataset is read for each vocabulary too; the full product of tasks
    and splits (~540 pipelines, a few minutes on 2 cores) runs with
    EXPLISTOPS_TEST_ALL_SPLITS=1."""
    everything = os.environ.get("EXPLISTOPS_TEST_ALL_SPLITS") == "1"
    splits_read = set()
    for i, name in enumerate(_group(tasks, dataset, vocabulary)):
        task = seqio.get_mixture_or_task(name)
        style, tagged, notation = _style_of(name)
        splits = list(task.splits)
        for split in splits if everything else [splits[i % len(splits)]]:
            examples = _read(task, split)
            assert len(examples) == 2, (name, split)
            for ex in examples:
                _check_example(ex, task, style, tagged, notation)
            splits_read.add(split)
    assert splits_read == set(data.get_config(dataset).splits)


def test_mixture_of_all_styles(tasks):
    for name in ("explistops30_all_styles", "listops10_all_styles_sp"):
        mixture = seqio.get_mixture_or_task(name)
        members = sorted(t.name for t in mixture.tasks)
        suffix = "_tagged_sp" if name.endswith("_sp") else "_tagged"
        dataset = name.split("_all_styles")[0]
        assert members == sorted(f"{dataset}_{s}{suffix}" for s in explain.STYLES)
    ds = seqio.get_mixture_or_task("explistops30_all_styles").get_dataset(
        sequence_length={"inputs": 256, "targets": 512}, split="validation", shuffle=False, seed=0
    )
    vocabulary = tasks.domain_vocabulary()
    seen = set()
    for ex in _no_optimizations(ds.take(16)).as_numpy_iterator():
        inputs = vocabulary.decode(ex["inputs"].tolist())
        style = inputs.split(":")[0]
        assert style in explain.STYLES
        seen.add(style)
        targets = vocabulary.decode(ex["targets"].tolist())
        assert scoring.parse_answer(targets) == listops.evaluate(listops.parse(inputs.split(": ", 1)[1]), 30)
    assert len(seen) >= 2


# -- a config registered later (the CPU demo's path) ------------------------------------------


def test_register_dataset_tasks_for_a_new_config(tasks):
    names = set(tasks.task_names())
    for style in explain.STYLES:
        assert {f"{TINY}_{style}", f"{TINY}_{style}_sp", f"{TINY}_{style}_n5"} <= names
        assert f"{TINY}_{style}_n100" not in names  # larger than the training set
    base = seqio.get_mixture_or_task(f"{TINY}_short")
    subset = seqio.get_mixture_or_task(f"{TINY}_short_n5")
    assert list(base.splits) == ["train", "validation", "longer"]
    full = _read(base, "train", 100)
    first = _read(subset, "train", 100)
    assert len(full) == 12 and len(first) == 5
    assert [ex["id"] for ex in first] == [ex["id"] for ex in full[:5]]
    assert len(_read(subset, "validation", 100)) == 3  # other splits are whole
    # Plain tasks keep the study's bare input; ids are "<dataset>/<split>/<index>".
    assert full[0]["inputs_pretokenized"] == full[0]["expression"]
    assert full[3]["id"] == f"{TINY}/train/3".encode() and full[3]["index"] == 3


def test_no_sentencepiece_tasks_without_a_path(tasks, monkeypatch):
    monkeypatch.delenv(vocab.SPM_PATH_ENV, raising=False)
    name = "seqio_test_nospm"
    data.register_config(DatasetConfig(name, 10, {
        "train": SplitConfig(SamplerConfig(min_length=5, max_length=12, max_value=9), 4, 1)
    }))
    names = tasks.register_dataset_tasks(name)
    assert f"{name}_medium" in names and not any(n.endswith("_sp") for n in names)
    with pytest.raises(UserError, match="EXPLISTOPS_SPM_PATH"):
        tasks.register_sentencepiece_tasks(None)  # nothing configured: a clear error


# -- postprocessing and metrics (seqio.test_utils style) ------------------------------------------


def _raw(dataset: str, split: str, index: int) -> dict:
    ex = next(data.examples(dataset, split, index, index + 1))
    return {k: ex[k] for k in ("id", "index", "expression", "answer", "length", "depth", "modulus")}


@pytest.mark.parametrize("task_name", ["explistops30_medium", "explistops30_long_sp"])
def test_postprocessing_through_the_evaluator(tasks, task_name):
    raw = _raw("explistops30", "validation", 4)
    tree = listops.parse(raw["expression"])
    truth = listops.evaluate(tree, 30)
    style = "long" if "long" in task_name else "medium"
    right = explain.explain(tree, style, 30)
    wrong = right.rsplit("Final answer:", 1)[0] + f"Final answer: {(truth + 1) % 30}"
    for prediction, accuracy in ((right, 1.0), (wrong, 0.0)):
        metrics = seqio.test_utils.test_postprocessing(
            task_name, {"validation": raw}, predict_output=[prediction]
        )
        assert metrics["accuracy"] == accuracy
        assert metrics["parse_failure_rate"] == 0.0
        if accuracy == 1.0:
            assert metrics["exact_match"] == 1.0 and metrics["step_faithfulness"] == 1.0


def test_postprocess_fn_gets_the_example_fields(tasks):
    task = seqio.get_mixture_or_task("explistops30_short")
    ex = _read(task, "test", 1)[0]  # numpy values, bytes, as the evaluator passes them
    target_text = task.output_features["targets"].vocabulary.decode(ex["targets"].tolist())
    target = task.postprocess_fn(target_text, example=ex, is_target=True)
    assert target["expression"] == ex["expression"].decode()
    assert (target["answer"], target["length"], target["depth"], target["modulus"]) == (
        int(ex["answer"]), int(ex["length"]), int(ex["depth"]), 30
    )
    prediction = task.postprocess_fn("MAX, 3\nFinal answer: 19", example=ex, is_target=False)
    assert prediction == {"text": "MAX, 3\nFinal answer: 19", "answer": 19}


def test_metric_fns_on_hand_written_predictions(tasks):
    task = seqio.get_mixture_or_task("listops10_medium")
    expression = "[SM 4 9 [MAX 1 8 ] ]"  # 4 + 9 + 8 = 21 -> 1 (mod 10)
    example = {"expression": expression.encode(), "answer": 1, "length": 8, "depth": 2, "modulus": 10}
    target_text = explain.explain(listops.parse(expression), "medium", modulus=10)
    targets = [task.postprocess_fn(target_text, example=example, is_target=True)] * 4
    predictions = [
        task.postprocess_fn(text, is_target=False)
        for text in (
            target_text,  # right
            "Max, largest number of [1, 8] is 8\nFinal answer: 11",  # "11" is not "1"
            "no answer at all",  # unparseable
            "SUM, add [4, 9, 8], sum is 21, answer is 1",  # no final line: step fallback
        )
    ]
    metrics = {}
    for fn in task.metric_fns:
        metrics.update(fn(targets, predictions))
    assert metrics["accuracy"] == pytest.approx(0.5)
    assert metrics["parse_failure_rate"] == pytest.approx(0.25)
    assert metrics["fallback_rate"] == pytest.approx(0.25)
    assert metrics["exact_match"] == pytest.approx(0.25)
    assert metrics["accuracy_depth_2"] == pytest.approx(0.5)
