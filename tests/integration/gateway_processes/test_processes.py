"""``corral gateway --processes 2`` in front of a real controller and worker (the cluster
harness; the worker's engine is openai-compatible on the benchmark's fake upstream, so it
starts in a second or two), checked through HTTP only.

- both processes serve (``GET /health`` names the process that answered; the merged
  ``/metrics`` counts requests under ``process="0"`` and ``process="1"``);
- the merged ``/metrics`` counts every request exactly once, and the request records
  (one SQLite file, one writer per process) hold every one, none dropped;
- a child killed with SIGKILL leaves the port serving, is started again, and the
  counters carry on from where they were (they never go backwards);
- SIGHUP restarts the processes one at a time with no failed request under a steady
  trickle (a new connection per request, as the kernel spreads connections, not
  requests: see docs/cluster.md for keep-alive clients);
- SIGTERM stops every child cleanly and the supervisor exits 0.

Requests go on new connections (``Connection: close``) so that the kernel spreads them."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest

from tests.integration.cluster.harness import Cluster, wait_for_instances
from tests.integration.cluster.recorded import metric, wait_rows
from tests.integration.cluster.traffic import fake_upstream, light_config
from tests.integration.servers import Server

pytestmark = pytest.mark.integration

MODEL = "chat"
CLOSE = {"connection": "close"}
BODY = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}


@dataclass
class Backend:
    cluster: Cluster
    join: list[str]
    logs: Path


@pytest.fixture(scope="module")
def backend(corral_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    logs = tmp_path_factory.mktemp("gateway-processes")
    with fake_upstream(corral_home, logs / "fake.log", delay_ms=1) as upstream:
        cluster = Cluster(corral_home, logs)
        try:
            join = ["--controller", cluster.controller().url]
            cluster.worker(join, light_config(logs / "worker.toml", upstream, MODEL))
            yield Backend(cluster, join, logs)
        finally:
            cluster.stop()


@dataclass
class Gateway:
    server: Server
    db: Path

    @property
    def url(self) -> str:
        return self.server.url

    def slots(self) -> dict[int, int]:
        """slot -> pid of the children, from the supervisor's process tree."""
        out = {}
        for child in psutil.Process(self.server.process.pid).children():
            cmdline = child.cmdline()
            if "--process-slot" in cmdline:
                out[int(cmdline[cmdline.index("--process-slot") + 1].split(":")[0])] = child.pid
        return out


def health(url: str) -> dict[str, int]:
    return httpx.get(f"{url}/health", headers=CLOSE, timeout=10).json()["process"]  # type: ignore[no-any-return]


def wait_serving(url: str, pids: set[int] | None = None, timeout: float = 60) -> set[int]:
    """Until ``/health`` has been answered by two processes (those of ``pids``, if given)."""
    seen: set[int] = set()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            seen.add(health(url)["pid"])
        except httpx.TransportError:
            pass
        wanted = pids if pids is not None else seen
        if len(seen & wanted) >= 2:
            return seen & wanted
        time.sleep(0.02)
    raise AssertionError(f"only {seen} answered (wanted {pids})")


def chat(url: str) -> int:
    return httpx.post(f"{url}/v1/chat/completions", json=BODY, headers=CLOSE, timeout=30).status_code


def requests_total(url: str, **labels: str) -> float:
    return metric(url, "corral_requests_total", model=MODEL, **labels)


@pytest.fixture
def gateway(backend: Backend) -> Iterator[Gateway]:
    db = backend.logs / f"records-{time.monotonic_ns()}.db"
    server = backend.cluster.gateway(backend.join, ["--processes", "2", "--records", f"sqlite:///{db}"])
    try:
        wait_for_instances(server, MODEL, 1)
        wait_serving(server.url)
        yield Gateway(server, db)
    finally:
        server.stop()
        backend.cluster.processes.remove(server)


def test_both_processes_serve_and_metrics_count_each_request_once(gateway: Gateway) -> None:
    sent = 60
    assert [chat(gateway.url) for _ in range(sent)] == [200] * sent
    time.sleep(1.5)  # the other process's snapshot is at most a second old
    per_process = [requests_total(gateway.url, process=str(slot), outcome="ok") for slot in (0, 1)]
    assert all(n > 0 for n in per_process), per_process  # the kernel gave connections to both
    assert sum(per_process) == sent
    for _ in range(10):  # whichever process answers the scrape, the same totals
        assert requests_total(gateway.url) == sent
    recorded = wait_rows(gateway.db, sent)
    assert len(recorded) == sent and {r["outcome"] for r in recorded} == {"ok"}
    assert metric(gateway.url, "corral_records_dropped_total") == 0


def test_a_killed_child_is_restarted_and_its_counts_kept(gateway: Gateway) -> None:
    assert [chat(gateway.url) for _ in range(20)] == [200] * 20
    time.sleep(1.5)
    before = requests_total(gateway.url)
    assert before == 20
    slots = gateway.slots()
    os.kill(slots[1], signal.SIGKILL)
    # the port keeps serving: the dead slot's connections wait in its socket for the successor
    assert [chat(gateway.url) for _ in range(20)] == [200] * 20
    deadline = time.monotonic() + 30
    while (new := gateway.slots().get(1)) in (None, slots[1]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert new not in (None, slots[1]), "slot 1 was not started again"
    wait_serving(gateway.url, {slots[0], new})
    time.sleep(1.5)
    totals = [requests_total(gateway.url) for _ in range(10)]
    assert min(totals) >= before  # never backwards: the killed one's counts are kept
    assert totals == [40] * 10  # it had written its last snapshot after its last request
    assert "was killed by SIGKILL" in gateway.server.log()


def test_sighup_restarts_one_process_at_a_time_without_a_failed_request(gateway: Gateway) -> None:
    old = set(gateway.slots().values())
    statuses: list[int | str] = []
    stop = threading.Event()

    def trickle() -> None:
        while not stop.is_set():
            try:
                statuses.append(chat(gateway.url))
            except httpx.HTTPError as exc:
                statuses.append(repr(exc))
            time.sleep(0.01)

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    time.sleep(0.5)
    gateway.server.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 60
    while "rolling restart done" not in gateway.server.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)
    stop.set()
    thread.join(30)
    assert "rolling restart done" in gateway.server.log()
    new = set(gateway.slots().values())
    assert len(new) == 2 and not new & old
    # requests kept flowing through both restarts (how many depends on the machine's load)
    assert len(statuses) >= 20 and set(statuses) == {200}, [s for s in statuses if s != 200][:5]
    time.sleep(1.5)
    assert requests_total(gateway.url) == len(statuses)  # the drained processes' counts are kept


def test_sigterm_stops_every_child(gateway: Gateway) -> None:
    assert chat(gateway.url) == 200
    children = [psutil.Process(pid) for pid in gateway.slots().values()]
    assert len(children) == 2
    gateway.server.process.send_signal(signal.SIGTERM)
    assert gateway.server.process.wait(40) == 0
    gone, alive = psutil.wait_procs(children, timeout=5)
    assert not alive
    assert gateway.server.log().count("Application shutdown complete") >= 2  # each drained and shut down
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{gateway.url}/health", timeout=2)
