"""Assembling a process's observability from its settings: the tracker and observers
the gateway feeds (metrics, request records, OTLP export) and the routes that expose
them (``/metrics``, ``/v1/feedback``).

One of several processes sharing a port (``corral gateway --processes N``, given a
``ProcessSlot``) serves the merged metrics of all of them (``observe/metrics_shared.py``)
and writes its request records to the same store as the others: each process has its
own writer (its own thread and connection); on SQLite the file is in WAL mode and each
writer holds the write lock for one batched insert (up to 1,000 rows, every 250 ms), so
the writers rarely meet, and wait (busy timeout) rather than fail when they do."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from starlette.routing import Route

from corral.core.errors import CorralError
from corral.core.observe import Observers
from corral.core.spec import ServerSettings
from corral.gateway.router import Router
from corral.gateway.tracking import Capture, Tracker
from corral.observe.metrics import GatewayMetrics, MetricsSource, metrics_route
from corral.observe.metrics_shared import ProcessSlot, SharedMetrics
from corral.observe.records import DROP_REASONS, RecordStore, default_records_url, feedback_route
from corral.observe.records_bound import MB, RecordsLimits
from corral.observe.otlp import OtlpExporter
from corral.observe.stored_responses import ResponseStore, StoredLimits
from corral.fmt.urls import redact

log = logging.getLogger(__name__)


class _DropCollector:
    """Records and spans lost rather than slowing requests down, and the records store's size."""

    def __init__(self, records: RecordStore | None, exporter: OtlpExporter | None) -> None:
        self._records, self._exporter = records, exporter

    def collect(self) -> Iterator[Metric]:
        records = self._records
        dropped = CounterMetricFamily(
            "corral_records_dropped", "Request records dropped (queue full, not encodable, store down or full)",
            labels=["reason"],
        )
        for reason in DROP_REASONS:
            dropped.add_metric([reason], records.dropped[reason] if records else 0)
        yield dropped
        spans = CounterMetricFamily("corral_spans_dropped", "Spans not exported (collector slow or down)")
        spans.add_metric([], self._exporter.dropped_total if self._exporter else 0)
        yield spans
        if records is None:
            return
        sampled = CounterMetricFamily("corral_records_sampled_out", "Successful requests not recorded (sampling)")
        sampled.add_metric([], records.sampled_out_total)
        pruned = CounterMetricFamily("corral_records_pruned", "Request records deleted", labels=["reason"])
        pruned.add_metric(["retention"], records.pruned_total)
        pruned.add_metric(["size"], records.bound.pruned_total)
        yield from (sampled, pruned)
        limits, size = records.limits, records.bound.size
        if limits.max_bytes > 0:
            yield GaugeMetricFamily("corral_records_store_max_bytes", "The records store's size bound (bytes)",
                                    value=limits.max_bytes)
        if limits.max_rows > 0:
            yield GaugeMetricFamily("corral_records_store_max_rows", "The records store's rows bound",
                                    value=limits.max_rows)
        if size is not None:  # measured by the writer (SQLite bytes: used pages)
            if size.bytes is not None:
                yield GaugeMetricFamily("corral_records_store_bytes", "Bytes the records store uses",
                                        value=size.bytes)
            yield GaugeMetricFamily("corral_records_store_rows", "Rows in the records store (estimate)",
                                    value=size.rows)


@dataclass
class Observability:
    tracker: Tracker
    metrics: GatewayMetrics
    records: RecordStore | None
    exporter: OtlpExporter | None
    routes: list[Route] = field(default_factory=list)
    stored: ResponseStore | None = None  # the Responses API's stored responses, beside the records
    shared: SharedMetrics | None = None  # one of several processes on one port: the merged /metrics
    _snapshots: asyncio.Task[None] | None = field(default=None, init=False, repr=False)

    async def open(self) -> None:
        if self.shared is not None:
            self._snapshots = asyncio.create_task(self.shared.run(), name="metrics-snapshots")
        if self.records is not None:
            try:
                await self.records.open()
            except CorralError as exc:  # records are never worth refusing to serve
                log.warning("request records disabled until restart: %s", exc.message)
                self.tracker.observers.remove(self.records)
                self.records = None
        if self.stored is not None:
            try:
                await self.stored.open()
            except CorralError as exc:  # served without: responses answer with store false
                log.warning("stored responses disabled until restart: %s", exc.message)
                self.stored.enabled = False

    async def close(self) -> None:
        if self._snapshots is not None:
            self._snapshots.cancel()
        if self.shared is not None:  # after the drain: its last requests are in the last snapshot
            self.shared.close()
        if self.records is not None:
            await self.records.close()
        if self.stored is not None:
            await self.stored.close()
        if self.exporter is not None:  # what is queued goes out, for at most 5 s
            await asyncio.to_thread(self.exporter.close, 5.0)


def gateway_observability(
    server: ServerSettings, router: Router, service: str, extra_metrics: tuple[MetricsSource, ...] = (),
    process: ProcessSlot | None = None,
) -> Observability:
    metrics = GatewayMetrics(router)
    observers = Observers([metrics])
    url = server.records or default_records_url()
    limits = RecordsLimits(
        retention_days=server.retention_days, max_bytes=int(server.records_max_mb * MB),
        max_rows=server.records_max_rows, sample=server.records_sample,
    )
    records = RecordStore(url, limits=limits)
    observers.add(records)
    exporter = OtlpExporter.from_env(service)
    if exporter is not None:
        observers.add(exporter)
        log.info("exporting traces over OTLP (%s) as %s", exporter.protocol, exporter.resource.attributes.get("service.name"))
    metrics.add_collector(_DropCollector(records, exporter))
    log.info(
        "request records in %s (prompt/completion text %s)",
        redact(url), "captured" if server.capture_text else "not captured",
    )
    tracker = Tracker(observers, Capture(server.capture_text, server.redact))
    shared = None
    if process is not None:
        if extra_metrics:
            raise ValueError("extra metrics sources are not shared between processes")
        shared = SharedMetrics(process, [metrics.registry])
    routes = [metrics_route(shared or metrics, *extra_metrics), feedback_route(records)]
    stored = ResponseStore(url, StoredLimits(retention_days=server.retention_days))
    return Observability(tracker, metrics, records, exporter, routes, stored, shared)
