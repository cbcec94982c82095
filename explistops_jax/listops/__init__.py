"""ListOps trees: parse, format, evaluate, measure, sample, and read the original files.

The package is the single place that knows the ListOps notation, arithmetic and
distribution; everything else (explanations, scoring, datasets) works on its
:data:`Tree` type. Pure Python, no TensorFlow or JAX, so the generator and the parser
are cheap to test and reuse. One idea per module:

* :mod:`~explistops_jax.listops.tree`: the :data:`Tree` type, the two notations
  (:func:`parse`, :func:`format`), the arithmetic (:func:`evaluate`, :func:`apply`,
  :func:`median`) and the measures (:func:`length`, :func:`depth`).
* :mod:`~explistops_jax.listops.sampler`: :class:`SamplerConfig` (LRA's generator,
  made configurable) and :func:`sample`, deterministic per ``(seed, example index)``;
  :func:`sample_naive` is the plain whole-tree rejection procedure it is tested and
  benchmarked against.
* :mod:`~explistops_jax.listops.readers`: the released ListOps and LRA TSV files.

Import from the package (``from explistops_jax.listops import parse``); the names
below are its public API.
"""

from __future__ import annotations

from explistops_jax.errors import ListOpsError
from explistops_jax.listops import readers, sampler, tree
from explistops_jax.listops.readers import read_listops_tsv, read_lra_tsv
from explistops_jax.listops.sampler import (
    MAX_ATTEMPTS,
    SamplerConfig,
    example_rng,
    sample,
    sample_naive,
    sample_with_attempts,
)
from explistops_jax.listops.tree import (
    ALL_OPERATORS,
    MAX_NESTING,
    MIN_ARGS,
    MODULAR_OPERATORS,
    OPERATORS,
    SPELLINGS,
    Node,
    Tree,
    apply,
    canonical_operator,
    depth,
    evaluate,
    format,
    length,
    median,
    parse,
    unreduced,
)

__all__ = ["ListOpsError", *tree.__all__, *sampler.__all__, *readers.__all__]
