"""In-process registry (standalone mode, and the controller's default store): a dict
with lease expiry and fan-out to watchers.

Time this process did not run (SIGSTOP, a paused VM, a stalled event loop) does not
count against leases: the holders' renewals could not be heard meanwhile, so leases are
moved on by the pause, the way etcd gives every lease a fresh TTL after an election.
Otherwise every instance would expire at once when the process resumes, before the
renewals waiting in its sockets are read."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from corral.core.registry import SYNCED, InstanceRecord, RegistryEvent, WatchItem


class EmbeddedRegistry:
    def __init__(self, sweep_interval: float = 0.5) -> None:
        self._records: dict[str, InstanceRecord] = {}
        self._expires: dict[str, float] = {}
        self._watchers: set[asyncio.Queue[RegistryEvent]] = set()
        self._sweep_interval = sweep_interval
        self._sweeper: asyncio.Task[None] | None = None

    async def open(self) -> None:
        """Nothing to prepare."""

    async def put(self, record: InstanceRecord, ttl: float | None = None) -> None:
        self._records[record.instance_id] = record
        if ttl is None:
            self._expires.pop(record.instance_id, None)
        else:
            self._expires[record.instance_id] = time.monotonic() + ttl
            if self._sweeper is None or self._sweeper.done():
                self._sweeper = asyncio.create_task(self._sweep(), name="registry-sweeper")
        self._publish(RegistryEvent(record))

    async def remove(self, instance_id: str) -> None:
        self._expires.pop(instance_id, None)
        record = self._records.pop(instance_id, None)
        if record is not None:
            self._publish(RegistryEvent(record, removed=True))

    async def list(self) -> list[InstanceRecord]:
        return list(self._records.values())

    async def watch(self) -> AsyncIterator[WatchItem]:
        queue: asyncio.Queue[RegistryEvent] = asyncio.Queue()
        self._watchers.add(queue)
        try:
            for record in list(self._records.values()):
                yield RegistryEvent(record)
            yield SYNCED
            while True:
                yield await queue.get()
        finally:
            self._watchers.discard(queue)

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()

    async def _sweep(self) -> None:
        last = time.monotonic()
        while self._expires:
            await asyncio.sleep(self._sweep_interval)
            now = time.monotonic()
            paused = now - last - self._sweep_interval
            last = now
            if paused > self._sweep_interval:  # this process was not running: give the time back
                for instance_id in self._expires:
                    self._expires[instance_id] += paused
            for instance_id in [i for i, t in self._expires.items() if t <= now]:
                await self.remove(instance_id)

    def _publish(self, event: RegistryEvent) -> None:
        for queue in self._watchers:
            queue.put_nowait(event)
