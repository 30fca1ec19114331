"""What the request pipeline reports about each request, and who listens.

The gateway fills one ``RequestEvent`` per API request as it goes (route, model,
instance, timings, tokens, outcome) and hands it to every ``Observer`` when the request
ends: metrics, request records, traces. Observers are called on the event loop and
must be cheap and never raise; anything slow (a database write) goes to a queue.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from collections.abc import Callable
from typing import Any, Protocol

from corral.core.keys import Grant

log = logging.getLogger(__name__)

MAX_GAPS = 1024  # inter-token gaps kept per request


@dataclass
class RequestEvent:
    request_id: str
    route: str  # chat | completion | embedding | rerank | messages | responses ...
    started_at: float  # unix seconds
    protocol: str = "openai"  # the service protocol the client spoke (openai, anthropic, ollama)
    model: str | None = None
    api_key_id: str | None = None  # a short hash of the caller's key, never the key
    params: dict[str, Any] = field(default_factory=dict)  # sampling parameters as sent
    stream: bool = False
    instance_id: str | None = None
    engine: str | None = None
    worker_id: str | None = None
    outcome: str = "ok"  # ok | error | cancelled
    http_status: int = 200
    error: str | None = None
    latency_s: float | None = None
    ttft_s: float | None = None
    token_gaps_s: list[float] = field(default_factory=list)  # time between successive deltas
    prompt_tokens: int = 0
    completion_tokens: int = 0
    retries: int = 0
    queue_wait_s: float | None = None  # waiting in the gateway for an instance's free slot
    routing: str | None = None  # the balancing policy that chose the instance
    finish_reasons: list[str] = field(default_factory=list)  # one per choice, as the engine ended it
    prompt_text: str | None = None  # only when capture is enabled
    completion_text: str | None = None  # only when capture is enabled
    trace_id: str | None = None
    span_id: str | None = None  # the gateway's span for this request
    parent_span_id: str | None = None  # the caller's span, from its traceparent header
    parent_sampled: bool | None = None  # the caller's sampled flag; None without a traceparent
    spans: list[dict[str, Any]] = field(default_factory=list)  # child spans reported by workers/engines
    grant: Grant | None = None  # what the caller's key may do (its models, its limits)
    settle: Callable[[int], None] | None = None  # at the end: the tokens used, to the key's limits
    clock_start: float = 0.0  # time.perf_counter() at the start, for the latency
    finished: bool = False


class Observer(Protocol):
    def request_finished(self, event: RequestEvent) -> None:
        """Called once per request, on the event loop. Cheap; never raises."""
        ...


class Observers:
    """Fan-out to several observers; one failing observer never affects a request."""

    def __init__(self, observers: list[Observer] | None = None) -> None:
        self._observers = list(observers or [])

    def add(self, observer: Observer) -> None:
        self._observers.append(observer)

    def remove(self, observer: Observer) -> None:
        if observer in self._observers:
            self._observers.remove(observer)

    def __bool__(self) -> bool:
        return bool(self._observers)

    def finish(self, event: RequestEvent) -> None:
        for observer in self._observers:
            try:
                observer.request_finished(event)
            except Exception:  # an observer bug must not fail or slow the request
                log.exception("observer %r failed", observer)
