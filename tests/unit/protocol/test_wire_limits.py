"""The bounds of the OpenAI wire models, through the gateway's HTTP app in process.

Each rule is checked on both sides: a value just outside it is refused with a 400 in
OpenAI's error shape naming the field, and the value at the bound passes validation
(it then reaches the router, which answers 404 for the model this app does not serve).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from corral.core.spec import ServerSettings
from corral.gateway.app import create_gateway_app
from corral.gateway.router import Router
from corral.registry.embedded import EmbeddedRegistry

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
COMPLETION = {"model": "m", "prompt": "hi"}
EMBEDDING = {"model": "m", "input": "hi"}
RERANK = {"model": "m", "query": "q", "documents": ["d"]}
PATHS = {id(CHAT): "/v1/chat/completions", id(COMPLETION): "/v1/completions", id(EMBEDDING): "/v1/embeddings",
         id(RERANK): "/v1/rerank"}
PASSED = 404  # validation passed: the router does not know the model


@pytest.fixture(scope="module")
async def http() -> AsyncIterator[httpx.AsyncClient]:
    router = Router(EmbeddedRegistry(), lambda record: None)
    await router.start()  # its view of the (empty) registry is complete: unknown models get 404
    await router.synced.wait()
    app = create_gateway_app(router, ServerSettings(), lambda: (True, {}))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway") as client:
        yield client


async def send(http: httpx.AsyncClient, base: dict[str, Any], raw: bytes | None = None, **fields: Any) -> httpx.Response:
    content = raw if raw is not None else httpx.Request("POST", "/", json={**base, **fields}).content
    return await http.post(PATHS[id(base)], content=content, headers={"content-type": "application/json"})


def refused(resp: httpx.Response, param: str) -> str:
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param, error
    assert error["message"].startswith(f"{param}: ")
    return str(error["message"])


def passed(resp: httpx.Response) -> None:
    assert resp.status_code == PASSED, resp.text
    assert resp.json()["error"]["param"] == "model"


@pytest.mark.parametrize("field", ["temperature", "top_p", "presence_penalty", "frequency_penalty"])
@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b"1e400"])
async def test_floats_are_finite(http: httpx.AsyncClient, field: str, literal: bytes) -> None:
    raw = b'{"model": "m", "prompt": "hi", "%s": %s}' % (field.encode(), literal)
    assert "finite" in refused(await send(http, COMPLETION, raw), field)


async def test_logit_bias_values_are_finite(http: httpx.AsyncClient) -> None:
    raw = b'{"model": "m", "prompt": "hi", "logit_bias": {"1": NaN}}'
    assert "finite" in refused(await send(http, COMPLETION, raw), "logit_bias.1")


@pytest.mark.parametrize("seed", [2**63, -(2**63) - 1, 2**64, 10**30])
async def test_seed_outside_int64_is_refused(http: httpx.AsyncClient, seed: int) -> None:
    refused(await send(http, CHAT, seed=seed), "seed")


@pytest.mark.parametrize("seed", [2**63 - 1, -(2**63), 0])
async def test_seed_inside_int64_passes(http: httpx.AsyncClient, seed: int) -> None:
    passed(await send(http, CHAT, seed=seed))


@pytest.mark.parametrize(
    "stop, why",
    [(["a", "b", "c", "d", "e"], "at most 4"), ([""], "empty"), ("", "empty"), (["a", ""], "empty"),
     (["x" * 1025], "1024 characters")],
)
async def test_stop_is_at_most_four_non_empty_strings(http: httpx.AsyncClient, stop: Any, why: str) -> None:
    assert why in refused(await send(http, CHAT, stop=stop), "stop")


@pytest.mark.parametrize("stop", [["a", "b", "c", "d"], "x" * 1024, "\n"])
async def test_stop_within_bounds_passes(http: httpx.AsyncClient, stop: Any) -> None:
    passed(await send(http, COMPLETION, stop=stop))


@pytest.mark.parametrize("base", [CHAT, COMPLETION], ids=["chat", "completion"])
async def test_n_is_between_1_and_128(http: httpx.AsyncClient, base: dict[str, Any]) -> None:
    for bad in (0, 129, 2**63):
        refused(await send(http, base, n=bad), "n")
    passed(await send(http, base, n=128))


async def test_best_of_is_bounded_and_at_least_n(http: httpx.AsyncClient) -> None:
    for bad in (0, 129, 2**64):
        refused(await send(http, COMPLETION, best_of=bad), "best_of")
    assert "at least n" in refused(await send(http, COMPLETION, n=3, best_of=2), "best_of")
    # best_of >= n passes the wire; the completion translator then refuses best_of > 1 as unsupported
    resp = await send(http, COMPLETION, n=3, best_of=3)
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "unsupported_parameter"
    passed(await send(http, COMPLETION, n=1, best_of=1))


@pytest.mark.parametrize("field, base", [("max_tokens", CHAT), ("max_completion_tokens", CHAT), ("max_tokens", COMPLETION)])
async def test_token_counts_are_between_1_and_a_bound(http: httpx.AsyncClient, field: str, base: dict[str, Any]) -> None:
    for bad in (0, -1, 2**20 + 1, 2**63):
        refused(await send(http, base, **{field: bad}), field)
    for good in (1, 2**20):
        passed(await send(http, base, **{field: good}))


@pytest.mark.parametrize("base", [CHAT, COMPLETION, EMBEDDING], ids=["chat", "completion", "embedding"])
async def test_user_is_bounded(http: httpx.AsyncClient, base: dict[str, Any]) -> None:
    refused(await send(http, base, user="u" * 257), "user")
    refused(await send(http, base, user="u" * 100_000), "user")
    passed(await send(http, base, user="u" * 256))


@pytest.mark.parametrize("base", [CHAT, COMPLETION, EMBEDDING, RERANK], ids=["chat", "completion", "embedding", "rerank"])
async def test_model_name_is_bounded(http: httpx.AsyncClient, base: dict[str, Any]) -> None:
    refused(await send(http, base, model="m" * 257), "model")


@pytest.mark.parametrize(
    "message, param",
    [({"role": "user", "content": "hi", "name": "n" * 257}, "messages[0].name"),
     ({"role": "tool", "content": "hi", "tool_call_id": "i" * 257}, "messages[0].tool_call_id"),
     ({"role": "assistant", "content": None,
       "tool_calls": [{"id": "i" * 257, "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
      "messages[0].tool_calls[0].id")],
)
async def test_message_ids_are_bounded(http: httpx.AsyncClient, message: dict[str, Any], param: str) -> None:
    refused(await send(http, CHAT, messages=[message]), param)


@pytest.mark.parametrize(
    "bias, why",
    [({"a": 1}, "token ids"), ({"-1": 1}, "token ids"), ({" 1": 1}, "token ids"), ({"2147483648": 1}, "token ids"),
     ({"1": 100.5}, "-100 and 100"), ({"1": -101}, "-100 and 100"), ({str(i): 1 for i in range(1025)}, "at most 1024")],
)
async def test_logit_bias_keys_and_values(http: httpx.AsyncClient, bias: dict[str, Any], why: str) -> None:
    assert why in refused(await send(http, CHAT, logit_bias=bias), "logit_bias")


async def test_logit_bias_within_bounds_reaches_the_translator(http: httpx.AsyncClient) -> None:
    # a well-formed logit_bias passes the wire and is refused as unsupported, naming it
    resp = await send(http, CHAT, logit_bias={"0": -100, "2147483647": 100})
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "unsupported_parameter"
    assert resp.json()["error"]["param"] == "logit_bias"


async def test_messages_are_non_empty(http: httpx.AsyncClient) -> None:
    refused(await send(http, CHAT, messages=[]), "messages")


@pytest.mark.parametrize(
    "base, field, bad, good",
    [(CHAT, "top_logprobs", 21, 20), (CHAT, "top_logprobs", -1, 0), (COMPLETION, "logprobs", 6, None),
     (EMBEDDING, "dimensions", 65_537, 65_536), (EMBEDDING, "dimensions", 0, 1), (RERANK, "top_n", 0, 1),
     (RERANK, "top_n", 2**63, 1_000_000)],
)
async def test_other_integers_are_bounded(
    http: httpx.AsyncClient, base: dict[str, Any], field: str, bad: int, good: int | None
) -> None:
    refused(await send(http, base, **{field: bad}), field)
    if good is not None:
        passed(await send(http, base, **{field: good}))


async def test_prompt_lists_are_bounded(http: httpx.AsyncClient) -> None:
    refused(await send(http, COMPLETION, prompt=["x"] * 2049), "prompt")
    refused(await send(http, EMBEDDING, input=["x"] * 2049), "input")


@pytest.mark.parametrize(
    "fields, param",
    [({"tool_choice": "required"}, "tool_choice"),
     ({"tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": {"type": "function", "function": {"name": "g"}}},
      "tool_choice")],
)
async def test_tool_choice_errors_name_tool_choice(http: httpx.AsyncClient, fields: dict[str, Any], param: str) -> None:
    refused(await send(http, CHAT, **fields), param)


@pytest.mark.parametrize("value", [2**63, 2**64, -(2**63) - 1])
@pytest.mark.parametrize("field", ["max_tokens", "n", "seed", "top_logprobs", "max_completion_tokens"])
async def test_no_integer_field_takes_a_value_beyond_int64(http: httpx.AsyncClient, field: str, value: int) -> None:
    """What passes the wire fits a signed 64-bit column and orjson (which fails on larger ints)."""
    refused(await send(http, CHAT, **{field: value}), field)


HUGE = 2**64
TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}


@pytest.mark.parametrize(
    "fields, param",
    [
        ({"tools": [{**TOOL, "function": {"name": "f", "parameters": {"a": [{"maximum": HUGE}]}}}]},
         "tools[0].function.parameters"),
        ({"tools": [{**TOOL, "vendor_extra": {"x": -HUGE}}]}, "tools[0]"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": {"maxLength": HUGE}}}},
         "response_format.json_schema.schema"),
        ({"response_format": {"type": "json_object", "extra": [HUGE]}}, "response_format"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"detail": HUGE}}]}]},
         "messages[0].content"),
    ],
)
async def test_free_json_passed_to_engines_has_no_integer_beyond_int64(
    http: httpx.AsyncClient, fields: dict[str, Any], param: str
) -> None:
    """Tool schemas, response formats and vendor extras go to engines as written, and
    engines re-encode them (orjson fails on such integers: a 500 there)."""
    message = refused(await send(http, CHAT, **fields), param)
    # a content list's error is reported as the union's first branch (a string) by web/errors.py
    assert "64 bits" in message or param == "messages[0].content"


async def test_free_json_within_int64_passes(http: httpx.AsyncClient) -> None:
    tool = {**TOOL, "function": {"name": "f", "parameters": {"maximum": 2**63 - 1, "minimum": -(2**63)}}}
    resp = await send(http, CHAT, tools=[tool])
    # passed the wire; then the router refuses tools for a model it does not know (404)
    passed(resp)
