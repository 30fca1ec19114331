"""The thin OTLP encoder (``observe/otlp_wire.py``) produces what the OpenTelemetry SDK's
encoder produces for the same spans: both are decoded with opentelemetry-proto's
``ExportTraceServiceRequest`` and compared field for field, for spans with every kind of
value Corral sends (strings, ints, floats, bools, arrays, events, errors, remote parents,
a worker's resource, text needing UTF-8, huge integers)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from corral.core.observe import RequestEvent
from corral.observe.otlp import OtlpExporter, Prepared
from corral.observe.tracing import CLIENT, SERVER, WORKER_SERVICE, all_spans, new_id, span, span_event


@pytest.fixture
def exporters(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[OtlpExporter, OtlpExporter]]:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")  # never reached: nothing is flushed
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "team=llm,deployment.environment.name=test")
    wire = OtlpExporter("corral-gateway", "http/protobuf")
    monkeypatch.setenv("CORRAL_OTLP_EXPORTER", "sdk")
    sdk = OtlpExporter("corral-gateway", "http/protobuf")
    assert (wire.implementation, sdk.implementation) == ("wire", "sdk")
    yield wire, sdk
    wire.close(0.1)
    sdk.close(0.1)


def spans_of_a_request() -> list[dict]:
    now = time.time()
    event = RequestEvent(
        "r-1", "chat", now, model="smöllm2", instance_id="i-1", engine="llamacpp", worker_id="w1",
        params={"max_tokens": 8, "temperature": 0.2, "top_p": 0.9, "n": 2, "stop": ["\n", "END"], "seed": 2**70,
                "stream": True, "tools": ["get_weather"]},
        outcome="error", http_status=500, error="engine failed: ValueError ✗", latency_s=0.5, ttft_s=0.01,
        prompt_tokens=12, completion_tokens=3, retries=1, prompt_text="user: héllo", completion_text="hi",
        trace_id=new_id(16), span_id=new_id(8), parent_span_id=new_id(8), parent_sampled=True,
        finish_reasons=["stop", "length"], queue_wait_s=0.0, routing="least_loaded",
    )
    worker = span("corral.worker", event.trace_id, new_id(8), event.span_id, now, now + 0.1,
                  {"corral.worker_id": "w1", "corral.instance_id": "i-1"}, SERVER)
    worker["service"] = WORKER_SERVICE
    engine = span("corral.engine.generate", event.trace_id, new_id(8), worker["span_id"], now, now + 0.1,
                  {"corral.worker_id": "w1", "corral.engine.output_tokens": 3, "corral.ttft_s": 0.005, "x.neg": -5,
                   "x.flag": False, "x.mixed": [1, "a"], "x.empty": []},
                  events=[span_event("corral.first_token", now + 0.005)])
    engine["service"] = WORKER_SERVICE
    attempt = span("corral.attempt", event.trace_id, new_id(8), event.span_id, now, now + 0.01,
                   {"corral.instance_id": "i-0", "http.response.status_code": 503}, CLIENT, error="")
    event.spans = [worker, engine, attempt]
    return all_spans(event)


def decoded(body: bytes) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest.FromString(body)
    ordered = sorted(request.resource_spans, key=lambda rs: rs.resource.SerializeToString(deterministic=True))
    out = ExportTraceServiceRequest()
    out.resource_spans.extend(ordered)
    return out


def test_the_thin_encoder_writes_what_the_sdk_writes(exporters: tuple[OtlpExporter, OtlpExporter]) -> None:
    wire, sdk = exporters
    spans = spans_of_a_request()
    groups: dict[bytes, list[bytes]] = {}
    for s in spans:
        encoded = wire._encode_span(s)
        assert encoded is not None
        groups.setdefault(encoded[0], []).append(encoded[1])
    thin = decoded(wire._wire.request(groups.items()))
    reference = decoded(encode_spans([sdk._sink._to_sdk(Prepared.of(s)) for s in spans]).SerializeToString())  # type: ignore[union-attr]
    assert len(reference.resource_spans) == 2  # the gateway's and the worker's
    assert thin == reference, f"thin:\n{thin}\nSDK:\n{reference}"
    gateway = next(s for rs in thin.resource_spans for ss in rs.scope_spans for s in ss.spans if s.name == "chat smöllm2")
    assert gateway.flags == 0x300 and gateway.status.code == 2  # a remote parent; an error
    assert any(kv.key == "gen_ai.request.seed" and kv.value.string_value == str(2**70) for kv in gateway.attributes)


def test_a_malformed_span_from_a_worker_is_dropped_not_sent(exporters: tuple[OtlpExporter, OtlpExporter]) -> None:
    wire, _ = exporters
    good = spans_of_a_request()[1]
    for bad in ({**good, "span_id": "zz"}, {**good, "trace_id": "0" * 32}, {**good, "start": "soon"},
                {k: v for k, v in good.items() if k != "name"}):
        assert wire._encode_span(bad) is None
