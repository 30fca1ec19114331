"""Stored responses of the OpenAI Responses API (``store: true``), for ``GET
/v1/responses/{id}`` and ``previous_response_id``: the table ``corral_responses`` next to
the request records (``corral_requests``), in the same database (the records' SQLite
file, or their PostgreSQL database), under the same retention.

One row per stored response: its id, time, the caller's key id (a response is read and
continued only with the key that created it), the model, and one JSON body holding the
response object as returned and its context: the input items the model saw (the
previous response's context and output, then this request's input; ``instructions`` are
not carried over, as in OpenAI's API). Continuing a response reads one row.

Sizes are bounded: a response whose row would pass ``max_response_bytes`` is refused
before any generation (400 naming the field that made it grow), and the table is kept
under ``max_bytes`` (the sum of its rows' sizes), the oldest rows deleted first, checked
after writes at most every ``check_every_s``. Rows older than ``retention_days`` are
deleted every hour. Unlike request records, these rows are kept whether or not text
capture is on: storing is what the client asked for.

Backends: ``sqlite:`` URLs on the standard library's ``sqlite3`` on a thread of its own
(``SqliteFile``, as the records), other URLs (PostgreSQL) on SQLAlchemy
(``corral.registry.sqlbase``, imported only then).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from corral.core.errors import CorralError
from corral.observe.records_bound import MB
from corral.observe.records_sqlite import SqliteFile

log = logging.getLogger(__name__)

TABLE = "corral_responses"
RETENTION_EVERY_S = 3600.0


@dataclass(frozen=True)
class StoredLimits:
    retention_days: float = 30.0  # as the request records ([server] retention_days); 0: kept until the bound
    max_bytes: int = 256 * MB  # the table's rows together; the oldest are deleted past it
    max_response_bytes: int = 4 * MB  # one row: its context (history and input) and output
    prune_to: float = 0.8  # a pruning deletes the oldest rows down to this fraction of max_bytes
    check_every_s: float = 5.0  # the size bound is measured after a write at most this often


@dataclass(frozen=True)
class StoredResponse:
    id: str
    created_at: float  # unix seconds
    api_key_id: str | None  # the key that created it (a short hash); None without keys
    model: str
    response: dict[str, Any]  # the response object as returned
    context: list[dict[str, Any]]  # the input items the model saw, without instructions

    def encode(self) -> bytes:
        return orjson.dumps({"response": self.response, "context": self.context})

    @staticmethod
    def decode(id_: str, created_at: float, api_key_id: str | None, model: str, body: str | bytes) -> StoredResponse:
        doc = orjson.loads(body)
        return StoredResponse(id_, created_at, api_key_id, model, doc["response"], doc["context"])


Row = tuple[str, float, str | None, str, str]  # id, time, api_key_id, model, body


class ResponsesBackend(Protocol):
    safe_url: str

    async def create(self) -> None: ...
    async def insert(self, id_: str, at: float, api_key_id: str | None, model: str, body: str) -> None: ...
    async def get(self, id_: str) -> Row | None: ...
    async def delete(self, id_: str) -> bool: ...
    async def delete_before(self, cutoff: float) -> int: ...
    async def size(self) -> tuple[int, int]:
        """(bytes of the rows' bodies, rows)."""
        ...
    async def delete_oldest(self, rows: int) -> int: ...
    async def close(self) -> None: ...


_COLUMNS = "id, time, api_key_id, model, body"


class SqliteResponses(SqliteFile):
    _what = "stored responses"

    async def create(self) -> None:
        def create(conn: sqlite3.Connection) -> None:
            conn.execute(f"CREATE TABLE IF NOT EXISTS {TABLE} (id TEXT NOT NULL, time DOUBLE NOT NULL, "
                         "api_key_id TEXT, model TEXT, bytes INTEGER NOT NULL, body TEXT NOT NULL, PRIMARY KEY (id))")
            conn.execute(f"CREATE INDEX IF NOT EXISTS ix_{TABLE}_time ON {TABLE} (time)")

        await self._run("create the schema", create)

    async def insert(self, id_: str, at: float, api_key_id: str | None, model: str, body: str) -> None:
        statement = f"INSERT INTO {TABLE} (id, time, api_key_id, model, bytes, body) VALUES (?, ?, ?, ?, ?, ?)"
        row = (id_, at, api_key_id, model, len(body), body)
        await self._run("store a response", lambda conn: conn.execute(statement, row))

    async def get(self, id_: str) -> Row | None:
        def get(conn: sqlite3.Connection) -> Row | None:
            return conn.execute(f"SELECT {_COLUMNS} FROM {TABLE} WHERE id = ?", (id_,)).fetchone()  # type: ignore[no-any-return]

        return await self._run("read a stored response", get)

    async def delete(self, id_: str) -> bool:
        def delete(conn: sqlite3.Connection) -> bool:
            return conn.execute(f"DELETE FROM {TABLE} WHERE id = ?", (id_,)).rowcount > 0

        return await self._run("delete a stored response", delete)

    async def delete_before(self, cutoff: float) -> int:
        def delete(conn: sqlite3.Connection) -> int:
            return conn.execute(f"DELETE FROM {TABLE} WHERE time < ?", (cutoff,)).rowcount

        return await self._run("delete old stored responses", delete)

    async def size(self) -> tuple[int, int]:
        def size(conn: sqlite3.Connection) -> tuple[int, int]:
            total, rows = conn.execute(f"SELECT COALESCE(SUM(bytes), 0), COUNT(*) FROM {TABLE}").fetchone()
            return int(total), int(rows)

        return await self._run("measure stored responses", size)

    async def delete_oldest(self, rows: int) -> int:
        def delete(conn: sqlite3.Connection) -> int:
            statement = f"DELETE FROM {TABLE} WHERE id IN (SELECT id FROM {TABLE} ORDER BY time LIMIT ?)"
            return conn.execute(statement, (rows,)).rowcount

        return await self._run("delete the oldest stored responses", delete)


def responses_backend(url: str) -> ResponsesBackend:
    """The backend for ``url`` (the request records' URL), without any I/O."""
    if url.partition("://")[0] in ("sqlite", "sqlite+aiosqlite"):
        return SqliteResponses(url)
    from corral.observe.stored_sqlalchemy import SqlAlchemyResponses

    return SqlAlchemyResponses(url)


class ResponseStore:
    """``await open()`` at start (creates the table, starts retention), ``close()`` at
    shutdown; ``put`` / ``get`` / ``delete`` from the handlers. Database failures raise
    ``Unavailable`` (code ``records_unavailable``)."""

    def __init__(self, url: str, limits: StoredLimits | None = None) -> None:
        self._db = responses_backend(url)
        self.safe_url = self._db.safe_url
        self.enabled = True  # False when the database could not be opened at start
        self.limits = limits or StoredLimits()
        self._retention: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._checked_at = 0.0
        self._bound_lock = asyncio.Lock()
        self.pruned_total = 0

    async def open(self) -> None:
        await self._db.create()
        self._stop.clear()
        if self._retention is None:
            self._retention = asyncio.get_running_loop().create_task(self._retention_loop(), name="stored-responses")

    async def close(self) -> None:
        self._stop.set()
        if self._retention is not None:
            await asyncio.gather(self._retention, return_exceptions=True)
            self._retention = None
        await self._db.close()

    def fits(self, size: int) -> bool:
        return size <= self.limits.max_response_bytes

    async def put(self, stored: StoredResponse) -> None:
        body = stored.encode().decode()
        await self._db.insert(stored.id, stored.created_at, stored.api_key_id, stored.model, body)
        if time.monotonic() - self._checked_at >= self.limits.check_every_s:
            await self.enforce_bound()

    async def get(self, id_: str, api_key_id: str | None) -> StoredResponse | None:
        """The response ``id_`` if the caller's key created it (another key's is not found)."""
        row = await self._db.get(id_)
        if row is None or row[2] != api_key_id:
            return None
        return StoredResponse.decode(*row)

    async def delete(self, id_: str, api_key_id: str | None) -> bool:
        if await self.get(id_, api_key_id) is None:
            return False
        return await self._db.delete(id_)

    async def prune(self, now: float | None = None) -> int:
        if self.limits.retention_days <= 0:
            return 0
        cutoff = (time.time() if now is None else now) - self.limits.retention_days * 86400.0
        deleted = await self._db.delete_before(cutoff)
        self.pruned_total += deleted
        return deleted

    async def enforce_bound(self) -> int:
        """Delete the oldest rows while the table is past ``max_bytes``; the number deleted."""
        async with self._bound_lock:
            self._checked_at = time.monotonic()
            total, rows = await self._db.size()
            if total <= self.limits.max_bytes or rows == 0:
                return 0
            per_row = total / rows
            excess = int((total - self.limits.prune_to * self.limits.max_bytes) / per_row) + 1
            deleted = await self._db.delete_oldest(min(excess, rows))
            self.pruned_total += deleted
            log.info("stored responses: deleted the %d oldest to stay under %d MB", deleted, self.limits.max_bytes // MB)
            return deleted

    async def _retention_loop(self) -> None:
        while not self._stop.is_set():
            try:
                deleted = await self.prune()
                if deleted:
                    log.info("stored responses: deleted %d older than %g days", deleted, self.limits.retention_days)
                await self.enforce_bound()
            except CorralError as exc:  # try again next time
                log.warning("stored responses: retention failed: %s", exc.message)
            try:
                await asyncio.wait_for(self._stop.wait(), RETENTION_EVERY_S)
            except TimeoutError:
                pass
