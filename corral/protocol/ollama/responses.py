"""Builders of Ollama's response bodies and NDJSON lines.

Plain dicts and bytes serialised with orjson: on the streaming hot path a line is a
constant prefix (model, the ``created_at`` key), a timestamp, and the token's text
encoded alone, so a token costs about what an OpenAI SSE chunk does.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import orjson

NDJSON = "application/x-ndjson"


class Clock:
    """RFC 3339 timestamps in UTC with microseconds, as Ollama writes ``created_at``
    (it writes nanoseconds and the local offset; clients read either); the seconds part
    is formatted once per second, so a streamed line pays one integer division."""

    __slots__ = ("_second", "_prefix")

    def __init__(self) -> None:
        self._second = -1
        self._prefix = b""

    def stamp(self) -> bytes:
        second, ns = divmod(time.time_ns(), 1_000_000_000)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)).encode()
        return self._prefix + b".%06dZ" % (ns // 1000)

    def now(self) -> str:
        return self.stamp().decode()


@dataclass(frozen=True)
class Stats:
    """The counts and durations (nanoseconds) of the final object."""

    total_ns: int
    load_ns: int
    prompt_eval_count: int
    prompt_eval_ns: int
    eval_count: int
    eval_ns: int

    def fields(self) -> dict[str, int]:
        return {
            "total_duration": self.total_ns, "load_duration": self.load_ns,
            "prompt_eval_count": self.prompt_eval_count, "prompt_eval_duration": self.prompt_eval_ns,
            "eval_count": self.eval_count, "eval_duration": self.eval_ns,
        }


def tool_call(name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {"function": {"name": name, "arguments": arguments}}


def message(text: str, tool_calls: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"role": "assistant", "content": text}
    if tool_calls:
        out["tool_calls"] = tool_calls
    return out


class Lines:
    """The NDJSON lines of one streamed answer of /api/chat (``chat``) or /api/generate."""

    __slots__ = ("_model", "_chat", "_clock", "_head", "_mid", "_tail")

    def __init__(self, model: str, chat: bool, clock: Clock) -> None:
        self._model, self._chat, self._clock = model, chat, clock
        self._head = b'{"model":' + orjson.dumps(model) + b',"created_at":"'
        self._mid = b'","message":{"role":"assistant","content":' if chat else b'","response":'
        self._tail = b'},"done":false}\n' if chat else b',"done":false}\n'

    def delta(self, text: str) -> bytes:
        return self._head + self._clock.stamp() + self._mid + orjson.dumps(text) + self._tail

    def tool_calls(self, calls: list[dict[str, Any]]) -> bytes:
        """Ollama streams a tool call whole, in a line of its own, when it is complete."""
        body = {"model": self._model, "created_at": self._clock.now(), "message": message("", calls), "done": False}
        return line(body)

    def done(self, reason: str, stats: Stats) -> bytes:
        return line(final(self._model, self._clock.now(), self._chat, "", None, reason, stats))


def final(
    model: str, created_at: str, chat: bool, text: str, tool_calls: list[dict[str, Any]] | None, reason: str,
    stats: Stats | None,
) -> dict[str, Any]:
    """The last object of a stream (``text`` empty), or the whole answer (``stream: false``)."""
    out: dict[str, Any] = {"model": model, "created_at": created_at}
    if chat:
        out["message"] = message(text, tool_calls)
    else:
        out["response"] = text
    out["done"] = True
    out["done_reason"] = reason
    if stats is not None:
        out.update(stats.fields())
    return out


def line(body: dict[str, Any]) -> bytes:
    return orjson.dumps(body) + b"\n"


def error_line(message_: str) -> bytes:
    """An error after the stream started: the client raises it as a ResponseError."""
    return orjson.dumps({"error": message_}) + b"\n"


def error_body(message_: str) -> dict[str, str]:
    return {"error": message_}


def model_details(engine: str, kind: str) -> dict[str, Any]:
    """``details``: what Corral knows of a model (no file format, family or size)."""
    return {
        "parent_model": "", "format": engine, "family": kind, "families": [kind],
        "parameter_size": "", "quantization_level": "",
    }


def model_entry(name: str, model: str, modified_at: str, digest: str, engine: str, kind: str) -> dict[str, Any]:
    """One model of /api/tags (``size`` 0: Corral does not know the weights' size)."""
    return {
        "name": name, "model": model, "modified_at": modified_at, "size": 0, "digest": digest,
        "details": model_details(engine, kind),
    }
