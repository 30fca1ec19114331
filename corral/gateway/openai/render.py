"""Rendering pipeline results as OpenAI responses: one collector and one SSE streamer,
shared by chat and text completions (they differ only in the choice shape)."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from corral.core.errors import CorralError, EngineError
from corral.core.types import GenerationChunk, GenerationEnd, RawEvent
from corral.gateway.pipeline import Choice
from corral.web.errors import error_event
from corral.protocol.openai import responses
from corral.protocol.openai.responses import SSE_DONE, sse

log = logging.getLogger(__name__)

Stream = AsyncIterator[GenerationChunk | GenerationEnd | RawEvent]


ChoiceDelta = Callable[[GenerationChunk, str | None, bool], dict[str, Any]]


def chat_choice(item: GenerationChunk, finish: str | None, first: bool) -> dict[str, Any]:
    calls = [responses.tool_call_delta(d.index, d.id, d.name, d.arguments) for d in item.tool_calls]
    return responses.chat_delta(item.index, item.text, finish, first, calls)


def text_choice(item: GenerationChunk, finish: str | None, first: bool) -> dict[str, Any]:
    return responses.text_delta(item.index, item.text, finish)


def whole_choices(choices: list[Choice]) -> list[responses.ChoiceOut]:
    """Collected choices as the response builders take them."""
    return [
        (c.text, c.finish, [responses.tool_call(t.id, t.name, t.arguments) for t in c.tool_calls]) for c in choices
    ]


async def sse_stream(
    stream: Stream,
    *,
    id_: str,
    model: str,
    obj: str,
    choice: ChoiceDelta,
    include_usage: bool,
) -> AsyncIterator[bytes]:
    """The SSE body. Failures after the headers went out become an error event; the
    stream always ends with ``[DONE]``. ``RawEvent`` items (an upstream's own events,
    passed through) are sent as they are."""
    created = int(time.time())
    base: dict[str, Any] = {"id": id_, "object": obj, "created": created, "model": model, "system_fingerprint": None}
    if include_usage:
        base["usage"] = None
    frames = responses.ChunkFrames(base)
    started: set[int] = set()
    usage_sent = False
    try:
        async for item in stream:
            if isinstance(item, RawEvent):
                started.add(0)  # pass-through is for one choice, whose first event was this
                usage_sent = usage_sent or item.usage
                yield item.data
                continue
            if isinstance(item, GenerationEnd):
                if include_usage and not usage_sent:
                    u = item.usage
                    yield sse(
                        {**base, "choices": [], "usage": responses.usage_dict(u.prompt_tokens, u.completion_tokens)}
                    )
                continue
            first = item.index not in started
            if first:
                started.add(item.index)
            finish = item.finish_reason.value if item.finish_reason is not None else None
            if not item.text and not first and finish is None and not item.tool_calls:
                continue
            yield frames.frame(choice(item, finish, first))
    except CorralError as exc:
        # headers are gone already: the client learns of the failure in the stream
        yield sse(error_event(exc))
    except Exception as exc:  # never leave a client waiting on a half stream
        log.exception("stream %s failed", id_)
        yield sse(error_event(EngineError(f"stream failed: {type(exc).__name__}")))
    yield SSE_DONE
