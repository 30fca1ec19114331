"""The gateway's catch-all over real HTTP (uvicorn with httptools, as ``corral start``):
an unexpected exception (an engine bug before its stream starts) becomes a JSON 500 in
OpenAI's error format, logged once with its traceback, and the connection is kept
(Starlette's ``Exception`` handler would re-raise: a second log from uvicorn and a
closed connection)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import orjson
import pytest
import uvicorn

from corral.core.registry import InstanceRecord, InstanceState
from corral.core.spec import ModelKind, ServerSettings
from corral.core.types import EngineLoad, GenerationRequest
from corral.gateway.app import create_gateway_app
from corral.gateway.router import Router
from corral.registry.embedded import EmbeddedRegistry
from tests.integration.servers import free_port
from tests.unit.web.raw_http import header, read_answer


class BuggyEngine:
    """``generate`` fails with an exception that is no Corral error."""

    def load(self) -> EngineLoad:
        return EngineLoad()

    async def generate(self, request: GenerationRequest) -> None:
        raise ZeroDivisionError("secret internal detail")


@pytest.fixture
async def gateway() -> AsyncIterator[int]:
    registry = EmbeddedRegistry()
    await registry.open()
    router = Router(registry, lambda record: BuggyEngine())
    await router.start()
    await registry.put(InstanceRecord(
        "buggy-1", "buggy", ModelKind.LLM, "fake", "w1", InstanceState.READY,
        capabilities=frozenset({"chat", "completion"}),
    ))
    app = create_gateway_app(router, ServerSettings(), lambda: (True, {}))
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, http="httptools", lifespan="off", log_level="warning")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    yield port
    server.should_exit = True
    await task
    await router.stop()
    await registry.close()


async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, body: bytes) -> tuple[bytes, bytes]:
    """One request on an open connection: the head and body of its answer."""
    writer.write(
        b"POST /v1/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n%s" % (len(body), body)
    )
    await writer.drain()
    return await read_answer(reader)


async def test_an_unexpected_exception_is_a_json_500_logged_once_on_a_kept_connection(
    gateway: int, caplog: pytest.LogCaptureFixture
) -> None:
    body = orjson.dumps({"model": "buggy", "prompt": "hi", "max_tokens": 1})
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway)
    try:
        with caplog.at_level(logging.INFO):
            for _ in range(2):  # the same connection serves the second request: it was kept
                head, answer = await exchange(reader, writer, body)
                assert head.startswith(b"http/1.1 500 ")
                assert header(head, b"content-type") == b"application/json" and header(head, b"connection") is None
                error = orjson.loads(answer)["error"]
                assert error["type"] == "server_error" and error["code"] == "internal_error"
                rid = header(head, b"x-request-id")
                assert rid and error["message"] == f"internal error (request id {rid.decode()})"
                assert b"secret internal detail" not in answer and b"Traceback" not in answer
    finally:
        writer.close()
    with_traceback = [r for r in caplog.records if r.exc_info and r.exc_info[0] is ZeroDivisionError]
    assert len(with_traceback) == 2  # once per request
    assert not any("Exception in ASGI application" in r.getMessage() for r in caplog.records)

