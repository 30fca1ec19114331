"""Starting real ``corral`` processes on free loopback ports for integration tests."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path
    tls: ssl.SSLContext | None = None  # set: the server speaks HTTPS, verified with this context

    @property
    def url(self) -> str:
        return f"{'https' if self.tls is not None else 'http'}://127.0.0.1:{self.port}"

    def get(self, path: str, headers: dict[str, str] | None = None, timeout: float = 5) -> httpx.Response:
        """GET ``path`` on this server, over HTTPS verified with ``tls`` when it has one."""
        verify: ssl.SSLContext | bool = self.tls if self.tls is not None else True
        return httpx.get(f"{self.url}{path}", headers=headers, timeout=timeout, verify=verify)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        return self.process.returncode


def corral_env(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["CORRAL_HOME"] = str(home)
    env["HF_HUB_OFFLINE"] = "1"
    env.pop("CORRAL_API_KEY", None)
    env.pop("CORRAL_TLS_CA", None)  # a test gives the CA it means
    return env


def run_corral(
    args: list[str], home: Path, timeout: float = 120, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a corral command to completion (for commands expected to exit); ``env`` is
    added to the environment."""
    return subprocess.run(
        [sys.executable, "-m", "corral.cli.main", *args],
        env={**corral_env(home), **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def launch(
    command: list[str], home: Path, log_dir: Path, port: int, env: dict[str, str] | None = None,
    tls: ssl.SSLContext | None = None,
) -> Server:
    """Start ``corral COMMAND...`` in the background, logging to a file. ``tls``: the
    command serves HTTPS (its flags say so), reached with this client context."""
    log_path = log_dir / f"corral-{command[0]}-{port}.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "corral.cli.main", *command],
            env={**corral_env(home), **(env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return Server(process, port, log_path, tls)


def wait_until(server: Server, ready: Callable[[], bool], timeout: float = 180) -> Server:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"corral exited with {server.process.returncode}:\n{server.log()}")
        try:
            if ready():
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"corral was not ready within {timeout}s:\n{server.log()}")


def start_corral(
    args: list[str], home: Path, log_dir: Path, ready_timeout: float = 180, tls: ssl.SSLContext | None = None
) -> Server:
    """Start ``corral start ARGS --port P`` and wait until /health/ready says ready
    (over HTTPS verified with ``tls`` when given: ARGS or the config then serve TLS)."""
    port = free_port()
    server = launch(["start", *args, "--port", str(port)], home, log_dir, port, tls=tls)
    return wait_until(server, lambda: server.get("/health/ready", timeout=2).status_code == 200, ready_timeout)
