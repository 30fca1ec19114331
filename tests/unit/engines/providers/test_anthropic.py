"""The anthropic engine: the Messages API body it builds (pure), and its wire against
``FakeAnthropic``, a loopback fake written from Anthropic's public API docs, not the
real service."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator

import pytest

from corral.core.engine import StructuredOutput, ToolCalling
from corral.core.errors import ConfigError, EngineError, InstanceLost, InvalidRequest, Overloaded, Unreachable
from corral.core.spec import ModelKind, ModelSpec
from corral.core.types import (
    ChatMessage,
    FinishReason,
    GenerationChunk,
    GenerationRequest,
    SamplingParams,
    Tool,
    ToolCall,
    ToolCallDelta,
    ToolChoice,
    ToolMode,
)
from corral.engines.anthropic.engine import AnthropicEngine
from corral.engines.anthropic.wire import messages_body
from corral.engines.catalog import get_entry
from corral.gateway.pipeline import collect
from tests.unit.engines.providers.fakes import TOOL_CALLS, WORDS, FakeAnthropic

KEY = "sk-ant-SECRET-777"
WEATHER = Tool("get_weather", "weather of a city", {"type": "object", "properties": {"city": {"type": "string"}}})
HISTORY = (
    ChatMessage("system", "be brief"),
    ChatMessage("user", "weather in Paris and the time?"),
    ChatMessage("assistant", "", tool_calls=(ToolCall("toolu_1", "get_weather", '{"city": "Paris"}'),
                                             ToolCall("toolu_2", "get_time", '{"tz": "Europe/Paris"}'))),
    ChatMessage("tool", "18C", tool_call_id="toolu_1"),
    ChatMessage("tool", "14:00", tool_call_id="toolu_2"),
    ChatMessage("user", "thanks"),
)


def req(messages: tuple[ChatMessage, ...] = (ChatMessage("user", "hi"),), **fields: object) -> GenerationRequest:
    sampling = {k: fields.pop(k) for k in list(fields) if k in SamplingParams.__dataclass_fields__}
    return GenerationRequest(request_id="r-1", model="claude", sampling=SamplingParams(**sampling),  # type: ignore[arg-type]
                             messages=messages, **fields)  # type: ignore[arg-type]


# -- the request body (pure) ---------------------------------------------------------------


def test_history_becomes_messages_api_turns() -> None:
    body = messages_body("claude-x", req(HISTORY, tools=(WEATHER,), stop=("END",), max_tokens=50, user="u-1"), 4096)
    assert body["system"] == "be brief" and body["max_tokens"] == 50 and body["stream"] is True
    assert body["stop_sequences"] == ["END"] and body["metadata"] == {"user_id": "u-1"}
    assert "temperature" not in body and "top_p" not in body  # the defaults are not sent
    assert body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "weather in Paris and the time?"}]},
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "toolu_2", "name": "get_time", "input": {"tz": "Europe/Paris"}},
        ]},
        {"role": "user", "content": [  # parallel results together, first, then the user's text
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C"},
            {"type": "tool_result", "tool_use_id": "toolu_2", "content": "14:00"},
            {"type": "text", "text": "thanks"},
        ]},
    ]
    assert body["tools"] == [{"name": "get_weather", "description": "weather of a city",
                              "input_schema": WEATHER.parameters}]
    assert "tool_choice" not in body  # auto is the API's default


@pytest.mark.parametrize(("choice", "parallel", "expected"), [
    (ToolChoice(ToolMode.AUTO), False, {"type": "auto", "disable_parallel_tool_use": True}),
    (ToolChoice(ToolMode.REQUIRED), None, {"type": "any"}),
    (ToolChoice(ToolMode.NONE), False, {"type": "none"}),
    (ToolChoice(ToolMode.NAMED, "get_weather"), None, {"type": "tool", "name": "get_weather"}),
])
def test_tool_choice_mapping(choice: object, parallel: bool | None, expected: dict[str, object]) -> None:
    body = messages_body("m", req(tools=(WEATHER,), tool_choice=choice, parallel_tool_calls=parallel), 10)
    assert body["tool_choice"] == expected


def test_sampling_mapping_and_refusals() -> None:
    body = messages_body("m", req(temperature=1.7), 128)
    assert body["temperature"] == 1.0 and body["max_tokens"] == 128  # clamped to [0, 1]; the default limit
    assert messages_body("m", req(top_p=0.5), 128)["top_p"] == 0.5
    assert messages_body("m", req(top_k=40), 128)["top_k"] == 40  # native
    assert "top_k" not in messages_body("m", req(), 128)
    refused = [(req(n=2), "n"), (req(seed=1), "seed"), (req(presence_penalty=0.5), "presence_penalty"),
               (req(ignore_eos=True), "ignore_eos"), (req(repetition_penalty=1.1), "repetition_penalty"),
               (GenerationRequest("r", "claude", SamplingParams(), prompt="Once"), "prompt")]
    for request, param in refused:
        with pytest.raises(InvalidRequest) as info:
            messages_body("m", request, 10)
        assert info.value.param == param and info.value.code == "unsupported_parameter"
    bad_args = (ChatMessage("user", "x"), ChatMessage("assistant", "", tool_calls=(ToolCall("t", "f", "[1]"),)))
    with pytest.raises(InvalidRequest) as info:
        messages_body("m", req(bad_args), 10)
    assert info.value.param == "messages[1].tool_calls[0].function.arguments"


# -- the wire, against the fake ---------------------------------------------------------------


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeAnthropic]:
    with FakeAnthropic(KEY) as server:
        yield server  # type: ignore[misc]


@pytest.fixture(autouse=True)
def _key(fake: FakeAnthropic, monkeypatch: pytest.MonkeyPatch) -> None:
    fake.reset()
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)


def make(fake: FakeAnthropic, source: str = "claude-ok", **options: object) -> AnthropicEngine:
    engine = get_entry("anthropic").create(ModelSpec(name="claude", kind=ModelKind.LLM, engine="anthropic", source=source,
                                                     options={"base_url": fake.base_url, **options}))
    assert isinstance(engine, AnthropicEngine)
    return engine


@pytest.fixture
async def engine(fake: FakeAnthropic) -> AsyncIterator[AnthropicEngine]:
    eng = make(fake)
    await eng.start()
    yield eng
    await eng.stop()


def test_capabilities(fake: FakeAnthropic) -> None:
    eng = make(fake)
    assert isinstance(eng, ToolCalling) and not isinstance(eng, StructuredOutput)  # no JSON mode to honour


async def test_streams_text_deltas_with_usage(engine: AnthropicEngine, fake: FakeAnthropic) -> None:
    items = [i async for i in await engine.generate(req(max_tokens=20))]
    assert [i.text for i in items if isinstance(i, GenerationChunk) and i.text] == list(WORDS)
    assert items[-2] == GenerationChunk(0, "", FinishReason.STOP)
    end = items[-1]
    assert (end.usage.prompt_tokens, end.usage.completion_tokens) == (14, 3)  # type: ignore[union-attr]  # cached tokens count
    seen = fake.last
    assert seen.method == "POST" and seen.path == "/v1/messages"
    assert seen.headers["x-api-key"] == KEY and seen.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in seen.headers
    assert fake.received[0].path == "/v1/models"  # the start-time check
    assert engine.load().completed_total == 1 and engine.load().in_flight == 0


@pytest.mark.parametrize(("model", "stop", "finish"), [("claude-ok", ("END",), "stop"), ("claude-max", (), "length")])
async def test_stop_reasons(fake: FakeAnthropic, engine: AnthropicEngine, model: str, stop: tuple[str, ...], finish: str) -> None:
    engine.upstream_model = model
    choices, _ = await collect(await engine.generate(req(stop=stop)), 1)
    assert choices[0].finish == finish and choices[0].text == "Hello world"


async def test_tool_use_blocks_become_tool_call_deltas(engine: AnthropicEngine, fake: FakeAnthropic) -> None:
    engine.upstream_model = "claude-tools"
    items = [i async for i in await engine.generate(req(tools=(WEATHER,)))]
    deltas = [d for i in items if isinstance(i, GenerationChunk) for d in i.tool_calls]
    assert deltas[0] == ToolCallDelta(0, "toolu_1", "get_weather", "")
    assert deltas[1].index == 0 and deltas[1].id is None and deltas[1].arguments  # a fragment
    choices, usage = await collect(await engine.generate(req(tools=(WEATHER,))), 1)
    assert choices[0].text == "Let me check." and choices[0].finish == "tool_calls" and usage.completion_tokens == 7
    assert [(c.id, c.name, c.arguments) for c in choices[0].tool_calls] == [
        (f"toolu_{i}", name, args) for i, (name, args) in enumerate(TOOL_CALLS, start=1)
    ]
    # the next turn, with the results, is accepted by the fake's checks of tool_result blocks
    engine.upstream_model = "claude-ok"
    choices, _ = await collect(await engine.generate(req(HISTORY, tools=(WEATHER,))), 1)
    assert choices[0].text == "Hello world"
    assert fake.last.body["messages"][2]["content"][0]["type"] == "tool_result"


async def test_a_whole_message_answer(engine: AnthropicEngine) -> None:
    engine.upstream_model = "json"
    choices, usage = await collect(await engine.generate(req()), 1)
    assert (choices[0].text, choices[0].finish, usage.prompt_tokens, usage.completion_tokens) == ("Hello world", "stop", 12, 3)


# -- errors -------------------------------------------------------------------------------------


async def test_401_is_upstream_auth_without_the_key(engine: AnthropicEngine, caplog: pytest.LogCaptureFixture) -> None:
    engine.upstream_model = "err401"  # the fake echoes the key
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(EngineError) as info:
            await engine.generate(req())
    err = info.value
    assert err.code == "upstream_auth" and err.status == 502 and "HTTP 401" in err.message
    assert "ANTHROPIC_API_KEY" in err.message
    assert KEY not in str(err) and KEY not in repr(err.__dict__) and KEY not in caplog.text


@pytest.mark.parametrize("model", ["err429", "err529"])
async def test_rate_limit_and_overloaded_are_overloaded(engine: AnthropicEngine, model: str) -> None:
    engine.upstream_model = model
    with pytest.raises(Overloaded) as info:
        await engine.generate(req())
    assert f"HTTP {model[3:]}" in info.value.message
    assert info.value.retry_after == (7.0 if model == "err429" else 1.0)


async def test_other_statuses(engine: AnthropicEngine) -> None:
    engine.upstream_model = "err500"
    with pytest.raises(Unreachable, match="HTTP 500"):
        await engine.generate(req())
    engine.upstream_model = "err404"
    with pytest.raises(InvalidRequest) as info:
        await engine.generate(req())
    assert info.value.code == "model_not_found" and "'err404'" in info.value.message
    engine.upstream_model = "err400"
    with pytest.raises(InvalidRequest, match="at least one message is required"):
        await engine.generate(req())
    assert engine.load().in_flight == 0


async def test_errors_after_the_stream_started(engine: AnthropicEngine) -> None:
    engine.upstream_model = "error-event"
    with pytest.raises(Overloaded, match="overloaded_error"):
        await collect(await engine.generate(req()), 1)
    engine.upstream_model = "drop"
    with pytest.raises(InstanceLost, match="mid-stream"):
        await collect(await engine.generate(req()), 1)
    assert engine.load().in_flight == 0


async def test_read_timeout_is_unreachable(fake: FakeAnthropic) -> None:
    eng = make(fake, "hang", timeout_s=0.3, verify_on_start=False)
    await eng.start()
    try:
        with pytest.raises(Unreachable, match="Timeout"):
            await eng.generate(req())
    finally:
        await eng.stop()


async def test_closing_the_stream_closes_the_connection(engine: AnthropicEngine, fake: FakeAnthropic) -> None:
    engine.upstream_model = "slow"
    stream = await engine.generate(req())
    assert (await anext(stream)).text == "x"  # type: ignore[union-attr]
    await stream.aclose()
    assert await asyncio.to_thread(fake.disconnected.wait, 5)
    assert engine.load().in_flight == 0 and engine.load().cancelled_total == 1


async def test_missing_key_and_bad_options(fake: FakeAnthropic, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    with pytest.raises(ConfigError, match="set the environment variable ANTHROPIC_API_KEY"):
        await make(fake).start()
    assert fake.received == []
    with pytest.raises(ConfigError, match="sets X-Api-Key, which the engine sets"):
        make(fake, extra_headers={"X-Api-Key": "k"})
    with pytest.raises(ConfigError, match="chat"):
        get_entry("anthropic").create(ModelSpec(name="e", kind=ModelKind.EMBEDDING, engine="anthropic", source="x", options={}))
    with pytest.raises(ValueError):
        get_entry("anthropic").options_model().model_validate({"default_max_tokens": 0})
