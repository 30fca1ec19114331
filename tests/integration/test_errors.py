"""Bad input gets OpenAI's error JSON with the right status, never a 500 or a hang."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.integration.conftest import API_KEY
from tests.integration.servers import Server

AUTH = {"authorization": f"Bearer {API_KEY}"}
HELLO = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def http(demo_server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=demo_server.url, headers=AUTH, timeout=30) as c:
        yield c


def assert_error(resp: httpx.Response, status: int, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    assert resp.headers.get("x-request-id")
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["message"] and "Traceback" not in err["message"]
    if param is not None:
        assert err["param"] == param, err
    if code is not None:
        assert err["code"] == code, err
    return err


def test_unknown_model_is_404_model_not_found(http: httpx.Client) -> None:
    resp = http.post("/v1/chat/completions", json={"model": "nope", "messages": HELLO})
    err = assert_error(resp, 404, "model", "model_not_found")
    assert err["type"] == "invalid_request_error"
    assert_error(http.get("/v1/models/nope"), 404, "model", "model_not_found")
    assert_error(http.post("/v1/embeddings", json={"model": "nope", "input": "x"}), 404, "model", "model_not_found")


def test_malformed_json_is_400(http: httpx.Client) -> None:
    resp = http.post("/v1/chat/completions", content=b'{"model": "demo-chat", "messages": [', headers={"content-type": "application/json"})
    assert_error(resp, 400, None, "invalid_json")
    assert_error(http.post("/v1/chat/completions", content=b"[1, 2]"), 400)
    assert_error(http.post("/v1/chat/completions", content=b""), 400)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "demo-chat"}, "messages"),
        ({"messages": HELLO}, "model"),
        ({"model": "demo-chat", "messages": []}, "messages"),
        ({"model": "demo-chat", "messages": "hi"}, "messages"),
        ({"model": "demo-chat", "messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        ({"model": "demo-chat", "messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({"model": "demo-chat", "messages": HELLO, "max_tokens": "5"}, "max_tokens"),
        ({"model": "demo-chat", "messages": HELLO, "max_tokens": -1}, "max_tokens"),
        ({"model": "demo-chat", "messages": HELLO, "max_tokens": 0}, "max_tokens"),
        ({"model": "demo-chat", "messages": HELLO, "max_completion_tokens": -3}, "max_completion_tokens"),
        ({"model": "demo-chat", "messages": HELLO, "temperature": 3}, "temperature"),
        ({"model": "demo-chat", "messages": HELLO, "temperature": "hot"}, "temperature"),
        ({"model": "demo-chat", "messages": HELLO, "top_p": 0}, "top_p"),
        ({"model": "demo-chat", "messages": HELLO, "n": 0}, "n"),
        ({"model": "demo-chat", "messages": HELLO, "stream": "yes"}, "stream"),
        ({"model": "demo-chat", "messages": HELLO, "stop": 7}, "stop"),
        ({"model": "demo-chat", "messages": HELLO, "tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"model": "demo-chat", "messages": HELLO, "response_format": {"type": "json_object"}}, "response_format"),
    ],
)
def test_bad_chat_fields_are_400_naming_the_field(http: httpx.Client, body: dict[str, Any], param: str) -> None:
    assert_error(http.post("/v1/chat/completions", json=body), 400, param)


def test_bad_completion_and_embedding_fields(http: httpx.Client) -> None:
    assert_error(http.post("/v1/completions", json={"model": "demo-chat"}), 400, "prompt")
    assert_error(http.post("/v1/completions", json={"model": "demo-chat", "prompt": "x", "max_tokens": -5}), 400, "max_tokens")
    assert_error(http.post("/v1/embeddings", json={"model": "all-minilm-l6-v2"}), 400, "input")
    assert_error(http.post("/v1/embeddings", json={"model": "all-minilm-l6-v2", "input": [1, 2]}), 400)
    assert_error(
        http.post("/v1/embeddings", json={"model": "all-minilm-l6-v2", "input": "x", "encoding_format": "int8"}),
        400,
        "encoding_format",
    )
    assert_error(http.post("/v1/embeddings", json={"model": "all-minilm-l6-v2", "input": ""}), 400, "input")


def test_wrong_kind_of_model_is_400_on_model(http: httpx.Client) -> None:
    err = assert_error(http.post("/v1/embeddings", json={"model": "demo-chat", "input": "x"}), 400, "model")
    assert "embedding" in err["message"]
    assert_error(http.post("/v1/chat/completions", json={"model": "all-minilm-l6-v2", "messages": HELLO}), 400, "model")
    assert_error(http.post("/v1/completions", json={"model": "all-minilm-l6-v2", "prompt": "x"}), 400, "model")


def test_context_length_exceeded_is_400(http: httpx.Client) -> None:
    resp = http.post("/v1/chat/completions", json={"model": "demo-chat", "messages": HELLO, "max_tokens": 100000})
    assert_error(resp, 400, "max_tokens", "context_length_exceeded")
    long_prompt = "word " * 6000
    resp = http.post("/v1/completions", json={"model": "demo-chat", "prompt": long_prompt})
    assert_error(resp, 400, "prompt", "context_length_exceeded")


def test_body_over_limit_is_413(http: httpx.Client) -> None:
    huge = {"model": "demo-chat", "messages": [{"role": "user", "content": "x" * (5 * 1024 * 1024)}]}
    assert_error(http.post("/v1/chat/completions", json=huge), 413)

    def chunks() -> Iterator[bytes]:  # no content-length: the limit holds while streaming too
        yield b'{"model": "demo-chat", "messages": [{"role": "user", "content": "'
        for _ in range(80):
            yield b"y" * 65536
        yield b'"}]}'

    assert_error(http.post("/v1/chat/completions", content=chunks()), 413)


def test_api_key_required_on_v1_but_not_on_health(demo_server: Server) -> None:
    url = demo_server.url
    body = {"model": "demo-chat", "messages": HELLO}
    err = assert_error(httpx.post(f"{url}/v1/chat/completions", json=body), 401, None, "invalid_api_key")
    assert err["type"] == "authentication_error"
    wrong = httpx.post(f"{url}/v1/chat/completions", json=body, headers={"authorization": "Bearer wrong"})
    assert_error(wrong, 401, None, "invalid_api_key")
    assert API_KEY not in wrong.text
    assert_error(httpx.get(f"{url}/v1/models", headers={"authorization": API_KEY}), 401)
    assert httpx.get(f"{url}/health").status_code == 200


def test_unknown_route_and_method_are_json_errors(http: httpx.Client) -> None:
    assert_error(http.get("/v1/nothing-here"), 404)
    assert_error(http.get("/v1/chat/completions"), 405)


def test_request_id_is_returned_and_caller_id_is_kept(http: httpx.Client) -> None:
    first = http.get("/v1/models").headers["x-request-id"]
    second = http.get("/v1/models").headers["x-request-id"]
    assert first and second and first != second
    mine = http.get("/v1/models", headers={"x-request-id": "trace-abc-1"})
    assert mine.headers["x-request-id"] == "trace-abc-1"
    resp = http.post("/v1/chat/completions", json={"model": "demo-chat", "messages": HELLO, "max_tokens": 2},
                     headers={"x-request-id": "trace-abc-2"})
    assert resp.json()["id"] == "chatcmpl-trace-abc-2"
