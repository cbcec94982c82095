"""The input backends behind one interface (explistops_jax.backends): an own task
and the SeqIO adapter of the same registered task agree on every member of
InputTask; the one chooser picks grain or SeqIO as documented; predict reads a
task's spec, not its name."""

from __future__ import annotations

import numpy as np
import pytest

from explistops_jax import backends, data, own_tasks, predict, task_spec
from explistops_jax.errors import ConfigError, UserError
from explistops_jax.listops import SamplerConfig

_SAMPLER = SamplerConfig(min_length=4, max_length=12, max_depth=3, max_args=4, max_value=9)
TINY = data.DatasetConfig(
    name="explistops_test_backends", modulus=10,
    splits={"train": data.SplitConfig(_SAMPLER, 23, 2101),
            "test": data.SplitConfig(_SAMPLER, 7, 2102)})
LENGTHS = {"inputs": 24, "targets": 40}


@pytest.fixture(scope="module", autouse=True)
def tiny_config():
    data.register_config(TINY)


@pytest.fixture(scope="module")
def registry():
    """The SeqIO registrations of the tiny dataset, and a task of another project."""
    tasks = pytest.importorskip("seqio_tasks")
    tasks.register_dataset_tasks(TINY.name, styles=["none", "medium", "long"],
                                 subset_sizes=(10,))
    import tiny_trainer_fixtures as tiny

    tiny.register_tiny_task()
    return tasks


