"""How the controller reaches a worker to change what it hosts: in process (standalone)
or over the worker's internal API (cluster)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx
import orjson

from corral.core.errors import CorralError, Unavailable
from corral.core.spec import ModelSpec
from corral.core.state import spec_to_json
from corral.core.tls import tls_failure


@dataclass
class WorkerInfo:
    worker_id: str
    address: str | None
    engines: list[str]
    seen_at: float  # time.monotonic() of the last heartbeat
    ttl: float | None  # None: never expires (the standalone process's own worker)
    loads: dict[str, dict[str, Any]] = field(default_factory=dict)  # instance id -> in_flight, queued
    max_instances: int = 0  # instances it takes; 0: no limit

    def alive(self, now: float) -> bool:
        return self.ttl is None or now - self.seen_at <= self.ttl


class WorkerClient(Protocol):
    async def start(self, spec: ModelSpec, instance_id: str) -> None:
        """Ask the worker to start an instance; returns once accepted (loading goes on)."""
        ...

    async def stop(self, instance_id: str, drain_timeout: float) -> None:
        """Drain and stop an instance; returns once accepted."""
        ...

    async def set_offline(self, instance_id: str, offline: bool) -> None: ...

    async def loads(self) -> dict[str, dict[str, Any]]:
        """In-flight and queued work per instance."""
        ...


class RemoteWorkerClient:
    def __init__(self, http: httpx.AsyncClient, address: str) -> None:
        self._http = http
        self._base = address.rstrip("/") + "/internal/v1"

    async def _call(self, method: str, path: str, body: object | None = None) -> dict[str, Any]:
        try:
            resp = await self._http.request(
                method, self._base + path, content=orjson.dumps(body) if body is not None else None, timeout=10.0
            )
        except httpx.HTTPError as exc:
            why = tls_failure(exc) or type(exc).__name__
            raise Unavailable(f"worker at {self._base} is unreachable ({why})") from None
        data = resp.json() if resp.content else {}
        if resp.status_code >= 400:
            message = data.get("error", {}).get("message") if isinstance(data, dict) else None
            raise CorralError(message or f"worker answered HTTP {resp.status_code}")
        return data  # type: ignore[no-any-return]

    async def start(self, spec: ModelSpec, instance_id: str) -> None:
        await self._call("POST", "/instances", {"instance_id": instance_id, "spec": orjson.loads(spec_to_json(spec))})

    async def stop(self, instance_id: str, drain_timeout: float) -> None:
        await self._call("DELETE", f"/instances/{instance_id}?drain_timeout={drain_timeout}")

    async def set_offline(self, instance_id: str, offline: bool) -> None:
        await self._call("POST", f"/instances/{instance_id}/{'offline' if offline else 'online'}")

    async def loads(self) -> dict[str, dict[str, Any]]:
        status = await self._call("GET", "/status")
        return {i["id"]: i for i in status.get("instances", [])}
