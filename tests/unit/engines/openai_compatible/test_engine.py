"""The openai-compatible engine against a fake OpenAI server on a loopback port."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from corral.core.engine import Embedding, TextGeneration
from corral.core.errors import (
    ConfigError,
    CorralError,
    EngineError,
    InstanceLost,
    InvalidRequest,
    Overloaded,
    Unreachable,
)
from corral.core.spec import ModelKind, ModelSpec
from corral.core.types import (
    ChatMessage,
    EmbeddingRequest,
    FinishReason,
    GenerationChunk,
    GenerationEnd,
    GenerationRequest,
    SamplingParams,
    Usage,
)
from corral.engines.catalog import get_entry
from corral.engines.openai_compatible.engine import OpenAICompatibleEngine
from corral.gateway import pipeline
from tests.integration.servers import free_port
from tests.unit.engines.openai_compatible.fake_upstream import KEY, WORDS, FakeUpstream


async def collect(stream: Any, n: int) -> tuple[list[tuple[str, str | None]], Usage]:
    """(text, finish reason) per choice, and usage."""
    choices, usage = await pipeline.collect(stream, n)
    return [(c.text, c.finish) for c in choices], usage


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream(require_key=KEY) as fake:
        yield fake


@pytest.fixture(autouse=True)
def _fresh(upstream: FakeUpstream) -> None:
    upstream.reset()


def make_spec(source: str, kind: ModelKind = ModelKind.LLM, **options: object) -> ModelSpec:
    return ModelSpec(name="proxied", kind=kind, engine="openai-compatible", source=source,
                     options={"api_key": KEY, **options})


async def started(source: str, kind: ModelKind = ModelKind.LLM, **options: object) -> OpenAICompatibleEngine:
    engine = get_entry("openai-compatible").create(make_spec(source, kind, **options))
    assert isinstance(engine, OpenAICompatibleEngine)
    await engine.start()
    return engine


@pytest.fixture
async def engine(upstream: FakeUpstream) -> AsyncIterator[OpenAICompatibleEngine]:
    eng = await started(upstream.url, upstream_model="ok")
    yield eng
    await eng.stop()


def chat(n: int = 1, **sampling: object) -> GenerationRequest:
    return GenerationRequest(
        request_id="req-1", model="proxied", sampling=SamplingParams(n=n, **sampling),  # type: ignore[arg-type]
        messages=(ChatMessage("system", "be brief"), ChatMessage("user", "hi", name="ann")),
    )


def text(prompt: str = "Once", echo: bool = False, **sampling: object) -> GenerationRequest:
    return GenerationRequest(request_id="req-2", model="proxied", sampling=SamplingParams(**sampling),  # type: ignore[arg-type]
                             prompt=prompt, echo=echo)


async def drain(stream: AsyncIterator[GenerationChunk | GenerationEnd]) -> list[GenerationChunk | GenerationEnd]:
    return [item async for item in stream]


async def with_model(engine: OpenAICompatibleEngine, model: str) -> None:
    """Point the engine at one of the fake's behaviours."""
    engine.upstream_model = model


# -- streaming -----------------------------------------------------------------------------


async def test_chat_streams_deltas_then_usage(engine: OpenAICompatibleEngine, upstream: FakeUpstream) -> None:
    items = await drain(await engine.generate(chat()))
    chunks, end = items[:-1], items[-1]
    assert [c.text for c in chunks if isinstance(c, GenerationChunk)] == [*WORDS, ""]
    assert chunks[-1] == GenerationChunk(0, "", FinishReason.STOP)
    assert isinstance(end, GenerationEnd) and (end.usage.prompt_tokens, end.usage.completion_tokens) == (5, 3)
    assert engine.load().in_flight == 0 and engine.load().completed_total == 1


