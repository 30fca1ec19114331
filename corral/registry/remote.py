"""A controller's registry, over HTTP: what workers and gateways use with
``--controller URL``. The controller keeps the records in its own store (embedded, SQL
or etcd) and applies the leases; this client only speaks its ``/cluster/v1`` API.

Several controller URLs (comma-separated) are tried in order, so a pair of controllers
sharing an SQL or etcd store gives high availability.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import httpx
import orjson

from corral.core.errors import CorralError, Unauthorized, Unavailable
from corral.core.registry import SYNCED, InstanceRecord, WatchItem, record_from_json, record_to_json
from corral.registry.resync import Reported

log = logging.getLogger(__name__)

HEARTBEAT_TIMEOUT = 15.0  # the controller sends a keep-alive line every 5 s


class RemoteRegistry:
    def __init__(self, urls: str, token: str | None) -> None:
        self._urls = [u.strip().rstrip("/") for u in urls.split(",") if u.strip()]
        headers = {"authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.AsyncClient(headers=headers, timeout=httpx.Timeout(10.0, connect=3.0))
        self._current = 0

    async def _request(self, method: str, path: str, **kwargs: object) -> httpx.Response:
        errors = []
        for offset in range(len(self._urls)):
            index = (self._current + offset) % len(self._urls)
            try:
                resp = await self._http.request(method, self._urls[index] + path, **kwargs)  # type: ignore[arg-type]
            except (httpx.TransportError, OSError) as exc:
                errors.append(f"{self._urls[index]}: {type(exc).__name__}")
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

    async def put(self, record: InstanceRecord, ttl: float | None = None) -> None:
        params = {"ttl": str(ttl)} if ttl is not None else {}
        await self._request(
            "PUT", f"/cluster/v1/instances/{record.instance_id}", content=record_to_json(record), params=params
        )

    async def announce_worker(self, worker_id: str, address: str | None, engines: list[str], ttl: float) -> None:
        """Tell the controller this worker is alive and what it can run (a heartbeat)."""
        body = orjson.dumps({"address": address, "engines": engines})
        await self._request("PUT", f"/cluster/v1/workers/{worker_id}", content=body, params={"ttl": str(ttl)})

    async def remove(self, instance_id: str) -> None:
        await self._request("DELETE", f"/cluster/v1/instances/{instance_id}")

    async def list(self) -> list[InstanceRecord]:
        resp = await self._request("GET", "/cluster/v1/instances")
        return [record_from_json(orjson.dumps(r)) for r in resp.json()["instances"]]

    async def watch(self) -> AsyncIterator[WatchItem]:
        reported = Reported()
        backoff = 0.2
        down = False
        while True:
            try:
                async for event in self._watch_once(reported):
                    if down:
                        log.info("controller watch reconnected")
                        down = False
                    backoff = 0.2
                    yield event
            except (httpx.TransportError, OSError, CorralError, TimeoutError) as exc:
                if not down:
                    log.warning("lost the controller's watch (%s); serving from the last view", type(exc).__name__)
                    down = True
                self._current = (self._current + 1) % len(self._urls)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)

    async def _watch_once(self, reported: Reported) -> AsyncIterator[WatchItem]:
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
                msg = orjson.loads(line)
                if "synced" in msg:
                    if synced:
                        yield SYNCED
                    else:  # end of the snapshot: tell the consumer what changed while away
                        synced = True
                        for event in reported.resync(snapshot):
                            yield event
                elif "put" in msg:
                    record = record_from_json(orjson.dumps(msg["put"]))
                    if synced:
                        yield reported.put(record)
                    else:
                        snapshot.append(record)
                elif "removed" in msg:
                    event = reported.removed(msg["removed"]["instance_id"])
                    if event is not None:
                        yield event
        # a clean end of stream (controller restarting): rotate to the next controller
        self._current = (self._current + 1) % len(self._urls)

    async def close(self) -> None:
        await self._http.aclose()
