"""Assembling a process's observability from its settings: the tracker and observers
the gateway feeds (metrics, request records, OTLP export) and the routes that expose
them (``/metrics``, ``/v1/feedback``)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field

from prometheus_client.core import CounterMetricFamily, Metric
from starlette.routing import Route

from corral.core.errors import CorralError
from corral.core.observe import Observers
from corral.core.spec import ServerSettings
from corral.gateway.router import Router
from corral.gateway.tracking import Capture, Tracker
from corral.observe.metrics import GatewayMetrics, MetricsSource, metrics_route
from corral.observe.records import RecordStore, default_records_url, feedback_route
from corral.observe.tracing import OtlpExporter
from corral.registry.factory import redact

log = logging.getLogger(__name__)


class _DropCollector:
    """Records and spans lost rather than slowing requests down."""

    def __init__(self, records: RecordStore | None, exporter: OtlpExporter | None) -> None:
        self._records, self._exporter = records, exporter

    def collect(self) -> Iterator[Metric]:
        dropped = CounterMetricFamily("corral_records_dropped", "Request records dropped (queue full or store down)")
        dropped.add_metric([], self._records.dropped_total if self._records else 0)
        yield dropped
        spans = CounterMetricFamily("corral_spans_dropped", "Spans not exported (collector slow or down)")
        spans.add_metric([], self._exporter.dropped_total if self._exporter else 0)
        yield spans


@dataclass
class Observability:
    tracker: Tracker
    metrics: GatewayMetrics
    records: RecordStore | None
    exporter: OtlpExporter | None
    routes: list[Route] = field(default_factory=list)

    async def open(self) -> None:
        if self.records is not None:
            try:
                await self.records.open()
            except CorralError as exc:  # records are never worth refusing to serve
                log.warning("request records disabled until restart: %s", exc.message)
                self.tracker.observers.remove(self.records)
                self.records = None

    async def close(self) -> None:
        if self.records is not None:
            await self.records.close()


def gateway_observability(
    server: ServerSettings, router: Router, service: str, extra_metrics: tuple[MetricsSource, ...] = ()
) -> Observability:
    metrics = GatewayMetrics(router)
    observers = Observers([metrics])
    url = server.records or default_records_url()
    records = RecordStore(url, retention_days=server.retention_days)
    observers.add(records)
    exporter = OtlpExporter.from_env(service)
    if exporter is not None:
        observers.add(exporter)
        log.info("exporting traces over OTLP")
    metrics.add_collector(_DropCollector(records, exporter))
    log.info(
        "request records in %s (prompt/completion text %s)",
        redact(url), "captured" if server.capture_text else "not captured",
    )
    tracker = Tracker(observers, Capture(server.capture_text, server.redact))
    routes = [metrics_route(metrics, *extra_metrics), feedback_route(records)]
    return Observability(tracker, metrics, records, exporter, routes)
