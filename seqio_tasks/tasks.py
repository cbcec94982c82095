"""SeqIO tasks and mixtures for Explained-ListOps.

Task names: ``{dataset}_{style}[_tagged][_n{N}][_tfds][_sp]``, built from (and
read back into) an :class:`explistops_jax.task_spec.TaskSpec`; every task is
registered from its spec and keeps it (``seqio.get_mixture_or_task(name).spec``).

* ``{dataset}_{style}``: every dataset config of :mod:`explistops_jax.data` times
  every style of ``explain.STYLES`` (``explistops30_medium``,
  ``explistops30_len50_100_long``, ...), with all the config's splits (train,
  validation, test and generalization splits such as ``len100_200``). The compact
  :class:`~explistops_jax.vocab.DomainVocabulary` (one instance shared by every
  task, so a model trained on one config is evaluated on another with the same ids).
* ``_sp``: the same with T5's SentencePiece vocabulary (``extra_ids=100``, as the
  public checkpoints, so it equals a T5X model gin's vocabulary for the same
  file); registered only when a model file is configured ($EXPLISTOPS_SPM_PATH or the gin parameter
  ``explistops_jax.vocab.sentencepiece_model_path.path``, read when this module is
  imported), or later by :func:`register_sentencepiece_tasks`. (Registering them
  with the public ``gs://`` path by default would make them hang on offline
  machines; a missing task is a clearer failure.)
* ``_n2000``, ``_n10000``, ``_n98000`` (:data:`SUBSET_SIZES`): data-efficiency
  subsets; the train split is the first N training examples (a prefix, so the
  subsets are nested), the other splits are the full ones. Registered for the
  sizes not above the config's training set.
* ``_paren``: inputs in LRA's parenthesized notation (``( ( [MAX 2 ) 9 ) ]``), as
  the study's authors fed them; the plain whole-split task of every style, generated
  source only (``task_spec.dataset_tasks(notations=...)``). The same examples,
  targets and token ids as the grain backend's task of that name.
* ``_tagged``: inputs start with the style (``"medium: [MAX 2 9 ]"``); the members
  of the all-styles mixture, where one input has four targets and the model must
  be told which one to write. The plain tasks keep the study's bare inputs.
* ``_tfds``: read from the ``explained_listops`` TFDS records
  (:mod:`explistops_jax.tfds_builder`, prepared beforehand with ``tfds build`` or
  ``python -m explistops_jax.tfds_builder``) instead of generating, with the
  stored explanations (no Python in the pipeline); registered when
  $EXPLISTOPS_TFDS_DATA_DIR or the gin parameter ``tfds_data_dir.path`` is set at
  import, or by ``register_dataset_tasks(name, source="tfds", data_dir=...)``.
  The same examples in the same order as the generated tasks.

Mixtures: ``{dataset}_all_styles[_tfds][_sp]``: the four ``_tagged`` tasks, equal
rates. There is no mixture over the subset sizes: a mixture samples from all its
members at once, while the data-efficiency ablation is one run per size, so
the subset tasks are used directly (``explistops30_medium_n2000``).

Pipeline of every task: one raw source (a ``seqio.FunctionDataSource`` over
``data.examples``, one example per index of a ``tf.data`` range, or the TFDS
records through :class:`TfdsRecords`) with the fields ``id``, ``index``,
``expression``, ``answer``, ``length``, ``depth``, ``modulus``; a preprocessor
that renders (or, from TFDS, selects) the explanation of the task's style into
``targets`` and the expression into ``inputs``; ``seqio.preprocessors.tokenize``;
``seqio.preprocessors.append_eos_after_trim``. The raw fields stay in the examples
so ``scoring.postprocess`` sees them when SeqIO postprocesses targets.
``postprocess_fn`` and ``metric_fns`` come from :mod:`explistops_jax.scoring`.

Shuffling: the generator source is one deterministic stream (the examples are
fixed by the config's seeds), so ``shuffle_files`` and ``seed`` do not change it;
SeqIO's example-level shuffle buffer (``get_dataset(shuffle=True)``) and the
trainer's per-epoch shuffle do the shuffling. The TFDS source honours
``shuffle_files`` (the order of the record files; records within a file stay in
index order) and ``seed`` as TFDS does, and shards by file for several hosts.

Registration is idempotent: a name already registered is left alone (or
replaced when ``replace=True``), so re-importing is safe and cheap.
"""

