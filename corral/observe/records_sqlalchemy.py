"""The SQLAlchemy backend of the request records: ``RecordStore`` on a ``postgresql://``
URL (imported only for such URLs: SQLAlchemy is a third of a gateway's memory).

The URL mapping, engine, schema creation and error mapping are the SQL registry's
(``corral.registry.sqlbase``). It also works on ``sqlite:///`` URLs (aiosqlite), as the
records store did before SQLite moved to ``corral.observe.records_sqlite``; the tests use
it to check that both write the same schema.
"""

from __future__ import annotations

import operator
from typing import Any

from sqlalchemy import Boolean, Column, Double, Index, Integer, MetaData, Table, Text, delete, func, inspect, select, text, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from corral.observe.records_bound import StoreSize
from corral.observe.records_rows import ADDED_COLUMNS, COLUMN_NAMES, COLUMNS, INDEXES, NOT_NULL, PRIMARY_KEY, TABLE, Condition
from corral.registry.sqlbase import SqlBase

_TYPES = {"TEXT": Text, "DOUBLE": Double, "BOOLEAN": Boolean, "INTEGER": Integer}
_OPERATORS = {"=": operator.eq, ">=": operator.ge, "<": operator.lt}


def _table(metadata: MetaData) -> Table:
    columns = [
        Column(name, _TYPES[kind], primary_key=True) if name == PRIMARY_KEY
        else Column(name, _TYPES[kind], nullable=name not in NOT_NULL)
        for name, kind in COLUMNS
    ]
    return Table(TABLE, metadata, *columns, *(Index(name, column) for name, column in INDEXES))


class SqlAlchemyRecords(SqlBase):
    """A ``RecordsBackend`` on a SQLAlchemy async engine; ``ConfigError`` for an unsupported URL, no I/O."""

    _what = "request records"
    _error_code = "records_unavailable"

    def __init__(self, url: str) -> None:
        metadata = MetaData()
        self._table = _table(metadata)
        super().__init__(url, metadata)

    async def create(self) -> None:
        await self.open()
        with self._unavailable("upgrade the schema"):
            await self._add_columns()

    async def _add_columns(self) -> None:
        async with self._engine.begin() as conn:
            present = await conn.run_sync(lambda sync: {c["name"] for c in inspect(sync).get_columns(TABLE)})
            for name, kind in ADDED_COLUMNS:
                if name not in present:  # a table written by an earlier version
                    exists = " IF NOT EXISTS" if self.dialect == "postgresql" else ""
                    await conn.execute(text(f"ALTER TABLE {TABLE} ADD COLUMN{exists} {name} {kind}"))

    async def insert(self, rows: list[tuple[Any, ...]]) -> None:
        # a request id seen again (a retried event) keeps its first row
        insert = postgresql_insert if self.dialect == "postgresql" else sqlite_insert
        statement = insert(self._table).on_conflict_do_nothing(index_elements=[self._table.c[PRIMARY_KEY]])
        with self._unavailable("write request records"):
            async with self._engine.begin() as conn:
                await conn.execute(statement, [dict(zip(COLUMN_NAMES, row, strict=True)) for row in rows])

    async def delete_before(self, cutoff: float) -> int:
        with self._unavailable("delete old request records"):
            async with self._engine.begin() as conn:
                result = await conn.execute(delete(self._table).where(self._table.c.time < cutoff))
        return int(result.rowcount or 0)

    async def size(self, count_rows: bool) -> StoreSize:
        # bytes are not measured: PostgreSQL's relation sizes do not shrink when rows are
        # deleted (the space is reused after VACUUM), so only a rows bound applies here
        with self._unavailable("measure request records"):
            async with self._engine.connect() as conn:
                rows = (await conn.execute(select(func.count()).select_from(self._table))).scalar_one()
        return StoreSize(None, int(rows))

    async def delete_oldest(self, rows: int) -> int:
        t = self._table
        oldest = select(t.c.request_id).order_by(t.c.time).limit(rows).scalar_subquery()
        with self._unavailable("delete the oldest request records"):
            async with self._engine.begin() as conn:
                result = await conn.execute(delete(t).where(t.c.request_id.in_(oldest)))
        return int(result.rowcount or 0)

    async def set_feedback(self, request_id: str, rating: int, comment: str | None, at: float) -> bool:
        t = self._table
        statement = (
            update(t).where(t.c.request_id == request_id)
            .values(feedback_rating=rating, feedback_comment=comment, feedback_time=at)
        )
        with self._unavailable("save feedback"):
            async with self._engine.begin() as conn:
                result = await conn.execute(statement)
        return bool(result.rowcount)

    async def has_table(self) -> bool:
        with self._unavailable("read the schema"):
            async with self._engine.connect() as conn:
                return bool(await conn.run_sync(lambda sync: inspect(sync).has_table(TABLE)))

    async def select(self, where: list[Condition]) -> list[dict[str, Any]]:
        t = self._table
        statement = select(t).order_by(t.c.time, t.c.request_id)
        for column, op, value in where:
            statement = statement.where(_OPERATORS[op](t.c[column], value))
        with self._unavailable("read request records"):
            async with self._engine.connect() as conn:
                rows = (await conn.execute(statement)).mappings().all()
        return [dict(row) for row in rows]
