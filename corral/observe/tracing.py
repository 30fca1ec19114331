"""Traces: one per request, across gateway -> worker -> engine, named by the
OpenTelemetry GenAI semantic conventions.

The gateway takes the caller's W3C ``traceparent`` (or starts a trace), opens a span for
the request and passes ``traceparent`` on to the worker; the worker measures its own
span and the engine's and returns them at the end of the stream, so the gateway holds
the whole tree without a collector. Spans are plain dicts (OpenTelemetry's field names,
see ``span``) attached to the ``RequestEvent``: the request records store keeps them for
``corral trace``, and ``corral.observe.otlp`` hands them to the OpenTelemetry SDK's OTLP
exporters when configured. Keeping them as dicts (not SDK objects) is what lets a
worker send its spans over the wire and the records store them without the SDK.

The gateway's span is the GenAI span of the request (``chat MODEL``, attributes
``gen_ai.*``, prompt and completion as the conventions' span events when capture is on);
the worker's, the engine's and each lost attempt's carry Corral's own ``corral.*``
attributes, and no ``gen_ai.usage.*`` (so a backend that adds up usage per GenAI span
counts a request's tokens once). Attribute names of earlier versions are read by
``attribute``.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping
from typing import Any

from corral.core.observe import RequestEvent
from corral.observe.contain import json_safe, recorded_model

_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")

PROVIDER = "corral"  # gen_ai.provider.name (and the older gen_ai.system) of Corral's spans
SERVER, CLIENT, INTERNAL = "server", "client", "internal"  # span kinds
WORKER_SERVICE = "corral-worker"  # service.name of the spans a worker measures (its key "service")
FIRST_TOKEN = "corral.first_token"  # the event at the first generated token
PROMPT_EVENT, COMPLETION_EVENT = "gen_ai.content.prompt", "gen_ai.content.completion"

# gen_ai.operation.name of each route (the routes of every front-end)
_OPERATIONS = {
    "chat": "chat", "messages": "chat", "responses": "chat", "completion": "text_completion",
    "generate": "text_completion", "embedding": "embeddings", "embeddings": "embeddings", "embed": "embeddings",
}
# sampling parameters (the event's ``params``) -> their GenAI request attribute
_GEN_AI_PARAMS = {
    "max_tokens": "gen_ai.request.max_tokens", "temperature": "gen_ai.request.temperature",
    "top_p": "gen_ai.request.top_p", "top_k": "gen_ai.request.top_k", "seed": "gen_ai.request.seed",
    "presence_penalty": "gen_ai.request.presence_penalty", "frequency_penalty": "gen_ai.request.frequency_penalty",
    "stop": "gen_ai.request.stop_sequences", "n": "gen_ai.request.choice.count",
    "encoding_format": "gen_ai.request.encoding_formats",
}
# attributes renamed since earlier versions (records written then still read): new -> old
_RENAMED = {
    "corral.instance_id": "corral.instance", "corral.worker_id": "corral.worker",
    "http.response.status_code": "http.status_code", "corral.engine.output_tokens": "gen_ai.usage.output_tokens",
    "corral.engine.input_tokens": "gen_ai.usage.input_tokens", "gen_ai.request.model": "corral.model",
}


def new_id(nbytes: int) -> str:
    """A random non-zero hex id. Trace ids need uniqueness, not secrecy: the process's
    PRNG (reseeded by Python in a forked child) spares a getrandom call per id."""
    value = random.getrandbits(nbytes * 8) or 1
    return f"{value:0{nbytes * 2}x}"


def parse_traceparent(value: str | None) -> tuple[str, str, bool] | None:
    """(trace id, parent span id, sampled flag) of a valid W3C traceparent, else None."""
    if not value:
        return None
    m = _TRACEPARENT.match(value.strip().lower())
    if m is None or m.group(1) == "0" * 32 or m.group(2) == "0" * 16:
        return None
    return m.group(1), m.group(2), bool(int(m.group(3), 16) & 1)


def traceparent(trace_id: str, span_id: str) -> str:
    return f"00-{trace_id}-{span_id}-01"


def operation_of(route: str) -> str:
    """gen_ai.operation.name of a route (a route with no GenAI name keeps its own)."""
    return _OPERATIONS.get(route, route)


def span_event(name: str, time: float, attributes: dict[str, Any] | None = None) -> dict[str, Any]:
    """An event of a span at ``time`` (unix seconds)."""
    return {"name": name, "time": time, "attributes": attributes or {}}


def span(
    name: str, trace_id: str, span_id: str, parent: str | None, start: float, end: float, attributes: dict[str, Any],
    kind: str = INTERNAL, events: list[dict[str, Any]] | None = None, error: str | None = None,
) -> dict[str, Any]:
    """A span as a dict; ``start``/``end`` are unix seconds; ``error`` (a message) sets
    its status to error. ``kind``, ``events`` and ``error`` are left out when unset."""
    s: dict[str, Any] = {
        "name": name,
        "trace_id": trace_id,
        "span_id": span_id,
        "parent_span_id": parent,
        "start": start,
        "end": end,
        "attributes": {k: v for k, v in attributes.items() if v is not None},
    }
    if kind != INTERNAL:
        s["kind"] = kind
    if events:
        s["events"] = events
    if error is not None:
        s["error"] = error
    return s


def attribute(s: Mapping[str, Any], name: str) -> Any:
    """A span's attribute by its current name, or by the name earlier versions stored."""
    attrs = s.get("attributes") or {}
    value = attrs.get(name)
    if value is None and name in _RENAMED:
        value = attrs.get(_RENAMED[name])
    return value


