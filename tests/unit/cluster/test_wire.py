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
    ToolCall,
    ToolCallDelta,
    Usage,
)


def test_generation_request_round_trip() -> None:
    req = GenerationRequest(
        request_id="r", model="m", sampling=SamplingParams(max_tokens=5, temperature=0.2, stop=("x",), seed=3, n=2),
        messages=(
            ChatMessage("user", "hi", name="ann"),
            ChatMessage("assistant", "", tool_calls=(ToolCall("c1", "f", '{"a": 1}'),)),
            ChatMessage("tool", "ok", tool_call_id="c1"),
        ),
        user="u", session="s", traceparent="00-" + "a" * 32 + "-" + "b" * 16 + "-01",
        tools=({"type": "function", "function": {"name": "f"}},), tool_choice="required", parallel_tool_calls=False,
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
