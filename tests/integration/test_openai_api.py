"""The standalone server through the official openai SDK, with the real engines."""

from __future__ import annotations

import asyncio
import math
import time

import httpx
from openai import OpenAI

from tests.integration.conftest import API_KEY, REAL_CHAT
from tests.integration.servers import Server

CHAT = "demo-chat"
EMBED = "all-minilm-l6-v2"
HELLO = [{"role": "user", "content": "Say hello"}]


def test_lists_the_shared_deployment(client: OpenAI) -> None:
    ids = {m.id for m in client.models.list().data}
    assert ids == {CHAT, EMBED, REAL_CHAT}
    assert client.models.retrieve(CHAT).id == CHAT


def test_chat_non_streaming_usage_adds_up(client: OpenAI) -> None:
    resp = client.chat.completions.create(model=CHAT, messages=HELLO, max_tokens=12, temperature=0)
    choice = resp.choices[0]
    assert choice.message.role == "assistant"
    assert isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    assert resp.usage is not None
    assert resp.usage.prompt_tokens > 0
    assert 1 <= resp.usage.completion_tokens <= 12
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens
    assert resp.model == CHAT and resp.id.startswith("chatcmpl-")


def test_streaming_concatenates_to_non_streaming_greedy_text(client: OpenAI) -> None:
    params = dict(model=CHAT, messages=HELLO, max_tokens=40, temperature=0, seed=3)
    full = client.chat.completions.create(**params)
    stream = client.chat.completions.create(**params, stream=True, stream_options={"include_usage": True})
    pieces, finish, usage, roles = [], None, None, []
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            if c.delta.role:
                roles.append(c.delta.role)
            pieces.append(c.delta.content or "")
            finish = c.finish_reason or finish
    assert "".join(pieces) == full.choices[0].message.content
    assert finish == full.choices[0].finish_reason
    assert roles == ["assistant"]
    assert usage is not None and full.usage is not None
    assert usage.completion_tokens == full.usage.completion_tokens
    assert usage.prompt_tokens == full.usage.prompt_tokens


def test_max_tokens_gives_length_and_exact_token_count(client: OpenAI) -> None:
    resp = client.chat.completions.create(
        model=CHAT, messages=HELLO, max_completion_tokens=17, temperature=0.8, extra_body={"ignore_eos": True}
    )
    assert resp.choices[0].finish_reason == "length"
    assert resp.usage is not None and resp.usage.completion_tokens == 17


def test_seed_makes_sampling_reproducible(client: OpenAI) -> None:
    def sample(seed: int) -> str:
        r = client.chat.completions.create(
            model=CHAT, messages=HELLO, max_tokens=30, temperature=1.0, top_p=0.9, seed=seed,
            extra_body={"ignore_eos": True},
        )
        return r.choices[0].message.content or ""

    assert sample(7) == sample(7)
    assert sample(7) != sample(8)


def test_temperature_zero_is_greedy_and_independent_of_seed(client: OpenAI) -> None:
    texts = {
        client.chat.completions.create(model=CHAT, messages=HELLO, max_tokens=20, temperature=0, seed=s)
        .choices[0].message.content
        for s in (1, 2, 3)
    }
    assert len(texts) == 1


def test_n_returns_independent_choices(client: OpenAI) -> None:
    resp = client.chat.completions.create(
        model=CHAT, messages=HELLO, max_tokens=20, n=3, temperature=1.0, seed=11, extra_body={"ignore_eos": True}
    )
    assert [c.index for c in resp.choices] == [0, 1, 2]
    assert len({c.message.content for c in resp.choices}) > 1
    assert resp.usage is not None and resp.usage.completion_tokens == 60


def test_stop_sequence_cuts_output_stream_and_not(client: OpenAI) -> None:
    base = dict(model=CHAT, messages=HELLO, max_tokens=60, temperature=0, extra_body={"ignore_eos": True})
    text = client.chat.completions.create(**base).choices[0].message.content or ""
    assert len(text) > 10
    stop = text[8:11]
    cut = text[: text.index(stop)]
    resp = client.chat.completions.create(**base, stop=[stop])
    assert resp.choices[0].message.content == cut
    assert resp.choices[0].finish_reason == "stop"
    streamed = "".join(
        c.choices[0].delta.content or "" for c in client.chat.completions.create(**base, stop=stop, stream=True)
    )
    assert streamed == cut


