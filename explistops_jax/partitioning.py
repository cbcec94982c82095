"""Sharding for training and decoding: a (data, model) mesh and logical axis rules.

Every parameter of the network carries logical axis names (``embed``, ``mlp``,
``heads``, ...; flax ``nn.LogicallyPartitioned`` boxes). A rule table maps each
logical name to a mesh axis (``data`` or ``model``) or to ``None`` (replicated),
like T5X's standard rules: the batch is split over ``data`` (data parallelism),
the wide dimensions of the weights (vocab, mlp, heads, joined_kv) over ``model``
(tensor / model parallelism), everything else is replicated.

:class:`Partitioner` turns those names into ``NamedSharding`` trees for the
parameters, the optimizer state (which mirrors the parameters) and the batch, and
jits functions with explicit in/out shardings. The same program runs on one CPU,
eight forced host devices, a GPU or a multi-host TPU slice; only the mesh changes.

Multi-host: every process runs the same program; call
:func:`explistops_jax.distributed.initialize` first (``runtime.setup``; flags ``--coordinator_address``,
``--num_processes``, ``--process_id`` of ``python -m explistops_jax.train``; on
TPU pods and SLURM JAX finds them itself). Each process reads its own shard of the
data (:attr:`Partitioner.data_shard`) and contributes its rows of the global batch.
The model axis must fit inside one host (``num_partitions`` <= local devices).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np
from flax import linen as nn
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from explistops_jax.errors import ConfigError, UnknownNameError, UserError

__all__ = [
    "DATA_AXIS",
    "MODEL_AXIS",
    "STANDARD_LOGICAL_AXIS_RULES",
    "PartitionConfig",
    "Partitioner",
    "create_mesh",
    "logical_axes",
]

DATA_AXIS = "data"
MODEL_AXIS = "model"

LogicalRules = Sequence[tuple[str, str | None]]

# T5X's standard rules (1-D parameter and activation partitioning). Parameter
# names: vocab, embed, mlp, heads, kv, joined_kv, relpos_buckets; activation names
# add batch and length; mlp_activations / layers / stack appear in some networks.
STANDARD_LOGICAL_AXIS_RULES: tuple[tuple[str, str | None], ...] = (
    ("batch", DATA_AXIS),
    ("vocab", MODEL_AXIS),
    ("mlp", MODEL_AXIS),
    ("heads", MODEL_AXIS),
    ("joined_kv", MODEL_AXIS),
    ("embed", None),
    ("kv", None),
    ("length", None),
    ("relpos_buckets", None),
    ("abspos_buckets", None),
    ("mlp_activations", None),
    ("layers", None),
    ("stack", None),
)


def create_mesh(
    num_partitions: int = 1,
    model_parallel_submesh: Sequence[int] | None = None,
    devices: Sequence[jax.Device] | None = None,
) -> Mesh:
    """A 2-D device mesh ``(data, model)``.

    Args:
      num_partitions: size of the ``model`` axis (1 = pure data parallelism).
      model_parallel_submesh: T5X's alternative way to give the model axis, as a
        shape (e.g. TPU ``(2, 2, 1, 2)``); its product is the model-axis size and
        must agree with ``num_partitions`` if both are given (other than 1).
      devices: the devices to use (default: all of them, every process's).
    """
    devices = list(jax.devices() if devices is None else devices)
    if model_parallel_submesh is not None:
        submesh_size = math.prod(model_parallel_submesh)
        if num_partitions not in (1, submesh_size):
            raise ConfigError(
                f"num_partitions={num_partitions} disagrees with "
                f"model_parallel_submesh={tuple(model_parallel_submesh)} "
                f"(product {submesh_size})", where="PartitionConfig",
                expected=f"num_partitions = 1 or {submesh_size}")
        num_partitions = submesh_size
    if num_partitions < 1 or len(devices) % num_partitions:
        raise ConfigError(
            f"num_partitions={num_partitions} must divide the number of devices "
            f"({len(devices)})", where="PartitionConfig.num_partitions",
            expected="a divisor of " + str(len(devices)))
    shape = (len(devices) // num_partitions, num_partitions)
    try:  # topology-aware order on TPU; a plain reshape elsewhere
        grid = mesh_utils.create_device_mesh(shape, devices)
    except (ValueError, NotImplementedError, AssertionError):
        grid = np.asarray(devices).reshape(shape)
    return Mesh(grid, (DATA_AXIS, MODEL_AXIS))


@dataclasses.dataclass(frozen=True)
class PartitionConfig:
    """How to lay the model over the devices (gin: ``PartitionConfig.*``).

    Attributes:
      num_partitions: model-parallel ways (the ``model`` mesh axis).
      model_parallel_submesh: alternative to num_partitions (see create_mesh).
      logical_axis_rules: ``(logical name, mesh axis or None)`` pairs; None uses
        :data:`STANDARD_LOGICAL_AXIS_RULES`. Rules given here come first and so
        override the standard ones for the same name.
    """

    num_partitions: int = 1
    model_parallel_submesh: tuple[int, ...] | None = None
    logical_axis_rules: tuple[tuple[str, str | None], ...] | None = None


def logical_axes(boxed_tree: Any) -> Any:
    """The logical ``PartitionSpec`` of every leaf of a tree of boxed variables
    (``nn.LogicallyPartitioned``); plain leaves get ``PartitionSpec()``."""
    return nn.get_partition_spec(boxed_tree)


class Partitioner:
    """Shardings and sharded jit over one (data, model) mesh."""

    def __init__(self, config: PartitionConfig = PartitionConfig(),
                 devices: Sequence[jax.Device] | None = None):
        self.config = config
        self.mesh = create_mesh(config.num_partitions, config.model_parallel_submesh,
                                devices)
        extra = tuple(config.logical_axis_rules or ())
        for rule in extra:
            axes = rule[1] if isinstance(rule, (tuple, list)) and len(rule) == 2 else ()
            axes = axes if isinstance(axes, (tuple, list)) else (axes,)
            if not axes or any(a not in (DATA_AXIS, MODEL_AXIS, None) for a in axes):
                raise UnknownNameError(
                    f"logical axis rule {rule!r} names no mesh axis",
                    where="PartitionConfig.logical_axis_rules",
                    expected=f"(logical name, {DATA_AXIS!r} | {MODEL_AXIS!r} | None) pairs")
        self.rules: tuple[tuple[str, str | None], ...] = extra + tuple(
            r for r in STANDARD_LOGICAL_AXIS_RULES if r[0] not in {n for n, _ in extra})

    # ---------------------------------------------------------------- mesh facts

    @property
    def data_parallel_size(self) -> int:
        return self.mesh.shape[DATA_AXIS]

    @property
    def model_parallel_size(self) -> int:
        return self.mesh.shape[MODEL_AXIS]

    @property
    def data_shard(self) -> tuple[int, int]:
        """``(index, count)`` of this process's shard of the input data: the
        global batch is cut into ``count`` blocks of rows, and this process's
        devices hold block ``index`` (its contiguous range of the mesh's data
        axis). One process: ``(0, 1)``; processes that share data-axis indices
        (a model axis across processes) load the same block."""
        if jax.process_count() == 1:
            return 0, 1
        me = jax.process_index()
        mine = [i for i, row in enumerate(self.mesh.devices)
                if any(d.process_index == me for d in row)]
        size = len(mine)
        if mine != list(range(mine[0], mine[0] + size)) or mine[0] % size \
                or self.data_parallel_size % size:
            raise ConfigError(
                f"process {me} holds data-axis indices {mine} of "
                f"{self.data_parallel_size}", where="the device mesh",
                expected="every process holding one contiguous, equal block")
        return mine[0] // size, self.data_parallel_size // size

    def local_batch_size(self, global_batch_size: int) -> int:
        """Rows of the global batch this process loads; checks divisibility."""
        if global_batch_size % self.data_parallel_size:
            raise ConfigError(
                f"batch size {global_batch_size} is not divisible by the "
                f"data-parallel size {self.data_parallel_size} "
                f"({len(self.mesh.devices.flat)} devices / "
                f"{self.model_parallel_size} model partitions)", where="BATCH_SIZE",
                expected=f"a multiple of {self.data_parallel_size}")
        return global_batch_size // self.data_shard[1]

    # ------------------------------------------------------------ shardings

    def sharding(self, spec: PartitionSpec = PartitionSpec()) -> NamedSharding:
        """A NamedSharding over this mesh (default: replicated)."""
        return NamedSharding(self.mesh, spec)

    def logical_to_sharding(self, logical_specs: Any) -> Any:
        """Logical PartitionSpecs (a tree) -> NamedShardings (same tree)."""
        return nn.logical_to_mesh_sharding(logical_specs, self.mesh, self.rules)

    def params_shardings(self, boxed_params: Any) -> Any:
        """NamedShardings for a tree of boxed (logically partitioned) parameters,
        concrete or abstract (``jax.eval_shape``); the tree is the unboxed one."""
        return self.logical_to_sharding(logical_axes(boxed_params))

    def state_like_params_shardings(self, tree: Any, params: Any,
                                    params_logical: Any) -> Any:
        """Shardings for a tree (e.g. optimizer state) whose leaves mirror the
        parameters: a leaf whose key path ends with a parameter's path gets that
        parameter's axes (minus a dropped axis, for Adafactor's factored row /
        column statistics); anything else (counters, scalars) is replicated."""
        by_path = {}
        for (path, leaf), spec in zip(
                jax.tree_util.tree_flatten_with_path(params)[0],
                jax.tree_util.tree_leaves(params_logical,
                                          is_leaf=lambda x: isinstance(x, PartitionSpec))):
            by_path[_path_key(path)] = (tuple(np.shape(leaf)), spec)

        def one(path, leaf):
            keys = _path_key(path)
            for start in range(len(keys)):
                match = by_path.get(keys[start:])
                if match is not None:
                    return self.logical_to_sharding(
                        _spec_for_shape(match[1], match[0], tuple(np.shape(leaf))))
            return self.sharding()

        return jax.tree_util.tree_map_with_path(one, tree)

    def abstract_params(self, model) -> Any:
        """The model's parameters as ``jax.ShapeDtypeStruct`` leaves carrying
        their shardings on this mesh (``model.abstract_variables()``: no
        allocation). What restoring, placing and compiling ahead of time need."""
        boxed = model.abstract_variables()["params"]
        shardings = self.params_shardings(boxed)
        return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                            nn.unbox(boxed), shardings)

    def place(self, host_tree: Any, abstract: Any, *, what: str = "checkpoint") -> Any:
        """Host arrays -> device arrays laid out like ``abstract`` (shapes,
        dtypes, shardings); a UserError naming every missing, unexpected and
        mis-shaped leaf if the trees differ."""
        want = {jax.tree_util.keystr(p): s
                for p, s in jax.tree_util.tree_flatten_with_path(abstract)[0]}
        have = {jax.tree_util.keystr(p): a
                for p, a in jax.tree_util.tree_flatten_with_path(host_tree)[0]}
        problems = [f"missing {k}" for k in sorted(set(want) - set(have))]
        problems += [f"unexpected {k}" for k in sorted(set(have) - set(want))]
        problems += [f"{k}: shape {tuple(np.shape(have[k]))}, expected {want[k].shape}"
                     for k in sorted(set(want) & set(have))
                     if tuple(np.shape(have[k])) != tuple(want[k].shape)]
        if problems:
            more = f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""
            raise UserError(f"{what} does not fit the model: "
                            + "; ".join(problems[:10]) + more)
        return jax.tree.map(
            lambda a, s: jax.device_put(np.asarray(a, s.dtype), s.sharding), host_tree, abstract)

    def batch_sharding(self) -> NamedSharding:
        """Batch arrays: the leading (batch) axis over ``data``."""
        return self.sharding(PartitionSpec(DATA_AXIS))

    def shard_batch(self, batch: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
        """This process's rows of a batch -> global arrays sharded over ``data``."""
        sharding = self.batch_sharding()
        count = self.data_shard[1]
        out = {}
        for k, v in batch.items():
            v = np.asarray(v)
            out[k] = jax.make_array_from_process_local_data(
                sharding, v, (v.shape[0] * count,) + v.shape[1:])
        return out

    # ------------------------------------------------------------ jit

    def jit(self, fn: Callable, *, in_shardings: Any, out_shardings: Any,
            donate_argnums: int | Sequence[int] = (),
            static_argnums: int | Sequence[int] = ()) -> Callable:
        """``jax.jit`` with explicit shardings; every call (and so the tracing)
        runs with this mesh and these rules active, so the network's
        ``with_logical_constraint`` annotations take effect."""
        jitted = jax.jit(fn, in_shardings=in_shardings, out_shardings=out_shardings,
                         donate_argnums=donate_argnums, static_argnums=static_argnums)

        def call(*args, **kwargs):
            with self.context():
                return jitted(*args, **kwargs)

        call.lower = lambda *a, **k: _in_context(self, jitted.lower, *a, **k)
        return call

    def context(self):
        """Context manager: this mesh and these logical axis rules."""
        return _Context(self.mesh, self.rules)


