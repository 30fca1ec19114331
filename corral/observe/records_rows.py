"""The ``corral_requests`` table and how a ``RequestEvent`` becomes one of its rows (and back).

Shared by ``RecordStore`` and its two backends. Encoding a row never raises for anything
a client can send: every client-supplied string is capped and made valid UTF-8
(``corral.observe.contain``), a request for a model that does not exist is stored under
``UNKNOWN_MODEL`` with the requested name (capped) in ``params.requested_model``, and
the JSON columns fall back to a bounded copy when a value cannot be encoded.

Rows are kept small (a row was ~2.2 KB, most of it the spans): ``params`` leaves out
parameters that are unset (``null``, ``[]``); in ``spans`` the gateway's span is stored
as its ids only (its times and attributes are the row's own columns, rebuilt on read
by ``decode_row``) with what the columns lack (``extra``: finish reasons, queue wait, routing
policy), and the other spans without their trace id (the row's). Rows written before
the spans followed the GenAI conventions read back with the current attribute names for
the gateway's span (it is rebuilt) and their old names for the others
(``tracing.attribute`` reads both).
"""

from __future__ import annotations

import json
from typing import Any

from corral.core.observe import RequestEvent
from corral.observe.contain import (
    MAX_ERROR,
    MAX_NAME,
    MAX_SPANS_JSON,
    clean,
    clean_or_none,
    dumps,
    is_unknown_model,
    json_safe,
    recorded_model,
)
from corral.observe.tracing import gateway_extra, gateway_span_of

TABLE = "corral_requests"
MAX_TEXT = 64 * 1024  # prompt and completion text (the Tracker already cuts them there)
MAX_PARAMS_JSON = 8 * 1024

# The table, in column order (rows travel as tuples in this order). The types are the SQL
# names SQLAlchemy emitted for this table on SQLite, so files written by either backend
# (and by earlier versions) have the same schema.
COLUMNS: tuple[tuple[str, str], ...] = (
    ("request_id", "TEXT"),
    ("time", "DOUBLE"),  # unix seconds when the request arrived
    ("api_key_id", "TEXT"), ("model", "TEXT"), ("instance_id", "TEXT"), ("engine", "TEXT"),
    ("worker_id", "TEXT"), ("route", "TEXT"),
    ("stream", "BOOLEAN"),
    ("params", "TEXT"),  # JSON object: the sampling parameters as sent (unset ones left out)
    ("outcome", "TEXT"), ("http_status", "INTEGER"), ("error", "TEXT"),
    ("latency_s", "DOUBLE"), ("ttft_s", "DOUBLE"),
    ("prompt_tokens", "INTEGER"), ("completion_tokens", "INTEGER"), ("retries", "INTEGER"),
    ("prompt_text", "TEXT"), ("completion_text", "TEXT"),  # only with capture_text, redacted
    ("trace_id", "TEXT"),
    ("spans", "TEXT"),  # JSON list of the request's spans, for ``corral trace`` (compacted, see above)
    ("feedback_rating", "INTEGER"), ("feedback_comment", "TEXT"), ("feedback_time", "DOUBLE"),
    ("protocol", "TEXT"),  # the service protocol the client spoke (added in 0.3)
)
# columns added after the table's first version: opening a store adds those it lacks
ADDED_COLUMNS: tuple[tuple[str, str], ...] = (("protocol", "TEXT"),)
COLUMN_NAMES = tuple(name for name, _ in COLUMNS)
PRIMARY_KEY = "request_id"
NOT_NULL = ("time",)
INDEXES = (("ix_corral_requests_time", "time"), ("ix_corral_requests_model", "model"),
           ("ix_corral_requests_trace", "trace_id"))
_JSON_COLUMNS = ("params", "spans")
_BOOLEAN_COLUMNS = tuple(name for name, kind in COLUMNS if kind == "BOOLEAN")
_GATEWAY = "gateway"  # the key marking the gateway's compacted span

# A condition of a select: (column, operator, value), the operator "=", ">=" or "<".
Condition = tuple[str, str, Any]


