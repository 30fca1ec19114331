"""Desired state in the controller's memory: lost when it stops (standalone mode, or a
controller started without a persistent --registry)."""

from __future__ import annotations

from collections import deque

from corral.core.keys import VirtualKey
from corral.core.spec import ModelSpec
from corral.core.state import AuditEvent
from corral.core.usage import UsageReport


class MemoryStateStore:
    def __init__(self, audit_limit: int = 10_000) -> None:
        self._models: dict[str, ModelSpec] = {}
        self._keys: dict[str, VirtualKey] = {}
        self._keys_changes = 0
        self._audit: deque[AuditEvent] = deque(maxlen=audit_limit)
        self._usage: dict[str, UsageReport] = {}

    async def open(self) -> None:
        """Nothing to prepare."""

    async def list_models(self) -> list[ModelSpec]:
        return [self._models[name] for name in sorted(self._models)]

    async def put_model(self, spec: ModelSpec) -> None:
        self._models[spec.name] = spec

    async def delete_model(self, name: str) -> None:
        self._models.pop(name, None)

    async def list_keys(self) -> list[VirtualKey]:
        return [self._keys[k] for k in sorted(self._keys)]

    async def put_key(self, key: VirtualKey) -> None:
        self._keys[key.id] = key
        self._keys_changes += 1

    async def delete_key(self, key_id: str) -> None:
        self._keys.pop(key_id, None)
        self._keys_changes += 1

    async def keys_version(self) -> str | None:
        return str(self._keys_changes)

    async def append_audit(self, event: AuditEvent) -> None:
        self._audit.append(event)

    async def audit(self, limit: int = 100) -> list[AuditEvent]:
        return list(reversed(self._audit))[:limit]

    async def put_usage(self, report: UsageReport) -> None:
        self._usage[report.gateway_id] = report

    async def list_usage(self) -> list[UsageReport]:
        return list(self._usage.values())

    async def delete_usage(self, gateway_ids: list[str]) -> None:
        for gateway_id in gateway_ids:
            self._usage.pop(gateway_id, None)

    async def close(self) -> None:
        """Nothing to release."""
