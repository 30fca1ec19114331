"""The stored responses of the Responses API (``ResponseStore``) on both backends: a SQLite
file shared with the request records (the two tables side by side, written at the same
time) and a real PostgreSQL server. Read back whole, scoped to the key that stored them,
deleted, pruned by age and kept under the size bound, oldest first."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.core.observe import RequestEvent
from corral.observe.records import RecordStore
from corral.observe.stored_responses import ResponseStore, StoredLimits, StoredResponse
from tests.services.postgres import Postgres, start_postgres

pytestmark = pytest.mark.integration


def _stored(i: int, at: float, key: str | None = "key-a", size: int = 10) -> StoredResponse:
    output = [{"id": f"msg_{i}", "type": "message", "status": "completed", "role": "assistant",
               "content": [{"type": "output_text", "text": "x" * size, "annotations": []}]}]
    return StoredResponse(f"resp_{i}", at, key, "m", {"id": f"resp_{i}", "object": "response", "output": output},
                          [{"type": "message", "role": "user", "content": f"question {i}"}])


async def _exercise(store: ResponseStore) -> None:
    now = time.time()
    await store.put(_stored(1, now))
    got = await store.get("resp_1", "key-a")
    assert got is not None and got.response["output"][0]["content"][0]["text"] == "x" * 10
    assert got.context == [{"type": "message", "role": "user", "content": "question 1"}] and got.model == "m"
    assert await store.get("resp_1", "key-b") is None  # another key's response is not found
    assert await store.get("resp_1", None) is None
    assert await store.get("resp_unknown", "key-a") is None
    assert await store.delete("resp_1", "key-b") is False and await store.get("resp_1", "key-a") is not None
    assert await store.delete("resp_1", "key-a") is True and await store.get("resp_1", "key-a") is None
    # retention: rows older than retention_days go
    await store.put(_stored(2, now - 3 * 86400, key=None))
    await store.put(_stored(3, now, key=None))
    assert await store.prune() == 1
    assert await store.get("resp_2", None) is None and await store.get("resp_3", None) is not None
    # the size bound: the oldest go first, down to prune_to of it
    for i in range(10, 40):
        await store.put(_stored(i, now + i, size=1000))
    assert await store.enforce_bound() > 0
    assert await store.get("resp_10", "key-a") is None and await store.get("resp_39", "key-a") is not None
    total, _ = await store._db.size()
    assert total <= store.limits.max_bytes


LIMITS = StoredLimits(retention_days=1, max_bytes=12_000, check_every_s=3600)


async def test_sqlite_beside_the_request_records(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'records.db'}"
    records, store = RecordStore(url, retention_days=0), ResponseStore(url, LIMITS)
    await records.open()
    await store.open()
    try:
        now = time.time()
        for i in range(50):  # both tables written at the same time, from two threads
            records.request_finished(RequestEvent(request_id=f"r-{i}", route="responses", started_at=now, model="m"))
        await asyncio.gather(_exercise(store), records.flush(timeout=10))
        assert len(await records.query(0)) == 50
    finally:
        await store.close()
        await records.close()
    conn = sqlite3.connect(tmp_path / "records.db")
    try:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    finally:
        conn.close()
    assert {"corral_requests", "corral_responses"} <= tables


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    server = start_postgres()  # fails with the install hint when PostgreSQL is missing
    yield server
    server.destroy()


async def test_postgresql(postgres: Postgres) -> None:
    store = ResponseStore(postgres.url, LIMITS)
    await store.open()
    try:
        await _exercise(store)
    finally:
        await store.close()
