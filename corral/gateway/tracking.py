"""Filling one ``RequestEvent`` per API request and handing it to the observers.

The route handlers open a ``track`` block; the pipeline adds what it learns (instance,
retries, timings, tokens). A streamed response finishes its event when the stream ends
(or the client goes away), everything else when the handler returns or raises.
Prompt and completion text are kept only when capture is on, after redaction.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from corral.core.errors import ClientClosed, CorralError
from corral.core.observe import Observers, RequestEvent
from corral.core.types import GenerationRequest
from corral.observe.tracing import new_id, parse_traceparent

MAX_CAPTURE = 64 * 1024  # characters of prompt or completion kept per request


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
        self, request_id: str, route: str, api_key_id: str | None, traceparent: str | None = None
    ) -> AsyncIterator[RequestEvent]:
        """Continues the caller's trace (W3C ``traceparent``) or starts one."""
        parent = parse_traceparent(traceparent)
        event = RequestEvent(
            request_id=request_id, route=route, started_at=time.time(), api_key_id=api_key_id,
            clock_start=time.perf_counter(),
            trace_id=parent[0] if parent else new_id(16), span_id=new_id(8),
            parent_span_id=parent[1] if parent else None,
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
        event.latency_s = time.perf_counter() - event.clock_start
        if self.capture.enabled:
            event.prompt_text = self._clean(event.prompt_text)
            event.completion_text = self._clean(event.completion_text)
        else:
            event.prompt_text = event.completion_text = None
        if self.observers:
            self.observers.finish(event)

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
