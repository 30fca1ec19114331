"""The router's watch-fed view of the registry and its choice of target."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator

import pytest

from corral.core.errors import InvalidRequest, ModelNotFound, Unavailable
from corral.core.registry import InstanceRecord, InstanceState
from corral.core.spec import ModelKind
from corral.gateway.router import Router, Target
from corral.registry.embedded import EmbeddedRegistry

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
    instance_id: str, model: str = "llm", state: InstanceState = READY, kind: ModelKind = ModelKind.LLM
) -> InstanceRecord:
    return InstanceRecord(instance_id, model, kind, "fake", "w1", state)


def resolve(record: InstanceRecord) -> Client:
    return Client(record.instance_id)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


@pytest.fixture
async def registry() -> EmbeddedRegistry:
    return EmbeddedRegistry()


@pytest.fixture
async def router(registry: EmbeddedRegistry) -> AsyncIterator[Router]:
    r = Router(registry, resolve, policy="round_robin")
    await r.start()
    yield r
    await r.stop()
    await settle()


async def test_pick_returns_a_ready_target_of_the_model(registry: EmbeddedRegistry, router: Router) -> None:
    await registry.put(rec("a1", "a"))
    await registry.put(rec("b1", "b"))
    await registry.put(rec("a2", "a", STARTING))
    await settle()
    for _ in range(4):
        target = router.pick("a", "chat")
        assert isinstance(target, Target)
        assert target.record.instance_id == "a1"
        assert target.record.state is READY
        assert target.client == Client("a1")
    assert router.pick("b", "completion").record.model == "b"


async def test_pick_balances_over_ready_instances(registry: EmbeddedRegistry, router: Router) -> None:
    for i in range(3):
        await registry.put(rec(f"i{i}"))
    await settle()
    picked = {router.pick("llm", "chat").record.instance_id for _ in range(6)}
    assert picked == {"i0", "i1", "i2"}


async def test_records_present_before_start_are_seen(registry: EmbeddedRegistry) -> None:
    await registry.put(rec("early"))
    r = Router(registry, resolve)
    await r.start()
    try:
        assert r.pick("llm", "chat").record.instance_id == "early"
        assert list(r.models()) == ["llm"]
    finally:
        await r.stop()
        await settle()


async def test_unknown_model(router: Router, registry: EmbeddedRegistry) -> None:
    await registry.put(rec("a1", "a"))
    await settle()
    with pytest.raises(ModelNotFound) as info:
        router.pick("nope", "chat")
    assert info.value.param == "model"
    assert info.value.status == 404
    assert "'nope'" in info.value.message


async def test_embedding_model_asked_for_chat(registry: EmbeddedRegistry, router: Router) -> None:
    await registry.put(rec("e1", "emb", kind=ModelKind.EMBEDDING))
    await settle()
    with pytest.raises(InvalidRequest) as info:
        router.pick("emb", "chat")
    assert info.value.param == "model"
    assert info.value.status == 400
    assert "embedding" in info.value.message
    assert router.pick("emb", "embedding").record.instance_id == "e1"


async def test_llm_asked_for_embedding(registry: EmbeddedRegistry, router: Router) -> None:
    await registry.put(rec("l1"))
    await settle()
    with pytest.raises(InvalidRequest) as info:
        router.pick("llm", "embedding")
    assert info.value.param == "model"


async def test_no_ready_instance(registry: EmbeddedRegistry, router: Router) -> None:
    await registry.put(rec("s", state=STARTING))
    await registry.put(rec("f", state=FAILED))
    await settle()
    with pytest.raises(Unavailable) as info:
        router.pick("llm", "chat")
    assert info.value.status == 503
    assert "failed" in info.value.message and "starting" in info.value.message


async def test_draining_instance_is_not_picked(registry: EmbeddedRegistry, router: Router) -> None:
    await registry.put(rec("a"))
    await registry.put(rec("b"))
    await settle()
    await registry.put(rec("a", state=DRAINING))
    await settle()
    assert {router.pick("llm", "chat").record.instance_id for _ in range(4)} == {"b"}


async def test_state_change_to_ready_is_followed(registry: EmbeddedRegistry, router: Router) -> None:
    await registry.put(rec("a", state=STARTING))
    await settle()
    with pytest.raises(Unavailable):
        router.pick("llm", "chat")
    await registry.put(rec("a", state=READY))
    await settle()
    assert router.pick("llm", "chat").record.instance_id == "a"


async def test_removed_instance_is_no_longer_picked(registry: EmbeddedRegistry, router: Router) -> None:
    await registry.put(rec("a"))
    await registry.put(rec("b"))
    await settle()
    await registry.remove("a")
    await settle()
    assert {router.pick("llm", "chat").record.instance_id for _ in range(6)} == {"b"}
    await registry.remove("b")
    await settle()
    with pytest.raises(ModelNotFound):
        router.pick("llm", "chat")
    assert router.models() == {}


async def test_in_flight_and_client_survive_record_updates(registry: EmbeddedRegistry) -> None:
    calls: list[str] = []

    def counting_resolve(record: InstanceRecord) -> Client:
        calls.append(record.instance_id)
        return Client(record.instance_id)

    r = Router(registry, counting_resolve)
    await r.start()
    try:
        await registry.put(rec("a", state=READY))
        await settle()
        target = r.pick("llm", "chat")
        target.in_flight = 3
        await registry.put(dataclasses.replace(rec("a"), last_error="hiccup"))
        await settle()
        again = r.pick("llm", "chat")
        assert again.record.last_error == "hiccup"
        assert again.in_flight == 3
        assert again.client is target.client
        assert calls == ["a"]
    finally:
        await r.stop()
        await settle()


async def test_unresolvable_instance_is_not_picked(registry: EmbeddedRegistry) -> None:
    r = Router(registry, lambda record: None if record.instance_id == "ghost" else Client(record.instance_id))
    await r.start()
    try:
        await registry.put(rec("ghost"))
        await settle()
        with pytest.raises(Unavailable):
            r.pick("llm", "chat")
        await registry.put(rec("real"))
        await settle()
        assert {r.pick("llm", "chat").record.instance_id for _ in range(5)} == {"real"}
    finally:
        await r.stop()
        await settle()


async def test_instance_resolvable_later_becomes_routable(registry: EmbeddedRegistry) -> None:
    def resolve_ready_only(record: InstanceRecord) -> Client | None:
        return Client(record.instance_id) if record.state is READY else None

    r = Router(registry, resolve_ready_only)
    await r.start()
    try:
        await registry.put(rec("a", state=STARTING))
        await settle()
        await registry.put(rec("a", state=READY))
        await settle()
        assert r.pick("llm", "chat").client == Client("a")  # actual: Unavailable
    finally:
        await r.stop()
        await settle()


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


async def test_records_before_and_right_after_start_are_both_seen() -> None:
    """The watch starts with a snapshot, so nothing put before or during start is missed."""
    registry = EmbeddedRegistry()
    await registry.put(rec("early"))
    r = Router(registry, resolve, policy="round_robin")
    await r.start()
    await registry.put(rec("late"))
    try:
        await settle()
        assert {r.pick("llm", "chat").record.instance_id for _ in range(4)} == {"early", "late"}
    finally:
        await r.stop()
        await settle()
