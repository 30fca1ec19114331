"""A too-large body gets a readable 413 from the shared ``corral start``: the error JSON
with ``Connection: close``, sent at once, then the rest of the body is read and dropped
for a bounded time and size before the connection closes (a lingering close), so a
client still sending can read the answer instead of a reset, and nobody can keep a
connection busy with an endless body."""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator

import httpx
import openai
import pytest
from openai import OpenAI

from corral.web.middleware import LINGER_BYTES, LINGER_S
from tests.integration.conftest import API_KEY, DEMO_CHAT
from tests.integration.servers import Server

MIB = 1024 * 1024
LIMIT = 4 * MIB  # the shared server's default max_body_bytes


def completion_errors(server: Server) -> float:
    """Requests to /v1/completions that ended in an error, from the gateway's metrics."""
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    found = re.findall(r'^corral_requests_total\{([^}]*)\} (\S+)$', text, re.M)
    wanted = ('outcome="error"', 'route="completion"', 'protocol="openai"')
    return sum(float(v) for labels, v in found if all(w in labels for w in wanted))


def test_the_sdk_reads_the_413_and_does_not_retry(demo_server: Server) -> None:
    before = completion_errors(demo_server)
    with OpenAI(base_url=f"{demo_server.url}/v1", api_key=API_KEY, max_retries=2, timeout=120) as client:
        with pytest.raises(openai.APIStatusError) as caught:
            client.completions.create(model=DEMO_CHAT, prompt="a" * (64 * MIB), max_tokens=1)
    err = caught.value
    assert err.status_code == 413
    assert err.body == {  # the SDK hands over the error object
        "message": f"request body is {err.response.request.headers['content-length']} bytes; the limit is {LIMIT}",
        "type": "invalid_request_error", "param": None, "code": "request_too_large",
    }
    assert err.response.headers["connection"] == "close"
    assert err.response.headers["x-request-id"]
    # one request reached the server: a 413 is not retried (a reset would have been, twice)
    deadline = time.monotonic() + 5
    while completion_errors(demo_server) < before + 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # a retry would have come by now
    assert completion_errors(demo_server) == before + 1


def test_a_small_request_keeps_its_connection(demo_server: Server) -> None:
    with httpx.Client(base_url=demo_server.url, headers={"authorization": f"Bearer {API_KEY}"}, timeout=60) as http:
        small = {"model": DEMO_CHAT, "prompt": "Hi", "max_tokens": 1}
        resp = http.post("/v1/completions", json=small)
        assert resp.status_code == 200 and "connection" not in resp.headers
        too_big = http.post("/v1/completions", content=b" " * (LIMIT + 1), headers={"content-type": "application/json"})
        assert too_big.status_code == 413 and too_big.headers["connection"] == "close"
        assert http.post("/v1/completions", json=small).status_code == 200  # on a new connection


def test_a_chunked_body_over_the_limit_gets_413(demo_server: Server) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(16):
            yield b" " * MIB

    resp = httpx.post(f"{demo_server.url}/v1/chat/completions", content=chunks(), timeout=60,
                      headers={"authorization": f"Bearer {API_KEY}", "content-type": "application/json"})
    assert resp.status_code == 413 and resp.headers["connection"] == "close"
    assert resp.json()["error"] == {"message": f"request body exceeds the limit of {LIMIT} bytes",
                                    "type": "invalid_request_error", "param": None, "code": "request_too_large"}


def raw_request(server: Server, declared: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sock.sendall(
        b"POST /v1/completions HTTP/1.1\r\nhost: corral\r\ncontent-type: application/json\r\n"
        b"authorization: Bearer %s\r\ncontent-length: %d\r\n\r\n" % (API_KEY.encode(), declared)
    )
    sock.setblocking(False)
    return sock


def read_answer(sock: socket.socket, answer: bytearray) -> bool:
    """Whatever arrived; False once the server closed the connection."""
    while True:
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return True
        except ConnectionResetError:
            return False
        if not data:
            return False
        answer += data


def assert_413(answer: bytes) -> None:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413 "), answer[:200]
    assert b"\r\nconnection: close" in head.lower()
    assert b'"code":"request_too_large"' in body


def test_an_endless_body_is_drained_only_within_bounds(demo_server: Server) -> None:
    sock = raw_request(demo_server, 1 << 40)  # a terabyte announced, sent as fast as the server reads
    answer, sent, chunk = bytearray(), 0, b" " * (256 * 1024)
    started, open_ = time.monotonic(), True
    try:
        while open_ and sent < 4 * LINGER_BYTES and time.monotonic() - started < 4 * LINGER_S:
            try:
                sent += sock.send(chunk)
            except BlockingIOError:
                time.sleep(0.001)
            except (BrokenPipeError, ConnectionResetError):
                break  # closed while sending: what it answered before is in the receive buffer
            open_ = read_answer(sock, answer)
        took = time.monotonic() - started
        for _ in range(100):  # the rest of the answer, if it came as the connection closed
            if not read_answer(sock, answer):
                break
            time.sleep(0.01)
    finally:
        sock.close()
    assert_413(bytes(answer))  # readable, although the body never ended
    # the server stopped reading at its bounds (on the old code it read on and on)
    assert sent < LINGER_BYTES + 16 * MIB or took < LINGER_S + 2, (sent, took)
    assert sent < 2 * LINGER_BYTES and took < 2 * LINGER_S + 5, (sent, took)


def test_a_stalled_body_is_waited_for_a_bounded_time(demo_server: Server) -> None:
    sock = raw_request(demo_server, 64 * MIB)
    sock.setblocking(True)
    sock.sendall(b" " * MIB)  # then nothing more: a client that stalls
    sock.setblocking(False)
    answer, started = bytearray(), time.monotonic()
    try:
        while read_answer(sock, answer) and time.monotonic() - started < LINGER_S + 10:
            time.sleep(0.02)
        closed_after = time.monotonic() - started
    finally:
        sock.close()
    assert_413(bytes(answer))
    assert LINGER_S - 1 < closed_after < LINGER_S + 5  # the lingering close's time bound
