"""A generation stream as the Responses API's server-sent events.

The sequence (every event with its ``sequence_number``, from 0):
``response.created``, ``response.in_progress``; per output item
``response.output_item.added``, then for a message ``response.content_part.added``,
``response.output_text.delta``..., ``response.output_text.done``,
``response.content_part.done``, and for a function call
``response.function_call_arguments.delta``..., ``response.function_call_arguments.done``;
``response.output_item.done``; and last ``response.completed`` (``response.incomplete``
when the output was cut at ``max_output_tokens``). A failure after the headers went out
is ``response.failed`` with the response's ``error``. No ``[DONE]``: Responses streams
end with their last event.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from corral.core.errors import CorralError
from corral.core.types import GenerationChunk, GenerationEnd, Usage
from corral.gateway.openai.responses_translate import new_id, status_of
from corral.protocol.openai.responses_api import (
    error_object,
    event_frame,
    function_call_item,
    message_item,
    output_text_part,
)

log = logging.getLogger(__name__)

Stream = AsyncIterator[GenerationChunk | GenerationEnd]
# (output items, finish reason, usage) -> the final response object (stored when asked)
Finish = Callable[[list[dict[str, Any]], str | None, Usage], Awaitable[dict[str, Any]]]


@dataclass
class _Open:
    """The output item being streamed: a message (``call`` None) or a function call."""

    index: int
    item: dict[str, Any]
    call: int | None = None
    parts: list[str] = field(default_factory=list)


class _Events:
    def __init__(self) -> None:
        self.sequence = 0
        self.output: list[dict[str, Any]] = []  # items done
        self.open: _Open | None = None

    def frame(self, kind: str, **fields: Any) -> bytes:
        out = event_frame(kind, self.sequence, fields)
        self.sequence += 1
        return out

    def open_message(self) -> list[bytes]:
        item = message_item(new_id("msg"), None, "in_progress")
        self.open = _Open(len(self.output), item)
        ids = {"item_id": item["id"], "output_index": self.open.index}
        return [self.frame("response.output_item.added", output_index=self.open.index, item=item),
                self.frame("response.content_part.added", **ids, content_index=0, part=output_text_part(""))]

    def open_call(self, call: int, call_id: str | None, name: str | None) -> list[bytes]:
        item = function_call_item(new_id("fc"), call_id or new_id("call"), name or "", "", "in_progress")
        self.open = _Open(len(self.output), item, call)
        return [self.frame("response.output_item.added", output_index=self.open.index, item=item)]

    def text(self, delta: str) -> list[bytes]:
        out = [] if self.open is not None and self.open.call is None else self.close("completed") + self.open_message()
        assert self.open is not None
        self.open.parts.append(delta)
        out.append(self.frame("response.output_text.delta", item_id=self.open.item["id"],
                              output_index=self.open.index, content_index=0, delta=delta, logprobs=[]))
        return out

    def arguments(self, call: int, call_id: str | None, name: str | None, delta: str) -> list[bytes]:
        out = []
        if self.open is None or self.open.call != call:
            out = self.close("completed") + self.open_call(call, call_id, name)
        assert self.open is not None
        if delta:
            self.open.parts.append(delta)
            out.append(self.frame("response.function_call_arguments.delta", item_id=self.open.item["id"],
                                  output_index=self.open.index, delta=delta))
        return out

    def close(self, status: str) -> list[bytes]:
        """The done events of the open item (if any), which joins the output."""
        current, self.open = self.open, None
        if current is None:
            return []
        item, ids = current.item, {"item_id": current.item["id"], "output_index": current.index}
        joined = "".join(current.parts)
        out = []
        if current.call is None:
            part = output_text_part(joined)
            out.append(self.frame("response.output_text.done", **ids, content_index=0, text=joined, logprobs=[]))
            out.append(self.frame("response.content_part.done", **ids, content_index=0, part=part))
            item = {**item, "status": status, "content": [part]}
        else:
            out.append(self.frame("response.function_call_arguments.done", **ids, name=item["name"], arguments=joined))
            item = {**item, "status": "completed", "arguments": joined}
        out.append(self.frame("response.output_item.done", output_index=current.index, item=item))
        self.output.append(item)
        return out


async def sse_events(stream: Stream, head: dict[str, Any], finish: Finish) -> AsyncIterator[bytes]:
    """The SSE body of a streamed response; ``head`` is the response object in progress
    (status ``in_progress``, no output), ``finish`` builds (and stores) the final one."""
    events = _Events()
    yield events.frame("response.created", response=head)
    yield events.frame("response.in_progress", response=head)
    reason: str | None = None
    usage = Usage(0, 0)
    try:
        async for item in stream:
            if isinstance(item, GenerationEnd):
                usage = item.usage
                continue
            if item.text:
                for frame in events.text(item.text):
                    yield frame
            for delta in item.tool_calls:
                for frame in events.arguments(delta.index, delta.id, delta.name, delta.arguments):
                    yield frame
            if item.finish_reason is not None:
                reason = item.finish_reason.value
        status = status_of(reason)
        if events.open is None and not events.output:  # nothing came: an empty message, as a whole answer has
            for frame in events.open_message():
                yield frame
        for frame in events.close(status):
            yield frame
        final = await finish(events.output, reason, usage)
    except CorralError as exc:
        # headers are gone already: the client learns of the failure in the stream
        yield _failed(events, head, exc.message)
        return
    except Exception as exc:  # never leave a client waiting on a half stream
        log.exception("responses stream %s failed", head.get("id"))
        yield _failed(events, head, f"stream failed: {type(exc).__name__}")
        return
    yield events.frame("response.incomplete" if final["status"] == "incomplete" else "response.completed",
                       response=final)


def _failed(events: _Events, head: dict[str, Any], message: str) -> bytes:
    response = {**head, "status": "failed", "output": events.output, "error": error_object("server_error", message)}
    return events.frame("response.failed", response=response)
