"""Light workers and steady load for the fault tests, and the check that a gateway
accounted for that load exactly.

Workers stay light with openai-compatible engines in front of the benchmark's fake
upstream (``corral.bench.fake_openai``, a process of its own pacing its tokens, each
``FAKE_TOKEN``): no torch,
so a worker starts in a second or two. ``Load`` sends non-streamed chats with their own
request ids, so its answers can be matched with the gateway's records."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from corral.bench.fake_openai import TOKEN as FAKE_TOKEN
from tests.integration.cluster.recorded import metric, rows
from tests.integration.servers import corral_env, free_port


@contextmanager
def fake_upstream(home: Path, log: Path, delay_ms: float) -> Iterator[str]:
    """The fake OpenAI server in a process of its own; yields its base URL (``.../v1``)."""
    port = free_port()
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "corral.bench.fake_openai", "--port", str(port), "--delay-ms", str(delay_ms),
             "--model", "fake"],
            env=corral_env(home), stdout=out, stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the fake upstream did not start: {log.read_text()}")
            time.sleep(0.1)
        yield f"{url}/v1"
    finally:
        process.terminate()
        process.wait(10)


def light_config(path: Path, upstream: str, model: str, routing: str = "round_robin") -> Path:
    """A worker config serving ``model`` from the fake upstream."""
    path.write_text(
        f'[[models]]\nname = "{model}"\nkind = "llm"\nengine = "openai-compatible"\nsource = "{upstream}"\n'
        f'routing = "{routing}"\n[models.options]\nupstream_model = "fake"\nverify_on_start = false\n'
    )
    return path


@dataclass
class Sent:
    request_id: str
    status: int  # -1: no HTTP answer
    instance: str | None
    seconds: float


@dataclass
class Load:
    """Non-streamed chats of ``tokens`` tokens from background threads, each with its own
    ``x-request-id`` (``PREFIX-thread-n``), until ``stop``."""

    url: str
    model: str
    prefix: str
    tokens: int
    threads: int = 4
    pause_s: float = 0.0
    sent: list[Sent] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._workers = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(self.threads)]
        for t in self._workers:
            t.start()

    def _run(self, thread: int) -> None:
        body = {"model": self.model, "messages": [{"role": "user", "content": "hi there"}], "max_tokens": self.tokens}
        with httpx.Client(timeout=60) as client:
            n = 0
            while not self._stop.is_set():
                rid = f"{self.prefix}-{thread}-{n}"
                n += 1
                started = time.monotonic()
                try:
                    resp = client.post(f"{self.url}/v1/chat/completions", json=body, headers={"x-request-id": rid})
                    status, instance = resp.status_code, resp.headers.get("x-corral-instance")
                except httpx.HTTPError:
                    status, instance = -1, None
                self.sent.append(Sent(rid, status, instance, time.monotonic() - started))
                if self.pause_s:
                    self._stop.wait(self.pause_s)

    def stop(self) -> list[Sent]:
        self._stop.set()
        for t in self._workers:
            t.join(90)
        return self.sent


def ok_total(gateway_url: str, model: str) -> float:
    return metric(gateway_url, "corral_requests_total", model=model, outcome="ok")


def check_recorded(
    db: Path, gateway_url: str, load: Load, ok_before: float, text: str | None = None
) -> list[dict[str, Any]]:
    """Every request of the load answered 200 and recorded exactly once, as ``ok`` on the
    instance that answered with its tokens (a retried one's lost attempt adds none) and,
    when the gateway captures it, ``text``; the gateway's
    ``corral_requests_total{outcome="ok"}`` grew by as many. The rows."""
    sent = load.sent
    assert sent, "the load sent nothing"
    statuses = {s.status for s in sent}
    assert statuses == {200}, [s for s in sent if s.status != 200][:5]
    deadline = time.monotonic() + 15  # the records writer flushes in batches
    while len(recorded := rows(db, "request_id LIKE ?", (f"{load.prefix}-%",))) < len(sent) and time.monotonic() < deadline:
        time.sleep(0.2)
    by_id = {r["request_id"]: r for r in recorded}
    assert len(by_id) == len(recorded) == len(sent), (len(recorded), len(sent))  # none lost, none twice
    for s in sent:
        row = by_id[s.request_id]
        assert (row["outcome"], row["http_status"], row["instance_id"]) == ("ok", 200, s.instance), row
        assert row["completion_tokens"] == load.tokens, row
        assert row["completion_text"] == text, row
    assert ok_total(gateway_url, load.model) - ok_before == len(sent)
    return recorded
