"""A streamed response that always cleans up after itself, and can keep a quiet
connection visibly alive.

Starlette starts iterating a streaming body only once it sends the response; a client
that leaves before that (or a server shutting down) means the body's async generator
never starts, and a generator that never started runs no ``finally``. Anything the body
holds (an engine's generation, an instance counted in flight, a request record still
to write) would leak. ``ClosingStreamingResponse`` runs ``on_close`` once the response is
over, however it ended, shielded from cancellation so the cleanup itself completes.

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
        if self._keepalive is None:
            await super().stream_response(send)
            return
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        self._last_write = time.monotonic()
        pinger = asyncio.ensure_future(self._ping(send, *self._keepalive))
        try:
            async for chunk in self.body_iterator:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                self._last_write = time.monotonic()
        finally:
            pinger.cancel()
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _ping(self, send: Send, ping: bytes, every_s: float) -> None:
        while True:
            await asyncio.sleep(every_s - (time.monotonic() - self._last_write))
            if time.monotonic() - self._last_write >= every_s:
                self._last_write = time.monotonic()
                await send({"type": "http.response.body", "body": ping, "more_body": True})
