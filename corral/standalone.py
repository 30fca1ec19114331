"""Standalone mode: gateway, controller (manager + admin API), worker and an embedded
registry in one process.

The gateway resolves instances to the worker's in-process engines, so a request goes
from the HTTP handler to the engine with no network hop. The manager treats the local
worker as its only worker, so the admin API (deploy, scale, restart, offline) works the
same as in a cluster; the autoscaler reads demand off the in-process router and moves
the replicas of autoscaled models, which the same manager makes real.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware

from corral.console.routes import ConsoleSettings, console_routes
from corral.controller.admin import admin_routes
from corral.controller.admin_keys import key_routes
from corral.controller.keys import KeyManager
from corral.controller.autoscaling import Autoscaling
from corral.controller.manager import Manager
from corral.core.registry import InstanceRecord, InstanceState
from corral.core.spec import ModelSpec, Settings
from corral.gateway.app import create_gateway_app
from corral.gateway.keys import KeyChain, VirtualKeys
from corral.gateway.router import Router
from corral.observe.metrics import WorkerMetrics
from corral.observe.records_api import records_routes
from corral.observe.scaling import AutoscalerMetrics
from corral.gateway.observability import gateway_observability
from corral.registry.embedded import EmbeddedRegistry
from corral.state.memory import MemoryStateStore
from corral.web.middleware import ApiKeys, KeySet
from corral.worker.worker import Worker

log = logging.getLogger(__name__)


class LocalWorkerClient:
    """The manager's handle on the in-process worker."""

    def __init__(self, worker: Worker) -> None:
        self._worker = worker

    async def start(self, spec: ModelSpec, instance_id: str) -> None:
        self._worker.spawn(self._worker.start_instance(spec, instance_id, managed=True), f"start {instance_id}")

    async def stop(self, instance_id: str, drain_timeout: float) -> None:
        self._worker.spawn(self._worker.drain_instance(instance_id, drain_timeout), f"drain {instance_id}")

    async def set_offline(self, instance_id: str, offline: bool) -> None:
        await self._worker.set_offline(instance_id, offline)

    async def loads(self) -> dict[str, dict[str, Any]]:
        return {i["id"]: i for i in self._worker.status()["instances"]}


class Standalone:
    def __init__(self, settings: Settings, on_fatal: Callable[[str], None], admin_token: str | None = None) -> None:
        self.settings = settings
        self._on_fatal = on_fatal
        self.registry = EmbeddedRegistry()
        self.worker = Worker(self.registry, worker_id="standalone")
        self._store = MemoryStateStore()
        client = LocalWorkerClient(self.worker)
        self.manager = Manager(self._store, self.registry, lambda _: client, mode="standalone")
        self.router = Router(self.registry, self._resolve, on_cold=lambda model: self.autoscaling.wake(model))
        self.autoscaling = Autoscaling(self.manager, self.router)
        self._deploying: asyncio.Task[None] | None = None
        self.virtual_keys = VirtualKeys(self._store, settings.server.key_limits)  # in process: read straight from the store
        self.keys = KeyManager(self._store, on_change=self.virtual_keys.apply)
        self.observability = gateway_observability(
            settings.server, self.router, "corral-standalone", (WorkerMetrics(self.worker), AutoscalerMetrics(self.autoscaling))
        )
        console = ConsoleSettings(
            mode="standalone", host=settings.server.host, admin_token=bool(admin_token),
            api_key=bool(settings.server.api_keys), gateway="", records=True,
        )
        self.app = create_gateway_app(
            self.router,
            settings.server,
            self.readiness,
            self.lifespan,
            extra_routes=admin_routes(self.manager) + key_routes(self.keys) + self.observability.routes
            + records_routes(lambda: self.observability.records) + console_routes(console),
            extra_middleware=[Middleware(ApiKeys, keys=(admin_token,) if admin_token else (), prefix="/admin")],
            tracker=self.observability.tracker,
            stored_responses=self.observability.stored,
            keys=KeyChain([KeySet(settings.server.api_keys), self.virtual_keys]),
        )

    def _resolve(self, record: InstanceRecord) -> object | None:
        instance = self.worker.get(record.instance_id)
        return instance.engine if instance is not None else None

    @asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        await self.observability.open()
        await self.router.start()
        await self.virtual_keys.start()
        for spec in self.settings.models:
            await self._store.put_model(spec)
        self.manager.worker_seen(self.worker.worker_id, None, self.worker.engines(), ttl=None)
        await self.manager.start(reconcile=False)
        self._deploying = asyncio.create_task(self._deploy(), name="deploy")
        watching = asyncio.create_task(self.worker.watch_engines(), name="watch-engines")
        scaling = asyncio.create_task(self.autoscaling.run(), name="autoscaling")
        try:
            yield
        finally:
            scaling.cancel()
            watching.cancel()
            self._deploying.cancel()
            await self.manager.stop()
            await self.worker.stop()
            await self.virtual_keys.stop()
            await self.router.stop()
            await self.observability.close()

    async def _deploy(self) -> None:
        """The models of the config file start first (a failure stops the server); then
        the manager takes over and keeps their replica counts."""
        specs = list(self.settings.models)
        started = time.monotonic()
        errors = await self.worker.start_all(specs, managed=True)
        if errors:
            self._on_fatal("; ".join(e.message for e in errors))
            return
        self.manager.start_reconciling()
        names = ", ".join(s.name for s in specs)
        log.info(
            "ready in %.1fs: serving %s on %s://%s:%d/v1", time.monotonic() - started, names,
            self.settings.server.tls.scheme, self.settings.server.host, self.settings.server.port,
        )

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        models: dict[str, Any] = {}
        ok = self._deploying is not None and self._deploying.done()
        for name, records in sorted(self.router.models().items()):
            instances = []
            for record in records:
                if record.state is InstanceState.STANDBY:
                    continue  # an autoscaled model's sign that it can wake, not an instance
                instance = self.worker.get(record.instance_id)
                load = instance.engine.load() if instance is not None else None
                state = record.state
                if load is not None and state is InstanceState.READY and (
                    load.failure is not None or load.crashes_total > load.restarts_total
                ):  # the engine's own word is fresher than the record (republished within 0.25 s)
                    state = InstanceState.FAILED if load.failure is not None else InstanceState.STARTING
                instances.append(
                    {
                        "id": record.instance_id,
                        "state": state.value,
                        "engine": record.engine,
                        "in_flight": load.in_flight if load else 0,
                        "queued": load.queued if load else 0,
                        "completed_total": load.completed_total if load else 0,
                        "cancelled_total": load.cancelled_total if load else 0,
                        "crashes_total": load.crashes_total if load else 0,
                        "restarts_total": load.restarts_total if load else 0,
                        "last_error": record.last_error,
                    }
                )
            models[name] = {"ready": any(i["state"] == InstanceState.READY.value for i in instances), "instances": instances}
        # what is deployed now (the admin API may have scaled, added or removed models
        # since start), not the start-up config: each model meant to serve has a ready instance
        for spec in self.manager.deployed():
            if spec.replicas > 0 and not spec.offline:
                ok = ok and models.get(spec.name, {}).get("ready", False)
        return ok, {"models": models}
