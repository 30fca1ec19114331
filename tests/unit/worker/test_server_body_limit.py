"""The worker's internal API refuses a body over its limit (64 MiB) like every server:
413 in the error JSON with ``Connection: close``, answered before the body is read,
then a lingering close (``corral.web.middleware.LingeringClose``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import orjson
import pytest

from corral.cluster.wire import encode_embedding
from corral.core.types import EmbeddingRequest, EmbeddingResult, EngineLoad, Usage
from corral.worker.server import MAX_INTERNAL_BODY
from tests.unit.worker.serving import serving_worker
from tests.unit.web.raw_http import header, read_answer


class Embedder:
    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def load(self) -> EngineLoad:
        return EngineLoad()

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResult:
        return EmbeddingResult([[0.0]] * len(request.inputs), Usage(1, 0))


@pytest.fixture
async def worker_port(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[int]:
    async with serving_worker(monkeypatch, Embedder, "tok") as port:
        yield port


async def test_an_oversized_internal_body_gets_413_and_a_lingering_close(worker_port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", worker_port)
    writer.write(
        b"POST /internal/v1/instances/e-1/embed HTTP/1.1\r\nhost: w\r\nauthorization: Bearer tok\r\n"
        b"content-length: %d\r\n\r\n" % (MAX_INTERNAL_BODY + 1)
    )
    await writer.drain()
    head, body = await read_answer(reader)
    assert head.startswith(b"http/1.1 413 ") and header(head, b"connection") == b"close"
    error = orjson.loads(body)["error"]
    assert error["code"] == "request_too_large" and str(MAX_INTERNAL_BODY) in error["message"]
    # the body the gateway was sending is still read (and dropped) until it ends, then the
    # server closes the connection cleanly
    left = MAX_INTERNAL_BODY + 1
    while left:
        chunk = min(left, 1024 * 1024)
        writer.write(b" " * chunk)
        await writer.drain()
        left -= chunk
    assert await asyncio.wait_for(reader.read(), 10) == b""
    writer.close()


async def test_a_body_within_the_limit_is_served_on_a_kept_connection(worker_port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", worker_port)
    body = encode_embedding(EmbeddingRequest("r1", "e", ("x",)))
    for _ in range(2):
        writer.write(
            b"POST /internal/v1/instances/e-1/embed HTTP/1.1\r\nhost: w\r\nauthorization: Bearer tok\r\n"
            b"content-length: %d\r\n\r\n%s" % (len(body), body)
        )
        head, _ = await read_answer(reader)
        assert head.startswith(b"http/1.1 200 ") and header(head, b"connection") is None
    writer.close()
