"""The iterator engines return from ``generate``.

An async generator that was never started runs no ``finally`` when closed, so a
consumer that gives up before the first item (a client gone before the response
started) would leave the engine generating. ``ClosingStream`` runs ``on_close``
whenever it is closed, started or not.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable

from corral.core.types import GenerationChunk, GenerationEnd

Item = GenerationChunk | GenerationEnd


class ClosingStream:
    __slots__ = ("_gen", "_on_close")

    def __init__(self, gen: AsyncGenerator[Item, None], on_close: Callable[[], None]) -> None:
        self._gen = gen
        self._on_close: Callable[[], None] | None = on_close

    def __aiter__(self) -> ClosingStream:
        return self

    async def __anext__(self) -> Item:
        return await self._gen.__anext__()

    async def aclose(self) -> None:
        """Idempotent: several owners (a response, a pipeline call) may close it."""
        try:
            await self._gen.aclose()
        finally:
            on_close, self._on_close = self._on_close, None
            if on_close is not None:
                on_close()
