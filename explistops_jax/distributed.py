"""Joining a job of several processes, and leaving it cleanly or loudly.

``jax.distributed.initialize`` alone turns the two commonest mistakes into a
C++ abort after its timeout (a stack trace, exit status 134): a coordinator
that cannot be reached, and a process count that does not match the processes
started. And a process that dies mid-run is noticed by the others only after
JAX's heartbeat timeout, again as an abort. So :func:`initialize` adds, around
JAX's own initialisation, a small TCP handshake of its own on the coordinator's
port, before JAX binds it:

* process 0 listens, every other process connects (retrying until the
  initialisation timeout) and says ``(process_id, num_processes)``; process 0
  checks that all agree and that every index comes exactly once, and answers
  ``ok`` or the one-line reason, which every process raises as a
  :class:`~explistops_jax.errors.UserError` (exit status 2);
* the connections stay open for the whole run (a watch): when a process ends
  without saying it finished (killed, crashed, stopped on an error), the kernel
  closes its end, and the processes that watch it (process 0 watches all, the
  others watch process 0) print one line and exit with status 1 at once,
  instead of hanging in a collective. :func:`finish` (called by
  ``runtime.run_guarded`` after a command succeeded) says "finished".

On the CPU the cross-process collectives are gloo's
(``jax_cpu_collectives_implementation``; the environment variable
``JAX_CPU_COLLECTIVES_IMPLEMENTATION`` wins). JAX's heartbeat still covers what
a closed connection cannot show (a host that vanished from the network).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import threading
import time

from explistops_jax.errors import ConfigError, UserError

__all__ = ["initialize", "finish", "rendezvous", "Link", "INITIALIZATION_TIMEOUT",
           "HEARTBEAT_TIMEOUT"]

INITIALIZATION_TIMEOUT = 300  # seconds, JAX's default
HEARTBEAT_TIMEOUT = 100       # seconds, JAX's default

_state: dict = {"link": None}


def initialize(coordinator_address: str | None, num_processes: int | None,
               process_id: int | None, *, initialization_timeout: int = INITIALIZATION_TIMEOUT,
               heartbeat_timeout: int = HEARTBEAT_TIMEOUT, auto: bool = False) -> None:
    """Joins the job (handshake, ``jax.distributed.initialize``, watch).

    All three of ``coordinator_address`` (``host:port`` of process 0),
    ``num_processes`` and ``process_id`` are given, or none: then nothing
    happens, unless ``auto`` (T5X's ``--multiprocess_gpu``) or
    ``EXPLISTOPS_DISTRIBUTED=1`` asks JAX to find them itself (TPU pods, SLURM),
    without the handshake. A mistake is a UserError within
    ``initialization_timeout`` seconds.
    """
    import jax

    given = (coordinator_address, num_processes, process_id)
    if all(v is None for v in given):
        if auto or os.environ.get("EXPLISTOPS_DISTRIBUTED") == "1":
            jax.distributed.initialize(initialization_timeout=initialization_timeout,
                                       heartbeat_timeout_seconds=heartbeat_timeout)
        return
    _check(coordinator_address, num_processes, process_id)
    if "JAX_CPU_COLLECTIVES_IMPLEMENTATION" not in os.environ:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    link = rendezvous(coordinator_address, num_processes, process_id,
                      timeout=initialization_timeout)
    jax.distributed.initialize(coordinator_address, num_processes, process_id,
                               initialization_timeout=initialization_timeout,
                               heartbeat_timeout_seconds=heartbeat_timeout)
    _state["link"] = link
    link.watch()
    logging.info("process %d of %d joined %s", process_id, num_processes,
                 coordinator_address)


def finish() -> None:
    """Tells the other processes that this one finished normally (so that its
    exit is not taken for a failure). Does nothing outside a job."""
    link = _state["link"]
    if link is not None:
        link.finish()


def _check(address: str | None, num_processes: int | None, process_id: int | None) -> None:
    if None in (address, num_processes, process_id):
        raise ConfigError("a multi-process job needs all three of --coordinator_address, "
                          "--num_processes and --process_id", where="command line",
                          expected="all three, or none")
    _split_address(address)
    if not isinstance(num_processes, int) or num_processes < 1:
        raise ConfigError(f"{num_processes!r} processes", where="--num_processes",
                          expected="a positive integer")
    if not isinstance(process_id, int) or not 0 <= process_id < num_processes:
        raise ConfigError(f"process id {process_id!r}", where="--process_id",
                          expected=f"0 ... {num_processes - 1} (--num_processes "
                                   f"{num_processes})")


def _split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise ConfigError(f"coordinator address {address!r}", where="--coordinator_address",
                          expected="HOST:PORT of process 0, e.g. 10.0.0.1:1234")
    return host.strip("[]"), int(port)


# ----------------------------------------------------------------- the handshake


class Link:
    """The open connections of one process to the processes it watches."""

    def __init__(self, process_id: int, num_processes: int,
                 peers: dict[int, socket.socket]):
        self.process_id, self.num_processes = process_id, num_processes
        self.peers = peers
        self._finished = threading.Event()

    def watch(self) -> None:
        """Starts one daemon thread per watched process."""
        for peer, conn in self.peers.items():
            threading.Thread(target=self._watch_one, args=(peer, conn), daemon=True,
                             name=f"explistops-watch-{peer}").start()

    def _watch_one(self, peer: int, conn: socket.socket) -> None:
        conn.settimeout(None)
        try:
            message = _read_line(conn)
        except OSError:
            message = None
        if message == {"done": True} or self._finished.is_set():
            return
        sys.stdout.flush()
        print(f"explistops: error: process {peer} of {self.num_processes} stopped "
              f"before finishing (its connection to process {self.process_id} closed); "
              f"stopping process {self.process_id} too. Start all processes again to "
              "resume from the last checkpoint", file=sys.stderr, flush=True)
        os._exit(1)

    def finish(self) -> None:
        self._finished.set()
        for conn in self.peers.values():
            try:
                _send(conn, {"done": True})
            except OSError:
                pass


def rendezvous(address: str, num_processes: int, process_id: int, *,
               timeout: float) -> Link:
    """The handshake on ``address`` (see the module docstring); a UserError
    naming what is wrong, within about ``timeout`` seconds."""
    if num_processes == 1:
        return Link(process_id, num_processes, {})
    host, port = _split_address(address)
    if process_id == 0:
        return _lead(port, num_processes, timeout, address)
    return _join(host, port, num_processes, process_id, timeout, address)


def _lead(port: int, num_processes: int, timeout: float, address: str) -> Link:
    deadline = time.monotonic() + timeout
    server = socket.create_server(("", port), family=socket.AF_INET6, dualstack_ipv6=True) \
        if socket.has_dualstack_ipv6() else socket.create_server(("", port))
    peers: dict[int, socket.socket] = {}
    try:
        problem = None
        while len(peers) < num_processes - 1 and problem is None:
            left = deadline - time.monotonic()
            if left <= 0:
                missing = sorted(set(range(1, num_processes)) - set(peers))
                problem = (f"only {len(peers) + 1} of {num_processes} processes joined "
                           f"{address} within {timeout:g} s (missing process ids "
                           f"{', '.join(map(str, missing))}); check --num_processes and "
                           "that every process was started")
                break
            server.settimeout(left)
            try:
                conn, _ = server.accept()
            except socket.timeout:
                continue
            conn.settimeout(max(deadline - time.monotonic(), 1.0))
            try:
                hello = _read_line(conn) or {}
            except OSError:
                conn.close()
                continue
            peer, count = hello.get("process_id"), hello.get("num_processes")
            if count != num_processes:
                problem = (f"process {peer} was started with --num_processes {count}, "
                           f"process 0 with {num_processes}")
            elif peer in peers or not isinstance(peer, int) or not 0 < peer < num_processes:
                problem = f"process id {peer} joined {address} twice or is out of range"
            peers[peer if problem is None else -1 - len(peers)] = conn
        for conn in peers.values():
            _send(conn, {"ok": True} if problem is None else {"error": problem})
        if problem is not None:
            raise UserError(problem, where="--num_processes / --process_id")
    except BaseException:
        for conn in peers.values():
            conn.close()
        raise
    finally:
        server.close()
    return Link(0, num_processes, peers)


def _join(host: str, port: int, num_processes: int, process_id: int, timeout: float,
          address: str) -> Link:
    deadline = time.monotonic() + timeout
    conn = None
    while conn is None:
        try:
            conn = socket.create_connection((host, port), timeout=2.0)
        except OSError:
            if time.monotonic() >= deadline:
                raise UserError(f"cannot reach the coordinator {address} within "
                                f"{timeout:g} s", where="--coordinator_address",
                                expected="the address process 0 listens on "
                                         "(is process 0 running?)") from None
            time.sleep(0.2)
    try:
        _send(conn, {"process_id": process_id, "num_processes": num_processes})
        conn.settimeout(max(deadline - time.monotonic(), 0) + 10.0)
        reply = _read_line(conn)
    except OSError:
        reply = None
    if reply != {"ok": True}:
        conn.close()
        problem = (reply or {}).get("error") or (
            f"process 0 at {address} did not confirm the job within {timeout:g} s")
        raise UserError(problem, where="--num_processes / --process_id")
    return Link(process_id, num_processes, {0: conn})


def _send(conn: socket.socket, message: dict) -> None:
    conn.sendall((json.dumps(message) + "\n").encode())


def _read_line(conn: socket.socket) -> dict | None:
    """One JSON line; None when the connection closed first."""
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(4096)
        if not chunk:
            return None
        data += chunk
    try:
        return json.loads(data)
    except ValueError:
        return None
