"""A gateway's background loops that follow something remote (the virtual keys, the
other gateways' key usage): one step every interval, forever, with an outage logged
once when it starts and once when it ends rather than at every step."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from corral.core.errors import CorralError


async def every(
    interval_s: float, step: Callable[[], Awaitable[None]], log: logging.Logger, what: str,
    down: Callable[[CorralError], str], back: Callable[[], str],
) -> None:
    """Run ``step`` every ``interval_s``; ``down(exc)`` is logged when a ``CorralError``
    starts an outage, ``back()`` when a step succeeds again. Any other exception is
    logged with its traceback and the loop goes on (one bad step must not end it)."""
    failing = False
    while True:
        await asyncio.sleep(interval_s)
        try:
            await step()
        except CorralError as exc:
            if not failing:
                log.warning(down(exc))
            failing = True
            continue
        except Exception:
            log.exception("%s failed", what)
            continue
        if failing:
            log.info(back())
        failing = False
