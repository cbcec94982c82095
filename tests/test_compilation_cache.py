"""The persistent compilation cache: where it lives, how it is turned off, and
that a second process loads the first one's program instead of compiling it."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from explistops_jax import runtime

ROOT = Path(__file__).resolve().parent.parent

_PROGRAM = textwrap.dedent("""
    import time
    from explistops_jax import runtime
    runtime.setup()
    import jax, jax.numpy as jnp
    from jax._src import monitoring

    hits = []
    monitoring.register_event_listener(
        lambda name, **kw: hits.append(name) if name.endswith("cache_hits") else None)

    @jax.jit
    def f(x):  # enough work that XLA takes a moment to compile it
        for i in range(60):
            x = jnp.sin(x @ x.T + i) / (1 + jnp.cos(x))
        return x.sum()

    f(jnp.ones((16, 16))).block_until_ready()
    print("HITS", len(hits), jax.config.jax_compilation_cache_max_size)
""")


def _run(env: dict, max_size: int = runtime.COMPILATION_CACHE_MAX_BYTES) -> int:
    done = subprocess.run([sys.executable, "-c", _PROGRAM], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    hits, got_max_size = map(int, done.stdout.split("HITS")[1].split())
    assert got_max_size == max_size
    return hits


def test_second_process_loads_the_compiled_program(tmp_path):
    cache = tmp_path / "cache"
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT),
           runtime.COMPILATION_CACHE_ENV: str(cache)}
    # the threshold is 0.5 s of compile time: make sure this program is written
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    assert _run(env) == 0
    entries = sorted(p.name for p in cache.iterdir())
    assert any(name.startswith("jit_f-") for name in entries), entries
    # bounded (JAX evicts the least recently used), hence locked for processes
    # that share the folder
    assert ".lockfile" in entries
    assert _run(env) >= 1  # loaded, not compiled
    assert sorted(p.name for p in cache.iterdir()) == entries
    # JAX's own variable sets another bound
    assert _run({**env, "JAX_COMPILATION_CACHE_MAX_SIZE": "123456789"}, 123456789) >= 1


def test_cache_directory_default_and_off(monkeypatch, tmp_path):
    monkeypatch.delenv(runtime.COMPILATION_CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert runtime.compilation_cache_dir() == str(tmp_path / "explistops" / "jax")
    for off in ("off", "0", ""):
        monkeypatch.setenv(runtime.COMPILATION_CACHE_ENV, off)
        assert runtime.compilation_cache_dir() is None
    monkeypatch.setenv(runtime.COMPILATION_CACHE_ENV, str(tmp_path / "mine"))
    assert runtime.compilation_cache_dir() == str(tmp_path / "mine")
