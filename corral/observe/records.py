"""Request records: one row per API request in ``corral_requests`` (SQLite file or PostgreSQL).

``RecordStore`` is an ``Observer``: ``request_finished`` only turns the event into a row
and puts it on a bounded queue (a full queue drops the row and counts it in
``dropped_total``); a writer task inserts the rows in batches (up to ``batch_size`` rows or
``batch_wait_s`` seconds), a retention task deletes rows older than ``retention_days``
every hour. Writing never fails or slows a request: while the database is down the
batches are dropped and counted, and the outage is logged once.

Prompt and completion text arrive already cleaned by the gateway's ``Tracker`` (``None``
unless capture is on, redaction applied). ``params`` and ``spans`` are JSON text.
``feedback_route(store)`` serves ``POST /v1/feedback``. The URL mapping, engine and error
mapping are the SQL registry's (``corral.registry.sqlbase``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Annotated, Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationError
from sqlalchemy import Boolean, Column, Double, Index, Integer, MetaData, Table, Text, delete, inspect, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from corral.core.errors import CorralError, NotFound
from corral.core.observe import RequestEvent
from corral.observe.tracing import all_spans
from corral.registry.sqlbase import SqlBase
from corral.web.body import read_body
from corral.web.errors import error_response, from_validation
from corral.web.responses import json_response

log = logging.getLogger(__name__)

TABLE = "corral_requests"
RETENTION_EVERY_S = 3600.0
FLUSH_TIMEOUT_S = 10.0  # how long ``feedback`` waits for queued rows to be written
_JSON_COLUMNS = ("params", "spans")


def default_records_url() -> str:
    """``sqlite:///$CORRAL_HOME/records.db`` (the cache folder, created if missing)."""
    from corral.engines.sources import cache_dir

    return f"sqlite:///{cache_dir() / 'records.db'}"


def _table(metadata: MetaData) -> Table:
    return Table(
        TABLE,
        metadata,
        Column("request_id", Text, primary_key=True),
        Column("time", Double, nullable=False),  # unix seconds when the request arrived
        *(Column(name, Text) for name in ("api_key_id", "model", "instance_id", "engine", "worker_id", "route")),
        Column("stream", Boolean),
        Column("params", Text),  # JSON object: the sampling parameters as sent
        Column("outcome", Text), Column("http_status", Integer), Column("error", Text),
        Column("latency_s", Double), Column("ttft_s", Double),
        Column("prompt_tokens", Integer), Column("completion_tokens", Integer), Column("retries", Integer),
        Column("prompt_text", Text), Column("completion_text", Text),  # only with capture_text, redacted
        Column("trace_id", Text),
        Column("spans", Text),  # JSON list of the request's spans, for ``corral trace``
        Column("feedback_rating", Integer), Column("feedback_comment", Text), Column("feedback_time", Double),
        Index("ix_corral_requests_time", "time"),
        Index("ix_corral_requests_model", "model"),
        Index("ix_corral_requests_trace", "trace_id"),
    )


def _json(value: Any) -> str:
    return orjson.dumps(value, default=str).decode()


def event_row(event: RequestEvent) -> dict[str, Any]:
    """The row stored for a finished request."""
    return {
        "request_id": event.request_id, "time": event.started_at, "api_key_id": event.api_key_id,
        "model": event.model, "instance_id": event.instance_id, "engine": event.engine,
        "worker_id": event.worker_id, "route": event.route, "stream": bool(event.stream),
        "params": _json(event.params or {}), "outcome": event.outcome, "http_status": event.http_status,
        "error": event.error, "latency_s": event.latency_s, "ttft_s": event.ttft_s,
        "prompt_tokens": event.prompt_tokens, "completion_tokens": event.completion_tokens,
        "retries": event.retries, "prompt_text": event.prompt_text, "completion_text": event.completion_text,
        "trace_id": event.trace_id, "spans": _json(all_spans(event)),
        "feedback_rating": None, "feedback_comment": None, "feedback_time": None,
    }


