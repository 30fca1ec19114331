"""The in-process registry: records plus fan-out to watchers."""

from __future__ import annotations

import asyncio
import dataclasses

from corral.core.registry import SYNCED, InstanceRecord, InstanceState, RegistryEvent
from corral.core.spec import ModelKind
from corral.registry.embedded import EmbeddedRegistry


def rec(instance_id: str, model: str = "m", state: InstanceState = InstanceState.READY) -> InstanceRecord:
    return InstanceRecord(instance_id, model, ModelKind.LLM, "fake", "w1", state)


async def next_event(watch) -> RegistryEvent:
    return await asyncio.wait_for(anext(watch), timeout=1.0)


async def subscribed(registry: EmbeddedRegistry):
    """A watch past its initial snapshot, and a future of its first change."""
    watch = registry.watch()
    while await next_event(watch) is not SYNCED:
        pass
    first = asyncio.ensure_future(anext(watch))
    await asyncio.sleep(0)
    return watch, first


async def test_put_list_remove() -> None:
    reg = EmbeddedRegistry()
    assert await reg.list() == []
    a, b = rec("a"), rec("b", model="other")
    await reg.put(a)
    await reg.put(b)
    assert await reg.list() == [a, b]
    await reg.remove("a")
    assert await reg.list() == [b]
    await reg.remove("a")  # removing twice is harmless
    await reg.remove("never-there")
    assert await reg.list() == [b]


async def test_put_replaces_by_instance_id() -> None:
    reg = EmbeddedRegistry()
    await reg.put(rec("a", state=InstanceState.STARTING))
    ready = rec("a", state=InstanceState.READY)
    await reg.put(ready)
    assert await reg.list() == [ready]


async def test_list_is_a_copy() -> None:
    reg = EmbeddedRegistry()
    await reg.put(rec("a"))
    listed = await reg.list()
    listed.clear()
    assert len(await reg.list()) == 1


async def test_watcher_sees_put_and_remove_in_order() -> None:
    reg = EmbeddedRegistry()
    watch, first = await subscribed(reg)
    starting = rec("a", state=InstanceState.STARTING)
    ready = dataclasses.replace(starting, state=InstanceState.READY)
    await reg.put(starting)
    await reg.put(ready)
    await reg.put(rec("b"))
    await reg.remove("a")
    await reg.remove("zzz")  # no event for an unknown id
    events = [await asyncio.wait_for(first, 1.0)] + [await next_event(watch) for _ in range(3)]
    assert events == [
        RegistryEvent(starting),
        RegistryEvent(ready),
        RegistryEvent(rec("b")),
        RegistryEvent(ready, removed=True),
    ]
    await watch.aclose()


async def test_watcher_sees_snapshot_then_synced_then_changes() -> None:
    reg = EmbeddedRegistry()
    await reg.put(rec("old"))
    watch = reg.watch()
    assert (await next_event(watch)).record.instance_id == "old"
    assert await next_event(watch) is SYNCED
    await reg.put(rec("new"))
    assert (await next_event(watch)).record.instance_id == "new"
    await watch.aclose()


async def test_leased_record_expires_unless_refreshed() -> None:
    reg = EmbeddedRegistry(sweep_interval=0.02)
    await reg.put(rec("leased"), ttl=0.1)
    await reg.put(rec("kept"), ttl=0.1)
    await reg.put(rec("static"))
    watch, first = await subscribed(reg)
    for _ in range(8):  # keep refreshing one lease for longer than its ttl
        await asyncio.sleep(0.03)
        await reg.put(rec("kept"), ttl=0.1)
    assert sorted(r.instance_id for r in await reg.list()) == ["kept", "static"]
    seen = [await asyncio.wait_for(first, 1.0)]
    while not any(e.removed for e in seen):
        seen.append(await next_event(watch))
    assert [e.record.instance_id for e in seen if e.removed] == ["leased"]
    await watch.aclose()
    await reg.close()


async def test_two_watchers_both_see_events() -> None:
    reg = EmbeddedRegistry()
    w1, f1 = await subscribed(reg)
    w2, f2 = await subscribed(reg)
    await reg.put(rec("a"))
    await reg.remove("a")
    for watch, first in ((w1, f1), (w2, f2)):
        assert await asyncio.wait_for(first, 1.0) == RegistryEvent(rec("a"))
        assert await next_event(watch) == RegistryEvent(rec("a"), removed=True)
    await w1.aclose()
    await w2.aclose()


async def test_slow_watcher_does_not_lose_events() -> None:
    reg = EmbeddedRegistry()
    watch, first = await subscribed(reg)
    for i in range(50):
        await reg.put(rec(f"i{i}"))
    got = [(await asyncio.wait_for(first, 1.0)).record.instance_id]
    got += [(await next_event(watch)).record.instance_id for _ in range(49)]
    assert got == [f"i{i}" for i in range(50)]
    await watch.aclose()


async def test_closed_watcher_is_removed() -> None:
    reg = EmbeddedRegistry()
    w1, f1 = await subscribed(reg)
    w2, f2 = await subscribed(reg)
    assert len(reg._watchers) == 2
    await reg.put(rec("a"))
    await asyncio.wait_for(f1, 1.0)
    await w1.aclose()
    assert len(reg._watchers) == 1
    await reg.put(rec("b"))  # publishing with one watcher gone works
    assert (await asyncio.wait_for(f2, 1.0)).record.instance_id == "a"
    assert (await next_event(w2)).record.instance_id == "b"
    await w2.aclose()
    assert reg._watchers == set()


async def test_cancelled_watch_task_unsubscribes() -> None:
    reg = EmbeddedRegistry()
    watch, first = await subscribed(reg)
    assert len(reg._watchers) == 1
    first.cancel()
    await asyncio.sleep(0)
    assert reg._watchers == set()
    await reg.put(rec("a"))  # nobody to deliver to; no error
    await watch.aclose()


async def test_a_pause_of_the_process_does_not_expire_leases() -> None:
    import time

    reg = EmbeddedRegistry(sweep_interval=0.05)
    await reg.put(rec("a"), ttl=0.3)
    await asyncio.sleep(0.06)  # the sweeper runs
    time.sleep(0.6)  # the whole process stalls (as under SIGSTOP) past the lease
    await asyncio.sleep(0.1)
    assert [r.instance_id for r in await reg.list()] == ["a"]  # a renewal can still arrive
    await asyncio.sleep(0.6)
    assert await reg.list() == []  # not renewed after the pause: it expires
    await reg.close()
