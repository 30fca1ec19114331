"""The openai-compatible engine under more concurrent requests than pooled connections:
the extra ones wait for a connection in arrival order (however long, within
``queue_timeout_s``: it is not a connect timeout), or are refused with ``Overloaded``
(429) when the queue is full; none is an ``Unreachable`` upstream."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from corral.core.errors import Overloaded, Unreachable
from corral.core.spec import ModelKind, ModelSpec
from corral.core.types import ChatMessage, EmbeddingRequest, GenerationChunk, GenerationRequest, SamplingParams
from corral.bench.fake_openai import FakeOpenAI
from corral.engines.catalog import get_entry
from corral.engines.openai_compatible.engine import OpenAICompatibleEngine

DELAY_S = 0.1  # between two streamed events: a stream of 4 tokens holds its connection ~0.5 s


@pytest.fixture
async def fake() -> AsyncIterator[tuple[FakeOpenAI, str]]:
    server = FakeOpenAI(("slow",), delay_s=DELAY_S)
    srv = await server.serve("127.0.0.1", 0)
    yield server, f"http://127.0.0.1:{srv.sockets[0].getsockname()[1]}/v1"
    srv.close()


async def engine_for(url: str, kind: ModelKind = ModelKind.LLM, **options: object) -> OpenAICompatibleEngine:
    spec = ModelSpec(name="slow", kind=kind, engine="openai-compatible", source=url, options=options)
    engine = get_entry("openai-compatible").create(spec)
    assert isinstance(engine, OpenAICompatibleEngine)
    await engine.start()
    return engine


def chat(i: int) -> GenerationRequest:
    return GenerationRequest(
        request_id=f"r{i}", model="slow", sampling=SamplingParams(max_tokens=4), messages=(ChatMessage("user", "hi"),)
    )


async def test_requests_beyond_the_pool_wait_longer_than_the_connect_timeout(  # type: ignore[no-untyped-def]
    fake,
) -> None:
    server, url = fake
    # on the old code the pool wait counted against connect_timeout_s: Unreachable
    engine = await engine_for(url, max_connections=2, max_queued=10, connect_timeout_s=0.1, queue_timeout_s=30)
    started_at: dict[int, float] = {}

    async def one(i: int) -> str:
        stream = await engine.generate(chat(i))
        started_at[i] = time.monotonic()
        return "".join([item.text async for item in stream if isinstance(item, GenerationChunk)])

    try:
        tasks = []
        for i in range(6):
            tasks.append(asyncio.create_task(one(i)))
            await asyncio.sleep(0.01)  # a known arrival order
        await asyncio.sleep(0.1)
        assert engine.load().in_flight == 2 and engine.load().queued == 4
        texts = await asyncio.gather(*tasks)
    finally:
        await engine.stop()
    assert texts == [" tok" * 4] * 6
    assert server.connections == 2  # the same two pooled connections served all six
    order = sorted(started_at, key=started_at.__getitem__)
    assert order[:2] == [0, 1] and order[2:4] in ([2, 3], [3, 2]) and order[4:] in ([4, 5], [5, 4])
    assert started_at[order[-1]] - started_at[order[0]] > 0.5  # the last ones waited two whole streams
    assert engine.load().queued == 0 and engine.load().in_flight == 0


async def test_a_full_queue_is_overloaded_not_unreachable(fake) -> None:  # type: ignore[no-untyped-def]
    _, url = fake
    engine = await engine_for(url, max_connections=1, max_queued=1, queue_timeout_s=30)
    try:
        running = await engine.generate(chat(0))
        waiting = asyncio.create_task(engine.generate(chat(1)))
        await asyncio.sleep(0.05)
        with pytest.raises(Overloaded) as caught:
            await engine.generate(chat(2))
        assert not isinstance(caught.value, Unreachable)
        assert caught.value.status == 429 and caught.value.retry_after >= 1
        assert "max_queued" in caught.value.message
        await running.aclose()  # the client left: its connection is dropped, the slot goes on
        second = await asyncio.wait_for(waiting, 5)
        assert [i async for i in second]
    finally:
        await engine.stop()


async def test_a_wait_beyond_queue_timeout_is_overloaded(fake) -> None:  # type: ignore[no-untyped-def]
    _, url = fake
    engine = await engine_for(url, max_connections=1, max_queued=4, queue_timeout_s=0.1)
    try:
        running = await engine.generate(chat(0))
        started = time.monotonic()
        with pytest.raises(Overloaded) as caught:
            await engine.generate(chat(1))
        assert 0.09 <= time.monotonic() - started < 2
        assert "queue_timeout_s" in caught.value.message
        assert [i async for i in running]
        assert engine.load().queued == 0 and engine.load().in_flight == 0
    finally:
        await engine.stop()


async def test_embeddings_wait_for_a_connection_too(fake) -> None:  # type: ignore[no-untyped-def]
    _, url = fake
    engine = await engine_for(url, ModelKind.EMBEDDING, max_connections=1, max_queued=0, queue_timeout_s=5)
    try:
        running = await engine.embed(EmbeddingRequest("e0", "slow", ("a",)))  # type: ignore[attr-defined]
        assert len(running.vectors) == 1
        slot = await engine._admission.acquire()  # hold the only connection
        with pytest.raises(Overloaded):
            await engine.embed(EmbeddingRequest("e1", "slow", ("a",)))  # type: ignore[attr-defined]
        slot.release()
        again = await engine.embed(EmbeddingRequest("e2", "slow", ("a",)))  # type: ignore[attr-defined]
        assert len(again.vectors) == 1
    finally:
        await engine.stop()
