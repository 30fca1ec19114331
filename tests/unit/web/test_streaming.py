"""ClosingStreamingResponse cleans up even when its body never starts."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from starlette.requests import ClientDisconnect

from corral.web.streaming import ClosingStreamingResponse


async def test_client_gone_before_the_body_started() -> None:
    started: list[bool] = []
    closed: list[str] = []

    async def body() -> AsyncIterator[bytes]:
        started.append(True)
        try:
            yield b"data: 1\n\n"
        finally:
            closed.append("body")

    async def on_close() -> None:
        closed.append("on_close")

    async def receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        raise OSError("connection reset")  # an ASGI 2.4 server: sending to a departed client fails

    response = ClosingStreamingResponse(body(), on_close, "text/event-stream")
    with pytest.raises(ClientDisconnect):
        await response({"type": "http", "asgi": {"spec_version": "2.4"}}, receive, send)
    assert started == [] and closed == ["on_close"]  # a never-started generator runs no finally


async def test_normal_end_closes_once() -> None:
    closed: list[str] = []

    async def body() -> AsyncIterator[bytes]:
        yield b"a"
        yield b"b"

    async def on_close() -> None:
        closed.append("on_close")

    async def receive() -> dict[str, Any]:
        import asyncio

        await asyncio.sleep(10)  # the client stays
        return {"type": "http.disconnect"}

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await ClosingStreamingResponse(body(), on_close, "text/plain")({"type": "http"}, receive, send)
    bodies = [m.get("body") for m in sent[1:]]
    assert b"".join(bodies) == b"ab" and bodies[-1] == b"" and closed == ["on_close"]


async def test_keepalive_while_the_body_is_silent() -> None:
    import asyncio

    async def body() -> AsyncIterator[bytes]:
        await asyncio.sleep(0.35)  # silent: a long prefill
        yield b"data: 1\n\n"
        yield b"data: 2\n\n"  # no ping between chunks that come together

    async def on_close() -> None:
        pass

    async def receive() -> dict[str, Any]:
        await asyncio.sleep(10)
        return {"type": "http.disconnect"}

    sent: list[bytes] = []

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            sent.append(message.get("body", b""))

    response = ClosingStreamingResponse(body(), on_close, "text/event-stream", keepalive=(b": ping\n\n", 0.1))
    await response({"type": "http"}, receive, send)
    pings = sent.index(b"data: 1\n\n")
    assert 2 <= pings <= 4 and set(sent[:pings]) == {b": ping\n\n"}
    assert b"".join(sent[pings:]) == b"data: 1\n\ndata: 2\n\n" and sent[-1] == b""  # no ping between them


async def test_a_burst_leaves_in_fewer_writes_and_a_trickle_one_by_one() -> None:
    import asyncio

    async def burst() -> AsyncIterator[bytes]:
        for i in range(10):  # produced without waiting: as from a buffer of upstream events
            yield b"%d," % i
        await asyncio.sleep(0.05)  # then a token at a time
        yield b"x,"
        await asyncio.sleep(0.05)
        yield b"y,"

    async def on_close() -> None:
        pass

    async def receive() -> dict[str, Any]:
        await asyncio.sleep(10)
        return {"type": "http.disconnect"}

    sent: list[bytes] = []

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            sent.append(message.get("body", b""))

    await ClosingStreamingResponse(burst(), on_close, "text/plain")({"type": "http"}, receive, send)
    assert b"".join(sent) == b"0,1,2,3,4,5,6,7,8,9,x,y,"
    assert sent[0] == b"0,"  # the first at once
    assert sent[1] == b"1,2,3,4,5,6,7,8,9,"  # the rest of the burst in one write
    assert sent[2:] == [b"x,", b"y,", b""]  # a trickle is not held back


async def test_a_writer_that_fails_does_not_leave_the_producer_waiting() -> None:
    """A client gone on an ASGI 2.4 server: ``send`` raises while the producer is ahead
    of the socket by more than the outbox holds. The response ends with the error."""
    import asyncio

    produced: list[int] = []

    async def body() -> AsyncIterator[bytes]:
        for i in range(64):
            produced.append(i)
            yield b"x" * 65536  # 4 MiB in all: far more than the outbox holds

    closed: list[bool] = []

    async def on_close() -> None:
        closed.append(True)

    async def receive() -> dict[str, Any]:
        await asyncio.sleep(10)
        return {"type": "http.disconnect"}

    bodies = 0

    async def send(message: dict[str, Any]) -> None:
        nonlocal bodies
        if message["type"] == "http.response.body":
            bodies += 1
            if bodies > 1:
                await asyncio.sleep(0.01)
                raise OSError("connection reset")

    response = ClosingStreamingResponse(body(), on_close, "application/octet-stream")
    with pytest.raises(ClientDisconnect):
        await asyncio.wait_for(response({"type": "http", "asgi": {"spec_version": "2.4"}}, receive, send), 5)
    assert closed == [True] and len(produced) < 64