from __future__ import annotations

import functools
import os
from typing import Iterable, Sequence

import gin
import numpy as np
import seqio
import tensorflow as tf

from explistops_jax import data, explain, listops, scoring, vocab
from explistops_jax.errors import UserError
from explistops_jax.task_spec import NOTATIONS, SOURCES, MixtureSpec, TaskSpec, dataset_tasks

__all__ = [
    "SUBSET_SIZES",
    "SpecMixture",
    "SpecTask",
    "TFDS_DATA_DIR_ENV",
    "domain_vocabulary",
    "mixture_names",
    "register_all",
    "register_dataset_tasks",
    "register_sentencepiece_tasks",
    "task_names",
    "tfds_data_dir",
]

SUBSET_SIZES = (2_000, 10_000, 98_000)
TFDS_DATA_DIR_ENV = "EXPLISTOPS_TFDS_DATA_DIR"

METRIC_FNS = scoring.METRIC_FNS


@gin.configurable
def tfds_data_dir(path: str | None = None) -> str | None:
    """Where the prepared ``explained_listops`` TFDS data lives.

    The gin parameter, else $EXPLISTOPS_TFDS_DATA_DIR; None when neither is set.
    """
    return path or os.environ.get(TFDS_DATA_DIR_ENV) or None


@functools.lru_cache(maxsize=None)
def domain_vocabulary() -> vocab.DomainVocabulary:
    """The domain vocabulary every non-``_sp`` task uses (one shared instance)."""
    return vocab.DomainVocabulary()


@functools.lru_cache(maxsize=None)
def _sentencepiece_vocabulary(path: str) -> seqio.SentencePieceVocabulary:
    return vocab.sentencepiece_vocabulary(path)


# -- sources -------------------------------------------------------------------


def generate_raw(
    split: str, shuffle_files: bool = False, seed: int | None = None, *, dataset: str,
    train_size: int | None = None,
) -> tf.data.Dataset:
    """The raw examples of one split, from ``data.examples`` (see the module doc on shuffling).

    A range of indices mapped through the generator, one example per index
    (``data.examples(config, split, i, i + 1)``), rather than a Python generator:
    same examples in the same order, but ``skip``/``shard`` are cheap and the map
    runs beside the rest of the pipeline. ``train_size`` keeps the first examples
    of the train split only (the data-efficiency subsets).
    """
    del shuffle_files, seed  # one deterministic stream; see the module docstring
    config = data.get_config(dataset)
    size = config.split(split).num_examples
    if split == "train" and train_size is not None:
        size = min(size, train_size)

    def one(index) -> tuple:
        ex = next(data.examples(config, split, int(index), int(index) + 1))
        return (ex["id"].encode("utf-8"), ex["expression"].encode("utf-8"),
                np.int32(ex["answer"]), np.int32(ex["length"]), np.int32(ex["depth"]))

    @tf.autograph.experimental.do_not_convert
    def example(index):
        fields = tf.numpy_function(
            one, [index], [tf.string, tf.string, tf.int32, tf.int32, tf.int32], stateful=False
        )
        ex = dict(zip(("id", "expression", "answer", "length", "depth"), fields))
        ex["index"] = index
        ex["modulus"] = tf.constant(config.modulus, tf.int32)
        for value in ex.values():
            value.set_shape([])
        return ex

    return tf.data.Dataset.range(size).map(example, num_parallel_calls=tf.data.AUTOTUNE)


def _split_sizes(config: data.DatasetConfig, subset: int | None) -> dict[str, int]:
    sizes = {split: c.num_examples for split, c in config.splits.items()}
    if subset is not None:
        sizes["train"] = subset
    return sizes


def _source(dataset: str, source: str, subset: int | None,
            data_dir: str | None) -> seqio.DataSource:
    """The raw source of a task: generated, or the prepared TFDS records."""
    config = data.get_config(dataset)
    sizes = _split_sizes(config, subset)
    if source == "function":
        return seqio.FunctionDataSource(
            functools.partial(generate_raw, dataset=dataset, train_size=subset),
            splits=list(config.splits),
            num_input_examples=sizes,
        )
    splits = {split: split for split in config.splits}
    if subset is not None:
        splits["train"] = f"train[:{subset}]"
    return TfdsRecords(dataset, data_dir, splits)


