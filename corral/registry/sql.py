"""Registry in a SQL table (SQLite file or PostgreSQL), shared by every process that opens
the same URL.

Design:

- One table, ``corral_instances(instance_id primary key, model, data, expires_at,
  updated_at)``; ``data`` is ``record_to_json(record)``. ``put`` is an upsert
  (``INSERT .. ON CONFLICT DO UPDATE``); ``remove`` is a ``DELETE``.
- Leases use wall-clock time (``time.time()``), because several processes, possibly on
  several hosts, compare the same ``expires_at``: their clocks must roughly agree (NTP).
  A row whose ``expires_at`` has passed is invisible to ``list`` at once; it is deleted
  later, opportunistically, by whichever watcher polls next.
- There are no server-side notifications: ``watch`` polls ``list`` every
  ``poll_interval`` seconds and diffs the result (compared as JSON text) against the
  previous poll, so a change shows up within one interval, and changes that cancel out
  within one interval are not seen. While the database is unreachable a watcher keeps
  its last view, logs one warning per outage and retries; the first successful poll
  after the outage reports what changed meanwhile.
- Database failures in ``put``/``remove``/``list``/``open`` surface as
  ``corral.core.errors.Unavailable`` whose message names the URL without its password.
- SQLite runs in WAL mode so that several processes can read while one writes; writers
  wait up to ``busy_timeout`` for the file lock.
- The URL handling, engine, schema creation and error mapping live in
  ``corral.registry.sqlbase``, shared with the SQL state store.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Sequence
from typing import Any

from sqlalchemy import Column, ColumnElement, Double, MetaData, Table, Text, delete, or_, select
from sqlalchemy.exc import DBAPIError

from corral.core.registry import SYNCED, InstanceRecord, RegistryEvent, WatchItem, record_from_json, record_to_json
from corral.registry.sqlbase import SqlBase

log = logging.getLogger(__name__)


class SqlRegistry(SqlBase):
    """``SqlRegistry("sqlite:///path/registry.db")`` or
    ``SqlRegistry("postgresql://user:password@host:5432/db")``; call ``open()`` first
    (it creates the table when missing, see ``SqlBase.open``)."""

    _what = "registry"
    _error_code = "registry_unavailable"
    _max_grace = 3600.0  # after an outage, expired leases are kept at most this long (the longest ttl)

    def __init__(self, url: str, poll_interval: float = 0.5) -> None:
        self._poll_interval = poll_interval
        self._closed = False
        metadata = MetaData()
        self._table = Table(
            "corral_instances",
            metadata,
            Column("instance_id", Text, primary_key=True),
            Column("model", Text, nullable=False),
            Column("data", Text, nullable=False),
            Column("expires_at", Double, nullable=True),
            Column("updated_at", Double, nullable=False),
        )
        super().__init__(url, metadata)  # ConfigError for an unsupported URL; no I/O

    async def put(self, record: InstanceRecord, ttl: float | None = None) -> None:
        now = time.time()
        values: dict[str, Any] = {
            "instance_id": record.instance_id,
            "model": record.model,
            "data": record_to_json(record),
            "expires_at": None if ttl is None else now + ttl,
            "updated_at": now,
        }
        statement = self._upsert(self._table, self._table.c.instance_id, values)
        with self._unavailable("put a record"):
            async with self._engine.begin() as conn:
                await conn.execute(statement)

    async def remove(self, instance_id: str) -> None:
        with self._unavailable("remove a record"):
            async with self._engine.begin() as conn:
                await conn.execute(delete(self._table).where(self._table.c.instance_id == instance_id))

    async def list(self) -> list[InstanceRecord]:
        """Live records (no lease, or a lease not yet expired), ordered by instance id."""
        with self._unavailable("list records"):
            rows, _ = await self._rows(time.time(), live_only=True)
        records, bad = _decode(rows)
        for instance_id in bad:
            log.warning("registry %s: skipping unreadable record %r", self.safe_url, instance_id)
        return [record for _, record in records.values()]

    async def watch(self) -> AsyncGenerator[WatchItem, None]:
        """Poll and diff (see the module docstring). Ends only when closed (``aclose``,
        cancellation, or ``close()`` of the registry); never raises database errors."""
        known: dict[str, tuple[str, InstanceRecord]] = {}
        reported_bad: set[str] = set()
        failing = False
        synced = False  # the consumer's view is complete (first poll, or first after an outage)
        recovered_at: float | None = None
        while not self._closed:
            try:
                now = time.time()
                # the first poll that succeeds after an outage is already the recovery
                rows, expired = await self._rows(now, recovered_at=now if failing else recovered_at)
                if expired and recovered_at is None:
                    await self._purge(now)
            except Exception as exc:  # noqa: BLE001 -- an outage, or anything else: keep the last view, retry
                if not failing:
                    log.warning(
                        "registry %s unreachable (%s); keeping the last view, retrying every %.1fs",
                        self.safe_url,
                        self._describe(exc),
                        self._poll_interval,
                    )
                    failing = True
            else:
                if failing:
                    log.info("registry %s reachable again", self.safe_url)
                    failing = synced = False
                    recovered_at = now
                elif recovered_at is not None and now - recovered_at > self._max_grace:
                    recovered_at = None
                current, bad = _decode(rows)
                for instance_id in bad - reported_bad:
                    log.warning("registry %s: skipping unreadable record %r", self.safe_url, instance_id)
                reported_bad = bad
                events = _diff(known, current)
                known = current
                for change in events:
                    yield change
                if not synced:
                    synced = True
                    yield SYNCED
            await asyncio.sleep(self._poll_interval)

    async def close(self) -> None:
        """Dispose of the connection pool; running watchers end after their current interval."""
        self._closed = True
        await super().close()

    # -- internals --

    def _live(self, now: float) -> ColumnElement[bool]:
        expires_at = self._table.c.expires_at
        return or_(expires_at.is_(None), expires_at > now)

    async def _rows(
        self, now: float, live_only: bool = False, recovered_at: float | None = None
    ) -> tuple[Sequence[tuple[str, str]], int]:
        """``(instance_id, data)`` of the live rows, and how many expired rows remain.

        After an outage (``recovered_at``) a lease that ran out while nobody could
        refresh it gets one more lease period from the recovery: its owner needs that
        long to notice the store is back, and dropping it first would empty every
        gateway's view for a moment."""
        table = self._table
        query = select(table.c.instance_id, table.c.data, table.c.expires_at, table.c.updated_at)
        query = query.order_by(table.c.instance_id)
        if live_only:
            query = query.where(self._live(now))
        async with self._engine.connect() as conn:
            result = await conn.execute(query)
            rows = [(row[0], row[1], row[2], row[3]) for row in result]

        def alive(expires: float | None, updated: float) -> bool:
            if expires is None or expires > now:
                return True
            return recovered_at is not None and now < recovered_at + (expires - updated)

        live = [(instance_id, data) for instance_id, data, expires, updated in rows if alive(expires, updated)]
        return live, len(rows) - len(live)

    async def _purge(self, now: float) -> None:
        """Delete expired leases (they are already invisible). Best effort: a lock
        conflict with another process just leaves them for the next poll."""
        expired = self._table.c.expires_at < now
        try:
            async with self._engine.begin() as conn:
                await conn.execute(delete(self._table).where(expired))
        except DBAPIError as exc:
            log.debug("registry %s: purge of expired leases failed: %s", self.safe_url, self._describe(exc))


def _decode(rows: Sequence[tuple[str, str]]) -> tuple[dict[str, tuple[str, InstanceRecord]], set[str]]:
    """Rows to ``{instance_id: (json, record)}``, plus the ids of rows that do not parse."""
    records: dict[str, tuple[str, InstanceRecord]] = {}
    bad: set[str] = set()
    for instance_id, data in rows:
        try:
            records[instance_id] = (data, record_from_json(data))
        except Exception:  # noqa: BLE001 -- a corrupt row, or one written by an incompatible version
            bad.add(instance_id)
    return records, bad


def _diff(
    before: dict[str, tuple[str, InstanceRecord]], after: dict[str, tuple[str, InstanceRecord]]
) -> list[RegistryEvent]:
    """Puts for new or changed records (by JSON text), then removals with the last known record."""
    events = [RegistryEvent(record) for key, (data, record) in after.items() if before.get(key, ("",))[0] != data]
    events += [RegistryEvent(record, removed=True) for key, (_, record) in before.items() if key not in after]
    return events
