"""Request records cannot fill the disk, and a full disk does not stop serving.

Real ``corral start`` processes serving one ``openai-compatible`` model in front of the
benchmarks' fast fake upstream (``corral.bench.fake_openai``, its own process), so the
gateway and its records are all that is measured:

- **disk full**: the server runs under a file-size rlimit (``RLIMIT_FSIZE``, SIGXFSZ
  ignored, set in the child before exec): once the records' SQLite WAL reaches it every
  write fails (``disk I/O error``, EFBIG), as on a full disk. Every request still answers 200 without
  slowing down, the drops are counted in ``/metrics``, the server warns once (not per
  request), and ``corral report`` reads what was written before;
- **size bound**: with ``records_max_mb`` at 256 KiB, 1,500 requests later the store is
  under its bound (used pages, and the file once checkpointed), the oldest rows are
  gone and the newest are there, and ``/metrics`` shows the size and what was pruned.
"""

from __future__ import annotations

import asyncio
import resource
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.servers import Server, corral_env, free_port, run_corral, wait_until

pytestmark = pytest.mark.integration

MODEL = "fast"
FSIZE_LIMIT = 256 * 1024  # bytes any file of the server may reach: the WAL fills after ~10 commits
BOUND_MB = 0.25


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "corral.bench.fake_openai", "--port", str(port), "--model", MODEL],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()  # "ready ..." once listening
    assert line.startswith("ready"), line
    yield f"http://127.0.0.1:{port}/v1"
    process.terminate()
    process.wait(10)


