"""A fast fake OpenAI server: the upstream of the gateway benchmarks, and of the tests.

It answers instantly with canned text, so whatever sits in front of it is what a
benchmark measures. An ``asyncio.Protocol`` with the ``httptools`` parser (uvloop when
installed), HTTP/1.1 keep-alive, no framework:

- ``GET /v1/models``; ``GET /health``; ``GET /stats``: requests and connections so far;
- ``POST /v1/chat/completions`` and ``/v1/completions``: ``max_tokens`` (or
  ``max_completion_tokens``, default 16) tokens of text; streamed as a role chunk, one
  chunk per token, a finish chunk, a usage chunk when ``stream_options.include_usage``,
  then ``data: [DONE]`` (chunked transfer encoding, one write per event, yielding to the
  event loop between events as a real server does between tokens; with a delay, a
  whole answer waits the delay once per token);
- ``POST /v1/embeddings``: an 8-dimensional vector per input.

A request for model ``error-NNN`` gets HTTP NNN (a test hook). With ``api_key`` set,
``/v1`` requires ``Authorization: Bearer KEY``. Run it:
``python -m corral.bench.fake_openai --port 9000`` (prints ``ready`` once listening).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from typing import Any

import httptools
import orjson

DEFAULT_TOKENS = 16
MAX_TOKENS = 8192
TOKEN = " tok"


def _response(status: int, body: bytes, content_type: bytes = b"application/json", close: bool = False) -> bytes:
    reason = {200: b"OK", 400: b"Bad Request", 401: b"Unauthorized", 404: b"Not Found"}.get(status, b"Status")
    head = b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n" % (status, reason, content_type, len(body))
    return head + (b"connection: close\r\n\r\n" if close else b"\r\n") + body


def _error(status: int, message: str) -> bytes:
    return _response(status, orjson.dumps({"error": {"message": message, "type": "invalid_request_error", "code": None}}))


def _frame(event: bytes) -> bytes:
    """One server-sent event as one chunk of a chunked body."""
    data = b"data: " + event + b"\n\n"
    return b"%x\r\n%s\r\n" % (len(data), data)


_STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
    b"transfer-encoding: chunked\r\n\r\n"
)
_DONE = _frame(b"[DONE]") + b"0\r\n\r\n"


class _Canned:
    """Pre-encoded stream chunks of one model and route (built once, reused per request)."""

    def __init__(self, model: str, chat: bool) -> None:
        obj = "chat.completion.chunk" if chat else "text_completion"
        self.chat = chat
        self.model = model
        prefix = {"id": "chatcmpl-fake" if chat else "cmpl-fake", "object": obj, "created": 0, "model": model}
        if chat:
            first = {**prefix, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}
            token = {**prefix, "choices": [{"index": 0, "delta": {"content": TOKEN}, "finish_reason": None}]}
            self.first: bytes | None = _frame(orjson.dumps(first))
        else:
            token = {**prefix, "choices": [{"index": 0, "text": TOKEN, "finish_reason": None}]}
            self.first = None
        self.token = _frame(orjson.dumps(token))
        self.prefix = prefix

    def finish(self, reason: str) -> bytes:
        choice: dict[str, Any] = {"index": 0, "finish_reason": reason}
        choice.update({"delta": {}} if self.chat else {"text": ""})
        return _frame(orjson.dumps({**self.prefix, "choices": [choice]}))

    def usage(self, prompt: int, completion: int) -> bytes:
        usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
        return _frame(orjson.dumps({**self.prefix, "choices": [], "usage": usage}))

    def whole(self, prompt: int, completion: int, reason: str) -> bytes:
        text = TOKEN * completion
        choice: dict[str, Any] = {"index": 0, "finish_reason": reason}
        choice.update({"message": {"role": "assistant", "content": text}} if self.chat else {"text": text})
        obj = "chat.completion" if self.chat else "text_completion"
        body = {**self.prefix, "object": obj, "choices": [choice],
                "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}}
        return _response(200, orjson.dumps(body))


class FakeOpenAI:
    """The server's state shared by its connections: settings and canned chunks."""

    def __init__(self, models: tuple[str, ...] = ("fake",), api_key: str | None = None, delay_s: float = 0.0) -> None:
        self.models = models
        self.auth = f"Bearer {api_key}".encode() if api_key else None
        self.delay_s = delay_s  # between two streamed events (a whole answer: per token); 0 only yields to the event loop
        self.served = 0  # requests answered
        self.connections = 0  # connections accepted: a client that does not reuse them shows here
        self._canned: dict[tuple[str, bool], _Canned] = {}
        self._models_body = _response(200, orjson.dumps(
            {"object": "list", "data": [{"id": m, "object": "model", "created": 0, "owned_by": "fake"} for m in models]}
        ))

    def canned(self, model: str, chat: bool) -> _Canned:
        found = self._canned.get((model, chat))
        if found is None:
            if len(self._canned) > 256:  # callers choose model names: bound the cache
                self._canned.clear()
            found = self._canned[(model, chat)] = _Canned(model, chat)
        return found

    def models_response(self) -> bytes:
        return self._models_body

    async def serve(self, host: str = "127.0.0.1", port: int = 0) -> asyncio.base_events.Server:
        loop = asyncio.get_running_loop()
        return await loop.create_server(lambda: _Connection(self, loop), host, port, backlog=1024)


