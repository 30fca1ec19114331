"""A client that leaves while its request is still waiting for the engine (the response
not started yet) must not leak: the instance's in-flight count returns to zero, the
upstream request is closed, and the request is counted once, as cancelled.

The engine here is openai-compatible attached to the loopback fake upstream of its unit
tests, whose ``hang-slow`` model waits 3 s before answering, then streams until its
client leaves. When the answer comes, the gateway either notices the departed client
before its response body starts (the body never runs: ``ClosingStreamingResponse``
cleans up, see tests/unit/web/test_streaming.py for that path made deterministic) or
right after; both must end the same way."""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from tests.integration.servers import Server, start_corral
from tests.unit.engines.openai_compatible.fake_upstream import FakeUpstream

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream() as fake:
        yield fake


@pytest.fixture(scope="module")
def server(upstream: FakeUpstream, corral_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    logs = tmp_path_factory.mktemp("disconnects")
    config = logs / "models.toml"
    config.write_text(
        f'[[models]]\nname = "slow-start"\nkind = "llm"\nengine = "openai-compatible"\nsource = "{upstream.url}"\n'
        '[models.options]\nupstream_model = "hang-slow"\nverify_on_start = false\n'
    )
    server = start_corral(["--config", str(config), "--log-level", "debug"], corral_home, logs)
    yield server
    server.stop()


def _metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _send_and_leave(server: Server, stream: bool) -> None:
    """A raw client: send the request, wait until the gateway is waiting on the upstream, hang up."""
    body = orjson.dumps({"model": "slow-start", "messages": [{"role": "user", "content": "hi"}], "stream": stream})
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            + b"content-length: %d\r\n\r\n" % len(body) + body
        )
        time.sleep(1.0)  # the fake upstream answers after 3 s


@pytest.mark.parametrize("stream", [True, False])
def test_client_gone_before_the_response_started(server: Server, upstream: FakeUpstream, stream: bool) -> None:
    before = httpx.get(f"{server.url}/metrics").text
    cancelled = _metric(before, "corral_requests_total", model="slow-start", outcome="cancelled")
    _send_and_leave(server, stream)
    deadline = time.monotonic() + 15
    while True:
        text = httpx.get(f"{server.url}/metrics").text
        in_flight = _metric(text, "corral_requests_in_flight", model="slow-start")
        finished = _metric(text, "corral_requests_total", model="slow-start", outcome="cancelled") - cancelled
        if (in_flight, finished) == (0, 1) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert in_flight == 0, "the instance is still counted busy"
    assert upstream.seen.disconnected.wait(5), "the upstream request was not closed"
    upstream.seen.disconnected.clear()
    assert finished == 1, re.findall(r"corral_requests_total\{[^}]*slow-start[^\n]*", text)
    # the gateway keeps serving that instance (nothing stuck in its queue)
    assert httpx.get(f"{server.url}/health/ready").status_code == 200
