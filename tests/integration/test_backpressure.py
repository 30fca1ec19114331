"""Load is not failure: many concurrent slow streams through one ``openai-compatible``
instance of a real ``corral start``, the upstream being the shipped fake
(``corral.bench.fake_openai``) sending each stream's chunks half a second apart.

More streams than the engine has pooled connections: the extra ones wait for a
connection in a bounded queue and are served, the rest are refused with 429 and
``Retry-After``; none is a 503, and the model's only instance is never ejected (before
this, the wait for a connection hit the connect timeout, counted as the upstream's
failure, and ejected the instance). A real outage of the upstream (killed) is still
reported at once, with the upstream's own error, and serving resumes when it is back.
"""

from __future__ import annotations

import asyncio
import collections
import os
import resource
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.integration.conftest import write_config
from tests.integration.servers import Server, free_port, start_corral

MODEL = "proxied"
CONNECTIONS = 200  # the engine's pooled connections
QUEUED = 200  # requests waiting for one
STREAMS = 800  # concurrent streams sent
TOKENS = 9  # a stream: a role chunk, 9 tokens half a second apart, the finish
DELAY_MS = 500


@dataclass
class FakeUpstream:
    port: int
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> None:
        command = [sys.executable, "-m", "corral.bench.fake_openai", "--port", str(self.port), "--model", "fake",
                   "--delay-ms", str(DELAY_MS)]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.05)
        raise RuntimeError(f"the fake upstream did not start:\n{self.log_path.read_text()}")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(10)


@dataclass
class Proxy:
    server: Server
    upstream: FakeUpstream
    db: Path

    def rows(self, expected: int, timeout: float = 30) -> list[dict[str, Any]]:
        """The request records, once there are at least ``expected`` (they are written in batches)."""
        deadline = time.monotonic() + timeout
        while True:
            conn = sqlite3.connect(self.db, timeout=5)
            conn.row_factory = sqlite3.Row
            try:
                rows = [dict(r) for r in conn.execute("SELECT * FROM corral_requests ORDER BY time")]
            except sqlite3.OperationalError:
                rows = []
            finally:
                conn.close()
            if len(rows) >= expected or time.monotonic() > deadline:
                return rows
            time.sleep(0.1)

    def metrics(self) -> str:
        return httpx.get(f"{self.server.url}/metrics", timeout=10).text


def enough_file_descriptors(needed: int) -> None:
    """Raise this process's soft limit (the servers it starts inherit it): a default of
    1,024 is less than the sockets of this load in one process."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


@pytest.fixture(scope="module")
def proxy(corral_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    enough_file_descriptors(4 * STREAMS)
    folder = tmp_path_factory.mktemp("backpressure")
    upstream = FakeUpstream(free_port(), folder / "fake-upstream.log")
    upstream.start()
    db = folder / "records.db"
    config = write_config(folder, f"""
[server]
records = "sqlite:///{db}"

