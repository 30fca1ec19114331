"""Input the engines cannot take is refused with a 400 naming the field, through HTTP,
and the models keep serving (issue 11: an empty prompt used to crash the transformers
loop, hang its request and leave the model answering 503 for good)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from openai import BadRequestError, OpenAI

from tests.integration.conftest import API_KEY
from tests.integration.servers import Server
from tests.integration.test_errors import assert_error

AUTH = {"authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def http(demo_server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=demo_server.url, headers=AUTH, timeout=30) as c:
        yield c


def assert_models_serve(client: OpenAI, http: httpx.Client) -> None:
    out = client.completions.create(model="demo-chat", prompt="def f(", max_tokens=3, temperature=0)
    assert out.usage is not None and out.usage.completion_tokens >= 1
    emb = client.embeddings.create(model="all-minilm-l6-v2", input="hello")
    assert len(emb.data[0].embedding) == 384
    ready = http.get("/health/ready")
    assert ready.status_code == 200, ready.text


def test_the_empty_prompt_of_the_issue_is_a_400_and_the_model_keeps_serving(client: OpenAI, http: httpx.Client) -> None:
    resp = http.post("/v1/completions", json={"model": "demo-chat", "prompt": "", "max_tokens": 4})
    err = assert_error(resp, 400, "prompt", "empty_prompt")
    assert "empty" in err["message"]
    with pytest.raises(BadRequestError) as caught:  # the official SDK, streamed
        for _ in client.completions.create(model="demo-chat", prompt="", max_tokens=4, stream=True):
            pass
    assert caught.value.body["param"] == "prompt"  # type: ignore[index]
    resp = http.post("/v1/completions", json={"model": "demo-chat", "prompt": ["x", ""], "max_tokens": 4})
    assert_error(resp, 400, "prompt")
    assert_models_serve(client, http)


@pytest.mark.parametrize(
    ("route", "body", "param"),
    [
        ("/v1/completions", {"model": "demo-chat", "prompt": "x", "n": 17}, "n"),
        ("/v1/completions", {"model": "demo-chat", "prompt": "x", "max_tokens": 10**9}, "max_tokens"),
        ("/v1/completions", {"model": "demo-chat", "prompt": "x" * 30000}, "prompt"),
        ("/v1/chat/completions", {"model": "demo-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10**9}, "max_tokens"),
        ("/v1/embeddings", {"model": "all-minilm-l6-v2", "input": []}, "input"),
        ("/v1/embeddings", {"model": "all-minilm-l6-v2", "input": ["a", ""]}, "input[1]"),
        ("/v1/embeddings", {"model": "all-minilm-l6-v2", "input": ["x"] * 10_000}, "input"),
    ],
)
def test_beyond_what_the_engine_can_do_is_400_naming_the_field(
    client: OpenAI, http: httpx.Client, route: str, body: dict[str, Any], param: str
) -> None:
    assert_error(http.post(route, json=body), 400, param)
    assert_models_serve(client, http)


def test_lone_surrogates_and_nul_bytes(client: OpenAI, http: httpx.Client) -> None:
    raw = b'{"model": "demo-chat", "prompt": "a\\ud800b", "max_tokens": 2}'
    assert_error(http.post("/v1/completions", content=raw), 400)
    raw = b'{"model": "all-minilm-l6-v2", "input": ["\\udfff"]}'
    assert_error(http.post("/v1/embeddings", content=raw), 400)
    out = http.post("/v1/completions", json={"model": "demo-chat", "prompt": "\x00", "max_tokens": 2})
    assert out.status_code == 200, out.text
    out = http.post("/v1/embeddings", json={"model": "all-minilm-l6-v2", "input": ["\x00", "a\x00b"]})
    assert out.status_code == 200 and len(out.json()["data"]) == 2, out.text
    assert_models_serve(client, http)


# -- the llama.cpp engine (the real SmolLM2 GGUF of the shared server) ----------------------

REAL = "smollm2"


def assert_llamacpp_serves(client: OpenAI) -> None:
    out = client.chat.completions.create(
        model=REAL, messages=[{"role": "user", "content": "What is the capital of France? Answer in one word."}], max_tokens=12, temperature=0
    )
    assert "Paris" in (out.choices[0].message.content or "")


@pytest.mark.parametrize(
    ("route", "body"),
    [
        ("/v1/completions", {"prompt": ""}),  # zero tokens: generated from BOS
        ("/v1/completions", {"prompt": "   \n\t "}),
        ("/v1/completions", {"prompt": "\x00"}),
        ("/v1/completions", {"prompt": "a\x00b\x00"}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": ""}]}),
        ("/v1/chat/completions", {"messages": [{"role": "system", "content": " "}, {"role": "user", "content": "\x00"}]}),
    ],
)
def test_llamacpp_takes_empty_whitespace_and_nul_input(client: OpenAI, http: httpx.Client, route: str, body: dict[str, Any]) -> None:
    resp = http.post(route, json={"model": REAL, "max_tokens": 3, **body})
    assert resp.status_code == 200, resp.text
    usage = resp.json()["usage"]
    assert usage["prompt_tokens"] >= 1 and 1 <= usage["completion_tokens"] <= 3


@pytest.mark.parametrize(
    ("route", "body", "param"),
    [
        ("/v1/completions", {"prompt": "x", "n": 9}, "n"),  # beyond its max_batch_size (8)
        ("/v1/completions", {"prompt": "x", "max_tokens": 10**9}, "max_tokens"),
        ("/v1/completions", {"prompt": "x", "max_tokens": 2048}, "max_tokens"),  # the prompt leaves 2047
        ("/v1/completions", {"prompt": "x " * 3000}, "prompt"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}] * 10_000}, "messages"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 10**9}, "max_tokens"),
    ],
)
def test_llamacpp_refuses_what_a_sequence_cannot_hold(
    client: OpenAI, http: httpx.Client, route: str, body: dict[str, Any], param: str
) -> None:
    assert_error(http.post(route, json={"model": REAL, **body}), 400, param)
    assert_llamacpp_serves(client)


def test_llamacpp_lone_surrogates_are_a_400(client: OpenAI, http: httpx.Client) -> None:
    raw = b'{"model": "smollm2", "prompt": "a\\ud800b", "max_tokens": 2}'
    assert_error(http.post("/v1/completions", content=raw), 400)  # the JSON reader refuses them already
    raw = b'{"model": "smollm2", "messages": [{"role": "user", "content": "\\udfff"}], "max_tokens": 2}'
    assert_error(http.post("/v1/chat/completions", content=raw), 400)
    assert_llamacpp_serves(client)
