"""Desired state: the model specs an operator deployed, and the audit trail of changes.

The controller keeps them in a ``StateStore`` next to the registry (the same database or
etcd cluster), so models deployed at runtime come back after a controller restart.
Implementations: ``corral.state.memory``, ``.sql`` (SQLite, PostgreSQL), ``.etcd``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from corral.core.spec import ModelKind, ModelSpec


@dataclass(frozen=True)
class AuditEvent:
    time: float  # unix seconds
    actor: str  # who: the caller's declared name and address; never a token
    action: str  # deploy, stop, scale, restart, offline, online, update
    target: str  # a model name or an instance id
    detail: dict[str, Any] = field(default_factory=dict)


def spec_to_json(spec: ModelSpec) -> str:
    data = asdict(spec)
    data["kind"] = spec.kind.value
    return json.dumps(data, separators=(",", ":"), sort_keys=True)


def spec_from_json(text: str | bytes) -> ModelSpec:
    data = json.loads(text)
    data["kind"] = ModelKind(data["kind"])
    known = ModelSpec.__dataclass_fields__
    return ModelSpec(**{k: v for k, v in data.items() if k in known})


def audit_to_json(event: AuditEvent) -> str:
    return json.dumps(asdict(event), separators=(",", ":"), sort_keys=True)


def audit_from_json(text: str | bytes) -> AuditEvent:
    return AuditEvent(**json.loads(text))


class StateStore(Protocol):
    async def open(self) -> None:
        """Connect and create what is missing (tables); safe when several controllers do it."""
        ...

    async def list_models(self) -> list[ModelSpec]:
        """Every deployed spec, ordered by name."""
        ...

    async def put_model(self, spec: ModelSpec) -> None:
        """Create or replace the spec named ``spec.name``."""
        ...

    async def delete_model(self, name: str) -> None:
        """Removing a missing name is not an error."""
        ...

    async def append_audit(self, event: AuditEvent) -> None: ...

    async def audit(self, limit: int = 100) -> list[AuditEvent]:
        """The newest ``limit`` events, newest first."""
        ...

    async def close(self) -> None: ...
