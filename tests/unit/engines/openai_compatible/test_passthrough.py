"""Pass-through of an upstream's stream (``passthrough.forward``) on canned SSE lines:
the rewrites, what is parsed for the accounting, and the failures translation also
catches. End to end against a real server: tests/integration/engines/test_openai_compatible.py."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from corral.core.errors import CorralError, EngineError, InstanceLost
from corral.core.types import (
    ChatMessage, FinishReason, GenerationChunk, GenerationEnd, GenerationRequest, PassThrough, RawEvent, SamplingParams,
)
from corral.engines.openai_compatible.passthrough import data_events, forward, passes_through
from corral.engines.openai_compatible.providers import GENERIC


class Engine:
    """What ``forward`` reads of an engine."""

    url = "http://upstream/v1"
    _vendor = "the upstream server"
    provider = GENERIC
    passthrough = True

    def _stream_error(self, obj: dict[str, Any]) -> CorralError:
        return EngineError(f"upstream failed: {obj['error']}")


async def _lines(lines: list[bytes]):  # type: ignore[no-untyped-def]
    for line in lines:
        yield line


def request(include_usage: bool = False, echo: bool = False, n: int = 1) -> GenerationRequest:
    return GenerationRequest("r1", "served", SamplingParams(max_tokens=8, n=n), messages=(ChatMessage("user", "hi"),),
                             echo=echo, passthrough=PassThrough("chatcmpl-r1", include_usage))


def run(lines: list[bytes], req: GenerationRequest | None = None) -> list[Any]:
    async def go() -> list[Any]:
        return [item async for item in forward(Engine(), req or request(), _lines(lines))]  # type: ignore[arg-type]

    return asyncio.run(go())


def event(obj: dict[str, Any], spaced: bool = False) -> list[bytes]:
    text = orjson.dumps(obj)
    if spaced:  # the layout of Python's json.dumps
        text = text.replace(b'":', b'": ').replace(b',"', b', "')
    return [b"data: " + text, b""]


BASE = {"id": "up-1", "object": "chat.completion.chunk", "created": 5, "model": "their-model"}


def chunk(content: str | None = None, finish: str | None = None) -> dict[str, Any]:
    delta = {"content": content} if content is not None else {}
    return {**BASE, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


USAGE = {**BASE, "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}


@pytest.mark.parametrize("spaced", [False, True])
def test_events_keep_their_bytes_but_id_and_model(spaced: bool) -> None:
    lines = [*event(chunk("Hel"), spaced), *event(chunk("lo"), spaced), *event(chunk(finish="stop"), spaced),
             *event(USAGE, spaced), b"data: [DONE]", b""]
    items = run(lines)
    raws = [i for i in items if isinstance(i, RawEvent)]
    assert len(raws) == 3  # the usage chunk: the client did not ask for it
    for raw, sent in zip(raws, [chunk("Hel"), chunk("lo"), chunk(finish="stop")]):
        expected = event({**sent, "id": "chatcmpl-r1", "model": "served"}, spaced)[0]
        assert raw.data == expected + b"\n\n"
    assert [r.finish_reason for r in raws] == [None, None, FinishReason.STOP]
    assert items[-1] == GenerationEnd(usage=items[-1].usage) and items[-1].usage.completion_tokens == 2


def test_the_usage_chunk_reaches_a_client_that_asked_for_it() -> None:
    items = run([*event(chunk("a", "length")), *event(USAGE), b"data: [DONE]"], request(include_usage=True))
    raws = [i for i in items if isinstance(i, RawEvent)]
    assert [r.usage for r in raws] == [False, True]
    assert orjson.loads(raws[1].data[6:])["usage"]["total_tokens"] == 5


def test_an_error_inside_the_stream_fails_it() -> None:
    with pytest.raises(EngineError, match="overloaded"):
        run([*event(chunk("a")), *event({"error": {"message": "overloaded"}})])
    with pytest.raises(EngineError):  # an SSE "event: error" whose data has no error key
        run([*event(chunk("a")), b"event: error", b'data: {"message": "boom"}', b""])


def test_a_stream_cut_before_its_end_is_an_instance_lost() -> None:
    with pytest.raises(InstanceLost, match="ended the stream early"):
        run([*event(chunk("a")), *event(chunk("b"))])


def test_done_without_a_finish_reason_ends_the_choice() -> None:
    items = run([*event(chunk("a")), b"data: [DONE]", b""])
    assert isinstance(items[-2], GenerationChunk) and items[-2].finish_reason is FinishReason.STOP
    assert items[-1].usage.completion_tokens == 0  # no usage reported: none counted


async def _collect(lines: list[bytes]) -> list[tuple[bytes, str]]:
    return [e async for e in data_events(_lines(lines))]


def test_events_split_over_data_lines_are_joined_and_lines_without_blank_separators_kept() -> None:
    lines = [b'data: {"a":', b'data: 1}', b"", b'data: {"b":2}', b'data: {"c":3}', b": keep-alive", b"data: [DONE]"]
    assert asyncio.run(_collect(lines)) == [(b'{"a":\n1}', ""), (b'{"b":2}', ""), (b'{"c":3}', ""), (b"[DONE]", "")]


def test_only_plain_single_choice_requests_pass_through() -> None:
    engine = Engine()
    assert passes_through(engine, request())  # type: ignore[arg-type]
    assert not passes_through(engine, request(echo=True))  # type: ignore[arg-type]
    assert not passes_through(engine, request(n=2))  # type: ignore[arg-type]
    assert not passes_through(engine, GenerationRequest("r", "m", SamplingParams(), prompt="x"))  # type: ignore[arg-type]
    engine.passthrough = False  # options.passthrough = false
    assert not passes_through(engine, request())  # type: ignore[arg-type]
