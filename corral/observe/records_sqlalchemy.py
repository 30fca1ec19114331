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

from sqlalchemy import Boolean, Column, Double, Index, Integer, MetaData, Table, Text, delete, inspect, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from corral.observe.records import COLUMN_NAMES, COLUMNS, INDEXES, NOT_NULL, PRIMARY_KEY, TABLE, Condition
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
