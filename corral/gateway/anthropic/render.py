"""Pipeline results as Anthropic Messages: the whole ``message`` and its stream.

The stream is Anthropic's event sequence: ``message_start``, then per content block
``content_block_start`` / ``content_block_delta`` (``text_delta``, or
``input_json_delta`` for a tool call's arguments) / ``content_block_stop``, a ``ping``
after the first block starts, then ``message_delta`` with the stop reason and usage, and
``message_stop``. Engines report token usage at the end, so ``message_start`` carries
``input_tokens: 0`` and ``message_delta`` the real counts (both, cumulative, as
Anthropic's own ``message_delta`` usage may; the SDKs take them from there). A failure
after the headers went out is an ``error`` event, and the stream ends there.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import orjson

from corral.core.errors import CorralError, EngineError
from corral.core.types import FinishReason, GenerationChunk, GenerationEnd, ToolCall, Usage
from corral.gateway.anthropic.errors import error_of
from corral.gateway.pipeline import Choice
from corral.protocol.anthropic import responses as wire

log = logging.getLogger(__name__)

_STOP_REASONS = {
    FinishReason.STOP.value: "end_turn",
    FinishReason.LENGTH.value: "max_tokens",
    FinishReason.TOOL_CALLS.value: "tool_use",
}


def stop_reason(finish: str | None, stop_sequence: str | None) -> str | None:
    if stop_sequence is not None:
        return "stop_sequence"
    return _STOP_REASONS.get(finish or "", "end_turn")


def _input(call: ToolCall) -> dict[str, Any]:
    """A call's arguments as the ``input`` object Anthropic's tool_use block has."""
    try:
        value = orjson.loads(call.arguments) if call.arguments.strip() else {}
    except orjson.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        raise EngineError(f"the model's call of {call.name!r} has arguments that are not a JSON object",
                          code="invalid_tool_arguments")
    return value


def whole(id_: str, model: str, choice: Choice, usage: Usage) -> dict[str, Any]:
    content = [wire.text_block(choice.text)] if choice.text or not choice.tool_calls else []
    content += [wire.tool_use_block(c.id, c.name, _input(c)) for c in choice.tool_calls]
    reason = stop_reason(choice.finish, choice.stop_sequence)
    return wire.message(id_, model, content, reason, choice.stop_sequence,
                        wire.usage(usage.prompt_tokens, usage.completion_tokens))


class _Blocks:
    """Numbers the content blocks of one streamed message: a text block opens at the
    first text, each tool call opens its own block; a block closes when the next opens."""

    __slots__ = ("open", "kind", "count", "calls")

    def __init__(self) -> None:
        self.open: int | None = None  # index of the open block
        self.kind = ""  # "text" or "tool"
        self.count = 0
        self.calls: dict[int, int] = {}  # the engine's call index -> block index

    def start(self, kind: str, block: dict[str, Any]) -> list[bytes]:
        out = self.close()
        self.open, self.kind = self.count, kind
        self.count += 1
        out.append(wire.block_start(self.open, block))
        if self.open == 0:
            out.append(wire.PING)  # where Anthropic's streams have it
        return out

    def close(self) -> list[bytes]:
        if self.open is None:
            return []
        index, self.open = self.open, None
        return [wire.block_stop(index)]


def _frames(item: GenerationChunk, blocks: _Blocks) -> list[bytes]:
    out: list[bytes] = []
    if item.text:
        if blocks.kind != "text" or blocks.open is None:
            out += blocks.start("text", wire.text_block(""))
        assert blocks.open is not None
        out.append(wire.text_delta(blocks.open, item.text))
    for delta in item.tool_calls:
        index = blocks.calls.get(delta.index)
        if index is None:
            out += blocks.start("tool", wire.tool_use_block(delta.id or "", delta.name or "", {}))
            assert blocks.open is not None
            index = blocks.calls[delta.index] = blocks.open
        if delta.arguments:
            out.append(wire.json_delta(index, delta.arguments))
    return out


async def sse_stream(stream: AsyncIterator[GenerationChunk | GenerationEnd], *, id_: str, model: str) -> AsyncIterator[bytes]:
    """The SSE body of a streamed message (one choice: the Messages API has no ``n``)."""
    blocks = _Blocks()
    finish: str | None = None
    stop_sequence: str | None = None
    yield wire.message_start(id_, model, 0)
    try:
        async for item in stream:
            if isinstance(item, GenerationEnd):
                # an empty answer still has its (empty) text block
                frames = blocks.start("text", wire.text_block("")) if blocks.count == 0 else []
                u = item.usage
                frames += [*blocks.close(), wire.message_delta(stop_reason(finish, stop_sequence), stop_sequence,
                                                               wire.usage(u.prompt_tokens, u.completion_tokens)),
                           wire.MESSAGE_STOP]
                yield b"".join(frames)
                return
            if item.text and not item.tool_calls and blocks.kind == "text" and blocks.open is not None:
                yield wire.text_delta(blocks.open, item.text)  # the common case: one more token of text
            else:
                frames = _frames(item, blocks)
                if frames:
                    yield b"".join(frames)
            if item.finish_reason is not None:
                finish = item.finish_reason.value
                stop_sequence = item.stop_sequence
    except CorralError as exc:
        # headers are gone already: the client learns of the failure in the stream
        yield wire.error_event(*error_of(exc))
    except Exception as exc:  # never leave a client waiting on a half stream
        log.exception("stream %s failed", id_)
        yield wire.error_event(*error_of(EngineError(f"stream failed: {type(exc).__name__}")))