class TfdsRecords(seqio.DataSource):
    """The prepared ``explained_listops/<dataset>`` records, read in index order.

    Like ``seqio.TfdsDataSource``, but the records are an ordered TFDS dataset
    (``disable_shuffling``, so ``train[:N]`` is the first N examples) and
    ``shuffle=True`` only shuffles the file order; TFDS's ordering guard, which
    would refuse that, is turned off. Never prepares the data: build it first
    (``tfds build explistops_jax/tfds_builder.py --config NAME``).
    """

    def __init__(self, dataset: str, data_dir: str | None, splits: dict[str, str]):
        self._dataset = dataset
        self._data_dir = data_dir
        self._tfds_splits = dict(splits)  # task split -> TFDS split (slices allowed)
        super().__init__(splits=list(splits))

    @functools.cached_property
    def builder(self):
        import tensorflow_datasets as tfds

        from explistops_jax import tfds_builder  # registers the builder with TFDS

        builder = tfds.builder(tfds_builder.tfds_name(self._dataset), data_dir=self._data_dir)
        if not builder.is_prepared():
            raise UserError(
                f"TFDS dataset {tfds_builder.tfds_name(self._dataset)} is not prepared in "
                f"{builder.data_dir}",
                expected="tfds build explistops_jax/tfds_builder.py "
                         f"--config {self._dataset} --data_dir {self._data_dir or '<dir>'}",
            )
        return builder

    @property
    def supports_arbitrary_sharding(self) -> bool:
        return False

    def list_shards(self, split: str) -> list[str]:
        info = self.builder.info.splits[self._tfds_splits[split]]
        return [f.filename for f in info.file_instructions]

    def num_input_examples(self, split: str) -> int:
        return self.builder.info.splits[self._tfds_splits[split]].num_examples

    def get_dataset(self, split: str = "train", shuffle: bool = True, seed: int | None = None,
                    shard_info: seqio.ShardInfo | None = None, *, sequence_length=None,
                    use_cached: bool = False, num_epochs: int | None = 1) -> tf.data.Dataset:
        import tensorflow_datasets as tfds

        del sequence_length, use_cached, num_epochs  # as in seqio.TfdsDataSource
        read_config = tfds.ReadConfig(
            shuffle_seed=seed,
            skip_prefetch=True,
            enable_ordering_guard=False,
            input_context=tf.distribute.InputContext(shard_info.num_shards, shard_info.index)
            if shard_info else None,
        )
        return self.builder.as_dataset(
            split=self._tfds_splits[split], shuffle_files=shuffle, read_config=read_config
        )


# -- preprocessors ---------------------------------------------------------------


def _inputs(expression: tf.Tensor, style: str, tagged: bool) -> tf.Tensor:
    return tf.strings.join([f"{style}: ", expression]) if tagged else expression


def render_explanations(dataset: tf.data.Dataset, *, style: str, tagged: bool = False,
                        notation: str = "bracket") -> tf.data.Dataset:
    """inputs = the expression in ``notation`` (with ``"style: "`` when tagged);
    targets = explain.explain(...)."""

    def render(expression: bytes, modulus) -> bytes:
        tree = listops.parse(expression.decode("utf-8"))
        return explain.explain(tree, style, modulus=int(modulus)).encode("utf-8")

    def write(expression: bytes) -> bytes:
        tree = listops.parse(expression.decode("utf-8"))
        return listops.format(tree, notation).encode("utf-8")

    @tf.autograph.experimental.do_not_convert
    def fn(ex):
        targets = tf.numpy_function(
            render, [ex["expression"], ex["modulus"]], tf.string, stateful=False
        )
        targets.set_shape([])
        expression = ex["expression"]
        if notation != "bracket":
            expression = tf.numpy_function(write, [expression], tf.string, stateful=False)
            expression.set_shape([])
        return {**ex, "inputs": _inputs(expression, style, tagged), "targets": targets}

    return dataset.map(fn, num_parallel_calls=tf.data.AUTOTUNE)


def select_explanations(dataset: tf.data.Dataset, *, style: str,
                        tagged: bool = False) -> tf.data.Dataset:
    """The TFDS records' counterpart of :func:`render_explanations`: no Python, stored text."""

    @tf.autograph.experimental.do_not_convert
    def fn(ex):
        ex = dict(ex)
        targets = ex.pop("explanations")[style]
        return {**ex, "inputs": _inputs(ex["expression"], style, tagged), "targets": targets}

    return dataset.map(fn, num_parallel_calls=tf.data.AUTOTUNE)


