"""The SQLite backend of the request records (stdlib ``sqlite3`` on one thread): no
SQLAlchemy in a gateway, the same schema as the SQLAlchemy path (files written by either
read with the other), URL parsing, a locked or unopenable file, reuse after close."""

from __future__ import annotations

import logging
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from corral.core.errors import ConfigError, Unavailable
from corral.core.observe import RequestEvent
from corral.observe.records import RecordStore, event_row, event_values
from corral.observe.records_sqlite import SqliteRecords, sqlite_path


def event(rid: str, **fields: Any) -> RequestEvent:
    e = RequestEvent(request_id=rid, route="chat", started_at=float(fields.pop("started_at", time.time())))
    for name, value in fields.items():
        setattr(e, name, value)
    return e


def _run(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_importing_the_records_store_does_not_import_sqlalchemy() -> None:
    assert _run("""
        import sys
        import corral.observe.records, corral.gateway.observability, corral.gateway.service, corral.standalone
        print('sqlalchemy' in sys.modules)
    """) == "False"


def test_a_gateway_with_sqlite_records_never_imports_sqlalchemy(tmp_path: Path) -> None:
    db = tmp_path / "records.db"
    out = _run(f"""
        import asyncio, sys, time
        from corral.core.observe import RequestEvent
        from corral.core.spec import ServerSettings
        from corral.gateway.service import GatewayService
        from corral.registry.factory import registry_from_url

        async def main():
            service = GatewayService(registry_from_url("memory://"), ServerSettings(records="sqlite:///{db}"), None)
            async with service.lifespan(service.app):
                records = service.observability.records
                assert records is not None
                event = RequestEvent(request_id="r1", route="chat", started_at=time.time(), model="m")
                event.clock_start = time.perf_counter()
                service.observability.tracker.finish(event)
                await records.flush()
                assert await records.feedback("r1", 5, "ok")
                assert [r["request_id"] for r in await records.query(0)] == ["r1"]
            print('sqlalchemy' in sys.modules)

        asyncio.run(main())
    """)
    assert out == "False"
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT request_id, feedback_rating FROM corral_requests").fetchall() == [("r1", 5)]


def test_a_postgresql_url_takes_the_sqlalchemy_backend() -> None:
    # constructing does no I/O: no server needed
    assert _run("""
        import sys
        from corral.observe.records import RecordStore
        store = RecordStore("postgresql://u:secret@localhost:1/db")
        print(type(store._db).__name__, 'sqlalchemy' in sys.modules, store.safe_url)
    """) == "SqlAlchemyRecords True postgresql://u@localhost:1/db"


@pytest.mark.parametrize(("url", "path"), [
    ("sqlite:///records.db", "records.db"),
    ("sqlite:////var/lib/corral/records.db", "/var/lib/corral/records.db"),
    ("sqlite+aiosqlite:////tmp/a%20b.db", "/tmp/a b.db"),
    ("sqlite://", ":memory:"),
    ("sqlite:///:memory:", ":memory:"),
])
def test_sqlite_urls(url: str, path: str) -> None:
    assert sqlite_path(url) == path
    assert RecordStore(url).safe_url == url


def test_sqlite_url_with_home() -> None:
    assert sqlite_path("sqlite:///~/records.db") == str(Path.home() / "records.db")


@pytest.mark.parametrize("url", ["sqlite://host/records.db", "sqlite:///records.db?mode=ro"])
def test_bad_sqlite_urls_are_config_errors(url: str) -> None:
    with pytest.raises(ConfigError):
        RecordStore(url)


def test_event_row_is_in_column_order() -> None:
    e = event("r", model="m", stream=True, params={"a": 1})
    assert list(event_row(e).values()) == list(event_values(e))
    assert event_row(e)["model"] == "m" and event_row(e)["params"] == '{"a":1}'


async def test_write_flush_query_feedback_prune(tmp_path: Path) -> None:
    store = RecordStore(f"sqlite:///{tmp_path / 'records.db'}", retention_days=1)
    await store.open()
    try:
        now = time.time()
        for i in range(30):
            store.request_finished(event(f"r-{i}", started_at=now - (2 * 86400 if i % 3 == 0 else i), model="m",
                                         trace_id="t1" if i < 5 else None, stream=i % 2 == 0))
        assert await store.feedback("r-1", 4, "fine") is True  # waits for the queued row
        assert await store.feedback("ghost", 1, None) is False
        assert store.written_total == 30 and store.dropped_total == 0
        rows = await store.query(now - 86400)
        assert len(rows) == 20 and [r["time"] for r in rows] == sorted(r["time"] for r in rows)
        one = await store.get("r-1")
        assert one is not None and (one["feedback_rating"], one["feedback_comment"]) == (4, "fine")
        assert one["stream"] is False and (await store.get("r-2") or {})["stream"] is True
        trace = [r["request_id"] for r in await store.by_trace("t1")]
        assert trace == ["r-0", "r-3", "r-4", "r-2", "r-1"]  # oldest first, then by id
        assert await store.prune(now) == 10
        assert len(await store.query(0)) == 20
    finally:
        await store.close()


async def test_statements_run_on_one_thread_of_the_store(tmp_path: Path) -> None:
    backend = SqliteRecords(f"sqlite:///{tmp_path / 'records.db'}")
    seen: set[str] = set()
    original = backend._transaction

    def spy(work: Any) -> Any:
        seen.add(threading.current_thread().name)
        return original(work)

    backend._transaction = spy  # type: ignore[method-assign]
    await backend.create()
    await backend.insert([event_values(event("a"))])
    await backend.select([])
    await backend.close()
    assert len(seen) == 1 and next(iter(seen)).startswith("corral-records")
    assert threading.current_thread().name not in seen


async def test_the_file_is_in_wal_mode(tmp_path: Path) -> None:
    db = tmp_path / "records.db"
    store = RecordStore(f"sqlite:///{db}")
    await store.open()
    await store.close()
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)


