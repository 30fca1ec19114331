"""``LingeringClose`` over real HTTP (uvicorn with httptools), with small bounds: a 413
sent before the body was read carries ``Connection: close``; the body is then drained
until it ends (a clean close), or until the size or time bound (the server stops
reading); other answers are left alone."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from corral.web.body import read_body
from corral.web.errors import exception_handlers
from corral.web.middleware import LingeringClose
from tests.integration.servers import free_port
from tests.unit.web.raw_http import read_answer

LIMIT = 1024
LINGER_S = 0.5
LINGER_BYTES = 1024 * 1024


async def echo(request: Request) -> Response:
    return Response(str(len(await read_body(request, LIMIT))))


@pytest.fixture
async def port() -> AsyncIterator[int]:
    app = Starlette(routes=[Route("/echo", echo, methods=["POST"])], exception_handlers=exception_handlers())
    number = free_port()
    config = uvicorn.Config(LingeringClose(app, LINGER_S, LINGER_BYTES), host="127.0.0.1", port=number,
                            http="httptools", lifespan="off", log_level="warning")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    yield number
    server.should_exit = True
    await task


def request_head(length: int | None) -> bytes:
    framing = b"transfer-encoding: chunked" if length is None else b"content-length: %d" % length
    return b"POST /echo HTTP/1.1\r\nhost: t\r\n%s\r\n\r\n" % framing


async def closed(reader: asyncio.StreamReader, within: float) -> str:
    """How the server ended the connection: "eof" (after reading all), "reset", or "open"."""
    try:
        data = await asyncio.wait_for(reader.read(1), within)
    except TimeoutError:
        return "open"
    except ConnectionResetError:
        return "reset"
    return "eof" if not data else f"data {data!r}"


async def test_a_refused_body_that_ends_is_drained_and_closed_cleanly(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request_head(64 * 1024))
    await writer.drain()
    head, body = await read_answer(reader)  # answered before the body was sent
    assert head.startswith(b"http/1.1 413 ") and b"\r\nconnection: close" in head
    assert b'"code":"request_too_large"' in body
    writer.write(b" " * 64 * 1024)  # the client sends its body anyway: read and dropped
    await writer.drain()
    assert await closed(reader, 5) == "eof"
    writer.close()


async def test_an_endless_body_is_read_up_to_the_size_bound(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request_head(1 << 40))
    head, _ = await read_answer(reader)
    assert head.startswith(b"http/1.1 413 ")
    sent, started = 0, time.monotonic()
    try:
        while sent < 64 * LINGER_BYTES and time.monotonic() - started < 10:
            writer.write(b" " * 65536)
            await writer.drain()
            sent += 65536
    except (ConnectionResetError, BrokenPipeError):
        pass
    assert sent < 16 * LINGER_BYTES  # the server stopped reading at its bound (plus socket buffers)
    assert time.monotonic() - started < LINGER_S + 3
    writer.close()


async def test_a_stalled_body_is_waited_for_the_time_bound(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request_head(1 << 20) + b" " * 4096)
    started = time.monotonic()
    head, _ = await read_answer(reader)
    assert head.startswith(b"http/1.1 413 ")
    assert await closed(reader, 5) in ("eof", "reset")
    assert LINGER_S - 0.1 < time.monotonic() - started < LINGER_S + 2
    writer.close()


async def test_a_client_waiting_for_100_continue_is_refused_without_it(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /echo HTTP/1.1\r\nhost: t\r\ncontent-length: 1048576\r\nexpect: 100-continue\r\n\r\n")
    started = time.monotonic()
    head, _ = await read_answer(reader)
    assert head.startswith(b"http/1.1 413 ") and b"\r\nconnection: close" in head
    # no "100 Continue" after the final answer, and no wait for a body that will not come
    assert await closed(reader, 5) == "eof"
    assert time.monotonic() - started < LINGER_S
    writer.close()


async def test_other_answers_keep_the_connection(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for size in (10, 100):
        writer.write(request_head(size) + b" " * size)
        head, body = await read_answer(reader)
        assert head.startswith(b"http/1.1 200 ") and b"connection: close" not in head and body == str(size).encode()
    # a chunked body over the limit, refused part way: 413 and close
    writer.write(request_head(None) + b"800\r\n" + b" " * 2048 + b"\r\n")
    head, _ = await read_answer(reader)
    assert head.startswith(b"http/1.1 413 ") and b"\r\nconnection: close" in head
    writer.write(b"0\r\n\r\n")  # the body ends: a clean close
    assert await closed(reader, 5) == "eof"
    writer.close()


def test_every_server_app_lingers() -> None:
    from corral.core.spec import ServerSettings
    from corral.gateway.app import create_gateway_app
    from corral.gateway.router import Router
    from corral.registry.embedded import EmbeddedRegistry
    from corral.worker.server import create_worker_app
    from corral.worker.worker import Worker

    registry = EmbeddedRegistry()
    gateway = create_gateway_app(Router(registry, lambda r: None), ServerSettings(), lambda: (True, {}))
    worker = create_worker_app(Worker(registry, "w1"), None)
    for app in (gateway, worker):
        assert app.user_middleware[0].cls is LingeringClose  # outermost: it sees every answer