async def test_upstream_request_is_built_from_the_sampling_params(engine: OpenAICompatibleEngine, upstream: FakeUpstream) -> None:
    await drain(await engine.generate(chat(max_tokens=3, temperature=0.0, top_p=0.5, stop=("\n",), seed=7,
                                           presence_penalty=0.5, frequency_penalty=0.25)))
    body, headers = upstream.seen.bodies[-1], upstream.seen.headers[-1]
    assert body == {
        "model": "ok",
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi", "name": "ann"}],
        "max_tokens": 3, "temperature": 0.0, "top_p": 0.5, "stop": ["\n"], "seed": 7,
        "presence_penalty": 0.5, "frequency_penalty": 0.25,
        "stream": True, "stream_options": {"include_usage": True},
    }
    assert "ignore_eos" not in body and "n" not in body  # only sent when they differ from the default
    assert headers["authorization"] == f"Bearer {KEY}"
    assert headers["x-request-id"] == "req-1"
    assert "top_k" not in body and "repetition_penalty" not in body
    await drain(await engine.generate(chat(ignore_eos=True)))
    assert upstream.seen.bodies[-1]["ignore_eos"] is True
    # vLLM's extensions, sent only when asked for, under vLLM's names
    await drain(await engine.generate(chat(top_k=40, repetition_penalty=1.1)))
    assert (upstream.seen.bodies[-1]["top_k"], upstream.seen.bodies[-1]["repetition_penalty"]) == (40, 1.1)


async def test_length_finish_reason(engine: OpenAICompatibleEngine) -> None:
    choices, _ = await collect(await engine.generate(chat(max_tokens=3)), 1)
    assert choices == [("Hello world", "length")]


async def test_text_completion_with_echo(engine: OpenAICompatibleEngine, upstream: FakeUpstream) -> None:
    choices, usage = await collect(await engine.generate(text("Once", echo=True)), 1)
    assert choices == [("Once" + "".join(WORDS), "stop")]
    assert usage.prompt_tokens == 5
    body = upstream.seen.bodies[-1]
    assert body["prompt"] == "Once" and "echo" not in body and "messages" not in body  # echo is done locally


async def test_n_choices_interleaved(engine: OpenAICompatibleEngine, upstream: FakeUpstream) -> None:
    items = await drain(await engine.generate(chat(n=2)))
    chunks = [i for i in items if isinstance(i, GenerationChunk)]
    assert [c.index for c in chunks[:4]] == [0, 1, 0, 1]
    assert upstream.seen.bodies[-1]["n"] == 2
    choices, usage = await collect(await engine.generate(chat(n=2)), 2)
    assert choices == [("Hello world", "stop"), ("Hel1lo1 world1", "stop")]
    assert usage.completion_tokens == 6


async def test_n_ignored_by_upstream_is_an_error(engine: OpenAICompatibleEngine) -> None:
    await with_model(engine, "n-ignored")
    with pytest.raises(EngineError, match="1 of 2 choices") as info:
        await collect(await engine.generate(chat(n=2)), 2)
    assert info.value.param == "n"


async def test_non_streaming_upstream_answer(engine: OpenAICompatibleEngine) -> None:
    """A server that ignores ``stream: true`` and answers one JSON body still works."""
    await with_model(engine, "json")
    choices, usage = await collect(await engine.generate(chat(n=2)), 2)
    assert choices == [("Hello world", "stop")] * 2 and usage.completion_tokens == 3
    choices, _ = await collect(await engine.generate(text()), 1)
    assert choices == [("Hello world", "stop")]


async def test_transformers_serve_style_stream(engine: OpenAICompatibleEngine) -> None:
    """Usage on the last choice chunk and no ``data: [DONE]``: a complete answer."""
    await with_model(engine, "tf-serve")
    choices, usage = await collect(await engine.generate(chat()), 1)
    assert choices == [("Hello world", "stop")] and usage.completion_tokens == 3


async def test_missing_usage_counts_zero(engine: OpenAICompatibleEngine, caplog: pytest.LogCaptureFixture) -> None:
    await with_model(engine, "no-usage")
    with caplog.at_level(logging.DEBUG, logger="corral.engines.openai_compatible.engine"):
        for _ in range(2):
            items = await drain(await engine.generate(chat()))
            assert items[-1] == GenerationEnd(usage=items[-1].usage) and items[-1].usage.total_tokens == 0  # type: ignore[union-attr]
    assert sum("no token usage" in r.message for r in caplog.records) == 1


