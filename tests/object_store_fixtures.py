"""An offline object store for the tests: ``memory://bucket/...`` paths.

``etils.epath`` dispatches on a URL's scheme (``epath.register_path_cls``);
this module registers ``memory://`` with a path class whose files live in
fsspec's in-process memory filesystem, and which behaves as an object store
(gs://, s3://) does where the run directory's code must care:

- an object is written whole: every ``open(..., "w"/"wb")`` is one upload
  (counted in :data:`UPLOADS`, by object);
- there is no append (``open(..., "a")`` raises) and no rename or replace
  (raise), so code that relies on either fails here as it would on GCS.

So a run directory given as ``memory://bucket/run`` exercises the same code as
``gs://bucket/run`` (the scheme decides: anything with ``scheme://`` is an object
store to :mod:`explistops_jax.rundir`), with no network.
"""

from __future__ import annotations

import collections
import os
import sys
import uuid

import fsspec
from etils import epath
from etils.epath import backend as epath_backend
from etils.epath import gpath

SCHEME = "memory"
PREFIX = f"{SCHEME}://"

UPLOADS: collections.Counter = collections.Counter()
"""How many times each object (its ``memory://`` URL) was written."""


class _ObjectStoreBackend(epath_backend._FileSystemSpecBackend):  # epath's fsspec backend
    """fsspec's memory filesystem with an object store's limits."""

    def fs(self, path):
        return fsspec.filesystem(SCHEME)

    def open(self, path, mode):
        if "a" in mode or "+" in mode:
            raise OSError(f"an object store cannot append to {path} (mode {mode!r})")
        if "w" in mode:
            UPLOADS[os.fspath(path)] += 1
        return super().open(path, mode)

    def rename(self, path, dst):
        raise OSError(f"an object store has no rename ({path} -> {dst})")

    def replace(self, path, dst):
        raise OSError(f"an object store has no rename ({path} -> {dst})")


_BACKEND = _ObjectStoreBackend()


def _parts(parts):
    """``memory://a/b`` -> ``/memory/a/b`` (epath's own trick for gs://)."""
    full = "/".join(os.fspath(p) for p in parts)
    if full.startswith(PREFIX):
        return (f"/{SCHEME}/" + full[len(PREFIX):],)
    return parts


@epath.register_path_cls(PREFIX)
class MemoryPath(gpath.PosixGPath):
    """``epath.Path("memory://bucket/run")``."""

    if sys.version_info < (3, 12):
        def __new__(cls, *parts):
            return super().__new__(cls, *_parts(parts))
    else:
        def __init__(self, *parts):
            super().__init__(*_parts(parts))

    @property
    def _uri_scheme(self):
        if len(self.parts) >= 2 and self.parts[:2] == ("/", SCHEME):
            return SCHEME
        return None

    @property
    def _backend(self):
        return _BACKEND if self._uri_scheme == SCHEME else super()._backend


def new_bucket() -> str:
    """A fresh ``memory://<unique>`` root (the memory filesystem is global)."""
    return f"{PREFIX}bucket-{uuid.uuid4().hex[:10]}"


def local_files() -> set[str]:
    """What exists in the current directory (for "nothing leaked to disk")."""
    return set(os.listdir("."))
