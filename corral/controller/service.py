"""A cluster controller process: the registry authority for workers and gateways that
join through it, the desired state (persisted next to the registry), the manager that
places instances on workers, the autoscaler (fed by the workers' loads and the
gateways' demand reports), and the admin API."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.routing import BaseRoute

from corral.controller.admin_keys import cluster_key_route, cluster_usage_route, key_routes
from corral.controller.app import create_controller_app
from corral.controller.keys import KeyManager
from corral.controller.autoscaling import Autoscaling
from corral.controller.capacity import Capacity
from corral.controller.demand import DemandTable
from corral.observe.metrics import metrics_route
from corral.observe.scaling import AutoscalerMetrics
from corral.controller.manager import Manager
from corral.controller.workers import RemoteWorkerClient, WorkerInfo
from corral.core.registry import Registry
from corral.core.state import StateStore
from corral.net.client import make_http_client


class ControllerService:
    def __init__(
        self, registry: Registry, store: StateStore, cluster_token: str | None, admin_token: str | None,
        capacity: Capacity | None = None, ui_routes: list[BaseRoute] | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        """``ui_routes``: the web console, assembled by the CLI (the controller does not import it).
        ``ssl_context``: what workers' https:// addresses are verified against (``--tls-ca``)."""
        self._capacity = capacity
        self._registry = registry
        self._store = store
        self._http = make_http_client(cluster_token, ssl_context=ssl_context)
        self.manager = Manager(store, registry, self._client_for, mode="cluster", capacity=capacity)
        self.keys = KeyManager(store)
        self.demand = DemandTable(on_cold=lambda model: self.autoscaling.wake(model))
        self.autoscaling = Autoscaling(self.manager, self.demand)
        self._closing = asyncio.Event()
        self.app = create_controller_app(
            registry, self.manager, cluster_token, admin_token, self.lifespan, self._closing, self.demand,
            extra_routes=[
                metrics_route(AutoscalerMetrics(self.autoscaling)), *key_routes(self.keys), cluster_key_route(self.keys),
                cluster_usage_route(store),
                *(ui_routes or []),
            ],
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
        if self._capacity is not None:
            await self._capacity.launcher.open()  # e.g. connect to Ray, adopt the workers still alive
        await self.manager.start()
        scaling = asyncio.create_task(self.autoscaling.run(), name="autoscaling")
        try:
            yield
        finally:
            scaling.cancel()
            await self.manager.stop()
            if self._capacity is not None:
                await self._capacity.launcher.close()  # launched workers end with their controller
            await self._http.aclose()
            await self._store.close()
            await self._registry.close()