# -- errors --------------------------------------------------------------------------------


async def test_400_keeps_the_upstream_message_and_param(engine: OpenAICompatibleEngine) -> None:
    await with_model(engine, "err400")
    with pytest.raises(InvalidRequest) as info:
        await engine.generate(chat(max_tokens=9999))
    assert info.value.message == "max_tokens must be at most 100, got 9999"
    assert info.value.param == "max_tokens" and info.value.status == 400
    assert engine.load().in_flight == 0


async def test_422_fastapi_detail(engine: OpenAICompatibleEngine) -> None:
    await with_model(engine, "err422")
    with pytest.raises(InvalidRequest) as info:
        await engine.generate(chat(ignore_eos=True))
    assert info.value.param == "ignore_eos" and "Extra inputs are not permitted" in info.value.message


async def test_401_never_leaks_the_key(engine: OpenAICompatibleEngine, caplog: pytest.LogCaptureFixture) -> None:
    await with_model(engine, "err401")
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(EngineError) as info:
            await engine.generate(chat())
    err = info.value
    assert err.code == "upstream_auth" and err.status == 502
    assert "credentials" in err.message and "api_key" in err.message
    assert KEY not in str(err) and KEY not in repr(err.__dict__) and KEY not in caplog.text


async def test_401_at_start(upstream: FakeUpstream) -> None:
    spec = make_spec(upstream.url)
    spec.options["api_key"] = "sk-wrong-key"
    eng = get_entry("openai-compatible").create(spec)
    with pytest.raises(EngineError) as info:
        await eng.start()
    assert info.value.code == "upstream_auth" and "sk-wrong-key" not in info.value.message


async def test_404_names_the_upstream_model(engine: OpenAICompatibleEngine) -> None:
    await with_model(engine, "err404")
    with pytest.raises(InvalidRequest) as info:
        await engine.generate(chat())
    assert "'err404'" in info.value.message and "upstream_model" in info.value.message
    assert info.value.code == "model_not_found" and info.value.param == "model"


async def test_429_is_overloaded_with_retry_after(engine: OpenAICompatibleEngine) -> None:
    await with_model(engine, "err429")
    with pytest.raises(Overloaded) as info:
        await engine.generate(chat())
    assert info.value.retry_after == 7.0 and "too many requests" in info.value.message


async def test_500_before_the_first_byte_is_unreachable(engine: OpenAICompatibleEngine) -> None:
    await with_model(engine, "err500")
    with pytest.raises(Unreachable, match="HTTP 500"):
        await engine.generate(chat())
    assert engine.load().in_flight == 0


async def test_timeout_before_the_answer_is_unreachable(upstream: FakeUpstream) -> None:
    eng = await started(upstream.url, upstream_model="hang", timeout_s=0.3)
    try:
        with pytest.raises(Unreachable, match="Timeout"):
            await eng.generate(chat())
    finally:
        await eng.stop()


async def test_connection_refused_is_unreachable() -> None:
    eng = await started(f"http://127.0.0.1:{free_port()}/v1", verify_on_start=False)
    try:
        with pytest.raises(Unreachable, match="ConnectError"):
            await eng.generate(chat())
        assert eng.load().in_flight == 0
    finally:
        await eng.stop()


async def test_connection_dropped_mid_stream_is_instance_lost(engine: OpenAICompatibleEngine) -> None:
    await with_model(engine, "drop")
    stream = await engine.generate(chat())
    got: list[str] = []
    with pytest.raises(InstanceLost, match="mid-stream"):
        async for item in stream:
            assert isinstance(item, GenerationChunk)
            got.append(item.text)
    assert got[:2] == ["Hel", "lo"]
    assert engine.load().in_flight == 0


async def test_error_event_mid_stream(engine: OpenAICompatibleEngine) -> None:
    await with_model(engine, "error-event")
    with pytest.raises(EngineError, match="CUDA out of memory") as info:
        await drain(await engine.generate(chat()))
    assert not isinstance(info.value, InstanceLost)


# -- cancellation --------------------------------------------------------------------------


