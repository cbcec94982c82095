"""Checkpoints by Hugging Face Hub model id: ``google-t5/t5-small``, or
``hf://google/t5-v1_1-base`` (``@revision`` may follow), resolved to a local
snapshot directory through ``huggingface_hub`` (downloaded, or found in the
local cache; ``HF_HUB_OFFLINE=1`` only looks in the cache).

Only the files a T5 import needs are fetched: ``config.json``, the weights
(``model.safetensors`` or ``pytorch_model.bin``) and T5's SentencePiece model
(``spiece.model``), which the ``_sp`` tasks use when no other one is given.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from explistops_jax.errors import UserError

__all__ = ["HUB_PREFIX", "HUB_FILES", "is_hub_id", "resolve"]

HUB_PREFIX = "hf://"
HUB_FILES = ["config.json", "model.safetensors", "pytorch_model.bin", "spiece.model"]
# owner/name[@revision]: the Hub's repository id characters.
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*(@[\w./-]+)?$")


def is_hub_id(path: str | os.PathLike) -> bool:
    """True for ``hf://...``, and for ``owner/name`` that is not a local path."""
    text = str(path)
    if text.startswith(HUB_PREFIX):
        return True
    return bool(_REPO_ID.match(text)) and not Path(text).expanduser().exists()


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _cache_dir() -> str:
    from huggingface_hub import constants

    return os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE


def resolve(path: str | os.PathLike) -> Path:
    """A local directory for ``path``: itself when it is not a Hub id, else the
    snapshot of that model (downloaded if needed and allowed)."""
    if not is_hub_id(path):
        return Path(path).expanduser()
    text = str(path).removeprefix(HUB_PREFIX)
    repo_id, _, revision = text.partition("@")
    if not _REPO_ID.match(repo_id):
        raise UserError(f"not a Hub model id: {text!r}", where=str(path),
                        expected="hf://owner/name[@revision]")
    try:
        from huggingface_hub import errors, snapshot_download
    except ImportError:  # pragma: no cover - a dependency
        raise UserError(f"{repo_id!r} looks like a Hub model id but huggingface_hub is not "
                        "installed", expected="pip install huggingface_hub") from None
    cache, offline = _cache_dir(), _offline()
    try:
        local = snapshot_download(repo_id, revision=revision or None, cache_dir=cache,
                                  allow_patterns=HUB_FILES, local_files_only=offline)
    except (errors.LocalEntryNotFoundError, errors.RepositoryNotFoundError,
            errors.RevisionNotFoundError, errors.HfHubHTTPError, errors.HFValidationError,
            OSError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        local = "" if str(path).startswith(HUB_PREFIX) else \
            f" (no local path {str(path)!r} exists either)"
        raise UserError(
            f"cannot get Hub model {repo_id!r}{'@' + revision if revision else ''}{local}: "
            f"{reason}",
            where=f"cache {cache}, HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', '') or 'unset'}",
            expected="a model id the Hub has (network), or one already in that cache") from None
    return Path(local)
