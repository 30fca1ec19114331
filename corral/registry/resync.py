"""What a watch has reported, so that after a reconnect it yields only the difference
(the Registry watch contract). Shared by every registry whose watch can lose its
connection (SQL polling, etcd, a controller over HTTP)."""

from __future__ import annotations

from corral.core.registry import SYNCED, InstanceRecord, RegistryEvent, WatchItem


class Reported:
    def __init__(self) -> None:
        self._seen: dict[str, InstanceRecord] = {}

    def vanished(self, live: list[InstanceRecord]) -> list[str]:
        """The ids reported before that ``live`` lacks."""
        current = {r.instance_id for r in live}
        return [i for i in self._seen if i not in current]

    def resync(self, live: list[InstanceRecord], keep: frozenset[str] = frozenset()) -> list[WatchItem]:
        """Events that bring a consumer from what it was told to ``live``: a put for every
        live record (consumers treat repeats as no-ops), a removal for each vanished one
        (except those in ``keep``, still reported: removed later, if ever), then ``SYNCED``."""
        current = {r.instance_id: r for r in live}
        events: list[WatchItem] = [RegistryEvent(r) for r in live]
        for i, r in self._seen.items():
            if i not in current:
                if i in keep:
                    current[i] = r
                else:
                    events.append(RegistryEvent(r, removed=True))
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
