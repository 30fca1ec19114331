"""The Registry interface: where instances are found.

Workers put their instances here (under a lease in distributed stores); gateways keep
a local view of it, fed by ``watch``, so no request waits on the registry.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol

from corral.core.spec import ModelKind


class InstanceState(str, Enum):
    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"
    OFFLINE = "offline"
    FAILED = "failed"


@dataclass(frozen=True)
class InstanceRecord:
    instance_id: str
    model: str
    kind: ModelKind
    engine: str
    worker_id: str
    state: InstanceState
    address: str | None = None  # None: served in the gateway's own process
    capabilities: frozenset[str] = field(default_factory=frozenset)
    started_at: float = 0.0
    last_error: str | None = None


@dataclass(frozen=True)
class RegistryEvent:
    """``record`` is the new state; ``removed`` means the instance is gone."""

    record: InstanceRecord
    removed: bool = False


class Registry(Protocol):
    async def put(self, record: InstanceRecord) -> None: ...

    async def remove(self, instance_id: str) -> None: ...

    async def list(self) -> list[InstanceRecord]: ...

    def watch(self) -> AsyncIterator[RegistryEvent]:
        """Every change after the call, in order. Callers first ``list``, then apply events."""
        ...