# -- registration ----------------------------------------------------------------
#
# The SeqIO registries are the only record of what is registered: every task and
# mixture of this module is a SpecTask / SpecMixture carrying its spec, so the
# registered names, datasets and options are read back from there.


class SpecTask(seqio.Task):
    """A ``seqio.Task`` built from a :class:`TaskSpec`, which it keeps as ``.spec``."""

    def __init__(self, name: str, *, spec: TaskSpec, **kwargs):
        super().__init__(name, **kwargs)
        self.spec = spec


class SpecMixture(seqio.Mixture):
    """A ``seqio.Mixture`` built from a :class:`MixtureSpec`, which it keeps as ``.spec``."""

    def __init__(self, name: str, tasks, *, spec: MixtureSpec, **kwargs):
        super().__init__(name, tasks, **kwargs)
        self.spec = spec


def _registered_tasks() -> list[SpecTask]:
    """The tasks this module registered, in registration order."""
    tasks = (seqio.TaskRegistry.get(name) for name in seqio.TaskRegistry.names())
    return [t for t in tasks if isinstance(getattr(t, "spec", None), TaskSpec)]


def _registered_mixtures() -> list[SpecMixture]:
    mixtures = (seqio.MixtureRegistry.get(name) for name in seqio.MixtureRegistry.names())
    return [m for m in mixtures if isinstance(getattr(m, "spec", None), MixtureSpec)]


def _preprocessor(spec: TaskSpec):
    """Renders (generated source) or selects (TFDS) the explanation of the spec's style."""
    if spec.source == "function":
        return functools.partial(render_explanations, style=spec.style, tagged=spec.tagged,
                                 notation=spec.notation)
    if spec.notation != "bracket":
        raise UserError(f"task {spec.name!r}: the TFDS records hold bracket notation only",
                        expected="a generated task (no _tfds) for _paren inputs")
    return functools.partial(select_explanations, style=spec.style, tagged=spec.tagged)


def _add_task(spec: TaskSpec, source: seqio.DataSource, vocabulary: seqio.Vocabulary,
              replace: bool) -> None:
    if spec.name in seqio.TaskRegistry.names():
        if not replace:
            return
        seqio.TaskRegistry.remove(spec.name)
    features = {
        "inputs": seqio.Feature(vocabulary, add_eos=True),
        "targets": seqio.Feature(vocabulary, add_eos=True),
    }
    seqio.TaskRegistry.add(
        spec.name,
        task_cls=SpecTask,
        spec=spec,
        source=source,
        output_features=features,
        preprocessors=[
            _preprocessor(spec),
            seqio.preprocessors.tokenize,
            seqio.preprocessors.append_eos_after_trim,
        ],
        postprocess_fn=scoring.postprocess,
        metric_fns=list(METRIC_FNS),
    )


def _add_mixture(spec: MixtureSpec, members: Sequence[TaskSpec], replace: bool) -> None:
    if spec.name in seqio.MixtureRegistry.names():
        if not replace:
            return
        seqio.MixtureRegistry.remove(spec.name)
    seqio.MixtureRegistry.add(spec.name, [m.name for m in members], default_rate=1.0,
                              mixture_cls=SpecMixture, spec=spec)


