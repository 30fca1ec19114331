"""Hypothesis strategies for the Ollama routes (``/api/...``): valid bodies (bounded so
a generation finishes fast: ``options.num_predict`` <= 8), the JSON types and ranges of
each top-level field (``mutated`` of ``strategies`` builds the mutations), Ollama's
dialect for the harness, and the probes of the routes that take no body."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

from hypothesis import strategies as st

from tests.integration.fuzz.harness import Dialect, Expect, Probe, encode, refused
from tests.integration.fuzz.strategies import MAX_TOKENS, Route, _t, _text, nonempty_text

OPTION_RANGES: list[Any] = [
    {"temperature": 2.5}, {"temperature": -1}, {"top_p": 0}, {"top_k": -1}, {"num_predict": 0}, {"num_predict": -3},
    {"repeat_penalty": 0}, {"repeat_last_n": 64}, {"mirostat": 1}, {"min_p": 0.1}, {"typical_p": 0.5},
    {"presence_penalty": 3}, {"seed": 2**64}, {"stop": [""]}, {"stop": ["x"] * 17}, {"made_up_option": 1},
    {"num_ctx": 2**40}, {"penalize_newline": True},
]


def _options() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {"num_predict": st.integers(1, MAX_TOKENS)},
        optional={
            "temperature": st.floats(0, 2), "top_p": st.floats(0.01, 1), "top_k": st.integers(0, 100),
            "seed": st.integers(-(2**63), 2**63 - 1), "stop": st.lists(nonempty_text(5), min_size=1, max_size=4),
            "repeat_penalty": st.floats(0.5, 2), "repeat_last_n": st.sampled_from([-1, 0]),
            "presence_penalty": st.floats(-2, 2), "frequency_penalty": st.floats(-2, 2),
            "num_ctx": st.integers(1, 1 << 20), "num_thread": st.integers(1, 64), "num_gpu": st.integers(0, 99),
            "mirostat": st.just(0), "min_p": st.just(0.0),
        },
    )


def _common(model: str) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {"model": st.sampled_from([model, f"{model}:latest"]), "options": _options()},
        optional={"stream": st.booleans(), "keep_alive": st.sampled_from(["5m", "-1", 0, 300.5, "0"]),
                  "think": st.just(False)},
    )


def _message() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant"]), "content": _text()})


def _chat(model: str) -> st.SearchStrategy[tuple[dict[str, Any], Expect]]:
    messages = st.lists(_message(), max_size=3).map(lambda m: m + [{"role": "user", "content": "hi"}])
    return st.tuples(_common(model), messages).map(lambda p: ({**p[0], "messages": p[1]}, Expect(frozenset({200}))))


def _generate(model: str) -> st.SearchStrategy[tuple[dict[str, Any], Expect]]:
    templated = st.fixed_dictionaries({"prompt": _text()}, optional={"system": _text(), "raw": st.just(False)})
    raw = st.fixed_dictionaries({"prompt": _text(), "raw": st.just(True)})

    def expect(body: dict[str, Any]) -> tuple[dict[str, Any], Expect]:
        # a raw prompt of no text may tokenize to nothing: refused (400, naming it) or answered
        blank_raw = body.get("raw") and not body["prompt"].strip()
        return body, (refused("prompt", 200, 400) if blank_raw else Expect(frozenset({200})))

    return st.tuples(_common(model), st.one_of(templated, raw)).map(lambda p: {**p[0], **p[1]}).map(expect)


def _embed(model: str) -> st.SearchStrategy[tuple[dict[str, Any], Expect]]:
    body = st.fixed_dictionaries(
        {"model": st.sampled_from([model, f"{model}:latest"]),
         "input": st.one_of(nonempty_text(), st.lists(nonempty_text(), min_size=1, max_size=16))},
        optional={"truncate": st.just(True), "keep_alive": st.just("5m"), "options": st.just({"num_thread": 2})},
    )
    return body.map(lambda b: (b, Expect(frozenset({200}))))


def _embeddings(model: str) -> st.SearchStrategy[tuple[dict[str, Any], Expect]]:
    body = st.fixed_dictionaries({"model": st.just(model), "prompt": st.one_of(nonempty_text(), st.just(""))})
    return body.map(lambda b: (b, Expect(frozenset({200}))))


def _show(model: str) -> st.SearchStrategy[tuple[dict[str, Any], Expect]]:
    body = st.fixed_dictionaries({"model": st.sampled_from([model, f"{model}:latest"])}, optional={"verbose": st.booleans()})
    return body.map(lambda b: (b, Expect(frozenset({200}))))


GENERATING_TYPES = {
    "model": _t("str"), "name": _t("str", "null"), "stream": _t("bool"), "format": _t("str", "dict", "null"),
    "options": _t("dict", "null"), "keep_alive": _t("str", "float", "null"), "think": _t("bool", "str", "null"),
    "logprobs": _t("bool", "null"), "top_logprobs": _t("int", "null"),
}
GENERATING_RANGES: dict[str, list[Any]] = {
    "options": OPTION_RANGES, "model": ["m" * 257], "format": ["xml", "JSON"], "think": [True, "high"],
    "logprobs": [True], "top_logprobs": [-1, 21, 3], "keep_alive": ["k" * 65],
}
CHAT = Route(
    "/api/chat", _chat, {**GENERATING_TYPES, "messages": _t("list"), "tools": _t("list", "null")}, ("model",),
    {**GENERATING_RANGES, "messages": [[{"role": "robot", "content": "x"}], [{"role": "tool", "content": "x"}],
                                       [{"role": "user", "content": "x", "images": ["aGk="]}]]},
)
GENERATE = Route(
    "/api/generate", _generate,
    {**GENERATING_TYPES, "prompt": _t("str"), "suffix": _t("str", "null"), "system": _t("str", "null"),
     "template": _t("str", "null"), "context": _t("list", "null"), "raw": _t("bool"), "images": _t("list", "null")},
    ("model",),
    {**GENERATING_RANGES, "suffix": ["x"], "template": ["{{ .Prompt }}"], "context": [[1, 2]], "images": [["aGk="]]},
)
EMBED = Route(
    "/api/embed", _embed,
    {"model": _t("str"), "name": _t("str", "null"), "input": _t("str", "list"), "truncate": _t("bool"),
     "dimensions": _t("int", "null"), "options": _t("dict", "null"), "keep_alive": _t("str", "float", "null")},
    ("model", "input"),
    {"input": [[], ["x"] * 2049, [""]], "dimensions": [0, -1, 65_537], "truncate": [False], "options": OPTION_RANGES[:4],
     "model": ["m" * 257]},
)
EMBEDDINGS = Route(
    "/api/embeddings", _embeddings,
    {"model": _t("str"), "name": _t("str", "null"), "prompt": _t("str"), "options": _t("dict", "null"),
     "keep_alive": _t("str", "float", "null")},
    ("model",), {"options": OPTION_RANGES[:4], "model": ["m" * 257]},
)
SHOW = Route("/api/show", _show, {"model": _t("str"), "name": _t("str", "null"), "verbose": _t("bool")}, ("model",),
             {"model": ["m" * 257]})

READS = ["/api/tags", "/api/ps", "/api/version", "/"]
MANAGEMENT = [("POST", "/api/pull"), ("POST", "/api/push"), ("POST", "/api/create"), ("POST", "/api/copy"),
              ("DELETE", "/api/delete"), ("HEAD", "/api/blobs/sha256:abc"), ("POST", "/api/blobs/sha256:abc")]


def other_probes(llm: str, auth: tuple[tuple[str, str], ...]) -> st.SearchStrategy[Probe]:
    """Reads, the management routes (403), wrong methods (405), unknown routes and
    models (404), and bad keys (401)."""
    body = encode({"model": llm, "messages": [{"role": "user", "content": "hi"}], "options": {"num_predict": 2}})
    bad_auth = st.sampled_from([(), (("authorization", "Bearer wrong"),), (("authorization", "Basic eA=="),)])
    names = st.text(min_size=1, max_size=30).filter(lambda n: n not in (llm, f"{llm}:latest") and "\ud800" > n[:1])
    return st.one_of(
        st.sampled_from(READS).map(
            lambda p: Probe("GET", p, None, refused(None, 200), auth, what="read")),
        st.sampled_from(MANAGEMENT).map(
            lambda mp: Probe(mp[0], mp[1], encode({"model": llm}), refused(None, 403), auth, what="management")),
        st.sampled_from(["/api/chat", "/api/generate", "/api/embed", "/api/show"]).map(
            lambda p: Probe("GET", p, None, refused(None, 405), auth, what="wrong method")),
        st.text(min_size=1, max_size=20).map(
            lambda t: Probe("POST", "/api/" + quote(t, safe=""), body, refused(None, 404, 405), auth, what="unknown route")),
        names.map(lambda n: Probe("POST", "/api/show", encode({"model": n}), refused(None, 400, 404), auth,
                                  what="unknown model")),
        bad_auth.map(lambda h: Probe("POST", "/api/chat", body, refused(None, 401), h, what="bad auth")),
    )


def _error_shape(body: bytes, status: int) -> str | None:
    if not body:  # HEAD answers carry no body
        return None
    try:
        doc = json.loads(body)
    except ValueError:
        return "the body is not JSON"
    if not isinstance(doc, dict) or set(doc) != {"error"}:
        return "not Ollama's error shape"
    if not isinstance(doc["error"], str) or not doc["error"] or "Traceback" in doc["error"]:
        return "a bad error message"
    return None


def _names(body: bytes, param: str) -> bool:
    """Ollama's errors have no ``param``: the message names the field."""
    return param.split("[")[0].split(".")[0] in json.loads(body)["error"]


def _stream(path: str, content_type: str, body: bytes) -> str | None:
    del path  # every Ollama route streams the same lines
    if not content_type.startswith("application/x-ndjson"):
        return None
    lines = [line for line in body.split(b"\n") if line.strip()]
    if not lines:
        return "is empty"
    try:
        docs = [json.loads(line) for line in lines]
    except ValueError:
        return "has a line that is not JSON"
    last = docs[-1]
    if "error" in last:
        if "internal error" in last["error"] or "stream failed" in last["error"]:
            return f"ends with a server error ({last['error'][:80]})"
        return None
    if last.get("done") is not True or any(d.get("done") for d in docs[:-1]):
        return "does not end with its one done line"
    return None


OLLAMA = Dialect(_error_shape, _names, _stream)
