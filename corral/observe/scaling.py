"""Prometheus metrics of the autoscaler: desired and ready replicas per autoscaled model,
and its decisions, read at scrape time from the ``Autoscaling`` loop (any object with
the ``ScalingStatus`` shape; observe does not import the controller)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4


class ScalingStatus(Protocol):
    decisions_total: dict[tuple[str, str], int]  # (model, up|down) -> decisions

    def replicas(self) -> dict[str, tuple[int, int]]:
        """Per autoscaled model: (desired, ready)."""
        ...


class AutoscalerMetrics:
    def __init__(self, status: ScalingStatus) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_Collector(status))

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_PLAIN_0_0_4


class _Collector:
    def __init__(self, status: ScalingStatus) -> None:
        self._status = status

    def collect(self) -> Iterator[Metric]:
        desired = GaugeMetricFamily("corral_model_desired_replicas", "Replicas the autoscaler wants.", labels=["model"])
        ready = GaugeMetricFamily("corral_model_ready_replicas", "Ready instances of an autoscaled model.", labels=["model"])
        for model, (want, have) in sorted(self._status.replicas().items()):
            desired.add_metric([model], want)
            ready.add_metric([model], have)
        decisions = CounterMetricFamily(
            "corral_autoscaler_decisions", "Scaling decisions taken.", labels=["model", "direction"]
        )
        for (model, direction), n in sorted(self._status.decisions_total.items()):
            decisions.add_metric([model, direction], n)
        yield desired
        yield ready
        yield decisions
