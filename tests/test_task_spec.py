"""Task specs (explistops_jax.task_spec): names built and read back in one place."""

from __future__ import annotations

import subprocess
import sys

import pytest

from explistops_jax import data, explain
from explistops_jax.errors import UserError
from explistops_jax.task_spec import (
    NOTATIONS,
    SOURCES,
    VOCABULARIES,
    MixtureSpec,
    TaskSpec,
    dataset_tasks,
    file_task_name,
    parse,
    parse_file_task_name,
)

# -- names of hand-built specs -----------------------------------------------------------

NAMED = [
    (TaskSpec("explistops30", "medium"), "explistops30_medium"),
    (TaskSpec("explistops30", "none", vocabulary="sp"), "explistops30_none_sp"),
    (TaskSpec("listops10", "long", tagged=True), "listops10_long_tagged"),
    (TaskSpec("explistops30", "medium", subset=2000), "explistops30_medium_n2000"),
    (TaskSpec("explistops30_len50_100", "short", source="tfds"), "explistops30_len50_100_short_tfds"),
    (TaskSpec("explistops10_cpu", "long", tagged=True, subset=5, source="tfds", vocabulary="sp"),
     "explistops10_cpu_long_tagged_n5_tfds_sp"),
    # A dataset whose name ends in a style word: the style is the last one.
    (TaskSpec("mine_medium", "none"), "mine_medium_none"),
    (TaskSpec("x_all_styles", "short"), "x_all_styles_short"),
    (TaskSpec("explistops30", "medium", notation="paren"), "explistops30_medium_paren"),
    (TaskSpec("listops10", "long", tagged=True, subset=5, source="tfds", vocabulary="sp",
              notation="paren"), "listops10_long_tagged_n5_paren_tfds_sp"),
    (TaskSpec("x_paren", "none"), "x_paren_none"),
    (MixtureSpec("explistops30"), "explistops30_all_styles"),
    (MixtureSpec("listops10", vocabulary="sp"), "listops10_all_styles_sp"),
    (MixtureSpec("explistops30_larger_numbers", source="tfds", vocabulary="sp"),
     "explistops30_larger_numbers_all_styles_tfds_sp"),
]


@pytest.mark.parametrize("spec, name", NAMED)
def test_name_of_hand_built_specs_and_back(spec, name):
    assert spec.name == name
    assert parse(name) == spec
    assert type(spec).parse(name) == spec


def test_defaults_and_replace():
    spec = TaskSpec("explistops30", "medium")
    assert (spec.tagged, spec.subset, spec.source, spec.vocabulary) == (False, None, "function", "domain")
    assert not spec.sentencepiece and spec.replace(vocabulary="sp").sentencepiece
    assert spec.replace(style="long").name == "explistops30_long"
    with pytest.raises(AttributeError):  # frozen
        spec.style = "long"  # type: ignore[misc]


def test_mixture_members_are_the_tagged_tasks():
    mixture = MixtureSpec("listops10", vocabulary="sp")
    assert [m.name for m in mixture.members()] == [
        f"listops10_{s}_tagged_sp" for s in explain.STYLES]
    assert [m.name for m in mixture.members(["none", "long"])] == [
        "listops10_none_tagged_sp", "listops10_long_tagged_sp"]


# -- round trip over everything that can be registered (no TensorFlow) ------------------------


def _every_spec():
    for dataset in data.DATASETS:
        for source in SOURCES:
            for vocabulary in VOCABULARIES:
                yield from dataset_tasks(dataset, subset_sizes=(2_000, 10_000, 98_000),
                                         source=source, vocabulary=vocabulary,
                                         notations=NOTATIONS)
                yield MixtureSpec(dataset, source=source, vocabulary=vocabulary)


def test_every_spec_of_every_dataset_round_trips():
    specs = list(_every_spec())
    names = [spec.name for spec in specs]
    assert len(set(names)) == len(names)  # no two specs share a name
    for spec, name in zip(specs, names):
        assert parse(name) == spec and parse(name).name == name


def test_dataset_tasks_order_and_contents():
    specs = dataset_tasks("d", styles=["none", "medium"], subset_sizes=[5])
    assert [s.name for s in specs] == [
        "d_none", "d_none_tagged", "d_medium", "d_medium_tagged", "d_none_n5", "d_medium_n5"]
    specs = dataset_tasks("d", styles=["none", "medium"], subset_sizes=[5], notations=NOTATIONS)
    assert [s.name for s in specs][6:] == ["d_none_paren", "d_medium_paren"]
    assert dataset_tasks("d", styles=["none"], notations=["paren"]) == (
        TaskSpec("d", "none", notation="paren"),)


def test_file_task_names():
    assert file_task_name("authors") == "authors"
    assert file_task_name("authors", "paren") == "authors_paren"
    assert parse_file_task_name("authors_paren") == ("authors", "paren")
    assert parse_file_task_name("authors") == ("authors", "bracket")
    for bad, problem in [("explistops30_medium", "reads as a generated task"),
                         ("x_all_styles", "reads as a generated task"),
                         ("a_paren_paren", "ends in '_paren'"), ("", "bad task name")]:
        with pytest.raises(UserError, match=problem):
            file_task_name(bad)
    with pytest.raises(UserError, match="input notation 'lisp'"):
        file_task_name("authors", "lisp")


