"""The request pipeline: route, retry on another instance, stream, account."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from corral.core.errors import CorralError, EngineError, InvalidRequest, Overloaded, Unavailable, Unreachable
from corral.core.registry import InstanceRecord, InstanceState
from corral.core.spec import ModelKind
from corral.core.types import (
    EmbeddingRequest,
    EmbeddingResult,
    FinishReason,
    GenerationChunk,
    GenerationEnd,
    GenerationRequest,
    SamplingParams,
    Usage,
)
from corral.gateway.pipeline import Call, Pipeline
from corral.gateway.router import Router, RouterSettings, Target
from corral.registry.embedded import EmbeddedRegistry


class FakeEngine:
    """An in-process engine: streams ``words`` or raises ``error`` when called."""

    def __init__(self, error: CorralError | None = None, words: tuple[str, ...] = ("hel", "lo")) -> None:
        self.error = error
        self.words = words
        self.calls = 0
        self.started = 0
        self.finished = 0
        self.closed = 0

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk | GenerationEnd]:
        self.calls += 1
        if self.error is not None:
            raise self.error
        return self._stream()

    async def _stream(self) -> AsyncIterator[GenerationChunk | GenerationEnd]:
        self.started += 1
        try:
            for word in self.words:
                await asyncio.sleep(0)
                yield GenerationChunk(0, word)
            yield GenerationChunk(0, "", FinishReason.STOP)
            yield GenerationEnd(Usage(2, len(self.words)))
            self.finished += 1
        finally:
            self.closed += 1

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResult:
        self.calls += 1
        if self.error is not None:
            raise self.error
        return EmbeddingResult([[float(len(text))] for text in request.inputs], Usage(len(request.inputs), 0))


class BrokenStream(FakeEngine):
    """Admits the request, then fails with a plain exception mid-stream (an engine bug)."""

    async def _stream(self) -> AsyncIterator[GenerationChunk | GenerationEnd]:
        yield GenerationChunk(0, "x")
        raise RuntimeError("boom")


def rec(instance_id: str, model: str = "llm", kind: ModelKind = ModelKind.LLM, **kwargs: Any) -> InstanceRecord:
    kwargs.setdefault("routing", "round_robin")
    return InstanceRecord(instance_id, model, kind, "fake", "w1", InstanceState.READY, **kwargs)


def greq(model: str = "llm") -> GenerationRequest:
    return GenerationRequest("req-1", model, SamplingParams(), prompt="hi")


def ereq(model: str = "emb") -> EmbeddingRequest:
    return EmbeddingRequest("req-2", model, ("a", "bcd"))


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def drain(call: Call) -> list[GenerationChunk | GenerationEnd]:
    return [item async for item in call]


def text_of(items: list[GenerationChunk | GenerationEnd]) -> str:
    return "".join(i.text for i in items if isinstance(i, GenerationChunk))


class Cluster:
    """An EmbeddedRegistry, a Router over it and fake engines resolved by instance id."""

    def __init__(self, settings: RouterSettings | None = None) -> None:
        self.registry = EmbeddedRegistry()
        self.engines: dict[str, FakeEngine] = {}
        self.router = Router(self.registry, lambda r: self.engines.get(r.instance_id), settings)

    async def add(self, instance_id: str, engine: FakeEngine, model: str = "llm",
                  kind: ModelKind = ModelKind.LLM, **kwargs: Any) -> FakeEngine:
        self.engines[instance_id] = engine
        await self.registry.put(rec(instance_id, model, kind, **kwargs))
        await settle()
        return engine

    def target(self, instance_id: str, model: str = "llm") -> Target:
        (target,) = [t for t in self.router.targets(model) if t.instance_id == instance_id]
        return target

    def in_flight(self, model: str = "llm") -> int:
        return sum(t.in_flight for t in self.router.targets(model))


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    c = Cluster()
    await c.router.start()
    yield c
    await c.router.stop()
    await c.registry.close()
    await settle()


@pytest.fixture
async def make_cluster() -> AsyncIterator[Callable[..., Any]]:
    made: list[Cluster] = []

    async def make(settings: RouterSettings | None = None) -> Cluster:
        c = Cluster(settings)
        await c.router.start()
        made.append(c)
        return c

    yield make
    for c in made:
        await c.router.stop()
        await c.registry.close()
    await settle()


# -- generate -------------------------------------------------------------------------------


async def test_generate_streams_and_accounts(cluster: Cluster) -> None:
    engine = await cluster.add("a", FakeEngine())
    call = await Pipeline(cluster.router).generate(greq(), "chat")
    assert call.target.instance_id == "a"
    assert cluster.in_flight() == 1
    items = await drain(call)
    assert text_of(items) == "hello"
    assert isinstance(items[-1], GenerationEnd)
    assert call.usage == Usage(2, 2)
    assert cluster.in_flight() == 0
    assert engine.finished == 1 and engine.closed == 1
    assert cluster.target("a").latency is not None  # time to first token observed


async def test_unreachable_instance_is_retried_on_another(cluster: Cluster) -> None:
    bad = await cluster.add("bad", FakeEngine(Unreachable("connection refused")))
    good = await cluster.add("good", FakeEngine())
    call = await Pipeline(cluster.router).generate(greq(), "chat")  # round robin: "bad" first
    assert text_of(await drain(call)) == "hello"  # the client sees no error
    assert call.target.instance_id == "good"
    assert (bad.calls, good.calls) == (1, 1)
    assert cluster.target("bad").failures == 1
    assert cluster.target("good").failures == 0
    assert cluster.in_flight() == 0


async def test_repeated_unreachable_ejects_the_instance(make_cluster) -> None:
    c = await make_cluster(RouterSettings(eject_after=2, eject_for=30.0))
    bad = await c.add("bad", FakeEngine(Unreachable("down")))
    good = await c.add("good", FakeEngine())
    pipeline = Pipeline(c.router)
    for _ in range(6):
        await drain(await pipeline.generate(greq(), "chat"))
    assert good.calls == 6
    assert bad.calls == 2  # ejected after two failures: no longer tried
    assert c.target("bad").ejected_until > 0
    assert c.in_flight() == 0


async def test_success_clears_failures(cluster: Cluster) -> None:
    await cluster.add("a", FakeEngine())
    cluster.target("a").failures = 2
    await drain(await Pipeline(cluster.router).generate(greq(), "chat"))
    assert cluster.target("a").failures == 0


async def test_overloaded_instance_is_retried_without_counting_a_failure(cluster: Cluster) -> None:
    full = await cluster.add("full", FakeEngine(Overloaded("queue full")))
    good = await cluster.add("good", FakeEngine())
    call = await Pipeline(cluster.router).generate(greq(), "chat")
    assert text_of(await drain(call)) == "hello"
    assert (full.calls, good.calls) == (1, 1)
    assert cluster.target("full").failures == 0
    assert cluster.in_flight() == 0


async def test_draining_instance_refusal_is_retried(cluster: Cluster) -> None:
    draining = await cluster.add("draining", FakeEngine(Unavailable("draining")))
    good = await cluster.add("good", FakeEngine())
    call = await Pipeline(cluster.router).generate(greq(), "chat")
    assert text_of(await drain(call)) == "hello"
    assert (draining.calls, good.calls) == (1, 1)


async def test_invalid_request_is_not_retried(cluster: Cluster) -> None:
    picky = await cluster.add("picky", FakeEngine(InvalidRequest("prompt too long", param="messages")))
    other = await cluster.add("other", FakeEngine())
    with pytest.raises(InvalidRequest) as info:
        await Pipeline(cluster.router).generate(greq(), "chat")
    assert info.value.param == "messages"
    assert (picky.calls, other.calls) == (1, 0)
    assert cluster.target("picky").failures == 0
    assert cluster.in_flight() == 0


@pytest.mark.parametrize("attempts", [1, 2, 3])
async def test_all_unreachable_surfaces_after_at_most_attempts(cluster: Cluster, attempts: int) -> None:
    engines = [await cluster.add(f"i{i}", FakeEngine(Unreachable(f"i{i} down"))) for i in range(5)]
    with pytest.raises(Unreachable):
        await Pipeline(cluster.router, attempts=attempts).generate(greq(), "chat")
    assert sum(e.calls for e in engines) == attempts
    assert all(e.calls <= 1 for e in engines)  # never the same instance twice
    assert sum(t.failures for t in cluster.router.targets("llm")) == attempts
    assert cluster.in_flight() == 0


async def test_fewer_instances_than_attempts(cluster: Cluster) -> None:
    a = await cluster.add("a", FakeEngine(Unreachable("a down")))
    b = await cluster.add("b", FakeEngine(Unreachable("b down")))
    with pytest.raises(Unreachable):
        await Pipeline(cluster.router, attempts=5).generate(greq(), "chat")
    assert (a.calls, b.calls) == (1, 1)
    assert cluster.in_flight() == 0


async def test_all_overloaded_surfaces_overloaded(cluster: Cluster) -> None:
    for i in range(2):
        await cluster.add(f"i{i}", FakeEngine(Overloaded("full")))
    with pytest.raises(Overloaded):
        await Pipeline(cluster.router).generate(greq(), "chat")
    assert cluster.in_flight() == 0


async def test_early_close_releases_without_iterating(cluster: Cluster) -> None:
    engine = await cluster.add("a", FakeEngine())
    call = await Pipeline(cluster.router).generate(greq(), "chat")
    assert cluster.in_flight() == 1
    await call.close()
    assert cluster.in_flight() == 0
    await call.close()  # idempotent: never released twice
    assert cluster.in_flight() == 0
    assert engine.finished == 0


async def test_early_close_mid_stream_cancels_the_engine(cluster: Cluster) -> None:
    engine = await cluster.add("a", FakeEngine(words=("a", "b", "c", "d")))
    call = await Pipeline(cluster.router).generate(greq(), "chat")
    items = call.__aiter__()
    first = await items.__anext__()
    assert isinstance(first, GenerationChunk) and first.text == "a"
    await call.close()
    assert cluster.in_flight() == 0
    assert engine.closed == 1 and engine.finished == 0  # the engine's stream was closed
    await items.aclose()  # the consumer's iterator finishing later does not release again
    assert cluster.in_flight() == 0


async def test_breaking_out_of_the_stream_and_closing(cluster: Cluster) -> None:
    engine = await cluster.add("a", FakeEngine(words=("a", "b", "c")))
    call = await Pipeline(cluster.router).generate(greq(), "chat")
    items = call.__aiter__()
    async for _ in items:
        break
    await items.aclose()
    assert cluster.in_flight() == 0
    assert engine.closed == 1 and engine.finished == 0
    await call.close()
    assert cluster.in_flight() == 0


async def test_engine_bug_mid_stream_is_an_engine_error_and_releases(cluster: Cluster) -> None:
    await cluster.add("a", BrokenStream())
    call = await Pipeline(cluster.router).generate(greq(), "chat")
    with pytest.raises(EngineError):
        await drain(call)
    assert cluster.in_flight() == 0


async def test_concurrent_calls_are_counted(cluster: Cluster) -> None:
    await cluster.add("a", FakeEngine())
    await cluster.add("b", FakeEngine())
    pipeline = Pipeline(cluster.router)
    calls = [await pipeline.generate(greq(), "chat") for _ in range(6)]
    assert cluster.in_flight() == 6
    await asyncio.gather(*(drain(c) for c in calls))
    assert cluster.in_flight() == 0


async def test_in_flight_returns_to_zero_across_a_lease_renewal(cluster: Cluster) -> None:
    await cluster.add("a", FakeEngine())
    call = await Pipeline(cluster.router).generate(greq(), "chat")
    await cluster.registry.put(rec("a"))  # the worker renews its lease meanwhile
    await settle()
    await drain(call)
    assert cluster.in_flight() == 0  # actual: 1


async def test_generate_many_merges_and_releases(cluster: Cluster) -> None:
    await cluster.add("a", FakeEngine(words=("x",)))
    await cluster.add("b", FakeEngine(words=("y", "z")))
    merged = await Pipeline(cluster.router).generate_many([greq(), greq()], "completion")
    items = [item async for item in merged]
    assert items[-1] == GenerationEnd(Usage(4, 3))
    assert sorted({i.index for i in items if isinstance(i, GenerationChunk)}) == [0, 1]
    assert cluster.in_flight() == 0


class BoundedEngine(FakeEngine):
    """Echoes the prompt; refuses (429) a generation beyond ``capacity`` running at once,
    as an engine with a full queue does."""

    def __init__(self, capacity: int) -> None:
        super().__init__()
        self.capacity, self.running, self.most = capacity, 0, 0

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk | GenerationEnd]:
        if self.running >= self.capacity:
            raise Overloaded("queue full")
        self.running += 1
        self.most = max(self.most, self.running)
        return self._echo(request.prompt or "")

    async def _echo(self, text: str) -> AsyncIterator[GenerationChunk | GenerationEnd]:
        try:
            for _ in range(3):
                await asyncio.sleep(0.001)
            yield GenerationChunk(0, text, FinishReason.STOP)
            yield GenerationEnd(Usage(1, 1))
        finally:
            self.running -= 1


async def test_many_prompts_never_overflow_an_engine_by_themselves(cluster: Cluster) -> None:
    """A request with more prompts than the engine admits at once still succeeds: its
    prompts run a few at a time (whole and streamed), each choice at its prompt's index."""
    engine = await cluster.add("only", BoundedEngine(capacity=10))
    prompts = [GenerationRequest(f"r-{i}", "llm", SamplingParams(), prompt=f"p{i}") for i in range(40)]
    pipeline = Pipeline(cluster.router)
    _, choices, usage = await pipeline.complete_many(prompts, "completion")
    assert [c.text for c in choices] == [f"p{i}" for i in range(40)] and usage == Usage(40, 40)
    merged = await pipeline.generate_many(prompts, "completion")
    texts: dict[int, str] = {}
    async for item in merged:
        if isinstance(item, GenerationChunk):
            texts[item.index] = item.text
    assert texts == {i: f"p{i}" for i in range(40)}
    assert 1 < engine.most <= 8 and cluster.in_flight() == 0 and engine.running == 0


