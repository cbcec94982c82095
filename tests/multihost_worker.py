"""``python tests/multihost_worker.py DELAY_S <explistops train arguments>``:
``explistops train`` with every batch delayed by DELAY_S seconds, so that a test
can kill one process of a multi-process run between two steps."""

from __future__ import annotations

import sys
import time

from explistops_jax import cli, input_pipeline

if __name__ == "__main__":
    delay = float(sys.argv[1])
    iterate = input_pipeline.BatchStream.iterate

    def slow_iterate(self, start=input_pipeline.Position()):
        for item in iterate(self, start):
            time.sleep(delay)
            yield item

    input_pipeline.BatchStream.iterate = slow_iterate
    sys.exit(cli.main(["train", *sys.argv[2:]]))