def _limit_file_size() -> None:
    """In the server's process, before exec: a file write past the limit fails with EFBIG
    (SIGXFSZ ignored, as its default action would kill the process), as on a full disk."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (FSIZE_LIMIT, FSIZE_LIMIT))


def start(folder: Path, upstream: str, server_table: str, preexec: Callable[[], None] | None = None) -> Server:
    db = folder / "records.db"
    config = folder / "corral.toml"
    config.write_text(
        f'[server]\nrecords = "sqlite:///{db}"\n{server_table}\n'
        f'[[models]]\nname = "{MODEL}"\nkind = "llm"\nengine = "openai-compatible"\nsource = "{upstream}"\n'
    )
    port = free_port()
    log_path = folder / "server.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "corral.cli.main", "start", "--config", str(config), "--port", str(port)],
            env=corral_env(folder / "home"), stdout=log, stderr=subprocess.STDOUT, preexec_fn=preexec,
        )
    server = Server(process, port, log_path)
    return wait_until(server, lambda: httpx.get(f"{server.url}/health/ready", timeout=2).status_code == 200, 120)


def chat(http: httpx.Client, rid: str) -> tuple[int, float]:
    t0 = time.perf_counter()
    resp = http.post("/v1/chat/completions", headers={"x-request-id": rid}, json={
        "model": MODEL, "messages": [{"role": "user", "content": "hello " * 20}], "max_tokens": 8})
    return resp.status_code, time.perf_counter() - t0


def metric(server: Server, name: str, **labels: str) -> float | None:
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    for line in text.splitlines():
        if line.startswith(name) and all(f'{k}="{v}"' in line for k, v in labels.items()):
            head = line.split(" ", 1)[0]
            if head == name or head.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
    return None


def recorded_ids(db: Path) -> set[str]:
    with sqlite3.connect(db, timeout=10) as conn:
        return {r[0] for r in conn.execute("SELECT request_id FROM corral_requests")}


def poll(check: Callable[[], bool], timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return check()


def test_a_full_disk_for_records_never_slows_or_fails_serving(upstream: str, tmp_path: Path) -> None:
    db = tmp_path / "records.db"
    server = start(tmp_path, upstream, 'log_level = "info"', preexec=_limit_file_size)
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            before = [chat(http, f"before-{i}") for i in range(20)]
            assert poll(lambda: {f"before-{i}" for i in range(20)} <= recorded_ids(db))
            # until the store fails (the WAL reaches the limit), then as many again
            after: list[tuple[int, float]] = []
            deadline = time.monotonic() + 120
            while not (metric(server, "corral_records_dropped_total", reason="store_error") or 0) and \
                    time.monotonic() < deadline:
                after += [chat(http, f"fill-{len(after)}-{i}") for i in range(25)]
            dropping_after = len(after)
            after += [chat(http, f"full-{i}") for i in range(200)]
            assert http.get("/health/ready").status_code == 200
        assert (metric(server, "corral_records_dropped_total", reason="store_error") or 0) > 0, server.log()
        assert {status for status, _ in before + after} == {200}
        # normal latency: the writer failing is off the request path (generous: a loaded machine)
        usual = statistics.median(t for _, t in before)
        full = [t for _, t in after[dropping_after:]]
        assert statistics.median(full) < 3 * usual + 0.05, (usual, statistics.median(full))
        assert max(full) < 5.0  # no request waited on the failing store
        # every request was counted once, recorded or not
        sent = len(before) + len(after)
        assert metric(server, "corral_requests_total", model=MODEL, outcome="ok") == sent
        log = server.log()
        outage = [line for line in log.splitlines() if "dropping request records" in line]
        assert len(outage) == 1, log  # once, not per request
        assert "is the disk full" in outage[0] and 'reason="store_error"' in outage[0] and "WARNING" in outage[0]
        # a batch that still fits in the full file may be written late: wait for the writer to be done
        written = recorded_ids(db)
        while True:
            time.sleep(1.5)
            again = recorded_ids(db)
            if again == written:
                break
            written = again
        assert {f"before-{i}" for i in range(20)} <= written and len(written) < sent
        report = run_corral(["report", "--records", f"sqlite:///{db}", "--since", "1h",
                             "--out", str(tmp_path / "report.html")], tmp_path / "home")
        assert report.returncode == 0, report.stderr
        assert MODEL in report.stdout and f"{len(written)} requests" in report.stdout
        assert server.process.poll() is None
    finally:
        assert server.stop() == 0, server.log()


def test_the_size_bound_keeps_the_newest_and_the_store_under_it(upstream: str, tmp_path: Path) -> None:
    db = tmp_path / "records.db"
    bound = int(BOUND_MB * 1024 * 1024)
    server = start(tmp_path, upstream, f'log_level = "info"\nrecords_max_mb = {BOUND_MB}')
    n = 1500

    async def send() -> list[int]:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
            statuses: list[int] = []
            for start_at in range(0, n, 50):  # 50 at a time, in order: ids sort by arrival
                batch = [http.post("/v1/chat/completions", headers={"x-request-id": f"b-{i:05d}"}, json={
                    "model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
                    for i in range(start_at, min(start_at + 50, n))]
                statuses += [r.status_code for r in await asyncio.gather(*batch)]
            return statuses

    try:
        assert set(asyncio.run(send())) == {200}
        newest = {f"b-{i:05d}" for i in range(n - 50, n)}  # the last 50, answered in any order
        assert poll(lambda: newest <= recorded_ids(db))
        assert poll(lambda: (metric(server, "corral_records_store_bytes") or bound + 1) <= bound)
        assert metric(server, "corral_records_store_max_bytes") == bound
        pruned = metric(server, "corral_records_pruned_total", reason="size") or 0
        ids = recorded_ids(db)
        assert pruned > 0 and len(ids) < n
        assert newest <= ids  # the newest are there
        assert not {f"b-{i:05d}" for i in range(100)} & ids  # the oldest are gone
        assert (metric(server, "corral_records_dropped_total", reason="queue_full") or 0) == 0
        with sqlite3.connect(db, timeout=10) as conn:
            pages, free, size = (conn.execute(f"PRAGMA {p}").fetchone()[0]
                                 for p in ("page_count", "freelist_count", "page_size"))
            assert (pages - free) * size <= bound * 1.1  # rows written since the last check at most
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        assert db.stat().st_size <= 2 * bound  # freed pages were reused: the file stopped growing
        log = server.log()
        assert log.count("of its bound") == 1, log  # the warning near the bound, once
    finally:
        assert server.stop() == 0, server.log()
