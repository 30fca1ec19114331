"""The Anthropic front-end's translation, rendering and errors, on the internal types
(the SDK against real servers is in tests/integration/test_anthropic_api.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson
import pytest
from pydantic import ValidationError

from corral.core.errors import EngineError, InvalidRequest, InstanceLost, ModelNotFound, Overloaded, Unavailable
from corral.core.types import FinishReason, GenerationChunk, GenerationEnd, ToolCallDelta, ToolMode, Usage
from corral.gateway.anthropic import render, translate
from corral.gateway.anthropic.errors import render_error
from corral.protocol.anthropic.requests import MessagesRequest


def _req(**fields: object) -> MessagesRequest:
    body = {"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}], **fields}
    return MessagesRequest.model_validate_json(orjson.dumps(body))


def test_turns_tools_and_sampling_become_the_internal_request() -> None:
    req = _req(
        system=[{"type": "text", "text": "be brief"}, {"type": "text", "text": "be kind"}],
        messages=[
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": [{"type": "text", "text": "Let me check."},
                                               {"type": "tool_use", "id": "toolu_1", "name": "w", "input": {"city": "Paris"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "18C"}]},
                                         {"type": "text", "text": "thanks"}]},
        ],
        tools=[{"name": "w", "input_schema": {"type": "object"}}], tool_choice={"type": "tool", "name": "w", "disable_parallel_tool_use": True},
        temperature=0.5, top_k=3, stop_sequences=["\n\n"], metadata={"user_id": "u1"},
    )
    gen = translate.messages(req, "rid", "sess", None)
    assert [(m.role, m.content, m.tool_call_id) for m in gen.messages or ()] == [
        ("system", "be brief\n\nbe kind", None), ("user", "weather?", None), ("assistant", "Let me check.", None),
        ("tool", "18C", "toolu_1"), ("user", "thanks", None),
    ]
    assert gen.messages is not None and gen.messages[2].tool_calls[0].arguments == '{"city":"Paris"}'
    assert gen.tools[0].parameters == {"type": "object"} and gen.tool_choice is not None
    assert (gen.tool_choice.mode, gen.tool_choice.name, gen.parallel_tool_calls) == (ToolMode.NAMED, "w", False)
    s = gen.sampling
    assert (s.max_tokens, s.temperature, s.top_p, s.top_k, s.stop, s.unset) == (8, 0.5, 1.0, 3, ("\n\n",), frozenset({"top_p"}))
    assert (gen.user, gen.session, gen.stream) == ("u1", "sess", False)


@pytest.mark.parametrize(("fields", "param"), [
    ({"messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]}, "messages[0].content[0]"),
    ({"messages": [{"role": "user", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}]}]}, "messages[0].content[0]"),
    ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools[0].type"),
    ({"thinking": {"type": "enabled", "budget_tokens": 1024}}, "thinking"),
    ({"mcp_servers": []}, "mcp_servers"),
])
def test_what_no_engine_honours_is_refused_by_name(fields: dict[str, object], param: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        translate.messages(_req(**fields), "rid", None, None)
    assert err.value.param == param


@pytest.mark.parametrize("fields", [
    {"max_tokens": 0}, {"temperature": 1.5}, {"top_k": -1}, {"stop_sequences": [""]},
    {"tool_choice": {"type": "any"}}, {"tool_choice": {"type": "tool", "name": "nope"}, "tools": [{"name": "f", "input_schema": {}}]},
    {"messages": [{"role": "system", "content": "x"}]}, {"messages": [{"role": "user", "content": [{"type": "text"}]}]},
])
def test_the_wire_refuses_malformed_fields(fields: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        _req(**fields)


async def _items(*items: GenerationChunk | GenerationEnd) -> AsyncIterator[GenerationChunk | GenerationEnd]:
    for item in items:
        yield item


def _events(raw: bytes) -> list[tuple[str, dict[str, object]]]:
    out = []
    for block in raw.decode().strip().split("\n\n"):
        name, data = block.split("\n")
        out.append((name.removeprefix("event: "), orjson.loads(data.removeprefix("data: "))))
    return out


async def test_a_stream_of_text_then_tool_calls() -> None:
    stream = _items(
        GenerationChunk(0, "Let me"), GenerationChunk(0, " check."),
        GenerationChunk(0, "", tool_calls=(ToolCallDelta(0, "toolu_1", "w", '{"ci'),)),
        GenerationChunk(0, "", tool_calls=(ToolCallDelta(0, arguments='ty": 1}'),)),
        GenerationChunk(0, "", tool_calls=(ToolCallDelta(1, "toolu_2", "t", ""),)),
        GenerationChunk(0, "", FinishReason.TOOL_CALLS), GenerationEnd(Usage(12, 7)),
    )
    events = _events(b"".join([b async for b in render.sse_stream(stream, id_="msg_1", model="m")]))
    assert [e for e, _ in events] == [
        "message_start", "content_block_start", "ping", "content_block_delta", "content_block_delta",
        "content_block_stop", "content_block_start", "content_block_delta", "content_block_delta",
        "content_block_stop", "content_block_start", "content_block_stop", "message_delta", "message_stop",
    ]
    assert events[6][1]["content_block"] == {"type": "tool_use", "id": "toolu_1", "name": "w", "input": {}}
    assert [d["delta"]["partial_json"] for e, d in events[7:9]] == ['{"ci', 'ty": 1}']  # type: ignore[index]
    assert events[-2][1]["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}
    assert events[-2][1]["usage"] == {"input_tokens": 12, "output_tokens": 7}


async def test_a_stop_sequence_and_a_failure_mid_stream() -> None:
    stopped = _items(GenerationChunk(0, "Hi", FinishReason.STOP, stop_sequence="\n"), GenerationEnd(Usage(3, 1)))
    events = _events(b"".join([b async for b in render.sse_stream(stopped, id_="msg_1", model="m")]))
    assert events[-2][1]["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": "\n"}

    async def broken() -> AsyncIterator[GenerationChunk | GenerationEnd]:
        yield GenerationChunk(0, "Hel")
        raise InstanceLost("the worker went away")

    events = _events(b"".join([b async for b in render.sse_stream(broken(), id_="msg_1", model="m")]))
    assert events[-1] == ("error", {"type": "error", "error": {"type": "api_error", "message": "the worker went away"}})


@pytest.mark.parametrize(("exc", "status", "kind"), [
    (InvalidRequest("bad", param="top_k"), 400, "invalid_request_error"),
    (ModelNotFound("the model 'x' does not exist", param="model"), 404, "not_found_error"),
    (Overloaded("full", retry_after=3), 529, "overloaded_error"),
    (Unavailable("loading"), 529, "overloaded_error"),
    (EngineError("boom"), 500, "api_error"),
    (InstanceLost("gone"), 503, "api_error"),
])
def test_errors_in_anthropics_format(exc: Exception, status: int, kind: str) -> None:
    response = render_error(exc)  # type: ignore[arg-type]
    body = orjson.loads(response.body)
    assert response.status_code == status and body["type"] == "error" and body["error"]["type"] == kind
    if status == 529:
        assert response.headers["retry-after"]
    if isinstance(exc, InvalidRequest):
        assert body["error"]["message"] == "top_k: bad"  # Anthropic's error has no param: the message names it
