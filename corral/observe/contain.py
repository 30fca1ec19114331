"""Keeping client-supplied strings contained: what a caller types (a model name, stop
strings, a tool name, an error message echoing its input) reaches request records,
traces and reports only capped, as valid UTF-8, and never as a new group per value.

- ``UNKNOWN_MODEL``: the one label under which requests for a model that does not exist
  are recorded and reported (the name they asked for is kept, capped, in ``params``
  as ``requested_model``); ``is_unknown_model`` is the rule, shared with the report so
  that records written before the label existed are grouped the same way.
- ``clean``: a string capped to a number of characters (ending in ``…`` when cut), lone
  surrogates replaced (``sqlite3``, orjson and every driver refuse them: one such string
  would fail the whole batch of rows it travels in).
- ``json_safe`` / ``dumps``: any value as bounded JSON: strings cleaned and capped,
  lists and objects cut, integers beyond 64 bits as strings (orjson refuses them: a
  ``seed`` of 2**64 used to make recording raise).
"""

from __future__ import annotations

from typing import Any

import orjson

UNKNOWN_MODEL = "(unknown model)"
ELLIPSIS = "…"

MAX_NAME = 256  # model, instance, engine, worker and route names; request and trace ids
MAX_ERROR = 1024  # an error message (it may quote the request)
MAX_VALUE = 256  # one string inside params or span attributes
MAX_ITEMS = 64  # elements of one list or object inside params or spans
MAX_DEPTH = 6  # nesting inside params or spans
MAX_SPANS_JSON = 64 * 1024  # characters of one request's spans

_INT64 = (-(2**63), 2**64 - 1)  # what orjson encodes (it takes unsigned 64-bit too)


def clean(text: str, limit: int) -> str:
    """``text`` as valid UTF-8 of at most ``limit`` characters (``…`` marks a cut)."""
    if len(text) > limit:
        text = text[: max(limit - 1, 0)] + ELLIPSIS
    if text.isascii():
        return text
    try:
        text.encode()
    except UnicodeEncodeError:  # lone surrogates: "\ud800" is valid JSON but not UTF-8
        text = text.encode("utf-8", "replace").decode()
    return text


def clean_or_none(text: Any, limit: int) -> str | None:
    """``clean`` for a column that may be ``None`` (anything else becomes its ``str``)."""
    if text is None:
        return None
    return clean(text if isinstance(text, str) else str(text), limit)


def is_unknown_model(model: str | None, outcome: str | None, http_status: int | None, instance_id: str | None) -> bool:
    """A request refused because its model does not exist: 404, no instance ever chosen.
    (The same rule keeps such names out of the metrics' ``model`` label.)"""
    return bool(model) and outcome == "error" and http_status == 404 and not instance_id


def recorded_model(model: str | None, outcome: str | None, http_status: int | None,
                   instance_id: str | None) -> str | None:
    """The model as records and traces name it: ``UNKNOWN_MODEL`` for one that does not
    exist, otherwise the name capped."""
    if is_unknown_model(model, outcome, http_status, instance_id):
        return UNKNOWN_MODEL
    return clean_or_none(model, MAX_NAME)


def json_safe(value: Any, depth: int = 0) -> Any:
    """``value`` as plain JSON types, bounded (see the module docstring)."""
    if value is None or isinstance(value, bool | float):
        return value
    if isinstance(value, int):
        return value if _INT64[0] <= value <= _INT64[1] else clean(str(value), MAX_VALUE)
    if isinstance(value, str):
        return clean(value, MAX_VALUE)
    if depth >= MAX_DEPTH:
        return clean(str(value), MAX_VALUE)
    if isinstance(value, dict):
        items = list(value.items())[:MAX_ITEMS]
        return {clean(str(k), MAX_VALUE): json_safe(v, depth + 1) for k, v in items}
    if isinstance(value, list | tuple):
        return [json_safe(v, depth + 1) for v in value[:MAX_ITEMS]]
    return clean(str(value), MAX_VALUE)


def dumps(value: Any, limit: int) -> str:
    """Compact JSON of ``value``; when that fails or is longer than ``limit`` characters,
    the JSON of ``json_safe(value)`` (never raises for anything ``json_safe`` takes)."""
    try:
        text = orjson.dumps(value).decode()
    except (TypeError, ValueError):  # an int beyond 64 bits, a lone surrogate, an odd type
        text = None
    if text is None or len(text) > limit:
        text = orjson.dumps(json_safe(value)).decode()
    return text
