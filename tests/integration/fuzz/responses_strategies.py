"""Hypothesis strategies for the Responses API routes (``/v1/responses``): valid create
bodies (bounded: ``max_output_tokens`` <= 8), the JSON types and ranges of its fields
for ``strategies.mutated``, continuations of a stored response and of unknown ids, and
reads and deletes of stored responses by id."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from hypothesis import strategies as st

from tests.integration.fuzz.harness import Expect, Probe, encode, refused
from tests.integration.fuzz.strategies import MAX_TOKENS, WEIRD_STRINGS, Route, _t, _text, nonempty_text

PATH = "/v1/responses"
TOOL = {"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {}}}


def _content() -> st.SearchStrategy[Any]:
    part = st.fixed_dictionaries({"type": st.sampled_from(["input_text", "output_text"]), "text": _text()})
    return st.one_of(_text(), st.lists(part, min_size=1, max_size=3))


def _item() -> st.SearchStrategy[dict[str, Any]]:
    message = st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "assistant", "system", "developer"]), "content": _content()},
        optional={"type": st.just("message")},
    )
    return message


def _create(model: str) -> st.SearchStrategy[tuple[dict[str, Any], Expect]]:
    items = st.lists(_item(), min_size=0, max_size=3).map(lambda m: [*m, {"role": "user", "content": "hi"}])
    body = st.fixed_dictionaries(
        {"model": st.just(model), "input": st.one_of(_text(), items), "max_output_tokens": st.integers(1, MAX_TOKENS)},
        optional={
            "instructions": _text(), "temperature": st.floats(0, 2), "top_p": st.floats(0.01, 1),
            "stream": st.booleans(), "store": st.booleans(), "user": _text(),
            "metadata": st.dictionaries(nonempty_text(10), _text(20), max_size=3),
            "parallel_tool_calls": st.booleans(), "text": st.just({"format": {"type": "text"}}),
            "truncation": st.just("disabled"), "reasoning": st.just({}), "background": st.just(False),
        },
    )
    valid = body.map(lambda b: (b, Expect(frozenset({200}))))
    # what the router refuses for engines without structured output (the shared server's
    # models), naming the field in this API's words; tools: ``unhonoured_tools``
    unhonoured = body.map(lambda b: ({**b, "text": {"format": {"type": "json_object"}}}, refused("text.format")))
    return st.one_of(valid, valid, valid, unhonoured)


def unhonoured_tools(model: str, auth: tuple[tuple[str, str], ...]) -> st.SearchStrategy[Probe]:
    """Function tools, a tool choice and tool turns for a model whose engine does not
    call tools: the router's 400 naming ``tools``. (Not a base of ``mutated``, whose
    ``tool_choice`` mutations would then be valid.)"""
    call = {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": "{}"}
    result = {"type": "function_call_output", "call_id": "call_1", "output": "sunny"}
    bodies = st.sampled_from([
        {"tools": [TOOL]}, {"tools": [TOOL], "tool_choice": "required"},
        {"tools": [TOOL], "tool_choice": {"type": "function", "name": "get_weather"}},
        {"input": [{"role": "user", "content": "weather?"}, call, result]},
    ])
    return st.tuples(bodies, st.booleans()).map(lambda p: Probe(
        "POST", PATH, encode({"model": model, "input": "hi", "max_output_tokens": 4, "stream": p[1], **p[0]}),
        refused("tools"), auth, stream=p[1], what="tools unhonoured",
    ))


RESPONSES = Route(
    PATH, _create,
    {"model": _t("str"), "input": _t("str", "list"), "instructions": _t("str", "null"),
     "max_output_tokens": _t("int", "null"), "temperature": _t("float", "null"), "top_p": _t("float", "null"),
     "tools": _t("list", "null"), "tool_choice": _t("str", "dict", "null"), "parallel_tool_calls": _t("bool", "null"),
     "text": _t("dict", "null"), "stream": _t("bool"), "store": _t("bool"), "previous_response_id": _t("str", "null"),
     "metadata": _t("dict", "null"), "user": _t("str", "null"), "background": _t("bool", "null"),
     "reasoning": _t("dict", "null"), "include": _t("list", "null"), "truncation": _t("str", "null")},
    ("model", "input"),
    {"max_output_tokens": [0, -1, 2**63, 2**20 + 1], "temperature": [-0.01, 2.01, 1e308], "top_p": [0, 1.0001],
     "input": [[], [5], [[]], [{"role": "robot", "content": "x"}], [{"type": "function_call", "name": "f"}],
               [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}],
               [{"type": "item_reference", "id": "x"}], [{"role": "user", "content": [{"type": "input_text"}]}]],
     "metadata": [{str(i): "v" for i in range(17)}, {"k" * 65: "v"}, {"k": "v" * 513}],
     "background": [True], "reasoning": [{"effort": "high"}], "include": [["reasoning.encrypted_content"]],
     "truncation": ["auto"], "tools": [[{"type": "web_search"}], [{"type": "function"}]],
     "tool_choice": ["required", "sometimes", {"type": "function", "name": "f"}, {"type": "web_search"}],
     "text": [{"format": {"type": "json_schema"}}, {"format": {"type": "xml"}}, {"verbosity": "low"}],
     "user": ["u" * 257], "model": ["m" * 257], "previous_response_id": ["r" * 257]},
)


def _ids() -> st.SearchStrategy[str]:
    """Response ids that were never stored (a path segment: no ``/``)."""
    return st.one_of(st.text(min_size=1, max_size=40), st.sampled_from([s for s in WEIRD_STRINGS if s])).filter(
        lambda s: "/" not in s and not any("\ud800" <= c <= "\udfff" for c in s) and s.strip(".") != ""
    )


def continuations(known: str, model: str, auth: tuple[tuple[str, str], ...]) -> st.SearchStrategy[Probe]:
    """Creates continuing a stored response (200) or an id never stored (404 naming it)."""

    def probe(previous: str, stream: bool, expect: Expect) -> Probe:
        body = {"model": model, "input": "and then?", "max_output_tokens": 4, "previous_response_id": previous,
                "stream": stream}
        return Probe("POST", PATH, encode(body), expect, auth, stream=stream, what="continuation")

    return st.one_of(
        st.booleans().map(lambda s: probe(known, s, Expect(frozenset({200})))),
        st.tuples(_ids(), st.booleans()).map(lambda p: probe(p[0], p[1], refused("previous_response_id", 404))),
    )


def reads(known: str, auth: tuple[tuple[str, str], ...]) -> st.SearchStrategy[Probe]:
    """GET of the stored response (200), GET and DELETE of ids never stored (404), and
    methods the routes do not take (405)."""
    unknown = _ids().map(lambda i: f"{PATH}/{quote(i, safe='')}")
    return st.one_of(
        st.just(Probe("GET", f"{PATH}/{known}", None, Expect(frozenset({200})), auth, what="read stored")),
        unknown.map(lambda p: Probe("GET", p, None, refused(None, 404), auth, what="read unknown")),
        unknown.map(lambda p: Probe("DELETE", p, None, refused(None, 404), auth, what="delete unknown")),
        st.sampled_from([("GET", PATH), ("PUT", PATH), ("POST", f"{PATH}/{known}")]).map(
            lambda m: Probe(m[0], m[1], None, refused(None, 405), auth, what="wrong method")
        ),
    )
