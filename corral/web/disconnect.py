"""Cancelling a non-streamed request's work when its client leaves.

A streamed response notices a departed client as it writes (``ClosingStreamingResponse``),
but a non-streamed generation writes nothing until its end: without a watch, a client
that timed out would leave the engine generating for nobody. ``unless_client_leaves``
runs the work beside a wait on the ASGI ``receive`` channel, which yields
``http.disconnect`` when the connection closes; whichever ends first wins.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from starlette.requests import Request

from corral.core.errors import ClientClosed

T = TypeVar("T")


async def unless_client_leaves(request: Request, work: Coroutine[Any, Any, T]) -> T:
    """The work's result; ``ClientClosed`` (the work cancelled) if the client left first.
    Call only once the request body has been read."""
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(_gone(request))
    try:
        await asyncio.wait((task, watch), return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        watch.cancel()
    if task.done():
        return task.result()
    task.cancel()
    try:
        await task  # let the work's own cleanup run (instance released, engine call closed)
    except asyncio.CancelledError:
        pass
    except Exception:  # the work failed while being cancelled: the client is gone anyway
        pass
    raise ClientClosed("the client closed the connection before the answer was ready")


async def _gone(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
