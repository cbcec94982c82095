"""Start a multi-process job on this machine: N processes of one command.

``explistops launch --processes N [--devices-per-process K] -- <train arguments>``
runs ``explistops train <train arguments>`` (``python -m explistops_jax.cli
train``; ``--command eval``: ``python -m explistops_jax.eval``) N times with
``--coordinator_address 127.0.0.1:<a free port> --num_processes N --process_id
i``; with ``--devices-per-process K``, each process sees K forced host devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=K``), so N x K CPU devices
form one mesh, exactly as N hosts would. It is how the multi-host code paths are
run and tested on one machine (docs/multihost.md says how to start real hosts).

Every line a process prints is printed with its index in front (``[1] ...``),
standard output to standard output, standard error to standard error. When a
process exits with a non-zero status the others are stopped (SIGTERM, then
SIGKILL after a grace period), a one-line message says which process failed and
how, and the launcher exits with that process's status (a signal N: 128 + N).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import IO, Sequence

from explistops_jax.errors import ConfigError

__all__ = ["launch", "free_port", "child_environment", "child_command", "COMMANDS"]

COMMANDS = {"train": ("explistops_jax.cli", "train"), "eval": ("explistops_jax.eval",)}
"""What a launch can run: ``explistops train`` (its arguments) or ``python -m
explistops_jax.eval`` (gin flags); both have the multi-host flags."""

_DEVICE_FLAG = "--xla_force_host_platform_device_count"


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def child_environment(devices_per_process: int | None,
                      base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of every process: ``base`` (default: ours) with the
    forced host device count replaced when ``devices_per_process`` is given."""
    env = dict(os.environ if base is None else base)
    if devices_per_process is not None:
        flags = re.sub(rf"{_DEVICE_FLAG}=\S*", "", env.get("XLA_FLAGS", "")).split()
        env["XLA_FLAGS"] = " ".join(flags + [f"{_DEVICE_FLAG}={devices_per_process}"])
    env.setdefault("PYTHONUNBUFFERED", "1")  # lines appear as they are printed
    return env


def child_command(command: str, arguments: Sequence[str], port: int, processes: int,
                  index: int) -> list[str]:
    """The command line of process ``index``."""
    return [sys.executable, "-m", *COMMANDS[command], *arguments,
            "--coordinator_address", f"127.0.0.1:{port}", "--num_processes", str(processes),
            "--process_id", str(index)]


def launch(arguments: Sequence[str], processes: int, *, devices_per_process: int | None = None,
           command: str = "train", port: int | None = None, grace_s: float = 10.0,
           stdout: IO[str] | None = None, stderr: IO[str] | None = None) -> int:
    """Runs ``explistops <command> <arguments>`` as ``processes`` processes of
    one job; returns 0 when all succeeded, else the first failure's status."""
    if not isinstance(processes, int) or processes < 1:
        raise ConfigError(f"{processes!r} processes", where="--processes",
                          expected="a positive integer")
    if devices_per_process is not None and devices_per_process < 1:
        raise ConfigError(f"{devices_per_process!r} devices per process",
                          where="--devices-per-process", expected="a positive integer")
    if command not in COMMANDS:
        raise ConfigError(f"command {command!r}", where="--command",
                          expected="one of " + ", ".join(COMMANDS))
    stdout, stderr = stdout or sys.stdout, stderr or sys.stderr
    port = port or free_port()
    env = child_environment(devices_per_process)
    lock = threading.Lock()
    children, pumps = [], []
    for index in range(processes):
        child = subprocess.Popen(child_command(command, arguments, port, processes, index),
                                 env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        children.append(child)
        for pipe, out in ((child.stdout, stdout), (child.stderr, stderr)):
            pump = threading.Thread(target=_prefix_lines, args=(pipe, out, f"[{index}] ", lock),
                                    daemon=True)
            pump.start()
            pumps.append(pump)
    try:
        status = _supervise(children, grace_s, stderr, lock)
    except KeyboardInterrupt:
        _stop(children, grace_s)
        status = 130
    for pump in pumps:
        pump.join(timeout=5)
    return status


def _supervise(children: list[subprocess.Popen], grace_s: float, stderr: IO[str],
               lock: threading.Lock) -> int:
    """Waits for all; on the first failure stops the others. The exit status."""
    while True:
        states = [child.poll() for child in children]
        failed = [(i, rc) for i, rc in enumerate(states) if rc not in (None, 0)]
        if failed:
            index, rc = failed[0]
            how = (f"was killed by {signal.Signals(-rc).name}" if rc < 0
                   else f"exited with status {rc}")
            others = [i for i, s in enumerate(states) if s is None]
            with lock:
                print(f"explistops: error: process {index} of {len(children)} {how}"
                      + (f"; stopping process{'es' if len(others) > 1 else ''} "
                         f"{', '.join(map(str, others))}" if others else ""),
                      file=stderr, flush=True)
            _stop(children, grace_s)
            return 128 - rc if rc < 0 else rc
        if all(rc == 0 for rc in states):
            return 0
        time.sleep(0.1)


def _stop(children: list[subprocess.Popen], grace_s: float) -> None:
    """SIGTERM to every running process, SIGKILL to any left after ``grace_s``."""
    for child in children:
        if child.poll() is None:
            child.terminate()
    deadline = time.monotonic() + grace_s
    for child in children:
        try:
            child.wait(max(deadline - time.monotonic(), 0.01))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def _prefix_lines(pipe, out: IO[str], prefix: str, lock: threading.Lock) -> None:
    for raw in iter(pipe.readline, b""):
        line = raw.decode(errors="replace")
        with lock:
            out.write(prefix + line if line.endswith("\n") else prefix + line + "\n")
            out.flush()
    pipe.close()
