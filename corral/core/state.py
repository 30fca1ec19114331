"""Desired state: the model specs an operator deployed, the virtual API keys, and the
audit trail of changes (and, beside them, the gateways' reports of the keys' use).

The controller keeps them in a ``StateStore`` next to the registry (the same database or
etcd cluster), so models deployed at runtime come back after a controller restart.
Implementations: ``corral.state.memory``, ``.sql`` (SQLite, PostgreSQL), ``.etcd``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from corral.core.keys import VirtualKey
from corral.core.usage import UsageStore
from corral.core.spec import AutoscalePolicy, ModelKind, ModelSpec, Resources, SamplingDefaults


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
    data["resources"] = spec.resources.as_dict() if spec.resources is not None else None
    return json.dumps(data, separators=(",", ":"), sort_keys=True)


def spec_from_json(text: str | bytes) -> ModelSpec:
    data = json.loads(text)
    data["kind"] = ModelKind(data["kind"])
    if data.get("autoscale") is not None:
        policy_fields = AutoscalePolicy.__dataclass_fields__
        data["autoscale"] = AutoscalePolicy(**{k: v for k, v in data["autoscale"].items() if k in policy_fields})
    if data.get("sampling") is not None:
        data["sampling"] = SamplingDefaults(**{k: v for k, v in data["sampling"].items()
                                               if k in SamplingDefaults.__dataclass_fields__})
    if data.get("resources") is not None:
        data["resources"] = resources_from_dict(data["resources"])
    known = ModelSpec.__dataclass_fields__
    return ModelSpec(**{k: v for k, v in data.items() if k in known})


def resources_from_dict(data: dict[str, Any]) -> Resources:
    """The JSON form of ``Resources`` (``Resources.as_dict``) back, as stored or sent to a worker."""
    custom = tuple(sorted((str(k), float(v)) for k, v in (data.get("custom") or {}).items()))
    return Resources(num_cpus=data.get("num_cpus"), num_gpus=data.get("num_gpus"), memory_gb=data.get("memory_gb"),
                     custom=custom)


def audit_to_json(event: AuditEvent) -> str:
    return json.dumps(asdict(event), separators=(",", ":"), sort_keys=True)


def audit_from_json(text: str | bytes) -> AuditEvent:
    return AuditEvent(**json.loads(text))


class StateStore(UsageStore, Protocol):
    """Models, keys, the audit trail, and the gateways' usage reports (``UsageStore``)."""

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

    async def list_keys(self) -> list[VirtualKey]:
        """Every virtual key (hashes only, never a secret), ordered by id."""
        ...

    async def put_key(self, key: VirtualKey) -> None:
        """Create or replace the key with ``key.id``."""
        ...

    async def keys_version(self) -> str | None:
        """Changes whenever a key is put or deleted; cheap whatever the number of keys."""
        ...

    async def delete_key(self, key_id: str) -> None:
        """Removing a missing id is not an error (a revoke keeps the key: ``revoked_at``)."""
        ...

    async def append_audit(self, event: AuditEvent) -> None: ...

    async def audit(self, limit: int = 100) -> list[AuditEvent]:
        """The newest ``limit`` events, newest first."""
        ...

    async def close(self) -> None: ...
