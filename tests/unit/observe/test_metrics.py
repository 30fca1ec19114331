"""Prometheus metrics: synthetic request events and a real router in, the text exposition
parsed back out. Latencies are binary fractions so sums compare exactly."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.metrics_core import CounterMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette

from corral.core.observe import Observers, RequestEvent
from corral.core.registry import InstanceRecord, InstanceState
from corral.core.spec import ModelKind
from corral.gateway.router import Router, RouterSettings
from corral.observe.metrics import GatewayMetrics, WorkerMetrics, metrics_route
from corral.registry.embedded import EmbeddedRegistry

Samples = list[tuple[str, dict[str, str], float]]


def rec(
    instance_id: str, model: str, kind: ModelKind = ModelKind.LLM, state: InstanceState = InstanceState.READY
) -> InstanceRecord:
    return InstanceRecord(instance_id, model, kind, "fake", "w1", state)


def scrape(source: Any) -> Samples:
    body, content_type = source.render()
    assert content_type.startswith("text/plain; version=0.0.4")
    return [(s.name, s.labels, s.value) for f in text_string_to_metric_families(body.decode()) for s in f.samples]


def value(samples: Samples, name: str, **labels: str) -> float:
    found = [v for n, ls, v in samples if n == name and all(ls.get(k) == w for k, w in labels.items())]
    assert found, f"no sample {name}{labels}"
    return sum(found)


def label_values(samples: Samples, label: str) -> set[str]:
    return {ls[label] for _, ls, _ in samples if label in ls}


def event(route: str = "chat", model: str | None = "llm", instance: str | None = "a1", **kw: Any) -> RequestEvent:
    return RequestEvent(request_id="r", route=route, started_at=0.0, model=model, instance_id=instance, **kw)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


@pytest.fixture
async def registry() -> EmbeddedRegistry:
    return EmbeddedRegistry()


@pytest.fixture
async def router(registry: EmbeddedRegistry) -> AsyncIterator[Router]:
    # no ejection cap: the test ejects a model's only ready instance to see it in the metrics
    settings = RouterSettings(eject_after=2, eject_for=30.0, max_ejection_percent=100)
    r = Router(registry, lambda record: object(), settings)
    await r.start()
    await registry.put(rec("a1", "llm"))
    await registry.put(rec("a2", "llm", state=InstanceState.STARTING))
    await registry.put(rec("e1", "emb", ModelKind.EMBEDDING))
    await settle()
    yield r
    await r.stop()
    await settle()


@pytest.fixture
def metrics(router: Router) -> GatewayMetrics:
    return GatewayMetrics(router)


def test_request_counters_and_histograms_match_the_events(metrics: GatewayMetrics) -> None:
    observers = Observers([metrics])  # as the tracker calls it
    chats = [(0.5, 0.125, [0.015625, 0.03125], 10, 4), (1.5, 0.25, [0.5], 12, 2), (2.0, 0.375, [], 7, 1)]
    for latency, ttft, gaps, prompt, completion in chats:
        observers.finish(
            event(latency_s=latency, ttft_s=ttft, token_gaps_s=list(gaps), prompt_tokens=prompt,
                  completion_tokens=completion, stream=bool(gaps))
        )
    observers.finish(event("embedding", "emb", "e1", latency_s=0.0625, prompt_tokens=5))
    observers.finish(event("embedding", "emb", "e1", latency_s=0.0625, prompt_tokens=6, retries=2))
    observers.finish(event(outcome="cancelled", latency_s=0.25, ttft_s=0.125, prompt_tokens=3, completion_tokens=1))
    observers.finish(event("chat", "llm", None, outcome="error", http_status=503, latency_s=0.25))
    s = scrape(metrics)

    assert value(s, "corral_requests_total", model="llm", instance_id="a1", route="chat", outcome="ok") == 3
    assert value(s, "corral_requests_total", model="llm", instance_id="a1", route="chat", outcome="cancelled") == 1
    assert value(s, "corral_requests_total", model="llm", instance_id="", route="chat", outcome="error") == 1
    assert value(s, "corral_requests_total", model="emb", instance_id="e1", route="embedding", outcome="ok") == 2
    assert value(s, "corral_requests_total") == 7

    assert value(s, "corral_request_duration_seconds_count", model="llm", route="chat") == 5
    assert value(s, "corral_request_duration_seconds_sum", model="llm", route="chat") == 0.5 + 1.5 + 2.0 + 0.25 + 0.25
    assert value(s, "corral_request_duration_seconds_count", model="emb", route="embedding") == 2
    assert value(s, "corral_request_duration_seconds_sum", model="emb", route="embedding") == 0.125
    assert value(s, "corral_request_duration_seconds_bucket", model="llm", route="chat", le="0.25") == 2
    assert value(s, "corral_request_duration_seconds_bucket", model="llm", route="chat", le="+Inf") == 5

    assert value(s, "corral_time_to_first_token_seconds_count", model="llm") == 4
    assert value(s, "corral_time_to_first_token_seconds_sum", model="llm") == 0.125 + 0.25 + 0.375 + 0.125
    assert value(s, "corral_time_to_first_token_seconds_count", model="emb") == 0

    assert value(s, "corral_inter_token_latency_seconds_count", model="llm") == 3
    assert value(s, "corral_inter_token_latency_seconds_sum", model="llm") == 0.015625 + 0.03125 + 0.5
    assert value(s, "corral_inter_token_latency_seconds_bucket", model="llm", le="0.01") == 0
    assert value(s, "corral_inter_token_latency_seconds_bucket", model="llm", le="0.02") == 1
    assert value(s, "corral_inter_token_latency_seconds_bucket", model="llm", le="0.05") == 2
    assert value(s, "corral_inter_token_latency_seconds_bucket", model="llm", le="0.5") == 3  # le is inclusive
    assert value(s, "corral_inter_token_latency_seconds_bucket", model="llm", le="+Inf") == 3

    assert value(s, "corral_prompt_tokens_total", model="llm") == 10 + 12 + 7 + 3
    assert value(s, "corral_completion_tokens_total", model="llm") == 4 + 2 + 1 + 1
    assert value(s, "corral_prompt_tokens_total", model="emb") == 11
    assert value(s, "corral_completion_tokens_total", model="emb") == 0
    assert value(s, "corral_retries_total", model="emb") == 2
    assert value(s, "corral_retries_total", model="llm") == 0


def test_unknown_models_do_not_create_label_values(metrics: GatewayMetrics) -> None:
    for i in range(50):
        metrics.request_finished(event(model=f"nope-{i}", instance=None, outcome="error", http_status=404,
                                       latency_s=0.001))
    # a validation error for a model nobody deploys, before any instance was chosen
    metrics.request_finished(event("embedding", "made-up", None, outcome="error", http_status=400, latency_s=0.001))
    # a deployed model without an instance id (several prompts in one completion call) keeps its name
    metrics.request_finished(event("completion", "llm", None, latency_s=0.5, prompt_tokens=4, completion_tokens=2))
    s = scrape(metrics)
    assert label_values(s, "model") == {"", "llm", "emb"}  # emb: from the router (instance_up)
    assert value(s, "corral_requests_total", model="", instance_id="", route="chat", outcome="error") == 50
    assert value(s, "corral_requests_total", model="", route="embedding", outcome="error") == 1
    assert value(s, "corral_requests_total", model="llm", instance_id="", route="completion", outcome="ok") == 1
    assert value(s, "corral_request_duration_seconds_count", model="", route="chat") == 50
    assert value(s, "corral_prompt_tokens_total", model="llm") == 4


async def test_router_state_is_read_at_scrape_time(router: Router, metrics: GatewayMetrics) -> None:
    held = [await router.acquire("llm", "chat") for _ in range(3)]
    s = scrape(metrics)
    assert value(s, "corral_requests_in_flight", model="llm", instance_id="a1") == 3
    assert value(s, "corral_requests_in_flight", model="llm", instance_id="a2") == 0
    assert value(s, "corral_requests_in_flight", model="emb", instance_id="e1") == 0
    assert value(s, "corral_instance_up", model="llm", instance_id="a1") == 1
    assert value(s, "corral_instance_up", model="llm", instance_id="a2") == 0  # starting
    assert value(s, "corral_instance_up", model="emb", instance_id="e1") == 1
    assert not [n for n, _, _ in s if n == "corral_ejections_total"]

    for target in held:
        router.release(target)
    router.failed(held[0])
    router.failed(held[0])  # eject_after=2
    s = scrape(metrics)
    assert value(s, "corral_requests_in_flight", model="llm", instance_id="a1") == 0
    assert value(s, "corral_instance_up", model="llm", instance_id="a1") == 0
    assert value(s, "corral_ejections_total", model="llm", instance_id="a1") == 1
    router.succeeded(held[0])
    assert value(scrape(metrics), "corral_instance_up", model="llm", instance_id="a1") == 1


class DroppedRecords:
    def __init__(self) -> None:
        self.dropped = 0

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily("corral_records_dropped_total", "Request records dropped.")
        family.add_metric([], self.dropped)
        yield family


def test_other_collectors_join_the_scrape_and_names_must_be_unique(metrics: GatewayMetrics) -> None:
    records = DroppedRecords()
    metrics.add_collector(records)
    records.dropped = 4
    assert value(scrape(metrics), "corral_records_dropped_total") == 4
    with pytest.raises(ValueError):
        metrics.add_collector(DroppedRecords())


class StubWorker:
    def __init__(self) -> None:
        self.instances = [
            {"id": "i1", "model": "llm", "state": "ready", "in_flight": 2, "queued": 5, "completed_total": 40,
             "cancelled_total": 3, "load_seconds": 1.5},
            {"id": "i2", "model": "emb", "state": "starting", "in_flight": 0, "queued": 0, "completed_total": 0,
             "cancelled_total": 0, "load_seconds": None},
        ]

    def status(self) -> dict[str, Any]:
        return {"worker_id": "w1", "address": None, "engines": [], "instances": self.instances}


def test_worker_metrics_follow_status() -> None:
    worker = StubWorker()
    metrics = WorkerMetrics(worker)
    s = scrape(metrics)
    assert value(s, "corral_engine_in_flight", model="llm", instance_id="i1") == 2
    assert value(s, "corral_engine_queued", model="llm", instance_id="i1") == 5
    assert value(s, "corral_engine_requests_completed_total", model="llm", instance_id="i1") == 40
    assert value(s, "corral_engine_requests_cancelled_total", model="llm", instance_id="i1") == 3
    assert value(s, "corral_model_load_seconds", model="llm", instance_id="i1") == 1.5
    assert not [ls for n, ls, _ in s if n == "corral_model_load_seconds" and ls["instance_id"] == "i2"]
    states = {ls["state"]: v for n, ls, v in s if n == "corral_instance_state" and ls["instance_id"] == "i1"}
    assert states == {"starting": 0, "ready": 1, "draining": 0, "offline": 0, "failed": 0}
    assert value(s, "corral_instance_state", model="emb", instance_id="i2", state="starting") == 1

    worker.instances[0] = {**worker.instances[0], "state": "draining", "completed_total": 41}
    s = scrape(metrics)
    assert value(s, "corral_instance_state", instance_id="i1", state="ready") == 0
    assert value(s, "corral_instance_state", instance_id="i1", state="draining") == 1
    assert value(s, "corral_engine_requests_completed_total", instance_id="i1") == 41


async def test_metrics_route_serves_gateway_and_worker_in_one_scrape(metrics: GatewayMetrics) -> None:
    metrics.request_finished(event(latency_s=0.5, ttft_s=0.25, prompt_tokens=3, completion_tokens=2))
    app = Starlette(routes=[metrics_route(metrics, WorkerMetrics(StubWorker()))])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        resp = await client.get("/metrics")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain; version=0.0.4")
    families = [f.name for f in text_string_to_metric_families(resp.text)]
    assert len(families) == len(set(families)), "metric names collide"
    s = [(x.name, x.labels, x.value) for f in text_string_to_metric_families(resp.text) for x in f.samples]
    assert value(s, "corral_requests_total", model="llm") == 1
    assert value(s, "corral_engine_queued", model="llm", instance_id="i1") == 5
    assert value(s, "corral_instance_up", model="llm", instance_id="a1") == 1


async def test_gateway_queue_is_exported() -> None:
    registry = EmbeddedRegistry()
    r = Router(registry, lambda rec: object(), RouterSettings(queue_timeout=5))
    await r.start()
    await registry.put(InstanceRecord("one-1", "one", ModelKind.LLM, "fake", "w", InstanceState.READY, max_concurrency=1))
    await asyncio.sleep(0)
    held = await r.acquire("one", "chat")
    waiter = asyncio.ensure_future(r.acquire("one", "chat"))
    await asyncio.sleep(0.01)
    metrics = GatewayMetrics(r)
    assert value(scrape(metrics), "corral_requests_queued", model="one") == 1
    r.release(held)
    r.release(await waiter)
    assert value(scrape(metrics), "corral_requests_queued", model="one") == 0
    await r.stop()
