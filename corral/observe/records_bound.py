"""What the request records may hold: a size bound, sampling of successful requests,
and the pruning that keeps a store under its bound.

``RecordsLimits`` holds the settings (``[server] records_max_mb``, ``records_max_rows``,
``records_sample``, ``retention_days``). ``SizeBound`` runs on the records' background
writer, never on a request: after a write (at most every ``check_every_s``, or sooner
once about ``STEP`` of the bound was written; and once the writer is idle) it measures
the store (SQLite: the bytes of its used pages, ``(page_count - freelist_count) *
page_size``; any database: its rows) and, past the bound, deletes the oldest rows in
batches down to ``prune_to`` of it. A database whose bytes are not measured
(PostgreSQL) keeps the bytes bound as a rows bound of ``max_bytes / ROW_BYTES`` unless
``records_max_rows`` is set, so no store is unbounded by default. SQLite reuses the freed pages, so the file stops
growing at about the bound (it is not shrunk: no ``VACUUM``). Past ``warn_at`` of the
bound it logs one warning per process; the last measure is exposed as gauges.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import zlib
from dataclasses import dataclass
from typing import Protocol

log = logging.getLogger("corral.observe.records")

MB = 1024 * 1024
DELETE_BATCH = 5000  # rows per DELETE statement: inserts queued meanwhile wait one batch at most
ROUNDS = 4  # measure-and-delete rounds of one pruning (freed index pages lag the rows)
STEP = 0.05  # the store is measured again once about this fraction of a bound was written
ROW_BYTES = 1024  # a row's size until the store has rows to measure (about 800 bytes)


@dataclass(frozen=True)
class RecordsLimits:
    retention_days: float = 30.0  # rows older than this are deleted (every hour)
    max_bytes: int = 1024 * MB  # SQLite: bytes of used pages; 0: no bound
    max_rows: int = 0  # any database; 0: no bound
    sample: float = 1.0  # fraction of successful requests recorded; errors and cancelled always are
    warn_at: float = 0.9  # warn (once) past this fraction of a bound
    prune_to: float = 0.8  # a pruning deletes the oldest rows down to this fraction of the bound

    def keeps(self, request_id: str, outcome: str) -> bool:
        """Whether the record of a finished request is kept under ``sample``: always for
        errors and cancellations; for successes, by a hash of the id (every gateway
        sharing a store keeps the same ones)."""
        if self.sample >= 1.0 or outcome != "ok":
            return True
        return zlib.crc32(request_id.encode("utf-8", "replace")) < self.sample * 2**32


@dataclass(frozen=True)
class StoreSize:
    bytes: int | None  # ``None``: not measured by this database (PostgreSQL)
    rows: int  # exact when counted, else an estimate


class Measurable(Protocol):
    """The part of a ``RecordsBackend`` a ``SizeBound`` uses."""

    safe_url: str

    async def size(self, count_rows: bool) -> StoreSize:
        """The store's size; ``count_rows``: count the rows exactly (slower) rather than estimate."""

    async def delete_oldest(self, rows: int) -> int:
        """Delete up to ``rows`` rows with the smallest ``time``; the number deleted."""