[[models]]
name = "{MODEL}"
kind = "llm"
engine = "openai-compatible"
source = "{upstream.url}"
[models.options]
upstream_model = "fake"
max_connections = {CONNECTIONS}
max_queued = {QUEUED}
queue_timeout_s = 60
connect_timeout_s = 2
""")
    server = start_corral(["--config", str(config)], corral_home, folder)
    try:
        yield Proxy(server, upstream, db)
    finally:
        server.stop()
        upstream.kill()


@dataclass
class Outcome:
    status: int
    retry_after: str | None = None
    error: dict[str, Any] | None = None
    tokens: int = 0
    finished: bool = False


async def stream_one(http: httpx.AsyncClient, i: int) -> Outcome:
    body = {"model": MODEL, "messages": [{"role": "user", "content": f"stream {i}"}], "max_tokens": TOKENS,
            "stream": True}
    async with http.stream("POST", "/v1/chat/completions", json=body) as resp:
        if resp.status_code != 200:
            await resp.aread()
            return Outcome(resp.status_code, resp.headers.get("retry-after"), resp.json().get("error"))
        out = Outcome(200)
        async for line in resp.aiter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                out.finished = True
                continue
            for choice in orjson.loads(line[6:]).get("choices") or ():
                out.tokens += bool(choice["delta"].get("content"))
        return out


async def send_streams(url: str, n: int) -> list[Outcome | BaseException]:
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(base_url=url, timeout=180, limits=limits) as http:
        return await asyncio.gather(*(stream_one(http, i) for i in range(n)), return_exceptions=True)


def ejections(metrics: str) -> list[str]:
    return [line for line in metrics.splitlines() if line.startswith("corral_ejections_total{")]


def test_streams_beyond_the_pool_wait_or_get_429_never_503(proxy: Proxy) -> None:
    started = time.monotonic()
    outcomes = asyncio.run(send_streams(proxy.server.url, STREAMS))
    took = time.monotonic() - started
    errors = [o for o in outcomes if isinstance(o, BaseException)]
    assert not errors, errors[:3]
    done = [o for o in outcomes if isinstance(o, Outcome)]
    statuses = collections.Counter(o.status for o in done)
    assert set(statuses) <= {200, 429}, statuses  # on the old code: thousands of 503s
    served = [o for o in done if o.status == 200]
    # every stream that got a connection, or a place in the queue, was served whole
    assert len(served) >= CONNECTIONS + QUEUED, statuses
    assert all(o.tokens == TOKENS and o.finished for o in served)
    for refused in (o for o in done if o.status == 429):
        assert refused.error is not None and refused.error["code"] == "overloaded", refused.error
        assert "is at capacity" in refused.error["message"] and "max_queued" in refused.error["message"]
        assert refused.retry_after is not None and int(refused.retry_after) >= 1
    print(f"{STREAMS} streams in {took:.1f}s: {dict(statuses)}")

    # what the gateway recorded agrees, and it never took the instance out of rotation
    rows = proxy.rows(STREAMS)
    assert len(rows) == STREAMS
    assert collections.Counter(r["http_status"] for r in rows) == statuses
    assert {r["outcome"] for r in rows if r["http_status"] == 200} == {"ok"}
    assert all(r["completion_tokens"] == TOKENS for r in rows if r["http_status"] == 200)
    metrics = proxy.metrics()
    assert ejections(metrics) == []
    assert any(line.startswith("corral_instance_up{") and line.endswith(" 1.0") for line in metrics.splitlines())
    ready = httpx.get(f"{proxy.server.url}/health/ready", timeout=10)
    assert ready.status_code == 200, ready.text
    (instance,) = ready.json()["models"][MODEL]["instances"]
    assert (instance["state"], instance["in_flight"], instance["queued"]) == ("ready", 0, 0)


def test_a_dead_upstream_is_reported_at_once_and_serving_resumes(proxy: Proxy) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    before = len(proxy.rows(0))
    proxy.upstream.kill()
    try:
        for _ in range(5):  # more than the 3 consecutive failures that eject an instance
            started = time.monotonic()
            resp = httpx.post(f"{proxy.server.url}/v1/chat/completions", json=body, timeout=30)
            assert time.monotonic() - started < 5  # refused connections fail fast, no queueing behind them
            assert resp.status_code == 503, resp.text
            err = resp.json()["error"]
            # the upstream's own failure, not "no instance"
            assert err["code"] == "instance_unreachable", err
            assert f"127.0.0.1:{proxy.upstream.port}" in err["message"] and "did not answer" in err["message"]
        # the failing streak was seen and logged, but the only instance stays in rotation
        assert "failed 3 times in a row; not ejected" in proxy.server.log()
        assert ejections(proxy.metrics()) == []
    finally:
        proxy.upstream.start()
    resp = httpx.post(f"{proxy.server.url}/v1/chat/completions", json=body, timeout=30)
    assert resp.status_code == 200, resp.text  # back at once: no ejection to wait out
    rows = proxy.rows(before + 6)[before:]
    assert [r["http_status"] for r in rows] == [503] * 5 + [200]
    assert all("did not answer" in r["error"] for r in rows[:5])