async def test_closing_the_stream_closes_the_upstream_connection(engine: OpenAICompatibleEngine, upstream: FakeUpstream) -> None:
    await with_model(engine, "slow")
    stream = await engine.generate(chat())
    first = await anext(stream)
    assert isinstance(first, GenerationChunk) and first.text == "x"
    assert engine.load().in_flight == 1
    await stream.aclose()  # type: ignore[attr-defined]
    assert await asyncio.to_thread(upstream.seen.disconnected.wait, 5), "the upstream did not see the client leave"
    assert engine.load().in_flight == 0 and engine.load().cancelled_total == 1


async def test_closing_before_iterating_closes_the_upstream_connection(engine: OpenAICompatibleEngine, upstream: FakeUpstream) -> None:
    await with_model(engine, "slow")
    stream = await engine.generate(chat())
    assert await asyncio.to_thread(upstream.seen.streaming.wait, 5)
    await stream.aclose()  # type: ignore[attr-defined]
    assert await asyncio.to_thread(upstream.seen.disconnected.wait, 5)
    assert engine.load().in_flight == 0


async def test_cancelling_the_consumer_task_closes_the_upstream(engine: OpenAICompatibleEngine, upstream: FakeUpstream) -> None:
    await with_model(engine, "slow")

    async def consume() -> None:
        stream = await engine.generate(chat())
        try:
            async for _ in stream:
                pass
        finally:
            await stream.aclose()  # type: ignore[attr-defined]

    task = asyncio.create_task(consume())
    assert await asyncio.to_thread(upstream.seen.streaming.wait, 5)
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await asyncio.to_thread(upstream.seen.disconnected.wait, 5)


# -- lifecycle, options, embeddings -------------------------------------------------------


async def test_verify_on_start_names_the_url() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    eng = get_entry("openai-compatible").create(make_spec(url))
    with pytest.raises(Unreachable) as info:
        await eng.start()
    assert url in info.value.message and "'proxied'" in info.value.message and "unreachable" in info.value.message


async def test_start_without_verification_and_stop_twice() -> None:
    eng = await started(f"http://127.0.0.1:{free_port()}/v1", verify_on_start=False)
    await eng.stop()
    await eng.stop()


