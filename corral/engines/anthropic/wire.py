"""Anthropic's Messages API as Corral speaks it: the request body built from a
``GenerationRequest``, and the streamed events turned back into deltas.

Written from Anthropic's public API reference (``POST /v1/messages``, its streaming
events and its tool-use blocks). What OpenAI's API has and the Messages API does not
(``n > 1``, ``seed``, penalties, the repetition penalty, text completion) is refused with a 400 naming the
field, never silently dropped.
"""

from __future__ import annotations

from typing import Any

import orjson

from corral.core.errors import InvalidRequest
from corral.core.types import ChatMessage, FinishReason, GenerationChunk, GenerationRequest, Tool, ToolCallDelta, ToolChoice, ToolMode, Usage

TEMPERATURE_MAX = 1.0  # the Messages API takes [0, 1] where OpenAI takes [0, 2]: clamped

FINISH = {
    "end_turn": FinishReason.STOP,
    "stop_sequence": FinishReason.STOP,
    "pause_turn": FinishReason.STOP,
    "refusal": FinishReason.STOP,
    "max_tokens": FinishReason.LENGTH,
    "model_context_window_exceeded": FinishReason.LENGTH,
    "tool_use": FinishReason.TOOL_CALLS,
}

_PROMPT_USAGE = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
_TOOL_CHOICE = {ToolMode.AUTO: "auto", ToolMode.REQUIRED: "any", ToolMode.NONE: "none", ToolMode.NAMED: "tool"}


def _refused(message: str, param: str) -> InvalidRequest:
    return InvalidRequest(message, param=param, code="unsupported_parameter")


def messages_body(model: str, request: GenerationRequest, default_max_tokens: int) -> dict[str, Any]:
    """The ``POST /v1/messages`` body (streamed when the client streams)."""
    if request.messages is None:
        raise _refused("Anthropic's Messages API has no text completion; use /v1/chat/completions", "prompt")
    s = request.sampling
    if s.n != 1:
        raise _refused(f"Anthropic's Messages API returns one choice per request (n={s.n})", "n")
    for name, used in (
        ("seed", s.seed is not None), ("presence_penalty", bool(s.presence_penalty)),
        ("frequency_penalty", bool(s.frequency_penalty)), ("ignore_eos", s.ignore_eos),
        ("repetition_penalty", s.repetition_penalty != 1.0),
    ):
        if used:
            raise _refused(f"Anthropic's Messages API does not support {name}", name)
    system, turns = _turns(request.messages)
    body: dict[str, Any] = {"model": model, "messages": turns, "max_tokens": s.max_tokens or default_max_tokens}
    if system:
        body["system"] = system
    # sent only when asked for: recent models refuse temperature and top_p together
    if s.temperature != 1.0:
        body["temperature"] = min(s.temperature, TEMPERATURE_MAX)
    if s.top_p != 1.0:
        body["top_p"] = s.top_p
    if s.top_k:  # native in the Messages API
        body["top_k"] = s.top_k
    if s.stop:
        body["stop_sequences"] = list(s.stop)
    if request.tools:
        body["tools"] = [_tool(t) for t in request.tools]
        choice = _tool_choice(request.tool_choice)
        if request.parallel_tool_calls is False and choice.get("type") != "none":
            choice["disable_parallel_tool_use"] = True
        if choice != {"type": "auto"}:  # the API's default
            body["tool_choice"] = choice
    if request.user:
        body["metadata"] = {"user_id": request.user}
    body["stream"] = request.stream  # not streamed: one Message, replayed as its events
    return body


def _turns(messages: tuple[ChatMessage, ...]) -> tuple[str, list[dict[str, Any]]]:
    """The system prompt (top level in the Messages API) and the alternating turns:
    assistant tool calls become ``tool_use`` blocks, tool answers ``tool_result`` blocks
    of a user turn, and consecutive turns of one role are merged (the API wants the
    results of parallel calls together, first in their user turn)."""
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    for i, m in enumerate(messages):
        if m.role in ("system", "developer"):
            system.append(m.content)
            continue
        if m.role == "tool":
            role = "user"
            blocks: list[dict[str, Any]] = [
                {"type": "tool_result", "tool_use_id": m.tool_call_id, "content": m.content}
            ]
        else:
            role = "assistant" if m.role == "assistant" else "user"
            blocks = [{"type": "text", "text": m.content}] if m.content else []  # empty text blocks are refused
            for j, call in enumerate(m.tool_calls):
                arguments = _arguments(call.arguments, i, j)
                blocks.append({"type": "tool_use", "id": call.id, "name": call.name, "input": arguments})
        if not blocks:
            continue
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    return "\n\n".join(system), turns


def _arguments(text: str, i: int, j: int) -> dict[str, Any]:
    try:
        value = orjson.loads(text) if text.strip() else {}
    except orjson.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        raise InvalidRequest(
            "tool call arguments must be a JSON object for Anthropic's Messages API",
            param=f"messages[{i}].tool_calls[{j}].function.arguments",
        )
    return value