# -- malformed names and fields ------------------------------------------------------------------


@pytest.mark.parametrize("name", [
    "", "explistops30", "explistops30_", "_medium", "explistops30_verbose",
    "explistops30_medium_n0", "explistops30_medium_n007", "explistops30_medium_n",
    "explistops30_medium_sp_tfds",          # suffixes out of order
    "explistops30_medium_n5_tagged",
    "explistops30_medium_paren_n5",         # _paren after _n{N}
    "explistops30_medium_paren_paren",
    "explistops30_medium_tagged_tagged",
    "explistops30 medium", "explistops30_Medium",
])
def test_malformed_task_names_are_one_line_errors(name):
    with pytest.raises(UserError) as info:
        TaskSpec.parse(name)
    message = str(info.value)
    assert repr(name) in message and "{dataset}_{style}" in message and "\n" not in message
    with pytest.raises(UserError, match="task or mixture name"):
        parse(name)


def test_a_mixture_name_is_not_a_task_name_and_back():
    with pytest.raises(UserError, match="'explistops30_all_styles' .that is a mixture name"):
        TaskSpec.parse("explistops30_all_styles")
    with pytest.raises(UserError, match=r"malformed mixture name 'explistops30_medium'.*all_styles"):
        MixtureSpec.parse("explistops30_medium")
    with pytest.raises(UserError, match="all_styles"):
        MixtureSpec.parse("explistops30_all_styles_tagged")


def test_parse_rejects_what_is_not_a_string():
    with pytest.raises(UserError, match="None"):
        parse(None)  # type: ignore[arg-type]


@pytest.mark.parametrize("fields, problem", [
    (dict(dataset="explistops30", style="verbose"), "unknown explanation style 'verbose'"),
    (dict(dataset="", style="medium"), "bad dataset name ''"),
    (dict(dataset="a b", style="medium"), "bad dataset name 'a b'"),
    (dict(dataset="explistops30", style="medium", subset=0), "subset=0"),
    (dict(dataset="explistops30", style="medium", subset=True), "subset=True"),
    (dict(dataset="explistops30", style="medium", source="gcs"), "unknown task source 'gcs'"),
    (dict(dataset="explistops30", style="medium", vocabulary="bpe"), "unknown vocabulary 'bpe'"),
    (dict(dataset="explistops30", style="medium", tagged="yes"), "tagged='yes'"),
    (dict(dataset="explistops30", style="medium", notation="lisp"), "unknown input notation 'lisp'"),
])
def test_bad_fields_are_user_errors(fields, problem):
    with pytest.raises(UserError, match=problem.replace("(", r"\(")):
        TaskSpec(**fields)


def test_pure_python():
    """Importable where TensorFlow, SeqIO and JAX are not loaded (or not installed)."""
    code = ("import sys, explistops_jax.task_spec; "
            "print(sorted(m for m in ('tensorflow', 'seqio', 'jax', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# -- every task and mixture seqio_tasks registers ---------------------------------------------


@pytest.fixture(scope="module")
def seqio_tasks():
    pytest.importorskip("seqio")
    return pytest.importorskip("seqio_tasks")


def test_every_registered_task_and_mixture_round_trips(seqio_tasks):
    import seqio

    tasks, mixtures = seqio_tasks.task_names(), seqio_tasks.mixture_names()
    assert len(tasks) >= 80 and len(mixtures) >= len(data.DATASETS)
    for name in tasks:
        spec = TaskSpec.parse(name)
        assert spec.name == name and seqio.get_mixture_or_task(name).spec == spec
    for name in mixtures:
        spec = MixtureSpec.parse(name)
        assert spec.name == name and seqio.get_mixture_or_task(name).spec == spec
        members = [t.name for t in seqio.get_mixture_or_task(name).tasks]
        every_style = sorted(m.name for m in spec.members())
        if spec.dataset in data.BUILTIN:
            assert sorted(members) == every_style
        else:  # a config another test registered with some styles only
            assert set(members) <= set(every_style)


def test_registrations_are_exactly_the_specs(seqio_tasks):
    """The built-in configs' generated domain tasks are dataset_tasks(), no more, no less
    (other tests may register configs of their own with other options)."""
    registered = [TaskSpec.parse(n) for n in seqio_tasks.task_names()]
    for dataset in BUILTIN:
        train = data.get_config(dataset).split("train").num_examples
        sizes = [n for n in seqio_tasks.SUBSET_SIZES if n <= train]
        mine = {s for s in registered
                if (s.dataset, s.source, s.vocabulary) == (dataset, "function", "domain")}
        assert mine == set(dataset_tasks(dataset, subset_sizes=sizes, notations=NOTATIONS))


BUILTIN = ("explistops30", "explistops30_len50_100", "explistops30_larger_numbers",
           "listops10", "explistops10_cpu")
