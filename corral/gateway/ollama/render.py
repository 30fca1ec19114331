"""Rendering pipeline results as Ollama answers: the NDJSON stream, the whole answer,
tool calls (arguments as objects) and the counts and durations of the final object.

Durations are measured from the request's own clock (``RequestEvent.clock_start``,
``time.perf_counter``), in nanoseconds: ``total_duration`` from the request's arrival
to its end; ``prompt_eval_duration`` to the first token (routing, any wait for an
instance, and the prefill); ``eval_duration`` from the first token to the end;
``load_duration`` 0, because Corral loads a model when it is deployed, never for a request.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator

import orjson

from corral.core.errors import CorralError, EngineError
from corral.core.observe import RequestEvent
from corral.core.types import FinishReason, GenerationEnd, ToolCall, Usage
from corral.gateway.pipeline import Call
from corral.protocol.ollama import responses
from corral.protocol.ollama.responses import Lines, Stats

log = logging.getLogger(__name__)

_DONE_REASON = {FinishReason.LENGTH.value: "length"}  # stop, tool calls: "stop", as Ollama says


def done_reason(finish: str | None) -> str:
    return _DONE_REASON.get(finish or "", "stop")


def _ns(seconds: float) -> int:
    return max(0, int(seconds * 1e9))


def stats(event: RequestEvent, first_token_at: float | None, usage: Usage) -> Stats:
    """The final object's numbers; ``first_token_at`` on the ``perf_counter`` clock."""
    total = time.perf_counter() - event.clock_start
    to_first = first_token_at - event.clock_start if first_token_at is not None else total
    return Stats(_ns(total), 0, usage.prompt_tokens, _ns(to_first), usage.completion_tokens, _ns(total - to_first))


def whole_stats(event: RequestEvent, usage: Usage) -> Stats:
    """For a collected answer: the event holds its time to first token."""
    first = event.clock_start + event.ttft_s if event.ttft_s is not None else None
    return stats(event, first, usage)


def tool_calls(calls: tuple[ToolCall, ...] | list[ToolCall]) -> list[dict[str, object]]:
    """Ollama's tool calls: the arguments as a JSON object, not as text."""
    out = []
    for call in calls:
        try:
            arguments = orjson.loads(call.arguments or "{}")
        except orjson.JSONDecodeError:
            arguments = None
        if not isinstance(arguments, dict):
            raise EngineError(f"the model called {call.name!r} with arguments that are not a JSON object")
        out.append(responses.tool_call(call.name, arguments))
    return out


async def ndjson_stream(call: Call, event: RequestEvent, lines: Lines) -> AsyncIterator[bytes]:
    """The streamed body: a line per delta, tool calls whole in a line when their
    choice ends, then the final ``done`` line with the counts and durations. A failure
    after the headers went out is a last ``{"error": ...}`` line."""
    parts: dict[int, list[str]] = {}  # a call's index -> [name, argument fragments...]
    reason = "stop"
    try:
        async for item in call:
            if isinstance(item, GenerationEnd):
                yield lines.done(reason, stats(event, call.first_token_at, item.usage))
                continue
            if item.text:
                yield lines.delta(item.text)
            for delta in item.tool_calls:
                fragments = parts.setdefault(delta.index, [""])
                if delta.name:
                    fragments[0] = delta.name
                fragments.append(delta.arguments)
            if item.finish_reason is not None:
                reason = done_reason(item.finish_reason.value)
                if parts:
                    calls = [ToolCall("", p[0], "".join(p[1:])) for _, p in sorted(parts.items())]
                    yield lines.tool_calls(tool_calls(calls))
                    parts = {}
    except CorralError as exc:
        yield responses.error_line(exc.message)
    except Exception as exc:  # never leave a client waiting on a half stream
        log.exception("stream %s failed", event.request_id)
        yield responses.error_line(EngineError(f"stream failed: {type(exc).__name__}").message)
