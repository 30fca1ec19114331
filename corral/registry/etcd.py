"""The etcd registry: one key per instance, leases for ttls, etcd's watch for changes.

It speaks etcd's v3 grpc-gateway JSON API (``POST /v3/kv/range``, ``/v3/watch``, ...) with
httpx, so neither an etcd client library nor gRPC is needed. Keys and values travel
base64-encoded and int64s as strings. Layout: ``{prefix}/instances/{instance_id}`` holds
``record_to_json(record)``.

Endpoints: ``etcd://host:port[,host2:port2,...]``. Every call goes to the endpoint that last
answered and fails over to the others, in order, on connection errors; when none answers,
``put``/``remove``/``list`` raise ``Unavailable`` (so do errors etcd itself reports).

Leases: ``put(record, ttl)`` grants one lease per instance id (TTL rounded up to whole
seconds; etcd stretches anything below its minimum, about 2 s) and puts the key on it.
Later puts with the same ttl refresh the lease with a keepalive and put the value on it
again. A lease etcd no longer knows (expired, revoked; keepalive then answers TTL 0) is
replaced by a new grant. A put without ttl writes the key without a lease first and only
then revokes the old lease: revoking a lease deletes the keys still attached to it.
``close()`` revokes nothing; a stopped or crashed worker's records expire by themselves.

Watch: range the prefix (a snapshot and the store revision), yield it, then stream
``/v3/watch`` from revision + 1. DELETE events (removals and lease expiries) carry only the
key, so a removal carries the last record reported for that id. When anything goes wrong
(connection lost, etcd down, watch canceled by a compaction) it logs one warning per
outage, waits (0.2 s doubling up to 2 s), ranges again, yields the difference against what
it reported (puts for every live record, removals for vanished ones) and watches from the
new revision. It ends only when closed, cancelled, or after ``close()``.

The HTTP calls, endpoint failover and base64 helpers live in ``corral.registry.etcdbase``,
shared with the etcd state store.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import httpx

from corral.core.registry import InstanceRecord, RegistryEvent, WatchItem, record_from_json, record_to_json
from corral.registry.etcdbase import EtcdBase, EtcdError, b64, parse_etcd_url, prefix_range, unb64
from corral.registry.resync import Reported

__all__ = ["EtcdRegistry", "parse_etcd_url"]

log = logging.getLogger(__name__)

_NOT_FOUND = 5  # the gRPC status etcd answers for an unknown lease
_BACKOFF_MIN = 0.2
_BACKOFF_MAX = 2.0


class _WatchBroken(Exception):
    """The watch stream ended or etcd canceled it: list again and watch again."""


class _Compacted(_WatchBroken):
    """The watch asked for a revision etcd has compacted away."""


class EtcdRegistry(EtcdBase):
    _what = "etcd registry"
    _error_code = "registry_unavailable"

    def __init__(self, url: str, prefix: str = "/corral") -> None:
        super().__init__(url)  # endpoints, failover, the httpx client
        self._base = prefix.rstrip("/") + "/instances/"
        self._range = prefix_range(self._base)
        self._leases: dict[str, tuple[str, int]] = {}  # instance id -> (lease id, ttl in seconds)
        self._locks: dict[str, asyncio.Lock] = {}  # one lease dance at a time per instance id
        self._closed = False

    async def open(self) -> None:
        """Nothing to prepare: keys need no schema, and endpoints are tried on each call."""

    async def put(self, record: InstanceRecord, ttl: float | None = None) -> None:
        instance_id = record.instance_id
        kv = {"key": b64(self._key(instance_id)), "value": b64(record_to_json(record))}
        async with self._locks.setdefault(instance_id, asyncio.Lock()):
            held = self._leases.get(instance_id)
            if ttl is None:
                await self._call("/v3/kv/put", kv)
                if held is not None:
                    del self._leases[instance_id]
                    await self._revoke(held[0])
                return
            seconds = max(1, math.ceil(ttl))
            if held is not None and held[1] == seconds and await self._keepalive(held[0]):
                try:
                    await self._call("/v3/kv/put", {**kv, "lease": held[0]})
                    return
                except EtcdError as e:  # expired between the keepalive and the put
                    if e.grpc_code != _NOT_FOUND:
                        raise
            lease = str((await self._call("/v3/lease/grant", {"TTL": seconds}))["ID"])
            await self._call("/v3/kv/put", {**kv, "lease": lease})
            self._leases[instance_id] = (lease, seconds)
            if held is not None:
                await self._revoke(held[0])  # a ttl change; harmless when it is already gone

    async def remove(self, instance_id: str) -> None:
        async with self._locks.setdefault(instance_id, asyncio.Lock()):
            await self._call("/v3/kv/deleterange", {"key": b64(self._key(instance_id))})
            held = self._leases.pop(instance_id, None)
            if held is not None:
                await self._revoke(held[0])

    async def list(self) -> list[InstanceRecord]:
        records, _ = await self._snapshot()
        return list(records.values())

    async def watch(self) -> AsyncIterator[WatchItem]:
        reported = Reported()
        delay, down = _BACKOFF_MIN, False
        while not self._closed:
            compacted = False
            try:
                records, revision = await self._snapshot()
                for event in reported.resync(list(records.values())):
                    yield event
                async with aclosing(self._stream(revision + 1, reported)) as stream:
                    async for event in stream:
                        if event is not None:
                            yield event
                        else:  # the watch is established
                            if down:
                                log.info("etcd registry reachable again: watching from revision %d", revision + 1)
                            delay, down = _BACKOFF_MIN, False
                problem = "the watch stream ended"
            except _Compacted as e:
                problem, compacted = str(e), True
            except Exception as e:  # noqa: BLE001 - a watch waits out every failure
                problem = f"{type(e).__name__}: {e}"
            if self._closed:
                return
            if compacted:
                log.info("etcd registry watch: %s; listing again", problem)
            elif not down:
                down = True
                log.warning("etcd registry watch interrupted (%s); keeping the last view and retrying", problem)
            await asyncio.sleep(delay)
            delay = min(delay * 2, _BACKOFF_MAX)

    async def close(self) -> None:
        self._closed = True
        await super().close()

    # --- internals -------------------------------------------------------------------------

    def _key(self, instance_id: str) -> str:
        return self._base + instance_id

    async def _keepalive(self, lease: str) -> bool:
        """Refresh a lease; False when etcd no longer knows it."""
        data = await self._call("/v3/lease/keepalive", {"ID": lease})
        return int(data.get("result", {}).get("TTL", 0)) > 0

    async def _revoke(self, lease: str) -> None:
        try:
            await self._call("/v3/lease/revoke", {"ID": lease})
        except EtcdError as e:
            if e.grpc_code != _NOT_FOUND:
                raise

    def _decode(self, kv: dict[str, Any]) -> tuple[str, InstanceRecord | None] | None:
        """(instance id, record) for a key under the prefix; record None if unreadable."""
        key = unb64(kv.get("key", "")).decode(errors="replace")
        if not key.startswith(self._base):
            return None
        instance_id = key[len(self._base) :]
        if "value" not in kv:  # DELETE events carry no value
            return instance_id, None
        try:
            return instance_id, record_from_json(unb64(kv["value"]))
        except (ValueError, KeyError, TypeError) as e:
            log.warning("etcd registry: ignoring unreadable record at %s: %s", key, e)
            return instance_id, None

    async def _snapshot(self) -> tuple[dict[str, InstanceRecord], int]:
        data = await self._call("/v3/kv/range", self._range)
        records: dict[str, InstanceRecord] = {}
        for kv in data.get("kvs", []):
            decoded = self._decode(kv)
            if decoded is not None and decoded[1] is not None:
                records[decoded[0]] = decoded[1]
        return records, int(data["header"]["revision"])

    async def _stream(self, start: int, reported: Reported) -> AsyncIterator[RegistryEvent | None]:
        """Events from ``start`` on (None once etcd confirms the watch), keeping ``reported``
        up to date; raises when the stream breaks or etcd cancels it."""
        body = {"create_request": {**self._range, "start_revision": str(start)}}
        url = self._endpoints[self._current] + "/v3/watch"
        async with self._client.stream("POST", url, json=body, timeout=httpx.Timeout(5.0, read=None)) as response:
            if response.is_error:
                raise _WatchBroken(f"etcd answered the watch with HTTP {response.status_code}")
            async for line in response.aiter_lines():
                if not line.strip():
                    continue
                message = json.loads(line)
                result = message.get("result")
                if not isinstance(result, dict):
                    raise _WatchBroken(f"etcd watch error: {message.get('error', message)}")
                if result.get("created"):
                    yield None
                if result.get("canceled"):
                    if result.get("compact_revision"):
                        raise _Compacted(f"revision {start} compacted (now {result['compact_revision']})")
                    raise _WatchBroken(f"etcd canceled the watch: {result.get('cancel_reason', 'no reason')}")
                for event in result.get("events", []):
                    decoded = self._decode(event.get("kv", {}))
                    if decoded is None:
                        continue
                    instance_id, record = decoded
                    if event.get("type") == "DELETE":
                        gone = reported.removed(instance_id)
                        if gone is not None:
                            yield gone
                    elif record is not None:
                        yield reported.put(record)
