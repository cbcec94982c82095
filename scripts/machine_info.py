"""What the benchmark scripts say about the machine they ran on.

Benchmark numbers mean little without the CPU and the load they were taken under
(the development VMs are shared), so every script names both; this module is the one
place that finds them. Imported by the scripts beside it (``python scripts/bench_*.py``
puts this folder on ``sys.path``).
"""

from __future__ import annotations

import os
import platform

__all__ = ["cpu_model", "load_average"]


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what :mod:`platform` knows."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> float:
    """The one-minute load average (NaN where the system has none)."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
