"""``python tests/multihost_worker.py DELAY_S <explistops train arguments>``:
``explistops train`` with every batch delayed by DELAY_S seconds, so that a test
can kill one process of a multi-process run between two steps."""

from __future__ import annotations

import sys

from explistops_jax import cli
from slow_batches import slow_batches

if __name__ == "__main__":
    slow_batches(float(sys.argv[1]))
    sys.exit(cli.main(["train", *sys.argv[2:]]))
