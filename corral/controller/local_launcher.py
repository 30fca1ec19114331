"""``--launcher local``: `corral worker` processes on the controller's machine.

Each launched worker joins this controller (``--controller URL``) on a free loopback
port, with its own id, ``--max-instances`` and a log file under
``$CORRAL_HOME/launched/``. A controller serving TLS gives them its certificate, key
and CA (they serve HTTPS on 127.0.0.1, so the certificate must name that address, and
verify the controller's https:// URL against the CA). The launcher supervises them: one that exits without being
asked is started again (same id, so the controller's view of it carries on) after a
backoff that doubles up to a minute; ``stop`` sends SIGTERM (the worker drains) and
SIGKILL after the drain timeout; ``close`` stops them all when the controller exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from corral.core.launcher import LaunchedWorker, WorkerShape
from corral.core.tls import TlsSettings
from corral.engines.catalog import installed_engines

log = logging.getLogger(__name__)

BACKOFF_S, BACKOFF_MAX_S = 1.0, 60.0
SUPERVISE_S = 0.5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class _Child:
    worker_id: str
    shape: WorkerShape
    log_path: Path
    process: asyncio.subprocess.Process | None = None
    started_at: float = 0.0
    state: str = "starting"
    restarts: int = 0
    next_start: float = 0.0
    last_exit: str = ""
    stopping: bool = field(default=False)


class LocalLauncher:
    name = "local"
    places_by_resources = False  # one machine: a model's resources are not reserved

    def __init__(
        self, controller_url: str, home: Path, cluster_token: str | None, max_instances: int = 1,
        drain_timeout: float = 30.0, lease_ttl: float = 5.0, tls: TlsSettings | None = None,
    ) -> None:
        self._url = controller_url
        self._tls = tls or TlsSettings()
        self._logs = home / "launched"
        self._token = cluster_token
        self._max_instances = max_instances
        self.per_worker = max_instances
        self._node = socket.gethostname()
        self._drain_timeout = drain_timeout
        self._lease_ttl = lease_ttl
        self._children: dict[str, _Child] = {}
        self._supervisor: asyncio.Task[None] | None = None

    async def open(self) -> None:
        pass  # nothing to connect to; workers of an earlier run ended with it

    def can_launch(self, shape: WorkerShape) -> bool:
        return shape.engine in installed_engines()

    def waiting(self, shape: WorkerShape) -> str | None:
        return None  # a local process starts at once

    async def launch(self, shape: WorkerShape) -> str:
        worker_id = f"launched-{uuid.uuid4().hex[:8]}"
        self._logs.mkdir(parents=True, exist_ok=True)
        child = _Child(worker_id, shape, self._logs / f"{worker_id}.log")
        self._children[worker_id] = child
        await self._start(child)
        if self._supervisor is None:
            self._supervisor = asyncio.create_task(self._supervise(), name="local-launcher")
        return worker_id

    def command(self, worker_id: str, port: int) -> list[str]:
        """The ``corral worker`` command line of one launched worker."""
        args = [sys.executable, "-m", "corral.cli.main", "worker", "--controller", self._url, "--host", "127.0.0.1",
                "--port", str(port), "--worker-id", worker_id, "--max-instances", str(self._max_instances),
                "--lease-ttl", str(self._lease_ttl), "--drain-timeout", str(self._drain_timeout)]
        # paths only, never a file's content; absolute, as the worker may not share our working directory
        for flag, path in (("--tls-cert", self._tls.cert), ("--tls-key", self._tls.key), ("--tls-ca", self._tls.ca)):
            if path is not None:
                args += [flag, os.path.abspath(path)]
        return args

    async def _start(self, child: _Child) -> None:
        port = _free_port()
        args = self.command(child.worker_id, port)
        env = dict(os.environ)
        if self._token:
            env["CORRAL_CLUSTER_TOKEN"] = self._token  # in the environment, not on a command line others can read
        with open(child.log_path, "ab") as out:
            child.process = await asyncio.create_subprocess_exec(
                *args, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=asyncio.subprocess.STDOUT, env=env,
                start_new_session=True,  # a Ctrl-C on the controller's terminal is the controller's to handle
            )
        child.started_at, child.state = time.monotonic(), "running"
        log.info("launched worker %s (pid %d, port %d, log %s)", child.worker_id, child.process.pid, port, child.log_path)

    async def _supervise(self) -> None:
        while True:
            await asyncio.sleep(SUPERVISE_S)
            now = time.monotonic()
            for child in list(self._children.values()):
                if child.stopping or child.process is None:
                    continue
                if child.state == "restarting":
                    if now >= child.next_start:
                        try:
                            await self._start(child)
                        except OSError as exc:
                            log.error("cannot restart worker %s: %s", child.worker_id, exc)
                            child.next_start = now + min(BACKOFF_MAX_S, BACKOFF_S * 2**child.restarts)
                    continue
                code = child.process.returncode
                if code is None:
                    if now - child.started_at > BACKOFF_MAX_S:
                        child.restarts = 0  # it stayed up: the next crash starts the backoff again
                    continue
                delay = min(BACKOFF_MAX_S, BACKOFF_S * 2**child.restarts)
                child.restarts += 1
                child.state, child.next_start, child.last_exit = "restarting", now + delay, f"exit {code}"
                log.warning("launched worker %s exited (%d); restarting it in %.0fs (log: %s)",
                            child.worker_id, code, delay, child.log_path)

    async def stop(self, worker_id: str) -> None:
        child = self._children.pop(worker_id, None)
        if child is None:
            return
        child.stopping, child.state = True, "stopping"
        process = child.process
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)  # the worker drains, then exits
        try:
            await asyncio.wait_for(process.wait(), self._drain_timeout + 10)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
        log.info("stopped launched worker %s", worker_id)

    def launched(self) -> list[LaunchedWorker]:
        out = []
        for c in self._children.values():
            pid = c.process.pid if c.process is not None else None
            detail = f"pid {pid}, log {c.log_path}" + (f", last {c.last_exit}" if c.last_exit else "")
            out.append(LaunchedWorker(c.worker_id, c.shape, c.started_at, c.state, detail, self._node))
        return out

    async def close(self) -> None:
        if self._supervisor is not None:
            self._supervisor.cancel()
        await asyncio.gather(*(self.stop(w) for w in list(self._children)), return_exceptions=True)
