"""The router's watch-fed view of the registry, its choice of target, ejection of
failing instances and its bounded queue."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from corral.core.errors import InvalidRequest, ModelNotFound, Overloaded, Unavailable
from corral.core.registry import InstanceRecord, InstanceState
from corral.core.spec import ModelKind
from corral.core.types import GenerationRequest, SamplingParams
from corral.gateway.router import Router, RouterSettings, Target
from corral.registry.embedded import EmbeddedRegistry
from corral.web.errors import retry_headers

READY, STARTING, FAILED, DRAINING = (
    InstanceState.READY,
    InstanceState.STARTING,
    InstanceState.FAILED,
    InstanceState.DRAINING,
)


@dataclasses.dataclass(frozen=True)
class Client:
    instance_id: str


def rec(
    instance_id: str,
    model: str = "llm",
    state: InstanceState = READY,
    kind: ModelKind = ModelKind.LLM,
    *,
    routing: str = "round_robin",
    weight: float = 1.0,
    max_concurrency: int = 0,
) -> InstanceRecord:
    return InstanceRecord(
        instance_id, model, kind, "fake", "w1", state, routing=routing, weight=weight, max_concurrency=max_concurrency
    )


def resolve(record: InstanceRecord) -> Client:
    return Client(record.instance_id)


def req(session: str | None = None) -> GenerationRequest:
    return GenerationRequest("r", "llm", SamplingParams(), prompt="hi", session=session)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def pick(router: Router, model: str = "llm", capability: str = "chat", **kwargs: Any) -> Target:
    """Acquire and release at once: which target would serve a request."""
    target = await router.acquire(model, capability, **kwargs)
    router.release(target)
    return target


def target_of(router: Router, instance_id: str, model: str = "llm") -> Target:
    (target,) = [t for t in router.targets(model) if t.instance_id == instance_id]
    return target


@pytest.fixture
async def registry() -> EmbeddedRegistry:
    return EmbeddedRegistry()


@pytest.fixture
async def make_router(registry: EmbeddedRegistry) -> AsyncIterator[Callable[..., Awaitable[Router]]]:
    routers: list[Router] = []

    async def make(resolver: Callable[[InstanceRecord], Any] = resolve, **kwargs: Any) -> Router:
        r = Router(registry, resolver, **kwargs)
        await r.start()
        routers.append(r)
        return r

    yield make
    for r in routers:
        await r.stop()
    await settle()


@pytest.fixture
async def router(make_router: Callable[..., Awaitable[Router]]) -> Router:
    return await make_router()


# -- the view and the choice -----------------------------------------------------------


async def test_acquire_returns_a_ready_target_of_the_model(registry: EmbeddedRegistry, router: Router) -> None:
    await registry.put(rec("a1", "a"))
    await registry.put(rec("b1", "b"))
    await registry.put(rec("a2", "a", STARTING))
    await settle()
    for _ in range(4):
        target = await router.acquire("a", "chat")
        assert isinstance(target, Target)
        assert target.record.instance_id == "a1"
        assert target.record.state is READY
        assert target.client == Client("a1")
    assert target.in_flight == 4
    for _ in range(4):
        router.release(target)
    assert target.in_flight == 0
    assert (await pick(router, "b", "completion")).record.model == "b"


async def test_acquire_balances_over_ready_instances(registry: EmbeddedRegistry, router: Router) -> None:
    for i in range(3):
        await registry.put(rec(f"i{i}"))
    await settle()
    picked = {(await pick(router)).record.instance_id for _ in range(6)}
    assert picked == {"i0", "i1", "i2"}


async def test_acquire_counts_in_flight_and_release_undoes_it(registry: EmbeddedRegistry, router: Router) -> None:
    await registry.put(rec("a"))
    await registry.put(rec("b"))
    await settle()
    held = [await router.acquire("llm", "chat") for _ in range(4)]
    assert sorted(t.in_flight for t in router.targets("llm")) == [2, 2]
    for t in held:
        router.release(t)
    assert [t.in_flight for t in router.targets("llm")] == [0, 0]


async def test_records_present_before_start_are_seen(registry: EmbeddedRegistry, make_router) -> None:
    await registry.put(rec("early"))
    r = await make_router()
    assert (await pick(r)).record.instance_id == "early"
    assert list(r.models()) == ["llm"]


async def test_unknown_model(router: Router, registry: EmbeddedRegistry) -> None:
    await registry.put(rec("a1", "a"))
    await settle()
    with pytest.raises(ModelNotFound) as info:
        await router.acquire("nope", "chat")
    assert info.value.param == "model"
    assert info.value.status == 404
    assert "'nope'" in info.value.message


async def test_embedding_model_asked_for_chat(registry: EmbeddedRegistry, router: Router) -> None:
    await registry.put(rec("e1", "emb", kind=ModelKind.EMBEDDING))
    await settle()
    with pytest.raises(InvalidRequest) as info:
        await router.acquire("emb", "chat")
    assert info.value.param == "model"
    assert info.value.status == 400
    assert "embedding" in info.value.message
    assert (await pick(router, "emb", "embedding")).record.instance_id == "e1"


async def test_llm_asked_for_embedding(registry: EmbeddedRegistry, router: Router) -> None:
    await registry.put(rec("l1"))
    await settle()
    with pytest.raises(InvalidRequest) as info:
        await router.acquire("llm", "embedding")
    assert info.value.param == "model"
    assert target_of(router, "l1").in_flight == 0


async def test_no_ready_instance(registry: EmbeddedRegistry, router: Router) -> None:
    await registry.put(rec("f", state=FAILED))
    await registry.put(rec("d", state=DRAINING))
    await settle()
    started = time.monotonic()
    with pytest.raises(Unavailable) as info:
        await router.acquire("llm", "chat")
    assert time.monotonic() - started < 0.5  # nothing is coming: no wait
    assert info.value.status == 503
    assert "failed" in info.value.message and "draining" in info.value.message


async def test_a_request_waits_for_a_starting_instance_up_to_queue_timeout(registry: EmbeddedRegistry, make_router) -> None:
    r = await make_router(settings=RouterSettings(queue_timeout=0.1))
    await registry.put(rec("s", state=STARTING))
    await registry.put(rec("f", state=FAILED))
    await settle()
    started = time.monotonic()
    with pytest.raises(Unavailable) as info:
        await r.acquire("llm", "chat")
    assert 0.09 <= time.monotonic() - started < 1.0
    assert "still starting" in info.value.message
    assert r.queued()["llm"] == 0  # its place in the queue was given back


async def test_a_starting_instance_that_fails_ends_the_wait_at_once(registry: EmbeddedRegistry, router: Router) -> None:
    await registry.put(rec("s", state=STARTING))
    await settle()
    waiter = asyncio.create_task(router.acquire("llm", "chat"))
    await settle()
    assert not waiter.done()
    await registry.put(rec("s", state=FAILED))
    with pytest.raises(Unavailable) as info:
        await asyncio.wait_for(waiter, 1.0)
    assert "failed" in info.value.message


async def test_draining_instance_is_not_chosen(registry: EmbeddedRegistry, router: Router) -> None:
    await registry.put(rec("a"))
    await registry.put(rec("b"))
    await settle()
    await registry.put(rec("a", state=DRAINING))
    await settle()
    assert {(await pick(router)).record.instance_id for _ in range(6)} == {"b"}
    await registry.put(rec("b", state=DRAINING))
    await settle()
    with pytest.raises(Unavailable):
        await router.acquire("llm", "chat")


async def test_state_change_to_ready_is_followed(registry: EmbeddedRegistry, router: Router) -> None:
    """A restart (ready -> starting -> ready) is a pause for the requests in between, not a 503."""
    await registry.put(rec("a", state=STARTING))
    await settle()
    waiters = [asyncio.create_task(router.acquire("llm", "chat")) for _ in range(3)]
    await settle()
    assert not any(w.done() for w in waiters) and router.queued()["llm"] == 3
    await registry.put(rec("a", state=READY))
    targets = await asyncio.wait_for(asyncio.gather(*waiters), 1.0)
    assert {t.record.instance_id for t in targets} == {"a"} and targets[0].in_flight == 3
    assert (await pick(router)).record.instance_id == "a"


async def test_removed_instance_is_no_longer_chosen(registry: EmbeddedRegistry, router: Router) -> None:
    await registry.put(rec("a"))
    await registry.put(rec("b"))
    await settle()
    await registry.remove("a")
    await settle()
    assert {(await pick(router)).record.instance_id for _ in range(6)} == {"b"}
    await registry.remove("b")
    await settle()
    with pytest.raises(Unavailable):  # it existed: a retryable 503, not "no such model"
        await router.acquire("llm", "chat")
    assert router.models() == {}
    with pytest.raises(ModelNotFound):
        await router.acquire("never-existed", "chat")


async def test_in_flight_and_client_survive_record_updates(registry: EmbeddedRegistry, make_router) -> None:
    calls: list[str] = []

    def counting_resolve(record: InstanceRecord) -> Client:
        calls.append(record.instance_id)
        return Client(record.instance_id)

    r = await make_router(counting_resolve)
    await registry.put(rec("a", state=READY))
    await settle()
    held = [await r.acquire("llm", "chat") for _ in range(3)]
    r.observe_ttft(held[0], 0.5)
    await registry.put(dataclasses.replace(rec("a"), last_error="hiccup"))
    await settle()
    again = await r.acquire("llm", "chat")
    assert again.record.last_error == "hiccup"
    assert again.in_flight == 4
    assert again.latency == 0.5
    assert again.client is held[0].client
    assert calls == ["a"]
    r.release(again)
    assert again.in_flight == 3




async def test_release_after_a_record_update_counts_on_the_live_target(
    registry: EmbeddedRegistry, router: Router
) -> None:
    await registry.put(rec("a"))
    await settle()
    held = await router.acquire("llm", "chat")
    await registry.put(rec("a"))  # the worker renews its lease while the request runs
    await settle()
    router.release(held)
    assert target_of(router, "a").in_flight == 0  # actual: 1


async def test_failure_after_a_record_update_counts_on_the_live_target(
    registry: EmbeddedRegistry, make_router
) -> None:
    r = await make_router(settings=RouterSettings(eject_after=1, eject_for=30.0))
    await registry.put(rec("a"))
    await registry.put(rec("b"))
    await settle()
    held = await r.acquire("llm", "chat", exclude={"b"})
    await registry.put(rec("a"))
    await settle()
    r.release(held)
    r.failed(held)
    assert target_of(r, "a").ejected_until > time.monotonic()  # actual: 0.0, "a" is still chosen


async def test_unresolvable_instance_is_not_chosen(registry: EmbeddedRegistry, make_router) -> None:
    r = await make_router(lambda record: None if record.instance_id == "ghost" else Client(record.instance_id))
    await registry.put(rec("ghost"))
    await settle()
    with pytest.raises(Unavailable):
        await r.acquire("llm", "chat")
    await registry.put(rec("real"))
    await settle()
    assert {(await pick(r)).record.instance_id for _ in range(5)} == {"real"}


async def test_instance_resolvable_later_becomes_routable(registry: EmbeddedRegistry, make_router) -> None:
    def resolve_ready_only(record: InstanceRecord) -> Client | None:
        return Client(record.instance_id) if record.state is READY else None

    r = await make_router(resolve_ready_only)
    await registry.put(rec("a", state=STARTING))
    await settle()
    await registry.put(rec("a", state=READY))
    await settle()
    assert (await pick(r)).client == Client("a")


async def test_models_view(registry: EmbeddedRegistry, router: Router) -> None:
    await registry.put(rec("a1", "a"))
    await registry.put(rec("a2", "a", STARTING))
    await registry.put(rec("e1", "e", kind=ModelKind.EMBEDDING))
    await settle()
    models = router.models()
    assert {k: sorted(r.instance_id for r in v) for k, v in models.items()} == {"a": ["a1", "a2"], "e": ["e1"]}


async def test_stop_unsubscribes_from_registry(registry: EmbeddedRegistry) -> None:
    r = Router(registry, resolve)
    await r.start()
    await registry.put(rec("a"))
    await settle()
    await r.stop()
    await settle()
    assert registry._watchers == set()


async def test_records_before_and_right_after_start_are_both_seen(make_router, registry: EmbeddedRegistry) -> None:
    """The watch starts with a snapshot, so nothing put before or during start is missed."""
    await registry.put(rec("early"))
    r = await make_router()
    await registry.put(rec("late"))
    await settle()
    assert {(await pick(r)).record.instance_id for _ in range(4)} == {"early", "late"}


# -- per-model policy, exclusion, has_routable --------------------------------------------


async def test_routing_policy_comes_from_each_models_records(registry: EmbeddedRegistry, router: Router) -> None:
    for i in range(3):
        await registry.put(rec(f"r{i}", "rr", routing="round_robin"))
        await registry.put(rec(f"s{i}", "sticky", routing="session"))
        await registry.put(rec(f"l{i}", "least", routing="least_requests"))
    await settle()
    # round robin: cycles in order even while every request is still in flight
    held = [await router.acquire("rr", "chat") for _ in range(7)]
    assert [t.instance_id for t in held] == ["r0", "r1", "r2", "r0", "r1", "r2", "r0"]
    # session: one session key, one instance, whatever the load
    sticky = [await router.acquire("sticky", "chat", req(session="conversation-1")) for _ in range(10)]
    assert len({t.instance_id for t in sticky}) == 1
    assert sticky[0].in_flight == 10
    # least requests: fills evenly
    least = [await router.acquire("least", "chat") for _ in range(9)]
    assert sorted(t.in_flight for t in router.targets("least")) == [3, 3, 3]
    for t in held + sticky + least:
        router.release(t)


async def test_routing_policy_change_in_records_is_followed(registry: EmbeddedRegistry, router: Router) -> None:
    for i in range(3):
        await registry.put(rec(f"i{i}", routing="session"))
    await settle()
    assert len({(await pick(router, request=req(session="k"))).instance_id for _ in range(9)}) == 1
    for i in range(3):
        await registry.put(rec(f"i{i}", routing="round_robin"))
    await settle()
    assert len({(await pick(router, request=req(session="k"))).instance_id for _ in range(9)}) == 3


async def test_default_policy_is_power_of_two(registry: EmbeddedRegistry, router: Router) -> None:
    await registry.put(rec("busy", routing="power_of_two"))
    await registry.put(rec("idle", routing="power_of_two"))
    await settle()
    assert InstanceRecord("x", "m", ModelKind.LLM, "e", "w", READY).routing == "power_of_two"
    target_of(router, "busy").in_flight = 5
    assert {(await pick(router)).instance_id for _ in range(10)} == {"idle"}
    target_of(router, "busy").in_flight = 0


async def test_exclude_set_is_honoured(registry: EmbeddedRegistry, router: Router) -> None:
    for name in ("a", "b", "c"):
        await registry.put(rec(name))
    await settle()
    assert {(await pick(router, exclude={"a"})).instance_id for _ in range(6)} == {"b", "c"}
    assert {(await pick(router, exclude={"a", "c"})).instance_id for _ in range(6)} == {"b"}
    with pytest.raises(Unavailable):
        await router.acquire("llm", "chat", exclude={"a", "b", "c"})
    assert all(t.in_flight == 0 for t in router.targets("llm"))


async def test_has_routable(registry: EmbeddedRegistry, router: Router) -> None:
    await registry.put(rec("a"))
    await registry.put(rec("b"))
    await registry.put(rec("s", "starting-only", STARTING))
    await registry.put(rec("e", "emb", kind=ModelKind.EMBEDDING))
    await settle()
    assert router.has_routable("llm", "chat", set())
    assert router.has_routable("llm", "completion", {"a"})
    assert not router.has_routable("llm", "chat", {"a", "b"})
    assert not router.has_routable("nope", "chat", set())
    assert not router.has_routable("llm", "embedding", set())
    assert router.has_routable("emb", "embedding", set())
    assert not router.has_routable("emb", "chat", set())
    assert not router.has_routable("starting-only", "chat", set())
    await registry.put(rec("b", state=DRAINING))
    await settle()
    assert not router.has_routable("llm", "chat", {"a"})


async def test_observe_ttft_is_an_ewma(registry: EmbeddedRegistry, make_router) -> None:
    r = await make_router(settings=RouterSettings(latency_alpha=0.5))
    await registry.put(rec("a"))
    await settle()
    t = target_of(r, "a")
    assert t.latency is None
    r.observe_ttft(t, 1.0)
    assert t.latency == 1.0
    r.observe_ttft(t, 0.0)
    assert t.latency == pytest.approx(0.5)
    r.observe_ttft(t, 0.5)
    assert t.latency == pytest.approx(0.5)


async def test_latency_policy_uses_observed_ttft(registry: EmbeddedRegistry, router: Router) -> None:
    await registry.put(rec("slow", routing="latency"))
    await registry.put(rec("fast", routing="latency"))
    await settle()
    router.observe_ttft(target_of(router, "slow"), 2.0)
    assert (await pick(router)).instance_id == "fast"  # unmeasured first
    router.observe_ttft(target_of(router, "fast"), 0.1)
    assert {(await pick(router)).instance_id for _ in range(5)} == {"fast"}


# -- ejection ---------------------------------------------------------------------------


async def test_failing_target_is_ejected_and_success_clears_it(registry: EmbeddedRegistry, make_router) -> None:
    r = await make_router(settings=RouterSettings(eject_after=3, eject_for=30.0))
    await registry.put(rec("a"))
    await registry.put(rec("b"))
    await settle()
    a = target_of(r, "a")
    r.failed(a)
    r.failed(a)
    assert a.ejected_until == 0.0  # not yet
    assert {(await pick(r)).instance_id for _ in range(4)} == {"a", "b"}
    r.failed(a)
    assert a.ejected_until > time.monotonic()
    assert {(await pick(r)).instance_id for _ in range(10)} == {"b"}
    assert r.has_routable("llm", "chat", set())
    r.succeeded(a)
    assert (a.failures, a.ejected_until, a.eject_for) == (0, 0.0, 0.0)
    assert {(await pick(r)).instance_id for _ in range(4)} == {"a", "b"}


async def test_success_resets_the_consecutive_failure_count(registry: EmbeddedRegistry, make_router) -> None:
    r = await make_router(settings=RouterSettings(eject_after=2, eject_for=30.0))
    await registry.put(rec("a"))
    await registry.put(rec("b"))
    await settle()
    a = target_of(r, "a")
    for _ in range(5):
        r.failed(a)
        r.succeeded(a)
    assert a.failures == 0 and a.ejected_until == 0.0
    assert {(await pick(r)).instance_id for _ in range(4)} == {"a", "b"}


async def test_ejection_ends_after_eject_for(registry: EmbeddedRegistry, make_router) -> None:
    r = await make_router(settings=RouterSettings(eject_after=1, eject_for=0.05))
    await registry.put(rec("a"))
    await registry.put(rec("b"))
    await settle()
    a = target_of(r, "a")
    r.failed(a)
    assert {(await pick(r)).instance_id for _ in range(4)} == {"b"}
    await asyncio.sleep(0.07)
    assert {(await pick(r)).instance_id for _ in range(4)} == {"a", "b"}


async def test_eject_duration_doubles_while_failing_up_to_eject_max(registry: EmbeddedRegistry, make_router) -> None:
    r = await make_router(settings=RouterSettings(eject_after=2, eject_for=0.04, eject_max=0.25))
    await registry.put(rec("a"))
    await registry.put(rec("b"))
    await settle()
    a = target_of(r, "a")
    r.failed(a)
    r.failed(a)
    assert a.eject_for == pytest.approx(0.04)
    assert a.ejected_until - time.monotonic() == pytest.approx(0.04, abs=0.02)
    await asyncio.sleep(0.05)  # ejection over: tried again ...
    assert "a" in {(await pick(r)).instance_id for _ in range(4)}
    r.failed(a)  # ... and fails again: ejected at once, for twice as long
    assert a.eject_for == pytest.approx(0.08)
    assert a.ejected_until - time.monotonic() == pytest.approx(0.08, abs=0.02)
    assert {(await pick(r)).instance_id for _ in range(4)} == {"b"}
    r.failed(a)
    assert a.eject_for == pytest.approx(0.16)
    r.failed(a)
    assert a.eject_for == pytest.approx(0.25)  # capped
    r.failed(a)
    assert a.eject_for == pytest.approx(0.25)
    r.succeeded(a)
    r.failed(a)
    r.failed(a)
    assert a.eject_for == pytest.approx(0.04)  # back to the start after a success


async def test_all_ejected_are_tried_anyway(registry: EmbeddedRegistry, make_router) -> None:
    r = await make_router(settings=RouterSettings(eject_after=1, eject_for=30.0, max_ejection_percent=100))
    await registry.put(rec("a"))
    await registry.put(rec("b"))
    await settle()
    r.failed(target_of(r, "a"))
    r.failed(target_of(r, "b"))
    assert {(await pick(r)).instance_id for _ in range(4)} == {"a", "b"}
    assert r.has_routable("llm", "chat", set())


async def test_the_only_instance_is_never_ejected(registry: EmbeddedRegistry, make_router) -> None:
    r = await make_router(settings=RouterSettings(eject_after=2, eject_for=30.0))
    await registry.put(rec("a"))
    await settle()
    a = target_of(r, "a")
    for _ in range(10):
        r.failed(a)
    assert a.failures == 10  # seen failing ...
    assert a.ejected_until == 0.0 and r.ejections_total == {}  # ... but kept in rotation
    assert (await pick(r)).instance_id == "a"


@pytest.mark.parametrize(
    ("instances", "percent", "ejectable"), [(2, 50, 1), (3, 50, 1), (4, 50, 2), (4, 25, 1), (3, 100, 3)]
)
async def test_ejection_is_capped_at_max_ejection_percent(
    registry: EmbeddedRegistry, make_router, instances: int, percent: float, ejectable: int
) -> None:
    r = await make_router(settings=RouterSettings(eject_after=1, eject_for=30.0, max_ejection_percent=percent))
    names = [f"i{n}" for n in range(instances)]
    for name in names:
        await registry.put(rec(name))
    await settle()
    for name in names:
        r.failed(target_of(r, name))
    now = time.monotonic()
    ejected = {name for name in names if target_of(r, name).ejected_until > now}
    assert len(ejected) == ejectable
    assert sum(r.ejections_total.values()) == ejectable
    if ejectable < instances:  # the others keep the traffic
        assert {(await pick(r)).instance_id for _ in range(20)} == set(names) - ejected


async def test_an_instance_not_ready_does_not_count_for_the_cap(registry: EmbeddedRegistry, make_router) -> None:
    r = await make_router(settings=RouterSettings(eject_after=1, eject_for=30.0))
    await registry.put(rec("a"))
    await registry.put(rec("b", state=InstanceState.STARTING))
    await settle()
    r.failed(target_of(r, "a"))
    assert target_of(r, "a").ejected_until == 0.0  # the last ready instance


async def test_health_check_brings_an_ejected_target_back(registry: EmbeddedRegistry, make_router) -> None:
    probed: list[str] = []

    async def health_check(target: Target) -> bool:
        probed.append(target.instance_id)
        return True

    settings = RouterSettings(eject_after=1, eject_for=60.0, health_interval=0.02)
    r = await make_router(settings=settings, health_check=health_check)
    await registry.put(rec("a"))
    await registry.put(rec("b"))
    await settle()
    a = target_of(r, "a")
    r.failed(a)
    assert {(await pick(r)).instance_id for _ in range(4)} == {"b"}
    started = time.monotonic()
    while a.ejected_until and time.monotonic() - started < 1.0:
        await asyncio.sleep(0.005)
    assert a.ejected_until == 0.0
    assert time.monotonic() - started < 0.2  # ~ one health_interval, far less than eject_for
    assert a.failures == 0
    assert set(probed) == {"a"}  # only ejected targets are probed
    assert {(await pick(r)).instance_id for _ in range(4)} == {"a", "b"}


@pytest.mark.parametrize("outcome", ["unhealthy", "raises"])
async def test_failing_health_check_keeps_the_target_ejected(
    registry: EmbeddedRegistry, make_router, outcome: str
) -> None:
    probed: list[str] = []

    async def health_check(target: Target) -> bool:
        probed.append(target.instance_id)
        if outcome == "raises":
            raise ConnectionError("still down")
        return False

    r = await make_router(settings=RouterSettings(eject_after=1, eject_for=60.0, health_interval=0.01),
                          health_check=health_check)
    await registry.put(rec("a"))
    await registry.put(rec("b"))
    await settle()
    a = target_of(r, "a")
    r.failed(a)
    await asyncio.sleep(0.06)
    assert len(probed) >= 2  # the probe loop keeps running, even after an exception
    assert a.ejected_until > time.monotonic()
    assert {(await pick(r)).instance_id for _ in range(4)} == {"b"}


async def test_success_after_health_check_recovery_resets_the_eject_duration(
    registry: EmbeddedRegistry, make_router
) -> None:
    async def health_check(target: Target) -> bool:
        return True

    r = await make_router(settings=RouterSettings(eject_after=1, eject_for=5.0, health_interval=0.01),
                          health_check=health_check)
    await registry.put(rec("a"))
    await registry.put(rec("b"))  # the only instance of a model is never ejected
    await settle()
    a = target_of(r, "a")
    r.failed(a)
    assert a.eject_for == 5.0
    for _ in range(100):
        if not a.ejected_until:
            break
        await asyncio.sleep(0.005)
    assert a.ejected_until == 0.0
    r.succeeded(a)  # the instance serves fine again
    r.failed(a)  # a later, unrelated failure
    assert a.eject_for == 5.0  # actual: 10.0


# -- max_concurrency and the queue ---------------------------------------------------------


async def test_acquire_waits_while_at_max_concurrency(registry: EmbeddedRegistry, make_router) -> None:
    r = await make_router(settings=RouterSettings(queue_limit=1, queue_timeout=5.0))
    await registry.put(rec("a", max_concurrency=1))
    await settle()
    first = await r.acquire("llm", "chat")
    waiter = asyncio.create_task(r.acquire("llm", "chat"))
    await settle()
    assert not waiter.done()
    # the queue (1) is full: a third request is refused at once
    started = time.monotonic()
    with pytest.raises(Overloaded) as info:
        await r.acquire("llm", "chat")
    assert time.monotonic() - started < 0.05
    assert info.value.status == 429
    assert first.in_flight == 1
    r.release(first)
    second = await asyncio.wait_for(waiter, 1.0)
    assert second is first
    assert second.in_flight == 1
    r.release(second)
    assert second.in_flight == 0


async def test_queue_waiter_gives_up_after_queue_timeout(registry: EmbeddedRegistry, make_router) -> None:
    r = await make_router(settings=RouterSettings(queue_limit=1, queue_timeout=0.05))
    await registry.put(rec("a", max_concurrency=1))
    await settle()
    held = await r.acquire("llm", "chat")
    started = time.monotonic()
    with pytest.raises(Overloaded):
        await r.acquire("llm", "chat")
    elapsed = time.monotonic() - started
    assert 0.04 <= elapsed < 0.5
    assert held.in_flight == 1
    # the queue slot was given back: the next request may wait again
    waiter = asyncio.create_task(r.acquire("llm", "chat"))
    await settle()
    assert not waiter.done()
    r.release(held)
    r.release(await asyncio.wait_for(waiter, 1.0))
    assert held.in_flight == 0


async def test_max_concurrency_spreads_to_free_instances(registry: EmbeddedRegistry, make_router) -> None:
    r = await make_router(settings=RouterSettings(queue_limit=1, queue_timeout=5.0))
    await registry.put(rec("a", max_concurrency=2, routing="session"))
    await registry.put(rec("b", max_concurrency=2, routing="session"))
    await settle()
    # one session key would pin every request to one instance; the limit overrides it
    held = [await r.acquire("llm", "chat", req(session="k")) for _ in range(4)]
    assert sorted(t.in_flight for t in r.targets("llm")) == [2, 2]
    waiter = asyncio.create_task(r.acquire("llm", "chat", req(session="k")))
    await settle()
    assert not waiter.done()
    r.release(held[-1])
    got = await asyncio.wait_for(waiter, 1.0)
    assert got is held[-1]
    for t in held[:-1] + [got]:
        r.release(t)
    assert [t.in_flight for t in r.targets("llm")] == [0, 0]


async def test_queue_is_woken_by_a_new_instance(registry: EmbeddedRegistry, make_router) -> None:
    r = await make_router(settings=RouterSettings(queue_limit=4, queue_timeout=5.0))
    await registry.put(rec("a", max_concurrency=1))
    await settle()
    held = await r.acquire("llm", "chat")
    waiter = asyncio.create_task(r.acquire("llm", "chat"))
    await settle()
    assert not waiter.done()
    await registry.put(rec("b", max_concurrency=1))
    got = await asyncio.wait_for(waiter, 1.0)
    assert got.instance_id == "b"
    r.release(got)
    r.release(held)


async def test_queue_limit_is_per_model(registry: EmbeddedRegistry, make_router) -> None:
    r = await make_router(settings=RouterSettings(queue_limit=1, queue_timeout=5.0))
    await registry.put(rec("a", "m1", max_concurrency=1))
    await registry.put(rec("b", "m2", max_concurrency=1))
    await settle()
    h1, h2 = await r.acquire("m1", "chat"), await r.acquire("m2", "chat")
    w1 = asyncio.create_task(r.acquire("m1", "chat"))
    w2 = asyncio.create_task(r.acquire("m2", "chat"))
    await settle()
    assert not w1.done() and not w2.done()
    r.release(h1)
    r.release(h2)
    r.release(await asyncio.wait_for(w1, 1.0))
    r.release(await asyncio.wait_for(w2, 1.0))


async def test_no_limit_never_queues(registry: EmbeddedRegistry, make_router) -> None:
    r = await make_router(settings=RouterSettings(queue_limit=0, queue_timeout=0.01))
    await registry.put(rec("a"))  # max_concurrency 0: unlimited
    await settle()
    held = [await r.acquire("llm", "chat") for _ in range(50)]
    assert held[0].in_flight == 50
    for t in held:
        r.release(t)


async def test_capabilities_in_records_decide_what_a_model_serves(registry: EmbeddedRegistry, router: Router) -> None:
    """An llm whose engine also embeds (openai-compatible with supports_embeddings)."""
    both = dataclasses.replace(rec("l1"), capabilities=frozenset({"chat", "completion", "embedding"}))
    await registry.put(both)
    await settle()
    assert (await pick(router, "llm", "embedding")).instance_id == "l1"
    with pytest.raises(InvalidRequest) as info:
        await router.acquire("llm", "rerank")
    assert "serves chat, completion, embedding, not rerank" in info.value.message


async def test_tools_go_only_to_engines_that_honour_them(registry: EmbeddedRegistry, router: Router) -> None:
    plain = dataclasses.replace(rec("p1", "plain"), capabilities=frozenset({"chat", "completion"}))
    agent = dataclasses.replace(rec("a1", "agent"), capabilities=frozenset({"chat", "completion", "tools"}))
    await registry.put(plain)
    await registry.put(agent)
    await settle()
    tools = ({"type": "function", "function": {"name": "f"}},)
    with pytest.raises(InvalidRequest) as info:
        await router.acquire("plain", "chat", GenerationRequest("r", "plain", SamplingParams(), prompt="x", tools=tools))
    assert (info.value.param, info.value.code) == ("tools", "unsupported_parameter")
    assert "'fake'" in info.value.message  # names the engine
    fmt = GenerationRequest("r", "agent", SamplingParams(), prompt="x", response_format={"type": "json_object"})
    with pytest.raises(InvalidRequest) as info:
        await router.acquire("agent", "chat", fmt)
    assert info.value.param == "response_format"
    target = await router.acquire("agent", "chat", GenerationRequest("r", "agent", SamplingParams(), prompt="x", tools=tools))
    assert target.instance_id == "a1"
    router.release(target)


# -- before the registry's first snapshot -------------------------------------------------


class LateRegistry(EmbeddedRegistry):
    """A registry whose watch delivers its snapshot only once ``opened`` is set: a gateway
    that has just started, its watch still connecting to the controller."""

    def __init__(self) -> None:
        super().__init__()
        self.opened = asyncio.Event()

    async def watch(self) -> AsyncIterator[Any]:
        await self.opened.wait()
        async for item in super().watch():
            yield item


async def test_a_request_before_the_first_snapshot_waits_for_it_instead_of_a_404() -> None:
    registry = LateRegistry()
    await registry.put(rec("a"))
    router = Router(registry, resolve)
    await router.start()
    try:
        early = asyncio.ensure_future(router.acquire("llm", "chat"))
        await settle()
        assert not early.done()  # the model is not unknown: the view is not complete yet
        registry.opened.set()
        target = await asyncio.wait_for(early, 5)
        assert target.instance_id == "a"
        router.release(target)
    finally:
        await router.stop()


async def test_a_registry_that_never_answers_gives_503_not_404() -> None:
    registry = LateRegistry()
    router = Router(registry, resolve, RouterSettings(sync_timeout=0.05))
    await router.start()
    try:
        with pytest.raises(Unavailable, match="not loaded the registry"):
            await router.acquire("llm", "chat")
    finally:
        await router.stop()


# -- an autoscaled model at zero (its standby record) --------------------------------------


def standby(model: str = "llm", cold_start_timeout_s: float = 0.1) -> InstanceRecord:
    return dataclasses.replace(rec(f"{model}-standby", model, InstanceState.STANDBY),
                               cold_start_timeout_s=cold_start_timeout_s)


async def test_at_zero_a_request_waits_for_the_wake_and_is_served(registry: EmbeddedRegistry, make_router) -> None:
    woken: list[str] = []
    r = await make_router(on_cold=woken.append)
    await registry.put(standby(cold_start_timeout_s=5))
    await settle()
    waiter = asyncio.create_task(r.acquire("llm", "chat"))
    await settle()
    assert woken == ["llm"] and r.cold_waiting() == {"llm": 1}  # the autoscaler was told at once
    await registry.put(rec("a"))
    assert (await asyncio.wait_for(waiter, 1.0)).record.instance_id == "a"
    assert r.cold_waiting() == {}


async def test_at_zero_past_cold_start_timeout_the_answer_is_a_503_with_retry_after(
    registry: EmbeddedRegistry, make_router
) -> None:
    r = await make_router(settings=RouterSettings(queue_timeout=0.01))
    await registry.put(standby(cold_start_timeout_s=0.2))
    await registry.put(rec("s", state=STARTING))
    await settle()
    started = time.monotonic()
    with pytest.raises(Unavailable) as info:
        await r.acquire("llm", "chat")
    assert 0.19 <= time.monotonic() - started < 1.5  # the model's cold start bound, not queue_timeout
    assert "scaled to zero" in info.value.message and info.value.status == 503
    assert retry_headers(info.value) == {"retry-after": "1"}


async def test_at_zero_a_load_failure_ends_the_wait_with_its_error(registry: EmbeddedRegistry, make_router) -> None:
    r = await make_router()
    await registry.put(standby(cold_start_timeout_s=30))
    await registry.put(rec("s", state=STARTING))
    await settle()
    waiter = asyncio.create_task(r.acquire("llm", "chat"))
    await settle()
    await registry.put(dataclasses.replace(rec("s", state=FAILED), last_error="no such file: model.gguf"))
    with pytest.raises(Unavailable) as info:
        await asyncio.wait_for(waiter, 1.0)
    assert "could not be woken up" in info.value.message and "model.gguf" in info.value.message


async def test_at_zero_a_full_queue_is_a_429(registry: EmbeddedRegistry, make_router) -> None:
    r = await make_router(settings=RouterSettings(queue_limit=2))
    await registry.put(standby(cold_start_timeout_s=30))
    await settle()
    waiting = [asyncio.create_task(r.acquire("llm", "chat")) for _ in range(2)]
    await settle()
    with pytest.raises(Overloaded) as info:
        await r.acquire("llm", "chat")
    assert info.value.status == 429
    await registry.put(rec("a"))
    assert {t.record.instance_id for t in await asyncio.wait_for(asyncio.gather(*waiting), 1.0)} == {"a"}
