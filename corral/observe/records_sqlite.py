"""The SQLite backend of the request records (``RecordStore`` on a ``sqlite:///path`` URL),
on the standard library's ``sqlite3``: the default records file of every gateway, written
without importing SQLAlchemy.

``sqlite3`` blocks, so every statement runs on one thread of the store's own (a
single-thread executor) holding one connection: the event loop never waits on the file,
and statements never run concurrently (a writer batch, a prune and a reader's select
simply queue). The connection is in WAL mode (readers such as ``corral report`` do not
block the gateway's writes), syncs at checkpoints only (``synchronous=NORMAL``), keeps the
WAL file at ``wal_limit_bytes`` after a checkpoint and waits up to ``busy_timeout_ms``
for another process's write lock. ``size`` reads the used pages for the size bound. The schema is the one
SQLAlchemy created for this table, so files from earlier versions read as they are.
"""

from __future__ import annotations

import asyncio
import errno
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote

from corral.core.errors import ConfigError, Unavailable
from corral.observe.records_bound import StoreSize
from corral.observe.records_rows import ADDED_COLUMNS, COLUMN_NAMES, COLUMNS, INDEXES, NOT_NULL, PRIMARY_KEY, TABLE, Condition

T = TypeVar("T")

_OPERATORS = ("=", ">=", "<")
_CREATE_TABLE = (
    f"CREATE TABLE IF NOT EXISTS {TABLE} ("
    + ", ".join(f"{name} {kind}" + (" NOT NULL" if name in NOT_NULL or name == PRIMARY_KEY else "")
                for name, kind in COLUMNS)
    + f", PRIMARY KEY ({PRIMARY_KEY}))"
)
_CREATE_INDEXES = tuple(f"CREATE INDEX IF NOT EXISTS {name} ON {TABLE} ({column})" for name, column in INDEXES)
# a request id seen again (a retried event) keeps its first row, as on PostgreSQL
_INSERT = (
    f"INSERT OR IGNORE INTO {TABLE} ({', '.join(COLUMN_NAMES)}) VALUES ({', '.join('?' * len(COLUMN_NAMES))})"
)
_SELECT = f"SELECT {', '.join(COLUMN_NAMES)} FROM {TABLE}"


def sqlite_path(url: str) -> str:
    """The file of ``sqlite:///relative.db``, ``sqlite:////absolute.db`` (``~`` expanded),
    or ``:memory:`` for ``sqlite://``; ``ConfigError`` for a host or query parameters."""
    rest = url.partition("://")[2]
    if not rest:
        return ":memory:"
    if not rest.startswith("/") or "?" in rest:
        raise ConfigError(f"invalid request records URL {url!r}: use sqlite:///path/records.db")
    database = unquote(rest[1:])
    if database in ("", ":memory:"):
        return ":memory:"
    return str(Path(database).expanduser())


