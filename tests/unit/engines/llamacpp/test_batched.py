"""The batched llama.cpp decoder on the demo GGUF: admission order, KV cells freed, the
per-sequence sampler, and supervision (a step made to raise through ``Context.decode``)."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from corral.core.errors import EngineError, InstanceLost, InvalidRequest, Unavailable
from corral.core.spec import ModelKind, ModelSpec
from corral.core.types import GenerationChunk, GenerationEnd, GenerationRequest, SamplingParams
from corral.engines.llamacpp.context import Context
from corral.engines.llamacpp.engine import LlamaCppEngine
from corral.engines.llamacpp.options import LlamaCppOptions
from corral.engines.llamacpp.sampling import Sampler
from corral.engines.supervise import fingerprint


def request(prompt: str, max_tokens: int = 400, n: int = 1) -> GenerationRequest:
    return GenerationRequest(
        prompt, "m", SamplingParams(max_tokens=max_tokens, temperature=0.0, n=n, ignore_eos=True), prompt=prompt
    )


async def make(gguf: Path, **options: Any) -> LlamaCppEngine:
    opts = LlamaCppOptions(n_ctx=512, n_threads=1, **options)
    engine = LlamaCppEngine(ModelSpec("m", ModelKind.LLM, "llamacpp", str(gguf), options={}), opts)
    await engine.start()
    return engine


async def started(engine: LlamaCppEngine, req: GenerationRequest) -> Any:
    stream = await engine.generate(req)
    first = await asyncio.wait_for(anext(stream), 30)
    assert isinstance(first, GenerationChunk)
    return stream


_arrivals = itertools.count()


async def drain(stream: Any) -> tuple[GenerationEnd, int]:
    """The end, and the rank of its first item's arrival among all streams'."""
    first = None
    async for item in stream:
        first = next(_arrivals) if first is None else first
        if isinstance(item, GenerationEnd):
            return item, first
    raise AssertionError("no end")


async def until(condition: Any, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_admission_keeps_fifo_order_and_frees_cells(demo_gguf: Path) -> None:
    engine = await make(demo_gguf, max_batch_size=2)
    try:
        # one of two sequences taken; ``big`` needs both, so ``small`` (which would fit) waits behind it
        running = asyncio.create_task(drain(await engine.generate(request("a = 1\n", 480))))
        big = asyncio.create_task(drain(await engine.generate(request("b = 2\n", 30, n=2))))
        small = asyncio.create_task(drain(await engine.generate(request("c = 3\n", 5))))
        (run_end, _), (big_end, big_first), (small_end, small_first) = await asyncio.wait_for(
            asyncio.gather(running, big, small), 60
        )
        assert run_end.usage.completion_tokens == 480
        assert big_end.usage.completion_tokens == 60 and small_end.usage.completion_tokens == 5
        assert big_first < small_first  # admitted in order, not by size
        await until(lambda: engine.load().in_flight == 0)
        decoder = engine._decoder
        assert decoder is not None and sorted(decoder._free) == [0, 1]  # every sequence id back
        ctx = decoder._ctx
        mem = ctx._L.llama_get_memory(ctx._ctx)
        assert all(ctx._L.llama_memory_seq_pos_max(mem, s) == -1 for s in (0, 1))  # and its KV cells empty
        assert engine.load().completed_total == 3
    finally:
        await engine.stop()


@pytest.fixture
async def faulty(demo_gguf: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Any]:
    engine: Any = await make(demo_gguf, max_batch_size=2)
    engine.poisoned = set()
    engine.armed = asyncio.Event()
    real = Context.decode

    def decode(ctx: Context) -> None:
        jobs = engine._decoder._jobs
        if engine.armed.is_set() and any(j.fingerprint in engine.poisoned for j in jobs):
            raise RuntimeError("injected fault")
        real(ctx)

    monkeypatch.setattr(Context, "decode", decode)
    yield engine
    await engine.stop()


async def test_a_crash_fails_its_batch_at_once_and_the_queue_is_served_after_a_restart(faulty: Any) -> None:
    poison = request("poison = 1\n")
    faulty.poisoned.add(fingerprint(poison))
    innocent = await started(faulty, request("fine = 1\n"))
    doomed = await started(faulty, poison)
    queued = await faulty.generate(request("queued = 1\n", 3))
    await until(lambda: faulty.load().queued == 1)
    context = faulty._decoder._ctx
    armed = time.monotonic()
    faulty.armed.set()
    for stream in (innocent, doomed):
        with pytest.raises(EngineError) as err:
            await asyncio.wait_for(drain(stream), 10)
        assert not isinstance(err.value, InstanceLost)
    assert time.monotonic() - armed < 5
    end, _ = await asyncio.wait_for(drain(queued), 30)
    assert end.usage.completion_tokens == 3
    load = faulty.load()
    assert (load.crashes_total, load.restarts_total, load.failure) == (1, 1, None)
    assert faulty._decoder._ctx is not context  # a fresh context on the same weights


async def test_an_input_that_crashed_twice_is_refused_and_past_the_budget_it_fails(faulty: Any) -> None:
    poison = request("poison = 2\n")
    faulty.poisoned.add(fingerprint(poison))
    faulty.armed.set()
    for _ in range(2):
        with pytest.raises(EngineError):
            await asyncio.wait_for(drain(await faulty.generate(poison)), 30)
        await until(lambda: faulty.load().restarts_total == faulty.load().crashes_total)
    with pytest.raises(InvalidRequest) as refused:
        await faulty.generate(poison)
    assert refused.value.code == "input_crashed_engine"
    end, _ = await drain(await faulty.generate(request("ok = 1\n", 3)))  # others still served
    assert end.usage.completion_tokens == 3
    i = 0
    while faulty.load().failure is None:  # distinct poisoned inputs until the budget runs out
        other = request(f"poison = {i + 10}\n")
        faulty.poisoned.add(fingerprint(other))
        i += 1
        with pytest.raises(EngineError):
            await asyncio.wait_for(drain(await faulty.generate(other)), 30)
        await until(lambda: faulty.load().failure is not None or faulty.load().restarts_total == faulty.load().crashes_total)
    assert "crashed" in faulty.load().failure
    with pytest.raises(Unavailable):
        await faulty.generate(request("after = 1\n"))


def test_sampler_is_per_sequence_and_follows_the_parameters() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=100).astype(np.float32)
    best = int(np.argmax(logits))
    greedy = Sampler(SamplingParams(temperature=0.0), seed=1)
    assert greedy.sample(logits) == best
    banned = Sampler(SamplingParams(temperature=0.0), seed=1, banned=np.array([best], dtype=np.intp))
    assert banned.sample(logits) != best
    narrow = Sampler(SamplingParams(temperature=1.0, top_p=1e-9), seed=3)
    assert {narrow.sample(logits) for _ in range(20)} == {best}  # the nucleus is the top token
    a = [Sampler(SamplingParams(temperature=1.0), seed=7).sample(logits) for _ in range(3)]
    s = Sampler(SamplingParams(temperature=1.0), seed=7)
    b = [s.sample(logits) for _ in range(30)]
    assert len(set(a)) == 1 and b[0] == a[0] and len(set(b)) > 3  # seeded, and it does sample
    penalised = Sampler(SamplingParams(temperature=0.0, frequency_penalty=100.0), seed=1)
    assert penalised.sample(logits) == best and penalised.sample(logits) != best
    before = logits.copy()
    penalised.sample(logits)
    assert np.array_equal(logits, before)  # llama.cpp's buffer is never written


async def test_text_that_is_not_unicode_is_refused_naming_the_field(demo_gguf: Path) -> None:
    from corral.core.types import ChatMessage

    engine = await make(demo_gguf)
    try:
        with pytest.raises(InvalidRequest) as err:
            await engine.generate(request("a\ud800b"))
        assert err.value.param == "prompt"
        chat = GenerationRequest("c", "m", SamplingParams(max_tokens=2), messages=(ChatMessage("user", "ok"), ChatMessage("user", "\udfff")))
        with pytest.raises(InvalidRequest) as err:
            await engine.generate(chat)
        assert err.value.param == "messages[1].content"
        with pytest.raises(InvalidRequest) as err:
            await engine.generate(request("x", n=9))
        assert err.value.param == "n"
        assert engine.load().queued == 0 and engine.load().failure is None
    finally:
        await engine.stop()