class _Context:
    """``jax.set_mesh(mesh)`` + ``nn.logical_axis_rules(rules)`` as one context."""

    def __init__(self, mesh: Mesh, rules: LogicalRules):
        self._mesh_ctx = jax.set_mesh(mesh)
        self._rules_ctx = nn.logical_axis_rules(rules)

    def __enter__(self):
        self._mesh_ctx.__enter__()
        self._rules_ctx.__enter__()
        return self

    def __exit__(self, *exc):
        self._rules_ctx.__exit__(*exc)
        return self._mesh_ctx.__exit__(*exc)


def _in_context(partitioner: Partitioner, fn: Callable, *args, **kwargs):
    with partitioner.context():
        return fn(*args, **kwargs)


def _path_key(path) -> tuple[str, ...]:
    """A key path as a tuple of plain strings (dict keys, attribute names)."""
    out = []
    for entry in path:
        for attr in ("key", "name", "idx"):
            if hasattr(entry, attr):
                out.append(str(getattr(entry, attr)))
                break
        else:
            out.append(str(entry))
    return tuple(out)


def _spec_for_shape(spec: PartitionSpec, param_shape: tuple[int, ...],
                    shape: tuple[int, ...]) -> PartitionSpec:
    """The parameter's logical spec adapted to a state leaf's shape: the same
    shape keeps it; one dimension fewer (a factored second-moment row or column)
    drops the matching axis; anything else is replicated."""
    names = tuple(spec) + (None,) * (len(param_shape) - len(spec))
    if shape == param_shape:
        return PartitionSpec(*names)
    if len(shape) == len(param_shape) - 1:
        for i in range(len(param_shape)):
            if param_shape[:i] + param_shape[i + 1:] == shape:
                return PartitionSpec(*(names[:i] + names[i + 1:]))
    return PartitionSpec()