def register_dataset_tasks(
    config_name: str,
    *,
    source: str = "function",
    data_dir: str | None = None,
    sentencepiece_path: str | None = None,
    domain: bool = True,
    styles: Iterable[str] | None = None,
    subset_sizes: Iterable[int] = SUBSET_SIZES,
    replace: bool = False,
) -> list[str]:
    """Register the tasks and the all-styles mixture of one dataset config.

    Args:
      config_name: a name ``data.get_config`` knows (built in, or added with
        ``data.register_config``, e.g. the CPU demo preset).
      source: ``"function"`` (generate on the fly) or ``"tfds"`` (read the
        prepared ``explained_listops/<config_name>`` records from ``data_dir``).
      data_dir: the TFDS data directory; default :func:`tfds_data_dir`.
      sentencepiece_path: also register the ``_sp`` variants with this
        SentencePiece model.
      domain: register the domain-vocabulary variants.
      styles: default every style of ``explain.STYLES``.
      subset_sizes: training-set sizes of the ``_n{N}`` tasks; sizes above the
        config's training set are skipped.
      replace: re-register names that exist (otherwise they are kept as they are).

    Returns:
      The task and mixture names of this call (registered now or before).
    """
    config = data.get_config(config_name)
    if source not in SOURCES:
        raise UserError(f"unknown task source {source!r}", expected="one of " + ", ".join(SOURCES))
    if source == "tfds":
        data_dir = data_dir or tfds_data_dir()
    styles = tuple(styles or explain.STYLES)
    train_size = config.splits["train"].num_examples if "train" in config.splits else 0
    subset_sizes = tuple(n for n in subset_sizes if n <= train_size)

    vocabularies = []
    if domain:
        vocabularies.append(("domain", domain_vocabulary()))
    if sentencepiece_path:
        vocabularies.append(("sp", _sentencepiece_vocabulary(sentencepiece_path)))

    sources: dict[int | None, seqio.DataSource] = {}  # one raw source per training subset
    names = []
    for kind, vocabulary in vocabularies:
        specs = dataset_tasks(config.name, styles=styles, subset_sizes=subset_sizes,
                              source=source, vocabulary=kind,
                              notations=NOTATIONS if source == "function" else ("bracket",))
        for spec in specs:
            if spec.subset not in sources:
                sources[spec.subset] = _source(config.name, source, spec.subset, data_dir)
            _add_task(spec, sources[spec.subset], vocabulary, replace)
        mixture = MixtureSpec(config.name, source=source, vocabulary=kind)
        _add_mixture(mixture, mixture.members(styles), replace)
        names += [spec.name for spec in specs] + [mixture.name]
    return names


def _sentencepiece_variants(path: str, *, replace: bool) -> list[str]:
    """The ``_sp`` variant of every registered task and mixture, with this model.

    Each variant reads the same raw source as its task (so a TFDS task keeps its
    data directory) and a mixture's variant has the variants of its members.
    """
    vocabulary = _sentencepiece_vocabulary(path)
    names: dict[str, None] = {}  # ordered, without repeats
    for task in _registered_tasks():
        spec = task.spec.replace(vocabulary="sp")
        if spec.name not in names:
            _add_task(spec, task.source, vocabulary, replace)
            names[spec.name] = None
    for mixture in _registered_mixtures():
        spec = mixture.spec.replace(vocabulary="sp")
        if spec.name not in names:
            members = [t.spec.replace(vocabulary="sp") for t in mixture.tasks]
            _add_mixture(spec, members, replace)
            names[spec.name] = None
    return list(names)


def register_sentencepiece_tasks(path: str | None = None) -> list[str]:
    """(Re)register the ``_sp`` variants of every registered dataset with this model.

    ``path`` defaults to the configured one (``vocab.sentencepiece_model_path()``).
    Existing ``_sp`` tasks are replaced, so a later call switches models.
    """
    path = path or vocab.sentencepiece_model_path()
    _sentencepiece_vocabulary(path)  # fail here, with a clear message, if unusable
    return _sentencepiece_variants(path, replace=True)


def register_all() -> list[str]:
    """Register every dataset config of ``data.DATASETS`` (what ``import seqio_tasks`` does).

    Configs added with ``data.register_config`` before this runs get their tasks
    too. A dataset registered before keeps the tasks it was registered with (its
    styles, subset sizes and data directory); with a SentencePiece model
    configured, it gains the ``_sp`` variants it lacks.

    Returns:
      Every task and mixture name this module has registered.
    """
    spm_path = vocab.sentencepiece_model_path()
    data_dir = tfds_data_dir()
    sources = ("function", "tfds") if data_dir else ("function",)
    known = {(task.spec.dataset, task.spec.source) for task in _registered_tasks()}
    for dataset in list(data.DATASETS):
        for source in sources:
            if (dataset, source) not in known:
                register_dataset_tasks(dataset, source=source, data_dir=data_dir,
                                       sentencepiece_path=spm_path)
    if spm_path:
        _sentencepiece_variants(spm_path, replace=False)
    return task_names() + mixture_names()


def task_names() -> list[str]:
    """Every task this module registered (all datasets, sources, vocabularies)."""
    return [task.name for task in _registered_tasks()]


def mixture_names() -> list[str]:
    """Every mixture this module registered."""
    return [mixture.name for mixture in _registered_mixtures()]