def _hint(exc: BaseException) -> str:
    """What an error usually means, for the one log line of an outage."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    if name.startswith(("SQLITE_FULL", "SQLITE_IOERR")) or getattr(exc, "errno", None) in (errno.ENOSPC, errno.EFBIG):
        return " (is the disk full, or the file at its size limit?)"
    return ""


class SqliteFile:
    """One SQLite file worked on from one thread of its own, holding one connection (WAL
    mode): the part every store on the records file shares (the request records, the
    Responses API's stored responses). No I/O until the first statement."""

    busy_timeout_ms = 5000  # how long a statement waits for another process's write lock
    wal_limit_bytes = 4 * 1024 * 1024  # the WAL file's size after a checkpoint (about 1,000 pages between two)
    _what = "request records"  # in messages: "request records database ... unavailable"

    def __init__(self, url: str) -> None:
        self._path = sqlite_path(url)
        self.safe_url = url  # a SQLite URL holds no password
        self._thread: ThreadPoolExecutor | None = None
        # the connection of the executor's thread: a thread-local, so a store used again
        # after close() (a new thread) never touches the previous thread's connection
        self._local = threading.local()

    async def close(self) -> None:
        thread, self._thread = self._thread, None
        if thread is None:
            return
        try:
            await asyncio.get_running_loop().run_in_executor(thread, self._disconnect)
        finally:
            thread.shutdown(wait=False)

    # -- on the database thread --

    async def _run(self, action: str, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``work(connection)`` as one transaction on the database thread; database
        failures become ``Unavailable`` naming the file."""
        if self._thread is None:
            self._thread = ThreadPoolExecutor(1, thread_name_prefix="corral-records")
        try:
            return await asyncio.get_running_loop().run_in_executor(self._thread, self._transaction, work)
        except (sqlite3.Error, OSError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            message = f"{self._what} database {self.safe_url} unavailable: could not {action}: " \
                      f"{type(exc).__name__}: {first}{_hint(exc)}"
            raise Unavailable(message, code="records_unavailable") from exc

    def _transaction(self, work: Callable[[sqlite3.Connection], T]) -> T:
        conn = getattr(self._local, "conn", None)
        if conn is None:  # first use, or the previous attempt to connect failed
            conn = self._local.conn = self._connect()
        try:
            result = work(conn)
            if conn.in_transaction:  # sqlite3 opened one before the first INSERT/UPDATE/DELETE
                conn.commit()
            return result
        except BaseException:
            if conn.in_transaction:
                conn.rollback()
            raise

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self._path, timeout=self.busy_timeout_ms / 1000)  # timeout: SQLite's busy timeout
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            # with WAL, NORMAL syncs at checkpoints, not at every commit: still consistent
            # after a crash, and commits stop costing an fsync each
            conn.execute("PRAGMA synchronous=NORMAL")
            # the write-ahead log is truncated back to this after a checkpoint (by default
            # it keeps the size of its largest burst): the file's size bound holds on disk
            conn.execute(f"PRAGMA journal_size_limit={self.wal_limit_bytes}")
        except BaseException:
            conn.close()
            raise
        return conn

    def _disconnect(self) -> None:
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            conn.close()


class SqliteRecords(SqliteFile):
    """A ``RecordsBackend`` on a SQLite file; no I/O until the first statement."""

    async def create(self) -> None:
        # IF NOT EXISTS: another process opening the same file at the same moment is harmless
        def create(conn: sqlite3.Connection) -> None:
            for statement in (_CREATE_TABLE, *_CREATE_INDEXES):
                conn.execute(statement)
            present = {row[1] for row in conn.execute(f"PRAGMA table_info({TABLE})")}
            for name, kind in ADDED_COLUMNS:
                if name not in present:  # a file written by an earlier version
                    try:
                        conn.execute(f"ALTER TABLE {TABLE} ADD COLUMN {name} {kind}")
                    except sqlite3.OperationalError as exc:  # another process added it just now
                        if "duplicate column" not in str(exc):
                            raise

        await self._run("create the schema", create)

    async def insert(self, rows: list[tuple[Any, ...]]) -> None:
        await self._run("write request records", lambda conn: conn.executemany(_INSERT, rows))

    async def delete_before(self, cutoff: float) -> int:
        def delete(conn: sqlite3.Connection) -> int:
            return conn.execute(f"DELETE FROM {TABLE} WHERE time < ?", (cutoff,)).rowcount

        return await self._run("delete old request records", delete)

    async def size(self, count_rows: bool) -> StoreSize:
        def measure(conn: sqlite3.Connection) -> StoreSize:
            pages = conn.execute("PRAGMA page_count").fetchone()[0]
            free = conn.execute("PRAGMA freelist_count").fetchone()[0]
            page = conn.execute("PRAGMA page_size").fetchone()[0]
            if count_rows:
                rows = conn.execute(f"SELECT count(*) FROM {TABLE}").fetchone()[0]
            else:  # rowids grow by one per insert and the oldest go first: two index lookups
                low, high = conn.execute(f"SELECT min(rowid), max(rowid) FROM {TABLE}").fetchone()
                rows = 0 if low is None else high - low + 1
            return StoreSize((pages - free) * page, int(rows))

        return await self._run("measure request records", measure)

    async def delete_oldest(self, rows: int) -> int:
        def delete(conn: sqlite3.Connection) -> int:
            statement = f"DELETE FROM {TABLE} WHERE rowid IN (SELECT rowid FROM {TABLE} ORDER BY time LIMIT ?)"
            return conn.execute(statement, (rows,)).rowcount

        return await self._run("delete the oldest request records", delete)

    async def set_feedback(self, request_id: str, rating: int, comment: str | None, at: float) -> bool:
        def update(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                f"UPDATE {TABLE} SET feedback_rating = ?, feedback_comment = ?, feedback_time = ? WHERE request_id = ?",
                (rating, comment, at, request_id),
            )
            return cursor.rowcount > 0

        return await self._run("save feedback", update)

    async def has_table(self) -> bool:
        def exists(conn: sqlite3.Connection) -> bool:
            found = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (TABLE,))
            return found.fetchone() is not None

        return await self._run("read the schema", exists)

    async def select(self, where: list[Condition]) -> list[dict[str, Any]]:
        for column, op, _ in where:  # both come from RecordStore, never from a request
            if column not in COLUMN_NAMES or op not in _OPERATORS:
                raise ValueError(f"bad condition {column} {op}")
        statement = _SELECT
        if where:
            statement += " WHERE " + " AND ".join(f"{column} {op} ?" for column, op, _ in where)
        statement += " ORDER BY time, request_id"

        def select(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            rows = conn.execute(statement, [value for _, _, value in where]).fetchall()
            return [dict(zip(COLUMN_NAMES, row, strict=True)) for row in rows]

        return await self._run("read request records", select)