def _tool(tool: Tool) -> dict[str, Any]:
    out: dict[str, Any] = {"name": tool.name, "input_schema": tool.parameters or {"type": "object"}}
    if tool.description:
        out["description"] = tool.description
    return out


def _tool_choice(choice: ToolChoice | None) -> dict[str, Any]:
    if choice is None:
        return {"type": "auto"}
    out = {"type": _TOOL_CHOICE[choice.mode]}
    if choice.mode is ToolMode.NAMED:
        out["name"] = str(choice.name)
    return out


class EventTranslator:
    """Feeds on the stream's events (``message_start``, ``content_block_*``,
    ``message_delta``, ``message_stop``, ``ping``) and returns the deltas they carry.
    Content blocks are numbered across text and tool use; tool calls are numbered
    among themselves, as OpenAI's ``tool_calls[].index`` is. Errors are the caller's."""

    def __init__(self) -> None:
        self.finish: FinishReason | None = None
        self.stopped = False
        self._input = self._output = 0
        self._calls: dict[int, int] = {}  # content block index -> tool call index
        self._has_arguments: set[int] = set()  # calls whose arguments arrived (else they are {})

    def usage(self) -> Usage:
        return Usage(self._input, self._output)

    def _count(self, usage: Any) -> None:
        if not isinstance(usage, dict):
            return
        if any(k in usage for k in _PROMPT_USAGE):
            # cached prompt tokens are prompt tokens too, as OpenAI counts them
            self._input = sum(_int(usage.get(k)) for k in _PROMPT_USAGE)
        if "output_tokens" in usage:
            self._output = _int(usage["output_tokens"])  # cumulative

    def feed(self, event: dict[str, Any]) -> GenerationChunk | None:
        kind = event.get("type")
        if kind == "message_start":
            message = event.get("message")
            self._count(message.get("usage") if isinstance(message, dict) else None)
        elif kind == "content_block_start":
            return self._start(_int(event.get("index")), event.get("content_block"))
        elif kind == "content_block_delta":
            return self._delta(_int(event.get("index")), event.get("delta"))
        elif kind == "content_block_stop":
            index = _int(event.get("index"))
            call = self._calls.get(index)
            if call is not None and call not in self._has_arguments:
                return GenerationChunk(0, "", tool_calls=(ToolCallDelta(call, arguments="{}"),))
        elif kind == "message_delta":
            self._count(event.get("usage"))
            delta = event.get("delta")
            reason = delta.get("stop_reason") if isinstance(delta, dict) else None
            if reason and self.finish is None:
                self.finish = FINISH.get(str(reason), FinishReason.STOP)
                stop = delta.get("stop_sequence") if reason == "stop_sequence" else None  # type: ignore[union-attr]
                return GenerationChunk(0, "", self.finish, stop_sequence=stop if isinstance(stop, str) else None)
        elif kind == "message_stop":
            self.stopped = True
        # ping, and event types added after this was written, carry nothing for us
        return None

    def _start(self, index: int, block: Any) -> GenerationChunk | None:
        if not isinstance(block, dict):
            return None
        if block.get("type") == "text":
            text = block.get("text")
            return GenerationChunk(0, text) if isinstance(text, str) and text else None
        if block.get("type") == "tool_use":
            call = self._calls[index] = len(self._calls)
            given = block.get("input")
            arguments = ""
            if isinstance(given, dict) and given:  # a whole (not streamed) call
                arguments = orjson.dumps(given).decode()
                self._has_arguments.add(call)
            head = ToolCallDelta(call, str(block.get("id") or ""), str(block.get("name") or ""), arguments)
            return GenerationChunk(0, "", tool_calls=(head,))
        return None  # thinking blocks and the like are not part of an OpenAI answer

    def _delta(self, index: int, delta: Any) -> GenerationChunk | None:
        if not isinstance(delta, dict):
            return None
        if delta.get("type") == "text_delta" and isinstance(delta.get("text"), str) and delta["text"]:
            return GenerationChunk(0, delta["text"])
        call = self._calls.get(index)
        if delta.get("type") == "input_json_delta" and call is not None:
            part = delta.get("partial_json")
            if isinstance(part, str) and part:
                self._has_arguments.add(call)
                return GenerationChunk(0, "", tool_calls=(ToolCallDelta(call, arguments=part),))
        return None


def whole_message_events(message: Any) -> list[dict[str, Any]]:
    """A non-streamed Message (from a proxy that ignored ``stream: true``) as the events
    a stream of it would have carried."""
    if not isinstance(message, dict):
        raise ValueError("the answer is not a message object")
    usage = message.get("usage") or {}
    events: list[dict[str, Any]] = [{"type": "message_start", "message": {"usage": usage}}]
    for i, block in enumerate(message.get("content") or ()):
        events.append({"type": "content_block_start", "index": i, "content_block": block})
        events.append({"type": "content_block_stop", "index": i})
    delta = {"stop_reason": message.get("stop_reason"), "stop_sequence": message.get("stop_sequence")}
    events.append({"type": "message_delta", "delta": delta, "usage": usage})
    events.append({"type": "message_stop"})
    return events


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
