"""Desired state in SQL tables (SQLite file or PostgreSQL), next to the SQL registry.

Tables:

- ``corral_models(name primary key, data, updated_at)``: ``data`` is
  ``spec_to_json(spec)``; ``put_model`` is an upsert, ``delete_model`` a ``DELETE``.
- ``corral_keys(id primary key, data, updated_at)``: ``data`` is ``key_to_json(key)``
  (a virtual key: its hash, never the secret).
- ``corral_usage(gateway_id primary key, data, updated_at)``: ``data`` is
  ``report_to_json(report)``, each gateway's latest report of the keys' use (one
  upsert per exchange, replaced, never appended).
- ``corral_audit(id autoincrement primary key, time, data)``: ``data`` is
  ``audit_to_json(event)``. Newest first means highest id first (the order of the appends,
  whatever the writers' clocks say). The table is kept bounded: each append also deletes
  the rows more than ``audit_limit`` ids older than its own.

The URL mapping, engine, schema creation (safe when several controllers open the same
database together) and error mapping (``Unavailable`` without the password) are the SQL
registry's, from ``corral.registry.sqlbase``.
"""

from __future__ import annotations

import logging
import time

from sqlalchemy import BigInteger, Column, Double, Integer, MetaData, Table, Text, delete, func, select

from corral.core.keys import VirtualKey, key_from_json, key_to_json
from corral.core.spec import ModelSpec
from corral.core.state import AuditEvent, audit_from_json, audit_to_json, spec_from_json, spec_to_json
from corral.core.usage import UsageReport, report_from_json, report_to_json
from corral.registry.sqlbase import SqlBase

log = logging.getLogger(__name__)


