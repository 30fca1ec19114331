"""The Ray actor behind ``--launcher ray``: it owns one ``corral worker`` process on the
node Ray placed it on.

The launcher (``corral.controller.ray_launcher``) creates one ``WorkerHost`` per
instance, with the model's resources as the actor's request, so Ray's scheduler picks a
node with room and holds those resources for as long as the actor lives. ``start``
runs a real worker there: it binds the node's address, joins the controller like any
worker, and logs to ``$CORRAL_HOME/launched/`` on that node. The worker dies with the
actor (``PR_SET_PDEATHSIG``), so a killed actor or a lost node leaves no process behind.

This module imports nothing from Ray or Corral at module level: Ray imports it on every
node that hosts an actor, where only the standard library is needed to run a worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child, before exec: the kernel sends SIGKILL when the actor's thread that
    started it ends (the actor was killed, or its node's raylet stopped it)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _home() -> Path:
    root = os.environ.get("CORRAL_HOME")
    return Path(root) if root else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "corral"


class WorkerHost:
    """An async actor (its methods run on one event-loop thread for the actor's life,
    which is the thread the worker's death signal is tied to)."""

    def __init__(self, worker_id: str, shape: dict[str, Any]) -> None:
        self._worker_id = worker_id
        self._shape = shape  # the launcher's WorkerShape as JSON, read back on adoption
        self._process: subprocess.Popen[bytes] | None = None
        self._facts: dict[str, Any] = {}

    async def start(self, controller_url: str, token: str | None, lease_ttl: float, drain_timeout: float) -> dict[str, Any]:
        """Start the worker process (once); return where it runs."""
        import ray  # present: this runs inside a Ray worker

        if self._process is not None:
            return self.info()
        node = ray.get_runtime_context().get_node_id()
        # the address the node was started with (``ray start --node-ip-address``), which
        # is what its peers reach it at; the machine's default interface may be another
        host = next((n["NodeManagerAddress"] for n in ray.nodes() if n.get("NodeID") == node), None)
        host = host or ray.util.get_node_ip_address()
        port = _free_port(host)
        logs = _home() / "launched"
        logs.mkdir(parents=True, exist_ok=True)
        log_path = logs / f"{self._worker_id}.log"
        args = [sys.executable, "-m", "corral.cli.main", "worker", "--controller", controller_url,
                "--host", host, "--port", str(port), "--worker-id", self._worker_id, "--max-instances", "1",
                "--lease-ttl", str(lease_ttl), "--drain-timeout", str(drain_timeout)]
        env = dict(os.environ)
        if token:
            env["CORRAL_CLUSTER_TOKEN"] = token  # in the environment, not on a command line others can read
        with open(log_path, "ab") as out:
            self._process = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
                preexec_fn=_die_with_parent, start_new_session=True,
            )
        self._facts = {"node": node, "host": host, "port": port,
                       "pid": self._process.pid, "log": str(log_path), "started": time.time()}
        return self.info()

    def info(self) -> dict[str, Any]:
        code = self._process.poll() if self._process is not None else None
        return {"worker_id": self._worker_id, "shape": self._shape, "exit": code,
                "running": self._process is not None and code is None, **self._facts}

    async def poll(self) -> int | None:
        """The worker's exit code, or None while it runs."""
        return self._process.poll() if self._process is not None else None

    async def stop(self, drain_timeout: float) -> int | None:
        """SIGTERM (the worker drains: in-flight requests finish, records go), then SIGKILL
        past the drain bound."""
        process = self._process
        if process is None or process.poll() is not None:
            return process.returncode if process is not None else None
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + drain_timeout + 10
        while process.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            process.wait(5)
        return process.returncode
