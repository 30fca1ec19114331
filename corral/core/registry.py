"""The Registry interface: where instances are found.

Workers put their instances here under a lease (``ttl``: a record not put again within
``ttl`` seconds disappears, so a dead worker's instances vanish by themselves); gateways
keep a local view of it fed by ``watch``, so no request waits on the registry.
Implementations: ``corral.registry.embedded`` (in process), ``.sql`` (SQLite or
PostgreSQL), ``.etcd`` (leases + watch), ``.remote`` (a controller's registry over HTTP).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any, Protocol, runtime_checkable

from corral.core.spec import ModelKind


class InstanceState(str, Enum):
    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"
    OFFLINE = "offline"
    FAILED = "failed"
    STANDBY = "standby"  # not an instance: an autoscaled model at zero that wakes on demand


@dataclass(frozen=True)
class InstanceRecord:
    instance_id: str
    model: str
    kind: ModelKind
    engine: str
    worker_id: str
    state: InstanceState
    address: str | None = None  # base URL of the worker serving it; None: the gateway's own process
    capabilities: frozenset[str] = field(default_factory=frozenset)
    started_at: float = 0.0
    last_error: str | None = None
    routing: str = "power_of_two"  # the model's balancing policy, carried so every gateway agrees
    weight: float = 1.0  # for weighted policies
    max_concurrency: int = 0  # gateway-side limit of requests in flight to this instance; 0: none
    managed: bool = False  # started by the controller (vs. a worker's own config file)
    cold_start_timeout_s: float = 0.0  # STANDBY records: how long gateways hold a request while it wakes
    # the model's sampling defaults ((name, value) pairs), applied by gateways to what a request leaves out
    sampling: tuple[tuple[str, float], ...] = ()


def record_to_json(record: InstanceRecord) -> str:
    data: dict[str, Any] = asdict(record)
    data["kind"] = record.kind.value
    data["state"] = record.state.value
    data["capabilities"] = sorted(record.capabilities)
    return json.dumps(data, separators=(",", ":"))


def record_from_json(text: str | bytes) -> InstanceRecord:
    data = json.loads(text)
    data["kind"] = ModelKind(data["kind"])
    data["state"] = InstanceState(data["state"])
    data["capabilities"] = frozenset(data.get("capabilities", ()))
    data["sampling"] = tuple((str(k), float(v)) for k, v in data.get("sampling", ()))
    known = InstanceRecord.__dataclass_fields__
    return InstanceRecord(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class RegistryEvent:
    """``record`` is the new state; ``removed`` means the instance is gone."""

    record: InstanceRecord
    removed: bool = False


@dataclass(frozen=True)
class Synced:
    """Yielded by a watch once the consumer's view is complete: after the initial
    snapshot and after every resync that follows a reconnect."""


SYNCED = Synced()

WatchItem = RegistryEvent | Synced


class Registry(Protocol):
    async def open(self) -> None:
        """Connect and prepare the store (create tables...). Called once, on the event
        loop that will use the registry."""
        ...

    async def put(self, record: InstanceRecord, ttl: float | None = None) -> None:
        """Create or replace a record. With ``ttl`` the record is leased: it disappears
        (watchers see a removal) unless put again within ``ttl`` seconds."""
        ...

    async def remove(self, instance_id: str) -> None: ...

    async def list(self) -> list[InstanceRecord]:
        """Live records only (expired leases excluded)."""
        ...

    def watch(self) -> AsyncIterator[WatchItem]:
        """The current state, then every change, in order, until the iterator is closed.

        It first yields a put event for every live record (a snapshot) and then
        ``SYNCED``, then changes. While the store is unreachable it just waits (callers
        keep serving from their last view); after reconnecting it yields what changed
        meanwhile (puts for every live record, removals for records it reported that are
        gone) and ``SYNCED`` again. Applying the same put twice must be harmless."""
        ...

    async def close(self) -> None: ...


@runtime_checkable
class WorkerDirectory(Protocol):
    """Optional capability of a registry served by a controller: workers announce
    themselves so the controller can place instances on them."""

    async def announce_worker(
        self, worker_id: str, address: str | None, engines: list[str], ttl: float, max_instances: int = 0
    ) -> None:
        """``max_instances``: how many instances the worker takes (0: no limit)."""
        ...
