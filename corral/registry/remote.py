"""A controller's registry, over HTTP: what workers and gateways use with
``--controller URL``. The controller keeps the records in its own store (embedded, SQL
or etcd) and applies the leases; this client only speaks its ``/cluster/v1`` API.

Several controller URLs (comma-separated) are tried in order, so a pair of controllers
sharing an SQL or etcd store gives high availability.

After a reconnect, the watch keeps an instance the controller no longer lists for
``HOLD_AFTER_RECONNECT_S`` before reporting it removed: a controller restarted with its
registry in memory knows no instance until the workers renew their leases, and a
gateway must not drop every instance (and answer 503) meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import AsyncIterator

import httpx
import orjson

from corral.core.demand import GatewayDemand, demand_to_json
from corral.core.keys import VirtualKey, key_from_json
from corral.core.usage import UsageReport, report_from_json, report_to_json
from corral.core.errors import CorralError, Unauthorized, Unavailable
from corral.core.registry import SYNCED, InstanceRecord, WatchItem, record_from_json, record_to_json
from corral.core.tls import tls_failure
from corral.registry.resync import Reported

log = logging.getLogger(__name__)

HEARTBEAT_TIMEOUT = 15.0  # the controller sends a keep-alive line every 5 s
HOLD_AFTER_RECONNECT_S = 10.0  # twice the default lease: time for every worker to renew


class RemoteRegistry:
    def __init__(self, urls: str, token: str | None, ssl_context: ssl.SSLContext | None = None) -> None:
        """``ssl_context``: what https:// controllers are verified against (``--tls-ca``)."""
        self._urls = [u.strip().rstrip("/") for u in urls.split(",") if u.strip()]
        headers = {"authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.AsyncClient(
            headers=headers, timeout=httpx.Timeout(10.0, connect=3.0),
            verify=ssl_context if ssl_context is not None else True,
        )
        self._current = 0
        self._keys: tuple[str | None, list[VirtualKey]] = (None, [])  # (etag, keys) of the last key list

    async def _request(self, method: str, path: str, **kwargs: object) -> httpx.Response:
        errors = []
        for offset in range(len(self._urls)):
            index = (self._current + offset) % len(self._urls)
            try:
                resp = await self._http.request(method, self._urls[index] + path, **kwargs)  # type: ignore[arg-type]
            except (httpx.TransportError, OSError) as exc:
                errors.append(f"{self._urls[index]}: {tls_failure(exc) or type(exc).__name__}")
                continue
            self._current = index
            if resp.status_code in (401, 403):
                raise Unauthorized("the controller refused this process's cluster token")
            if resp.status_code >= 400:
                raise Unavailable(f"the controller answered HTTP {resp.status_code} to {method} {path}")
            return resp
        raise Unavailable("no controller reachable (" + "; ".join(errors) + ")")

    async def open(self) -> None:
        """Nothing to prepare."""

    async def keys_version(self) -> str | None:
        return None  # the list's own ETag makes an unchanged list a bodiless 304

    async def list_keys(self) -> list[VirtualKey]:
        """The controller's virtual keys (``KeySource``); an unchanged list costs a 304."""
        etag, keys = self._keys
        resp = await self._request("GET", "/cluster/v1/keys", headers={"if-none-match": etag} if etag else {})
        if resp.status_code == 304:
            return keys
        keys = [key_from_json(orjson.dumps(item)) for item in orjson.loads(resp.content)]
        self._keys = (resp.headers.get("etag"), keys)
        return keys

    async def put(self, record: InstanceRecord, ttl: float | None = None) -> None:
        params = {"ttl": str(ttl)} if ttl is not None else {}
        await self._request(
            "PUT", f"/cluster/v1/instances/{record.instance_id}", content=record_to_json(record), params=params
        )

    async def announce_worker(
        self, worker_id: str, address: str | None, engines: list[str], ttl: float, max_instances: int = 0
    ) -> None:
        """Tell the controller this worker is alive and what it can run (a heartbeat)."""
        body = orjson.dumps({"address": address, "engines": engines, "max_instances": max_instances})
        await self._request("PUT", f"/cluster/v1/workers/{worker_id}", content=body, params={"ttl": str(ttl)})

    async def report_demand(self, gateway_id: str, demand: dict[str, GatewayDemand]) -> None:
        """Tell the controller what this gateway holds per model (``DemandSink``)."""
        await self._request("PUT", f"/cluster/v1/gateways/{gateway_id}/demand", content=orjson.dumps(demand_to_json(demand)))

    async def exchange_usage(self, report: UsageReport) -> list[UsageReport]:
        """This gateway's usage report to the controller, the other gateways' back (``UsageExchange``)."""
        resp = await self._request("PUT", f"/cluster/v1/gateways/{report.gateway_id}/usage", content=report_to_json(report))
        return [report_from_json(orjson.dumps(item)) for item in orjson.loads(resp.content)]

    async def remove(self, instance_id: str) -> None:
        await self._request("DELETE", f"/cluster/v1/instances/{instance_id}")

    async def list(self) -> list[InstanceRecord]:
        resp = await self._request("GET", "/cluster/v1/instances")
        return [record_from_json(orjson.dumps(r)) for r in resp.json()["instances"]]

    async def watch(self) -> AsyncIterator[WatchItem]:
        reported = Reported()
        held: dict[str, float] = {}  # instance id -> when it is removed unless listed again
        backoff = 0.2
        down = False
        while True:
            try:
                async for event in self._watch_once(reported, held):
                    if down:
                        log.info("controller watch reconnected")
                        down = False
                    backoff = 0.2
                    yield event
            except (httpx.TransportError, OSError, CorralError, TimeoutError) as exc:
                if not down:
                    log.warning("lost the controller's watch (%s); serving from the last view",
                                tls_failure(exc) or type(exc).__name__)
                    down = True
                self._current = (self._current + 1) % len(self._urls)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)

    async def _watch_once(self, reported: Reported, held: dict[str, float]) -> AsyncIterator[WatchItem]:
        url = self._urls[self._current] + "/cluster/v1/watch"
        timeout = httpx.Timeout(10.0, connect=3.0, read=HEARTBEAT_TIMEOUT)
        async with self._http.stream("GET", url, timeout=timeout) as resp:
            if resp.status_code in (401, 403):
                raise Unauthorized("the controller refused this process's cluster token")
            if resp.status_code != 200:
                raise Unavailable(f"controller watch answered HTTP {resp.status_code}")
            snapshot: list[InstanceRecord] = []
            synced = False
            async for line in resp.aiter_lines():
                if not line:
                    continue
                now = time.monotonic()
                for instance_id in [i for i, due in held.items() if due <= now]:  # checked at least every keep-alive
                    del held[instance_id]
                    expired = reported.removed(instance_id)
                    if expired is not None:
                        yield expired
                msg = orjson.loads(line)
                if "synced" in msg:
                    if synced:
                        yield SYNCED
                    else:  # end of the snapshot: tell the consumer what changed while away
                        synced = True
                        for instance_id in reported.vanished(snapshot):
                            held.setdefault(instance_id, now + HOLD_AFTER_RECONNECT_S)
                        for event in reported.resync(snapshot, frozenset(held)):
                            yield event
                elif "put" in msg:
                    record = record_from_json(orjson.dumps(msg["put"]))
                    held.pop(record.instance_id, None)
                    if synced:
                        yield reported.put(record)
                    else:
                        snapshot.append(record)
                elif "removed" in msg:
                    held.pop(msg["removed"]["instance_id"], None)
                    event = reported.removed(msg["removed"]["instance_id"])
                    if event is not None:
                        yield event
        # a clean end of stream (controller restarting): rotate to the next controller
        self._current = (self._current + 1) % len(self._urls)

    async def close(self) -> None:
        await self._http.aclose()
