"""Request records: one row per API request in ``corral_requests`` (SQLite file or PostgreSQL).

``RecordStore`` is an ``Observer``: ``request_finished`` only turns the event into a row
and puts it on a bounded queue (a full queue drops the row and counts it in
``dropped_total``); a writer task inserts the rows in batches (up to ``batch_size`` rows or
``batch_wait_s`` seconds), a retention task deletes rows older than ``retention_days``
every hour. Writing never fails or slows a request: while the database is down the
batches are dropped and counted, and the outage is logged once.

The database work goes through a ``RecordsBackend`` chosen by the URL: ``sqlite:`` URLs
use the standard library's ``sqlite3`` on one thread (``corral.observe.records_sqlite``),
so a gateway with the default records file never imports SQLAlchemy (about a third of
its memory); other URLs (``postgresql:``) use SQLAlchemy
(``corral.observe.records_sqlalchemy``, imported only then). Both create the one table
described here by ``COLUMNS``, ``PRIMARY_KEY``, ``NOT_NULL`` and ``INDEXES``.

Prompt and completion text arrive already cleaned by the gateway's ``Tracker`` (``None``
unless capture is on, redaction applied). ``params`` and ``spans`` are JSON text.
``feedback_route(store)`` serves ``POST /v1/feedback``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Annotated, Any, Protocol

import orjson
from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from corral.core.errors import CorralError, NotFound
from corral.core.observe import RequestEvent
from corral.observe.tracing import all_spans
from corral.web.body import read_body
from corral.web.errors import error_response, from_validation
from corral.web.responses import json_response

log = logging.getLogger(__name__)

TABLE = "corral_requests"
RETENTION_EVERY_S = 3600.0
FLUSH_TIMEOUT_S = 10.0  # how long ``feedback`` waits for queued rows to be written

# The table, in column order (rows travel as tuples in this order). The types are the SQL
# names SQLAlchemy emitted for this table on SQLite, so files written by either backend
# (and by earlier versions) have the same schema.
COLUMNS: tuple[tuple[str, str], ...] = (
    ("request_id", "TEXT"),
    ("time", "DOUBLE"),  # unix seconds when the request arrived
    ("api_key_id", "TEXT"), ("model", "TEXT"), ("instance_id", "TEXT"), ("engine", "TEXT"),
    ("worker_id", "TEXT"), ("route", "TEXT"),
    ("stream", "BOOLEAN"),
    ("params", "TEXT"),  # JSON object: the sampling parameters as sent
    ("outcome", "TEXT"), ("http_status", "INTEGER"), ("error", "TEXT"),
    ("latency_s", "DOUBLE"), ("ttft_s", "DOUBLE"),
    ("prompt_tokens", "INTEGER"), ("completion_tokens", "INTEGER"), ("retries", "INTEGER"),
    ("prompt_text", "TEXT"), ("completion_text", "TEXT"),  # only with capture_text, redacted
    ("trace_id", "TEXT"),
    ("spans", "TEXT"),  # JSON list of the request's spans, for ``corral trace``
    ("feedback_rating", "INTEGER"), ("feedback_comment", "TEXT"), ("feedback_time", "DOUBLE"),
)
COLUMN_NAMES = tuple(name for name, _ in COLUMNS)
PRIMARY_KEY = "request_id"
NOT_NULL = ("time",)
INDEXES = (("ix_corral_requests_time", "time"), ("ix_corral_requests_model", "model"),
           ("ix_corral_requests_trace", "trace_id"))
_JSON_COLUMNS = ("params", "spans")
_BOOLEAN_COLUMNS = tuple(name for name, kind in COLUMNS if kind == "BOOLEAN")

# A condition of a select: (column, operator, value), the operator "=", ">=" or "<".
Condition = tuple[str, str, Any]


class RecordsBackend(Protocol):
    """The database side of a ``RecordStore``. Database failures raise
    ``corral.core.errors.Unavailable`` (code ``records_unavailable``) naming ``safe_url``."""

    safe_url: str  # the URL without its password, for messages and logs

    async def create(self) -> None:
        """Create the table and its indexes if missing (another process may do so at the same time)."""

    async def insert(self, rows: list[tuple[Any, ...]]) -> None:
        """Insert rows (values in ``COLUMNS`` order) in one transaction; a known ``request_id`` is skipped."""

    async def delete_before(self, cutoff: float) -> int:
        """Delete the rows whose ``time`` is before ``cutoff``; the number deleted."""

    async def set_feedback(self, request_id: str, rating: int, comment: str | None, at: float) -> bool:
        """Set the feedback columns of one row; whether the row exists."""

    async def has_table(self) -> bool:
        """Whether the table exists (without creating it)."""

    async def select(self, where: list[Condition]) -> list[dict[str, Any]]:
        """The rows matching every condition, by ``time`` then ``request_id``, as stored."""

    async def close(self) -> None:
        """Release connections and threads; the backend may be used again afterwards."""


def records_backend(url: str) -> RecordsBackend:
    """The backend for ``url``, without any I/O; ``ConfigError`` for an unsupported URL."""
    scheme = url.partition("://")[0]
    if scheme in ("sqlite", "sqlite+aiosqlite"):
        from corral.observe.records_sqlite import SqliteRecords

        return SqliteRecords(url)
    # PostgreSQL; an unsupported URL gets the SQL registry's ConfigError from there
    from corral.observe.records_sqlalchemy import SqlAlchemyRecords

    return SqlAlchemyRecords(url)


def default_records_url() -> str:
    """``sqlite:///$CORRAL_HOME/records.db`` (the cache folder, created if missing)."""
    from corral.engines.sources import cache_dir

    return f"sqlite:///{cache_dir() / 'records.db'}"


