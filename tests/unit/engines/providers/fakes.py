"""Loopback fakes of the cloud providers' APIs.

Each is a loopback fake written from the vendor's public API docs, not the real
service: no test reaches a cloud, and nothing here was checked against one. What a fake
reproduces is what the vendor documents and the engine depends on: the base path and
URL shape, the header carrying the key, where token usage comes in a stream, the shape
of error bodies, ``Retry-After``, and the parameter ranges it refuses.

``FakeVendor`` serves the OpenAI dialect as one vendor of ``VENDOR_WIRES`` describes it;
``FakeAnthropic`` serves Anthropic's Messages API. Both run uvicorn in a thread of their
own on a free loopback port, record every request, and pick a behaviour from the model
asked for (``ok``, ``tools``, ``err401``, ``err429``, ``err500``, ``hang``, ``drop``...),
so one server serves every test of a vendor.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.integration.servers import free_port

WORDS = ("Hel", "lo", " world")
TOOL_CALLS = (("get_weather", '{"city": "Paris"}'), ("get_time", '{"tz": "Europe/Paris"}'))
USAGE = {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}


@dataclass(frozen=True)
class Received:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: dict[str, Any]


class LoopbackServer:
    """A Starlette app served by uvicorn in a thread, recording what it received."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.port = free_port()
        self.origin = f"http://127.0.0.1:{self.port}"
        self.received: list[Received] = []
        self.disconnected = threading.Event()  # a client went away mid-stream
        app = Starlette(routes=[Route("/{path:path}", self._dispatch, methods=["GET", "POST"])])
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="critical", lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name=f"fake-{name}", daemon=True)

    def __enter__(self) -> LoopbackServer:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the fake {self.name} did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(10)

    def reset(self) -> None:
        self.received = []
        self.disconnected = threading.Event()

    @property
    def last(self) -> Received:
        return self.received[-1]

    async def _dispatch(self, request: Request) -> Response:
        raw = await request.body()
        seen = Received(request.method, request.url.path, dict(request.query_params), dict(request.headers),
                        orjson.loads(raw) if raw else {})
        self.received.append(seen)
        return await self.handle(seen)

    async def handle(self, seen: Received) -> Response:
        raise NotImplementedError

    async def _watch(self, events: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """``events``, noting whether the client left before the end."""
        completed = False
        try:
            async for event in events:
                yield event
            completed = True
        finally:
            if not completed:
                self.disconnected.set()


# -- the OpenAI dialect, vendor by vendor -------------------------------------------------


@dataclass(frozen=True)
class VendorWire:
    """One vendor's OpenAI-dialect wire, as its public docs describe it."""

    vendor: str  # the Corral engine name
    docs: str  # where this was read
    prefix: str  # the path of the vendor's base URL
    key_header: str
    bearer: bool  # "Bearer KEY" rather than the bare key
    usage: Literal["when-asked", "last-chunk", "in-choice"]  # where a stream's usage comes
    error_list: bool = False  # errors as [{"error": {...}}] (Gemini)
    temperature: tuple[float, float, bool] = (0.0, 2.0, False)  # min, max, min excluded
    max_n: int = 128
    deployments: bool = False  # Azure: /openai/deployments/{name}/...?api-version=


VENDOR_WIRES = {
    w.vendor: w
    for w in (
        VendorWire("openai", "platform.openai.com/docs/api-reference/chat", "/v1", "authorization", True, "when-asked"),
        VendorWire("azure-openai", "learn.microsoft.com/azure/ai-services/openai/reference", "", "api-key", False,
                   "when-asked", deployments=True),
        VendorWire("gemini", "ai.google.dev/gemini-api/docs/openai", "/v1beta/openai", "authorization", True,
                   "when-asked", error_list=True, max_n=1),
        VendorWire("deepseek", "api-docs.deepseek.com/api/create-chat-completion", "", "authorization", True,
                   "when-asked", max_n=1),
        VendorWire("dashscope", "help.aliyun.com/zh/model-studio/compatibility-of-openai-with-dashscope",
                   "/compatible-mode/v1", "authorization", True, "when-asked", max_n=4),
        VendorWire("zhipu", "open.bigmodel.cn/dev/api (docs.z.ai/api-reference/llm/chat-completion)", "/api/paas/v4",
                   "authorization", True, "last-chunk", temperature=(0.0, 1.0, False), max_n=1),
        VendorWire("qianfan", "cloud.baidu.com/doc/WENXINWORKSHOP/s/2m3fihw8s (inference API v2)", "/v2",
                   "authorization", True, "when-asked", temperature=(0.0, 1.0, True), max_n=1),
        VendorWire("moonshot", "platform.moonshot.cn/docs/api/chat", "/v1", "authorization", True, "in-choice",
                   temperature=(0.0, 1.0, False), max_n=5),
    )
}


def sse(obj: object) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


class FakeVendor(LoopbackServer):
    """A loopback fake written from one vendor's public API docs, not the real service."""

    def __init__(self, wire: VendorWire, key: str) -> None:
        super().__init__(wire.vendor)
        self.wire = wire
        self.key = key
        self.base_url = self.origin + wire.prefix  # what options.base_url is set to

    def _error(self, status: int, message: str, param: str | None = None,
               headers: dict[str, str] | None = None) -> Response:
        err = {"message": message, "type": "invalid_request_error" if status < 500 else "server_error",
               "param": param, "code": status if self.wire.error_list else None}
        body: Any = [{"error": err}] if self.wire.error_list else {"error": err}
        return JSONResponse(body, status_code=status, headers=headers)

    def _endpoint(self, seen: Received) -> tuple[str, str | None]:
        """(endpoint, deployment) of a request path; endpoint "" when unknown."""
        path = seen.path
        if self.wire.deployments:
            parts = path.split("/")  # "", "openai", "deployments", NAME, rest...
            if path == "/openai/models":
                return "models", None
            if len(parts) >= 5 and parts[1:3] == ["openai", "deployments"]:
                return "/".join(parts[4:]), parts[3]
            return "", None
        if not path.startswith(self.wire.prefix + "/"):
            return "", None
        return path[len(self.wire.prefix) + 1:], None

    async def handle(self, seen: Received) -> Response:
        expected = f"Bearer {self.key}" if self.wire.bearer else self.key
        if seen.headers.get(self.wire.key_header) != expected:
            # like vendors that echo (part of) the key they refused
            return self._error(401, f"Incorrect API key provided: {seen.headers.get(self.wire.key_header)}")
        endpoint, deployment = self._endpoint(seen)
        if self.wire.deployments and "api-version" not in seen.query:
            return self._error(400, "the api-version query parameter is required")
        if endpoint == "models" and seen.method == "GET":
            return JSONResponse({"object": "list", "data": [{"id": "ok", "object": "model"}]})
        model = deployment or seen.body.get("model", "")
        if endpoint == "embeddings":
            vectors = [[float(len(t)), 1.0] for t in seen.body.get("input", ())]
            return JSONResponse({"object": "list", "usage": {"prompt_tokens": 4, "total_tokens": 4},
                                 "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)]})
        if endpoint != "chat/completions" or seen.method != "POST":
            return self._error(404, f"no route {seen.method} {seen.path}")
        return await self._chat(seen.body, model)

    async def _chat(self, body: dict[str, Any], model: str) -> Response:
        low, high, low_excluded = self.wire.temperature
        t = body.get("temperature", low + 0.5)
        if t > high or t < low or (low_excluded and t == low):
            return self._error(400, f"temperature must be in {'(' if low_excluded else '['}{low}, {high}]", "temperature")
        if body.get("n", 1) > self.wire.max_n:
            return self._error(400, f"n must be at most {self.wire.max_n}", "n")
        if model == "err401":
            return self._error(401, f"Incorrect API key provided: {self.key}")
        if model == "err400":
            return self._error(400, "messages must not be empty", "messages")
        if model == "err429":
            return self._error(429, "Rate limit reached; retry after 7 seconds", headers={"retry-after": "7"})
        if model == "err500":
            return self._error(500, "The server had an error while processing your request")
        if model == "hang":
            await asyncio.sleep(3)
        events = self._tool_events(body, model) if model == "tools" else self._text_events(body, model)
        return StreamingResponse(self._watch(events), media_type="text/event-stream")

    def _chunk(self, model: str, choices: list[dict[str, Any]], **extra: Any) -> bytes:
        return sse({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 0, "model": model,
                    "choices": choices, **extra})

    def _last(self, body: dict[str, Any], model: str, choices: list[dict[str, Any]], usage: dict[str, int]) -> list[bytes]:
        """The finish chunk and usage, where this vendor puts it."""
        if self.wire.usage == "last-chunk":
            return [self._chunk(model, choices, usage=usage)]
        if self.wire.usage == "in-choice":
            return [self._chunk(model, [{**c, "usage": usage} for c in choices])]
        out = [self._chunk(model, choices)]
        if (body.get("stream_options") or {}).get("include_usage"):
            out.append(self._chunk(model, [], usage=usage))
        return out

    async def _text_events(self, body: dict[str, Any], model: str) -> AsyncIterator[bytes]:
        n = body.get("n", 1)
        yield self._chunk(model, [{"index": i, "delta": {"role": "assistant", "content": ""}} for i in range(n)])
        if model == "slow":
            while True:
                yield self._chunk(model, [{"index": 0, "delta": {"content": "x"}}])
                await asyncio.sleep(0.05)
        for word in WORDS:
            for i in range(n):
                yield self._chunk(model, [{"index": i, "delta": {"content": word}}])
            if model == "drop" and word == "lo":
                raise RuntimeError("the fake drops the connection mid-stream")
        limit = body.get("max_tokens", body.get("max_completion_tokens"))
        finish = "length" if limit == 3 else "stop"
        usage = {**USAGE, "completion_tokens": 3 * n, "total_tokens": 5 + 3 * n}
        for event in self._last(body, model, [{"index": i, "delta": {}, "finish_reason": finish} for i in range(n)], usage):
            yield event
        yield b"data: [DONE]\n\n"

    async def _tool_events(self, body: dict[str, Any], model: str) -> AsyncIterator[bytes]:
        yield self._chunk(model, [{"index": 0, "delta": {"role": "assistant", "content": None}}])
        for i, (name, args) in enumerate(TOOL_CALLS):
            head = {"index": i, "id": f"call_{i}", "type": "function", "function": {"name": name, "arguments": ""}}
            yield self._chunk(model, [{"index": 0, "delta": {"tool_calls": [head]}}])
            half = len(args) // 2
            for part in (args[:half], args[half:]):
                yield self._chunk(model, [{"index": 0, "delta": {"tool_calls": [{"index": i, "function": {"arguments": part}}]}}])
        for event in self._last(body, model, [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}], USAGE):
            yield event
        yield b"data: [DONE]\n\n"


# -- Anthropic's Messages API ----------------------------------------------------------------


def event(kind: str, **data: Any) -> bytes:
    return f"event: {kind}\ndata: ".encode() + orjson.dumps({"type": kind, **data}) + b"\n\n"


class FakeAnthropic(LoopbackServer):
    """A loopback fake written from Anthropic's public API docs (docs.anthropic.com:
    Messages, streaming messages, tool use, errors), not the real service."""

    def __init__(self, key: str) -> None:
        super().__init__("anthropic")
        self.key = key
        self.base_url = self.origin

    @staticmethod
    def _error(status: int, kind: str, message: str, headers: dict[str, str] | None = None) -> Response:
        return JSONResponse({"type": "error", "error": {"type": kind, "message": message}}, status_code=status, headers=headers)

    async def handle(self, seen: Received) -> Response:
        if seen.headers.get("x-api-key") != self.key:
            return self._error(401, "authentication_error", f"invalid x-api-key {seen.headers.get('x-api-key')}")
        if not seen.headers.get("anthropic-version"):
            return self._error(400, "invalid_request_error", "anthropic-version: header is required")
        if seen.method == "GET" and seen.path == "/v1/models":
            return JSONResponse({"data": [{"id": "claude-ok", "type": "model"}], "has_more": False})
        if seen.method != "POST" or seen.path != "/v1/messages":
            return self._error(404, "not_found_error", f"no route {seen.method} {seen.path}")
        problem = self._invalid(seen.body)
        if problem:
            return self._error(400, "invalid_request_error", problem)
        model = seen.body["model"]
        failures = {
            "err400": (400, "invalid_request_error", "messages: at least one message is required", None),
            "err401": (401, "authentication_error", f"invalid x-api-key {self.key}", None),
            "err404": (404, "not_found_error", f"model: {model}", None),
            "err429": (429, "rate_limit_error", "Number of requests has exceeded your rate limit", {"retry-after": "7"}),
            "err500": (500, "api_error", "Internal server error", None),
            "err529": (529, "overloaded_error", "Overloaded", None),
        }
        if model in failures:
            status, kind, message, headers = failures[model]
            return self._error(status, kind, message, headers)
        if model == "hang":
            await asyncio.sleep(3)
        if model == "json":  # a proxy ignoring stream: true
            return JSONResponse({"id": "msg_1", "type": "message", "role": "assistant", "model": model,
                                 "content": [{"type": "text", "text": "".join(WORDS)}],
                                 "stop_reason": "end_turn", "usage": {"input_tokens": 12, "output_tokens": 3}})
        return StreamingResponse(self._watch(self._events(seen.body)), media_type="text/event-stream")

    @staticmethod
    def _invalid(body: dict[str, Any]) -> str | None:
        """What the Messages API documents it refuses, among what Corral could get wrong."""
        if not isinstance(body.get("max_tokens"), int):
            return "max_tokens: field required"
        if not 0 <= body.get("temperature", 1.0) <= 1:
            return "temperature: must be between 0 and 1"
        if "temperature" in body and "top_p" in body:
            return "temperature and top_p cannot both be specified"
        if "top_k" in body and not (isinstance(body["top_k"], int) and body["top_k"] >= 0):
            return "top_k: Input should be greater than or equal to 0"
        tool_ids: set[str] = set()
        for i, turn in enumerate(body.get("messages") or ()):
            if turn.get("role") not in ("user", "assistant"):
                return f"messages.{i}.role: Input should be 'user' or 'assistant'"
            for block in turn["content"] if isinstance(turn["content"], list) else ():
                if block["type"] == "text" and not block["text"]:
                    return f"messages.{i}: text content blocks must be non-empty"
                if block["type"] == "tool_use":
                    tool_ids.add(block["id"])
                if block["type"] == "tool_result" and block["tool_use_id"] not in tool_ids:
                    return f"messages.{i}: tool_result block(s) without a matching tool_use"
        for tool in body.get("tools") or ():
            if set(tool) - {"name", "description", "input_schema"}:
                return f"tools: unexpected fields {sorted(set(tool) - {'name', 'description', 'input_schema'})}"
        return None

    async def _events(self, body: dict[str, Any]) -> AsyncIterator[bytes]:
        model = body["model"]
        usage = {"input_tokens": 12, "cache_read_input_tokens": 2, "output_tokens": 1}
        yield event("message_start", message={"id": "msg_1", "type": "message", "role": "assistant", "model": model,
                                              "content": [], "stop_reason": None, "usage": usage})
        yield event("ping")
        if model == "claude-tools":
            yield event("content_block_start", index=0, content_block={"type": "text", "text": ""})
            yield event("content_block_delta", index=0, delta={"type": "text_delta", "text": "Let me check."})
            yield event("content_block_stop", index=0)
            for i, (name, args) in enumerate(TOOL_CALLS, start=1):
                yield event("content_block_start", index=i,
                            content_block={"type": "tool_use", "id": f"toolu_{i}", "name": name, "input": {}})
                half = len(args) // 2
                for part in (args[:half], args[half:]):
                    yield event("content_block_delta", index=i, delta={"type": "input_json_delta", "partial_json": part})
                yield event("content_block_stop", index=i)
            yield event("message_delta", delta={"stop_reason": "tool_use", "stop_sequence": None}, usage={"output_tokens": 7})
            yield event("message_stop")
            return
        yield event("content_block_start", index=0, content_block={"type": "text", "text": ""})
        if model == "slow":
            while True:
                yield event("content_block_delta", index=0, delta={"type": "text_delta", "text": "x"})
                await asyncio.sleep(0.05)
        for word in WORDS:
            yield event("content_block_delta", index=0, delta={"type": "text_delta", "text": word})
            if model == "drop" and word == "lo":
                raise RuntimeError("the fake drops the connection mid-stream")
            if model == "error-event" and word == "lo":
                yield event("error", error={"type": "overloaded_error", "message": "Overloaded"})
                return
        yield event("content_block_stop", index=0)
        reason = "max_tokens" if model == "claude-max" else "stop_sequence" if body.get("stop_sequences") else "end_turn"
        yield event("message_delta", delta={"stop_reason": reason, "stop_sequence": None}, usage={"output_tokens": 3})
        yield event("message_stop")
