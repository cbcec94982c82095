"""Sampling ListOps trees: LRA's distribution, deterministic per (seed, example index).

:class:`SamplerConfig` is LRA's generator, made configurable; :func:`sample` draws
example ``index`` of the stream ``seed`` from it (shape first, early abort: see
:func:`sample_with_attempts`); :func:`sample_naive` is the plain whole-tree rejection
procedure it is tested and benchmarked against. Pure Python, no TensorFlow or JAX.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import math
import random
import time
from bisect import bisect_right
from dataclasses import dataclass
from typing import Callable

from explistops_jax.errors import UserError
from explistops_jax.listops.tree import (
    ALL_OPERATORS,
    MIN_ARGS,
    OPERATORS,
    Node,
    Tree,
    canonical_operator,
)

__all__ = [
    "SamplerConfig",
    "MAX_ATTEMPTS",
    "example_rng",
    "sample",
    "sample_with_attempts",
    "sample_naive",
]


@dataclass(frozen=True)
class SamplerConfig:
    """The distribution of sampled trees: LRA's generator, made configurable.

    The parameters mean exactly what they mean in LRA's released generator code, so
    "max_depth 10, max_args 10" here is the distribution of the LRA ListOps data:

    * The root has depth 1 and is always an operator. A node at depth
      ``d < max_depth`` is an operator with probability ``value_p`` and a value
      otherwise; a node at depth ``max_depth`` is always a value. Hence
      ``depth(tree) <= max_depth - 1``.
    * An operator is drawn uniformly from ``operators`` and has ``min_args..max_args``
      arguments (uniform); values are uniform in ``min_value..max_value``.
      ``operators`` may be any of the family's eight (:data:`ALL_OPERATORS`, any
      spelling; FLSUM needs ``min_args >= 2``); the default is the study's four
      (:data:`OPERATORS`), which every built-in dataset uses.
    * A tree is kept only when ``min_length < length(tree) < max_length`` (strict).

    About ``value_p``: LRA's code emits a value when ``random() > VALUE_P``, so its
    ``VALUE_P = 0.25`` is the probability of an *operator*; reference.md words it the
    other way round. This config follows the code (the name is LRA's). With the
    reversed reading trees almost never end: lengths 20-50 at max_depth 10 take more
    than ten million attempts per tree, while LRA's released data has them.
    """

    min_length: int
    max_length: int
    max_depth: int = 10
    max_args: int = 10
    value_p: float = 0.25
    min_value: int = 0
    max_value: int = 29
    operators: tuple[str, ...] = OPERATORS
    min_args: int = 2

    def __post_init__(self) -> None:
        ops = tuple(self.operators)
        canonical = tuple(canonical_operator(op) for op in ops)
        if not ops or None in canonical:
            raise UserError(f"bad operators {ops!r}",
                            expected=f"a non-empty subset of {ALL_OPERATORS}")
        object.__setattr__(self, "operators", canonical)
        fewest = max(MIN_ARGS.get(op, 1) for op in canonical)
        checks = [
            (self.min_args >= fewest,
             f"min_args must be at least {fewest} for the operators {canonical}"),
            (self.max_depth >= 2, "max_depth must be at least 2 (the root has depth 1)"),
            (1 <= self.min_args <= self.max_args, "need 1 <= min_args <= max_args"),
            (0.0 <= self.value_p <= 1.0, "value_p must be a probability"),
            (0 <= self.min_value <= self.max_value, "need 0 <= min_value <= max_value"),
            (0 <= self.min_length and self.min_length + 1 < self.max_length,
             "the window min_length < length < max_length is empty"),
            (self.shortest() < self.max_length,
             f"the smallest tree (length {self.shortest()}) is not shorter than max_length"),
            (self.longest() > self.min_length,
             f"the largest tree (length {self.longest()}) is not longer than min_length"),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(f"bad sampler config: {message}", where=repr(self))

    def shortest(self) -> int:
        """Length of the smallest possible tree."""
        if self.value_p < 1.0:
            return 2 + self.min_args
        return self._full_tree(self.min_args)

    def longest(self) -> int:
        """Length of the largest possible tree."""
        if self.value_p > 0.0:
            return self._full_tree(self.max_args)
        return 2 + self.max_args

    def _full_tree(self, args: int) -> int:
        """Length of the tree with operators of ``args`` arguments down to max_depth."""
        size = 1
        for _ in range(self.max_depth - 1):
            size = 2 + args * size
        return size


MAX_ATTEMPTS = 1_000_000
"""Attempts :func:`sample` makes before it declares the length window unreachable."""


def example_rng(seed: int, index: int) -> random.Random:
    """The private random stream of example ``index`` under ``seed``.

    Seeded from a BLAKE2b hash of ``(seed, index)``, so each example can be generated
    on its own (shards, several processes) and the same pair always gives the same
    tree, on any machine and Python version (never Python's salted ``hash()``).
    """
    digest = hashlib.blake2b(f"explistops/{seed}/{index}".encode(), digest_size=16).digest()
    return random.Random(int.from_bytes(digest, "little"))


def sample(config: SamplerConfig, seed: int, index: int) -> Tree:
    """Example ``index`` of the stream ``seed``: a tree drawn from ``config``.

    Deterministic per ``(seed, index)``, with the distribution of
    :func:`sample_naive` but a small fraction of its cost (see
    :func:`sample_with_attempts`).
    """
    return sample_with_attempts(config, seed, index)[0]


def sample_with_attempts(config: SamplerConfig, seed: int, index: int) -> tuple[Tree, int]:
    """Like :func:`sample`, also returning how many trees were started (>= 1).

    Exact rejection sampling, made cheap in two ways:

    * Shape first, labels later. Only the shape decides the length, so an attempt
      draws just the shape: for each operator its argument count ``k`` and how many
      ``m`` of them are operators, in one draw from the joint table of ``k`` uniform
      and ``m ~ Binomial(k, value_p)`` (see :func:`_shape_tables`). Operator names,
      values and which of the ``k`` slots hold the ``m`` operators are drawn only for
      the accepted shape; given the shape they are independent of it, so the tree has
      the naive distribution.
    * Early abort. While the shape grows (breadth first), a lower bound on its final
      length is kept: tokens fixed so far plus the shortest possible operator for each
      operator not yet grown. Once the bound reaches ``max_length`` the tree can only
      be rejected, so it is dropped and a fresh one started from the same stream.
      Dropped trees are exactly those the naive procedure rejects.

    An attempt is accepted exactly when the naive procedure would accept the same
    tree, so ``attempts`` also measures the naive acceptance rate (the benchmark uses
    it).

    Raises:
      UserError: after :data:`MAX_ATTEMPTS` attempts without an accepted tree.
    """
    rand = example_rng(seed, index).random
    tables = _shape_tables(config)
    shape, size, attempts = _draw_shape(config, tables, rand)
    return _label_shape(config, tables, shape, size, rand), attempts


_GUIDE_SIZE = 4096


@dataclass(frozen=True)
class _ShapeTables:
    """Precomputed tables of one config's operator shapes (see :func:`_shape_tables`).

    ``outcomes[i] = (k, m)``: k arguments of which m are operators.
    ``cumulative``: their cumulative probabilities; ``guide[g]`` is the first outcome
    whose cumulative probability exceeds ``g / _GUIDE_SIZE`` (a bucket index that makes
    the inverse-CDF lookup one step in most cases; results equal ``bisect_right``).
    ``growth[i]``: how much the length bound grows when outcome i is drawn: its k - m
    values and m operators of at least ``2 + min_args`` tokens replace its own
    ``2 + min_args``. ``leaf[j]``: the outcome index of ``(min_args + j, 0)``.
    ``arrangements[i]``: every way to place m operators among k slots, each as the
    order in which ``values + operators`` fill the slots.
    """

    outcomes: tuple[tuple[int, int], ...]
    cumulative: tuple[float, ...]
    guide: tuple[int, ...]
    growth: tuple[int, ...]
    operator_args: tuple[int, ...]
    leaf: tuple[int, ...]
    arrangements: tuple[tuple[tuple[int, ...], ...], ...]


@functools.lru_cache(maxsize=64)
def _shape_tables(config: SamplerConfig) -> _ShapeTables:
    """Tables of one operator's shape: k uniform in min_args..max_args, each argument an
    operator with probability value_p, so ``m ~ Binomial(k, value_p)``."""
    counts = range(config.min_args, config.max_args + 1)
    p = config.value_p
    cumulative: list[float] = []
    outcomes: list[tuple[int, int]] = []
    total = 0.0
    for k in counts:
        for m in range(k + 1):
            total += math.comb(k, m) * p**m * (1 - p) ** (k - m) / len(counts)
            cumulative.append(total)
            outcomes.append((k, m))
    # Absorb rounding so every draw in [0, 1) lands on an outcome: the last outcome of
    # positive probability ends at exactly 1 (bisect never picks the zero-probability
    # outcomes after it, e.g. m > 0 when value_p = 0).
    last = max(i for i in range(len(cumulative)) if i == 0 or cumulative[i] > cumulative[i - 1])
    cumulative[last:] = [1.0] * (len(cumulative) - last)
    shortest_op = 2 + config.min_args
    return _ShapeTables(
        outcomes=tuple(outcomes),
        cumulative=tuple(cumulative),
        guide=tuple(bisect_right(cumulative, g / _GUIDE_SIZE) for g in range(_GUIDE_SIZE)),
        growth=tuple(k - m + m * shortest_op - config.min_args for k, m in outcomes),
        operator_args=tuple(m for _, m in outcomes),
        leaf=tuple(outcomes.index((k, 0)) for k in counts),
        arrangements=tuple(_arrangements(k, m) for k, m in outcomes),
    )


def _arrangements(k: int, m: int) -> tuple[tuple[int, ...], ...]:
    """All placements of m operators among k slots, as fill orders of values + operators.

    For the slots chosen for operators the order points past the k - m values.
    """
    result = []
    for chosen in itertools.combinations(range(k), m):
        value, operator, order = 0, k - m, []
        for slot in range(k):
            if slot in chosen:
                order.append(operator)
                operator += 1
            else:
                order.append(value)
                value += 1
        result.append(tuple(order))
    return tuple(result)


def _draw_shape(config: SamplerConfig, tables: _ShapeTables,
                rand: Callable[[], float]) -> tuple[list[int], int, int]:
    """Draw shapes until one fits the length window: ``(shape, length, attempts)``.

    A shape is the list of outcome indices (into :func:`_shape_tables`) of its
    operators in breadth-first order: the root, then its ``m`` operator arguments,
    then theirs, level by level, each operator's in order. This is the sampler's hot
    path, hence one flat loop over operators (no call or slice per level or attempt).
    """
    cumulative, guide, growth = tables.cumulative, tables.guide, tables.growth
    operator_args, leaf = tables.operator_args, tables.leaf
    guide_size = _GUIDE_SIZE
    n_leaf = len(leaf)
    shortest_op = 2 + config.min_args
    min_length, max_length = config.min_length, config.max_length
    last_free_depth = config.max_depth - 2  # deepest level whose arguments may be operators
    for attempts in range(1, MAX_ATTEMPTS + 1):
        bound = shortest_op  # the root: an operator not yet grown
        shape: list[int] = []
        append = shape.append
        known = 1  # operators known to exist (drawn or pending)
        level_end = 1  # shape index where the current level ends
        node_depth = 1
        for drawn in itertools.count():
            if drawn == known:
                break  # complete: bound == length
            if drawn == level_end:
                node_depth += 1
                level_end = known
            if node_depth <= last_free_depth:
                x = rand()
                i = guide[int(x * guide_size)]
                if cumulative[i] <= x:
                    i = bisect_right(cumulative, x, i + 1)
                known += operator_args[i]
            else:  # the arguments sit at max_depth: values only
                i = leaf[int(rand() * n_leaf)]
            append(i)
            bound += growth[i]
            if bound >= max_length:
                break  # too long, certainly: abandon
        if min_length < bound < max_length:
            return shape, bound, attempts
    raise UserError(f"no tree accepted after {MAX_ATTEMPTS} attempts", where=repr(config),
                    expected="a length window the config can reach")


def _label_shape(config: SamplerConfig, tables: _ShapeTables, shape: list[int], size: int,
                 rand: Callable[[], float]) -> Node:
    """Turn an accepted shape into a tree: draw values, names and argument placements.

    Built bottom-up (reverse breadth-first order). All values and names are drawn up
    front (they are i.i.d., so which node gets which does not matter); the ``m``
    operator arguments of an operator take a uniformly random one of the ``C(k, m)``
    placements among its ``k`` slots, their law given ``m`` in the naive process.
    """
    outcomes, arrangements = tables.outcomes, tables.arrangements
    ops = config.operators
    n_ops = len(ops)
    min_value = config.min_value
    n_values = config.max_value - min_value + 1
    n_nodes = len(shape)
    values = [min_value + int(rand() * n_values) for _ in range(size - 2 * n_nodes)]
    names = [ops[int(rand() * n_ops)] for _ in range(n_nodes)]
    built: list[Node] = [None] * n_nodes  # type: ignore[list-item]
    end = n_nodes  # operator j's operator arguments are built[end - m:end]
    for j in range(n_nodes - 1, -1, -1):
        i = shape[j]
        k, m = outcomes[i]
        taken = len(values) - (k - m)
        if m:
            args = values[taken:]
            args += built[end - m:end]
            end -= m
            placements = arrangements[i]
            node_args = tuple(map(args.__getitem__, placements[int(rand() * len(placements))]))
        else:
            node_args = tuple(values[taken:])
        del values[taken:]
        built[j] = Node(names[j], node_args)
    return built[0]


def sample_naive(config: SamplerConfig, rng: random.Random, *,
                 deadline: float | None = None) -> Tree:
    """The LRA procedure: grow a whole tree node by node, keep it only if its length fits.

    The reference that :func:`sample` is tested and benchmarked against; it draws
    every node in order, as LRA's generator does (with the same fast random
    primitives as :func:`sample`, so a benchmark compares algorithms, not
    primitives). ``deadline`` (a ``time.monotonic()`` value) lets a benchmark stop it
    inside a huge tree: ``TimeoutError`` is raised once it has passed.
    """
    rand = rng.random
    ops = config.operators
    n_ops = len(ops)
    min_args = config.min_args
    n_arg_counts = config.max_args - min_args + 1
    min_value = config.min_value
    n_values = config.max_value - min_value + 1
    value_p = config.value_p
    max_depth = config.max_depth
    grown = 0

    def operator(node_depth: int) -> tuple[Node, int]:
        nonlocal grown
        grown += 1
        if deadline is not None and grown % 1024 == 0 and time.monotonic() > deadline:
            raise TimeoutError("sample_naive passed its deadline")
        count = min_args + int(rand() * n_arg_counts)
        args: list[Tree] = []
        size = 2
        child_depth = node_depth + 1
        for _ in range(count):
            if child_depth < max_depth and rand() <= value_p:
                child, child_size = operator(child_depth)
                args.append(child)
                size += child_size
            else:
                args.append(min_value + int(rand() * n_values))
                size += 1
        return Node(ops[int(rand() * n_ops)], tuple(args)), size

    while True:
        tree, size = operator(1)
        if config.min_length < size < config.max_length:
            return tree
