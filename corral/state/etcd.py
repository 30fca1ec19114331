"""Desired state in etcd, next to the etcd registry.

Keys:

- ``{prefix}/models/{name}`` holds ``spec_to_json(spec)``; ``list_models`` ranges the
  models prefix (etcd answers in key order, which is name order).
- ``{prefix}/keys/{id}`` holds ``key_to_json(key)`` (a virtual key: its hash, never the secret).
- ``{prefix}/usage/{gateway_id}`` holds ``report_to_json(report)``: each gateway's latest
  report of the keys' use, replaced at each exchange.
- ``{prefix}/audit/{time_ns:020d}-{random}`` holds ``audit_to_json(event)``; ``time_ns`` is
  the wall clock at the append (kept increasing within a process), so the key order is
  the append order, and ``audit(limit)`` ranges the prefix sorted by key, descending.
  The trail is kept bounded: after each append a count-only range checks its size, and
  when it exceeds ``audit_limit`` the oldest keys beyond it are deleted in one range.

HTTP calls, endpoint failover (``etcd://h1:2379,h2:2379``) and errors (``Unavailable``)
are the etcd registry's, from ``corral.registry.etcdbase``. Nothing needs preparing, so
``open()`` does nothing.
"""

from __future__ import annotations

import logging
import secrets
import time
from typing import Any

from corral.core.keys import VirtualKey, key_from_json, key_to_json
from corral.core.spec import ModelSpec
from corral.core.state import AuditEvent, audit_from_json, audit_to_json, spec_from_json, spec_to_json
from corral.core.usage import UsageReport, report_from_json, report_to_json
from corral.registry.etcdbase import EtcdBase, b64, prefix_range, unb64

log = logging.getLogger(__name__)


class EtcdStateStore(EtcdBase):
    _what = "etcd state store"
    _error_code = "state_unavailable"

    def __init__(self, url: str, prefix: str = "/corral", audit_limit: int = 10_000) -> None:
        super().__init__(url)  # endpoints, failover, the httpx client; no I/O
        base = prefix.rstrip("/")
        self._models_base = base + "/models/"
        self._audit_base = base + "/audit/"
        self._keys_base = base + "/keys/"
        self._keys_range = prefix_range(self._keys_base)
        self._usage_base = base + "/usage/"
        self._usage_range = prefix_range(self._usage_base)
        self._models_range = prefix_range(self._models_base)
        self._audit_range = prefix_range(self._audit_base)
        self._audit_limit = audit_limit
        self._last_ns = 0

    async def open(self) -> None:
        """Nothing to prepare: keys need no schema, and endpoints are tried on each call."""

    async def list_models(self) -> list[ModelSpec]:
        data = await self._call("/v3/kv/range", self._models_range)
        specs = [spec for spec in map(self._spec, data.get("kvs", [])) if spec is not None]
        return sorted(specs, key=lambda spec: spec.name)

    async def put_model(self, spec: ModelSpec) -> None:
        await self._call("/v3/kv/put", {"key": b64(self._models_base + spec.name), "value": b64(spec_to_json(spec))})

    async def delete_model(self, name: str) -> None:
        await self._call("/v3/kv/deleterange", {"key": b64(self._models_base + name)})

    async def list_keys(self) -> list[VirtualKey]:
        data = await self._call("/v3/kv/range", self._keys_range)
        keys = []
        for kv in data.get("kvs", []):
            try:
                keys.append(key_from_json(unb64(kv["value"])))
            except (ValueError, KeyError, TypeError) as e:
                log.warning("etcd state store: ignoring unreadable key at %s: %s", self._key_of(kv), e)
        return sorted(keys, key=lambda k: k.id)

    async def keys_version(self) -> str | None:
        """The newest modification revision under the keys prefix (etcd's revisions only
        grow) and the number of keys (a delete lowers it): one key read, not the list."""
        body = {**self._keys_range, "sort_order": "DESCEND", "sort_target": "MOD", "limit": "1", "keys_only": True}
        data = await self._call("/v3/kv/range", body)
        newest = data.get("kvs", [{}])[0].get("mod_revision", "0") if data.get("kvs") else "0"
        return f"{data.get('count', 0)}:{newest}"

    async def put_key(self, key: VirtualKey) -> None:
        await self._call("/v3/kv/put", {"key": b64(self._keys_base + key.id), "value": b64(key_to_json(key))})

    async def delete_key(self, key_id: str) -> None:
        await self._call("/v3/kv/deleterange", {"key": b64(self._keys_base + key_id)})

    async def put_usage(self, report: UsageReport) -> None:
        key = self._usage_base + report.gateway_id
        await self._call("/v3/kv/put", {"key": b64(key), "value": b64(report_to_json(report))})

    async def list_usage(self) -> list[UsageReport]:
        data = await self._call("/v3/kv/range", self._usage_range)
        reports = []
        for kv in data.get("kvs", []):
            try:
                reports.append(report_from_json(unb64(kv["value"])))
            except (ValueError, KeyError, TypeError) as e:
                log.warning("etcd state store: ignoring unreadable usage report at %s: %s", self._key_of(kv), e)
        return reports

    async def delete_usage(self, gateway_ids: list[str]) -> None:
        for gateway_id in gateway_ids:
            await self._call("/v3/kv/deleterange", {"key": b64(self._usage_base + gateway_id)})

    async def append_audit(self, event: AuditEvent) -> None:
        self._last_ns = max(time.time_ns(), self._last_ns + 1)
        key = f"{self._audit_base}{self._last_ns:020d}-{secrets.token_hex(4)}"
        await self._call("/v3/kv/put", {"key": b64(key), "value": b64(audit_to_json(event))})
        count = int((await self._call("/v3/kv/range", {**self._audit_range, "count_only": True})).get("count", 0))
        if count > self._audit_limit:
            await self._trim(count - self._audit_limit)

    async def audit(self, limit: int = 100) -> list[AuditEvent]:
        """The newest ``limit`` events, newest first."""
        if limit <= 0:  # etcd reads limit 0 as "no limit"
            return []
        body = {**self._audit_range, "sort_order": "DESCEND", "sort_target": "KEY", "limit": str(limit)}
        data = await self._call("/v3/kv/range", body)
        events = []
        for kv in data.get("kvs", []):
            try:
                events.append(audit_from_json(unb64(kv["value"])))
            except (ValueError, KeyError, TypeError) as e:
                log.warning("etcd state store: ignoring unreadable audit event at %s: %s", self._key_of(kv), e)
        return events

    # --- internals -------------------------------------------------------------------------

    async def _trim(self, excess: int) -> None:
        """Delete the ``excess`` oldest audit keys (one range read, one range delete)."""
        body = {**self._audit_range, "sort_order": "ASCEND", "sort_target": "KEY", "limit": str(excess)}
        oldest = (await self._call("/v3/kv/range", {**body, "keys_only": True})).get("kvs", [])
        if oldest:
            last = unb64(oldest[-1]["key"])
            await self._call(
                "/v3/kv/deleterange", {"key": self._audit_range["key"], "range_end": b64(last + b"\0")}
            )

    @staticmethod
    def _key_of(kv: dict[str, Any]) -> str:
        return unb64(kv.get("key", "")).decode(errors="replace")

    def _spec(self, kv: dict[str, Any]) -> ModelSpec | None:
        try:
            return spec_from_json(unb64(kv["value"]))
        except (ValueError, KeyError, TypeError) as e:
            log.warning("etcd state store: ignoring unreadable model at %s: %s", self._key_of(kv), e)
            return None
