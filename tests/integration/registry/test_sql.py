"""The SQL registry against a real SQLite file and a real PostgreSQL server.

Every test runs on both backends; PostgreSQL is one throwaway server per module, with a
fresh database per test. The outage test stops and restarts that server under a watcher.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import sqlite3
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]
import pytest
from sqlalchemy import func, select

from corral.core.errors import ConfigError, Unavailable
from corral.core.registry import Synced, InstanceRecord, InstanceState, RegistryEvent
from corral.core.spec import ModelKind
from corral.registry.sql import SqlRegistry
from tests.services.postgres import Postgres, free_port, start_postgres

POLL = 0.05


def rec(instance_id: str, model: str = "m", state: InstanceState = InstanceState.READY) -> InstanceRecord:
    return InstanceRecord(instance_id, model, ModelKind.LLM, "fake", "w1", state)


def full_record(instance_id: str) -> InstanceRecord:
    """Every field away from its default."""
    return InstanceRecord(
        instance_id=instance_id,
        model="embedder",
        kind=ModelKind.EMBEDDING,
        engine="sentence-transformers",
        worker_id="worker-7",
        state=InstanceState.FAILED,
        address="http://10.0.0.7:9000",
        capabilities=frozenset({"embeddings", "tokenize"}),
        started_at=1712345678.25,
        last_error="CUDA out of memory: ünïcödé 'quotes' \"too\"",
        routing="weighted",
        weight=2.5,
        max_concurrency=16,
    )


class Watcher:
    """Consumes ``registry.watch()`` in a task, so a test can see whether it ended."""

    def __init__(self, registry: SqlRegistry) -> None:
        self.events: asyncio.Queue[RegistryEvent] = asyncio.Queue()
        self.syncs = 0  # SYNCED markers: after the first poll and after every outage
        self._iterator = registry.watch()
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async for change in self._iterator:
            if isinstance(change, Synced):
                self.syncs += 1
            else:
                await self.events.put(change)

    async def next(self, timeout: float = 5.0) -> RegistryEvent:
        return await asyncio.wait_for(self.events.get(), timeout)

    async def until(self, done: Callable[[list[RegistryEvent]], bool], timeout: float = 5.0) -> list[RegistryEvent]:
        seen: list[RegistryEvent] = []
        async with asyncio.timeout(timeout):
            while not done(seen):
                seen.append(await self.events.get())
        return seen

    async def stop(self) -> None:
        assert not self.task.done(), f"the watcher ended early: {self.task!r}"
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        await self._iterator.aclose()


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    server = start_postgres()  # fails with the install hint when PostgreSQL is missing
    yield server
    server.destroy()


async def new_database(server: Postgres, password: str | None = None) -> str:
    name = f"t_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(host="127.0.0.1", port=server.port, user="postgres", database="postgres")
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    user = "postgres" if password is None else f"postgres:{password}"
    return f"postgresql://{user}@127.0.0.1:{server.port}/{name}"


@pytest.fixture(params=["sqlite", "postgresql"])
async def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'registry.db'}"
    return await new_database(request.getfixturevalue("postgres"))


@pytest.fixture
async def registry(url: str) -> AsyncIterator[SqlRegistry]:
    reg = SqlRegistry(url, poll_interval=POLL)
    await reg.open()
    yield reg
    await reg.close()


async def row_count(reg: SqlRegistry) -> int:
    async with reg._engine.connect() as conn:
        return int(await conn.scalar(select(func.count()).select_from(reg._table)) or 0)


async def test_put_list_remove_round_trip(registry: SqlRegistry) -> None:
    assert await registry.list() == []
    full, plain = full_record("a"), rec("b")
    await registry.put(plain)
    await registry.put(full, ttl=60)
    assert await registry.list() == [full, plain]  # every field survives; ordered by id
    draining = dataclasses.replace(full, state=InstanceState.DRAINING, last_error=None, address=None)
    await registry.put(draining)  # an upsert: replaces by instance_id, and drops the lease
    assert await registry.list() == [draining, plain]
    await registry.remove("a")
    assert await registry.list() == [plain]
    await registry.remove("a")  # removing twice, or something never there, is harmless
    await registry.remove("never-there")
    assert await registry.list() == [plain]


async def test_leased_record_expires_unless_refreshed(registry: SqlRegistry) -> None:
    leased = rec("leased")
    await registry.put(leased, ttl=0.5)
    await registry.put(rec("kept"), ttl=0.5)
    await registry.put(rec("static"))
    watcher = Watcher(registry)
    snapshot = await watcher.until(lambda seen: len(seen) == 3)
    assert sorted(e.record.instance_id for e in snapshot) == ["kept", "leased", "static"]
    assert not any(e.removed for e in snapshot)
    for _ in range(6):  # keep refreshing one lease for longer than its ttl
        await asyncio.sleep(0.15)
        await registry.put(rec("kept"), ttl=0.5)
    assert [r.instance_id for r in await registry.list()] == ["kept", "static"]
    removed = await watcher.next()
    assert removed == RegistryEvent(leased, removed=True)
    await asyncio.sleep(3 * POLL)
    assert watcher.events.empty()  # refreshing an unchanged record is not a change
    assert await row_count(registry) == 2  # the watcher deleted the expired row
    await watcher.stop()


async def test_watcher_sees_snapshot_then_changes(registry: SqlRegistry) -> None:
    old = full_record("old")
    await registry.put(old)
    watcher = Watcher(registry)
    assert await watcher.next() == RegistryEvent(old)
    new = rec("new")
    await registry.put(new)
    assert await watcher.next() == RegistryEvent(new)
    changed = dataclasses.replace(new, state=InstanceState.DRAINING)
    await registry.put(changed)
    assert await watcher.next() == RegistryEvent(changed)
    await registry.put(old)  # same content again: no event
    await asyncio.sleep(3 * POLL)
    await registry.remove("new")
    assert await watcher.next() == RegistryEvent(changed, removed=True)  # the last known record
    await registry.remove("old")
    assert await watcher.next() == RegistryEvent(old, removed=True)
    await watcher.stop()
    ending = Watcher(registry)
    await registry.close()  # running watchers end (the fixture's second close is harmless)
    await asyncio.wait_for(ending.task, 1.0)


async def test_two_registries_on_one_url_see_each_other(url: str) -> None:
    first, second = SqlRegistry(url, poll_interval=POLL), SqlRegistry(url, poll_interval=POLL)
    await first.open()
    await second.open()
    try:
        a = full_record("a")
        await first.put(a)
        assert await second.list() == [a]
        watcher = Watcher(second)
        assert await watcher.next() == RegistryEvent(a)
        await second.put(rec("b"), ttl=30)
        assert await first.list() == [a, rec("b")]
        assert await watcher.next() == RegistryEvent(rec("b"))  # its own write, seen like any other
        await first.remove("a")
        assert await watcher.next() == RegistryEvent(a, removed=True)
        assert await second.list() == [rec("b")]
        await watcher.stop()
    finally:
        await first.close()
        await second.close()


async def test_schema_creation_is_idempotent_and_race_free(url: str) -> None:
    registries = [SqlRegistry(url, poll_interval=POLL) for _ in range(4)]
    try:
        await asyncio.gather(*(reg.open() for reg in registries))  # as processes starting together
        await registries[0].put(rec("a"))
        await registries[0].open()  # again: the table and its rows stay
        again = SqlRegistry(url)
        await again.open()
        assert await again.list() == [rec("a")]
        await again.close()
    finally:
        for reg in registries:
            await reg.close()


async def test_sqlite_file_uses_wal(tmp_path: Path) -> None:
    path = tmp_path / "registry.db"
    reg = SqlRegistry(f"sqlite:///{path}")
    await reg.open()
    await reg.put(rec("a"))
    await reg.close()
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)


async def test_bad_urls() -> None:
    with pytest.raises(ConfigError, match="unsupported registry URL scheme"):
        SqlRegistry("mysql://u@h/db")
    with pytest.raises(ConfigError, match="invalid registry URL"):
        SqlRegistry("not a url")
    nobody = SqlRegistry(f"postgresql://postgres:hunter2@127.0.0.1:{free_port()}/db")
    with pytest.raises(Unavailable) as failure:
        await nobody.open()
    assert "hunter2" not in str(failure.value) and f"127.0.0.1:{nobody._url.port}/db" in str(failure.value)
    await nobody.close()


async def test_watcher_survives_a_postgres_outage(postgres: Postgres, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="corral.registry.sql")
    url = await new_database(postgres, password="s3cret-pw")  # trust auth: the password is ignored
    reg = SqlRegistry(url, poll_interval=POLL)
    await reg.open()
    await reg.put(rec("a"))
    watcher = Watcher(reg)
    assert await watcher.next() == RegistryEvent(rec("a"))
    postgres.stop()
    try:
        for attempt in (lambda: reg.put(rec("b")), lambda: reg.remove("a"), reg.list):
            with pytest.raises(Unavailable) as failure:
                await attempt()
            message = str(failure.value)
            assert "s3cret-pw" not in message and f"127.0.0.1:{postgres.port}" in message, message
        await asyncio.sleep(10 * POLL)
        assert not watcher.task.done()
        assert watcher.events.empty()
        outage = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(outage) == 1, "one warning per outage, not one per poll"
        assert "s3cret-pw" not in caplog.text
    finally:
        postgres.start()
    other = SqlRegistry(url, poll_interval=POLL)
    await other.open()
    await other.put(rec("b"))
    await other.remove("a")
    seen = await watcher.until(lambda s: {(e.record.instance_id, e.removed) for e in s} >= {("b", False), ("a", True)})
    assert RegistryEvent(rec("b")) in seen and RegistryEvent(rec("a"), removed=True) in seen
    assert any("reachable again" in r.getMessage() for r in caplog.records)
    await reg.put(rec("c"))  # the registry's own pool recovered too
    assert [r.instance_id for r in await other.list()] == ["b", "c"]
    await watcher.stop()
    await reg.close()
    await other.close()
