"""TFDS builder ``explained_listops``: the datasets of :mod:`explistops_jax.data` as TFRecords.

One builder config per dataset config (``explistops30``, ``listops10``, ...; a config
registered later with ``data.register_config`` is found by name too), one TFDS
split per split of the config (``train``, ``validation``, ``test`` and the
generalization splits such as ``len100_200``). Build with::

    tfds build explistops_jax/tfds_builder.py --config explistops30 --data_dir DIR

or, where the ``tfds`` command does not start (TFDS 4.9.10's command line imports
``apache_beam``, which this project does not need), with this module::

    python -m explistops_jax.tfds_builder --config explistops30 --data_dir DIR

or from Python: ``ExplainedListops(config="explistops30", data_dir=DIR).download_and_prepare()``.

Features of an example:

* ``id`` (``"explistops30/train/17"``), ``index`` (its position in the split),
  ``expression`` (bracket notation), ``answer``, ``length``, ``depth``, ``modulus``;
* ``explanations``: the target text of every style of ``explain.STYLES``, rendered
  when the dataset is built.

The explanations are stored (not rendered on the fly) so the TFRecords are a
self-contained release of the dataset and a reading pipeline needs no Python:
the SeqIO ``*_tfds`` tasks select the stored text of their style, and
tests/test_tfds_builder.py checks that it equals what the renderer writes today.
A change of wording therefore needs a new ``VERSION`` (and a rebuild).

The examples are the same as ``data.examples`` yields (same seeds), written in
index order (``disable_shuffling``), so a TFDS-backed task and a generator-backed
task see the same data in the same order when reading unshuffled, and the slice
``train[:N]`` is the first N examples. No download happens: the data is generated.
"""

from __future__ import annotations

import dataclasses
import inspect
import sys

import numpy as np
from etils import epath
import tensorflow_datasets as tfds

from explistops_jax import data, explain, listops

__all__ = ["ExplainedListops", "ExplainedListopsConfig", "build", "main", "tfds_name"]

if __name__ == "__main__":
    # Run the imported module's main, so the builder class is defined (and registered
    # with TFDS) once, under its real module name.
    from explistops_jax.tfds_builder import main as _main

    raise SystemExit(_main())


@dataclasses.dataclass(eq=False)
class ExplainedListopsConfig(tfds.core.BuilderConfig):
    """A builder config named after, and built from, a dataset config of ``data``."""

    @classmethod
    def for_dataset(cls, name: str) -> "ExplainedListopsConfig":
        config = data.get_config(name)  # raises the project's error for unknown names
        splits = ", ".join(f"{s} ({c.num_examples:,})" for s, c in config.splits.items())
        return cls(
            name=config.name,
            description=f"{config.name}: modulus {config.modulus}; splits {splits}.",
        )


class ExplainedListops(tfds.core.GeneratorBasedBuilder):
    """Explained-ListOps: expressions, answers and step-by-step explanations."""

    name = "explained_listops"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release: raw fields plus the four explanation styles."}
    BUILDER_CONFIGS = [ExplainedListopsConfig.for_dataset(n) for n in data.DATASETS]

    # Configs of datasets registered after import, created once each so TFDS's
    # identity check on configs passes.
    _LATE_CONFIGS: dict[str, ExplainedListopsConfig] = {}

    @classmethod
    def get_builder_config(cls, name: str, version=None):
        config = super().get_builder_config(name, version)
        if config is None and name in data.DATASETS:
            config = cls._LATE_CONFIGS.get(name)
            if config is None:
                config = cls._LATE_CONFIGS[name] = ExplainedListopsConfig.for_dataset(name)
        return config

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        """This file. (TFDS's own lookup needs the ``importlib_resources`` backport,
        which TFDS 4.9.10 does not declare as a dependency on Python >= 3.9.)"""
        return epath.Path(inspect.getfile(cls))

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    "id": tfds.features.Text(),
                    "index": tfds.features.Scalar(dtype=np.int64),
                    "expression": tfds.features.Text(),
                    "answer": tfds.features.Scalar(dtype=np.int32),
                    "length": tfds.features.Scalar(dtype=np.int32),
                    "depth": tfds.features.Scalar(dtype=np.int32),
                    "modulus": tfds.features.Scalar(dtype=np.int32),
                    "explanations": tfds.features.FeaturesDict(
                        {style: tfds.features.Text() for style in explain.STYLES}
                    ),
                }
            ),
            supervised_keys=None,
            # Records keep the generation (index) order, so ``train[:N]`` is the
            # first N examples, as in the generator-backed subset tasks. Readers shuffle.
            disable_shuffling=True,
            homepage="https://arxiv.org/abs/2402.07543",
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download: the data is generated
        config = data.get_config(self.builder_config.name)
        return {split: self._generate_examples(split) for split in config.splits}

    def _generate_examples(self, split: str):
        config = data.get_config(self.builder_config.name)
        for ex in data.examples(config, split):
            tree = listops.parse(ex["expression"])
            yield ex["index"], {
                "id": ex["id"],
                "index": ex["index"],
                "expression": ex["expression"],
                "answer": ex["answer"],
                "length": ex["length"],
                "depth": ex["depth"],
                "modulus": config.modulus,
                "explanations": {
                    style: explain.explain(tree, style, modulus=config.modulus)
                    for style in explain.STYLES
                },
            }


def tfds_name(dataset: str) -> str:
    """The TFDS name of a dataset config, with version: ``explained_listops/NAME:1.0.0``."""
    return f"{ExplainedListops.name}/{dataset}:{ExplainedListops.VERSION}"


def build(config: str, data_dir: str | None = None,
          max_examples_per_split: int | None = None) -> str:
    """Prepare one config's records (what ``tfds build`` does); returns their directory."""
    data.get_config(config)  # the project's error, listing the known names
    builder = ExplainedListops(config=config, data_dir=data_dir)
    download_config = tfds.download.DownloadConfig(max_examples_per_split=max_examples_per_split)
    builder.download_and_prepare(download_config=download_config)
    return str(builder.data_dir)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m explistops_jax.tfds_builder",
        description="Materialize an Explained-ListOps dataset config as TFDS TFRecords.",
    )
    parser.add_argument("--config", required=True, nargs="+", help="dataset config name(s)")
    parser.add_argument("--data_dir", default=None, help="TFDS data directory (default: TFDS's)")
    parser.add_argument("--max_examples_per_split", type=int, default=None,
                        help="cap every split (for quick checks)")
    args = parser.parse_args(argv)
    from explistops_jax.errors import UserError

    try:
        for name in args.config:
            print(build(name, args.data_dir, args.max_examples_per_split))
    except UserError as err:
        print(f"error: {err.message}", file=sys.stderr)
        return 2
    return 0

