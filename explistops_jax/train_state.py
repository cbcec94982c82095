"""The state of a training run and its checkpoints (orbax-checkpoint).

A :class:`TrainState` is everything that changes during training: the step, the
parameters, the optimizer state and the base random key (each step's dropout key
is ``fold_in(rng, step)``, so the key never has to advance). Together with the
input position (``input_pipeline.Position``) it is all a resumed run needs to
continue the same loss curve.

:class:`RunCheckpoints` saves them with an Orbax ``CheckpointManager`` in T5X's
layout, so T5X tools and ``checkpoints.load_any`` read the parameters::

    MODEL_DIR/checkpoint_<step>/
        state/    Orbax PyTree (OCDBT): {"target": params,
                                         "state": {"step", "opt_state", "rng"}}
        data/     JSON: the input position {"epoch", "batch"}
        run/      JSON: the run's description (model config, task, lengths, ...)

Saving is asynchronous (training continues while the files are written) and
atomic: Orbax writes into a temporary directory and renames it when complete,
so a run killed mid-save leaves the previous checkpoint intact and the partial
one is ignored (and cleaned up) on restart. The newest ``keep`` checkpoints are
kept.

The run directory is an ``etils.epath`` path (``rundir.run_path``), local or a
``gs://bucket/run`` URL, and is handed to Orbax as such: Orbax writes ``gs://``
through TensorStore's GCS driver and, with no rename there, marks a finished
checkpoint with a commit file instead of renaming it into place. Other URL
schemes are refused (Orbax would write their arrays to a local path).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from typing import Any, Iterator, Mapping

import flax.struct
import jax
import numpy as np
import orbax.checkpoint as ocp

from explistops_jax import rundir
from explistops_jax.errors import UserError, WriteError, write_failure
from explistops_jax.rundir import CHECKPOINT_ITEMS, CHECKPOINT_PREFIX, RunDir, find_run_checkpoint

__all__ = ["TrainState", "CheckpointConfig", "RunCheckpoints", "checkpoint_steps",
           "load_model_and_params"]

@flax.struct.dataclass
class TrainState:
    """``step`` (int32 scalar), ``params``, ``opt_state``, ``rng`` (raw uint32 key)."""

    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array

    def to_tree(self) -> dict:
        """The saved form (T5X's ``target`` / ``state`` split)."""
        return {"target": self.params,
                "state": {"step": self.step, "opt_state": self.opt_state, "rng": self.rng}}

    @classmethod
    def from_tree(cls, tree: Mapping) -> "TrainState":
        state = tree["state"]
        return cls(step=state["step"], params=tree["target"],
                   opt_state=state["opt_state"], rng=state["rng"])


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    """When and how to checkpoint (gin: ``CheckpointConfig.*``).

    Attributes:
      period: save every ``period`` steps (and always at the last step); None or
        0 saves only at the end.
      keep: how many of the newest checkpoints to keep (None = all).
      async_save: write in the background while training goes on.
    """

    period: int | None = 1000
    keep: int | None = 3
    async_save: bool = True


def checkpoint_steps(model_dir: rundir.PathLike) -> list[int]:
    """Steps of the finished checkpoints in ``model_dir``, ascending
    (``rundir.RunDir.checkpoint_steps``)."""
    return RunDir(model_dir).checkpoint_steps()


class _ReadOnlyNotice(logging.Filter):
    """Drops Orbax's "Given directory is read only" warning: restoring for
    reading is what the evaluator asked for, not a problem to report."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Given directory is read only")


@contextlib.contextmanager
def _quiet_read_only(read_only: bool):
    """While a read-only CheckpointManager is made, without that one warning."""
    if not read_only:
        yield
        return
    logger, notice = logging.getLogger("absl"), _ReadOnlyNotice()
    logger.addFilter(notice)
    try:
        yield
    finally:
        logger.removeFilter(notice)


class RunCheckpoints:
    """Save and restore ``(TrainState, position, run description)``."""

    def __init__(self, model_dir: rundir.PathLike,
                 config: CheckpointConfig = CheckpointConfig(), *, read_only: bool = False):
        self.config = config
        self.directory = rundir.run_path(model_dir)  # epath: local (absolute) or a URL
        if not rundir.is_local(self.directory) and not str(self.directory).startswith("gs://"):
            # Orbax writes arrays with TensorStore's gcs driver for gs:// and its
            # local file driver for anything else: s3://x would land in ./s3:/x
            raise UserError(f"cannot keep checkpoints in {self.directory}",
                            expected="a local directory or a gs:// URL (what Orbax "
                                     "writes arrays to)")
        options = ocp.CheckpointManagerOptions(
            max_to_keep=None if read_only else config.keep, step_prefix=CHECKPOINT_PREFIX,
            save_interval_steps=0 if read_only else 1, create=not read_only,
            cleanup_tmp_directories=not read_only, read_only=read_only,
            enable_async_checkpointing=config.async_save)
        with _quiet_read_only(read_only):
            self._manager = ocp.CheckpointManager(
                self.directory, options=options, item_names=CHECKPOINT_ITEMS)
        self._started: set[int] = set()  # saves begun by this process
        self._failed = False  # a write failed and was reported: do not report it again

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        """Steps of the checkpoints in the directory."""
        return list(self._manager.all_steps())

    def has(self, step: int) -> bool:
        """Whether checkpoint ``step`` exists or is being written."""
        return step in self._started or step in self._manager.all_steps()

    def is_due(self, step: int) -> bool:
        """Whether ``step`` is a periodic save step."""
        period = self.config.period
        return bool(period) and step % period == 0

    def save(self, state: TrainState, position: Mapping | None = None,
             run: Mapping | None = None) -> None:
        """Starts saving ``state`` as checkpoint ``state.step`` (returns before
        the files are written when async; call :meth:`wait` to be sure)."""
        step = int(jax.device_get(state.step))
        if self.has(step):
            return
        self._started.add(step)
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state.to_tree()),
            data=ocp.args.JsonSave(dict(position or {})),
            run=ocp.args.JsonSave(dict(run or {})))
        with self.writing():  # an async save fails later, in wait or close
            self._manager.save(step, args=args, force=True)
        logging.info("saving checkpoint %d in %s", step, self.directory)

    def restore(self, abstract_state: TrainState, step: int | None = None
                ) -> tuple[TrainState, dict]:
        """The state (laid out like ``abstract_state``: a tree of
        ``jax.ShapeDtypeStruct`` with shardings) and input position of checkpoint
        ``step`` (default: the latest)."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state.to_tree()),
            data=ocp.args.JsonRestore()))
        return TrainState.from_tree(restored["state"]), dict(restored["data"] or {})

    def run_info(self, step: int | None = None) -> dict:
        """The run description saved with checkpoint ``step`` (default latest)."""
        step = self.latest_step() if step is None else step
        restored = self._manager.restore(step, args=ocp.args.Composite(
            run=ocp.args.JsonRestore()))
        return dict(restored["run"] or {})

    def restore_params(self, abstract_params: Any, step: int | None = None) -> Any:
        """Only the parameters (``target``) of checkpoint ``step``."""
        step = self.latest_step() if step is None else step
        item = {"target": abstract_params}
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.PyTreeRestore(
                item=item,
                restore_args=jax.tree.map(_restore_args, item),
                partial_restore=True)))
        return restored["state"]["target"]

    def wait(self) -> None:
        """Blocks until every started save is on disk."""
        with self.writing():
            self._manager.wait_until_finished()

    def close(self) -> None:
        with self.writing():
            self._manager.wait_until_finished()
            self._manager.close()

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """Turns a failed write of the run directory (a full disk, a directory
        that turned read-only or vanished; Orbax reports TensorStore's as
        ValueErrors) into one :class:`WriteError` naming the last complete
        checkpoint, from which rerunning the same command resumes. Reported once:
        after it, the cleanup's own failures of the same write are dropped."""
        try:
            yield
        except UserError:
            raise  # the user's input (a missing checkpoint to start from) is not a write
        except (OSError, ValueError, RuntimeError) as err:
            reason = write_failure(err)
            if reason is None:
                raise
            if self._failed:
                return
            self._failed = True
            raise WriteError(self.failure_message(reason)) from err

    def failure_message(self, reason: str) -> str:
        """What failed, where, and the checkpoint a rerun resumes from."""
        done = complete_checkpoints(self.directory)
        resume = (f"the last complete checkpoint is {rundir.checkpoint_name(done[-1])}: "
                  "rerunning the same command resumes from it" if done else
                  "no checkpoint is complete: rerunning the same command starts again")
        return f"writing run directory {self.directory} failed: {reason}; {resume}"


