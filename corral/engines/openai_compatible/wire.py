"""The OpenAI wire format as an upstream speaks it: request bodies, SSE parsing, finish
reasons and error messages. Pure functions, shared by the engine's streams."""

from __future__ import annotations

import array
import base64
import email.utils
import logging
import sys
import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from typing import Any

import orjson

from corral.core.errors import (
    EngineError,
)
from corral.core.types import (
    ChatMessage,
    FinishReason,
    GenerationRequest,
    Tool,
    ToolCallDelta,
    ToolChoice,
    ToolMode,
)

log = logging.getLogger(__name__)

MAX_MESSAGE = 1000  # characters of an upstream error message passed on

FINISH = {
    "stop": FinishReason.STOP,
    "eos": FinishReason.STOP,
    "eos_token": FinishReason.STOP,
    "stop_sequence": FinishReason.STOP,
    "end_turn": FinishReason.STOP,
    "tool_calls": FinishReason.TOOL_CALLS,
    "function_call": FinishReason.TOOL_CALLS,
    "content_filter": FinishReason.STOP,
    "length": FinishReason.LENGTH,
    "max_tokens": FinishReason.LENGTH,
    "model_length": FinishReason.LENGTH,
    "abort": FinishReason.CANCELLED,
    "cancelled": FinishReason.CANCELLED,
}

DONE = object()  # the ``data: [DONE]`` sentinel


async def sse(lines: AsyncIterator[bytes]) -> AsyncGenerator[Any, None]:
    """Parsed ``data:`` payloads of a server-sent event stream (its lines, without line
    endings), ``DONE`` for ``[DONE]``.

    Each ``data:`` line is parsed at once (servers put one JSON document per line, and
    some omit the blank line between events); only a line that is not JSON by itself is
    joined with the following ``data:`` lines of its event, as the SSE format allows.
    An ``event: error`` marks its data as an error object. Bytes throughout: orjson
    parses them without a decode step.
    """
    pending: list[bytes] = []
    event = ""
    async for line in lines:
        if not line:
            if pending:
                yield parse_event(b"\n".join(pending), event)
                pending = []
            event = ""
            continue
        if line.startswith(b"data:"):
            data = line[6:] if line.startswith(b"data: ") else line[5:]
            if pending:
                pending.append(data)
                continue
            if data == b"[DONE]":
                yield DONE
                continue
            try:
                obj = orjson.loads(data)
            except orjson.JSONDecodeError:
                pending.append(data)
                continue
            yield mark(obj, event)
        elif line.startswith(b"event:"):
            event = line[6:].strip().decode("utf-8", "replace")
        # ":" comments (keep-alives), id: and retry: carry nothing for us
    if pending:
        yield parse_event(b"\n".join(pending), event)


def parse_event(data: bytes, event: str) -> Any:
    if data == b"[DONE]":
        return DONE
    return mark(orjson.loads(data), event)


def mark(obj: Any, event: str) -> Any:
    if event == "error" and isinstance(obj, dict) and "error" not in obj:
        return {"error": obj}
    return obj


async def whole_body(body: bytes) -> AsyncGenerator[Any, None]:
    """A non-streamed completion body as if it were one stream event."""
    obj = orjson.loads(body)
    if isinstance(obj, dict):
        for choice in obj.get("choices") or ():
            if isinstance(choice, dict) and "message" in choice and "delta" not in choice:
                choice["delta"] = message = choice["message"]
                if isinstance(message, dict):  # whole calls carry no index: their position is it
                    for i, call in enumerate(message.get("tool_calls") or ()):
                        if isinstance(call, dict):
                            call.setdefault("index", i)
    yield obj
    yield DONE


def choice_text(choice: dict[str, Any], chat: bool) -> str:
    if chat:
        delta = choice.get("delta")
        text = delta.get("content") if isinstance(delta, dict) else None
        if text is None:  # a server answering chat with text-completion choices
            text = choice.get("text")
    else:
        text = choice.get("text")
    return text if isinstance(text, str) else ""


def choice_tool_calls(choice: dict[str, Any]) -> tuple[ToolCallDelta, ...]:
    """The tool-call fragments of a chat chunk's delta (malformed entries are skipped)."""
    delta = choice.get("delta")
    calls = delta.get("tool_calls") if isinstance(delta, dict) else None
    if not calls or not isinstance(calls, list):
        return ()
    out = []
    for position, call in enumerate(calls):
        if not isinstance(call, dict):
            continue
        function = call.get("function") if isinstance(call.get("function"), dict) else {}
        index = call.get("index", position)
        arguments = function.get("arguments")
        out.append(
            ToolCallDelta(
                index if isinstance(index, int) else position,
                _str_or_none(call.get("id")),
                _str_or_none(function.get("name")),
                arguments if isinstance(arguments, str) else "" if arguments is None else orjson.dumps(arguments).decode(),
            )
        )
    return tuple(out)


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def finish_reason(reason: Any, url: str) -> FinishReason:
    finish = FINISH.get(str(reason))
    if finish is None:
        if reason == "error":
            raise EngineError(f"the upstream server at {url} failed mid-generation", code="upstream_error")
        log.debug("unknown finish reason %r from %s: counted as stop", reason, url)
        return FinishReason.STOP
    return finish


