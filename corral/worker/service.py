"""A cluster worker process: hosts the instances its config declares, serves the
internal worker API, keeps its instances registered under a lease, and drains on
shutdown (deregisters, finishes in-flight streams, then exits)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from starlette.applications import Starlette

from corral.core.registry import Registry
from corral.core.spec import ModelSpec
from corral.worker.server import create_worker_app
from corral.worker.worker import Worker

log = logging.getLogger(__name__)


class WorkerService:
    def __init__(
        self,
        registry: Registry,
        models: tuple[ModelSpec, ...],
        advertise: str,
        token: str | None,
        on_fatal: Callable[[str], None],
        lease_ttl: float = 5.0,
        drain_timeout: float = 30.0,
        worker_id: str | None = None,
        max_instances: int = 0,
    ) -> None:
        self._registry = registry
        self._models = models
        self._on_fatal = on_fatal
        self._drain_timeout = drain_timeout
        self.worker = Worker(registry, worker_id, address=advertise, lease_ttl=lease_ttl, max_instances=max_instances)
        self._tasks: list[asyncio.Task[None]] = []
        self.app = create_worker_app(self.worker, token, self.lifespan)

    @asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        await self._registry.open()
        self._tasks.append(asyncio.create_task(self.worker.keep_registered(), name="lease"))
        self._tasks.append(asyncio.create_task(self._deploy(), name="deploy"))
        self._tasks.append(asyncio.create_task(self.worker.watch_engines(), name="watch-engines"))
        try:
            yield
        finally:
            for task in self._tasks:
                task.cancel()
            await self.worker.stop()
            with contextlib.suppress(Exception):
                await self._registry.close()

    async def _deploy(self) -> None:
        errors = await self.worker.start_all(list(self._models))
        if errors:
            self._on_fatal("; ".join(e.message for e in errors))
        else:
            log.info(
                "worker %s serving %s at %s",
                self.worker.worker_id, ", ".join(m.name for m in self._models), self.worker.address,
            )

    async def drain(self) -> None:
        log.info("draining: deregistering and finishing in-flight requests (at most %.0fs)", self._drain_timeout)
        await self.worker.drain(self._drain_timeout)
        # past the bound, stop the engines now, while the connections are still open: each
        # request still running then ends with an error event its client can read (an
        # engine's stop ends its streams), instead of being cut when the server closes
        await self.worker.stop()
