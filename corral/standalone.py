"""Standalone mode: gateway, controller, worker and an embedded registry in one process.

The gateway resolves instances to the worker's in-process engines, so a request goes
from the HTTP handler to the engine with no network hop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette

from corral.controller.controller import Controller
from corral.core.registry import InstanceRecord, InstanceState
from corral.core.spec import Settings
from corral.gateway.app import create_gateway_app
from corral.gateway.router import Router
from corral.registry.embedded import EmbeddedRegistry
from corral.worker.worker import Worker

log = logging.getLogger(__name__)


class Standalone:
    def __init__(self, settings: Settings, on_fatal: Callable[[str], None]) -> None:
        self.settings = settings
        self._on_fatal = on_fatal
        self.registry = EmbeddedRegistry()
        self.worker = Worker(self.registry, worker_id="standalone")
        self.controller = Controller(self.worker)
        self.router = Router(self.registry, self._resolve)
        self._deploying: asyncio.Task[None] | None = None
        self.app = create_gateway_app(self.router, settings.server, self.readiness, self.lifespan)

    def _resolve(self, record: InstanceRecord) -> object | None:
        instance = self.worker.get(record.instance_id)
        return instance.engine if instance is not None else None

    @asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        await self.router.start()
        self._deploying = asyncio.create_task(self._deploy(), name="deploy")
        try:
            yield
        finally:
            self._deploying.cancel()
            await self.worker.stop()
            await self.router.stop()

    async def _deploy(self) -> None:
        errors = await self.controller.deploy(list(self.settings.models))
        if errors:
            self._on_fatal("; ".join(e.message for e in errors))
        else:
            names = ", ".join(s.name for s in self.settings.models)
            log.info("ready: serving %s on http://%s:%d/v1", names, self.settings.server.host, self.settings.server.port)

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        models: dict[str, Any] = {}
        ok = self._deploying is not None and self._deploying.done()
        records = self.router.models()
        for spec in self.settings.models:
            instances = []
            for record in records.get(spec.name, []):
                instance = self.worker.get(record.instance_id)
                load = instance.engine.load() if instance is not None else None
                instances.append(
                    {
                        "id": record.instance_id,
                        "state": record.state.value,
                        "engine": record.engine,
                        "in_flight": load.in_flight if load else 0,
                        "queued": load.queued if load else 0,
                        "completed_total": load.completed_total if load else 0,
                        "cancelled_total": load.cancelled_total if load else 0,
                        "last_error": record.last_error,
                    }
                )
            ready = any(i["state"] == InstanceState.READY.value for i in instances)
            ok = ok and ready
            models[spec.name] = {"ready": ready, "instances": instances}
        return ok, {"models": models}
