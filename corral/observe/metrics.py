"""Prometheus metrics for the gateway and the worker, served on ``GET /metrics``.

``GatewayMetrics`` is an ``Observer``: it counts each finished request (outcome,
latency, time to first token, inter-token gaps, tokens, retries) and, at scrape time,
reads the router for requests in flight, instance health and ejections.
``WorkerMetrics`` reads ``Worker.status()`` at scrape time. Each object owns its own
``CollectorRegistry`` (nothing global), and their metric names differ, so
``metrics_route`` can serve several of them in one scrape (the standalone server).

``request_finished`` runs on the event loop for every request: labelled children are
cached per label set, and inter-token gaps go into a lock-free bucket array instead of
one ``Histogram.observe`` per token. Render on the event loop too (``metrics_route``
does) so a scrape never reads those arrays while they change.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from itertools import accumulate
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from corral.core.observe import RequestEvent
from corral.core.registry import InstanceRecord, InstanceState


class TargetView(Protocol):
    """What the gauges read of one of the router's targets."""

    record: InstanceRecord
    client: object
    in_flight: int
    ejected_until: float

    @property
    def instance_id(self) -> str: ...


class Router(Protocol):
    """What the gauges read of the gateway's router (``corral.gateway.router.Router``),
    at scrape time; named here so that observing never imports the gateway."""

    ejections_total: dict[tuple[str, str], int]

    def models(self) -> Mapping[str, Any]: ...

    def targets(self, model: str) -> Sequence[TargetView]: ...

    def queued(self) -> Mapping[str, int]: ...

# seconds; LLM requests range from a few ms (embeddings, cached) to minutes (long generations)
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 10, 20, 30, 60)
TOKEN_GAP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1, 2.5)
STATES = tuple(s.value for s in InstanceState if s is not InstanceState.STANDBY)  # standby: not an instance


class MetricsSource(Protocol):
    def render(self) -> tuple[bytes, str]:
        """The text exposition of its metrics and its content type."""
        ...


class WorkerStatus(Protocol):
    def status(self) -> dict[str, Any]:
        """``{"instances": [{"id", "model", "state", "in_flight", "queued", ...}, ...]}``"""
        ...


class _Buckets:
    """A histogram's bucket counts and sum, updated without a lock (one event loop)."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(float(b) for b in bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.total = 0.0

    def observe_many(self, values: Sequence[float]) -> None:
        counts, bounds = self.counts, self.bounds
        for value in values:
            counts[bisect_left(bounds, value)] += 1  # le is inclusive: value <= bound
        self.total += sum(values)

    def cumulative(self) -> list[tuple[str, float]]:
        les = (*map(floatToGoString, self.bounds), "+Inf")
        return [(le, float(n)) for le, n in zip(les, accumulate(list(self.counts)))]


class _Children(NamedTuple):  # the labelled children one label set updates
    requests: Counter
    duration: Histogram
    ttft: Histogram
    prompt: Counter
    completion: Counter
    retries: Counter
    gaps: _Buckets


class _Base:
    registry: CollectorRegistry

    def add_collector(self, collector: Collector) -> None:
        """Serve another collector's metrics in the same scrape (names must be unique)."""
        self.registry.register(collector)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_PLAIN_0_0_4


