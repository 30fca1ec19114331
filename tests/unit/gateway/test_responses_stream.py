"""The Responses API's event sequence for generation streams the real engines do not
produce on demand: text then tool calls in one answer, nothing at all, a failure."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from corral.core.errors import InstanceLost
from corral.core.types import FinishReason, GenerationChunk, GenerationEnd, ToolCallDelta, Usage
from corral.gateway.openai.responses_stream import sse_events

HEAD = {"id": "resp_1", "object": "response", "status": "in_progress", "output": []}


async def _events(items: list[GenerationChunk | GenerationEnd | Exception]) -> list[dict[str, Any]]:
    async def stream() -> AsyncIterator[GenerationChunk | GenerationEnd]:
        for item in items:
            if isinstance(item, Exception):
                raise item
            yield item

    async def finish(output: list[dict[str, Any]], reason: str | None, used: Usage) -> dict[str, Any]:
        return {**HEAD, "status": "completed", "output": output, "finish": reason, "tokens": used.completion_tokens}

    out = []
    async for frame in sse_events(stream(), HEAD, finish):
        name, data = frame.decode().strip().split("\n")
        event = json.loads(data.removeprefix("data: "))
        assert name == f"event: {event['type']}"
        out.append(event)
    assert [e["sequence_number"] for e in out] == list(range(len(out)))
    return out


async def test_text_then_tool_calls_are_items_in_order() -> None:
    events = await _events([
        GenerationChunk(0, "Let me "), GenerationChunk(0, "check."),
        GenerationChunk(0, "", tool_calls=(ToolCallDelta(0, "call_a", "get_weather", '{"city"'),)),
        GenerationChunk(0, "", tool_calls=(ToolCallDelta(0, None, None, ': "Paris"}'),)),
        GenerationChunk(0, "", tool_calls=(ToolCallDelta(1, "call_b", "get_time", "{}"),)),
        GenerationChunk(0, "", FinishReason.TOOL_CALLS), GenerationEnd(Usage(5, 7)),
    ])
    kinds = [e["type"] for e in events]
    assert kinds == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.content_part.added", "response.output_text.delta",
        "response.output_text.delta", "response.output_text.done", "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.delta", "response.function_call_arguments.done", "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.done", "response.output_item.done",
        "response.completed",
    ]
    final = events[-1]["response"]
    message, weather, clock = final["output"]
    assert message["content"][0]["text"] == "Let me check." and message["status"] == "completed"
    assert (weather["call_id"], weather["name"], weather["arguments"]) == ("call_a", "get_weather", '{"city": "Paris"}')
    assert (clock["call_id"], clock["arguments"]) == ("call_b", "{}")
    assert [e["output_index"] for e in events if e["type"] == "response.output_item.added"] == [0, 1, 2]
    assert final["finish"] == "tool_calls" and final["tokens"] == 7


async def test_an_answer_of_nothing_is_one_empty_message() -> None:
    events = await _events([GenerationChunk(0, "", FinishReason.STOP), GenerationEnd(Usage(3, 1))])
    assert [e["type"] for e in events][2:] == [
        "response.output_item.added", "response.content_part.added", "response.output_text.done",
        "response.content_part.done", "response.output_item.done", "response.completed",
    ]
    assert events[-1]["response"]["output"][0]["content"][0]["text"] == ""


async def test_a_failure_midway_is_response_failed_with_what_was_done() -> None:
    events = await _events([GenerationChunk(0, "Hel"), InstanceLost("the worker went away")])
    assert events[-1]["type"] == "response.failed"
    failed = events[-1]["response"]
    assert failed["status"] == "failed" and failed["error"] == {"code": "server_error", "message": "the worker went away"}
    assert failed["output"] == []  # the message was not finished
    assert not any(e["type"] == "response.completed" for e in events)
