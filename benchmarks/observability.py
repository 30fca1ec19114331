"""Cost of observability on the request path, measured in this run against a baseline.

Runs the gateway's per-request observation (Tracker + metrics + request records queue
+ span building) on synthetic finished requests, and the same loop with no observers,
and prints the added microseconds per request and per streamed chunk; then the same with
OTLP trace export (HTTP/protobuf to a sink on loopback, in a child process) sampled at 1.0
and 0.1, by Corral's thin exporter and by the OpenTelemetry SDK's. Each request has the three spans of a cluster
request (gateway, worker, engine). Wall time is the request path's; CPU is the whole
process's (the SDK encodes and sends from its own thread), flush included. Run:
``python benchmarks/observability.py`` (or ``make bench``).
"""

from __future__ import annotations

import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from corral.core.observe import Observers
from corral.core.registry import InstanceRecord, InstanceState
from corral.core.spec import ModelKind
from corral.gateway.router import Router
from corral.gateway.tracking import Capture, Tracker
from corral.observe.metrics import GatewayMetrics
from corral.observe.otlp import OtlpExporter
from corral.observe.records import RecordStore
from corral.observe.tracing import SERVER, WORKER_SERVICE, new_id, span
from corral.registry.embedded import EmbeddedRegistry

REQUESTS = 20_000
CHUNKS = 32
# a collector that takes every export and answers 200 (what it costs is not Corral's)
SINK = """
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200); self.send_header("content-length", "0"); self.end_headers()
    def log_message(self, *a): pass
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


async def run(tracker: Tracker) -> float:
    """Seconds per request of tracking a 32-chunk streamed chat request."""
    start = time.perf_counter()
    for i in range(REQUESTS):
        async with tracker.track(f"r{i}", "chat", "key1234", None) as event:
            event.model, event.instance_id, event.engine = "chat", "chat-1", "transformers"
            event.params = {"max_tokens": 32, "temperature": 0.7}
            last = time.perf_counter()
            for _ in range(CHUNKS):  # what Call does per chunk
                now = time.perf_counter()
                event.token_gaps_s.append(now - last)
                last = now
            event.prompt_tokens, event.completion_tokens = 20, CHUNKS
            event.finish_reasons, event.routing = ["stop"], "power_of_two"
            assert event.trace_id is not None and event.span_id is not None
            now = time.time()  # the worker's two spans, as they arrive on the wire
            worker = span("corral.worker", event.trace_id, new_id(8), event.span_id, now, now,
                          {"corral.instance_id": "chat-1", "corral.model": "chat", "corral.engine": "transformers",
                           "corral.worker_id": "w"}, SERVER)
            worker["service"] = WORKER_SERVICE
            engine = span("corral.engine.generate", event.trace_id, new_id(8), worker["span_id"], now, now,
                          {"corral.instance_id": "chat-1", "corral.engine.output_tokens": CHUNKS, "corral.ttft_s": 0.01})
            event.spans.extend((worker, engine))
        await asyncio.sleep(0)  # a server yields between requests: the records writer runs then
    return (time.perf_counter() - start) / REQUESTS


def _cpu_and_wall(loop_s: float, cpu_s: float) -> str:
    return f"{loop_s * 1e6:.1f} | {cpu_s * 1e6:.1f}"


async def traced(
    metrics: GatewayMetrics, store: RecordStore, sample: float, port: int, implementation: str
) -> tuple[float, float, int]:
    """(wall s, CPU s per request, spans dropped) with OTLP export sampled at ``sample``."""
    os.environ.update({
        "CORRAL_OTLP_EXPORTER": implementation,
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}", "OTEL_TRACES_SAMPLER": "traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": str(sample), "OTEL_BSP_MAX_QUEUE_SIZE": str(REQUESTS * 4),
    })
    exporter = OtlpExporter.from_env("corral-bench")
    assert exporter is not None
    tracker = Tracker(Observers([metrics, store, exporter]), Capture())
    cpu = time.process_time()
    wall = await run(tracker)
    await asyncio.to_thread(exporter.force_flush, 60.0)  # its encoding and sending are part of the cost
    cpu = (time.process_time() - cpu) / REQUESTS
    exporter.close()
    return wall, cpu, exporter.dropped_total


async def main() -> None:
    registry = EmbeddedRegistry()
    router = Router(registry, lambda r: object())
    await router.start()
    await registry.put(InstanceRecord("chat-1", "chat", ModelKind.LLM, "transformers", "w", InstanceState.READY))
    await asyncio.sleep(0)
    folder = Path(tempfile.mkdtemp())
    store = RecordStore(f"sqlite:///{folder / 'records.db'}", queue_size=REQUESTS * 2)
    await store.open()
    metrics = GatewayMetrics(router)
    full = Tracker(Observers([metrics, store]), Capture())
    bare = Tracker(Observers(), Capture())
    base, with_obs, base_cpu, obs_cpu = [], [], [], []
    for _ in range(3):
        cpu = time.process_time()
        base.append(await run(bare))
        base_cpu.append((time.process_time() - cpu) / REQUESTS)
        cpu = time.process_time()
        with_obs.append(await run(full))
        obs_cpu.append((time.process_time() - cpu) / REQUESTS)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sink = subprocess.Popen([sys.executable, "-c", SINK, str(port)])
    try:
        time.sleep(0.5)
        cases = (("wire", 1.0), ("wire", 0.1), ("sdk", 1.0), ("sdk", 0.1))
        traces = {case: [await traced(metrics, store, case[1], port, case[0]) for _ in range(3)] for case in cases}
    finally:
        sink.terminate()
        sink.wait()
    await store.flush()
    await store.close()
    b, o = statistics.median(base), statistics.median(with_obs)
    bc, oc = statistics.median(base_cpu), statistics.median(obs_cpu)
    print("| loop (median of 3, 20k requests of 32 chunks, 3 spans each) | µs per request (wall) | CPU µs per request |")
    print("|---|---|---|")
    print(f"| tracking only (baseline) | {_cpu_and_wall(b, bc)} |")
    print(f"| tracking + metrics + records queue + spans | {_cpu_and_wall(o, oc)} |")
    names = {"wire": "Corral's thin exporter (the default)", "sdk": "the SDK's exporter"}
    for (implementation, sample), runs in traces.items():
        wall, cpu = statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)
        print(f"| the same + OTLP/HTTP export, {names[implementation]}, sampled at {sample} | {_cpu_and_wall(wall, cpu)} |")
    print(f"added by observers (no export): {(o - b) * 1e6:.1f} µs per request ({(o - b) * 1e6 / CHUNKS:.2f} µs per chunk)")
    print(f"records written: {store.written_total}, dropped: {store.dropped_total} (the writer batches in the background)")
    print(f"spans dropped by the exporter: {sum(r[2] for runs in traces.values() for r in runs)}")
    sys.stdout.flush()


if __name__ == "__main__":
    asyncio.run(main())
