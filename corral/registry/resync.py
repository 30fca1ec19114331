"""What a watch has reported, so that after a reconnect it yields only the difference
(the Registry watch contract). Shared by every registry whose watch can lose its
connection (SQL polling, etcd, a controller over HTTP)."""

from __future__ import annotations

from corral.core.registry import SYNCED, InstanceRecord, RegistryEvent, WatchItem


class Reported:
    def __init__(self) -> None:
        self._seen: dict[str, InstanceRecord] = {}

    def resync(self, live: list[InstanceRecord]) -> list[WatchItem]:
        """Events that bring a consumer from what it was told to ``live``: a put for every
        live record (consumers treat repeats as no-ops), a removal for each vanished one,
        then ``SYNCED``."""
        current = {r.instance_id: r for r in live}
        events: list[WatchItem] = [RegistryEvent(r) for r in live]
        events += [RegistryEvent(r, removed=True) for i, r in self._seen.items() if i not in current]
        events.append(SYNCED)
        self._seen = current
        return events

    def put(self, record: InstanceRecord) -> RegistryEvent:
        self._seen[record.instance_id] = record
        return RegistryEvent(record)

    def removed(self, instance_id: str) -> RegistryEvent | None:
        """The removal event for ``instance_id``, or None if it was never reported."""
        record = self._seen.pop(instance_id, None)
        return RegistryEvent(record, removed=True) if record is not None else None
