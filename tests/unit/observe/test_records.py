"""Request records on a temporary SQLite file: round trip, feedback, overflow, retention,
outages, capture off/on, and ``POST /v1/feedback``."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette

from corral.core.errors import ConfigError, Unavailable
from corral.core.observe import Observers, RequestEvent
from corral.gateway.tracking import Capture, Tracker
from corral.observe.records import RecordStore, feedback_route

MARKER = "MARKER-7f3a9c-never-stored"


def event(rid: str, **fields: object) -> RequestEvent:
    started = float(fields.pop("started_at", time.time()))  # type: ignore[arg-type]
    e = RequestEvent(request_id=rid, route="chat", started_at=started)
    for name, value in fields.items():
        setattr(e, name, value)
    return e


def raw_bytes(db: Path) -> bytes:
    """The database file and its WAL/journal files, as stored on disk."""
    return b"".join(p.read_bytes() for p in sorted(db.parent.glob(db.name + "*")))


@pytest.fixture
async def store(tmp_path: Path):  # type: ignore[no-untyped-def]
    s = RecordStore(f"sqlite:///{tmp_path / 'records.db'}")
    await s.open()
    yield s
    await s.close()


async def test_events_round_trip(store: RecordStore) -> None:
    t0 = time.time()
    store.request_finished(event(
        "req-1", started_at=t0, model="tiny", api_key_id="k1", instance_id="tiny-0", engine="transformers",
        worker_id="w1", stream=True, params={"max_tokens": 4, "temperature": 0.5, "stop": ["\n"]},
        latency_s=0.25, ttft_s=0.05, prompt_tokens=12, completion_tokens=4, retries=1, trace_id="ab" * 16,
    ))
    store.request_finished(event("req-2", started_at=t0 + 1, model="other", outcome="error", http_status=503,
                                 error="no instance"))
    await store.flush()
    rows = await store.query(t0 - 1)
    assert [r["request_id"] for r in rows] == ["req-1", "req-2"]
    first = rows[0]
    assert first["time"] == pytest.approx(t0)
    assert (first["model"], first["instance_id"], first["engine"], first["worker_id"]) == (
        "tiny", "tiny-0", "transformers", "w1")
    assert first["stream"] is True and first["route"] == "chat" and first["api_key_id"] == "k1"
    assert first["params"] == {"max_tokens": 4, "temperature": 0.5, "stop": ["\n"]}
    assert (first["latency_s"], first["ttft_s"], first["prompt_tokens"], first["completion_tokens"]) == (
        0.25, 0.05, 12, 4)
    assert (first["outcome"], first["http_status"], first["retries"], first["trace_id"]) == ("ok", 200, 1, "ab" * 16)
    assert first["prompt_text"] is None and first["feedback_rating"] is None
    assert (rows[1]["outcome"], rows[1]["http_status"], rows[1]["error"]) == ("error", 503, "no instance")
    # time window and model filter
    assert [r["request_id"] for r in await store.query(t0 - 1, t0 + 0.5)] == ["req-1"]
    assert [r["request_id"] for r in await store.query(t0 - 1, model="other")] == ["req-2"]
    assert await store.get("req-2") is not None and await store.get("nope") is None
    assert [r["request_id"] for r in await store.by_trace("ab" * 16)] == ["req-1"]
    assert store.written_total == 2 and store.dropped_total == 0


async def test_many_events_are_batched_and_all_written(store: RecordStore) -> None:
    t0 = time.time()
    for i in range(1000):
        store.request_finished(event(f"bulk-{i}", started_at=t0, model="m"))
    await store.flush()
    assert len(await store.query(t0 - 1)) == 1000 and store.dropped_total == 0


async def test_rows_are_written_within_a_second_without_flush(store: RecordStore) -> None:
    t0 = time.time()
    store.request_finished(event("soon", started_at=t0, model="m"))
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline and not await store.query(t0 - 1):
        await asyncio.sleep(0.02)
    assert [r["request_id"] for r in await store.query(t0 - 1)] == ["soon"]


async def test_duplicate_request_id_keeps_the_first_row(store: RecordStore) -> None:
    store.request_finished(event("dup", model="first"))
    store.request_finished(event("dup", model="second"))
    await store.flush()
    store.request_finished(event("dup", model="third"))
    await store.flush()
    assert (await store.get("dup") or {})["model"] == "first"


async def test_feedback_known_and_unknown(store: RecordStore) -> None:
    store.request_finished(event("fb-1", model="m"))
    # not flushed yet: feedback waits for the queued row instead of answering "unknown"
    assert await store.feedback("fb-1", 5, "great answer") is True
    assert await store.feedback("no-such-request", 1, None) is False
    row = await store.get("fb-1")
    assert row is not None
    assert (row["feedback_rating"], row["feedback_comment"]) == (5, "great answer")
    assert row["feedback_time"] == pytest.approx(time.time(), abs=5)
    assert await store.feedback("fb-1", -1, None) is True  # the last word counts
    row = await store.get("fb-1")
    assert row is not None and (row["feedback_rating"], row["feedback_comment"]) == (-1, None)


async def test_queue_overflow_drops_and_counts_without_blocking(tmp_path: Path) -> None:
    s = RecordStore(f"sqlite:///{tmp_path / 'records.db'}", queue_size=5)  # not opened: no writer drains it
    start = time.perf_counter()
    for i in range(100):
        s.request_finished(event(f"o-{i}"))
    assert time.perf_counter() - start < 0.5
    assert s.dropped_total == 95
    await s.open()
    await s.flush()
    assert sorted(r["request_id"] for r in await s.query(0)) == [f"o-{i}" for i in range(5)]
    await s.close()


async def test_retention_deletes_old_rows(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'records.db'}"
    now = time.time()
    s = RecordStore(url, retention_days=30)
    await s.open()
    s.request_finished(event("old", started_at=now - 31 * 86400))
    s.request_finished(event("recent", started_at=now - 29 * 86400))
    s.request_finished(event("new", started_at=now))
    await s.flush()
    assert await s.prune(now) == 1
    assert [r["request_id"] for r in await s.query(0)] == ["recent", "new"]
    assert await s.prune(now + 2 * 86400) == 1  # "recent" is now past 30 days
    s.request_finished(event("old-again", started_at=now - 40 * 86400))
    await s.close()

    reopened = RecordStore(url, retention_days=30)  # open() prunes at once, then hourly
    await reopened.open()
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline and await reopened.get("old-again") is not None:
        await asyncio.sleep(0.02)
    assert [r["request_id"] for r in await reopened.query(0)] == ["new"]
    await reopened.close()


async def test_database_outage_drops_counts_logs_once_and_recovers(
    store: RecordStore, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with sqlite3.connect(tmp_path / "records.db") as conn:
        conn.execute("DROP TABLE corral_requests")
    caplog.set_level(logging.WARNING, logger="corral.observe.records")
    for i in range(3):
        store.request_finished(event(f"lost-{i}"))  # never raises
        await store.flush()
    assert store.dropped_total == 3
    outage = [r for r in caplog.records if "dropping request records" in r.getMessage()]
    assert len(outage) == 1 and "records.db" in outage[0].getMessage()
    with pytest.raises(Unavailable) as info:  # the route answers 503
        await store.feedback("anything", 3, None)
    assert info.value.code == "records_unavailable"

    await store.open()  # the table is back
    store.request_finished(event("kept"))
    await store.flush()
    assert [r["request_id"] for r in await store.query(0)] == ["kept"]
    assert any("works again" in r.getMessage() for r in caplog.records)


async def test_unsupported_url_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        RecordStore("mysql://db/records")


@pytest.mark.parametrize("capture", [False, True])
async def test_captured_text_only_when_enabled_and_redacted(tmp_path: Path, capture: bool) -> None:
    db = tmp_path / "records.db"
    s = RecordStore(f"sqlite:///{db}")
    await s.open()
    tracker = Tracker(Observers([s]), Capture(enabled=capture, redact=(r"secret-\d+",)))
    e = event("cap-1", model="m", prompt_text=f"user: {MARKER} secret-123", completion_text=f"{MARKER} answer")
    e.clock_start = time.perf_counter()
    tracker.finish(e)
    await s.flush()
    row = await s.get("cap-1")
    await s.close()
    assert row is not None
    data = raw_bytes(db)
    if capture:
        assert row["prompt_text"] == f"user: {MARKER} [REDACTED]" and row["completion_text"] == f"{MARKER} answer"
        assert MARKER.encode() in data  # the check below would see stored text
        assert b"secret-123" not in data
    else:
        assert row["prompt_text"] is None and row["completion_text"] is None
        assert MARKER.encode() not in data and b"secret-123" not in data


# ---------------------------------------------------------------------------- POST /v1/feedback


@pytest.fixture
async def http(store: RecordStore):  # type: ignore[no-untyped-def]
    app = Starlette(routes=[feedback_route(store)])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        yield client


async def test_feedback_route_success(store: RecordStore, http: httpx.AsyncClient) -> None:
    store.request_finished(event("route-1", model="m"))
    resp = await http.post("/v1/feedback", json={"request_id": "route-1", "rating": 4, "comment": "ok"})
    assert resp.status_code == 200 and resp.json() == {"ok": True}
    row = await store.get("route-1")
    assert row is not None and (row["feedback_rating"], row["feedback_comment"]) == (4, "ok")
    resp = await http.post("/v1/feedback", json={"request_id": "route-1", "rating": 0})  # comment optional
    assert resp.status_code == 200


async def test_feedback_route_unknown_request_is_404(http: httpx.AsyncClient) -> None:
    resp = await http.post("/v1/feedback", json={"request_id": "ghost", "rating": 1, "comment": None})
    assert resp.status_code == 404
    error = resp.json()["error"]
    assert error["code"] == "request_not_found" and error["param"] == "request_id"
    assert error["type"] == "invalid_request_error" and "ghost" in error["message"]


@pytest.mark.parametrize(("body", "param"), [
    ({"request_id": "x", "rating": 6}, "rating"),
    ({"request_id": "x", "rating": -2}, "rating"),
    ({"request_id": "x", "rating": "5"}, "rating"),  # strict: no coercion
    ({"request_id": "x", "rating": True}, "rating"),
    ({"request_id": "x", "rating": 4.0}, "rating"),
    ({"rating": 3}, "request_id"),
    ({"request_id": 7, "rating": 3}, "request_id"),
    ({"request_id": "x", "rating": 3, "comment": 5}, "comment"),
    ({"request_id": "x", "rating": 3, "ratting": 4}, "ratting"),
])
async def test_feedback_route_bad_body_is_400_naming_the_field(
    http: httpx.AsyncClient, body: dict[str, object], param: str
) -> None:
    resp = await http.post("/v1/feedback", json=body)
    assert resp.status_code == 400
    error = resp.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"


async def test_feedback_route_not_json_is_400(http: httpx.AsyncClient) -> None:
    resp = await http.post("/v1/feedback", content=b"{nope", headers={"content-type": "application/json"})
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "invalid_json"
    resp = await http.post("/v1/feedback", json=[1, 2])
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "invalid_json"