def complete_checkpoints(directory: rundir.PathLike) -> list[int]:
    """The steps of the finished checkpoints in ``directory`` (Orbax's
    temporaries of a save in progress or broken off are not), ascending."""
    try:
        names = [p.name for p in rundir.run_path(directory).iterdir()]
    except OSError:
        return []
    return sorted(step for step in map(rundir.parse_checkpoint_name, names)
                  if step is not None)


def _restore_args(leaf: Any) -> ocp.RestoreArgs:
    sharding = getattr(leaf, "sharding", None)
    if sharding is not None:
        return ocp.ArrayRestoreArgs(sharding=sharding, global_shape=leaf.shape,
                                    dtype=leaf.dtype)
    return ocp.RestoreArgs(restore_type=np.ndarray)


# ----------------------------------------------------------------- lookup

def load_model_and_params(checkpoint: rundir.PathLike, *, step: int | None = None,
                          partitioner=None):
    """``(model, params, step, run_info)`` from a run directory of this trainer,
    one of its ``checkpoint_N`` directories, or any checkpoint
    ``checkpoints.load_any`` reads (Hugging Face, T5X, explistops params).

    Parameters are placed on the mesh with the model's logical-axis shardings.
    A run directory may be a URL (``gs://bucket/run``); the other formats are
    read from local paths.
    """
    from explistops_jax import checkpoints as interop
    from explistops_jax import partitioning
    from explistops_jax.model import EncoderDecoderModel

    partitioner = partitioner or partitioning.Partitioner()
    if interop.is_hub_id(checkpoint):  # owner/name or hf://owner/name: a local snapshot
        checkpoint = interop.resolve(checkpoint)
    path = rundir.run_path(checkpoint)
    if not path.exists():
        raise UserError("no such checkpoint", where=str(path),
                        expected="a run directory, a checkpoint_N directory or a "
                                 "Hugging Face / T5X / explistops checkpoint")
    found = find_run_checkpoint(path)
    if found is not None:
        run_dir = found[0].path
        run_step = found[1] if found[1] is not None else step
        steps = RunDir(run_dir).checkpoint_steps()
        run_step = run_step if run_step is not None else steps[-1]
        if run_step not in steps:
            raise UserError(f"no checkpoint at step {run_step}", where=str(run_dir),
                            expected="one of " + ", ".join(map(str, steps)))
        checkpoints = RunCheckpoints(run_dir, read_only=True)
        info = checkpoints.run_info(run_step)
        config = interop.common.config_from_dict(info["model_config"], source=str(run_dir))
        model = EncoderDecoderModel(config)
        abstract = partitioner.abstract_params(model)
        params = checkpoints.restore_params(abstract, run_step)
        return model, params, run_step, info
    config, host_params = interop.load_any(path)
    model = EncoderDecoderModel(config)
    params = partitioner.place(host_params, partitioner.abstract_params(model))
    return model, params, 0, {"model_config": interop.common.config_to_dict(config)}

