"""Request records: one row per API request in ``corral_requests`` (SQLite file or PostgreSQL).

``RecordStore`` is an ``Observer``: ``request_finished`` only turns the event into a row
(``corral.observe.records_rows``: client strings capped, unknown models under one label)
and puts it on a bounded queue; a writer task inserts the rows in batches (up to
``batch_size`` rows or ``batch_wait_s`` seconds) and, after a write, keeps the store under
its size bound (``corral.observe.records_bound``); a retention task deletes rows older
than ``retention_days`` every hour. Writing never fails or slows a request: a row that
cannot be queued (queue full), encoded or written (database down, disk full) is dropped
and counted by reason in ``dropped``, and an outage is logged once. Successful requests
may be sampled (``RecordsLimits.sample``); errors are always kept.

The database work goes through a ``RecordsBackend`` chosen by the URL: ``sqlite:`` URLs
use the standard library's ``sqlite3`` on one thread (``corral.observe.records_sqlite``),
so a gateway with the default records file never imports SQLAlchemy (about a third of
its memory); other URLs (``postgresql:``) use SQLAlchemy
(``corral.observe.records_sqlalchemy``, imported only then). Both create the one table
described by ``COLUMNS``, ``PRIMARY_KEY``, ``NOT_NULL`` and ``INDEXES``.

Prompt and completion text arrive already cleaned by the gateway's ``Tracker`` (``None``
unless capture is on, redaction applied). ``params`` and ``spans`` are JSON text.
``feedback_route(store)`` serves ``POST /v1/feedback``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace
from typing import Annotated, Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from corral.core.errors import CorralError, NotFound
from corral.core.observe import RequestEvent
from corral.observe.contain import clean_or_none
from corral.observe.records_bound import RecordsLimits, SizeBound, StoreSize
from corral.observe.records_rows import (  # noqa: F401 -- re-exported: the records' schema and rows
    COLUMN_NAMES,
    COLUMNS,
    INDEXES,
    NOT_NULL,
    PRIMARY_KEY,
    TABLE,
    Condition,
    decode_row,
    event_row,
    event_values,
)
from corral.web.body import read_body
from corral.web.errors import error_response, from_validation
from corral.web.responses import json_response

log = logging.getLogger(__name__)

RETENTION_EVERY_S = 3600.0
FLUSH_TIMEOUT_S = 10.0  # how long ``feedback`` waits for queued rows to be written
OUTAGE_LOG_EVERY_S = 600.0  # a store failing again within this after it recovered is not logged again
DROP_REASONS = ("queue_full", "store_error", "unencodable")


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

    async def size(self, count_rows: bool) -> StoreSize:
        """Bytes in use (``None`` when not measured) and rows (exact with ``count_rows``, else estimated)."""

    async def delete_oldest(self, rows: int) -> int:
        """Delete up to ``rows`` rows with the smallest ``time``; the number deleted."""

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

    def __init__(
        self, url: str, retention_days: float | None = None, queue_size: int = 10_000,
        limits: RecordsLimits | None = None,
    ) -> None:
        self._db = records_backend(url)  # ConfigError for an unsupported URL; no I/O
        self.safe_url = self._db.safe_url  # for messages and logs
        self.limits = limits or RecordsLimits()
        if retention_days is not None:
            self.limits = replace(self.limits, retention_days=retention_days)
        self.retention_days = self.limits.retention_days
        self.bound = SizeBound(self.limits)
        self._queue: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue(queue_size)
        self._progress = asyncio.Condition()
        self._queued = 0  # rows ever put on the queue
        self._done = 0  # rows taken off the queue and written (or dropped by a failed write)
        self._writer: asyncio.Task[None] | None = None
        self._retention: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()  # set by close(): the retention task ends between two runs
        self._failing = False
        self._outage_logged_at = -OUTAGE_LOG_EVERY_S  # time.monotonic() of the last outage warning
        self._outage_warned = False  # the current outage was logged as a warning
        self._unencodable_logged = False
        self._bound_failing = False
        self.dropped = dict.fromkeys(DROP_REASONS, 0)  # rows lost, by reason
        self.sampled_out_total = 0  # successful requests not recorded under ``limits.sample``
        self.written_total = 0
        self.pruned_total = 0  # rows deleted by retention (the size bound counts its own)

    @property
    def dropped_total(self) -> int:
        """Rows lost: queue full, not encodable, or the database unavailable."""
        return sum(self.dropped.values())

    # -- the server side --

    async def open(self) -> None:
        """Create the table and indexes if missing; start the writer and retention tasks."""
        await self._db.create()
        loop = asyncio.get_running_loop()
        self._stop.clear()
        if self._writer is None or self._writer.done():
            self._writer = loop.create_task(self._write_loop(), name="request-records-writer")
        if self._retention is None and (self.retention_days > 0 or self.bound.active):
            self._retention = loop.create_task(self._retention_loop(), name="request-records-retention")

    def request_finished(self, event: RequestEvent) -> None:
        """The ``Observer`` hook: queue the event's row; never blocks, never raises."""
        try:
            if not self.limits.keeps(str(event.request_id), event.outcome):
                self.sampled_out_total += 1
                return
            row = event_values(event)
        except Exception:  # noqa: BLE001 -- an odd event must not fail the request
            self.dropped["unencodable"] += 1
            if not self._unencodable_logged:  # once: it would be once per request
                self._unencodable_logged = True
                log.exception("request records: cannot record request %.128s; dropping such records "
                              "(counted in corral_records_dropped_total{reason=\"unencodable\"})",
                              getattr(event, "request_id", "?"))
            return
        try:
            self._queue.put_nowait(row)
        except asyncio.QueueFull:
            self.dropped["queue_full"] += 1
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
        deleted = await self._db.delete_before(cutoff)
        self.pruned_total += deleted
        return deleted

    async def enforce_bound(self) -> int:
        """Measure the store and delete its oldest rows past the size bound; the number deleted."""
        return await self.bound.check(self._db)

    async def feedback(self, request_id: str, rating: int, comment: str | None) -> bool:
        """Attach feedback to a request's record; ``False`` when no such request is recorded."""
        try:
            await self.flush(timeout=FLUSH_TIMEOUT_S)  # its row may still be queued
        except TimeoutError:
            log.warning("request records: feedback for %s before its row was written", request_id)
        return await self._db.set_feedback(request_id, rating, clean_or_none(comment, MAX_COMMENT), time.time())

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
        return [decode_row(row) for row in await self._db.select(where)]

    # -- background tasks --

    def _take(self, limit: int) -> list[tuple[Any, ...]]:
        batch = []
        while len(batch) < limit and not self._queue.empty():
            batch.append(self._queue.get_nowait())
        return batch

    async def _write_loop(self) -> None:
        while True:
            if self.bound.pending:  # rows not measured yet: measure once the writer is idle
                try:
                    first = await asyncio.wait_for(self._queue.get(), self.bound.check_every_s)
                except TimeoutError:
                    await self._enforce_bound()
                    continue
            else:
                first = await self._queue.get()
            batch = [first]
            # gather what arrives in the next moment into the same statement: one sleep
            # per batch, not a timed wait per row (rows come at request rate)
            if self._queue.qsize() < self.batch_size - 1:
                await asyncio.sleep(self.batch_wait_s)
            batch += self._take(self.batch_size - 1)
            await self._write(batch)
            if self.bound.due():
                await self._enforce_bound()

    async def _enforce_bound(self) -> None:
        try:
            await self.enforce_bound()
        except Exception as exc:  # noqa: BLE001 -- the writer goes on; the next check tries again
            if not self._bound_failing:  # once until a check works again
                self._bound_failing = True
                log.warning("request records: could not keep the store under its size bound: %s",
                            exc.message if isinstance(exc, CorralError) else f"{type(exc).__name__}: {exc}")
        else:
            self._bound_failing = False

    async def _write(self, batch: list[tuple[Any, ...]]) -> None:
        """Insert ``batch`` in one transaction; on failure drop and count it (logged once per outage)."""
        if not batch:
            return
        try:
            await self._db.insert(batch)
        except Exception as exc:  # noqa: BLE001 -- recording must never fail the server
            self.dropped["store_error"] += len(batch)
            if not self._failing:
                self._failing = True
                self._outage(exc, "dropping request records until it works again (counted in "
                                  "corral_records_dropped_total{reason=\"store_error\"})")
        else:
            self.written_total += len(batch)
            self.bound.wrote(len(batch))
            if self._failing:
                self._failing = False
                # said once per logged outage: a store that flaps is not logged per flap
                log.log(logging.WARNING if self._outage_warned else logging.DEBUG,
                        "request records: %s works again (%d rows dropped so far)", self.safe_url,
                        self.dropped["store_error"])
                self._outage_warned = False
        finally:
            self._done += len(batch)
            async with self._progress:
                self._progress.notify_all()

    def _outage(self, exc: Exception, consequence: str) -> None:
        """Log a store failure once: a store that keeps failing and recovering (a disk
        that is full again as soon as a row fits) is logged once per ``OUTAGE_LOG_EVERY_S``."""
        now = time.monotonic()
        message = exc.message if isinstance(exc, CorralError) else f"{type(exc).__name__}: {exc}"
        if now - self._outage_logged_at < OUTAGE_LOG_EVERY_S:
            log.debug("%s; %s", message, consequence)
            return
        self._outage_logged_at, self._outage_warned = now, True
        log.warning("%s; %s", message, consequence)

    async def _retention_loop(self) -> None:
        while not self._stop.is_set():
            try:
                deleted = await self.prune() if self.limits.retention_days > 0 else 0
                if deleted:
                    log.info("request records: deleted %d rows older than %g days", deleted, self.retention_days)
            except Exception as exc:  # noqa: BLE001 -- try again next time
                log.warning("request records: retention failed: %s", getattr(exc, "message", exc))
            if self.bound.active:  # at start too: a store above a bound lowered since
                await self._enforce_bound()
            try:
                await asyncio.wait_for(self._stop.wait(), RETENTION_EVERY_S)
            except TimeoutError:
                pass


# ---------------------------------------------------------------------------- POST /v1/feedback

MAX_FEEDBACK_BYTES = 64 * 1024
MAX_COMMENT = 10_000


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")
    request_id: StrictStr = Field(min_length=1, max_length=256)
    rating: Annotated[int, Field(ge=-1, le=5)]
    comment: StrictStr | None = Field(None, max_length=MAX_COMMENT)


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
