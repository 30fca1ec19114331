"""A cluster gateway process: the OpenAI API in front of instances on any worker,
found through a registry (directly, or through a controller).

A gateway that follows a controller (its registry is a ``DemandSink``) reports what it
holds per model every second, and at once when a request waits for a model with no
ready instance, so the controller's autoscaler counts it and wakes a model at zero."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import httpx
from starlette.applications import Starlette

from corral.core.demand import DemandSink
from corral.core.errors import CorralError
from corral.core.keys import KeySource
from corral.core.usage import UsageExchange
from corral.core.registry import InstanceRecord, InstanceState, Registry
from corral.core.spec import ServerSettings
from corral.gateway.app import create_gateway_app
from corral.gateway.keys import KeyChain, VirtualKeys
from corral.gateway.limits import Limiter
from corral.gateway.usage import UsageSync
from corral.gateway.remote import RemoteInstance
from corral.web.middleware import KeySet
from corral.net.client import make_http_client
from corral.net.pool import PoolSettings, make_session
from corral.gateway.router import Router, RouterSettings, Target
from corral.gateway.observability import gateway_observability
from corral.observe.metrics_shared import ProcessSlot


log = logging.getLogger(__name__)

DEMAND_REPORT_S = 1.0


class GatewayService:
    def __init__(
        self,
        registry: Registry,
        server: ServerSettings,
        cluster_token: str | None,
        router_settings: RouterSettings | None = None,
        worker_timeout_s: float = 30.0,
        key_source: KeySource | None = None,
        usage: UsageExchange | None = None,
        ssl_context: ssl.SSLContext | None = None,
        process: ProcessSlot | None = None,
    ) -> None:
        """``key_source``: where the virtual keys are read; ``usage``: how the keys'
        counters are shared with the other gateways (a controller relays them, a store
        keeps them: ``corral.core.usage``); ``ssl_context``: what workers' https://
        addresses are verified against, on the hot path and by the health probes alike
        (``--tls-ca``); ``process``: this is one of several processes serving one port
        (``corral gateway --processes N``); each is a whole gateway following the
        registry itself, and they share their metrics (see ``observe/metrics_shared.py``)."""
        self._registry = registry
        # the virtual keys, from the controller (the registry) or the store next to the registry
        self._key_source = key_source
        self.virtual_keys = VirtualKeys(key_source, server.key_limits) if key_source is not None else None
        self._ssl_context = ssl_context
        self._http = make_http_client(cluster_token, ssl_context=ssl_context)  # health probes
        self._token = cluster_token
        # longest silence in a started generation stream from a worker: workers send a
        # blank line every 5 s while their engine is quiet, so silence means a dead
        # worker or a partition, which fails the request instead of hanging it
        self._worker_timeout_s = worker_timeout_s
        self._session: aiohttp.ClientSession | None = None  # the hot path to workers, opened in the lifespan
        self.gateway_id = f"gateway-{uuid.uuid4().hex[:8]}"
        self._report_now = asyncio.Event()
        self.router = Router(
            registry, self._resolve, router_settings, health_check=self._probe, on_cold=lambda m: self._report_now.set()
        )
        self.limiter = Limiter()
        self.usage = UsageSync(self.limiter, usage, self.gateway_id) if usage is not None else None
        self.observability = gateway_observability(server, self.router, "corral-gateway", process=process)
        # which process answered: harmless (a slot and a pid), and what shows the kernel spreading connections
        detail = {"process": {"slot": process.slot, "pid": os.getpid()}} if process is not None else None
        self.app = create_gateway_app(
            self.router, server, self.readiness, self.lifespan,
            extra_routes=self.observability.routes, tracker=self.observability.tracker,
            stored_responses=self.observability.stored,
            keys=KeyChain([KeySet(server.api_keys), self.virtual_keys]) if self.virtual_keys is not None else None,
            limiter=self.limiter,
            health_detail=detail,
        )

    def _resolve(self, record: InstanceRecord) -> object | None:
        if record.address is None:
            return None  # an in-process instance of some other process: not reachable from here
        assert self._session is not None, "records are followed only once the session is open"
        return RemoteInstance(self._session, record.address, record.instance_id, self._worker_timeout_s)

    async def _probe(self, target: Target) -> bool:
        client = target.client
        if not isinstance(client, RemoteInstance):
            return False
        try:
            resp = await self._http.get(f"{client.address}/health", timeout=2.0)
        except httpx.HTTPError:
            return False
        return resp.status_code == 200

    @asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        await self._registry.open()
        await self.observability.open()
        headers = {"authorization": f"Bearer {self._token}"} if self._token else None
        self._session = make_session(PoolSettings(connect_timeout_s=2.0), headers, self._ssl_context)
        await self.router.start()
        if self._key_source is not None and self.virtual_keys is not None:
            if self._key_source is not self._registry:
                await self._key_source.open()
            await self.virtual_keys.start()
        if self.usage is not None:
            self.usage.start()
        reporting = asyncio.create_task(self._report_demand(), name="demand-reports")
        try:
            yield
        finally:
            reporting.cancel()
            if self.usage is not None:
                await self.usage.stop()
            if self.virtual_keys is not None and self._key_source is not None:
                await self.virtual_keys.stop()
                if self._key_source is not self._registry:
                    await self._key_source.close()
            await self.router.stop()
            await self.observability.close()
            await self._session.close()
            await self._http.aclose()
            await self._registry.close()

    async def _report_demand(self) -> None:
        if not isinstance(self._registry, DemandSink):
            return  # a registry without a controller: nobody autoscales from gateways' queues
        sent_something = False
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._report_now.wait(), DEMAND_REPORT_S)
            self._report_now.clear()
            demand = self.router.gateway_demand()
            if not demand and not sent_something:
                continue
            try:
                await self._registry.report_demand(self.gateway_id, demand)
                sent_something = bool(demand)
            except CorralError as exc:  # the controller is away: the next report carries it
                log.debug("demand report failed: %s", exc.message)

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        models: dict[str, Any] = {}
        for name in self.router.models():
            instances = [
                {
                    "id": t.instance_id,
                    "state": t.record.state.value,
                    "address": t.record.address,
                    "worker_id": t.record.worker_id,
                    "in_flight": t.in_flight,
                    "ejected": t.ejected_until > 0 and t.failures > 0,
                    "ttft_ewma_ms": round(t.latency * 1000, 2) if t.latency is not None else None,
                }
                for t in self.router.targets(name)
            ]
            models[name] = {"ready": any(i["state"] == InstanceState.READY.value for i in instances), "instances": instances}
        ok = self.router.synced.is_set() and any(m["ready"] for m in models.values())
        return ok, {"models": models}

