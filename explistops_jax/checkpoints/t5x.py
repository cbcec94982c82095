"""T5X checkpoints <-> our (config, params).

On-disk layouts read here (checked against google-research/t5x ``t5x/checkpoints.py``
and ``t5x/checkpoint_utils.py``, head of 2026-04):

- Orbax (what T5X writes today): ``MODEL_DIR/checkpoint_N/`` is an Orbax
  CheckpointManager step (``_CHECKPOINT_METADATA``) whose item ``state/`` is an
  OCDBT PyTree checkpoint (``_METADATA``, ``manifest.ocdbt``, ``ocdbt.process_*``)
  of ``train_state.state_dict()``:
  ``{"target": params, "state": {"step": ..., "param_states": ...}}``
  (plus ``flax_mutables`` for some models). Only ``target`` is read.
- Legacy (T5X's own ``Checkpointer``): ``checkpoint_N/checkpoint`` is a msgpack
  file ``{"version": 3, "optimizer": {"target": ..., "state": ...}}`` (version 0
  files have no ``optimizer`` level) whose leaves are either arrays inline or a
  TensorStore spec ``{"driver": "zarr", "kvstore": {"driver": "file",
  "path": "target.encoder.layers_0..."}, "metadata": {...}}``, the path being
  relative to ``checkpoint_N/`` (a zarr array in that subdirectory).

Written: the Orbax layout, through the same CheckpointManager options T5X uses
(step prefix ``checkpoint``, item ``state``, OCDBT), with ``state`` holding
``target`` and ``state/step`` only. T5X restores it as an initial checkpoint
when told to build the missing optimizer state from scratch
(``utils.RestoreCheckpointConfig.fallback_to_scratch = True``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from explistops_jax import rundir
from explistops_jax.errors import UserError
from explistops_jax.checkpoints import common

_ORBAX_METADATA = "_METADATA"
_LEGACY_FILE = "checkpoint"
_STATE_ITEM = "state"


# ----------------------------------------------------------------- locating


def locate(path: str | Path) -> tuple[str, Path]:
    """("orbax", PyTree dir) or ("msgpack", checkpoint file) for ``path``, which may
    be a model dir (latest ``checkpoint_N`` wins), a ``checkpoint_N`` dir, its
    ``state`` dir, or the legacy msgpack file itself."""
    p = Path(path).expanduser()
    if p.is_file():
        if (p.parent / _ORBAX_METADATA).is_file():
            return "orbax", p.parent
        return "msgpack", p
    if not p.is_dir():
        raise UserError("no such file or directory", where=str(p), expected="a T5X checkpoint directory")
    if (p / _ORBAX_METADATA).is_file():
        return "orbax", p
    if (p / _LEGACY_FILE).is_file():
        return "msgpack", p / _LEGACY_FILE
    if (p / _STATE_ITEM).is_dir():  # Orbax item dir (older Orbax lacks _METADATA)
        return "orbax", p / _STATE_ITEM
    steps = sorted(
        (step, child) for child in p.iterdir()
        if (step := rundir.parse_checkpoint_name(child.name)) is not None and child.is_dir()
    )
    if steps:
        return locate(steps[-1][1])
    raise UserError(
        "not a T5X checkpoint",
        where=str(p),
        expected="checkpoint_N/ holding state/_METADATA (Orbax) or a 'checkpoint' msgpack file",
    )


def is_t5x_checkpoint(path: Path) -> bool:
    try:
        locate(path)
        return True
    except UserError:
        return False


# ----------------------------------------------------------------- reading


def read_orbax_tree(directory: Path, key: str | None = None) -> dict[str, np.ndarray]:
    """Flat numpy dict of an Orbax PyTree checkpoint (only subtree ``key`` if given).

    Arrays come back as host numpy arrays whatever devices wrote them, so a
    checkpoint saved on a TPU pod restores on a laptop.
    """
    import jax
    import orbax.checkpoint as ocp
    from etils import epath

    directory = Path(directory).expanduser().absolute()  # orbax wants absolute paths
    handler = ocp.PyTreeCheckpointHandler()
    try:
        metadata = handler.metadata(epath.Path(directory))
    except Exception as e:  # orbax raises assorted types for unreadable dirs
        raise UserError(f"cannot read Orbax checkpoint metadata: {e}", where=str(directory)) from None
    tree = getattr(metadata, "tree", metadata)
    if key is not None:
        if not isinstance(tree, Mapping) or key not in tree:
            found = ", ".join(sorted(tree)) if isinstance(tree, Mapping) else type(tree).__name__
            raise UserError(f"no {key!r} in the checkpoint (found: {found})", where=str(directory))
        tree = {key: tree[key]}
    item = jax.tree.map(lambda m: np.zeros((), np.float32), tree)  # structure only
    restore_args = jax.tree.map(lambda m: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    try:
        try:
            args = ocp.args.PyTreeRestore(item=item, restore_args=restore_args, partial_restore=True)
        except TypeError:  # orbax without partial_restore: read everything
            args = ocp.args.PyTreeRestore()
        restored = handler.restore(epath.Path(directory), args=args)
    except Exception as e:
        raise UserError(f"cannot restore Orbax checkpoint: {e}", where=str(directory)) from None
    flat = common.flatten(restored[key] if key is not None else restored)
    return {k: np.asarray(v) for k, v in flat.items()}


def _is_ts_spec(x: Any) -> bool:
    return isinstance(x, Mapping) and {"driver", "kvstore"} <= set(x)


def _read_ts_spec(spec: Mapping[str, Any], base: Path, name: str) -> np.ndarray:
    """Reads one TensorStore-backed leaf of a legacy checkpoint; relative paths
    are resolved against the checkpoint directory, as T5X does."""
    import copy

    import tensorstore as ts

    spec = copy.deepcopy(dict(spec))
    metadata = dict(spec.get("metadata", {}))
    for k in ("chunks", "compressor"):  # not needed to open; T5X drops them too
        metadata.pop(k, None)
    spec["metadata"] = metadata
    kvstore = spec["kvstore"]
    if isinstance(kvstore, Mapping) and kvstore.get("driver") not in (None, "file"):
        raise UserError(
            f"parameter {name} is stored with kvstore driver {kvstore.get('driver')!r}",
            where=str(base),
            expected="a local copy of the checkpoint (kvstore 'file')",
        )
    if isinstance(kvstore, Mapping) and "path" in kvstore:  # tensorstore >= 0.1.14
        spec["kvstore"] = dict(kvstore, path=os.path.join(base, kvstore["path"]))
    elif "path" in spec:  # older specs keep the path at the top level
        spec["path"] = os.path.join(base, spec["path"])
    try:
        return np.asarray(ts.open(spec, open=True).result().read().result())
    except Exception as e:  # tensorstore raises ValueError for missing/corrupt arrays
        raise UserError(f"cannot read parameter {name}: {e}", where=str(base)) from None


def read_msgpack_target(file: Path) -> dict[str, np.ndarray]:
    """Flat numpy dict of ``target`` in a legacy T5X msgpack checkpoint."""
    from flax import serialization

    try:
        contents = serialization.msgpack_restore(file.read_bytes())
    except Exception as e:
        raise UserError(f"not a T5X msgpack checkpoint: {e}", where=str(file)) from None
    if not isinstance(contents, Mapping):
        raise UserError("not a T5X msgpack checkpoint", where=str(file))
    state = contents.get("optimizer", contents)  # version >= 1 wraps it in "optimizer"
    if not isinstance(state, Mapping) or "target" not in state:
        raise UserError(f"no 'target' in the checkpoint (found: {', '.join(sorted(state))})", where=str(file))
    flat: dict[str, np.ndarray] = {}
    for path, leaf in _flatten_specs(state["target"]).items():
        flat[path] = _read_ts_spec(leaf, file.parent, path) if _is_ts_spec(leaf) else np.asarray(leaf)
    return flat


def _flatten_specs(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Like common.flatten, but a TensorStore spec dict is a leaf."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, Mapping) and not _is_ts_spec(v):
            out.update(_flatten_specs(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = v
    return out


def read_t5x_params(path: str | Path) -> tuple[dict[str, np.ndarray], Path]:
    """(flat float32 params, the location read) of a T5X checkpoint."""
    kind, where = locate(path)
    flat = read_orbax_tree(where, "target") if kind == "orbax" else read_msgpack_target(where)
    return common.to_numpy(flat), where


def import_t5x(path: str | Path, config=None):
    """(T5Config, params) from a T5X checkpoint (Orbax or legacy msgpack layout).

    Without ``config``, it is inferred from the parameter shapes (see
    ``common.infer_config``); either way every parameter is checked.
    """
    flat, where = read_t5x_params(path)
    if config is None:
        config = common.infer_config(flat, source=str(where))
    common.check_params(flat, config, source=str(where))
    return config, common.unflatten(flat)


# ----------------------------------------------------------------- writing


def export_t5x(config, params: Mapping[str, Any], out_dir: str | Path, *, step: int = 0) -> Path:
    """Writes ``out_dir/checkpoint_{step}/state/`` in T5X's Orbax layout and returns
    the ``checkpoint_{step}`` path (what INITIAL_CHECKPOINT_PATH points at).
    ``out_dir`` (local, or a URL such as ``gs://bucket/t5x``: Orbax's own atomic
    save) is created whole or not at all."""
    import orbax.checkpoint as ocp

    flat = common.to_numpy(common.flatten(params))
    common.check_params(flat, config, source="params")
    tree = {"target": common.unflatten(flat), "state": {"step": np.asarray(step, np.int32)}}
    with common.atomic_directory(out_dir) as tmp:
        manager = ocp.CheckpointManager(
            tmp,
            item_handlers={_STATE_ITEM: ocp.PyTreeCheckpointHandler(use_ocdbt=True)},
            options=ocp.CheckpointManagerOptions(step_prefix=rundir.CHECKPOINT_PREFIX, create=True),
        )
        try:
            manager.save(step, args=ocp.args.Composite(**{_STATE_ITEM: ocp.args.PyTreeSave(tree)}), force=True)
            manager.wait_until_finished()
        finally:
            manager.close()
    return rundir.RunDir(out_dir).checkpoint(step)
