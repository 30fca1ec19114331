"""The transformers engine survives its loop raising: only the batch it was running
fails (each request at once), queued requests are served after an in-place restart, an
input that crashed it twice is refused, and past the budget it reports a failure."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from corral.core.errors import EngineError, InstanceLost, InvalidRequest, Unavailable
from corral.core.spec import ModelKind, ModelSpec
from corral.core.types import GenerationChunk, GenerationEnd, GenerationRequest, SamplingParams
from corral.engines.catalog import get_entry
from corral.engines.supervise import fingerprint
from corral.engines.transformers.demo import ensure_demo_llm


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_demo_llm(tmp_path_factory.mktemp("demo"))


@pytest.fixture
async def engine(folder: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Any]:
    spec = ModelSpec("m", ModelKind.LLM, "transformers", str(folder), options={"max_batch_size": 2})
    engine = get_entry("transformers").create(spec)
    await engine.start()
    engine.poisoned = set()  # fingerprints whose presence in the running batch makes a decode step raise
    engine.armed = asyncio.Event()
    batcher = engine._batcher
    real = batcher._decode

    def decode() -> None:
        if engine.armed.is_set() and any(s.fingerprint in engine.poisoned for s in batcher._running):
            raise RuntimeError("injected fault")
        real()

    monkeypatch.setattr(batcher, "_decode", decode)
    yield engine
    await engine.stop()


def request(prompt: str, max_tokens: int = 400) -> GenerationRequest:
    return GenerationRequest(prompt, "m", SamplingParams(max_tokens=max_tokens, ignore_eos=True), prompt=prompt)


async def started(engine: Any, req: GenerationRequest) -> Any:
    """The stream, once its first token arrived (its sequence is in the running batch)."""
    stream = await engine.generate(req)
    first = await asyncio.wait_for(anext(stream), 30)
    assert isinstance(first, GenerationChunk)
    return stream


async def drain(stream: Any) -> GenerationEnd:
    async for item in stream:
        if isinstance(item, GenerationEnd):
            return item
    raise AssertionError("no end")


async def until(condition: Any, timeout: float = 30) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_only_the_crashed_batch_fails_and_the_queue_is_served_after_a_restart(engine: Any) -> None:
    poison = request("poison")
    engine.poisoned.add(fingerprint(poison))
    innocent = await started(engine, request("innocent"))
    doomed = await started(engine, poison)
    queued = await engine.generate(request("queued", 3))  # the batch (2) is full: it waits
    await until(lambda: engine.load().queued == 1)
    engine.armed.set()
    loop = asyncio.get_running_loop()
    armed_at = loop.time()
    for stream in (innocent, doomed):
        with pytest.raises(EngineError) as caught:
            await asyncio.wait_for(drain(stream), 10)
        assert caught.value.code == "engine_error" and "RuntimeError" in caught.value.message
    assert loop.time() - armed_at < 5  # at once, not after a timeout
    end = await asyncio.wait_for(drain(queued), 30)
    assert end.usage.completion_tokens == 3
    await until(lambda: engine.load().restarts_total == 1)
    load = engine.load()
    assert (load.crashes_total, load.restarts_total, load.failure) == (1, 1, None)
    assert (await asyncio.wait_for(drain(await engine.generate(request("after", 2))), 30)).usage.completion_tokens == 2


async def test_an_input_in_flight_at_two_crashes_is_refused(engine: Any) -> None:
    poison = request("poison again")
    engine.poisoned.add(fingerprint(poison))
    engine.armed.set()
    for crashes in (1, 2):
        with pytest.raises(EngineError):
            await asyncio.wait_for(drain(await engine.generate(poison)), 10)
        await until(lambda: engine.load().restarts_total == crashes)
    with pytest.raises(InvalidRequest) as caught:
        await engine.generate(poison)
    assert caught.value.code == "input_crashed_engine"
    # a different request id, the same input: still refused; other input: served
    with pytest.raises(InvalidRequest):
        await engine.generate(GenerationRequest("other-id", "m", poison.sampling, prompt=poison.prompt))
    assert (await asyncio.wait_for(drain(await engine.generate(request("fine", 2))), 30)).usage.completion_tokens == 2


async def test_past_its_budget_the_engine_reports_a_failure(engine: Any) -> None:
    engine.armed.set()
    for i in range(6):  # LoopSupervisor: more than 5 crashes in 60 s
        poison = request(f"poison {i}")
        engine.poisoned.add(fingerprint(poison))
        if i == 5:  # the last crash leaves a request in the queue: it is told the instance is gone
            first = await engine.generate(poison)
            other = await engine.generate(request(f"poison {i} twin"))
            engine.poisoned.add(fingerprint(request(f"poison {i} twin")))
            queued = await engine.generate(request("queued", 3))
            with pytest.raises(EngineError):
                await asyncio.wait_for(drain(first), 10)
            with pytest.raises(EngineError):
                await asyncio.wait_for(drain(other), 10)
            with pytest.raises(InstanceLost):
                await asyncio.wait_for(drain(queued), 10)
        else:
            with pytest.raises(EngineError):
                await asyncio.wait_for(drain(await engine.generate(poison)), 10)
            await until(lambda: engine.load().restarts_total == i + 1)
    load = engine.load()
    assert load.failure is not None and "6 times" in load.failure
    assert (load.crashes_total, load.restarts_total) == (6, 5)
    with pytest.raises(Unavailable):
        await engine.generate(request("after", 2))
