"""Every desired-state store against a real backend: memory, a SQLite file, a throwaway
PostgreSQL server (one per module, a fresh database per test) and a throwaway etcd (one per
module, a fresh key prefix per test)."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]
import pytest

from corral.core.errors import ConfigError, Unavailable
from corral.core.keys import Limits, VirtualKey, key_hash
from corral.core.spec import ModelKind, ModelSpec
from corral.core.state import AuditEvent, StateStore
from corral.core.usage import KeyUsage, StoreExchange, UsageReport
from corral.state.etcd import EtcdStateStore
from corral.state.factory import state_from_url
from corral.state.memory import MemoryStateStore
from corral.state.sql import SqlStateStore
from tests.services.etcd import EtcdServer, start_etcd
from tests.services.postgres import Postgres, free_port, start_postgres

BACKENDS = ["memory", "sqlite", "postgresql", "etcd"]

Factory = Callable[..., StateStore]  # a new, not yet opened store on this test's URL


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    server = start_postgres()  # fails with the install hint when PostgreSQL is missing
    yield server
    server.destroy()


@pytest.fixture(scope="module")
def etcd() -> Iterator[EtcdServer]:
    try:
        server = start_etcd()
    except RuntimeError as e:
        pytest.fail(str(e), pytrace=False)
    yield server
    server.cleanup()


async def new_database(server: Postgres) -> str:
    name = f"t_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(host="127.0.0.1", port=server.port, user="postgres", database="postgres")
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return f"postgresql://postgres@127.0.0.1:{server.port}/{name}"


@pytest.fixture(params=BACKENDS)
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[str, Factory]]:
    """``(name, make)``: ``make(**options)`` builds another store on the same URL (memory:
    an unrelated store); every store made is closed after the test."""
    kind = request.param
    made: list[StateStore] = []
    if kind == "memory":
        build: Factory = lambda **kw: MemoryStateStore(**kw)  # noqa: E731
    elif kind == "sqlite":
        url = f"sqlite:///{tmp_path / 'state.db'}"
        build = lambda **kw: SqlStateStore(url, **kw)  # noqa: E731
    elif kind == "postgresql":
        url = await new_database(request.getfixturevalue("postgres"))
        build = lambda **kw: SqlStateStore(url, **kw)  # noqa: E731
    else:
        server: EtcdServer = request.getfixturevalue("etcd")
        prefix = f"/test-{uuid.uuid4().hex[:10]}"
        build = lambda **kw: EtcdStateStore(server.url, prefix=prefix, **kw)  # noqa: E731

    def make(**options: object) -> StateStore:
        store = build(**options)
        made.append(store)
        return store

    yield kind, make
    for store in made:
        await store.close()


async def opened(make: Factory, **options: object) -> StateStore:
    store = make(**options)
    await store.open()
    return store


def full_spec(name: str) -> ModelSpec:
    """Every field away from its default, options nested."""
    return ModelSpec(
        name=name,
        kind=ModelKind.EMBEDDING,
        engine="sentence-transformers",
        source="hf://org/model@rev",
        options={
            "dtype": "float16",
            "max_len": 512,
            "scale": 0.5,
            "trust_remote_code": False,
            "nothing": None,
            "devices": [0, 1],
            "nested": {"lora": {"rank": 8, "targets": ["q", "v"]}, "note": "ünïcödé \"quotes\""},
        },
        replicas=3,
        routing="weighted",
        weight=2.5,
        max_concurrency=16,
    )


def spec(name: str, **changes: object) -> ModelSpec:
    return dataclasses.replace(ModelSpec(name, ModelKind.LLM, "fake", "demo"), **changes)  # type: ignore[arg-type]


def event(n: int) -> AuditEvent:
    return AuditEvent(
        time=1712345678.0 + n,
        actor=f"ops@10.0.0.{n}",
        action="deploy" if n % 2 else "scale",
        target=f"model-{n}",
        detail={"n": n, "replicas": [n, n + 1], "why": {"ticket": f"OPS-{n}"}},
    )


async def test_specs_round_trip(backend: tuple[str, Factory]) -> None:
    _, make = backend
    store = await opened(make)
    assert await store.list_models() == []
    full, plain = full_spec("embedder"), spec("a-plain")
    await store.put_model(full)
    await store.put_model(plain)
    assert await store.list_models() == [plain, full]  # every field survives; ordered by name
    replaced = dataclasses.replace(full, options={"dtype": "bfloat16", "nested": {}}, replicas=0, routing="session")
    await store.put_model(replaced)  # same name: replaces
    assert await store.list_models() == [plain, replaced]
    await store.delete_model("embedder")
    assert await store.list_models() == [plain]
    await store.delete_model("embedder")  # deleting twice, or something never there, is fine
    await store.delete_model("never-there")
    assert await store.list_models() == [plain]


async def test_list_is_ordered_by_name(backend: tuple[str, Factory]) -> None:
    _, make = backend
    store = await opened(make)
    names = ["zeta", "Beta", "alpha-2", "alpha", "b", "qwen/qwen2.5-0.5b", "émbed", "alpha_1"]
    for name in names:
        await store.put_model(spec(name))
    assert [s.name for s in await store.list_models()] == sorted(names)  # code point order, not the collation's


async def test_audit_newest_first_with_limit(backend: tuple[str, Factory]) -> None:
    _, make = backend
    store = await opened(make)
    assert await store.audit() == []
    events = [event(n) for n in range(5)]
    for e in events:
        await store.append_audit(e)
    assert await store.audit() == events[::-1]
    assert await store.audit(limit=2) == [events[4], events[3]]
    assert await store.audit(limit=0) == []


async def test_audit_is_bounded(backend: tuple[str, Factory]) -> None:
    _, make = backend
    store = await opened(make, audit_limit=3)
    events = [event(n) for n in range(7)]
    for e in events:
        await store.append_audit(e)
    assert await store.audit(limit=100) == [events[6], events[5], events[4]]  # older ones are gone


# a memory store is private to its object: sharing is a property of the persistent stores
@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "memory"], indirect=True)
async def test_two_stores_on_one_url_see_each_others_writes(backend: tuple[str, Factory]) -> None:
    kind, make = backend
    first, second = await opened(make), await opened(make)
    await first.put_model(full_spec("m1"))
    assert await second.list_models() == [full_spec("m1")]
    await second.put_model(spec("m0"))
    await second.delete_model("m1")
    assert await first.list_models() == [spec("m0")]
    await first.append_audit(event(1))
    await second.append_audit(event(2))
    assert await first.audit() == await second.audit() == [event(2), event(1)]


async def test_open_is_idempotent_and_race_free(backend: tuple[str, Factory]) -> None:
    _, make = backend
    stores = [make() for _ in range(3)]
    await asyncio.gather(*(s.open() for s in stores))  # as controllers starting together
    store = stores[0]
    await store.put_model(spec("kept"))
    await store.append_audit(event(1))
    await store.open()  # again: tables and rows stay
    assert await store.list_models() == [spec("kept")]
    assert await store.audit() == [event(1)]


def test_state_from_url_picks_the_store_without_io(tmp_path: Path) -> None:
    for url in (None, "memory://", "http://controller:8001", "https://c1:8001,https://c2:8001"):
        assert isinstance(state_from_url(url), MemoryStateStore), url
    dead = free_port()  # nothing listens: construction must not connect
    sql_urls = (
        f"sqlite:///{tmp_path / 'never-created.db'}",
        f"postgresql://u:pw@127.0.0.1:{dead}/db",
        f"postgres://u@127.0.0.1:{dead}/db",
    )
    for url in sql_urls:
        assert isinstance(state_from_url(url), SqlStateStore), url
    assert not (tmp_path / "never-created.db").exists()
    assert isinstance(state_from_url(f"etcd://127.0.0.1:{dead},127.0.0.1:{dead + 1}"), EtcdStateStore)
    for bad in ("mysql://u:hunter2@h/db", "redis://h", "etcd://", "nonsense"):
        with pytest.raises(ConfigError) as failure:
            state_from_url(bad)
        assert "hunter2" not in str(failure.value)


async def test_unreachable_backends_raise_unavailable_without_the_password() -> None:
    dead = free_port()
    sql = SqlStateStore(f"postgresql://postgres:hunter2@127.0.0.1:{dead}/db")
    with pytest.raises(Unavailable) as failure:
        await sql.open()
    assert "hunter2" not in str(failure.value) and f"127.0.0.1:{dead}/db" in str(failure.value)
    assert failure.value.code == "state_unavailable"
    await sql.close()
    etcd_store = EtcdStateStore(f"etcd://127.0.0.1:{dead}")
    for call in (etcd_store.list_models(), etcd_store.put_model(spec("a")), etcd_store.audit()):
        with pytest.raises(Unavailable, match=f"etcd state store unreachable.*127.0.0.1:{dead}"):
            await call
    await etcd_store.close()


async def test_keys_round_trip_replace_and_delete(backend: tuple[str, Factory]) -> None:
    """Virtual keys keep every field (limits nested), are listed by id, replaced by id,
    and deleted; the stored form holds the hash, and a second store on the same URL
    (another controller, a restart) sees them."""
    kind, make = backend
    store = await opened(make)
    full = VirtualKey(
        id="key_b", name="team ünï", secret_hash=key_hash("sk-corral-x"), created_at=1712345678.5, owner="ops",
        models=("chat", "embed-*"), expires_at=1812345678.0, hint="abcd",
        limits=Limits(rpm=5, tpm=1000, max_concurrency=2, budget_tokens=10_000, budget_requests=50, budget_period="month"),
    )
    plain = VirtualKey(id="key_a", name="a", secret_hash=key_hash("sk-corral-y"), created_at=1.0)
    versions = [await store.keys_version()]
    await store.put_key(full)
    versions.append(await store.keys_version())
    await store.put_key(plain)
    versions.append(await store.keys_version())
    assert await store.list_keys() == [plain, full]
    assert await store.keys_version() == versions[-1]  # reading changes nothing
    await store.put_key(dataclasses.replace(plain, name="renamed"))
    await store.delete_key("key_missing")
    if kind != "memory":
        assert [k.name for k in await (await opened(make)).list_keys()] == ["renamed", "team ünï"]
    versions.append(await store.keys_version())  # after a replace
    await store.delete_key("key_b")
    versions.append(await store.keys_version())
    assert [k.id for k in await store.list_keys()] == ["key_a"]
    assert len(set(versions)) == len(versions), versions  # every put and delete changed it


async def test_usage_reports_replace_list_delete_and_exchange(backend: tuple[str, Factory]) -> None:
    kind, make = backend
    store = await opened(make)
    first = UsageReport("gw-a", 1.0, 2.0, {"key_a": KeyUsage(3, 40, 1, "2025-01-01", 2, 30)})
    await store.put_usage(first)
    await store.put_usage(UsageReport("gw-b", 1.0, 2.0, {}))
    newer = dataclasses.replace(first, at=3.0, keys={"key_a": KeyUsage(4, 50, 0, "2025-01-01", 3, 40)})
    await store.put_usage(newer)  # replaces gw-a's report
    assert sorted((r.gateway_id, r.at) for r in await store.list_usage()) == [("gw-a", 3.0), ("gw-b", 2.0)]
    if kind != "memory":  # another process (a second controller or gateway) reads the same
        assert newer in await (await opened(make)).list_usage()
    await store.delete_usage(["gw-b", "gw-missing"])
    assert await store.list_usage() == [newer]
    # the exchange a gateway makes: its own report in, the others' out, expired ones
    # (stale, from a period that is over) deleted
    now = time.time()
    others = await StoreExchange(store).exchange_usage(UsageReport("gw-c", now, now, {}))
    assert others == []  # gw-a's report: stale, and its period (2025-01-01) over
    assert [r.gateway_id for r in await store.list_usage()] == ["gw-c"]
