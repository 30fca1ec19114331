"""A cluster gateway process: the OpenAI API in front of instances on any worker,
found through a registry (directly, or through a controller)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import httpx
from starlette.applications import Starlette

from corral.core.registry import InstanceRecord, InstanceState, Registry
from corral.core.spec import ServerSettings
from corral.gateway.app import create_gateway_app
from corral.gateway.remote import RemoteInstance
from corral.web.client import make_http_client
from corral.web.pool import PoolSettings, make_session
from corral.gateway.router import Router, RouterSettings, Target
from corral.observe.setup import gateway_observability


class GatewayService:
    def __init__(
        self,
        registry: Registry,
        server: ServerSettings,
        cluster_token: str | None,
        router_settings: RouterSettings | None = None,
        worker_timeout_s: float = 30.0,
    ) -> None:
        self._registry = registry
        self._http = make_http_client(cluster_token)  # health probes
        self._token = cluster_token
        # longest silence in a started generation stream from a worker: workers send a
        # blank line every 5 s while their engine is quiet, so silence means a dead
        # worker or a partition, which fails the request instead of hanging it
        self._worker_timeout_s = worker_timeout_s
        self._session: aiohttp.ClientSession | None = None  # the hot path to workers, opened in the lifespan
        self.router = Router(registry, self._resolve, router_settings, health_check=self._probe)
        self.observability = gateway_observability(server, self.router, "corral-gateway")
        self.app = create_gateway_app(
            self.router, server, self.readiness, self.lifespan,
            extra_routes=self.observability.routes, tracker=self.observability.tracker,
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
        self._session = make_session(PoolSettings(connect_timeout_s=2.0), headers)
        await self.router.start()
        try:
            yield
        finally:
            await self.router.stop()
            await self.observability.close()
            await self._session.close()
            await self._http.aclose()
            await self._registry.close()

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