class _Connection(asyncio.Protocol):
    def __init__(self, server: FakeOpenAI, loop: asyncio.AbstractEventLoop) -> None:
        self._server = server
        self._loop = loop
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._url = b""
        self._body: list[bytes] = []
        self._authorized = False
        self._close = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's is no asyncio.Transport subclass
        self._server.connections += 1

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            self._write(_error(400, "malformed request"))
            self._close_now()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None

    def _close_now(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def _write(self, data: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    # httptools callbacks
    def on_message_begin(self) -> None:
        self._url, self._body, self._authorized, self._close = b"", [], self._server.auth is None, False

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        lower = name.lower()
        if lower == b"authorization":
            self._authorized = self._authorized or value == self._server.auth
        elif lower == b"connection" and value.lower() == b"close":
            self._close = True

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._server.served += 1
        method = self._parser.get_method()
        path = self._url.split(b"?", 1)[0]
        if method == b"GET" and path == b"/health":
            self._finish(_response(200, b'{"status":"ok"}'))
        elif method == b"GET" and path == b"/stats":
            self._finish(_response(200, orjson.dumps({"requests": self._server.served,
                                                      "connections": self._server.connections})))
        elif path.startswith(b"/v1/") and not self._authorized:
            self._finish(_error(401, "invalid api key"))
        elif method == b"GET" and path == b"/v1/models":
            self._finish(self._server.models_response())
        elif method == b"POST" and path in (b"/v1/chat/completions", b"/v1/completions", b"/v1/embeddings"):
            self._post(path)
        else:
            self._finish(_error(404, f"no route {method.decode()} {path.decode(errors='replace')}"))

    def _finish(self, data: bytes) -> None:
        self._write(data)
        if self._close:
            self._close_now()

    def _post(self, path: bytes) -> None:
        try:
            req = orjson.loads(b"".join(self._body))
            if not isinstance(req, dict):
                raise ValueError("not an object")
        except (orjson.JSONDecodeError, ValueError):
            self._finish(_error(400, "the body is not a JSON object"))
            return
        model = req.get("model")
        if not isinstance(model, str) or not model:
            self._finish(_error(400, "model is required"))
            return
        if model.startswith("error-") and model[6:].isdigit():
            self._finish(_error(int(model[6:]), f"requested failure {model[6:]}"))
            return
        if path == b"/v1/embeddings":
            self._finish(_embeddings(model, req.get("input")))
            return
        chat = path == b"/v1/chat/completions"
        prompt = _prompt_tokens(req, chat)
        limit = req.get("max_completion_tokens") or req.get("max_tokens") or DEFAULT_TOKENS
        tokens = max(1, min(int(limit) if isinstance(limit, int) else DEFAULT_TOKENS, MAX_TOKENS))
        canned = self._server.canned(model, chat)
        if not req.get("stream"):
            whole = canned.whole(prompt, tokens, "length")
            if self._server.delay_s > 0:  # a whole answer takes as long as its stream would
                self._loop.call_later(self._server.delay_s * tokens, self._finish, whole)
            else:
                self._finish(whole)
            return
        options = req.get("stream_options")
        usage = isinstance(options, dict) and bool(options.get("include_usage"))
        _Stream(self, canned, prompt, tokens, usage).start()

    def stream_write(self, data: bytes) -> bool:
        """Write one part of a stream; False once the client went away."""
        if self._transport is None or self._transport.is_closing():
            return False
        self._transport.write(data)
        return True

    def stream_end(self) -> None:
        if self._close:
            self._close_now()


class _Stream:
    """One streamed answer, an event per event-loop turn (a chain of ``call_soon`` or
    ``call_later`` callbacks: about half the CPU of a task awaiting ``sleep(0)``)."""

    __slots__ = ("_conn", "_canned", "_prompt", "_left", "_tokens", "_usage", "_loop", "_delay")

    def __init__(self, conn: _Connection, canned: _Canned, prompt: int, tokens: int, usage: bool) -> None:
        self._conn, self._canned, self._prompt = conn, canned, prompt
        self._left = self._tokens = tokens
        self._usage = usage
        self._loop = conn._loop
        self._delay = conn._server.delay_s

    def start(self) -> None:
        if self._conn.stream_write(_STREAM_HEAD + (self._canned.first or b"")):
            self._schedule()

    def _schedule(self) -> None:
        if self._delay > 0:
            self._loop.call_later(self._delay, self._step)
        else:
            self._loop.call_soon(self._step)

    def _step(self) -> None:
        if self._left > 0:
            self._left -= 1
            if self._conn.stream_write(self._canned.token):
                self._schedule()
            return
        usage = self._canned.usage(self._prompt, self._tokens) if self._usage else b""
        if self._conn.stream_write(self._canned.finish("length") + usage + _DONE):
            self._conn.stream_end()


def _prompt_tokens(req: dict[str, Any], chat: bool) -> int:
    """Whitespace-separated words: a cheap stand-in for a tokenizer."""
    if chat:
        messages = req.get("messages")
        if not isinstance(messages, list):
            return 0
        return sum(len(m["content"].split()) for m in messages if isinstance(m, dict) and isinstance(m.get("content"), str))
    prompt = req.get("prompt")
    return len(prompt.split()) if isinstance(prompt, str) else 0


def _embeddings(model: str, inputs: Any) -> bytes:
    if isinstance(inputs, str):
        inputs = [inputs]
    if not isinstance(inputs, list) or not inputs:
        return _error(400, "input must be a string or a non-empty list")
    vector = [0.125] * 8
    data = [{"object": "embedding", "index": i, "embedding": vector} for i in range(len(inputs))]
    words = sum(len(x.split()) for x in inputs if isinstance(x, str))
    body = {"object": "list", "model": model, "data": data, "usage": {"prompt_tokens": words, "total_tokens": words}}
    return _response(200, orjson.dumps(body))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m corral.bench.fake_openai", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--model", action="append", dest="models", help="model listed by /v1/models (repeatable)")
    parser.add_argument("--api-key", help="require this bearer key on /v1")
    parser.add_argument("--delay-ms", type=float, default=0.0,
                        help="pause between streamed events (a whole answer waits this per token)")
    args = parser.parse_args(argv)
    server = FakeOpenAI(tuple(args.models or ["fake"]), args.api_key, args.delay_ms / 1000)

    async def run() -> None:
        srv = await server.serve(args.host, args.port)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        port = srv.sockets[0].getsockname()[1]
        print(f"ready http://{args.host}:{port}/v1", flush=True)
        await stop.wait()
        srv.close()

    from corral.bench.http import new_event_loop

    loop = new_event_loop()
    try:
        loop.run_until_complete(run())
    finally:
        loop.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
