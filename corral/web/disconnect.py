"""Cancelling a non-streamed request's work when its client leaves.

A streamed response notices a departed client as it writes (``ClosingStreamingResponse``),
but a non-streamed generation writes nothing until its end: without a watch, a client
that timed out would leave the engine generating for nobody. ``unless_client_leaves``
runs the work in the handler's own task and, once the work has lasted ``WATCH_AFTER_S``,
watches the ASGI ``receive`` channel, which yields ``http.disconnect`` when the
connection closes; the watch then cancels the handler's task.

Most answers come sooner than that, and then cost one timer and no task: this is on the
path of every non-streamed request. A client that leaves sooner costs at most
``WATCH_AFTER_S`` of engine time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from starlette.requests import Request

from corral.core.errors import ClientClosed

T = TypeVar("T")

WATCH_AFTER_S = 0.5


async def unless_client_leaves(request: Request, work: Coroutine[Any, Any, T]) -> T:
    """The work's result; ``ClientClosed`` (the work cancelled) if the client left first.
    Call only once the request body has been read."""
    task = asyncio.current_task()
    assert task is not None
    watch = _Watch(request, task)
    timer = asyncio.get_running_loop().call_later(WATCH_AFTER_S, watch.start)
    try:
        return await work
    except asyncio.CancelledError:
        if not watch.fired:
            raise  # cancelled from elsewhere (shutdown): not ours to swallow
        task.uncancel()
        raise ClientClosed("the client closed the connection before the answer was ready") from None
    finally:
        # synchronous from the work's end to here: the watch cannot fire in between
        timer.cancel()
        watch.stop()


class _Watch:
    __slots__ = ("_request", "_task", "_watcher", "fired")

    def __init__(self, request: Request, task: asyncio.Task[Any]) -> None:
        self._request = request
        self._task = task
        self._watcher: asyncio.Task[None] | None = None
        self.fired = False

    def start(self) -> None:
        self._watcher = asyncio.ensure_future(self._run())

    def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()

    async def _run(self) -> None:
        while True:
            message = await self._request.receive()
            if message["type"] == "http.disconnect":
                self.fired = True
                self._task.cancel()
                return