def _request_attributes(params: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in params.items():
        key = _GEN_AI_PARAMS.get(k)
        if key == "gen_ai.request.choice.count" and v == 1:
            continue  # the conventions: set only when not 1
        if key is None:
            key = f"corral.request.{k}"
        if isinstance(v, list):
            v = [str(x) for x in v]
        elif key == "gen_ai.request.encoding_formats":
            v = [str(v)]
        elif not isinstance(v, int | float | str | bool):
            continue
        if v != []:
            out[key] = v
    return out


def gateway_span_of(
    row: Mapping[str, Any], params: Mapping[str, Any], span_id: str, parent: str | None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The gateway's span of a request from its values by record column name (``time``,
    ``route``, ``trace_id``, ``latency_s``, ``model``, ``instance_id``, ``engine``,
    ``worker_id``, ``outcome``, ``http_status``, ``error``, ``retries``, ``ttft_s``,
    ``prompt_tokens``, ``completion_tokens``, ``protocol``, ``prompt_text``,
    ``completion_text``) and ``extra``, what the row has no column for (finish reasons,
    queue wait, routing policy). The request records store only the span's ids and
    ``extra`` and rebuild it with this."""
    extra = extra or {}
    start = row["time"]
    end = start + (row.get("latency_s") or 0.0)
    operation = operation_of(row.get("route") or "")
    model = row.get("model")
    served = row.get("instance_id") is not None
    outcome = row.get("outcome")
    ttft = row.get("ttft_s")
    attrs: dict[str, Any] = {
        "gen_ai.operation.name": operation, "gen_ai.provider.name": PROVIDER, "gen_ai.system": PROVIDER,
        "gen_ai.request.model": model, "gen_ai.response.model": model if served else None,
        **_request_attributes(params),
        "gen_ai.usage.input_tokens": row.get("prompt_tokens"),
        "gen_ai.usage.output_tokens": None if operation == "embeddings" else row.get("completion_tokens"),
        "gen_ai.response.finish_reasons": list(extra.get("finish_reasons") or ()) or None,
        "corral.request_id": row.get("request_id"), "corral.protocol": row.get("protocol"),
        "corral.instance_id": row.get("instance_id"), "corral.engine": row.get("engine"),
        "corral.worker_id": row.get("worker_id"), "corral.routing.policy": extra.get("routing"),
        "corral.outcome": outcome, "corral.retries": row.get("retries"), "corral.ttft_s": ttft,
        "corral.queue_wait_s": extra.get("queue_wait_s"),
        "http.response.status_code": row.get("http_status"),
        "error.type": str(row.get("http_status")) if outcome == "error" else None,
    }
    events = []
    if row.get("prompt_text") is not None:  # captured (and redacted): the conventions' content events
        events.append(span_event(PROMPT_EVENT, start, {"gen_ai.prompt": row["prompt_text"]}))
    if ttft is not None:
        events.append(span_event(FIRST_TOKEN, start + ttft))
    if row.get("completion_text") is not None:
        events.append(span_event(COMPLETION_EVENT, end, {"gen_ai.completion": row["completion_text"]}))
    name = f"{operation} {model}" if model else operation
    error = (row.get("error") or "error") if outcome == "error" else None
    return span(name, row["trace_id"], span_id, parent, start, end, attrs, SERVER, events, error)


def gateway_extra(event: RequestEvent) -> dict[str, Any]:
    """What the gateway's span has beyond the request record's columns."""
    extra: dict[str, Any] = {}
    if event.finish_reasons:
        extra["finish_reasons"] = event.finish_reasons
    if event.queue_wait_s is not None:
        extra["queue_wait_s"] = event.queue_wait_s
    if event.routing is not None:
        extra["routing"] = event.routing
    return extra


def gateway_span(event: RequestEvent, parent: str | None) -> dict[str, Any]:
    """The gateway's span of a finished request (model names and strings capped, as recorded)."""
    assert event.trace_id is not None and event.span_id is not None
    row = {
        "time": event.started_at, "route": event.route, "trace_id": event.trace_id, "latency_s": event.latency_s,
        "request_id": event.request_id, "model": recorded_model(event.model, event.outcome, event.http_status, event.instance_id),
        "instance_id": event.instance_id, "engine": event.engine, "worker_id": event.worker_id,
        "outcome": event.outcome, "http_status": event.http_status, "error": event.error, "retries": event.retries,
        "ttft_s": event.ttft_s, "prompt_tokens": event.prompt_tokens, "completion_tokens": event.completion_tokens,
        "protocol": event.protocol, "prompt_text": event.prompt_text, "completion_text": event.completion_text,
    }
    params = {k: json_safe(v) for k, v in event.params.items() if v is not None}
    return gateway_span_of(row, params, event.span_id, parent, gateway_extra(event))


def all_spans(event: RequestEvent) -> list[dict[str, Any]]:
    """Every span of a finished request: the gateway's, then those reported below it."""
    if event.trace_id is None or event.span_id is None:
        return []
    return [gateway_span(event, event.parent_span_id), *event.spans]
