"""Tool calls and response_format through the openai-compatible engine, against the
loopback fake upstream: what goes upstream, and the deltas that come back."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from corral.core.engine import StructuredOutput, ToolCalling
from corral.core.types import (
    ChatMessage,
    FinishReason,
    GenerationChunk,
    GenerationRequest,
    SamplingParams,
    Tool,
    ToolCall,
    ToolChoice,
    ToolMode,
)
from corral.engines.catalog import get_entry
from corral.engines.openai_compatible.engine import OpenAICompatibleEngine
from corral.gateway.pipeline import collect
from corral.core.spec import ModelKind, ModelSpec
from tests.unit.engines.openai_compatible.fake_upstream import KEY, TOOL_CALLS, FakeUpstream

WEATHER = Tool("get_weather", parameters={"type": "object"})


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream(require_key=KEY) as fake:
        yield fake


@pytest.fixture
async def engine(upstream: FakeUpstream) -> AsyncIterator[OpenAICompatibleEngine]:
    spec = ModelSpec(name="agent", kind=ModelKind.LLM, engine="openai-compatible", source=upstream.url,
                     options={"api_key": KEY, "upstream_model": "tools"})
    eng = get_entry("openai-compatible").create(spec)
    assert isinstance(eng, OpenAICompatibleEngine)
    await eng.start()
    yield eng
    await eng.stop()


def request(**fields: object) -> GenerationRequest:
    history = (
        ChatMessage("user", "weather in Paris?"),
        ChatMessage("assistant", "", tool_calls=(ToolCall("call_9", "get_weather", '{"city": "Paris"}'),)),
        ChatMessage("tool", "18C, sunny", tool_call_id="call_9"),
    )
    return GenerationRequest(request_id="r-1", model="agent", sampling=SamplingParams(), messages=history, **fields)  # type: ignore[arg-type]


def test_declares_both_capabilities(engine: OpenAICompatibleEngine) -> None:
    assert isinstance(engine, ToolCalling) and isinstance(engine, StructuredOutput)


async def test_tools_and_history_go_upstream_as_given(engine: OpenAICompatibleEngine, upstream: FakeUpstream) -> None:
    req = request(tools=(WEATHER,), tool_choice=ToolChoice(ToolMode.NAMED, "get_weather"), parallel_tool_calls=False)
    await collect(await engine.generate(req), 1)
    body = upstream.seen.bodies[-1]
    assert body["tools"] == [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    assert body["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert body["parallel_tool_calls"] is False
    assert body["messages"][1] == {
        "role": "assistant", "content": None,
        "tool_calls": [{"id": "call_9", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}],
    }
    assert body["messages"][2] == {"role": "tool", "content": "18C, sunny", "tool_call_id": "call_9"}
    assert "response_format" not in body


async def test_streamed_tool_call_fragments_are_reassembled(engine: OpenAICompatibleEngine) -> None:
    items = [i async for i in await engine.generate(request(tools=(WEATHER,)))]
    deltas = [d for i in items if isinstance(i, GenerationChunk) for d in i.tool_calls]
    assert deltas[0].id == "call_0" and deltas[0].name == "get_weather"
    assert len(deltas) == 6  # per call: a head, then two argument fragments
    assert [i.finish_reason for i in items if isinstance(i, GenerationChunk) and i.finish_reason] == [FinishReason.TOOL_CALLS]
    choices, usage = await collect(await engine.generate(request(tools=(WEATHER,))), 1)
    assert choices[0].finish == "tool_calls" and choices[0].text == ""
    assert [(c.id, c.name, c.arguments) for c in choices[0].tool_calls] == [
        (f"call_{i}", name, args) for i, (name, args) in enumerate(TOOL_CALLS)
    ]
    assert usage.completion_tokens == 7


async def test_whole_answer_tool_calls(engine: OpenAICompatibleEngine) -> None:
    engine.upstream_model = "tools-json"
    choices, _ = await collect(await engine.generate(request(tools=(WEATHER,))), 1)
    assert [c.name for c in choices[0].tool_calls] == ["get_weather", "get_time"]
    assert choices[0].finish == "tool_calls"


async def test_response_format_goes_upstream(engine: OpenAICompatibleEngine, upstream: FakeUpstream) -> None:
    engine.upstream_model = "ok"
    schema = {"type": "json_schema", "json_schema": {"name": "answer", "schema": {"type": "object"}, "strict": True}}
    await collect(await engine.generate(request(response_format=schema)), 1)
    assert upstream.seen.bodies[-1]["response_format"] == schema