def test_text_completion_single_list_and_echo(client: OpenAI) -> None:
    one = client.completions.create(model=CHAT, prompt="def main(", max_tokens=10, temperature=0)
    assert one.object == "text_completion"
    assert one.usage is not None and one.usage.prompt_tokens > 0
    echoed = client.completions.create(model=CHAT, prompt="def main(", max_tokens=10, temperature=0, echo=True)
    assert echoed.choices[0].text == "def main(" + one.choices[0].text
    many = client.completions.create(model=CHAT, prompt=["import os", "class A:"], max_tokens=5, temperature=0, n=2)
    assert sorted(c.index for c in many.choices) == [0, 1, 2, 3]
    assert many.usage is not None and many.usage.completion_tokens <= 20
    stream = client.completions.create(model=CHAT, prompt="def main(", max_tokens=10, temperature=0, stream=True)
    assert "".join(c.choices[0].text for c in stream if c.choices) == one.choices[0].text


def _cos(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def test_embeddings_are_real_semantic_vectors(client: OpenAI) -> None:
    texts = ["A man is playing a guitar.", "Someone plays an instrument.", "The stock market fell sharply today."]
    resp = client.embeddings.create(model=EMBED, input=texts)
    vecs = [d.embedding for d in sorted(resp.data, key=lambda d: d.index)]
    assert all(len(v) == 384 for v in vecs)
    assert _cos(vecs[0], vecs[1]) > _cos(vecs[0], vecs[2]) + 0.2
    assert resp.usage.prompt_tokens > len(texts)
    assert resp.usage.total_tokens == resp.usage.prompt_tokens


def test_embeddings_float_and_base64_agree(client: OpenAI, demo_server: Server) -> None:
    # the SDK asks for base64 by default and decodes it; ask for floats explicitly too
    sdk = client.embeddings.create(model=EMBED, input="hello world").data[0].embedding
    raw = httpx.post(
        f"{demo_server.url}/v1/embeddings",
        json={"model": EMBED, "input": "hello world", "encoding_format": "float"},
        headers={"authorization": f"Bearer {API_KEY}"},
    ).json()["data"][0]["embedding"]
    assert len(sdk) == len(raw) == 384
    assert max(abs(a - b) for a, b in zip(sdk, raw)) < 1e-6


async def test_concurrent_chats_are_batched_not_serialised(async_client) -> None:  # type: ignore[no-untyped-def]
    async def one() -> int:
        r = await async_client.chat.completions.create(
            model=CHAT, messages=HELLO, max_tokens=96, temperature=0.7, extra_body={"ignore_eos": True}
        )
        return r.usage.completion_tokens

    await one()  # warm up
    start = time.perf_counter()
    assert await one() == 96
    single = time.perf_counter() - start
    start = time.perf_counter()
    counts = await asyncio.gather(*(one() for _ in range(16)))
    sixteen = time.perf_counter() - start
    assert counts == [96] * 16
    # one after another would take ~16x; a batcher takes a small multiple of one request
    assert sixteen < 6 * single, f"16 concurrent took {sixteen:.2f}s vs {single:.2f}s for one"


def _engine_stats(server: Server, model: str) -> dict[str, int]:
    ready = httpx.get(f"{server.url}/health/ready").json()
    return ready["models"][model]["instances"][0]


def test_client_disconnect_cancels_generation(demo_server: Server) -> None:
    before = _engine_stats(demo_server, CHAT)
    body = {
        "model": CHAT, "messages": HELLO, "max_tokens": 3500, "stream": True, "ignore_eos": True, "temperature": 0.5,
    }
    headers = {"authorization": f"Bearer {API_KEY}"}
    with httpx.Client(timeout=30) as http:
        with http.stream("POST", f"{demo_server.url}/v1/chat/completions", json=body, headers=headers) as resp:
            assert resp.status_code == 200
            lines = resp.iter_lines()
            got = [next(lines) for _ in range(6)]
            assert any(line.startswith("data: {") for line in got)
            assert _engine_stats(demo_server, CHAT)["in_flight"] >= 1
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        stats = _engine_stats(demo_server, CHAT)
        if stats["in_flight"] == 0 and stats["cancelled_total"] > before["cancelled_total"]:
            break
        time.sleep(0.05)
    assert stats["in_flight"] == 0
    assert stats["cancelled_total"] == before["cancelled_total"] + 1
    assert stats["completed_total"] == before["completed_total"]


def test_langchain_chat_openai_works_unchanged(demo_server: Server) -> None:
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(base_url=f"{demo_server.url}/v1", api_key=API_KEY, model=CHAT, max_tokens=8, temperature=0)
    msg = llm.invoke("hello")
    assert isinstance(msg.content, str)
    assert msg.usage_metadata is not None and msg.usage_metadata["output_tokens"] <= 8
    streamed = "".join(str(chunk.content) for chunk in llm.stream("hello"))
    assert streamed == msg.content
