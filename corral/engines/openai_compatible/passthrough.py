"""Forwarding an openai-compatible upstream's stream as it came, for a client that
speaks the same dialect (``PassThrough`` on the request; docs/performance.md).

The events are not decoded into deltas and encoded again: each ``data:`` payload is
forwarded as a ``RawEvent`` with two byte replacements, the upstream's response id and
model name for the client's (learned from the first event, the one event always
parsed). Only the events the accounting needs are parsed: an error (the stream fails
as it would translated), a finish reason (records and metrics), the usage (tokens, the
keys' limits); their text is found by a substring test first, so an ordinary content
chunk costs two ``in`` scans and two ``replace`` calls in C. The usage chunk Corral
asked the upstream for goes on to the client only if the client asked for it too.

What translation adds and this keeps: an error inside the stream, a stream that ends
without ``[DONE]`` or a finish reason (``InstanceLost``, retried before the first byte
like any other), the usage counted. What it drops, so such requests are translated
instead: several choices (``n``), ``echo``, providers with body quirks (``GENERIC``
only), an upstream answering with one JSON body.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from typing import TYPE_CHECKING, Any

import orjson

from corral.core.errors import InstanceLost
from corral.core.types import FinishReason, GenerationChunk, GenerationEnd, GenerationRequest, RawEvent, Usage
from corral.engines.openai_compatible.providers import GENERIC
from corral.engines.openai_compatible.wire import as_int, finish_reason

if TYPE_CHECKING:
    from corral.engines.openai_compatible.engine import OpenAICompatibleEngine

_DONE = b"[DONE]"
_ERROR = b'"error"'
_FINISH = (b'"finish_reason":"', b'"finish_reason": "')
_USAGE = (b'"usage":{', b'"usage": {')


async def data_events(lines: AsyncIterator[bytes]) -> AsyncGenerator[tuple[bytes, str], None]:
    """Each event's ``data`` payload and its ``event:`` name, without parsing: a data line
    that is a whole JSON object is an event by itself (servers put one per line, some
    without the blank line between events); other data lines are joined up to the blank
    line that ends their event, as the SSE format says."""
    pending: list[bytes] = []
    event = ""
    async for line in lines:
        if not line:
            if pending:
                yield b"\n".join(pending), event
                pending = []
            event = ""
        elif line.startswith(b"data:"):
            data = line[6:] if line.startswith(b"data: ") else line[5:]
            if not pending and (data == _DONE or (data.startswith(b"{") and data.endswith(b"}"))):
                yield data, event
            else:
                pending.append(data)
        elif line.startswith(b"event:"):
            event = line[6:].strip().decode("utf-8", "replace")
    if pending:
        yield b"\n".join(pending), event


def passes_through(engine: OpenAICompatibleEngine, request: GenerationRequest) -> bool:
    """Whether ``request``'s answer can be forwarded as the upstream sends it."""
    return (
        request.passthrough is not None and engine.provider is GENERIC and engine.passthrough
        and request.sampling.n == 1 and not request.echo
    )


async def forward(
    engine: OpenAICompatibleEngine, request: GenerationRequest, lines: AsyncIterator[bytes]
) -> AsyncGenerator[RawEvent | GenerationChunk | GenerationEnd, None]:
    assert request.passthrough is not None
    ours_id, ours_model = orjson.dumps(request.passthrough.response_id), orjson.dumps(request.model)
    include_usage = request.passthrough.include_usage
    rewrite: list[tuple[bytes, bytes]] | None = None
    usage: dict[str, Any] | None = None
    finished = done = False
    async for data, event in data_events(lines):
        if data == _DONE:
            done = True  # read on to the end of the body: the connection goes back to the pool
            continue
        finish: FinishReason | None = None
        usage_only = carries_usage = False
        if rewrite is None or event == "error" or _ERROR in data or _FINISH[0] in data or _FINISH[1] in data \
                or _USAGE[0] in data or _USAGE[1] in data:
            obj = orjson.loads(data)
            if not isinstance(obj, dict):
                continue
            if event == "error" or obj.get("error") is not None or obj.get("object") == "error":
                raise engine._stream_error(obj if "error" in obj or event != "error" else {"error": obj})
            if rewrite is None:
                rewrite = _rewrites(data, obj, ours_id, ours_model)
            carries_usage = isinstance(obj.get("usage"), dict)
            if carries_usage:
                usage = obj["usage"]
            choices = obj.get("choices")
            usage_only = carries_usage and not choices
            for choice in choices if isinstance(choices, list) else ():
                reason = choice.get("finish_reason") if isinstance(choice, dict) else None
                if reason and not finished:
                    finish, finished = finish_reason(reason, engine.url), True
        if usage_only and not include_usage:
            continue  # Corral asked for it to count tokens; the client did not
        for needle, ours in rewrite:
            data = data.replace(needle, ours, 1)
        yield RawEvent(b"data: " + data + b"\n\n", finish, carries_usage)
    if not finished:
        if not done:
            raise InstanceLost(f"{engine._vendor} at {engine.url} ended the stream early")
        yield GenerationChunk(0, "", FinishReason.STOP)  # [DONE] without a finish reason
    yield GenerationEnd(Usage(as_int(usage.get("prompt_tokens")), as_int(usage.get("completion_tokens"))) if usage
                        else Usage(0, 0))


def _rewrites(raw: bytes, first: dict[str, Any], ours_id: bytes, ours_model: bytes) -> list[tuple[bytes, bytes]]:
    """The byte replacements that give the upstream's events the client's id and model
    name, in the JSON layout the first event (``raw``, parsed: ``first``) shows: compact
    (``"id":"x"``) or spaced (``"id": "x"``). A server that writes them otherwise keeps
    its own (the answer is still whole; only its labels are the upstream's)."""
    pairs = []
    for key, theirs, ours in ((b'"id"', first.get("id"), ours_id), (b'"model"', first.get("model"), ours_model)):
        if not isinstance(theirs, str):
            continue
        encoded = orjson.dumps(theirs)
        if encoded == ours:
            continue
        for sep in (b":", b": "):
            if key + sep + encoded in raw:
                pairs.append((key + sep + encoded, key + sep + ours))
                break
    return pairs