# -- embed ----------------------------------------------------------------------------------


async def test_embed_retries_an_unreachable_instance(cluster: Cluster) -> None:
    bad = await cluster.add("bad", FakeEngine(Unreachable("down")), "emb", ModelKind.EMBEDDING)
    good = await cluster.add("good", FakeEngine(), "emb", ModelKind.EMBEDDING)
    served_by, result = await Pipeline(cluster.router).embed(ereq())
    assert served_by == "good"
    assert result.vectors == [[1.0], [3.0]]
    assert (bad.calls, good.calls) == (1, 1)
    assert cluster.target("bad", "emb").failures == 1
    assert cluster.in_flight("emb") == 0


async def test_embed_invalid_request_is_not_retried(cluster: Cluster) -> None:
    bad = await cluster.add("bad", FakeEngine(InvalidRequest("too long")), "emb", ModelKind.EMBEDDING)
    good = await cluster.add("good", FakeEngine(), "emb", ModelKind.EMBEDDING)
    with pytest.raises(InvalidRequest):
        await Pipeline(cluster.router).embed(ereq())
    assert (bad.calls, good.calls) == (1, 0)
    assert cluster.in_flight("emb") == 0


async def test_embed_all_unreachable_surfaces_after_attempts(cluster: Cluster) -> None:
    engines = [
        await cluster.add(f"e{i}", FakeEngine(Unreachable("down")), "emb", ModelKind.EMBEDDING) for i in range(4)
    ]
    with pytest.raises(Unreachable):
        await Pipeline(cluster.router, attempts=2).embed(ereq())
    assert sum(e.calls for e in engines) == 2
    assert cluster.in_flight("emb") == 0


async def test_embedding_model_refuses_generation(cluster: Cluster) -> None:
    engine = await cluster.add("e", FakeEngine(), "emb", ModelKind.EMBEDDING)
    with pytest.raises(InvalidRequest):
        await Pipeline(cluster.router).generate(greq("emb"), "chat")
    assert engine.calls == 0
