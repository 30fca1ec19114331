"""Traces: one per request, across gateway -> worker -> engine.

The gateway takes the caller's W3C ``traceparent`` (or starts a trace), opens a span for
the request and passes ``traceparent`` on to the worker; the worker measures its own
span and the engine's and returns them at the end of the stream, so the gateway holds
the whole tree without a collector. Spans are plain dicts (OpenTelemetry's field names)
attached to the ``RequestEvent``; the request records store keeps them for ``corral
trace``, and ``OtlpExporter`` sends them to any OTLP/HTTP collector when configured.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import random
from typing import Any

import httpx

from corral.core.observe import RequestEvent

log = logging.getLogger(__name__)

_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")


def new_id(nbytes: int) -> str:
    """A random non-zero hex id. Trace ids need uniqueness, not secrecy: the process's
    PRNG (reseeded by Python in a forked child) spares a getrandom call per id."""
    value = random.getrandbits(nbytes * 8) or 1
    return f"{value:0{nbytes * 2}x}"


def parse_traceparent(value: str | None) -> tuple[str, str] | None:
    """(trace id, parent span id) of a valid W3C traceparent header, else None."""
    if not value:
        return None
    m = _TRACEPARENT.match(value.strip().lower())
    if m is None or m.group(1) == "0" * 32 or m.group(2) == "0" * 16:
        return None
    return m.group(1), m.group(2)


def traceparent(trace_id: str, span_id: str) -> str:
    return f"00-{trace_id}-{span_id}-01"


def span(
    name: str, trace_id: str, span_id: str, parent: str | None, start: float, end: float, attributes: dict[str, Any]
) -> dict[str, Any]:
    """A span as a dict; ``start``/``end`` are unix seconds."""
    return {
        "name": name,
        "trace_id": trace_id,
        "span_id": span_id,
        "parent_span_id": parent,
        "start": start,
        "end": end,
        "attributes": {k: v for k, v in attributes.items() if v is not None},
    }


def gateway_span(event: RequestEvent, parent: str | None) -> dict[str, Any]:
    """The gateway's span of a finished request."""
    assert event.trace_id is not None and event.span_id is not None
    end = event.started_at + (event.latency_s or 0.0)
    return span(
        f"corral.{event.route}",
        event.trace_id,
        event.span_id,
        parent,
        event.started_at,
        end,
        {
            "corral.request_id": event.request_id,
            "corral.model": event.model,
            "corral.instance": event.instance_id,
            "corral.engine": event.engine,
            "corral.worker": event.worker_id,
            "corral.outcome": event.outcome,
            "http.status_code": event.http_status,
            "corral.retries": event.retries,
            "corral.ttft_s": event.ttft_s,
            "gen_ai.usage.input_tokens": event.prompt_tokens,
            "gen_ai.usage.output_tokens": event.completion_tokens,
            **{f"gen_ai.request.{k}": v for k, v in event.params.items() if isinstance(v, int | float | str | bool)},
        },
    )


def all_spans(event: RequestEvent) -> list[dict[str, Any]]:
    """Every span of a finished request: the gateway's, then those reported below it."""
    if event.trace_id is None or event.span_id is None:
        return []
    return [gateway_span(event, event.parent_span_id), *event.spans]


class OtlpExporter:
    """Sends spans to an OTLP/HTTP (JSON) collector in batches, from a background task.
    Bounded: when the collector is slow or down, spans are dropped and counted."""

    def __init__(self, url: str, service: str, queue_size: int = 10_000) -> None:
        self._url = url
        self._service = service
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(queue_size)
        self._task: asyncio.Task[None] | None = None
        self.dropped_total = 0

    @classmethod
    def from_env(cls, service: str) -> OtlpExporter | None:
        # as OpenTelemetry defines them: the traces variable is the full URL, the other a base
        traces = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        if traces:
            return cls(traces, service)
        base = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        return cls(base.rstrip("/") + "/v1/traces", service) if base else None

    def request_finished(self, event: RequestEvent) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._send_loop(), name="otlp-export")
        for s in all_spans(event):
            try:
                self._queue.put_nowait(s)
            except asyncio.QueueFull:
                self.dropped_total += 1

    async def _send_loop(self) -> None:
        async with httpx.AsyncClient(timeout=5.0) as http:
            while True:
                batch = [await self._queue.get()]
                while len(batch) < 512 and not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                try:
                    resp = await http.post(self._url, json=self._payload(batch))
                    if resp.status_code >= 400:
                        self.dropped_total += len(batch)
                        log.debug("OTLP collector answered HTTP %d", resp.status_code)
                except httpx.HTTPError as exc:
                    self.dropped_total += len(batch)
                    log.debug("OTLP export failed: %s", exc)

    def _payload(self, spans: list[dict[str, Any]]) -> dict[str, Any]:
        def attr(k: str, v: Any) -> dict[str, Any]:
            if isinstance(v, bool):
                return {"key": k, "value": {"boolValue": v}}
            if isinstance(v, int):
                return {"key": k, "value": {"intValue": str(v)}}
            if isinstance(v, float):
                return {"key": k, "value": {"doubleValue": v}}
            return {"key": k, "value": {"stringValue": str(v)}}

        return {
            "resourceSpans": [
                {
                    "resource": {"attributes": [attr("service.name", self._service)]},
                    "scopeSpans": [
                        {
                            "scope": {"name": "corral"},
                            "spans": [
                                {
                                    "traceId": s["trace_id"],
                                    "spanId": s["span_id"],
                                    **({"parentSpanId": s["parent_span_id"]} if s["parent_span_id"] else {}),
                                    "name": s["name"],
                                    "kind": 2,
                                    "startTimeUnixNano": str(int(s["start"] * 1e9)),
                                    "endTimeUnixNano": str(int(s["end"] * 1e9)),
                                    "attributes": [attr(k, v) for k, v in s["attributes"].items()],
                                }
                                for s in spans
                            ],
                        }
                    ],
                }
            ]
        }

