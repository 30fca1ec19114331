"""Standby records: how gateways learn that an autoscaled model exists at zero replicas.

A standby record is an ``InstanceRecord`` in state ``standby`` (id ``NAME~standby``,
worker ``autoscaler``): never routed to, it keeps the model listed in ``/v1/models`` and
tells every gateway to hold requests for it up to ``cold_start_timeout_s`` while it
wakes, instead of answering 503. The manager keeps one per autoscaled model; in a
cluster it is leased, so it vanishes with its controller.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Mapping

from corral.core.errors import CorralError
from corral.core.registry import InstanceRecord, InstanceState, Registry
from corral.core.spec import ModelSpec

log = logging.getLogger(__name__)

STANDBY_TTL_S = 15.0


def standby_record(spec: ModelSpec) -> InstanceRecord:
    assert spec.autoscale is not None
    return InstanceRecord(
        instance_id=f"{spec.name}~standby", model=spec.name, kind=spec.kind, engine=spec.engine,
        worker_id="autoscaler", state=InstanceState.STANDBY, routing=spec.routing,
        cold_start_timeout_s=spec.autoscale.cold_start_timeout_s, started_at=time.time(),
    )


class StandbyRecords:
    def __init__(self, registry: Registry, lease: bool) -> None:
        self._registry = registry
        self._ttl = STANDBY_TTL_S if lease else None
        self._put_at: dict[str, float] = {}

    async def keep(self, specs: Mapping[str, ModelSpec], view: Mapping[str, InstanceRecord], now: float) -> None:
        """One per autoscaled spec (renewed at a third of the lease); none for others."""
        for spec in specs.values():
            if spec.autoscale is None:
                continue
            record = standby_record(spec)
            current = view.get(record.instance_id)
            fresh = current is not None and current.cold_start_timeout_s == record.cold_start_timeout_s
            if fresh and (self._ttl is None or now - self._put_at.get(spec.name, 0.0) < self._ttl / 3):
                continue
            try:
                await self._registry.put(record, ttl=self._ttl)
                self._put_at[spec.name] = now
            except CorralError as exc:
                log.warning("cannot publish the standby record of %s: %s", spec.name, exc.message)
        for record in [r for r in view.values() if r.state is InstanceState.STANDBY]:
            spec = specs.get(record.model)
            if spec is None or spec.autoscale is None:
                self._put_at.pop(record.model, None)
                with contextlib.suppress(CorralError):
                    await self._registry.remove(record.instance_id)
