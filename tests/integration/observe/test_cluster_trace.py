"""A traced request through a real cluster has gateway, worker and engine spans under one
trace id, readable with `corral trace show`, and arrives as that one trace at an OTLP
receiver (decoding with opentelemetry-proto) with its parent links, resources and GenAI
attributes; a gateway sampling at 0 exports nothing."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.integration.cluster.harness import Cluster, wait_for_instances, worker_config
from tests.integration.servers import corral_env
from tests.services.otlp import start_receiver

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


def test_trace_spans_gateway_worker_and_engine(corral_home: Path, tmp_path: Path) -> None:
    cluster = Cluster(corral_home, tmp_path)
    records = f"sqlite:///{tmp_path / 'records.db'}"
    receiver = start_receiver()
    # the default protocol (HTTP/protobuf, the thin exporter); the gateway sampling at 0 on gRPC (the SDK's)
    otel = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.http_url, "OTEL_BSP_SCHEDULE_DELAY": "100",
            "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment.name=ci"}
    grpc = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.grpc_url, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}
    try:
        controller = cluster.controller()
        join = ["--controller", controller.url]
        cluster.worker(join, worker_config(tmp_path, "w", [{"name": "chat"}]))
        gateway = cluster.gateway(join, ["--records", records], env=otel)
        unsampled = cluster.gateway(join, ["--records", records], env={**otel, **grpc, "OTEL_TRACES_SAMPLER": "always_off"})
        wait_for_instances(gateway, "chat", 1)
        wait_for_instances(unsampled, "chat", 1)
        resp = httpx.post(
            f"{gateway.url}/v1/chat/completions",
            json={"model": "chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "stream": True},
            headers={"traceparent": f"00-{TRACE}-{PARENT}-01"},
            timeout=60,
        )
        assert resp.status_code == 200 and "[DONE]" in resp.text
        env = corral_env(corral_home)
        show = None
        for _ in range(50):  # records are written asynchronously
            show = subprocess.run(
                [sys.executable, "-m", "corral.cli.main", "trace", "show", TRACE, "--records", records, "--json"],
                env=env, capture_output=True, text=True, timeout=60,
            )
            if show.returncode == 0:
                break
            time.sleep(0.2)
        assert show is not None and show.returncode == 0, show.stderr if show else ""
        spans = {s["name"]: s for s in json.loads(show.stdout)}
        assert set(spans) == {"chat chat", "corral.worker", "corral.engine.generate"}
        assert {s["trace_id"] for s in spans.values()} == {TRACE}
        assert spans["chat chat"]["parent_span_id"] == PARENT
        assert spans["corral.worker"]["parent_span_id"] == spans["chat chat"]["span_id"]
        assert spans["corral.engine.generate"]["parent_span_id"] == spans["corral.worker"]["span_id"]
        engine = spans["corral.engine.generate"]["attributes"]
        assert engine["corral.model"] == "chat" and engine["corral.engine.output_tokens"] <= 4
        assert spans["chat chat"]["attributes"]["gen_ai.request.max_tokens"] == 4
        tree = subprocess.run(
            [sys.executable, "-m", "corral.cli.main", "trace", "show", TRACE, "--records", records],
            env=env, capture_output=True, text=True, timeout=60,
        )
        lines = tree.stdout.splitlines()
        assert lines[0] == f"trace {TRACE}"
        assert [line.split()[0] for line in lines[1:]] == ["chat", "corral.worker", "corral.engine.generate"]

        # the same trace, as the collector got it
        exported = {s.name: s for s in receiver.wait_for(3)}
        assert set(exported) == {"chat chat", "corral.worker", "corral.engine.generate"}
        assert {s.trace_id for s in exported.values()} == {TRACE}
        gw, worker, engine = exported["chat chat"], exported["corral.worker"], exported["corral.engine.generate"]
        assert gw.parent_span_id == PARENT and gw.span_id == spans["chat chat"]["span_id"]
        assert worker.parent_span_id == gw.span_id and engine.parent_span_id == worker.span_id
        assert (gw.kind, worker.kind, engine.kind) == ("server", "server", "internal")
        assert gw.resource["service.name"] == "corral-gateway" and gw.resource["deployment.environment.name"] == "ci"
        assert worker.resource["service.name"] == engine.resource["service.name"] == "corral-worker"
        assert worker.resource["service.instance.id"] == worker.attributes["corral.worker_id"]
        a = gw.attributes
        assert (a["gen_ai.operation.name"], a["gen_ai.request.model"], a["gen_ai.response.model"]) == ("chat", "chat", "chat")
        assert a["gen_ai.request.max_tokens"] == 4 and 1 <= a["gen_ai.usage.output_tokens"] <= 4
        assert a["gen_ai.usage.input_tokens"] > 0 and a["gen_ai.response.finish_reasons"] in (["length"], ["stop"])
        assert a["corral.worker_id"] == worker.attributes["corral.worker_id"] and a["corral.routing.policy"]
        assert a["corral.instance_id"] == engine.attributes["corral.instance_id"] and a["corral.protocol"] == "openai"
        assert "corral.first_token" in {name for name, _, _ in gw.events}
        assert engine.attributes["corral.engine.output_tokens"] == a["gen_ai.usage.output_tokens"]
        assert gw.start_ns <= worker.start_ns <= engine.start_ns <= engine.end_ns <= gw.end_ns + 50_000_000

        # a gateway sampling at 0 exports none of its requests
        other = "5bf92f3577b34da6a3ce929d0e0e4737"
        resp = httpx.post(
            f"{unsampled.url}/v1/chat/completions",
            json={"model": "chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
            headers={"traceparent": f"00-{other}-{PARENT}-01"}, timeout=60,
        )
        assert resp.status_code == 200
        time.sleep(1.0)  # four of the exporter's batch periods
        assert {s.trace_id for s in receiver.spans()} == {TRACE}
    finally:
        cluster.stop()
        receiver.stop()