class SqlStateStore(SqlBase):
    """``SqlStateStore("sqlite:///path/corral.db")`` or
    ``SqlStateStore("postgresql://user:password@host:5432/db")``; call ``open()`` first."""

    _what = "state store"
    _error_code = "state_unavailable"

    def __init__(self, url: str, audit_limit: int = 10_000) -> None:
        self._audit_limit = audit_limit
        metadata = MetaData()
        self._models = Table(
            "corral_models",
            metadata,
            Column("name", Text, primary_key=True),
            Column("data", Text, nullable=False),
            Column("updated_at", Double, nullable=False),
        )
        self._keys = Table(
            "corral_keys",
            metadata,
            Column("id", Text, primary_key=True),
            Column("data", Text, nullable=False),
            Column("updated_at", Double, nullable=False),
        )
        self._usage = Table(
            "corral_usage",
            metadata,
            Column("gateway_id", Text, primary_key=True),
            Column("data", Text, nullable=False),
            Column("updated_at", Double, nullable=False),
        )
        self._audit = Table(
            "corral_audit",
            metadata,
            # BIGSERIAL on PostgreSQL; on SQLite only INTEGER PRIMARY KEY is the autoincrementing rowid
            Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
            Column("time", Double, nullable=False),
            Column("data", Text, nullable=False),
        )
        super().__init__(url, metadata)  # ConfigError for an unsupported URL; no I/O

    async def list_models(self) -> list[ModelSpec]:
        """Every deployed spec, ordered by name (code point order, whatever the database's collation)."""
        with self._unavailable("list models"):
            async with self._engine.connect() as conn:
                rows = (await conn.execute(select(self._models.c.name, self._models.c.data))).all()
        specs = []
        for name, data in sorted(rows):
            try:
                specs.append(spec_from_json(data))
            except Exception as exc:  # noqa: BLE001 -- a corrupt row, or one from an incompatible version
                log.warning("state store %s: skipping unreadable model %r: %s", self.safe_url, name, exc)
        return specs

    async def put_model(self, spec: ModelSpec) -> None:
        values = {"name": spec.name, "data": spec_to_json(spec), "updated_at": time.time()}
        statement = self._upsert(self._models, self._models.c.name, values)
        with self._unavailable("save a model"):
            async with self._engine.begin() as conn:
                await conn.execute(statement)

    async def delete_model(self, name: str) -> None:
        with self._unavailable("delete a model"):
            async with self._engine.begin() as conn:
                await conn.execute(delete(self._models).where(self._models.c.name == name))

    async def list_keys(self) -> list[VirtualKey]:
        with self._unavailable("list keys"):
            async with self._engine.connect() as conn:
                rows = (await conn.execute(select(self._keys.c.id, self._keys.c.data))).all()
        keys = []
        for key_id, data in sorted(rows):
            try:
                keys.append(key_from_json(data))
            except Exception as exc:  # noqa: BLE001 -- a corrupt row, or one from an incompatible version
                log.warning("state store %s: skipping unreadable key %r: %s", self.safe_url, key_id, exc)
        return keys

    async def keys_version(self) -> str | None:
        """The row count and the sum of the rows' ``updated_at``: a put changes the sum (even
        from a controller whose clock is behind, unlike a max), a delete the count."""
        query = select(func.count(), func.sum(self._keys.c.updated_at)).select_from(self._keys)
        with self._unavailable("read the keys' version"):
            async with self._engine.connect() as conn:
                count, total = (await conn.execute(query)).one()
        return f"{count}:{total!r}"

    async def put_key(self, key: VirtualKey) -> None:
        values = {"id": key.id, "data": key_to_json(key), "updated_at": time.time()}
        statement = self._upsert(self._keys, self._keys.c.id, values)
        with self._unavailable("save a key"):
            async with self._engine.begin() as conn:
                await conn.execute(statement)

    async def delete_key(self, key_id: str) -> None:
        with self._unavailable("delete a key"):
            async with self._engine.begin() as conn:
                await conn.execute(delete(self._keys).where(self._keys.c.id == key_id))

    async def put_usage(self, report: UsageReport) -> None:
        values = {"gateway_id": report.gateway_id, "data": report_to_json(report), "updated_at": report.at}
        statement = self._upsert(self._usage, self._usage.c.gateway_id, values)
        with self._unavailable("save a usage report"):
            async with self._engine.begin() as conn:
                await conn.execute(statement)

    async def list_usage(self) -> list[UsageReport]:
        with self._unavailable("list usage reports"):
            async with self._engine.connect() as conn:
                rows = (await conn.execute(select(self._usage.c.gateway_id, self._usage.c.data))).all()
        reports = []
        for gateway_id, data in rows:
            try:
                reports.append(report_from_json(data))
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("state store %s: skipping unreadable usage report %r: %s", self.safe_url, gateway_id, exc)
        return reports

    async def delete_usage(self, gateway_ids: list[str]) -> None:
        with self._unavailable("delete usage reports"):
            async with self._engine.begin() as conn:
                await conn.execute(delete(self._usage).where(self._usage.c.gateway_id.in_(gateway_ids)))

    async def append_audit(self, event: AuditEvent) -> None:
        table = self._audit
        with self._unavailable("append to the audit trail"):
            async with self._engine.begin() as conn:
                result = await conn.execute(table.insert().values(time=event.time, data=audit_to_json(event)))
                (new_id,) = result.inserted_primary_key or (None,)
                if new_id is not None and new_id > self._audit_limit:
                    await conn.execute(delete(table).where(table.c.id <= new_id - self._audit_limit))

    async def audit(self, limit: int = 100) -> list[AuditEvent]:
        """The newest ``limit`` events, newest first."""
        if limit <= 0:
            return []
        query = select(self._audit.c.id, self._audit.c.data).order_by(self._audit.c.id.desc()).limit(limit)
        with self._unavailable("read the audit trail"):
            async with self._engine.connect() as conn:
                rows = (await conn.execute(query)).all()
        events = []
        for row_id, data in rows:
            try:
                events.append(audit_from_json(data))
            except Exception as exc:  # noqa: BLE001 -- a corrupt row, or one from an incompatible version
                log.warning("state store %s: skipping unreadable audit row %s: %s", self.safe_url, row_id, exc)
        return events