async def test_in_memory_database_lives_until_close() -> None:
    store = RecordStore("sqlite://")
    await store.open()
    store.request_finished(event("m-1"))
    await store.flush()
    assert [r["request_id"] for r in await store.query(0)] == ["m-1"]
    await store.close()


async def test_usable_again_after_close(tmp_path: Path) -> None:
    store = RecordStore(f"sqlite:///{tmp_path / 'records.db'}")
    await store.open()
    store.request_finished(event("before"))
    await store.close()
    assert [r["request_id"] for r in await store.query(0)] == ["before"]  # a reader after close
    await store.open()
    store.request_finished(event("after"))
    await store.flush()
    assert [r["request_id"] for r in await store.query(0)] == ["before", "after"]
    await store.close()


async def test_locked_database_drops_counts_warns_once_and_recovers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "records.db"
    store = RecordStore(f"sqlite:///{db}", retention_days=0)
    store._db.busy_timeout_ms = 50  # type: ignore[attr-defined]
    await store.open()
    caplog.set_level(logging.WARNING, logger="corral.observe.records")
    other = sqlite3.connect(db, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        for i in range(3):
            store.request_finished(event(f"lost-{i}"))
            await store.flush()
        assert store.dropped_total == 3 and store.written_total == 0
        outage = [r.getMessage() for r in caplog.records if "dropping request records" in r.getMessage()]
        assert len(outage) == 1
        assert str(db) in outage[0] and "database is locked" in outage[0]
        with pytest.raises(Unavailable) as info:
            await store.feedback("lost-0", 1, None)
        assert info.value.code == "records_unavailable"
        assert (await store.get("lost-0")) is None  # readers are not blocked by the writer (WAL)
    finally:
        other.execute("ROLLBACK")
        other.close()
    store.request_finished(event("kept"))
    await store.flush()
    assert [r["request_id"] for r in await store.query(0)] == ["kept"] and store.written_total == 1
    assert any("works again" in r.getMessage() for r in caplog.records)
    await store.close()


async def test_unopenable_file_is_unavailable_and_rows_are_dropped(tmp_path: Path) -> None:
    store = RecordStore(f"sqlite:///{tmp_path / 'missing-dir' / 'records.db'}")
    with pytest.raises(Unavailable) as info:
        await store.open()
    assert info.value.code == "records_unavailable" and "missing-dir" in info.value.message
    assert "could not create the schema" in info.value.message
    store.request_finished(event("x"))
    await store.flush()  # no writer task: written (here: dropped) in place
    assert store.dropped_total == 1
    with pytest.raises(Unavailable):
        await store.has_table()
    await store.close()


# ---------------------------------------------------------------------------- same schema as the SQLAlchemy path


def _schema(db: Path) -> tuple[Any, ...]:
    with sqlite3.connect(db) as conn:
        columns = conn.execute("PRAGMA table_info(corral_requests)").fetchall()
        indexes = sorted(
            (name, unique, [c[2] for c in conn.execute(f"PRAGMA index_info({name})")])
            for _, name, unique, *_ in conn.execute("PRAGMA index_list(corral_requests)")
        )
    return columns, indexes


async def test_same_schema_as_the_sqlalchemy_path(tmp_path: Path) -> None:
    from corral.observe.records_sqlalchemy import SqlAlchemyRecords

    old, new = tmp_path / "old.db", tmp_path / "new.db"
    reference = SqlAlchemyRecords(f"sqlite:///{old}")
    await reference.create()
    await reference.close()
    backend = SqliteRecords(f"sqlite:///{new}")
    await backend.create()
    await backend.create()  # idempotent
    await backend.close()
    assert _schema(new) == _schema(old)
    assert len(_schema(new)[1]) == 4  # the primary key's and the three of INDEXES


async def test_reads_a_file_written_by_the_sqlalchemy_path_and_back(tmp_path: Path) -> None:
    from corral.observe.records_sqlalchemy import SqlAlchemyRecords

    db = tmp_path / "records.db"
    now = time.time()
    events = [
        event("old-1", started_at=now - 10, model="a", stream=True, params={"max_tokens": 4}, trace_id="t",
              latency_s=0.5, prompt_tokens=3, prompt_text="hello"),
        event("old-2", started_at=now - 5, model="b", outcome="error", http_status=503, error="down"),
    ]
    previous = SqlAlchemyRecords(f"sqlite:///{db}")  # how earlier versions wrote the file
    await previous.create()
    await previous.insert([event_values(e) for e in events])
    assert await previous.set_feedback("old-1", 5, "good", now)
    await previous.close()

    store = RecordStore(f"sqlite:///{db}")
    assert await store.has_table()
    await store.open()  # the table exists: nothing created
    rows = await store.query(0)
    assert [r["request_id"] for r in rows] == ["old-1", "old-2"]
    first = rows[0]
    assert first["stream"] is True and first["params"] == {"max_tokens": 4} and first["spans"] == []
    assert (first["feedback_rating"], first["feedback_comment"], first["prompt_text"]) == (5, "good", "hello")
    assert (rows[1]["outcome"], rows[1]["http_status"], rows[1]["error"]) == ("error", 503, "down")
    store.request_finished(event("new-1", started_at=now, model="a", stream=False))
    await store.flush()
    written = await store.get("new-1")
    await store.close()

    reader = RecordStore(f"sqlite:///{db}")
    reader._db = SqlAlchemyRecords(f"sqlite:///{db}")  # type: ignore[assignment]  # the SQLAlchemy path reads it too
    assert await reader.query(0) == [*rows, written]
    await reader.close()


@pytest.mark.parametrize("backend", ["sqlite", "sqlalchemy"])
async def test_a_file_of_an_earlier_version_gets_the_new_columns(tmp_path: Path, backend: str) -> None:
    """A store written before ``protocol`` existed is upgraded in place when opened: its
    rows stay (read with ``protocol`` None) and new rows carry the column."""
    from corral.observe.records_rows import ADDED_COLUMNS, COLUMNS

    db = tmp_path / "records.db"
    first = [c for c in COLUMNS if c not in ADDED_COLUMNS]
    with sqlite3.connect(db) as conn:
        conn.execute(f"CREATE TABLE corral_requests ({', '.join(f'{n} {k}' for n, k in first)}, PRIMARY KEY (request_id))")
        conn.execute("INSERT INTO corral_requests (request_id, time, route) VALUES ('old', 1.0, 'chat')")
    if backend == "sqlite":
        store: Any = SqliteRecords(f"sqlite:///{db}")
    else:
        from corral.observe.records_sqlalchemy import SqlAlchemyRecords

        store = SqlAlchemyRecords(f"sqlite:///{db}")
    await store.create()
    await store.create()  # idempotent once upgraded
    await store.insert([event_values(event("new", protocol="anthropic"))])
    await store.close()
    with sqlite3.connect(db) as conn:
        rows = dict(conn.execute("SELECT request_id, protocol FROM corral_requests").fetchall())
    assert rows == {"old": None, "new": "anthropic"}
