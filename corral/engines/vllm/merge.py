"""Several vLLM output streams read as one, for the vllm engine's fanned-out requests.

vLLM refuses greedy sampling with ``n > 1``; OpenAI answers it with n (greedy) choices,
so the engine sends n requests of one choice each and reads them together here.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from typing import TypeVar

T = TypeVar("T")

_END = object()


async def merged(sources: list[AsyncGenerator[T, None]]) -> AsyncIterator[tuple[int, T]]:
    """Every item of every source as it comes, with the source's position; the first
    error of any source is raised. Closing this closes every source (for vLLM, that
    aborts its request)."""
    if len(sources) == 1:  # the common case: no tasks
        async with contextlib.aclosing(sources[0]) as only:
            async for item in only:
                yield 0, item
        return
    queue: asyncio.Queue[tuple[int, object]] = asyncio.Queue()

    async def pump(position: int, source: AsyncGenerator[T, None]) -> None:
        try:
            async with contextlib.aclosing(source):
                async for item in source:
                    queue.put_nowait((position, item))
        except Exception as exc:
            queue.put_nowait((position, exc))
            return
        queue.put_nowait((position, _END))

    tasks = [asyncio.get_running_loop().create_task(pump(i, s)) for i, s in enumerate(sources)]
    try:
        running = len(tasks)
        while running:
            position, item = await queue.get()
            if item is _END:
                running -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield position, item  # type: ignore[misc]
    finally:
        for task in tasks:
            task.cancel()  # a source still waiting for vLLM is closed from inside its task
        await asyncio.gather(*tasks, return_exceptions=True)
