"""What the Anthropic Messages campaign sends and checks: valid bodies of
``/v1/messages`` and ``/v1/messages/count_tokens`` (mutated by ``strategies.mutated``
like the OpenAI routes'), and Anthropic's dialect of the answers: the error object
``{"type": "error", "error": {"type", "message"}}`` with the type its status has (a
400 names the field in its message, Anthropic's error having no ``param``), 529 as the
documented no-capacity status, and a stream of Anthropic's events from
``message_start`` to ``message_stop`` (or an ``error`` event that is not a server error).
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

from tests.integration.fuzz.harness import ALLOWED_5XX, Dialect, Expect, Probe, encode, refused
from tests.integration.fuzz.strategies import MAX_TOKENS, Route, _t, _text, nonempty_text

TYPES_BY_STATUS = {
    400: "invalid_request_error", 401: "authentication_error", 403: "permission_error", 404: "not_found_error",
    413: "request_too_large", 429: "rate_limit_error", 529: "overloaded_error",
}
ERROR_TYPES = {*TYPES_BY_STATUS.values(), "api_error"}


def error_problem(body: bytes, status: int) -> str | None:
    try:
        doc = json.loads(body)
    except ValueError:
        return "the body is not JSON"
    err = doc.get("error") if isinstance(doc, dict) else None
    if not isinstance(doc, dict) or doc.get("type") != "error" or not isinstance(err, dict) or set(err) != {"type", "message"}:
        return "not Anthropic's error shape"
    if not isinstance(err["message"], str) or not err["message"] or "Traceback" in err["message"]:
        return "a bad error message"
    if err["type"] not in ERROR_TYPES:
        return f"type {err['type']!r} is not one of Anthropic's"
    wanted = TYPES_BY_STATUS.get(status)
    if wanted is not None and err["type"] != wanted:
        return f"type {err['type']!r} for a {status}"
    return None


def names_param(body: bytes, expected: str) -> str | None:
    message = json.loads(body)["error"]["message"]
    return None if expected in message else message[:120]


def sse_problem(body: bytes) -> str | None:
    events = [e for e in body.split(b"\n\n") if e.strip()]
    parsed = []
    for event in events:
        lines = event.split(b"\n")
        if lines[0].startswith(b":"):
            continue  # a keep-alive comment
        if len(lines) != 2 or not lines[0].startswith(b"event: ") or not lines[1].startswith(b"data: "):
            return f"has a malformed event ({event[:80]!r})"
        try:
            data = json.loads(lines[1][len(b"data: "):])
        except ValueError:
            return f"has data that is not JSON ({lines[1][:80]!r})"
        name = lines[0][len(b"event: "):].decode()
        if data.get("type") != name:
            return f"event {name!r} carries type {data.get('type')!r}"
        parsed.append((name, data))
    if not parsed or parsed[0][0] != "message_start":
        return "does not start with message_start"
    last, data = parsed[-1]
    if last == "error":
        return "carries a server error (a 5xx after the headers)" if data["error"]["type"] == "api_error" else None
    if last != "message_stop" or parsed[-2][0] != "message_delta":
        return "does not end with message_delta, message_stop"
    return None


def _names(body: bytes, param: str) -> bool:
    return names_param(body, param) is None


def _stream(path: str, content_type: str, body: bytes) -> str | None:
    del path  # both streamed routes stream alike
    return sse_problem(body) if content_type.startswith("text/event-stream") else None


ANTHROPIC = Dialect(error_problem, _names, _stream, ALLOWED_5XX | {529})

_TEXT_BLOCK = st.fixed_dictionaries({"type": st.just("text"), "text": _text()})


def _message() -> st.SearchStrategy[dict[str, Any]]:
    content = st.one_of(_text(), st.lists(_TEXT_BLOCK, min_size=1, max_size=3))
    return st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant"]), "content": content})


def _prompt(model: str) -> st.SearchStrategy[dict[str, Any]]:
    messages = st.lists(_message(), min_size=0, max_size=3).map(lambda m: m + [{"role": "user", "content": "hi"}])
    return st.fixed_dictionaries(
        {"model": st.just(model), "messages": messages},
        optional={"system": st.one_of(_text(), st.lists(_TEXT_BLOCK, max_size=2))},
    )


def _messages(model: str) -> st.SearchStrategy[tuple[dict[str, Any], Expect]]:
    sampling = st.fixed_dictionaries(
        {"max_tokens": st.integers(1, MAX_TOKENS)},
        optional={
            "temperature": st.floats(0, 1), "top_p": st.floats(0, 1), "top_k": st.integers(0, 100),
            "stop_sequences": st.lists(nonempty_text(5), max_size=4), "stream": st.booleans(),
            "metadata": st.fixed_dictionaries({}, optional={"user_id": _text()}),
            "service_tier": st.sampled_from(["auto", "standard_only"]),
        },
    )
    return st.tuples(_prompt(model), sampling).map(lambda p: ({**p[0], **p[1]}, Expect(frozenset({200}))))


def _count(model: str) -> st.SearchStrategy[tuple[dict[str, Any], Expect]]:
    return _prompt(model).map(lambda b: (b, Expect(frozenset({200}))))


PROMPT_TYPES = {
    "model": _t("str"), "messages": _t("list"), "system": _t("str", "list", "null"), "tools": _t("list", "null"),
    "tool_choice": _t("dict", "null"), "thinking": _t("dict", "null"),
}
PROMPT_RANGES: dict[str, list[Any]] = {
    "messages": [[], [{"role": "system", "content": "x"}], [{"role": "user", "content": [{"type": "image", "source": {}}]}],
                 [{"role": "user", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}]}],
                 [{"role": "assistant", "content": [{"type": "tool_result", "tool_use_id": "t"}]}]],
    "model": ["m" * 257],
    "system": [[{"type": "image"}], [{"type": "text"}]],
    # tools are refused by these engines, a server tool by any
    "tools": [[{"name": "f", "input_schema": {"type": "object"}}], [{"type": "web_search_20250305", "name": "web_search"}],
              [{"name": ""}], [{"name": "f", "input_schema": {"n": 2**64}}]],
    "tool_choice": [{"type": "any"}, {"type": "tool", "name": "f"}, {"type": "tool"}, {"type": "sometimes"}],
    "thinking": [{"type": "enabled", "budget_tokens": 1024}],
}
MESSAGES = Route(
    "/v1/messages", _messages,
    {**PROMPT_TYPES, "max_tokens": _t("int"), "temperature": _t("float", "null"), "top_p": _t("float", "null"),
     "top_k": _t("int", "null"), "stop_sequences": _t("list", "null"), "stream": _t("bool"),
     "metadata": _t("dict", "null"), "service_tier": _t("str", "null")},
    ("model", "messages", "max_tokens"),
    {**PROMPT_RANGES, "max_tokens": [0, -1, 2**63, 2**20 + 1], "temperature": [-0.01, 1.01, 1e308],
     "top_p": [-0.5, 1.0001], "top_k": [-1, 2**63, 2**20 + 1], "stop_sequences": [[""], ["x" * 1025], ["a"] * 17],
     "metadata": [{"user_id": "u" * 257}], "container": [{"id": "c"}], "mcp_servers": [[]]},
)
COUNT_TOKENS = Route("/v1/messages/count_tokens", _count, PROMPT_TYPES, ("model", "messages"), PROMPT_RANGES)


def auth_and_routes(model: str, auth: tuple[tuple[str, str], ...]) -> st.SearchStrategy[Probe]:
    body = encode({"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    bad_auth = st.sampled_from([(), (("x-api-key", "wrong"),), (("x-api-key", ""),), (("authorization", "Bearer wrong"),)])
    return st.one_of(
        bad_auth.map(lambda h: Probe("POST", "/v1/messages", body, refused(None, 401), h, what="bad auth")),
        st.sampled_from(["/v1/messages", "/v1/messages/count_tokens"]).map(
            lambda p: Probe("GET", p, None, refused(None, 405), auth, what="wrong method")
        ),
        st.text(min_size=1, max_size=20).map(lambda t: Probe(
            "POST", "/v1/messages/" + "".join(c if c.isalnum() else "-" for c in t), body, refused(None, 404, 405), auth,
            what="unknown route",
        )),
    )
