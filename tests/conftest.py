"""Test-session settings shared by every test (and inherited by the processes
tests start)."""

import os
import shutil
import tempfile

# JAX's persistent compilation cache (runtime.enable_compilation_cache, on by
# default for users) in one directory for the whole session: the first process of
# the session to set it (pytest, or xdist's controller) makes it, and its workers
# and every process a test starts inherit it, so a program that one test compiled
# is loaded by the next test that compiles the same program (JAX's key covers the
# program, its shapes, devices and compile options, and JAX's version). The
# session's first compilations fill it and it is removed at the end, so no test
# finds anything from another session. The runtime's size limit turns on JAX's
# file lock, which keeps processes from reading a half-written entry; it needs
# the filelock package, without which the cache stays off here.
# tests/test_compilation_cache.py points the cache at directories of its own.
_SESSION_CACHE_ENV = "EXPLISTOPS_TEST_COMPILATION_CACHE"
_OWNED_CACHE = None
if _SESSION_CACHE_ENV not in os.environ:
    try:
        import filelock  # noqa: F401
    except ImportError:
        os.environ[_SESSION_CACHE_ENV] = "off"
    else:
        _OWNED_CACHE = tempfile.mkdtemp(prefix="explistops-test-jax-cache-")
        os.environ[_SESSION_CACHE_ENV] = _OWNED_CACHE
os.environ["EXPLISTOPS_COMPILATION_CACHE"] = os.environ[_SESSION_CACHE_ENV]


def pytest_sessionfinish(session, exitstatus):
    if _OWNED_CACHE is not None:
        shutil.rmtree(_OWNED_CACHE, ignore_errors=True)
