"""A streamed response that always cleans up after itself, and can keep a quiet
connection visibly alive.

Starlette starts iterating a streaming body only once it sends the response; a client
that leaves before that (or a server shutting down) means the body's async generator
never starts, and a generator that never started runs no ``finally``. Anything the body
holds (an engine's generation, an instance counted in flight, a request record still
to write) would leak. ``ClosingStreamingResponse`` runs ``on_close`` once the response is
over, however it ended, shielded from cancellation so the cleanup itself completes.

Chunks that come faster than one per event-loop turn leave in one socket write (see
``stream_response``): under load, a gateway catches up with fewer, larger writes.

With ``keepalive=(bytes, seconds)`` it also writes those bytes whenever the body has
been silent that long (a long prefill, a whole answer computed before its one write),
so the reader can bound silence with a read timeout and tell a slow engine from a dead
peer. The bytes must mean nothing to the reader (a blank NDJSON line, an SSE comment).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import anyio
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send


class ClosingStreamingResponse(StreamingResponse):
    def __init__(
        self,
        content: AsyncIterator[bytes],
        on_close: Callable[[], Awaitable[None]],
        media_type: str,
        headers: dict[str, str] | None = None,
        keepalive: tuple[bytes, float] | None = None,
    ) -> None:
        super().__init__(content, media_type=media_type, headers=headers)
        self._on_close = on_close
        self._keepalive = keepalive
        self._last_write = 0.0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                try:
                    aclose = getattr(self.body_iterator, "aclose", None)
                    if aclose is not None:
                        await aclose()
                finally:
                    await self._on_close()

    async def stream_response(self, send: Send) -> None:
        """The body, written by a writer task that takes every chunk produced since its
        last write: while chunks arrive one at a time (tokens), each is written at once
        (one event-loop turn later); when they come faster than the socket takes them (a
        burst from the upstream, a gateway catching up), they leave in one write. The
        producer waits when a client reads slower than the engine writes."""
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        self._last_write = time.monotonic()
        out = _Outbox()
        writer = asyncio.ensure_future(self._write(send, out))
        pinger = asyncio.ensure_future(self._ping(out, *self._keepalive)) if self._keepalive else None
        first = True
        try:
            async for chunk in self.body_iterator:
                if writer.done():
                    break  # the writer failed (client gone): its error is raised below
                if first and out.empty():
                    # the first chunk (time to first token) skips the writer's turn
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                else:
                    await out.put(chunk)
                first = False
                self._last_write = time.monotonic()
        except BaseException:
            writer.cancel()  # cancelled (client gone) or failed: nothing more is written
            raise
        finally:
            if pinger is not None:
                pinger.cancel()
            out.close()
        await writer  # the rest, or the writer's error
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _write(self, send: Send, out: _Outbox) -> None:
        try:
            while True:
                data = await out.take()
                if data is None:
                    return
                await send({"type": "http.response.body", "body": data, "more_body": True})
        finally:
            out.close()  # a producer waiting for room must not wait for a writer that is gone

    async def _ping(self, out: _Outbox, ping: bytes, every_s: float) -> None:
        while True:
            await asyncio.sleep(every_s - (time.monotonic() - self._last_write))
            if time.monotonic() - self._last_write >= every_s:
                self._last_write = time.monotonic()
                await out.put(ping)


class _Outbox:
    """Chunks between the producer and the writer; bounded so a slow reader slows the
    producer instead of filling memory."""

    LIMIT = 256 * 1024  # bytes waiting for the socket

    __slots__ = ("_chunks", "_size", "_ready", "_room", "_closed")

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self._size = 0
        self._ready = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._closed = False

    async def put(self, chunk: bytes) -> None:
        if self._size >= self.LIMIT and not self._closed:
            self._room.clear()
            await self._room.wait()
        self._chunks.append(chunk)
        self._size += len(chunk)
        self._ready.set()

    def empty(self) -> bool:
        return not self._chunks

    def close(self) -> None:
        self._closed = True
        self._ready.set()
        self._room.set()

    async def take(self) -> bytes | None:
        """Everything put since the last take, in one piece; None once closed and empty."""
        while not self._chunks:
            if self._closed:
                return None
            self._ready.clear()
            await self._ready.wait()
        chunks, self._chunks, self._size = self._chunks, [], 0
        self._room.set()
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)
