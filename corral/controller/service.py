"""A cluster controller process: the registry authority for workers and gateways that
join through it, the desired state (persisted next to the registry), the manager that
places instances on workers, and the admin API."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette

from corral.controller.app import create_controller_app
from corral.controller.manager import Manager
from corral.controller.workers import RemoteWorkerClient, WorkerInfo
from corral.core.registry import Registry
from corral.core.state import StateStore
from corral.web.client import make_http_client


class ControllerService:
    def __init__(
        self, registry: Registry, store: StateStore, cluster_token: str | None, admin_token: str | None
    ) -> None:
        self._registry = registry
        self._store = store
        self._http = make_http_client(cluster_token)
        self.manager = Manager(store, registry, self._client_for, mode="cluster")
        self._closing = asyncio.Event()
        self.app = create_controller_app(
            registry, self.manager, cluster_token, admin_token, self.lifespan, self._closing
        )

    async def shutdown(self) -> None:
        """First step of a stop: end watch streams so uvicorn need not wait for them."""
        self._closing.set()

    def _client_for(self, worker: WorkerInfo) -> RemoteWorkerClient:
        assert worker.address is not None
        return RemoteWorkerClient(self._http, worker.address)

    @asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        await self._registry.open()
        await self._store.open()
        await self.manager.start()
        try:
            yield
        finally:
            await self.manager.stop()
            await self._http.aclose()
            await self._store.close()
            await self._registry.close()
