"""A test helper for the kill-and-resume tests: every batch of this process
takes longer, so that a test can kill a training process between two
checkpoints. Imports nothing heavy (the multi-process worker uses it)."""

from __future__ import annotations

import time


def slow_batches(delay: float) -> None:
    """Makes every batch of this process take ``delay`` seconds more (so that a
    test can kill a training process between two checkpoints)."""
    from explistops_jax import input_pipeline

    iterate = input_pipeline.BatchStream.iterate

    def slow_iterate(self, start=input_pipeline.Position()):
        for item in iterate(self, start):
            time.sleep(delay)
            yield item

    input_pipeline.BatchStream.iterate = slow_iterate
