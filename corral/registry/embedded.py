"""In-process registry for standalone mode: a dict plus fan-out to watchers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from corral.core.registry import InstanceRecord, RegistryEvent


class EmbeddedRegistry:
    def __init__(self) -> None:
        self._records: dict[str, InstanceRecord] = {}
        self._watchers: set[asyncio.Queue[RegistryEvent]] = set()

    async def put(self, record: InstanceRecord) -> None:
        self._records[record.instance_id] = record
        self._publish(RegistryEvent(record))

    async def remove(self, instance_id: str) -> None:
        record = self._records.pop(instance_id, None)
        if record is not None:
            self._publish(RegistryEvent(record, removed=True))

    async def list(self) -> list[InstanceRecord]:
        return list(self._records.values())

    async def watch(self) -> AsyncIterator[RegistryEvent]:
        queue: asyncio.Queue[RegistryEvent] = asyncio.Queue()
        self._watchers.add(queue)
        try:
            while True:
                yield await queue.get()
        finally:
            self._watchers.discard(queue)

    def _publish(self, event: RegistryEvent) -> None:
        for queue in self._watchers:
            queue.put_nowait(event)
