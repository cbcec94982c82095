"""SeqIO tasks and mixtures of Explained-ListOps; importing this package registers them.

Brought in by name: ``import seqio_tasks`` in a gin file or in Python. See
:mod:`seqio_tasks.tasks` for the names, the pipeline and the options (T5's
SentencePiece path, the TFDS data directory). Re-importing is safe: names that
exist are left alone.

To register the ``_sp`` tasks from a gin file, bind the path before the import::

    import explistops_jax.vocab
    explistops_jax.vocab.sentencepiece_model_path.path = "/path/to/sentencepiece.model"
    import seqio_tasks

or set ``EXPLISTOPS_SPM_PATH``, or call ``seqio_tasks.register_sentencepiece_tasks(path)``.
"""

from explistops_jax import tf_loader

tf_loader.confine()  # TensorFlow off the GPUs before SeqIO loads it

from seqio_tasks.tasks import (  # noqa: E402, F401  (the public API)
    SUBSET_SIZES,
    domain_vocabulary,
    mixture_names,
    register_all,
    register_dataset_tasks,
    register_sentencepiece_tasks,
    task_names,
    tfds_data_dir,
)

register_all()