async def test_api_key_env(upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = ModelSpec(name="proxied", kind=ModelKind.LLM, engine="openai-compatible", source=upstream.url,
                     options={"api_key_env": "FAKE_UPSTREAM_KEY", "upstream_model": "ok", "extra_headers": {"x-team": "a"}})
    monkeypatch.delenv("FAKE_UPSTREAM_KEY", raising=False)
    eng = get_entry("openai-compatible").create(spec)
    with pytest.raises(ConfigError, match="FAKE_UPSTREAM_KEY"):
        await eng.start()
    monkeypatch.setenv("FAKE_UPSTREAM_KEY", KEY)
    await eng.start()
    try:
        await drain(await eng.generate(chat()))
        assert upstream.seen.headers[-1]["authorization"] == f"Bearer {KEY}"
        assert upstream.seen.headers[-1]["x-team"] == "a"
    finally:
        await eng.stop()


def test_options_validation() -> None:
    entry = get_entry("openai-compatible")
    schema = entry.options_model()
    with pytest.raises(ValueError, match="not both"):
        schema.model_validate({"api_key": "a", "api_key_env": "B"})
    with pytest.raises(ValueError, match="extra"):
        schema.model_validate({"upstream": "x"})
    with pytest.raises(ValueError):
        schema.model_validate({"timeout_s": "30"})  # strict
    opts = schema.model_validate({"api_key": "sk-1", "timeout_s": 30})
    assert "sk-1" not in repr(opts)
    assert entry.installed() and entry.install_hint().startswith("built in")
    assert get_entry("transformers").install_hint() == "pip install 'corral[transformers]'"


def test_capabilities_follow_kind_and_options() -> None:
    entry = get_entry("openai-compatible")
    llm = entry.create(make_spec("http://h:1/v1"))
    assert isinstance(llm, TextGeneration) and not isinstance(llm, Embedding)
    both = entry.create(make_spec("http://h:1/v1", supports_embeddings=True))
    assert isinstance(both, TextGeneration) and isinstance(both, Embedding)
    emb = entry.create(make_spec("http://h:1/v1", ModelKind.EMBEDDING))
    assert isinstance(emb, Embedding) and not isinstance(emb, TextGeneration)
    with pytest.raises(ConfigError, match="supports_embeddings"):
        entry.create(make_spec("http://h:1/v1", ModelKind.EMBEDDING, supports_embeddings=False))
    with pytest.raises(ConfigError, match="http"):
        entry.create(make_spec("127.0.0.1:8080"))


def test_config_file(tmp_path: Path) -> None:
    from corral.config.loader import load_settings

    path = tmp_path / "corral.toml"
    path.write_text(
        '[[models]]\nname = "proxied"\nkind = "llm"\nengine = "openai-compatible"\n'
        'source = "http://127.0.0.1:8080/v1"\n[models.options]\nupstream_model = "x"\napi_key_env = "K"\n'
        "timeout_s = 60\n"
    )
    (spec,) = load_settings(path).models
    assert spec.options == {"upstream_model": "x", "api_key_env": "K", "timeout_s": 60}
    path.write_text(path.read_text() + "api_keyy = 1\n")
    with pytest.raises(ConfigError, match="api_keyy"):
        load_settings(path)


async def test_embeddings(upstream: FakeUpstream) -> None:
    eng = await started(upstream.url, ModelKind.EMBEDDING, upstream_model="ok")
    try:
        assert isinstance(eng, Embedding)
        result = await eng.embed(EmbeddingRequest("e1", "proxied", ("a", "abc"), dimensions=3))
        assert result.vectors == [[1.0, 1.0, -0.5], [3.0, 1.0, -0.5]]  # sorted by index
        assert result.usage.prompt_tokens == 4
        assert upstream.seen.bodies[-1] == {"model": "ok", "input": ["a", "abc"], "encoding_format": "float", "dimensions": 3}
        eng.upstream_model = "b64"
        result = await eng.embed(EmbeddingRequest("e2", "proxied", ("ab",)))
        assert result.vectors == [[2.0, 1.0, -0.5]]
        eng.upstream_model = "err500"
        with pytest.raises(Unreachable):
            await eng.embed(EmbeddingRequest("e3", "proxied", ("a",)))
        assert eng.load().in_flight == 0 and eng.load().completed_total == 2
    finally:
        await eng.stop()


async def test_not_started_is_unavailable() -> None:
    eng = get_entry("openai-compatible").create(make_spec("http://127.0.0.1:1/v1"))
    with pytest.raises(CorralError, match="not serving"):
        await eng.generate(chat())  # type: ignore[attr-defined]


async def test_concurrent_streams_share_the_pool(engine: OpenAICompatibleEngine) -> None:
    async def one() -> tuple[list[tuple[str, str | None]], object]:
        return await collect(await engine.generate(chat()), 1)

    started_at = time.monotonic()
    results = await asyncio.gather(*(one() for _ in range(20)))
    assert all(choices == [("Hello world", "stop")] for choices, _ in results)
    assert time.monotonic() - started_at < 10
    assert engine.load().completed_total == 20


async def test_credentials_in_the_source_url_stay_out_of_messages() -> None:
    port = free_port()
    eng = get_entry("openai-compatible").create(make_spec(f"http://bob:hunter2@127.0.0.1:{port}/v1"))
    with pytest.raises(Unreachable) as info:
        await eng.start()
    assert f"http://127.0.0.1:{port}/v1/models" in info.value.message and "hunter2" not in info.value.message


async def test_a_client_that_does_not_stream_gets_one_upstream_body(engine: OpenAICompatibleEngine, upstream: FakeUpstream) -> None:
    """stream=False (the client wants the whole answer): the upstream is asked for one
    JSON body, and that body is translated like a stream of it."""
    await with_model(engine, "json")
    whole = dataclasses.replace(chat(n=2), stream=False)
    choices, usage = await collect(await engine.generate(whole), 2)
    body = upstream.seen.bodies[-1]
    assert body["stream"] is False and "stream_options" not in body
    assert choices == [("Hello world", "stop")] * 2 and usage.completion_tokens == 3
