"""Filling one ``RequestEvent`` per API request and handing it to the observers.

The route handlers open a ``track`` block; the pipeline adds what it learns (instance,
retries, timings, tokens). A streamed response finishes its event when the stream ends
(or the client goes away), everything else when the handler returns or raises.
Prompt and completion text are kept only when capture is on, after redaction.

A request may be tried on several instances (the pipeline's failover). Each try
measures itself; only the one whose answer the client gets is committed to the event
(``served_by``, then the pipeline's ``Call.commit``), and every other try becomes a
``corral.attempt`` span with its error (``lost_attempt``) and counts in ``retries``.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from corral.core.errors import ClientClosed, CorralError
from corral.core.keys import Grant
from corral.core.observe import Observers, RequestEvent
from corral.core.registry import InstanceRecord
from corral.core.types import GenerationRequest, ToolMode
from corral.observe.tracing import CLIENT, new_id, parse_traceparent, span

MAX_CAPTURE = 64 * 1024  # characters of prompt or completion kept per request
MULTIPLE = "multiple"  # the instance of a request whose prompts ran on several instances


@dataclass(frozen=True)
class Capture:
    enabled: bool = False
    redact: tuple[str, ...] = ()  # regular expressions; matches become [REDACTED]


class Tracker:
    def __init__(self, observers: Observers, capture: Capture | None = None) -> None:
        self.observers = observers
        self.capture = capture or Capture()
        self._redact = [re.compile(p) for p in self.capture.redact]

    @asynccontextmanager
    async def track(
        self, request_id: str, route: str, api_key_id: str | None, traceparent: str | None = None,
        protocol: str = "openai", grant: Grant | None = None,
    ) -> AsyncIterator[RequestEvent]:
        """Continues the caller's trace (W3C ``traceparent``) or starts one."""
        parent = parse_traceparent(traceparent)
        event = RequestEvent(
            request_id=request_id, route=route, protocol=protocol, started_at=time.time(), api_key_id=api_key_id, grant=grant,
            clock_start=time.perf_counter(),
            trace_id=parent[0] if parent else new_id(16), span_id=new_id(8),
            parent_span_id=parent[1] if parent else None, parent_sampled=parent[2] if parent else None,
        )
        try:
            yield event
        except CorralError as exc:
            outcome = "cancelled" if isinstance(exc, ClientClosed) else "error"
            event.outcome, event.http_status, event.error = outcome, exc.status, exc.message
            self.finish(event)
            raise
        except BaseException as exc:
            event.outcome, event.http_status, event.error = "error", 500, type(exc).__name__
            self.finish(event)
            raise
        if not event.stream:
            self.finish(event)

    def finish(self, event: RequestEvent) -> None:
        if event.finished:
            return
        event.finished = True
        if event.settle is not None:
            event.settle(event.prompt_tokens + event.completion_tokens)
        event.latency_s = time.perf_counter() - event.clock_start
        if self.capture.enabled:
            event.prompt_text = self._clean(event.prompt_text)
            event.completion_text = self._clean(event.completion_text)
        else:
            event.prompt_text = event.completion_text = None
        if self.observers:
            self.observers.finish(event)

    def describe(self, event: RequestEvent, gen: GenerationRequest, stream: bool) -> None:
        """What a generation request asked for: model, the sampling parameters as the
        engine gets them (the pipeline updates them once the model's defaults apply),
        tools, and the prompt when capture is on."""
        s = gen.sampling
        event.model, event.stream = gen.model, stream
        event.params = {
            "max_tokens": s.max_tokens, "temperature": s.temperature, "top_p": s.top_p, "n": s.n,
            "stop": list(s.stop), "seed": s.seed, "stream": stream,
        }
        if s.top_k:  # the fields only some protocols have: recorded when asked for
            event.params["top_k"] = s.top_k
        if s.repetition_penalty != 1.0:
            event.params["repetition_penalty"] = s.repetition_penalty
        if gen.tools:
            event.params["tools"] = [t.name for t in gen.tools]
            choice = gen.tool_choice
            if choice is not None:
                event.params["tool_choice"] = choice.name if choice.mode is ToolMode.NAMED else choice.mode.value
        if gen.response_format is not None:
            event.params["response_format"] = gen.response_format.get("type")
        event.prompt_text = self.prompt_of(gen)
        event.completion_text = "" if self.capture.enabled else None

    def prompt_of(self, request: GenerationRequest) -> str | None:
        if not self.capture.enabled:
            return None
        if request.prompt is not None:
            return request.prompt[:MAX_CAPTURE]
        return "\n".join(f"{m.role}: {m.content}" for m in request.messages or ())[:MAX_CAPTURE]

    def _clean(self, text: str | None) -> str | None:
        if text is None:
            return None
        for pattern in self._redact:
            text = pattern.sub("[REDACTED]", text)
        return text[:MAX_CAPTURE]


def served_by(event: RequestEvent | None, record: InstanceRecord) -> None:
    """The instance (engine, worker) that served the request, or a part of it: the
    prompts of one request served by several instances record ``MULTIPLE``."""
    if event is None:
        return
    if event.instance_id is None:
        event.instance_id, event.engine, event.worker_id = record.instance_id, record.engine, record.worker_id
        event.routing = record.routing
    elif event.instance_id != record.instance_id:
        event.instance_id = MULTIPLE
        if event.worker_id != record.worker_id:
            event.worker_id = None
        if event.engine != record.engine:
            event.engine = None


def lost_attempt(event: RequestEvent | None, record: InstanceRecord, started_at: float, error: CorralError, retried: bool) -> None:
    """A try whose answer the client did not get: a ``corral.attempt`` span under the
    request's span (its instance and error); ``retried`` when another instance was tried
    after it, which counts in the event's ``retries``."""
    if event is None:
        return
    if retried:
        event.retries += 1
    if event.trace_id is None:
        return
    attrs = {
        "corral.instance_id": record.instance_id, "corral.model": record.model, "corral.engine": record.engine,
        "corral.worker_id": record.worker_id, "corral.outcome": "error", "corral.error": error.message[:500],
        "error.type": error.code, "corral.error_code": error.code, "http.response.status_code": error.status,
        "corral.retried": retried,
    }
    event.spans.append(span(
        "corral.attempt", event.trace_id, new_id(8), event.span_id, started_at, time.time(), attrs, CLIENT,
        error=error.message[:500],
    ))