def _tool(tool: Tool) -> dict[str, Any]:
    function: dict[str, Any] = {"name": tool.name}
    if tool.description is not None:
        function["description"] = tool.description
    if tool.parameters is not None:
        function["parameters"] = tool.parameters
    if tool.strict is not None:
        function["strict"] = tool.strict
    return {"type": "function", "function": function}


def _tool_choice(choice: ToolChoice) -> str | dict[str, Any]:
    if choice.mode is ToolMode.NAMED:
        return {"type": "function", "function": {"name": choice.name}}
    return choice.mode.value


def upstream_body(model: str, request: GenerationRequest) -> dict[str, Any]:
    """The upstream request: OpenAI fields only; optional ones only when they differ from
    their defaults, because strict servers refuse fields they do not know."""
    body: dict[str, Any] = {"model": model}
    if request.messages is not None:
        body["messages"] = [_message(m) for m in request.messages]
        if request.tools:
            body["tools"] = [_tool(t) for t in request.tools]
        if request.tool_choice is not None:
            body["tool_choice"] = _tool_choice(request.tool_choice)
        if request.parallel_tool_calls is not None:
            body["parallel_tool_calls"] = request.parallel_tool_calls
        if request.response_format is not None:
            body["response_format"] = request.response_format
    else:
        body["prompt"] = request.prompt
    s = request.sampling
    if s.max_tokens is not None:
        body["max_tokens"] = s.max_tokens
    body["temperature"] = s.temperature
    body["top_p"] = s.top_p
    if s.stop:
        body["stop"] = list(s.stop)
    if s.seed is not None:
        body["seed"] = s.seed
    if s.n != 1:
        body["n"] = s.n
    if s.presence_penalty:
        body["presence_penalty"] = s.presence_penalty
    if s.frequency_penalty:
        body["frequency_penalty"] = s.frequency_penalty
    # vLLM's names for these (SGLang and llama.cpp's server take them too); sent only when
    # asked for, so that servers that do not know them never see them
    if s.top_k:
        body["top_k"] = s.top_k
    if s.repetition_penalty != 1.0:
        body["repetition_penalty"] = s.repetition_penalty
    if s.ignore_eos:
        body["ignore_eos"] = True
    if request.stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    else:  # one JSON body: a fraction of the bytes, reads and parsing of a stream
        body["stream"] = False
    return body


def _message(m: ChatMessage) -> dict[str, Any]:
    out: dict[str, Any] = {"role": m.role, "content": m.content}
    if m.name:
        out["name"] = m.name
    if m.tool_calls:
        out["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}} for c in m.tool_calls
        ]
        if not m.content:
            out["content"] = None
    if m.tool_call_id is not None:
        out["tool_call_id"] = m.tool_call_id
    return out


def error_message(body: bytes, secret: str | None) -> tuple[str, str | None, str | None]:
    """(message, param, code) of an upstream error body in any of the shapes servers use:
    OpenAI's ``{"error": {...}}``, ``{"error": "..."}`` (TGI), FastAPI's ``{"detail": ...}``,
    ``{"message": ...}``, Gemini's ``[{"error": {...}}]``, or plain text."""
    message: Any = None
    param = code = None
    try:
        obj = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        obj = None
    if isinstance(obj, list) and len(obj) == 1:  # Gemini's OpenAI endpoint wraps its error in a list
        obj = obj[0]
    if isinstance(obj, dict):
        err = obj.get("error")
        if isinstance(err, dict):
            message = err.get("message")
            param = err.get("param")
            code = err.get("code")
        elif isinstance(err, str):
            message = err
        elif "detail" in obj:
            detail = obj["detail"]
            if isinstance(detail, list) and detail and isinstance(detail[0], dict):  # FastAPI validation errors
                first = detail[0]
                loc = [str(p) for p in first.get("loc", ()) if p != "body"]
                param = ".".join(loc) or None
                message = f"{param}: {first.get('msg')}" if param else first.get("msg")
            else:
                message = detail
        elif "message" in obj:
            message = obj["message"]
    if message is None:
        message = body.decode("utf-8", "replace").strip() if body else ""
    message = str(message).strip() or "no detail"
    if secret:
        message = message.replace(secret, "***")
    if len(message) > MAX_MESSAGE:
        message = message[:MAX_MESSAGE] + "..."
    return message, param if isinstance(param, str) else None, code if isinstance(code, str) else None


def retry_after(headers: Mapping[str, str]) -> float:
    """Seconds from ``retry-after-ms`` (OpenAI) or ``retry-after`` (seconds or an HTTP date);
    ``headers`` must look names up case-insensitively (as aiohttp's do)."""
    try:
        if "retry-after-ms" in headers:
            return max(0.0, float(headers["retry-after-ms"]) / 1000)
        value = headers.get("retry-after")
        if value is None:
            return 1.0
        try:
            return max(0.0, float(value))
        except ValueError:
            when = email.utils.parsedate_to_datetime(value)
            return max(0.0, when.timestamp() - time.time())
    except (ValueError, TypeError):
        return 1.0


def as_int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def vector(value: Any) -> list[float]:
    if isinstance(value, str):  # base64 float32, from servers that ignore encoding_format
        floats = array.array("f")
        floats.frombytes(base64.b64decode(value))
        if sys.byteorder != "little":
            floats.byteswap()
        return floats.tolist()
    if not isinstance(value, list):
        raise TypeError("embedding is not a list")
    return value
