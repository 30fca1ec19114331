"""A throwaway single-node etcd on free loopback ports, in a temporary folder.

``start_etcd()`` returns a running ``EtcdServer``; ``stop()`` ends it (by PID) and
``start()`` brings it back on the same data folder and ports, for outage tests.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

INSTALL_HINT = "install it with scripts/install-system-deps.sh (apt-get install etcd-server etcd-client)"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class EtcdServer:
    binary: str
    folder: Path
    client_port: int
    peer_port: int
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        """For ``EtcdRegistry``."""
        return f"etcd://127.0.0.1:{self.client_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def log_path(self) -> Path:
        return self.folder / "etcd.log"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self, timeout: float = 20.0) -> None:
        """Start (or restart) etcd and wait until it answers /health."""
        if self.process is not None and self.process.poll() is None:
            return
        client, peer = f"http://127.0.0.1:{self.client_port}", f"http://127.0.0.1:{self.peer_port}"
        # fmt: off
        args = [
            self.binary,
            "--name", "default",
            "--data-dir", str(self.folder / "data"),
            "--listen-client-urls", client,
            "--advertise-client-urls", client,
            "--listen-peer-urls", peer,
            "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"default={peer}",
        ]
        # fmt: on
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"etcd exited with code {self.process.returncode}:\n{self.log()[-3000:]}")
            try:
                if httpx.get(f"{self.http_url}/health", timeout=1.0).json().get("health") == "true":
                    return
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"etcd did not become healthy within {timeout} s:\n{self.log()[-3000:]}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)

    def cleanup(self) -> None:
        """Stop and delete the folder."""
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


def etcd_binary() -> str:
    binary = shutil.which("etcd")
    if binary is None:
        raise RuntimeError(f"the etcd binary is not on PATH; {INSTALL_HINT}")
    return binary


def start_etcd(folder: Path | None = None) -> EtcdServer:
    """A running etcd in ``folder`` (a new temporary folder by default)."""
    binary = etcd_binary()
    folder = folder if folder is not None else Path(tempfile.mkdtemp(prefix="corral-etcd-"))
    client_port = free_port()
    peer_port = free_port()
    while peer_port == client_port:
        peer_port = free_port()
    server = EtcdServer(binary, folder, client_port, peer_port)
    server.start()
    return server
