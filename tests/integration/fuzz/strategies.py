"""Hypothesis strategies for the fuzzers: valid request bodies of every public route
(bounded so that a valid generation finishes fast: ``max_tokens`` <= 8, ``n`` <= 3)
and mutations of them, each mutation with the answer it must get.

A mutation changes one thing: a field set to a value of a type it never takes, a
bounded number out of range, a required field removed (400 naming the field); an
unknown field, a weird string (empty, huge, NUL, lone surrogate, emoji, special-token
text) or deep nesting somewhere (any answer but a 5xx); or the raw JSON text broken
(400).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

from tests.integration.fuzz.harness import ANY, Expect, Probe, encode, refused

MAX_TOKENS = 8
JSON_TYPES = ("null", "bool", "int", "float", "str", "list", "dict")

WEIRD_STRINGS = [
    "", " ", "\n\n\t", "\x00", "a\x00b", "\ud800", "x\udfffy", "\U0001f600" * 50, "\u202e\u200b\ufeff",
    "<|endoftext|>", "</s><s>", "<|im_start|>system\n", "%s%n{0}",
]
HUGE_STRINGS = ("a", "\U0001f469\u200d\U0001f4bb ", "\x00", "\ud800")  # each repeated 20,000 times


def weird_strings() -> st.SearchStrategy[str]:
    huge = st.sampled_from(HUGE_STRINGS).map(lambda s: s * 20_000)  # built when drawn: short reprs
    return st.one_of(st.sampled_from(WEIRD_STRINGS), huge)
EXTREME_NUMBERS: list[Any] = [
    0, -1, 1, 2**31, -(2**31) - 1, 2**53 + 1, 2**63, 2**64, -(2**63) - 1, 10**30, -(10**30),
    1e308, -1e308, 1e-308, -0.0, 0.5, 2.000001, -2.000001,
]


def _text(max_size: int = 40) -> st.SearchStrategy[str]:
    return st.one_of(st.text(max_size=max_size), st.sampled_from(["hello", "What is 2+2?", "\U0001f600 emoji"]))


def nonempty_text(max_size: int = 40) -> st.SearchStrategy[str]:
    return st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc", "Zs")), min_size=1, max_size=max_size)


def json_values(max_leaves: int = 6) -> st.SearchStrategy[Any]:
    scalars = st.one_of(
        st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=20), st.sampled_from(EXTREME_NUMBERS), weird_strings(),
    )
    return st.recursive(
        scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
        max_leaves=max_leaves,
    )


def _of_json_type(kind: str) -> st.SearchStrategy[Any]:
    return {
        "null": st.none(), "bool": st.booleans(), "int": st.integers(-1000, 1000),
        "float": st.floats(-1e6, 1e6).filter(lambda f: not f.is_integer()), "str": st.text(max_size=10),
        "list": st.lists(st.integers(), max_size=2), "dict": st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
    }[kind]


def wrong_type(valid_types: frozenset[str]) -> st.SearchStrategy[Any]:
    """A value of a JSON type the field never takes (an int is a valid float)."""
    taken = set(valid_types) | ({"int"} if "float" in valid_types else set())
    return st.sampled_from([k for k in JSON_TYPES if k not in taken]).flatmap(_of_json_type)


@dataclass(frozen=True, repr=False)
class Route:
    """One POST route: its valid bodies, the JSON types each top-level field takes, the
    required fields, and values out of each bounded field's range."""

    path: str
    valid: Callable[[str], st.SearchStrategy[tuple[dict[str, Any], Expect]]]
    types: dict[str, frozenset[str]]
    required: tuple[str, ...]
    out_of_range: dict[str, list[Any]]

    def __repr__(self) -> str:  # hypothesis shows strategies' arguments: keep it short
        return f"Route({self.path!r})"


def _t(*kinds: str) -> frozenset[str]:
    return frozenset(kinds)


SAMPLING_TYPES = {
    "model": _t("str"), "max_tokens": _t("int", "null"), "temperature": _t("float", "null"),
    "top_p": _t("float", "null"), "n": _t("int"), "stream": _t("bool"), "stop": _t("str", "list", "null"),
    "seed": _t("int", "null"), "presence_penalty": _t("float"), "frequency_penalty": _t("float"),
    "user": _t("str", "null"), "stream_options": _t("dict", "null"), "logit_bias": _t("dict", "null"),
    "ignore_eos": _t("bool"), "top_k": _t("int"), "repetition_penalty": _t("float"),
}
SAMPLING_RANGES: dict[str, list[Any]] = {
    "max_tokens": [0, -1, -(2**63), 2**63, 10**12, 2**20 + 1], "temperature": [-0.01, 2.01, 1e308, -1e308],
    "top_p": [0, -0.5, 1.0001, 1e308], "n": [0, -1, 129, 2**63, 10**9],
    "presence_penalty": [-2.01, 2.01, 1e308], "frequency_penalty": [-2.01, 2.01, -1e308],
    "seed": [2**64, 2**63, -(2**63) - 1, 10**30], "stop": [["a", "b", "c", "d", "e"], [""], "", ["a", ""], ["x" * 1025]],
    "user": ["u" * 100_000, "u" * 257], "model": ["m" * 257],
    "logit_bias": [{"a": 1}, {"-1": 1}, {"1": 100.5}, {"1": -101}, {"99999999999": 1}, {"1": 2**63}],
    "top_k": [-2, 2**31, 2**63], "repetition_penalty": [0, -1.0, 100.01, 1e308],
}


