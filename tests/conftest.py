"""Test-session settings shared by every test (and inherited by the processes
tests start)."""

import os

# JAX's persistent compilation cache (runtime.enable_compilation_cache) stays off
# in tests: concurrent test processes would share its files, and a test must not
# depend on what an earlier one compiled. tests/test_compilation_cache.py turns it on
# in a directory of its own.
os.environ["EXPLISTOPS_COMPILATION_CACHE"] = "off"