def _params(event: RequestEvent, unknown: bool) -> str:
    params = {k: v for k, v in (event.params or {}).items() if v is not None and v != []}
    if unknown:
        params["requested_model"] = event.model
    return dumps(json_safe(params), MAX_PARAMS_JSON)


def _spans(event: RequestEvent) -> str:
    if event.trace_id is None or event.span_id is None:
        return "[]"
    gateway: dict[str, Any] = {_GATEWAY: 1, "span_id": event.span_id}
    if event.parent_span_id:
        gateway["parent_span_id"] = event.parent_span_id
    extra = gateway_extra(event)
    if extra:
        gateway["extra"] = extra
    spans: list[Any] = [gateway]
    for s in event.spans:
        if isinstance(s, dict):
            s = {k: v for k, v in s.items()
                 if not (k == "trace_id" and v == event.trace_id) and not (k == "parent_span_id" and v is None)}
        spans.append(s)
    text = dumps(spans, MAX_SPANS_JSON)
    # still too long once capped (a worker reporting thousands of spans): keep the gateway's
    return text if len(text) <= MAX_SPANS_JSON else dumps([gateway], MAX_SPANS_JSON)


def event_values(event: RequestEvent) -> tuple[Any, ...]:
    """The row stored for a finished request, in ``COLUMNS`` order (a tuple: built on
    every request, and what the database drivers take). Raises only for an event that
    is not one (a bug), never for what a client sent."""
    unknown = is_unknown_model(event.model, event.outcome, event.http_status, event.instance_id)
    return (
        clean(str(event.request_id), MAX_NAME), float(event.started_at), clean_or_none(event.api_key_id, MAX_NAME),
        recorded_model(event.model, event.outcome, event.http_status, event.instance_id),
        clean_or_none(event.instance_id, MAX_NAME), clean_or_none(event.engine, MAX_NAME),
        clean_or_none(event.worker_id, MAX_NAME), clean_or_none(event.route, MAX_NAME), bool(event.stream),
        _params(event, unknown), clean_or_none(event.outcome, MAX_NAME), _int(event.http_status),
        clean_or_none(event.error, MAX_ERROR), event.latency_s, event.ttft_s, _int(event.prompt_tokens),
        _int(event.completion_tokens), _int(event.retries), clean_or_none(event.prompt_text, MAX_TEXT),
        clean_or_none(event.completion_text, MAX_TEXT), clean_or_none(event.trace_id, MAX_NAME), _spans(event),
        None, None, None,  # feedback comes later
        clean_or_none(event.protocol, MAX_NAME),
    )


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


def event_row(event: RequestEvent) -> dict[str, Any]:
    """The row stored for a finished request, by column name."""
    return dict(zip(COLUMN_NAMES, event_values(event), strict=True))


def decode_row(row: dict[str, Any]) -> dict[str, Any]:
    """A row as read from the database, with its JSON columns decoded, booleans as
    ``bool`` and the spans whole again (rows of earlier versions read the same)."""
    for name in _JSON_COLUMNS:
        try:
            row[name] = json.loads(row[name]) if row[name] else None
        except ValueError:
            row[name] = None
    for name in _BOOLEAN_COLUMNS:  # SQLite stores 0/1
        if row[name] is not None:
            row[name] = bool(row[name])
    if isinstance(row.get("spans"), list):
        row["spans"] = [_expand(row, s) for s in row["spans"] if isinstance(s, dict)]
    return row


def _expand(row: dict[str, Any], stored: dict[str, Any]) -> dict[str, Any]:
    if stored.get(_GATEWAY):
        params = row["params"] if isinstance(row.get("params"), dict) else {}
        params = {k: v for k, v in params.items() if k != "requested_model"}
        extra = stored.get("extra") if isinstance(stored.get("extra"), dict) else None
        return gateway_span_of(row, params, str(stored.get("span_id")), stored.get("parent_span_id"), extra)
    return {"trace_id": row.get("trace_id"), "parent_span_id": None, **stored}


__all__ = [
    "COLUMNS", "COLUMN_NAMES", "Condition", "INDEXES", "NOT_NULL", "PRIMARY_KEY", "TABLE",
    "decode_row", "event_row", "event_values",
]
