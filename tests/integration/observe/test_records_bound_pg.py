"""The request records' rows bound on a real PostgreSQL server (the SQLAlchemy backend):
bytes are not measured there, so ``records_max_rows`` keeps the newest rows; without
it the bytes bound is kept as a rows bound (no store is unbounded by default), said once."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import pytest

from corral.core.observe import RequestEvent
from corral.observe.records import RecordStore
from corral.observe.records_bound import ROW_BYTES, RecordsLimits
from tests.services.postgres import Postgres, start_postgres

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    server = start_postgres()  # fails with the install hint when PostgreSQL is missing
    yield server
    server.destroy()


async def fill(store: RecordStore, count: int, prefix: str) -> list[str]:
    t0 = time.time() - 100
    for i in range(count):
        store.request_finished(RequestEvent(request_id=f"{prefix}-{i:04d}", route="chat", started_at=t0 + i * 0.01,
                                            model="m", params={"seed": 2**70}))
        if i % 50 == 49:
            await store.flush()
            await store.enforce_bound()
    return [r["request_id"] for r in await store.query(0)]


async def test_rows_bound_on_postgresql(postgres: Postgres, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="corral.observe.records")
    store = RecordStore(postgres.url, limits=RecordsLimits(max_rows=100))
    await store.open()
    try:
        ids = await fill(store, 400, "pg")
        rows = await store.query(0)
    finally:
        await store.close()
    assert 80 <= len(ids) <= 100 and ids == [f"pg-{i:04d}" for i in range(400 - len(ids), 400)]
    assert rows[-1]["params"] == {"seed": str(2**70)}
    assert store.bound.size is not None and store.bound.size.bytes is None
    assert store.bound.pruned_total == 400 - len(ids) and store.dropped_total == 0


async def test_without_a_rows_bound_the_bytes_bound_is_kept_in_rows(postgres: Postgres,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="corral.observe.records")
    assert RecordsLimits().max_bytes > 0 and RecordsLimits().max_rows == 0  # the defaults: a bytes bound only
    store = RecordStore(postgres.url, limits=RecordsLimits(max_bytes=120 * ROW_BYTES))
    await store.open()
    try:
        ids = await fill(store, 400, "pg-bytes")  # the rows the test above left are older: pruned first
        await store.enforce_bound()
    finally:
        await store.close()
    assert 96 <= len(ids) <= 120 and ids == [f"pg-bytes-{i:04d}" for i in range(400 - len(ids), 400)]
    said = [r for r in caplog.records if "records_max_rows" in r.getMessage()]
    assert len(said) == 1 and "a bound of 120 rows" in said[0].getMessage()