class RecordStore(SqlBase):
    """``RecordStore("sqlite:///path/records.db")`` or ``RecordStore("postgresql://...")``.

    In a server: ``await open()`` (creates the table, starts the writer and retention
    tasks), add the store to the ``Observers``, ``await close()`` at shutdown. Readers
    (``corral report``) may call ``has_table``/``query`` without ``open``.
    """

    _what = "request records"
    _error_code = "records_unavailable"
    # few, large statements: each costs a hop to the database thread and a commit, and
    # the per-row work of a batch is a small part of it
    batch_size = 1000
    batch_wait_s = 0.25

    def __init__(self, url: str, retention_days: float = 30, queue_size: int = 10_000) -> None:
        metadata = MetaData()
        self._table = _table(metadata)
        super().__init__(url, metadata)  # ConfigError for an unsupported URL; no I/O
        self.retention_days = retention_days
        self._columns = tuple(c.name for c in self._table.columns)
        self._sqlite_insert = (
            f"INSERT OR IGNORE INTO {TABLE} ({', '.join(self._columns)}) VALUES ({', '.join('?' * len(self._columns))})"
        )
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(queue_size)
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
        await super().open()
        loop = asyncio.get_running_loop()
        self._stop.clear()
        if self._writer is None or self._writer.done():
            self._writer = loop.create_task(self._write_loop(), name="request-records-writer")
        if self._retention is None and self.retention_days > 0:
            self._retention = loop.create_task(self._retention_loop(), name="request-records-retention")

    def request_finished(self, event: RequestEvent) -> None:
        """The ``Observer`` hook: queue the event's row; never blocks, never raises."""
        try:
            row = event_row(event)
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
        """Write what is queued, stop the tasks, dispose of the connection pool."""
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
        await super().close()

    async def prune(self, now: float | None = None) -> int:
        """Delete the rows older than ``retention_days``; the number deleted."""
        cutoff = (time.time() if now is None else now) - self.retention_days * 86400.0
        with self._unavailable("delete old request records"):
            async with self._engine.begin() as conn:
                result = await conn.execute(delete(self._table).where(self._table.c.time < cutoff))
        return int(result.rowcount or 0)

    async def feedback(self, request_id: str, rating: int, comment: str | None) -> bool:
        """Attach feedback to a request's record; ``False`` when no such request is recorded."""
        try:
            await self.flush(timeout=FLUSH_TIMEOUT_S)  # its row may still be queued
        except TimeoutError:
            log.warning("request records: feedback for %s before its row was written", request_id)
        t = self._table
        statement = (
            update(t).where(t.c.request_id == request_id)
            .values(feedback_rating=rating, feedback_comment=comment, feedback_time=time.time())
        )
        with self._unavailable("save feedback"):
            async with self._engine.begin() as conn:
                result = await conn.execute(statement)
        return bool(result.rowcount)

    # -- reading --

    async def has_table(self) -> bool:
        """Whether the database holds a ``corral_requests`` table (without creating it)."""
        with self._unavailable("read the schema"):
            async with self._engine.connect() as conn:
                return bool(await conn.run_sync(lambda sync: inspect(sync).has_table(TABLE)))

    async def query(self, since: float, until: float | None = None, model: str | None = None) -> list[dict[str, Any]]:
        """Rows with ``since <= time < until`` (and ``model``), oldest first; JSON columns decoded."""
        t = self._table
        statement = select(t).where(t.c.time >= since).order_by(t.c.time, t.c.request_id)
        if until is not None:
            statement = statement.where(t.c.time < until)
        if model is not None:
            statement = statement.where(t.c.model == model)
        return await self._select(statement, "read request records")

    async def get(self, request_id: str) -> dict[str, Any] | None:
        rows = await self._select(select(self._table).where(self._table.c.request_id == request_id), "read a record")
        return rows[0] if rows else None

    async def by_trace(self, trace_id: str) -> list[dict[str, Any]]:
        """The records of one trace (its spans are in each row's ``spans``), oldest first."""
        t = self._table
        return await self._select(select(t).where(t.c.trace_id == trace_id).order_by(t.c.time), "read a trace")

    async def _select(self, statement: Any, action: str) -> list[dict[str, Any]]:
        with self._unavailable(action):
            async with self._engine.connect() as conn:
                rows = (await conn.execute(statement)).mappings().all()
        out = []
        for row in rows:
            item = dict(row)
            for name in _JSON_COLUMNS:
                try:
                    item[name] = json.loads(item[name]) if item[name] else None
                except ValueError:
                    item[name] = None
            out.append(item)
        return out

    # -- background tasks --

    def _take(self, limit: int) -> list[dict[str, Any]]:
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

    async def _write(self, batch: list[dict[str, Any]]) -> None:
        """Insert ``batch`` in one statement; on failure drop and count it (logged once per outage)."""
        if not batch:
            return
        try:
            with self._unavailable("write request records"):
                async with self._engine.begin() as conn:
                    if self.dialect == "sqlite":
                        # the driver's executemany with a fixed statement: SQLAlchemy's
                        # per-row parameter processing cost more than SQLite's insert
                        columns = self._columns
                        await conn.exec_driver_sql(self._sqlite_insert, [tuple(r[c] for c in columns) for r in batch])
                    else:
                        statement = postgresql_insert(self._table).on_conflict_do_nothing(
                            index_elements=[self._table.c.request_id]
                        )
                        await conn.execute(statement, batch)
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
