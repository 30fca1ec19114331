"""A minimal HTTP/1.1 keep-alive client for load generation.

Why not httpx or aiohttp: a load generator must cost far less per request than the
server it measures, and on a 2-core machine the generator shares the CPU with it. This
client is an ``asyncio.Protocol`` (uvloop when available) with the C parser of
``httptools`` (already installed with ``uvicorn[standard]``): one pre-built request
buffer written per request, no header objects, no per-request allocation beyond an
``Exchange``. It speaks just enough HTTP: one request at a time per connection,
Content-Length and chunked responses, keep-alive and ``connection: close``, and
server-sent events, timing each ``data:`` line that carries generated text.
"""

from __future__ import annotations

import asyncio
import re
import socket
import ssl as ssl_module
from array import array
from dataclasses import dataclass
from time import perf_counter
from typing import Any
from urllib.parse import urlsplit

import httptools

# A ``data:`` line carries text when "content" (chat) or "text" (completions) is a non-empty
# string. ``"reasoning_content"`` does not match: the quote must open the key.
_TEXT = re.compile(rb'"(?:content|text)"\s*:\s*"[^"]')
# OpenAI's usage names, Anthropic's (output_tokens, input_tokens), Ollama's final counts
_COMPLETION_TOKENS = re.compile(rb'"(?:completion_tokens|output_tokens|eval_count)"\s*:\s*(\d+)')
_PROMPT_TOKENS = re.compile(rb'"(?:prompt_tokens|input_tokens|prompt_eval_count)"\s*:\s*(\d+)')


def completion_tokens(data: bytes) -> int | None:
    m = _COMPLETION_TOKENS.search(data)
    return int(m.group(1)) if m else None


def prompt_tokens(data: bytes) -> int | None:
    m = _PROMPT_TOKENS.search(data)
    return int(m.group(1)) if m else None


@dataclass(frozen=True)
class Target:
    """Where requests go: ``http(s)://host:port/base``."""

    host: str
    port: int
    tls: bool
    base_path: str  # without a trailing slash, e.g. "/v1"

    @classmethod
    def parse(cls, url: str) -> Target:
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{url!r} is not an http:// or https:// URL")
        tls = parts.scheme == "https"
        try:
            port = parts.port or (443 if tls else 80)
        except ValueError:
            raise ValueError(f"{url!r} has an invalid port") from None
        return cls(parts.hostname, port, tls, parts.path.rstrip("/"))

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.tls else 80
        return host if self.port == default else f"{host}:{self.port}"

    def url(self, path: str = "") -> str:
        return f"{'https' if self.tls else 'http'}://{self.authority}{self.base_path}{path}"