class GatewayMetrics(_Base):
    """Request metrics (an ``Observer``) and the router's view, per model and instance."""

    def __init__(self, router: Router) -> None:
        self._router = router
        # auto_describe: a collector registered later with a clashing name fails at once
        self.registry = r = CollectorRegistry(auto_describe=True)
        labels = ["model", "instance_id", "route", "outcome", "protocol"]
        self._requests = Counter(
            "corral_requests_total", "API requests finished, by outcome and the protocol the client spoke.",
            labels, registry=r,
        )
        self._duration = Histogram(
            "corral_request_duration_seconds", "Time from request received to response (or stream) end.",
            ["model", "route"], buckets=REQUEST_BUCKETS, registry=r,
        )
        self._ttft = Histogram(
            "corral_time_to_first_token_seconds", "Time from request received to the first token.",
            ["model"], buckets=TTFT_BUCKETS, registry=r,
        )
        self._prompt = Counter("corral_prompt_tokens_total", "Prompt tokens processed.", ["model"], registry=r)
        self._completion = Counter("corral_completion_tokens_total", "Tokens generated.", ["model"], registry=r)
        self._retries = Counter("corral_retries_total", "Retries on another instance.", ["model"], registry=r)
        # per API key: its id (a virtual key's id, a static key's short hash), never the key;
        # only keys that passed the check get here, so callers cannot invent label values
        self._key_requests = Counter(
            "corral_key_requests_total", "API requests finished, per API key and outcome.", ["key_id", "outcome"], registry=r,
        )
        self._key_tokens = Counter(
            "corral_key_tokens_total", "Tokens used per API key (kind: prompt, completion).", ["key_id", "kind"], registry=r,
        )
        self._gaps: dict[str, _Buckets] = {}
        self._children: dict[tuple[str, str, str, str, str], _Children] = {}
        self._known: set[str] = set()  # models this gateway has served: safe as label values
        r.register(_RouterCollector(router, self._gaps))

    def request_finished(self, event: RequestEvent) -> None:
        key = (self._model_label(event), event.instance_id or "", event.route, event.outcome, event.protocol)
        c = self._children.get(key)
        if c is None:
            c = self._children[key] = self._child(*key)
        c.requests.inc()
        if event.latency_s is not None:
            c.duration.observe(event.latency_s)
        if event.ttft_s is not None:
            c.ttft.observe(event.ttft_s)
        if event.token_gaps_s:
            c.gaps.observe_many(event.token_gaps_s)
        if event.prompt_tokens:
            c.prompt.inc(event.prompt_tokens)
        if event.completion_tokens:
            c.completion.inc(event.completion_tokens)
        if event.retries:
            c.retries.inc(event.retries)
        if event.api_key_id is not None:
            self._key_requests.labels(event.api_key_id, event.outcome).inc()
            if event.prompt_tokens:
                self._key_tokens.labels(event.api_key_id, "prompt").inc(event.prompt_tokens)
            if event.completion_tokens:
                self._key_tokens.labels(event.api_key_id, "completion").inc(event.completion_tokens)

    def _model_label(self, event: RequestEvent) -> str:
        """The model name, or "" when it may be anything a caller typed (an unknown model
        must not create a new time series per request)."""
        model = event.model or ""
        if event.instance_id is not None or model in self._known:
            return model
        if event.outcome == "error" and event.http_status == 404:
            return ""
        if model and self._router.targets(model):  # never served here yet, but deployed
            self._known.add(model)
            return model
        return ""

    def _child(self, model: str, instance: str, route: str, outcome: str, protocol: str) -> _Children:
        if instance and model:
            self._known.add(model)
        gaps = self._gaps.setdefault(model, _Buckets(TOKEN_GAP_BUCKETS))  # once per label set
        return _Children(
            self._requests.labels(model, instance, route, outcome, protocol),
            self._duration.labels(model, route),
            self._ttft.labels(model),
            self._prompt.labels(model),
            self._completion.labels(model),
            self._retries.labels(model),
            gaps,
        )