class SizeBound:
    check_every_s = 1.0  # at most one measure per second (two PRAGMAs on SQLite)

    def __init__(self, limits: RecordsLimits) -> None:
        self.limits = limits
        self.size: StoreSize | None = None  # the last measure, for the gauges
        self.pruned_total = 0
        self._lock = asyncio.Lock()
        self._checked_at = -math.inf
        self._rows_since = 0  # rows written since the last measure
        self._warned = False
        self._unmeasured_noted = False

    @property
    def active(self) -> bool:
        return self.limits.max_bytes > 0 or self.limits.max_rows > 0

    def rows_bound(self, size: StoreSize | None) -> int:
        """The rows bound: ``max_rows``, or for a store whose bytes are not measured the
        bytes bound in rows of about ``ROW_BYTES``; 0: none."""
        if self.limits.max_rows > 0:
            return self.limits.max_rows
        if size is not None and size.bytes is None and self.limits.max_bytes > 0:
            return max(self.limits.max_bytes // ROW_BYTES, 1)
        return 0

    def fraction(self, size: StoreSize) -> float:
        """How full the store is: the larger of its bytes and rows over their bounds."""
        parts = [0.0]
        if self.limits.max_bytes > 0 and size.bytes is not None:
            parts.append(size.bytes / self.limits.max_bytes)
        if (rows_bound := self.rows_bound(size)) > 0:
            parts.append(size.rows / rows_bound)
        return max(parts)

    @property
    def pending(self) -> bool:
        """Rows were written since the last measure."""
        return self.active and self._rows_since > 0

    def wrote(self, rows: int) -> None:
        self._rows_since += rows

    def due(self) -> bool:
        """Time to measure: rows written since the last measure, and ``check_every_s`` gone
        by or about ``STEP`` of a bound written (so a small bound is not overshot by a
        second's worth of rows)."""
        if not self.pending:
            return False
        return time.monotonic() - self._checked_at >= self.check_every_s or self._rows_since >= self._step_rows()

    def _step_rows(self) -> float:
        steps = [math.inf]
        size = self.size
        if (rows_bound := self.rows_bound(size)) > 0:
            steps.append(STEP * rows_bound)
        if self.limits.max_bytes > 0 and (size is None or size.bytes is not None):
            per_row: float = ROW_BYTES
            if size is not None and size.bytes and size.rows > 0:
                per_row = size.bytes / size.rows
            steps.append(STEP * self.limits.max_bytes / per_row)
        return max(min(steps), 1.0)

    async def check(self, db: Measurable) -> int:
        """Measure ``db``; past the bound, delete its oldest rows. The number deleted."""
        async with self._lock:  # two checks at once would each delete down to the target
            try:
                return await self._check(db)
            finally:  # also when it failed: the next write, or an idle second, tries again
                self._checked_at = time.monotonic()
                self._rows_since = 0

    async def _check(self, db: Measurable) -> int:
        size = self.size = await db.size(self.limits.max_rows > 0)
        if size.bytes is None and self.limits.max_rows <= 0 and not self._unmeasured_noted:
            self._unmeasured_noted = True
            if self.limits.max_bytes > 0:
                log.warning("request records: %s does not measure its bytes: records_max_mb = %g is kept as "
                            "a bound of %d rows (about %d bytes each); set [server] records_max_rows to choose",
                            db.safe_url, self.limits.max_bytes / MB, self.rows_bound(size), ROW_BYTES)
            else:
                log.warning("request records: %s is not bounded (records_max_mb = 0 and no records_max_rows)",
                            db.safe_url)
        full = self.fraction(size)
        if full >= self.limits.warn_at and not self._warned:
            self._warned = True
            log.warning("request records: %s is at %.0f%% of its bound (%s); the oldest records are deleted "
                        "past it", db.safe_url, 100 * full, self._describe(size))
        if full <= 1.0:
            return 0
        deleted = 0
        for _ in range(ROUNDS):
            wanted = min(self._excess_rows(size), size.rows)
            while wanted > 0:
                n = await db.delete_oldest(min(wanted, DELETE_BATCH))
                if n == 0:
                    break
                wanted -= n
                deleted += n
                await asyncio.sleep(0)  # let the loop run between two statements
            size = self.size = await db.size(self.limits.max_rows > 0)
            if self.fraction(size) <= 1.0 or size.rows <= 0:
                break
        self.pruned_total += deleted
        log.info("request records: deleted the %d oldest rows to stay under the bound (now %s)", deleted,
                 self._describe(size))
        return deleted

    def _excess_rows(self, size: StoreSize) -> int:
        """Rows to delete to bring ``size`` down to ``prune_to`` of the bounds (at least 1)."""
        excess = 1
        if (rows_bound := self.rows_bound(size)) > 0:
            excess = max(excess, size.rows - int(self.limits.prune_to * rows_bound))
        if self.limits.max_bytes > 0 and size.bytes is not None and size.rows > 0:
            per_row = size.bytes / size.rows
            over = size.bytes - self.limits.prune_to * self.limits.max_bytes
            excess = max(excess, math.ceil(over / per_row))
        return excess

    def _describe(self, size: StoreSize) -> str:
        parts = []
        if self.limits.max_bytes > 0 and size.bytes is not None:
            parts.append(f"{size.bytes / MB:.1f} MB of {self.limits.max_bytes / MB:g} MB")
        if (rows_bound := self.rows_bound(size)) > 0:
            parts.append(f"{size.rows} rows of {rows_bound}")
        return ", ".join(parts) or "unbounded"
