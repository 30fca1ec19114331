"""The internal worker protocol keeps every field of a generation across the hop."""

from __future__ import annotations

from corral.cluster import wire
from corral.core.types import (
    ChatMessage,
    FinishReason,
    GenerationChunk,
    GenerationEnd,
    GenerationRequest,
    SamplingParams,
    Tool,
    ToolCall,
    ToolCallDelta,
    ToolChoice,
    ToolMode,
    Usage,
)


def test_generation_request_round_trip() -> None:
    req = GenerationRequest(
        request_id="r", model="m", sampling=SamplingParams(max_tokens=5, temperature=0.2, stop=("x",), seed=3, n=2, top_k=40, repetition_penalty=1.1),
        messages=(
            ChatMessage("user", "hi", name="ann"),
            ChatMessage("assistant", "", tool_calls=(ToolCall("c1", "f", '{"a": 1}'),)),
            ChatMessage("tool", "ok", tool_call_id="c1"),
        ),
        user="u", session="s", traceparent="00-" + "a" * 32 + "-" + "b" * 16 + "-01",
        tools=(Tool("f", "does f", {"type": "object"}, True),), tool_choice=ToolChoice(ToolMode.REQUIRED),
        parallel_tool_calls=False,
        response_format={"type": "json_object"},
    )
    assert wire.decode_generation(wire.encode_generation(req)) == req


def test_items_round_trip() -> None:
    items = [
        GenerationChunk(0, "hel"),
        GenerationChunk(1, "", None, (ToolCallDelta(0, "c1", "f", ""), ToolCallDelta(0, None, None, '{"a"'))),
        GenerationChunk(1, "", FinishReason.TOOL_CALLS),
        GenerationEnd(Usage(3, 4)),
    ]
    assert [wire.decode_item(wire.encode_item(i)) for i in items] == items


def test_errors_are_rebuilt_as_the_same_corral_error() -> None:
    from corral.core.errors import EngineError, InstanceLost, Overloaded, Unavailable

    # an engine whose upstream was lost mid-generation: the gateway must see InstanceLost
    # (a whole answer is then retried on another instance), not a plain 503
    for exc in (InstanceLost("lost the upstream mid-stream"), Unavailable("draining"), EngineError("boom"),
                Overloaded("full", retry_after=2.0)):
        body = wire.error_to_wire(exc)
        rebuilt = wire.error_from_wire(exc.status, body)
        assert type(rebuilt) is type(exc), (exc, rebuilt)
        assert (rebuilt.message, rebuilt.code, rebuilt.status) == (exc.message, exc.code, exc.status)