def build_request(
    target: Target, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> bytes:
    """The whole request as bytes, built once and written as is for every request."""
    lines = [f"{method} {target.base_path}{path} HTTP/1.1", f"host: {target.authority}"]
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    if body is not None:
        lines.append(f"content-length: {len(body)}")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head + (body or b"")


class Exchange:
    """One request and its answer, filled in by the connection as bytes arrive.

    Times are ``perf_counter`` seconds. For event streams, ``t_first``/``t_last`` are
    the first and last ``data:`` lines with text, ``text_events`` how many there were,
    and the gaps between them go straight to the ``gaps`` array given to ``request``.
    """

    __slots__ = (
        "t_start", "t_end", "t_first", "t_last", "status", "error", "sse", "ndjson", "text_events",
        "completion_tokens", "prompt_tokens", "body", "gaps", "future", "_close", "_event_error",
    )

    def __init__(self, t_start: float, gaps: array | None, future: asyncio.Future[Exchange]) -> None:  # type: ignore[type-arg]
        self.t_start = t_start
        self.t_end = 0.0
        self.t_first: float | None = None
        self.t_last = 0.0
        self.status = 0
        self.error: str | None = None  # a transport failure, or an error event inside a stream
        self.sse = False  # an event stream, or (``ndjson``) Ollama's JSON lines, read the same way
        self.ndjson = False
        self.text_events = 0
        self.completion_tokens: int | None = None
        self.prompt_tokens: int | None = None
        self.body: list[bytes] = []
        self.gaps = gaps
        self.future = future
        self._close = False
        self._event_error = False

    @property
    def content(self) -> bytes:
        return b"".join(self.body)

    def data_line(self, line: bytes, now: float) -> None:
        """One ``data:`` line of an event stream."""
        if _TEXT.search(line) is not None:
            if self.t_first is None:
                self.t_first = now
            elif self.gaps is not None:
                self.gaps.append(now - self.t_last)
            self.t_last = now
            self.text_events += 1
        elif b'"completion_tokens"' in line or b'"message_delta"' in line or b'"eval_count"' in line:
            # usage: OpenAI's chunk, Anthropic's event, Ollama's final line
            self.completion_tokens = completion_tokens(line)
            self.prompt_tokens = prompt_tokens(line)
        elif self._event_error or line[5:].lstrip().startswith(b'{"error"'):
            self.error = "stream error"
            self.body.append(line[5:].strip())
        self._event_error = False


class Connection(asyncio.Protocol):
    """One keep-alive connection; ``request`` sends a pre-built request and resolves when
    the whole answer has arrived (or the connection failed)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._exchange: Exchange | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._tail = b""  # an incomplete SSE line carried to the next body chunk
        self._framed = True  # the answer has a Content-Length or is chunked
        self.closed = False

    # ------------------------------------------------------------------ opening and closing

    @classmethod
    async def open(cls, target: Target, timeout: float = 10.0) -> Connection:
        loop = asyncio.get_running_loop()
        context = ssl_module.create_default_context() if target.tls else None
        _, conn = await asyncio.wait_for(
            loop.create_connection(
                lambda: cls(loop), target.host, target.port, ssl=context,
                server_hostname=target.host if context else None,
            ),
            timeout,
        )
        return conn

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's is no asyncio.Transport subclass
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:  # small requests must leave at once (asyncio sets it too; uvloop may not)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except (OSError, AttributeError):
                pass

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        exchange = self._exchange
        if exc is None and exchange is not None and exchange.status and not self._framed:
            self.on_message_complete()  # a body that ends with the connection (no length, not chunked)
            return
        self._fail("closed" if exc is None else error_kind(exc))

    def close(self) -> None:
        self.closed = True
        if self._transport is not None:
            self._transport.close()

    # ------------------------------------------------------------------------- requests

    def request(
        self, payload: bytes, gaps: array | None = None, t_start: float | None = None, timeout: float = 300.0,  # type: ignore[type-arg]
    ) -> asyncio.Future[Exchange]:
        """Send ``payload`` (from ``build_request``). ``t_start`` (default: now) is where
        latency and time to first token count from; the future never raises: failures are
        in ``Exchange.error``."""
        if self._exchange is not None:
            raise RuntimeError("one request at a time per connection")
        future: asyncio.Future[Exchange] = self._loop.create_future()
        exchange = Exchange(perf_counter() if t_start is None else t_start, gaps, future)
        if self.closed or self._transport is None:
            self.closed = True
            exchange.error = "closed"
            future.set_result(exchange)
            return future
        self._exchange = exchange
        self._timer = self._loop.call_later(timeout, self._on_timeout)
        self._transport.write(payload)
        return future

    def _on_timeout(self) -> None:
        self._timer = None
        self._fail("timeout")
        self.close()

    def _fail(self, kind: str) -> None:
        exchange = self._exchange
        if exchange is None:
            return
        self._exchange = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        exchange.error = exchange.error or kind
        exchange.t_end = perf_counter()
        if not exchange.future.done():
            exchange.future.set_result(exchange)

    # ------------------------------------------------------------ parser (httptools) callbacks

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            self._fail("bad response")
            self.close()

    def on_header(self, name: bytes, value: bytes) -> None:
        exchange = self._exchange
        if exchange is None:
            return
        lower = name.lower()
        if lower == b"content-type":
            exchange.ndjson = value.startswith(b"application/x-ndjson")
            exchange.sse = exchange.ndjson or value.startswith(b"text/event-stream")
        elif lower == b"connection" and value.lower() == b"close":
            exchange._close = True
        elif lower == b"content-length" or lower == b"transfer-encoding":
            self._framed = True

    def on_message_begin(self) -> None:
        self._framed = False

    def on_headers_complete(self) -> None:
        if self._exchange is not None:
            self._exchange.status = self._parser.get_status_code()
            self._tail = b""

    def on_body(self, body: bytes) -> None:
        exchange = self._exchange
        if exchange is None:
            return
        if not exchange.sse or exchange.status >= 300:
            exchange.body.append(body)
            return
        now = perf_counter()
        if self._tail:
            body = self._tail + body
        lines = body.split(b"\n")
        self._tail = lines.pop()  # b"" when the chunk ended with a newline
        for line in lines:
            if not line:
                continue
            if exchange.ndjson:  # a JSON line is what a data: line carries
                line = b"data:" + line
            if line.startswith(b"data:"):
                # The hot path, once per token: compact JSON with a non-empty "content" string.
                # Anything else (spaces, "text", usage, errors) goes through data_line.
                i = line.find(b'"content":"')
                if i < 0 or line[i + 11:i + 12] == b'"' or exchange._event_error:
                    exchange.data_line(line, now)
                    continue
                if exchange.t_first is None:
                    exchange.t_first = now
                elif exchange.gaps is not None:
                    exchange.gaps.append(now - exchange.t_last)
                exchange.t_last = now
                exchange.text_events += 1
            elif line.startswith(b"event:") and b"error" in line:
                exchange._event_error = True

    def on_message_complete(self) -> None:
        exchange = self._exchange
        if exchange is None:
            return
        if self._tail.startswith(b"data:"):  # a last event without its newline
            exchange.data_line(self._tail.rstrip(b"\r"), perf_counter())
        self._tail = b""
        self._exchange = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        exchange.t_end = perf_counter()
        if exchange._close or not self._parser.should_keep_alive():
            self.close()
        exchange.future.set_result(exchange)


def error_kind(exc: BaseException) -> str:
    """A short, stable name for a transport failure (the key of the error counts)."""
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ConnectionResetError | BrokenPipeError):
        return "connection reset"
    if isinstance(exc, asyncio.TimeoutError | TimeoutError):
        return "timeout"
    if isinstance(exc, ssl_module.SSLError):
        return "tls error"
    if isinstance(exc, socket.gaierror):
        return "unknown host"
    if isinstance(exc, OSError):
        return exc.strerror.lower() if exc.strerror else type(exc).__name__
    return type(exc).__name__


async def fetch(target: Target, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None, timeout: float = 10.0) -> tuple[int, bytes]:
    """One request on a fresh connection: (status, body). Raises ``OSError`` (or
    ``TimeoutError``) when the server cannot be reached or the connection fails."""
    conn = await Connection.open(target, timeout)
    try:
        payload = build_request(target, method, path, body, {"connection": "close", **(headers or {})})
        exchange = await conn.request(payload, timeout=timeout)
    finally:
        conn.close()
    if exchange.error is not None and exchange.status == 0:
        raise OSError(exchange.error)
    return exchange.status, exchange.content


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's loop when installed (the generator's ceiling is then about twice as high)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    loop: Any = uvloop.new_event_loop()
    return loop  # type: ignore[no-any-return]