class _RouterCollector:
    """What the router knows, read at scrape time."""

    def __init__(self, router: Router, gaps: dict[str, _Buckets]) -> None:
        self._router = router
        self._gaps = gaps

    def collect(self) -> Iterator[Metric]:
        labels = ["model", "instance_id"]
        in_flight = GaugeMetricFamily("corral_requests_in_flight", "Requests in flight per instance.", labels=labels)
        up = GaugeMetricFamily("corral_instance_up", "1: ready and not ejected (routable); 0: not.", labels=labels)
        now = time.monotonic()
        for model in sorted(self._router.models()):
            for t in self._router.targets(model):
                ids = [model, t.instance_id]
                in_flight.add_metric(ids, t.in_flight)
                routable = t.record.state is InstanceState.READY and t.client is not None and t.ejected_until <= now
                up.add_metric(ids, 1.0 if routable else 0.0)
        ejections = CounterMetricFamily("corral_ejections_total", "Ejections after failures.", labels=labels)
        for (model, instance), n in sorted(self._router.ejections_total.items()):
            ejections.add_metric([model, instance], n)
        gaps = HistogramMetricFamily("corral_inter_token_latency_seconds", "Time between tokens.", labels=["model"])
        for model, buckets in sorted(self._gaps.items()):
            gaps.add_metric([model], buckets.cumulative(), buckets.total)
        queued = GaugeMetricFamily(
            "corral_requests_queued", "Requests waiting at the gateway for a free instance.", labels=["model"]
        )
        for model, waiting in sorted(self._router.queued().items()):
            queued.add_metric([model], waiting)
        yield from (in_flight, up, ejections, gaps, queued)


class WorkerMetrics(_Base):
    """The engines of one worker, per model and instance, read from ``status()`` at scrape time."""

    def __init__(self, worker: WorkerStatus) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_WorkerCollector(worker))


class _WorkerCollector:
    def __init__(self, worker: WorkerStatus) -> None:
        self._worker = worker

    def collect(self) -> Iterator[Metric]:
        labels = ["model", "instance_id"]
        in_flight = GaugeMetricFamily("corral_engine_in_flight", "Requests the engine is running.", labels=labels)
        queued = GaugeMetricFamily("corral_engine_queued", "Requests waiting inside the engine.", labels=labels)
        completed = CounterMetricFamily("corral_engine_requests_completed_total", "Requests completed.", labels=labels)
        cancelled = CounterMetricFamily("corral_engine_requests_cancelled_total", "Requests cancelled.", labels=labels)
        crashes = CounterMetricFamily("corral_engine_crashes_total", "Times the engine's serving loop crashed.", labels=labels)
        restarts = CounterMetricFamily(
            "corral_engine_restarts_total", "Times the engine's loop was restarted in place after a crash.", labels=labels
        )
        state = GaugeMetricFamily("corral_instance_state", "1: the current state.", labels=[*labels, "state"])
        load = GaugeMetricFamily("corral_model_load_seconds", "How long the engine took to load.", labels=labels)
        for inst in self._worker.status().get("instances", ()):
            ids = [str(inst.get("model", "")), str(inst.get("id", ""))]
            in_flight.add_metric(ids, inst.get("in_flight") or 0)
            queued.add_metric(ids, inst.get("queued") or 0)
            completed.add_metric(ids, inst.get("completed_total") or 0)
            cancelled.add_metric(ids, inst.get("cancelled_total") or 0)
            crashes.add_metric(ids, inst.get("crashes_total") or 0)
            restarts.add_metric(ids, inst.get("restarts_total") or 0)
            current = str(inst.get("state", ""))
            for s in STATES if current in STATES else (*STATES, current):
                state.add_metric([*ids, s], 1.0 if s == current else 0.0)
            if inst.get("load_seconds") is not None:
                load.add_metric(ids, inst["load_seconds"])
        yield from (in_flight, queued, completed, cancelled, crashes, restarts, state, load)


def render_all(sources: Iterable[MetricsSource]) -> tuple[bytes, str]:
    """One exposition from several sources (their metric names must not collide)."""
    bodies = [source.render() for source in sources]
    return b"".join(body for body, _ in bodies), (bodies[0][1] if bodies else CONTENT_TYPE_PLAIN_0_0_4)


def metrics_route(*sources: MetricsSource, path: str = "/metrics") -> Route:
    """``GET /metrics`` serving the metrics of every source in one scrape."""

    async def metrics(request: Request) -> Response:
        body, content_type = render_all(sources)  # on the loop: see the module docstring
        return Response(body, headers={"content-type": content_type, "cache-control": "no-store"})

    return Route(path, metrics, methods=["GET"])
