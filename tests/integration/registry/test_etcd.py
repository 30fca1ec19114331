"""EtcdRegistry against a real etcd on loopback (one server per module, a prefix per test)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator

import httpx
import pytest

from corral.core.errors import Unavailable
from corral.core.registry import Synced, InstanceRecord, InstanceState, RegistryEvent
from corral.core.spec import ModelKind
from corral.registry.etcd import EtcdRegistry
from tests.services.etcd import EtcdServer, free_port, start_etcd


@pytest.fixture(scope="module")
def etcd() -> Iterator[EtcdServer]:
    try:
        server = start_etcd()
    except RuntimeError as e:
        pytest.fail(str(e), pytrace=False)
    yield server
    server.cleanup()


@pytest.fixture
def prefix() -> str:
    return f"/test-{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def reg(etcd: EtcdServer, prefix: str) -> AsyncIterator[EtcdRegistry]:
    registry = EtcdRegistry(etcd.url, prefix=prefix)
    yield registry
    await registry.close()


def rec(instance_id: str, model: str = "m", state: InstanceState = InstanceState.READY) -> InstanceRecord:
    return InstanceRecord(instance_id, model, ModelKind.LLM, "fake", "w1", state)


def ids(records: list[InstanceRecord]) -> list[str]:
    return sorted(r.instance_id for r in records)


class Watcher:
    """Consumes ``registry.watch()`` in a task, collecting events."""

    def __init__(self, registry: EtcdRegistry) -> None:
        self.events: list[RegistryEvent] = []
        self.syncs = 0  # SYNCED markers: after the snapshot and after every resync
        self._watch = registry.watch()
        self.task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        async for event in self._watch:
            if isinstance(event, Synced):
                self.syncs += 1
            else:
                self.events.append(event)

    async def wait_for(self, condition: Callable[[list[RegistryEvent]], bool], timeout: float = 1.0) -> float:
        """Seconds until ``condition(events)`` holds; fails after ``timeout``."""
        start = time.monotonic()
        while not condition(self.events):
            assert not self.task.done(), f"the watch ended: {self.task!r}"
            assert time.monotonic() - start < timeout, f"timed out; events so far: {self.events}"
            await asyncio.sleep(0.01)
        return time.monotonic() - start

    async def wait_count(self, n: int, timeout: float = 1.0) -> list[RegistryEvent]:
        await self.wait_for(lambda events: len(events) >= n, timeout)
        return self.events[:n]

    async def close(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        await self._watch.aclose()


async def test_put_list_remove_round_trips_full_records(reg: EtcdRegistry, etcd: EtcdServer, prefix: str) -> None:
    assert await reg.list() == []
    full = InstanceRecord(
        instance_id="inst/1",
        model="llama-3-8b",
        kind=ModelKind.LLM,
        engine="transformers",
        worker_id="worker-7",
        state=InstanceState.DRAINING,
        address="http://10.0.0.5:8101",
        capabilities=frozenset({"chat", "tools", "json_mode"}),
        started_at=1732540000.25,
        last_error="CUDA OOM once",
        routing="least_loaded",
        weight=2.5,
        max_concurrency=16,
    )
    other = rec("b", model="other")
    await reg.put(full)
    await reg.put(other)
    assert sorted(await reg.list(), key=lambda r: r.instance_id) == [other, full]
    replaced = dataclasses.replace(full, state=InstanceState.READY, last_error=None, capabilities=frozenset())
    await reg.put(replaced)
    assert sorted(await reg.list(), key=lambda r: r.instance_id) == [other, replaced]
    await reg.remove("inst/1")
    assert await reg.list() == [other]
    await reg.remove("inst/1")  # removing twice is harmless
    await reg.remove("never-there")
    neighbour = EtcdRegistry(etcd.url, prefix=prefix + "-other")
    assert await neighbour.list() == []  # another prefix sees nothing
    await neighbour.close()


async def test_leased_records_expire_unless_refreshed(reg: EtcdRegistry) -> None:
    await reg.put(rec("leased"), ttl=1)  # etcd's minimum; it stretches it to about 2 s
    await reg.put(rec("kept"), ttl=1)
    await reg.put(rec("static"), ttl=1)
    await reg.put(rec("static"))  # without ttl: no longer leased (its old lease is revoked)
    watcher = Watcher(reg)
    await watcher.wait_count(3)
    deadline = time.monotonic() + 6.0
    while not any(e.removed for e in watcher.events):  # nobody removes "leased": etcd expires it
        assert time.monotonic() < deadline, f"the lease never expired: {watcher.events}"
        await asyncio.sleep(0.3)
        await reg.put(rec("kept"), ttl=1)
    assert [e for e in watcher.events if e.removed] == [RegistryEvent(rec("leased"), removed=True)]
    assert {e.record.instance_id for e in watcher.events if not e.removed} == {"leased", "kept", "static"}
    assert ids(await reg.list()) == ["kept", "static"]
    await watcher.close()


async def test_lost_lease_is_granted_again(reg: EtcdRegistry, etcd: EtcdServer) -> None:
    await reg.put(rec("a"), ttl=5)
    lease = reg._leases["a"][0]
    httpx.post(f"{etcd.http_url}/v3/lease/revoke", json={"ID": lease}).raise_for_status()  # as if it expired
    assert await reg.list() == []
    await reg.put(rec("a", state=InstanceState.DRAINING), ttl=5)
    assert await reg.list() == [rec("a", state=InstanceState.DRAINING)]
    assert reg._leases["a"][0] != lease
    await reg.put(rec("a"), ttl=5)  # a refresh keeps the new lease
    assert reg._leases["a"][0] != lease and await reg.list() == [rec("a")]
    await reg.remove("a")
    assert await reg.list() == [] and "a" not in reg._leases


async def test_watch_sees_snapshot_then_changes_promptly(reg: EtcdRegistry) -> None:
    await reg.put(rec("a", state=InstanceState.STARTING))
    await reg.put(rec("b"))
    watcher = Watcher(reg)
    snapshot = await watcher.wait_count(2)
    assert sorted(snapshot, key=lambda e: e.record.instance_id) == [
        RegistryEvent(rec("a", state=InstanceState.STARTING)),
        RegistryEvent(rec("b")),
    ]
    await asyncio.sleep(0.1)  # let the watch stream open, then each change must arrive in < 1 s
    await reg.put(rec("c"))
    await watcher.wait_count(3)
    await reg.put(rec("a", state=InstanceState.READY))
    await watcher.wait_count(4)
    await reg.remove("b")  # etcd's DELETE carries only the key: the event carries b's last record
    await watcher.wait_count(5)
    await reg.remove("never-there")
    await asyncio.sleep(0.2)
    assert watcher.events[2:] == [
        RegistryEvent(rec("c")),
        RegistryEvent(rec("a", state=InstanceState.READY)),
        RegistryEvent(rec("b"), removed=True),
    ]
    await watcher.close()


async def test_two_registries_see_each_other(reg: EtcdRegistry, etcd: EtcdServer, prefix: str) -> None:
    other = EtcdRegistry(etcd.url, prefix=prefix)
    watcher = Watcher(other)
    await asyncio.sleep(0.2)
    await reg.put(rec("from-reg"))
    assert await other.list() == [rec("from-reg")]
    await watcher.wait_for(lambda events: RegistryEvent(rec("from-reg")) in events)
    await other.put(rec("from-other"))
    assert ids(await reg.list()) == ["from-other", "from-reg"]
    await other.remove("from-reg")
    assert await reg.list() == [rec("from-other")]
    await watcher.wait_for(lambda events: RegistryEvent(rec("from-reg"), removed=True) in events)
    await watcher.close()
    await other.close()


async def test_watch_waits_out_an_outage(
    reg: EtcdRegistry, etcd: EtcdServer, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="corral.registry.etcd")
    await reg.put(rec("a"))
    watcher = Watcher(reg)
    await watcher.wait_count(1)
    try:
        etcd.stop()
        with pytest.raises(Unavailable, match="etcd registry unreachable"):
            await reg.put(rec("b"))
        with pytest.raises(Unavailable):
            await reg.list()
        with pytest.raises(Unavailable):
            await reg.remove("a")
        await asyncio.sleep(2.0)  # several retries: the watcher neither ends nor raises
        assert not watcher.task.done()
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1, [r.getMessage() for r in warnings]  # one warning per outage
    finally:
        etcd.start()
    writer = EtcdRegistry(etcd.url, prefix=prefix)
    await writer.put(rec("b"))
    await writer.remove("a")  # whether before or after the watcher reconnects, it sees both
    await writer.close()
    await watcher.wait_for(
        lambda events: RegistryEvent(rec("b")) in events and RegistryEvent(rec("a"), removed=True) in events,
        timeout=5.0,
    )
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1
    await reg.put(rec("c"))  # the registry that saw the outage works again too
    await watcher.wait_for(lambda events: events[-1] == RegistryEvent(rec("c")))
    await watcher.close()


async def test_fails_over_to_the_next_endpoint(etcd: EtcdServer, prefix: str) -> None:
    dead = free_port()
    reg = EtcdRegistry(f"etcd://127.0.0.1:{dead},127.0.0.1:{etcd.client_port}", prefix=prefix)
    await reg.put(rec("a"), ttl=5)
    assert await reg.list() == [rec("a")]
    assert reg._current == 1  # remembered: later calls go straight to the live endpoint
    watcher = Watcher(reg)
    await watcher.wait_count(1)
    await reg.put(rec("a"), ttl=5)
    await reg.remove("a")
    await watcher.wait_for(lambda events: events[-1] == RegistryEvent(rec("a"), removed=True))
    await watcher.close()
    await reg.close()


async def test_unreachable_etcd_raises_unavailable(prefix: str) -> None:
    dead1, dead2 = free_port(), free_port()
    reg = EtcdRegistry(f"etcd://127.0.0.1:{dead1},127.0.0.1:{dead2}", prefix=prefix)
    for call in (reg.list(), reg.put(rec("a")), reg.put(rec("a"), ttl=1), reg.remove("a")):
        with pytest.raises(Unavailable, match=f"127.0.0.1:{dead1}.*127.0.0.1:{dead2}"):
            await call
    await reg.close()


async def test_watch_lists_again_after_a_compaction(
    reg: EtcdRegistry, etcd: EtcdServer, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.INFO, logger="corral.registry.etcd")
    await reg.put(rec("a"))
    await reg.put(rec("a", state=InstanceState.DRAINING))
    records, revision = await reg._snapshot()
    httpx.post(f"{etcd.http_url}/v3/kv/compaction", json={"revision": str(revision)}).raise_for_status()
    real_snapshot, calls = reg._snapshot, []

    async def stale_once() -> tuple[dict[str, InstanceRecord], int]:
        calls.append(1)
        records, revision = await real_snapshot()
        return records, revision - 2 if len(calls) == 1 else revision  # the first watch starts compacted

    monkeypatch.setattr(reg, "_snapshot", stale_once)
    watcher = Watcher(reg)
    await watcher.wait_for(lambda events: len(calls) >= 2, timeout=2.0)
    await reg.put(rec("b"))
    await watcher.wait_for(lambda events: events[-1] == RegistryEvent(rec("b")))
    assert {e.record for e in watcher.events} == {rec("a", state=InstanceState.DRAINING), rec("b")}
    assert any("compacted" in r.getMessage() for r in caplog.records)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    await watcher.close()


def test_url_parsing() -> None:
    from corral.registry.etcd import parse_etcd_url

    assert parse_etcd_url("etcd://a:1, b:2/,c") == ["http://a:1", "http://b:2", "http://c:2379"]
    for bad in ("http://a:1", "etcd://", "a:1"):
        with pytest.raises(ValueError):
            parse_etcd_url(bad)


def test_missing_binary_fails_with_the_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    import tests.services.etcd as service

    monkeypatch.setattr(service.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="scripts/install-system-deps.sh"):
        service.start_etcd()
