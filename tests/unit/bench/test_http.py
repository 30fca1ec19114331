"""The load generator's HTTP client against a scripted loopback server: framing
(Content-Length, chunked, until EOF), keep-alive, server-sent events, failures."""

from __future__ import annotations

import asyncio
from array import array
from collections.abc import AsyncIterator, Callable

import pytest

from corral.bench.http import Connection, Target, build_request, completion_tokens, fetch

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], "asyncio.Future[None] | object"]


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head + (await reader.readexactly(length) if length else b"")


class Scripted:
    """Answers each request on a connection with the next of ``answers`` (bytes, or a
    list of byte parts written with a pause between them); ``None`` hangs up at once."""

    def __init__(self, answers: list[bytes | list[bytes] | None]) -> None:
        self.answers = answers
        self.requests: list[bytes] = []
        self.connections = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            for answer in self.answers:
                if answer is None:
                    break
                self.requests.append(await _read_request(reader))
                for part in answer if isinstance(answer, list) else [answer]:
                    writer.write(part)
                    await writer.drain()
                    await asyncio.sleep(0.002)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Scripted], "asyncio.Future[Target]"]]:
    servers: list[asyncio.base_events.Server] = []

    async def start(script: Scripted) -> Target:
        server = await asyncio.start_server(script.handle, "127.0.0.1", 0)
        servers.append(server)
        return Target.parse(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1")

    yield start  # type: ignore[misc]
    for server in servers:
        server.close()


def _sse(*events: bytes) -> list[bytes]:
    head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    parts = [head]
    for event in events:
        data = b"data: " + event + b"\n\n"
        parts.append(b"%x\r\n%s\r\n" % (len(data), data))
    parts.append(b"0\r\n\r\n")
    return parts


def test_target_parse_and_request_bytes() -> None:
    t = Target.parse("http://example.test:8000/v1/")
    assert (t.host, t.port, t.tls, t.base_path) == ("example.test", 8000, False, "/v1")
    assert t.url("/models") == "http://example.test:8000/v1/models"
    assert Target.parse("https://h/v1").port == 443 and Target.parse("https://h/v1").authority == "h"
    assert Target.parse("127.0.0.1:9/v1").port == 9
    for bad in ("ftp://h/v1", "http://", "http://h:99999/v1"):
        with pytest.raises(ValueError):
            Target.parse(bad)
    raw = build_request(t, "POST", "/chat/completions", b'{"a":1}', {"authorization": "Bearer k"})
    assert raw.startswith(b"POST /v1/chat/completions HTTP/1.1\r\nhost: example.test:8000\r\n")
    assert b"authorization: Bearer k\r\ncontent-length: 7\r\n\r\n{\"a\":1}" in raw


def test_completion_tokens_from_usage() -> None:
    assert completion_tokens(b'{"usage": {"prompt_tokens": 3, "completion_tokens": 12}}') == 12
    assert completion_tokens(b'{"usage": null}') is None


async def test_content_length_and_chunked_on_one_keep_alive_connection(serve) -> None:  # type: ignore[no-untyped-def]
    body = b'{"usage":{"prompt_tokens":5,"completion_tokens":7}}'
    script = Scripted([
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body),
        [b"HTTP/1.1 201 Created\r\ntransfer-encoding: chunked\r\n\r\n", b"3\r\nabc\r\n", b"2\r\nde\r\n0\r\n\r\n"],
    ])
    target = await serve(script)
    conn = await Connection.open(target)
    payload = build_request(target, "POST", "/chat/completions", b"{}")
    first = await conn.request(payload)
    assert (first.status, first.error, first.content) == (200, None, body)
    second = await conn.request(payload)
    assert (second.status, second.error, second.content) == (201, None, b"abcde")
    assert second.t_end >= second.t_start
    assert script.connections == 1 and len(script.requests) == 2
    conn.close()