def _assert_same(a, b, what=""):
    """Equal values of the same types (numpy arrays element for element)."""
    if isinstance(a, dict):
        assert sorted(a) == sorted(b), what
        for key in a:
            _assert_same(a[key], b[key], f"{what}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), what
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{what}[{i}]")
    else:
        assert type(a) is type(b), (what, type(a), type(b))
        np.testing.assert_array_equal(a, b, err_msg=what)


@pytest.mark.parametrize("name", [f"{TINY.name}_medium_tagged", f"{TINY.name}_long_paren",
                                  f"{TINY.name}_none_n10"])
def test_own_task_and_seqio_adapter_agree_on_every_member(registry, name):
    own = backends.get_task(name, "grain")
    adapter = backends.get_task(name, "seqio")
    assert isinstance(own, own_tasks.OwnTask) and type(adapter).__name__ == "SeqioTask"
    for task in (own, adapter):
        assert isinstance(task, backends.InputTask)
    assert own.name == adapter.name == name
    assert (own.backend, adapter.backend) == ("grain", "seqio")
    assert (own.needs_registry, adapter.needs_registry) == (False, True)
    assert own.spec == adapter.spec == task_spec.TaskSpec.parse(name)
    assert own.splits == adapter.splits == ("train", "test")
    text = "[MAX 2 [MIN 4 7 ] ] Final answer: 4"
    assert own.vocabulary.encode(text) == adapter.vocabulary.encode(text)
    assert own.vocabulary.eos_id == adapter.vocabulary.eos_id
    ids = own.vocabulary.encode(text)
    assert own.vocabulary.decode(ids) == adapter.vocabulary.decode(ids)
    assert sorted(own.output_features) == sorted(adapter.output_features)
    for key in own.output_features:
        assert own.output_features[key].add_eos == adapter.output_features[key].add_eos
    assert ([f.__name__ for f in own.predict_metric_fns]
            == [f.__name__ for f in adapter.predict_metric_fns])
    assert list(own.score_metric_fns) == list(adapter.score_metric_fns) == []
    for split in own.splits:
        assert own.num_examples(split) == adapter.num_examples(split)
        _assert_same(own.raw_examples(split, 4), adapter.raw_examples(split, 4), split)
        _assert_same(own.read_split(split, LENGTHS, 4), adapter.read_split(split, LENGTHS, 4),
                     split)
    assert len(own.raw_examples("test")) == own.num_examples("test") == 7
    raw = own_tasks.raw_examples_for(["[MAX 2 9 [MIN 4 7 ] 0 ]", "( ( [SM 3 8 ) 5 ) ]"], 10)
    _assert_same(own.preprocess_raw(raw, LENGTHS), adapter.preprocess_raw(raw, LENGTHS))
    examples, _ = own.read_split("test", LENGTHS, 3)
    for example in examples:
        for text, is_target in ((example["targets_pretokenized"].decode(), True),
                                ("Final answer: 3", False), ("nonsense", False)):
            assert (own.postprocess_fn(text, example=example, is_target=is_target)
                    == adapter.postprocess_fn(text, example=example, is_target=is_target))
    assert own.with_style(own.spec.style) is own
    assert adapter.with_style(adapter.spec.style) is adapter
    other = own.spec.replace(style="none" if own.spec.style != "none" else "long")
    assert own.with_style(other.style).name == adapter.with_style(other.style).name
    assert (own.with_style(other.style).backend, adapter.with_style(other.style).backend) == (
        "grain", "seqio")
    for task in (own, adapter):
        with pytest.raises(UserError, match="unknown explanation style 'verbose'"):
            task.with_style("verbose")
        with pytest.raises(UserError, match="has no split 'nope'"):
            task.num_examples("nope")


def test_a_task_of_another_project_has_no_spec(registry):
    task = backends.get_task("tiny_reverse")  # grain asked: SeqIO reads it anyway
    assert isinstance(task, backends.InputTask) and task.backend == "seqio"
    assert task.spec is None and task.with_style("long") is None
    assert task.splits == ("train", "validation") and task.num_examples("validation") == 10
    raw = task.raw_examples("validation", 2)
    assert [sorted(r) for r in raw] == [["inputs", "targets"]] * 2
    assert raw[0]["targets"] == raw[0]["inputs"][::-1]
    examples, rows = task.read_split("validation", {"inputs": 12, "targets": 12}, 3)
    assert len(examples) == len(rows) == 3
    assert task.postprocess_fn("abc", example=examples[0], is_target=False) == "abc"


def test_the_chooser_picks_grain_for_own_tasks_and_seqio_otherwise(registry):
    name = f"{TINY.name}_medium"
    own = backends.get_input(name)
    assert (own.backend, own.is_mixture, own.needs_registry) == ("grain", False, False)
    assert [type(t) for t in own.tasks] == [own_tasks.OwnTask]
    asked = backends.get_input(name, "seqio")
    assert (asked.backend, asked.needs_registry) == ("seqio", True)
    assert backends.needs_registry(name, use_cached=True)  # an offline cache is SeqIO's
    other = backends.get_input("tiny_reverse")
    assert (other.backend, [t.name for t in other.tasks]) == ("seqio", ["tiny_reverse"])
    mixture = f"{TINY.name}_all_styles"
    trained = backends.get_input(mixture, training=True)
    assert (trained.backend, trained.is_mixture) == ("seqio", True)
    assert all(t.spec.tagged and t.backend == "seqio" for t in trained.tasks)
    evaluated = backends.get_input(mixture, training=False)
    assert (evaluated.backend, evaluated.is_mixture) == ("grain", True)
    assert [t.spec for t in evaluated.tasks] == list(task_spec.parse(mixture).members())
    for requested, training in (("grain", True), ("seqio", False), ("grain", False)):
        assert backends.needs_registry(name, requested, training=training) == (
            requested == "seqio")
    assert backends.needs_registry(mixture, training=True)
    assert not backends.needs_registry(mixture, training=False)
    with pytest.raises(ConfigError, match="unknown data backend 'tf'"):
        backends.get_input(name, "tf")
    with pytest.raises(UserError, match="unknown SeqIO task or mixture 'no_such_task'"):
        backends.get_input("no_such_task")
    with pytest.raises(UserError, match="is a mixture, not a task"):
        backends.get_task(mixture)


def test_the_batch_source_is_the_chosen_backends(registry):
    options = dict(split="train", lengths=LENGTHS, local_batch_size=4, pack=False,
                   shuffle=False)
    grain = backends.get_input(f"{TINY.name}_medium").batch_source(**options)
    seqio = backends.get_input(f"{TINY.name}_medium", "seqio").batch_source(**options)
    assert (type(grain).__name__, type(seqio).__name__) == ("GrainSource", "SeqioSource")
    _assert_same(list(grain.epoch_batches(3)), list(seqio.epoch_batches(3)))
    with pytest.raises(UserError, match="sampled by the seqio backend only"):
        backends.get_input(f"{TINY.name}_all_styles", training=False).batch_source(**options)


@pytest.mark.parametrize("backend", ["grain", "seqio"])
def test_predict_picks_members_and_styles_through_the_task_objects(registry, backend):
    task = predict.task_for(f"{TINY.name}_all_styles", "long", data_backend=backend)
    assert (task.name, task.backend) == (f"{TINY.name}_long_tagged", backend)
    task = predict.task_for(f"{TINY.name}_all_styles", None, data_backend=backend)
    assert task.name == f"{TINY.name}_medium_tagged"
    task = predict.task_for(f"{TINY.name}_medium_n10", "none", data_backend=backend)
    assert (task.name, task.backend) == (f"{TINY.name}_none_n10", backend)
    with pytest.raises(UserError, match="has no member of style 'verbose'"):
        predict.task_for(f"{TINY.name}_all_styles", "verbose", data_backend=backend)
    # a task of another project keeps its task whatever style is asked
    assert predict.task_for("tiny_reverse", "long", data_backend=backend).name == "tiny_reverse"


class _Named:
    """An own task under a name that reads as no task: what predict may use of
    it is its interface (spec, with_style), never its name."""

    def __init__(self, task, name):
        self._task, self.name = task, name

    def __getattr__(self, item):
        return getattr(self._task, item)


def test_predict_reads_the_spec_not_the_name(monkeypatch):
    names = {"long": "first member", "medium": "second member"}
    specs = [task_spec.TaskSpec(TINY.name, style, tagged=True) for style in names]
    members = tuple(_Named(own_tasks.OwnTask(s), names[s.style]) for s in specs)
    found = backends.Input("my mixture", "grain", members, True, lambda **_: None)
    monkeypatch.setattr(backends, "get_input", lambda *args, **kwargs: found)
    assert predict.task_for("my mixture", "long").name == "first member"
    assert predict.task_for("my mixture", None).name == "second member"
    assert predict._spec_modulus(members[0].spec) == 10  # the dataset's, from the spec
    assert predict.dataset_modulus("some_other_task") == 30


def test_the_style_of_a_task_has_one_definition():
    from explistops_jax.report import runs

    for name, style in (("explistops30_medium_sp", "medium"), ("explistops10_cpu_none_n500",
                                                               "none"),
                        ("explistops30_all_styles", None), ("glue_sst2", None)):
        assert task_spec.style_of(name) == style
    assert task_spec.style_of(task_spec.TaskSpec("x", "long")) == "long"
    assert task_spec.style_of(None) is None
