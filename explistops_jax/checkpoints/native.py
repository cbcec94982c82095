"""This project's own params checkpoint: a directory with ``config.json`` (the
T5Config's fields) and ``params/`` (an Orbax PyTree checkpoint of the parameter
tree). Full training state (optimizer, step, data position) is the trainer's
business (orbax CheckpointManager); this is the portable "weights + shape" form.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from explistops_jax.errors import UserError
from explistops_jax import rundir
from explistops_jax.checkpoints import common

CONFIG_FILE = "config.json"
PARAMS_DIR = "params"


def is_params_directory(path: Path) -> bool:
    return (path / CONFIG_FILE).is_file() and (path / PARAMS_DIR).is_dir()


def save_params(directory: str | Path, config, params: Mapping[str, Any]):
    """Writes ``directory`` (which must not exist yet; local, or a URL such as
    ``gs://bucket/params``) whole or not at all; returns its path."""
    import orbax.checkpoint as ocp

    flat = common.to_numpy(common.flatten(params))
    common.check_params(flat, config, source="params")
    with common.atomic_directory(directory) as tmp:
        rundir.write_json(tmp / CONFIG_FILE, common.config_to_dict(config), sort_keys=True)
        checkpointer = ocp.PyTreeCheckpointer()
        checkpointer.save(tmp / PARAMS_DIR, common.unflatten(flat))
    return Path(directory) if rundir.is_local(directory) else rundir.run_path(directory)


def load_params(directory: str | Path):
    """(T5Config, params) saved by :func:`save_params`; params are numpy float32."""
    from explistops_jax.checkpoints import t5x

    d = Path(directory).expanduser()
    if not is_params_directory(d):
        raise UserError(
            "not an explistops params checkpoint",
            where=str(d),
            expected=f"a directory with {CONFIG_FILE} and {PARAMS_DIR}/",
        )
    config = common.config_from_dict(rundir.read_json(d / CONFIG_FILE), source=str(d / CONFIG_FILE))
    flat = common.to_numpy(t5x.read_orbax_tree(d / PARAMS_DIR))
    common.check_params(flat, config, source=str(d))
    return config, common.unflatten(flat)