def _sampling(model: str) -> st.SearchStrategy[dict[str, Any]]:
    optional = st.fixed_dictionaries(
        {"model": st.just(model), "max_tokens": st.integers(1, MAX_TOKENS)},
        optional={
            "temperature": st.floats(0, 2), "top_p": st.floats(0.01, 1), "n": st.integers(1, 3),
            "stop": st.one_of(nonempty_text(5), st.lists(nonempty_text(5), min_size=1, max_size=4)),
            "seed": st.integers(-(2**63), 2**63 - 1), "presence_penalty": st.floats(-2, 2),
            "frequency_penalty": st.floats(-2, 2), "user": _text(), "stream": st.booleans(),
            "ignore_eos": st.booleans(), "top_k": st.integers(-1, 100), "repetition_penalty": st.floats(0.5, 2),
        },
    )

    def usage(body: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
        if not body.get("stream"):
            return st.just(body)
        return st.sampled_from([body, {**body, "stream_options": {"include_usage": True}}])

    return optional.flatmap(usage)


def _message() -> st.SearchStrategy[dict[str, Any]]:
    content = st.one_of(_text(), st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": _text()}), min_size=1, max_size=3))
    return st.fixed_dictionaries({"role": st.sampled_from(["system", "developer", "user", "assistant"]), "content": content})


def _chat(model: str) -> st.SearchStrategy[tuple[dict[str, Any], Expect]]:
    messages = st.lists(_message(), min_size=1, max_size=3).map(lambda m: m + [{"role": "user", "content": "hi"}])
    return st.tuples(_sampling(model), messages).map(lambda p: ({**p[0], "messages": p[1]}, Expect(frozenset({200}))))


def _completion(model: str) -> st.SearchStrategy[tuple[dict[str, Any], Expect]]:
    prompt = st.one_of(_text(), st.lists(_text(), min_size=1, max_size=3))

    def expect(body: dict[str, Any]) -> tuple[dict[str, Any], Expect]:
        prompts = [body["prompt"]] if isinstance(body["prompt"], str) else body["prompt"]
        # a prompt of no text may be refused (400, param prompt) or answered
        blank = any(not p.strip() for p in prompts)
        return body, (refused("prompt", 200, 400) if blank else Expect(frozenset({200})))

    return st.tuples(_sampling(model), prompt).map(lambda p: {**p[0], "prompt": p[1]}).map(expect)


def _embedding(model: str) -> st.SearchStrategy[tuple[dict[str, Any], Expect]]:
    body = st.fixed_dictionaries(
        {"model": st.just(model), "input": st.one_of(nonempty_text(), st.lists(nonempty_text(), min_size=1, max_size=16))},
        optional={"encoding_format": st.sampled_from(["float", "base64"]), "user": _text()},
    )
    return body.map(lambda b: (b, Expect(frozenset({200}))))


def _rerank(model: str) -> st.SearchStrategy[tuple[dict[str, Any], Expect]]:
    doc = st.one_of(nonempty_text(), nonempty_text().map(lambda t: {"text": t}))
    body = st.fixed_dictionaries(
        {"model": st.just(model), "query": nonempty_text(), "documents": st.lists(doc, min_size=1, max_size=8)},
        optional={"top_n": st.integers(1, 8), "return_documents": st.booleans()},
    )
    return body.map(lambda b: (b, Expect(frozenset({200}))))


CHAT = Route(
    "/v1/chat/completions", _chat,
    {**SAMPLING_TYPES, "messages": _t("list"), "max_completion_tokens": _t("int", "null"), "tools": _t("list", "null"),
     "response_format": _t("dict", "null"), "logprobs": _t("bool", "null"), "top_logprobs": _t("int", "null"),
     "tool_choice": _t("str", "dict", "null"), "parallel_tool_calls": _t("bool", "null")},
    ("model", "messages"),
    {**SAMPLING_RANGES, "messages": [[]], "max_completion_tokens": [0, -5, 2**63, 2**20 + 1],
     "top_logprobs": [-1, 21, 2**63], "tool_choice": ["required", "sometimes", {"type": "function", "function": {"name": "f"}}]},
)
COMPLETION = Route(
    "/v1/completions", _completion,
    {**SAMPLING_TYPES, "prompt": _t("str", "list"), "echo": _t("bool"), "best_of": _t("int", "null"),
     "logprobs": _t("int", "null"), "suffix": _t("str", "null")},
    ("model", "prompt"),
    {**SAMPLING_RANGES, "prompt": [[], ["x"] * 2049], "best_of": [0, -1, 129, 2**63], "logprobs": [-1, 6, 2**63]},
)
EMBEDDING = Route(
    "/v1/embeddings", _embedding,
    {"model": _t("str"), "input": _t("str", "list"), "encoding_format": _t("str"), "user": _t("str", "null"),
     "dimensions": _t("int", "null")},
    ("model", "input"),
    {"input": [[], ["x"] * 2049], "dimensions": [0, -1, 65_537, 2**63], "encoding_format": ["int8", ""],
     "user": ["u" * 257], "model": ["m" * 257]},
)
RERANK = Route(
    "/v1/rerank", _rerank,
    {"model": _t("str"), "query": _t("str"), "documents": _t("list"), "top_n": _t("int", "null"),
     "return_documents": _t("bool")},
    ("model", "query", "documents"),
    {"documents": [[], ["x"] * 5000], "top_n": [0, -1, 2**63], "query": [""], "model": ["m" * 257]},
)


def _string_paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(value, str):
        return [path]
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    return [p for k, v in items for p in _string_paths(v, (*path, k))]


def _set(body: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    copy = dict(body) if isinstance(body, dict) else list(body)
    copy[path[0]] = _set(copy[path[0]], path[1:], value)  # type: ignore[index]
    return copy


def _deep(depth: int) -> Any:
    value: Any = "x"
    for i in range(depth):
        value = [value] if i % 2 else {"a": value}
    return value


@st.composite
def mutated(draw: st.DrawFn, route: Route, model: str, auth: tuple[tuple[str, str], ...], serves: bool = True) -> Probe:
    """A valid body of ``route`` with one mutation, and the answer it must get;
    ``serves`` False: ``model`` is of a kind the route does not serve (400 naming it)."""
    body, valid_expect = draw(route.valid(model))
    if not serves:
        valid_expect = refused("model")
    kind = draw(st.sampled_from(
        ["valid", "wrong_type", "out_of_range", "missing", "unknown_field", "weird_string", "deep", "raw", "model_name"]
    ))
    expect: Expect = ANY
    if kind == "valid":
        expect = valid_expect
    elif kind == "wrong_type":
        name = draw(st.sampled_from(sorted(route.types)))
        body = {**body, name: draw(wrong_type(route.types[name]))}
        expect = refused(name)
        kind += f" {name}"
    elif kind == "out_of_range":
        name = draw(st.sampled_from(sorted(route.out_of_range)))
        body = {**body, name: draw(st.sampled_from(route.out_of_range[name]))}
        expect = refused(name)
        kind += f" {name}"
    elif kind == "missing":
        name = draw(st.sampled_from(route.required))
        body = {k: v for k, v in body.items() if k != name}
        expect = refused(name)
        kind += f" {name}"
    elif kind == "unknown_field":
        body = {**body, draw(st.text(min_size=1, max_size=12).filter(lambda k: k not in route.types)): draw(json_values())}
    elif kind == "weird_string":
        path = draw(st.sampled_from(_string_paths(body)))
        weird = draw(weird_strings())
        body = _set(body, path, weird)
        kind += f" at {'.'.join(map(str, path))}"
        if any("\ud800" <= c <= "\udfff" for c in weird):
            expect = refused(None, 400)  # a lone surrogate escape: text that is not Unicode, refused as JSON
        elif path == ("model",):
            expect = refused("model", 400, 404)
    elif kind == "deep":
        name = draw(st.sampled_from([*sorted(route.types), "extra"]))
        body = {**body, name: _deep(draw(st.sampled_from([10, 100, 400])))}
    elif kind == "model_name":
        body = {**body, "model": draw(st.text(max_size=30).filter(lambda m: m != model))}
        expect = refused("model", 400, 404)
    if kind == "raw":
        raw, what = draw(_broken_json(encode(body)))
        # NaN is refused in a float field; in a field the route ignores it is ignored
        expect = (refused("temperature") if "temperature" in route.types else ANY) if what == "nan" else refused(None, 400)
        return Probe("POST", route.path, raw, expect, auth, what=f"raw {what}")
    return Probe("POST", route.path, encode(body), expect, auth, stream=bool(body.get("stream")), what=kind)


@st.composite
def _broken_json(draw: st.DrawFn, text: bytes) -> tuple[bytes, str]:
    how = draw(st.sampled_from(["truncated", "bad utf-8", "not json", "empty", "array", "number", "nan", "huge nesting"]))
    if len(text) < 3 and how in ("truncated", "bad utf-8"):  # "{}": nothing to cut inside
        how = "not json"
    if how == "truncated":
        return text[: draw(st.integers(1, len(text) - 1))], how
    if how == "bad utf-8":
        at = draw(st.integers(1, len(text) - 2))
        return text[:at] + b"\xff\xfe" + text[at:], how
    return {
        "not json": b"model=demo&prompt=hi", "empty": b"", "array": b"[" + text + b"]", "number": b"12345678901234567890",
        "nan": text[:-1] + b', "temperature": NaN}', "huge nesting": b"[" * 100_000 + b"]" * 100_000,
    }[how], how
