"""One real Ray cluster for the Ray tests of a session: a head node with 2 CPUs and a
second node with 2 CPUs and a custom resource ``nodeb``, on two loopback addresses.

Ray rewrites ``--node-ip-address 127.0.0.1`` (and ``localhost``) to the machine's
outward address, so the nodes use 127.0.0.2 and 127.0.0.3, which it leaves alone and
which keep every hop on loopback. Both nodes get a small object store and a temporary
folder of their own; the cluster is stopped by the PIDs of its processes (never
``ray stop``, which would end every Ray process on the machine).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from tests.integration.servers import corral_env, free_port

HEAD_IP, NODE_B_IP = "127.0.0.2", "127.0.0.3"


@dataclass
class RayCluster:
    address: str  # the GCS address, HOST:PORT
    temp_dir: Path
    env: dict[str, str]

    def processes(self) -> list[psutil.Process]:
        """Every process of this cluster: those naming its folder, and their children."""
        found: dict[int, psutil.Process] = {}
        for proc in psutil.process_iter(["cmdline"]):
            if any(str(self.temp_dir) in part for part in proc.info["cmdline"] or []):
                found[proc.pid] = proc
                for child in _children(proc):
                    found[child.pid] = child
        return list(found.values())

    def driver(self, code: str) -> str:
        """Run ``code`` in a short-lived Ray driver of this cluster (in the ``corral``
        namespace); return what it prints."""
        script = (
            "import ray, logging\n"
            f"ray.init(address={self.address!r}, namespace='corral', log_to_driver=False, logging_level=logging.ERROR)\n"
            + code
        )
        done = subprocess.run([sys.executable, "-c", script], env=self.env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout


def _children(proc: psutil.Process) -> list[psutil.Process]:
    try:
        return proc.children(recursive=True)
    except psutil.Error:
        return []


def _ray(args: list[str], env: dict[str, str]) -> None:
    ray_cli = Path(sys.executable).with_name("ray")
    done = subprocess.run([str(ray_cli), *args], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"ray {' '.join(args)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"


@pytest.fixture(scope="session")
def ray_cluster(corral_home: Path) -> Iterator[RayCluster]:
    # a short folder: Ray's unix sockets live under it, and their paths have a length limit
    temp_dir = Path(tempfile.mkdtemp(prefix="corral-ray-"))
    env = {**corral_env(corral_home), "RAY_USAGE_STATS_ENABLED": "0"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(Path(__file__).resolve().parents[3]), env.get("PYTHONPATH")) if p)
    port = free_port()
    small = ["--object-store-memory", str(100 * 1024 * 1024), "--disable-usage-stats"]
    cluster = RayCluster(f"{HEAD_IP}:{port}", temp_dir, env)
    try:
        _ray(["start", "--head", "--node-ip-address", HEAD_IP, "--port", str(port), "--num-cpus", "2",
              "--include-dashboard=false", "--temp-dir", str(temp_dir),
              *small], env)
        _ray(["start", "--address", cluster.address, "--node-ip-address", NODE_B_IP, "--num-cpus", "2",
              "--resources", '{"nodeb": 1}', *small], env)
        yield cluster
    finally:
        procs = cluster.processes()
        for proc in procs:
            try:
                proc.send_signal(signal.SIGTERM)
            except psutil.Error:
                pass
        _, alive = psutil.wait_procs(procs, timeout=3)  # the GCS server may ignore SIGTERM
        for proc in alive:
            try:
                proc.kill()
            except psutil.Error:
                pass
        time.sleep(0.5)
        shutil.rmtree(temp_dir, ignore_errors=True)