async def test_event_stream_timings_usage_and_split_lines(serve) -> None:  # type: ignore[no-untyped-def]
    parts = _sse(
        b'{"choices":[{"delta":{"role":"assistant","content":""}}]}',  # no text: not a token
        b'{"choices":[{"delta":{"content":"Hel"}}]}',
        b'{"choices":[{"delta":{"content": "lo"}}]}',  # spaces: the slow path still sees it
        b'{"choices":[{"text":"!"}]}',  # a completions chunk
        b'{"choices":[],"usage":{"prompt_tokens":4,"completion_tokens":3}}',
        b"[DONE]",
    )
    # cut one chunk in the middle of its data line: the line must be joined, not lost
    cut = parts[2]
    parts[2:3] = [cut[:20], cut[20:]]
    script = Scripted([parts])
    target = await serve(script)
    conn = await Connection.open(target)
    gaps: array = array("d")  # type: ignore[type-arg]
    ex = await conn.request(build_request(target, "POST", "/chat/completions", b"{}"), gaps)
    assert ex.status == 200 and ex.error is None and ex.sse
    assert ex.text_events == 3 and len(gaps) == 2
    assert ex.t_first is not None and ex.t_start <= ex.t_first <= ex.t_last <= ex.t_end
    assert (ex.completion_tokens, ex.prompt_tokens) == (3, 4)
    conn.close()


async def test_error_event_in_a_stream_is_an_error(serve) -> None:  # type: ignore[no-untyped-def]
    script = Scripted([_sse(b'{"choices":[{"delta":{"content":"a"}}]}', b'{"error":{"message":"boom"}}')])
    target = await serve(script)
    conn = await Connection.open(target)
    ex = await conn.request(build_request(target, "POST", "/chat/completions", b"{}"))
    assert ex.status == 200 and ex.error == "stream error" and b"boom" in ex.content
    conn.close()


def _ndjson(*lines: bytes) -> list[bytes]:
    head = b"HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\ntransfer-encoding: chunked\r\n\r\n"
    parts = [head] + [b"%x\r\n%s\r\n" % (len(line) + 1, line + b"\n") for line in lines]
    return parts + [b"0\r\n\r\n"]


async def test_ollama_json_lines_are_read_as_a_stream(serve) -> None:  # type: ignore[no-untyped-def]
    parts = _ndjson(
        b'{"model":"m","created_at":"t","message":{"role":"assistant","content":"Hel"},"done":false}',
        b'{"model":"m","created_at":"t","message":{"role":"assistant","content":"lo"},"done":false}',
        b'{"model":"m","created_at":"t","message":{"role":"assistant","content":""},"done":true,'
        b'"done_reason":"stop","prompt_eval_count":4,"eval_count":2}',
    )
    target = await serve(Scripted([parts, _ndjson(b'{"message":{"content":"a"}}', b'{"error":"boom"}')]))
    conn = await Connection.open(target)
    gaps: array = array("d")  # type: ignore[type-arg]
    ex = await conn.request(build_request(target, "POST", "/api/chat", b"{}"), gaps)
    assert ex.status == 200 and ex.error is None and ex.sse and ex.ndjson
    assert ex.text_events == 2 and len(gaps) == 1 and (ex.completion_tokens, ex.prompt_tokens) == (2, 4)
    failed = await conn.request(build_request(target, "POST", "/api/chat", b"{}"))
    assert failed.error == "stream error" and b"boom" in failed.content
    conn.close()


async def test_connection_close_and_body_until_eof(serve) -> None:  # type: ignore[no-untyped-def]
    script = Scripted([b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nuntil the end"])
    target = await serve(script)
    status, body = await fetch(target, "GET", "/models")
    assert (status, body) == (200, b"until the end")


async def test_server_hanging_up_mid_answer_is_a_closed_error(serve) -> None:  # type: ignore[no-untyped-def]
    script = Scripted([[b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly part"], None])
    # the server reads the request, sends part of the answer, then hangs up
    target = await serve(script)
    conn = await Connection.open(target)
    ex = await conn.request(build_request(target, "GET", "/models"))
    assert ex.status == 200 and ex.error == "closed"
    assert conn.closed
    again = await conn.request(build_request(target, "GET", "/models"))  # a closed connection fails at once
    assert again.error == "closed" and again.status == 0


async def test_timeout_and_refused() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1000)
        await asyncio.sleep(5)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    target = Target.parse(f"http://127.0.0.1:{port}/v1")
    conn = await Connection.open(target)
    ex = await conn.request(build_request(target, "GET", "/models"), timeout=0.1)
    assert ex.error == "timeout" and ex.status == 0 and conn.closed
    server.close()
    await server.wait_closed()
    with pytest.raises(OSError):
        await fetch(target, "GET", "/models", timeout=2)
