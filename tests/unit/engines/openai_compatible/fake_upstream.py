"""A fake OpenAI-compatible server on a loopback port, for the openai-compatible engine.

The request's ``model`` picks the behaviour (``ok``, ``err400``, ``drop``, ...), so one
server serves every test. It runs uvicorn in a thread of its own, and records what it
received and whether a client went away mid-stream.
"""

from __future__ import annotations

import asyncio
import base64
import struct
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.integration.servers import free_port

WORDS = ("Hel", "lo", " world")
KEY = "sk-fake-SECRET-123"
TOOL_CALLS = (("get_weather", '{"city": "Paris"}'), ("get_time", '{"tz": "Europe/Paris"}'))


def sse(obj: object) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


@dataclass
class Recorded:
    bodies: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    disconnected: threading.Event = field(default_factory=threading.Event)
    streaming: threading.Event = field(default_factory=threading.Event)


class FakeUpstream:
    def __init__(self, require_key: str | None = None) -> None:
        self.require_key = require_key
        self.seen = Recorded()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        app = Starlette(
            routes=[
                Route("/v1/models", self.models, methods=["GET"]),
                Route("/v1/chat/completions", self.generate, methods=["POST"]),
                Route("/v1/completions", self.generate, methods=["POST"]),
                Route("/v1/embeddings", self.embeddings, methods=["POST"]),
            ]
        )
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="critical", lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="fake-upstream", daemon=True)

    def __enter__(self) -> FakeUpstream:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the fake upstream did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(10)

    def reset(self) -> None:
        self.seen = Recorded()

    # -- endpoints ---------------------------------------------------------------------

    def _authorized(self, request: Request) -> bool:
        return self.require_key is None or request.headers.get("authorization") == f"Bearer {self.require_key}"

    def _refuse_key(self, request: Request) -> Response:
        # like servers that echo the key they refused
        return JSONResponse(
            {"error": {"message": f"Incorrect API key provided: {request.headers.get('authorization')}",
                       "type": "invalid_request_error", "code": "invalid_api_key"}},
            status_code=401,
        )

    async def models(self, request: Request) -> Response:
        if not self._authorized(request):
            return self._refuse_key(request)
        return JSONResponse({"object": "list", "data": [{"id": "ok", "object": "model"}]})

    async def generate(self, request: Request) -> Response:
        body = orjson.loads(await request.body())
        self.seen.bodies.append(body)
        self.seen.headers.append(dict(request.headers))
        if not self._authorized(request) or body["model"] == "err401":
            return self._refuse_key(request)
        chat = request.url.path.endswith("/chat/completions")
        model = body["model"]
        if model == "err400":
            return JSONResponse(
                {"error": {"message": "max_tokens must be at most 100, got 9999", "type": "invalid_request_error",
                           "param": "max_tokens", "code": None}},
                status_code=400,
            )
        if model == "err422":  # FastAPI's shape, as transformers serve answers an unknown field
            return JSONResponse({"detail": [{"loc": ["body", "ignore_eos"], "msg": "Extra inputs are not permitted"}]},
                                status_code=422)
        if model == "err404":
            return JSONResponse({"error": {"message": "The model `err404` does not exist.", "code": 404}}, status_code=404)
        if model == "err429":
            return JSONResponse({"error": {"message": "too many requests"}}, status_code=429,
                                headers={"retry-after": "7"})
        if model == "err500":
            return PlainTextResponse("Internal Server Error", status_code=500)
        if model in ("hang", "hang-slow"):
            await asyncio.sleep(3)
        if model == "hang-long":  # longer than a gateway's shortest worker timeout
            await asyncio.sleep(8)
        if model == "json":  # ignores stream: true
            return JSONResponse(self._whole(body, chat))
        if model == "tools-json":  # tool calls in a whole (non-streamed) answer
            message = {"role": "assistant", "content": None, "tool_calls": [
                {"id": f"call_{i}", "type": "function", "function": {"name": name, "arguments": args}}
                for i, (name, args) in enumerate(TOOL_CALLS)
            ]}
            return JSONResponse({"object": "chat.completion", "usage": {"prompt_tokens": 9, "completion_tokens": 7},
                                 "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls"}]})
        if model == "tools":
            return StreamingResponse(self._tool_events(), media_type="text/event-stream")
        return StreamingResponse(self._events(body, chat), media_type="text/event-stream")

    def _whole(self, body: dict[str, Any], chat: bool) -> dict[str, Any]:
        text = "".join(WORDS)
        choices = [
            {"index": i, "finish_reason": "stop", **({"message": {"role": "assistant", "content": text}} if chat else {"text": text})}
            for i in range(body.get("n", 1))
        ]
        return {"object": "chat.completion", "choices": choices, "usage": {"prompt_tokens": 5, "completion_tokens": 3}}

    async def _events(self, body: dict[str, Any], chat: bool) -> AsyncIterator[bytes]:
        model, n = body["model"], body.get("n", 1)

        def choice(i: int, text: str | None, finish: str | None = None) -> dict[str, Any]:
            if chat:
                delta = {} if text is None else {"content": text}
                return {"index": i, "delta": delta, "finish_reason": finish}
            return {"index": i, "text": text or "", "finish_reason": finish}

        completed = False
        self.seen.streaming.set()
        try:
            if chat:
                yield sse({"choices": [{"index": i, "delta": {"role": "assistant"}} for i in range(n)]})
            if model in ("slow", "hang-slow"):  # streams forever, until the client leaves
                while True:
                    yield sse({"choices": [choice(0, "x")]})
                    await asyncio.sleep(0.05)
            if model == "n-ignored":
                n = 1
            for word in WORDS:
                for i in range(n):  # n > 1: choices interleaved, one event per choice
                    yield sse({"choices": [choice(i, f"{word}{i}" if i else word)]})
                if model == "drop" and word == "lo":
                    raise RuntimeError("the fake upstream crashes mid-stream")
                if model == "error-event" and word == "lo":
                    yield sse({"error": {"message": "CUDA out of memory", "type": "server_error", "code": 500}})
                    return
            finish = "length" if body.get("max_tokens") == 3 else "stop"
            last = [choice(i, None, finish) for i in range(n)]
            usage = {"prompt_tokens": 5, "completion_tokens": 3 * n, "total_tokens": 5 + 3 * n}
            if model == "tf-serve":  # transformers serve: usage on the last choice chunk, no [DONE]
                yield sse({"choices": last, "usage": usage})
            else:
                yield sse({"choices": last})
                if model != "no-usage":
                    yield b": keep-alive comment\n\n"
                    yield sse({"choices": [], "usage": usage})
                yield b"data: [DONE]\n\n"
            completed = True
        finally:
            if not completed:
                self.seen.disconnected.set()

    async def _tool_events(self) -> AsyncIterator[bytes]:
        """Two calls, as OpenAI streams them: id, type and name first, then the
        arguments in fragments; finish reason ``tool_calls``."""
        yield sse({"choices": [{"index": 0, "delta": {"role": "assistant", "content": None}}]})
        for i, (name, args) in enumerate(TOOL_CALLS):
            first = {"index": i, "id": f"call_{i}", "type": "function", "function": {"name": name, "arguments": ""}}
            yield sse({"choices": [{"index": 0, "delta": {"tool_calls": [first]}}]})
            half = len(args) // 2
            for part in (args[:half], args[half:]):
                yield sse({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": i, "function": {"arguments": part}}]}}]})
        yield sse({"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]})
        yield sse({"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 7, "total_tokens": 16}})
        yield b"data: [DONE]\n\n"

    async def embeddings(self, request: Request) -> Response:
        body = orjson.loads(await request.body())
        self.seen.bodies.append(body)
        if not self._authorized(request):
            return self._refuse_key(request)
        if body["model"] == "err500":
            return PlainTextResponse("boom", status_code=500)
        vectors = [[float(len(text)), 1.0, -0.5] for text in body["input"]]
        if body["model"] == "b64":
            data = [base64.b64encode(struct.pack("<3f", *v)).decode() for v in vectors]
        else:
            data = vectors
        items = [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(data)]
        return JSONResponse({"object": "list", "data": items[::-1], "usage": {"prompt_tokens": 4, "total_tokens": 4}})