def _json(value: Any) -> str:
    return orjson.dumps(value, default=str).decode()


def event_values(event: RequestEvent) -> tuple[Any, ...]:
    """The row stored for a finished request, in ``COLUMNS`` order (a tuple: built on
    every request, and what the database drivers take)."""
    return (
        event.request_id, event.started_at, event.api_key_id, event.model, event.instance_id, event.engine,
        event.worker_id, event.route, bool(event.stream), _json(event.params or {}), event.outcome,
        event.http_status, event.error, event.latency_s, event.ttft_s, event.prompt_tokens,
        event.completion_tokens, event.retries, event.prompt_text, event.completion_text, event.trace_id,
        _json(all_spans(event)), None, None, None,  # feedback comes later
    )


def event_row(event: RequestEvent) -> dict[str, Any]:
    """The row stored for a finished request, by column name."""
    return dict(zip(COLUMN_NAMES, event_values(event), strict=True))


class RecordStore:
    """``RecordStore("sqlite:///path/records.db")`` or ``RecordStore("postgresql://...")``.

    In a server: ``await open()`` (creates the table, starts the writer and retention
    tasks), add the store to the ``Observers``, ``await close()`` at shutdown. Readers
    (``corral report``) may call ``has_table``/``query`` without ``open``.
    """

    # few, large statements: each costs a hop to the database thread and a commit, and
    # the per-row work of a batch is a small part of it
    batch_size = 1000
    batch_wait_s = 0.25

    def __init__(self, url: str, retention_days: float = 30, queue_size: int = 10_000) -> None:
        self._db = records_backend(url)  # ConfigError for an unsupported URL; no I/O
        self.safe_url = self._db.safe_url  # for messages and logs
        self.retention_days = retention_days
        self._queue: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue(queue_size)
        self._progress = asyncio.Condition()
        self._queued = 0  # rows ever put on the queue
        self._done = 0  # rows taken off the queue and written (or dropped by a failed write)
        self._writer: asyncio.Task[None] | None = None
        self._retention: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()  # set by close(): the retention task ends between two runs
        self._failing = False
        self.dropped_total = 0  # rows lost: queue full or database unavailable
        self.written_total = 0

    # -- the server side --

    async def open(self) -> None:
        """Create the table and indexes if missing; start the writer and retention tasks."""
        await self._db.create()
        loop = asyncio.get_running_loop()
        self._stop.clear()
        if self._writer is None or self._writer.done():
            self._writer = loop.create_task(self._write_loop(), name="request-records-writer")
        if self._retention is None and self.retention_days > 0:
            self._retention = loop.create_task(self._retention_loop(), name="request-records-retention")

    def request_finished(self, event: RequestEvent) -> None:
        """The ``Observer`` hook: queue the event's row; never blocks, never raises."""
        try:
            row = event_values(event)
        except Exception:  # noqa: BLE001 -- an odd event must not fail the request
            log.exception("request records: cannot record request %s", getattr(event, "request_id", "?"))
            self.dropped_total += 1
            return
        try:
            self._queue.put_nowait(row)
        except asyncio.QueueFull:
            self.dropped_total += 1
            return
        self._queued += 1

    async def flush(self, timeout: float | None = None) -> None:
        """Return once every row queued before the call is written (or dropped by a failed write)."""
        target = self._queued
        if self._writer is None or self._writer.done():
            while self._done < target and not self._queue.empty():
                await self._write(self._take(self.batch_size))
            return
        async with self._progress:
            await asyncio.wait_for(self._progress.wait_for(lambda: self._done >= target), timeout)

    async def close(self) -> None:
        """Write what is queued, stop the tasks, close the database connections."""
        self._stop.set()
        try:
            await self.flush(timeout=FLUSH_TIMEOUT_S)
        except TimeoutError:
            log.warning("request records: %d rows not written at shutdown", self._queued - self._done)
        if self._writer is not None:
            self._writer.cancel()  # waiting for rows (unless the flush timed out): no statement cut short
        for task in (self._writer, self._retention):  # a running prune is let finish
            if task is not None:
                await asyncio.gather(task, return_exceptions=True)
        self._writer = self._retention = None
        await self._db.close()

    async def prune(self, now: float | None = None) -> int:
        """Delete the rows older than ``retention_days``; the number deleted."""
        cutoff = (time.time() if now is None else now) - self.retention_days * 86400.0
        return await self._db.delete_before(cutoff)

    async def feedback(self, request_id: str, rating: int, comment: str | None) -> bool:
        """Attach feedback to a request's record; ``False`` when no such request is recorded."""
        try:
            await self.flush(timeout=FLUSH_TIMEOUT_S)  # its row may still be queued
        except TimeoutError:
            log.warning("request records: feedback for %s before its row was written", request_id)
        return await self._db.set_feedback(request_id, rating, comment, time.time())

    # -- reading --

    async def has_table(self) -> bool:
        """Whether the database holds a ``corral_requests`` table (without creating it)."""
        return await self._db.has_table()

    async def query(self, since: float, until: float | None = None, model: str | None = None) -> list[dict[str, Any]]:
        """Rows with ``since <= time < until`` (and ``model``), oldest first; JSON columns decoded."""
        where: list[Condition] = [("time", ">=", since)]
        if until is not None:
            where.append(("time", "<", until))
        if model is not None:
            where.append(("model", "=", model))
        return await self._select(where)

    async def get(self, request_id: str) -> dict[str, Any] | None:
        rows = await self._select([("request_id", "=", request_id)])
        return rows[0] if rows else None

    async def by_trace(self, trace_id: str) -> list[dict[str, Any]]:
        """The records of one trace (its spans are in each row's ``spans``), oldest first."""
        return await self._select([("trace_id", "=", trace_id)])

    async def _select(self, where: list[Condition]) -> list[dict[str, Any]]:
        rows = await self._db.select(where)
        for row in rows:
            for name in _JSON_COLUMNS:
                try:
                    row[name] = json.loads(row[name]) if row[name] else None
                except ValueError:
                    row[name] = None
            for name in _BOOLEAN_COLUMNS:  # SQLite stores 0/1
                if row[name] is not None:
                    row[name] = bool(row[name])
        return rows

    # -- background tasks --

    def _take(self, limit: int) -> list[tuple[Any, ...]]:
        batch = []
        while len(batch) < limit and not self._queue.empty():
            batch.append(self._queue.get_nowait())
        return batch

    async def _write_loop(self) -> None:
        while True:
            batch = [await self._queue.get()]
            # gather what arrives in the next moment into the same statement: one sleep
            # per batch, not a timed wait per row (rows come at request rate)
            if self._queue.qsize() < self.batch_size - 1:
                await asyncio.sleep(self.batch_wait_s)
            batch += self._take(self.batch_size - 1)
            await self._write(batch)

    async def _write(self, batch: list[tuple[Any, ...]]) -> None:
        """Insert ``batch`` in one transaction; on failure drop and count it (logged once per outage)."""
        if not batch:
            return
        try:
            await self._db.insert(batch)
        except Exception as exc:  # noqa: BLE001 -- recording must never fail the server
            self.dropped_total += len(batch)
            if not self._failing:
                self._failing = True
                message = exc.message if isinstance(exc, CorralError) else f"{type(exc).__name__}: {exc}"
                log.warning("%s; dropping request records until it works again", message)
        else:
            self.written_total += len(batch)
            if self._failing:
                self._failing = False
                log.warning("request records: %s works again (%d rows dropped so far)", self.safe_url,
                            self.dropped_total)
        finally:
            self._done += len(batch)
            async with self._progress:
                self._progress.notify_all()

    async def _retention_loop(self) -> None:
        while not self._stop.is_set():
            try:
                deleted = await self.prune()
                if deleted:
                    log.info("request records: deleted %d rows older than %g days", deleted, self.retention_days)
            except Exception as exc:  # noqa: BLE001 -- try again next time
                log.warning("request records: retention failed: %s", getattr(exc, "message", exc))
            try:
                await asyncio.wait_for(self._stop.wait(), RETENTION_EVERY_S)
            except TimeoutError:
                pass


# ---------------------------------------------------------------------------- POST /v1/feedback

MAX_FEEDBACK_BYTES = 64 * 1024


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")
    request_id: StrictStr = Field(min_length=1, max_length=256)
    rating: Annotated[int, Field(ge=-1, le=5)]
    comment: StrictStr | None = Field(None, max_length=10_000)


def feedback_route(store: RecordStore) -> Route:
    """``POST /v1/feedback`` with ``{"request_id", "rating" (-1..5), "comment"}`` -> ``{"ok": true}``."""

    async def feedback(request: Request) -> Response:
        try:
            body = await read_body(request, MAX_FEEDBACK_BYTES)
            try:
                given = FeedbackRequest.model_validate_json(body)
            except ValidationError as exc:
                raise from_validation(exc) from None
            if not await store.feedback(given.request_id, given.rating, given.comment):
                raise NotFound(f"no recorded request with id {given.request_id!r}", param="request_id",
                               code="request_not_found")
        except CorralError as exc:
            return error_response(exc)
        return json_response(200, {"ok": True})

    return Route("/v1/feedback", feedback, methods=["POST"])
