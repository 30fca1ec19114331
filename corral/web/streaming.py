"""A streamed response that always cleans up after itself.

Starlette starts iterating a streaming body only once it sends the response; a client
that leaves before that (or a server shutting down) means the body's async generator
never starts, and a generator that never started runs no ``finally``. Anything the body
holds (an engine's generation, an instance counted in flight, a request record still
to write) would leak. ``ClosingStreamingResponse`` runs ``on_close`` once the response is
over, however it ended, shielded from cancellation so the cleanup itself completes.
"""

from __future__ import annotations

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
    ) -> None:
        super().__init__(content, media_type=media_type, headers=headers)
        self._on_close = on_close

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
