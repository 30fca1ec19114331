"""The SQLAlchemy backend of the stored responses (``ResponseStore`` on a
``postgresql://`` URL, next to the request records' table; imported only for such URLs).
The engine, schema creation and error mapping are ``corral.registry.sqlbase``'s."""

from __future__ import annotations

from sqlalchemy import Column, Double, Index, Integer, MetaData, Table, Text, delete, func, select

from corral.observe.stored_responses import TABLE, Row
from corral.registry.sqlbase import SqlBase


class SqlAlchemyResponses(SqlBase):
    _what = "stored responses"
    _error_code = "records_unavailable"

    def __init__(self, url: str) -> None:
        metadata = MetaData()
        self._table = Table(
            TABLE, metadata,
            Column("id", Text, primary_key=True), Column("time", Double, nullable=False),
            Column("api_key_id", Text), Column("model", Text), Column("bytes", Integer, nullable=False),
            Column("body", Text, nullable=False),
            Index(f"ix_{TABLE}_time", "time"),
        )
        super().__init__(url, metadata)

    async def create(self) -> None:
        await self.open()

    async def insert(self, id_: str, at: float, api_key_id: str | None, model: str, body: str) -> None:
        values = {"id": id_, "time": at, "api_key_id": api_key_id, "model": model, "bytes": len(body), "body": body}
        with self._unavailable("store a response"):
            async with self._engine.begin() as conn:
                await conn.execute(self._table.insert().values(**values))

    async def get(self, id_: str) -> Row | None:
        t = self._table
        statement = select(t.c.id, t.c.time, t.c.api_key_id, t.c.model, t.c.body).where(t.c.id == id_)
        with self._unavailable("read a stored response"):
            async with self._engine.connect() as conn:
                row = (await conn.execute(statement)).first()
        return None if row is None else (row[0], row[1], row[2], row[3], row[4])

    async def delete(self, id_: str) -> bool:
        with self._unavailable("delete a stored response"):
            async with self._engine.begin() as conn:
                result = await conn.execute(delete(self._table).where(self._table.c.id == id_))
        return bool(result.rowcount)

    async def delete_before(self, cutoff: float) -> int:
        with self._unavailable("delete old stored responses"):
            async with self._engine.begin() as conn:
                result = await conn.execute(delete(self._table).where(self._table.c.time < cutoff))
        return int(result.rowcount or 0)

    async def size(self) -> tuple[int, int]:
        t = self._table
        with self._unavailable("measure stored responses"):
            async with self._engine.connect() as conn:
                total, rows = (await conn.execute(select(func.coalesce(func.sum(t.c.bytes), 0), func.count()))).one()
        return int(total), int(rows)

    async def delete_oldest(self, rows: int) -> int:
        t = self._table
        oldest = select(t.c.id).order_by(t.c.time).limit(rows).scalar_subquery()
        with self._unavailable("delete the oldest stored responses"):
            async with self._engine.begin() as conn:
                result = await conn.execute(delete(t).where(t.c.id.in_(oldest)))
        return int(result.rowcount or 0)
