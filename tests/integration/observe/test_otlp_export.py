"""The OTLP export (``corral/observe/otlp.py``: the thin HTTP exporter and the OpenTelemetry
SDK's) against a loopback receiver that decodes every export with opentelemetry-proto's
message types: HTTP/protobuf and gRPC, configured by the standard ``OTEL_*`` variables; the
GenAI attributes and events of the spans; sampling; and a receiver that is down or slow,
which costs requests nothing (in process, and through a real ``corral start``)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from corral.core.errors import ConfigError
from corral.core.observe import Observers, RequestEvent
from corral.core.types import ChatMessage, GenerationRequest, SamplingParams
from corral.gateway.tracking import Capture, Tracker
from corral.observe.otlp import OtlpExporter, export_protocol
from corral.observe.tracing import SERVER, WORKER_SERVICE, new_id, span, traceparent
from tests.integration.servers import free_port, launch, wait_until
from tests.services.otlp import OtlpReceiver, start_receiver

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    r = start_receiver()
    yield r
    r.stop()


@pytest.fixture(autouse=True)
def otel_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CORRAL_OTLP_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_PROTOCOL",
                 "OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG", "OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")  # batches every 50 ms rather than 5 s


async def traced_request(
    tracker: Tracker, request_id: str, caller: str | None = None, error: bool = False
) -> RequestEvent:
    """A chat request as the pipeline fills it, with the spans a worker returns."""
    gen = GenerationRequest(
        request_id=request_id, model="smollm2",
        messages=(ChatMessage("user", "my key is sk-abcdefghijklmnopqrstuvwx, say hi"),),
        sampling=SamplingParams(max_tokens=8, temperature=0.2, top_p=0.9, seed=7),
    )
    try:
        async with tracker.track(request_id, "chat", "key1234", caller) as event:
            tracker.describe(event, gen, stream=False)
            event.instance_id, event.engine, event.worker_id, event.routing = "smollm2-1", "llamacpp", "w1", "least_loaded"
            event.ttft_s, event.prompt_tokens, event.completion_tokens = 0.01, 12, 3
            event.finish_reasons, event.queue_wait_s = ["stop"], 0.002
            event.completion_text = "hi there"
            now = time.time()
            assert event.trace_id is not None and event.span_id is not None
            worker = span("corral.worker", event.trace_id, new_id(8), event.span_id, now, now + 0.01,
                          {"corral.worker_id": "w1", "corral.instance_id": "smollm2-1"}, SERVER)
            worker["service"] = WORKER_SERVICE
            engine = span("corral.engine.generate", event.trace_id, new_id(8), worker["span_id"], now, now + 0.01,
                          {"corral.engine.output_tokens": 3})
            event.spans.extend([worker, engine])
            if error:
                from corral.core.errors import EngineError

                raise EngineError("the engine failed")
    except Exception:
        pass
    return event


def exporter_tracker(capture: bool = True) -> tuple[OtlpExporter, Tracker]:
    exporter = OtlpExporter.from_env("corral-gateway")
    assert exporter is not None
    return exporter, Tracker(Observers([exporter]), Capture(capture, (r"sk-[A-Za-z0-9]{20,}",)))


@pytest.mark.parametrize("protocol", ["http/protobuf", "http/protobuf+sdk", "grpc"])
async def test_spans_arrive_with_genai_attributes_resource_and_links(
    receiver: OtlpReceiver, monkeypatch: pytest.MonkeyPatch, protocol: str
) -> None:
    receiver.requests.clear()
    receiver.headers.clear()
    if protocol.endswith("+sdk"):  # the SDK's HTTP exporter rather than the thin one
        protocol = protocol.removesuffix("+sdk")
        monkeypatch.setenv("CORRAL_OTLP_EXPORTER", "sdk")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.http_url if protocol != "grpc" else receiver.grpc_url)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
    monkeypatch.setenv("OTEL_SERVICE_NAME", "my-gateway")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment.name=test,team=llm")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-api-key=secret-123")
    exporter, tracker = exporter_tracker()
    assert exporter.implementation == ("wire" if protocol == "http/protobuf" and "CORRAL_OTLP_EXPORTER" not in os.environ
                                       else "sdk")
    caller_trace, caller_span = new_id(16), new_id(8)
    event = await traced_request(tracker, "r-1", traceparent(caller_trace, caller_span))
    spans = {s.name: s for s in receiver.wait_for(3)}
    exporter.close()

    assert set(spans) == {"chat smollm2", "corral.worker", "corral.engine.generate"}
    gw, worker, engine = spans["chat smollm2"], spans["corral.worker"], spans["corral.engine.generate"]
    assert event.trace_id == caller_trace and {s.trace_id for s in spans.values()} == {caller_trace}
    assert gw.parent_span_id == caller_span and gw.span_id == event.span_id and gw.kind == "server"
    assert worker.parent_span_id == gw.span_id and engine.parent_span_id == worker.span_id
    a = gw.attributes
    assert a["gen_ai.operation.name"] == "chat" and a["gen_ai.provider.name"] == "corral" and a["gen_ai.system"] == "corral"
    assert a["gen_ai.request.model"] == a["gen_ai.response.model"] == "smollm2"
    assert (a["gen_ai.request.max_tokens"], a["gen_ai.request.temperature"], a["gen_ai.request.top_p"]) == (8, 0.2, 0.9)
    assert a["gen_ai.request.seed"] == 7 and "gen_ai.request.choice.count" not in a  # n = 1: left out
    assert (a["gen_ai.usage.input_tokens"], a["gen_ai.usage.output_tokens"]) == (12, 3)
    assert a["gen_ai.response.finish_reasons"] == ["stop"]
    assert (a["corral.instance_id"], a["corral.worker_id"], a["corral.routing.policy"]) == ("smollm2-1", "w1", "least_loaded")
    assert a["corral.retries"] == 0 and a["corral.queue_wait_s"] == 0.002 and a["http.response.status_code"] == 200
    events = {name: (t, attrs) for name, t, attrs in gw.events}
    assert abs(events["corral.first_token"][0] - gw.start_ns - 10_000_000) < 1000  # ttft 10 ms after the start
    assert events["gen_ai.content.prompt"][1]["gen_ai.prompt"] == "user: my key is [REDACTED], say hi"
    assert events["gen_ai.content.completion"][1]["gen_ai.completion"] == "hi there"
    assert "gen_ai.usage.output_tokens" not in engine.attributes  # a request's tokens count once
    assert gw.resource["service.name"] == "my-gateway" and gw.resource["team"] == "llm"
    assert gw.resource["deployment.environment.name"] == "test" and gw.resource["telemetry.sdk.name"] == "opentelemetry"
    assert worker.resource["service.name"] == "corral-worker" and worker.resource["service.instance.id"] == "w1"
    assert worker.resource["team"] == "llm" and gw.scope == "corral"
    assert receiver.headers[-1].get("x-api-key") == "secret-123"
    assert exporter.dropped_total == 0


async def test_without_capture_no_text_leaves_and_errors_are_span_statuses(
    receiver: OtlpReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    receiver.requests.clear()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", receiver.http_url + "/v1/traces")
    exporter, tracker = exporter_tracker(capture=False)
    await traced_request(tracker, "r-2", error=True)
    spans = {s.name: s for s in receiver.wait_for(3)}
    exporter.close()
    gw = spans["chat smollm2"]
    assert {name for name, _, _ in gw.events} == {"corral.first_token"}
    assert gw.status_code == 2 and gw.status_message == "the engine failed"  # STATUS_CODE_ERROR
    assert gw.attributes["error.type"] == "500" and gw.attributes["corral.outcome"] == "error"
    assert gw.resource["service.name"] == "corral-gateway"  # neither OTEL_SERVICE_NAME nor a resource attribute


async def test_sampling_at_zero_exports_nothing_and_a_ratio_samples_whole_traces(
    receiver: OtlpReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    receiver.requests.clear()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.http_url)
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0")
    exporter, tracker = exporter_tracker()
    for i in range(20):
        await traced_request(tracker, f"z-{i}")
    assert exporter.force_flush()
    time.sleep(0.3)
    exporter.close()
    assert receiver.spans() == [] and exporter.dropped_total == 0

    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0.5")
    exporter, tracker = exporter_tracker()
    events = [await traced_request(tracker, f"h-{i}") for i in range(60)]
    assert exporter.force_flush()
    exporter.close()
    traces: dict[str, int] = {}
    for s in receiver.spans():
        traces[s.trace_id] = traces.get(s.trace_id, 0) + 1
    assert 10 <= len(traces) <= 50 and set(traces.values()) == {3}  # a trace is exported whole or not at all
    assert traces.keys() <= {e.trace_id for e in events}


async def test_a_callers_unsampled_traceparent_is_honoured(receiver: OtlpReceiver, monkeypatch: pytest.MonkeyPatch) -> None:
    receiver.requests.clear()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.http_url)  # the default sampler: parentbased_always_on
    exporter, tracker = exporter_tracker()
    await traced_request(tracker, "u-1", f"00-{new_id(16)}-{new_id(8)}-00")
    sampled = await traced_request(tracker, "u-2", f"00-{new_id(16)}-{new_id(8)}-01")
    assert exporter.force_flush()
    exporter.close()
    assert {s.trace_id for s in receiver.spans()} == {sampled.trace_id}


@pytest.mark.parametrize("implementation", ["wire", "sdk"])
@pytest.mark.parametrize("state", ["down", "slow"])
async def test_a_collector_down_or_slow_costs_requests_nothing(
    monkeypatch: pytest.MonkeyPatch, state: str, implementation: str
) -> None:
    monkeypatch.setenv("CORRAL_OTLP_EXPORTER", implementation)
    slow = start_receiver(delay_s=3.0) if state == "slow" else None
    if slow is None:
        import socket

        with socket.socket() as s:  # a port nobody listens on
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        url = f"http://127.0.0.1:{port}"
    else:
        url = slow.http_url
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", url)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "1")  # seconds, as the SDK reads it
    monkeypatch.setenv("OTEL_BSP_MAX_QUEUE_SIZE", "300")
    monkeypatch.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "100")
    exporter, tracker = exporter_tracker()
    assert exporter.implementation == implementation
    took = []
    for i in range(400):
        start = time.perf_counter()
        await traced_request(tracker, f"d-{i}")
        took.append(time.perf_counter() - start)
        if i % 50 == 0:
            await asyncio.sleep(0.05)  # the exporter's thread gets to try
    took.sort()
    # a request that waited for the collector would take its 3 s delay (or 1 s timeout); on
    # 2 shared cores one request now and then is descheduled for a while
    p50, p99 = took[len(took) // 2], took[int(len(took) * 0.99)]
    assert p50 < 0.002 and p99 < 0.02 and took[-1] < 0.5, (p50, p99, took[-1])
    closing = time.monotonic()
    exporter.close(timeout_s=2.0)
    assert time.monotonic() - closing < 4.0  # shutdown gives up on the collector rather than hang
    assert exporter.dropped_total >= 400 * 3 - 300, exporter.dropped_total  # all but a queue's worth, counted
    if slow is not None:
        slow.stop()


def test_configuration_errors_are_clear() -> None:
    assert export_protocol({}) is None
    assert export_protocol({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "true"}) is None
    assert export_protocol({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_EXPORTER": "none"}) is None
    assert export_protocol({"OTEL_TRACES_EXPORTER": "otlp"}) == "http/protobuf"
    assert export_protocol({"OTEL_EXPORTER_OTLP_ENDPOINT": "x", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc"}) == "grpc"
    with pytest.raises(ConfigError, match="http/json"):
        export_protocol({"OTEL_EXPORTER_OTLP_ENDPOINT": "x", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"})
    with pytest.raises(ConfigError, match="zipkin"):
        export_protocol({"OTEL_TRACES_EXPORTER": "zipkin"})


def test_a_real_gateway_whose_collector_is_slow_answers_at_once_and_counts_drops(
    corral_home: Path, tmp_path: Path
) -> None:
    """``corral start`` exporting to a collector that takes 2 s per export (past the 1 s
    timeout): requests answer in their usual time, and what could not be sent is counted."""
    slow = start_receiver(delay_s=2.0)
    config = tmp_path / "corral.toml"
    config.write_text('[[models]]\nname = "chat"\nkind = "llm"\nengine = "transformers"\nsource = "demo:tiny-llama"\n')
    port = free_port()
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": slow.http_url, "OTEL_EXPORTER_OTLP_TIMEOUT": "1",
           "OTEL_BSP_SCHEDULE_DELAY": "100", "OTEL_BSP_MAX_QUEUE_SIZE": "64", "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "32"}
    server = launch(["start", "--config", str(config), "--port", str(port)], corral_home, tmp_path, port, env)
    try:
        wait_until(server, lambda: httpx.get(f"{server.url}/health/ready", timeout=2).status_code == 200)
        took = []
        with httpx.Client(base_url=server.url, timeout=30) as http:
            for _ in range(120):
                start = time.perf_counter()
                resp = http.post("/v1/chat/completions", json={"model": "chat", "max_tokens": 2,
                                                               "messages": [{"role": "user", "content": "hi"}]})
                took.append(time.perf_counter() - start)
                assert resp.status_code == 200, resp.text
            took.sort()
            assert took[len(took) // 2] < 0.5 and took[-1] < 1.5, took  # never the collector's 2 s
            dropped = 0.0
            for _ in range(50):  # the exporter gives up on each batch after its timeout
                text = http.get("/metrics").text
                dropped = next(float(line.split()[-1]) for line in text.splitlines()
                               if line.startswith("corral_spans_dropped_total"))
                if dropped >= 100:
                    break
                time.sleep(0.2)
            assert dropped >= 100, dropped  # 240 spans, at most a queue and a batch of them in flight
    finally:
        server.stop()
        slow.stop()
