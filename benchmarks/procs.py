"""Starting, watching and stopping the processes a benchmark measures.

Every server runs as its own process on a free loopback port, logging to a file. CPU is
read from the kernel's accounting of the process (all its threads, and its children),
before and after a run: unlike wall-clock rates, it does not depend on what else the
2 cores were doing meanwhile.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import psutil

MiB = 1024 * 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def corral_argv() -> list[str]:
    """How to run ``corral``: the console script beside this interpreter, as users do."""
    script = Path(sys.executable).with_name("corral")
    return [str(script)] if script.exists() else [sys.executable, "-m", "corral.cli.main"]


def bench_env(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["CORRAL_HOME"] = str(home)
    env["HF_HUB_OFFLINE"] = "1"
    env["TOKENIZERS_PARALLELISM"] = "false"
    env.pop("CORRAL_API_KEY", None)
    env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)  # no exporter retrying against nothing
    return env


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    port: int
    log_path: Path
    started_at: float = field(default_factory=time.perf_counter)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log(self, last: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-last:]
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.popen.poll() is None

    def _tree(self) -> list[psutil.Process]:
        root = psutil.Process(self.pid)
        try:
            return [root, *root.children(recursive=True)]
        except psutil.Error:
            return [root]

    def cpu_s(self) -> float:
        """User + system CPU seconds of the process, its threads and its live children."""
        total = 0.0
        for p in self._tree():
            try:
                t = p.cpu_times()
            except psutil.Error:
                continue
            total += t.user + t.system
        return total

    def rss_mib(self) -> float:
        return psutil.Process(self.pid).memory_info().rss / MiB

    def uss_mib(self) -> float:
        """Memory only this process holds (RSS less pages shared with others)."""
        return psutil.Process(self.pid).memory_full_info().uss / MiB

    def stop(self, timeout: float = 15.0) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)


def spawn(name: str, argv: list[str], logs: Path, env: dict[str, str], port: int) -> Proc:
    log_path = logs / f"{name.replace(' ', '-')}-{port}.log"
    with open(log_path, "ab") as log:
        popen = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    return Proc(name, popen, port, log_path)


def http_status(url: str, headers: dict[str, str] | None = None, timeout: float = 2.0) -> int:
    """The status of ``GET url``; 0 when nothing answers."""
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (urllib.error.URLError, OSError):
        return 0


def wait_ready(proc: Proc, path: str, timeout: float = 120.0, poll_s: float = 0.01,
               headers: dict[str, str] | None = None) -> float:
    """Poll ``GET path`` until it answers 200; return the seconds since the process was
    started. Raise ``RuntimeError`` with the log's end if it exits or times out."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.log()}")
        if http_status(proc.url + path, headers, timeout=1.0) == 200:
            return time.perf_counter() - proc.started_at
        time.sleep(poll_s)
    proc.stop()
    raise RuntimeError(f"{proc.name} was not ready within {timeout:.0f}s:\n{proc.log()}")


class Processes:
    """Everything a section started, stopped in reverse order on exit."""

    def __init__(self, logs: Path, env: dict[str, str]) -> None:
        self.logs = logs
        self.env = env
        self.started: list[Proc] = []

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()

    def spawn(self, name: str, argv: list[str], port: int) -> Proc:
        proc = spawn(name, argv, self.logs, self.env, port)
        self.started.append(proc)
        return proc

    def fake_upstream(self) -> Proc:
        port = free_port()
        proc = self.spawn("fake-upstream", [sys.executable, "-m", "corral.bench.fake_openai", "--port", str(port),
                                            "--model", "fake"], port)
        wait_ready(proc, "/health", 30)
        return proc

    def bare_proxy(self, upstream: Proc) -> Proc:
        port = free_port()
        script = Path(__file__).with_name("bare_proxy.py")
        proc = self.spawn("bare-proxy", [sys.executable, str(script), "--port", str(port),
                                         "--upstream", upstream.url], port)
        wait_ready(proc, "/health", 30)
        return proc

    def corral(self, name: str, args: list[str], port: int) -> Proc:
        return self.spawn(name, [*corral_argv(), *args], port)

    def stop_all(self) -> None:
        for proc in reversed(self.started):
            proc.stop()
        self.started.clear()


def machine() -> dict[str, object]:
    """What the numbers were measured on."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "memory_gib": round(psutil.virtual_memory().total / 1024**3, 1),
        "gpu": bool(shutil.which("nvidia-smi")),
        "python": sys.version.split()[0],
        "platform": sys.platform,
    }
