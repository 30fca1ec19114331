"""The gateway's half of sharing the keys' counters: every ``EXCHANGE_S`` it publishes
its ``Limiter``'s report and absorbs the other gateways' (``corral.core.usage``).

The request path never waits on this: admission reads the limiter's memory, and the
exchange runs beside it. When the store or controller cannot be reached, each gateway
goes on with what it last knew (the limits then hold per gateway, not across them) and
says so once per outage.
"""

from __future__ import annotations

import asyncio
import logging

from corral.core.errors import CorralError
from corral.core.usage import EXCHANGE_S, UsageExchange
from corral.gateway.limits import Limiter
from corral.gateway.periodic import every

log = logging.getLogger(__name__)


class UsageSync:
    def __init__(self, limiter: Limiter, exchange: UsageExchange, gateway_id: str, every_s: float = EXCHANGE_S) -> None:
        self._limiter = limiter
        self._exchange = exchange
        self._gateway_id = gateway_id
        self._every_s = every_s
        self._task: asyncio.Task[None] | None = None
        self.exchanges = 0  # completed, for tests and /health detail

    async def sync_once(self) -> None:
        others = await self._exchange.exchange_usage(self._limiter.report(self._gateway_id))
        self._limiter.absorb(others)
        self.exchanges += 1

    def start(self) -> None:
        self._task = asyncio.create_task(self._follow(), name="key-usage-sync")

    async def stop(self) -> None:
        """Cancel the loop, then publish a last report: the requests it had in flight are
        over, and its budget counts must outlive it."""
        if self._task is None:
            return
        self._task.cancel()
        self._task = None
        try:
            await asyncio.wait_for(self._exchange.exchange_usage(self._limiter.report(self._gateway_id)), 2.0)
        except (CorralError, TimeoutError) as exc:
            log.warning("key usage: the last report was not published (%s)", getattr(exc, "message", type(exc).__name__))

    async def _follow(self) -> None:
        await every(
            self._every_s, self.sync_once, log, "key usage: exchange",
            down=lambda exc: f"key usage: cannot exchange with the other gateways ({exc.message}); limits hold per "
            "gateway until it can",
            back=lambda: "key usage: exchanging again",
        )
