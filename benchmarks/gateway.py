"""Section 1: what the gateway adds in front of a fast upstream.

The same fake OpenAI upstream (``corral.bench.fake_openai``) is measured four ways:
directly (the load generator's own ceiling), through the bare aiohttp proxy (the
reference), through ``corral start`` (openai-compatible engine) and through a cluster
(``corral gateway`` -> ``corral worker`` -> upstream), plus the streamed cells through
``corral start``'s Ollama route (``/api/chat``, NDJSON), whose CPU per stream is compared
with the OpenAI route's of the same server. Corral runs with an API key,
metrics and request records on. Every cell (streamed or not, concurrency 1/16/64) is
repeated, the targets interleaved within each repeat so that noise hits them alike;
ratios are taken within a repeat, then the median over repeats.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from benchmarks.procs import Proc, Processes, free_port, wait_ready
from benchmarks.report import Check, Section, Table, median, ratio
from corral.bench import loadgen
from corral.bench.stats import summarize

API_KEY = "bench-key-0123456789"
OLLAMA = "start ollama"  # the same corral start, through its Ollama route
ANTHROPIC = "start anthropic"  # corral start, through /v1/messages
MODEL = "fake"
NONSTREAM_TOKENS = 16  # tokens of a non-streamed answer (Corral still streams them from the upstream)
STREAM_TOKENS = 32  # content chunks of a streamed answer
CELLS = [(False, 1), (False, 16), (False, 64), (True, 1), (True, 16), (True, 64)]
WARMUP_S = 0.5
IDLE_S = 2.0  # to read what the processes spend doing nothing (CPU time is counted in 10 ms ticks)


@dataclass
class Target:
    name: str
    url: str
    api_key: str | None
    measured: list[Proc] = field(default_factory=list)  # processes whose CPU is read; the first is "the gateway"
    endpoint: str = "chat"  # loadgen's endpoint: "messages" (Anthropic) or "ollama-chat" on the same server
    streams_only: bool = False  # measured on the streamed cells only
    model: str = MODEL  # the model requested (another name: another model of the same server)


def upstream_stats(upstream_url: str) -> dict[str, int]:
    """The fake upstream's counts of requests served and connections accepted."""
    with urllib.request.urlopen(f"{upstream_url}/stats", timeout=5) as resp:
        return json.loads(resp.read())  # type: ignore[no-any-return]


def _toml(upstream: Proc, records: Path | None, api_key: bool) -> str:
    server = ["[server]", 'log_level = "warning"']
    if api_key:
        server.append(f'api_keys = ["{API_KEY}"]')
    if records is not None:
        server.append(f'records = "sqlite:///{records}"')
    model = ["[[models]]", f'name = "{MODEL}"', 'kind = "llm"', 'engine = "openai-compatible"',
             f'source = "{upstream.url}/v1"']
    return "\n".join(server) + "\n\n" + "\n".join(model) + "\n"


def start_targets(procs: Processes, work: Path) -> list[Target]:
    upstream = procs.fake_upstream()
    bare = procs.bare_proxy(upstream)
    targets = [Target("direct", f"{upstream.url}/v1", None, [upstream]),
               Target("bare proxy", f"{bare.url}/v1", None, [bare])]

    config = work / "bench.toml"
    config.write_text(_toml(upstream, work / "records-start.db", api_key=True))
    port = free_port()
    start = procs.corral("corral-start", ["start", "--config", str(config), "--port", str(port)], port)
    wait_ready(start, "/health/ready", 60)
    targets.append(Target("corral start", f"{start.url}/v1", API_KEY, [start]))
    targets.append(Target(OLLAMA, start.url, API_KEY, [start], endpoint="ollama-chat", streams_only=True))
    # the same server and engine through the Anthropic Messages front-end
    targets.append(Target(ANTHROPIC, f"{start.url}/v1", API_KEY, [start], endpoint="messages"))

    token = "bench-cluster-token"
    cport, wport, gport = free_port(), free_port(), free_port()
    controller = procs.corral("controller", ["controller", "--port", str(cport), "--cluster-token", token,
                                             "--log-level", "warning"], cport)
    wait_ready(controller, "/health", 60)
    worker_config = work / "worker.toml"
    worker_config.write_text(_toml(upstream, None, api_key=False).split("\n\n", 1)[1])
    worker = procs.corral("worker", ["worker", "--controller", controller.url, "--port", str(wport),
                                     "--cluster-token", token, "--config", str(worker_config),
                                     "--log-level", "warning"], wport)
    gateway = procs.corral("gateway", ["gateway", "--controller", controller.url, "--port", str(gport),
                                       "--cluster-token", token, "--api-key", API_KEY,
                                       "--records", f"sqlite:///{work / 'records-gateway.db'}",
                                       "--log-level", "warning"], gport)
    wait_ready(gateway, "/health/ready", 60)
    targets.append(Target("cluster", f"{gateway.url}/v1", API_KEY, [gateway, worker]))
    return targets


def measure(target: Target, upstream_url: str, stream: bool, concurrency: int, duration_s: float) -> dict[str, Any]:
    """One cell: a short warm-up, then ``duration_s`` of closed-loop load, with the CPU
    the measured processes spent meanwhile."""
    config = loadgen.LoadConfig(
        url=target.url, model=target.model, api_key=target.api_key, endpoint=target.endpoint, stream=stream,
        concurrency=concurrency,
        duration_s=WARMUP_S, max_tokens=STREAM_TOKENS if stream else NONSTREAM_TOKENS, timeout_s=30.0,
    )
    loadgen.run(config)
    up_before = upstream_stats(upstream_url)
    before = [p.cpu_s() for p in target.measured]
    samples = loadgen.run(replace(config, duration_s=duration_s))
    after = [p.cpu_s() for p in target.measured]
    up_after = upstream_stats(upstream_url)
    s = summarize(samples)
    ok = s["ok"]
    # connections the upstream accepted per 1,000 requests: ~0 when the proxy keeps them alive
    conns = (up_after["connections"] - up_before["connections"]) * 1000 / ok if ok else None
    return {
        "rps": s["requests_per_s"] if ok else None,  # none served: no rate to compare
        "p50_ms": s["latency_ms"]["p50"],
        "p99_ms": s["latency_ms"]["p99"],
        "ttft_p50_ms": s["ttft_ms"]["p50"],
        "cpu_ms": [(a - b) * 1000 / ok if ok else None for a, b in zip(after, before)],
        "upstream_conns_per_1k": conns,
        "ok": ok,
        "failed": s["failed"],
        "errors": s["errors"],
        "error_examples": s["error_examples"],
    }


def _mode(stream: bool) -> str:
    return "stream" if stream else "non-stream"


def run(duration_s: float, repeats: int, work: Path, procs: Processes, say: Callable[[str], None]) -> Section:
    t0 = time.perf_counter()
    say("gateway: starting the fake upstream, the bare proxy, corral start and a cluster...")
    targets = start_targets(procs, work)
    upstream_url = targets[0].measured[0].url
    idle = {t.name: t.measured[0].cpu_s() for t in targets}
    time.sleep(IDLE_S)
    idle_cpu_pct = {name: (t.measured[0].cpu_s() - idle[name]) * 100 / IDLE_S for name, t in zip(idle, targets)}

    results: dict[tuple[str, bool, int], list[dict[str, Any]]] = {}
    total, n = repeats * sum(1 for stream, _ in CELLS for t in targets if stream or not t.streams_only), 0
    for rep in range(repeats):
        for stream, c in CELLS:
            for target in targets:
                if target.streams_only and not stream:
                    continue
                n += 1
                r = measure(target, upstream_url, stream, c, duration_s)
                results.setdefault((target.name, stream, c), []).append(r)
                cpu = " + ".join("-" if x is None else f"{x:.3f}" for x in r["cpu_ms"])
                err = f"  {r['failed']} FAILED {r['errors']}" if r["failed"] else ""
                say(f"  [{n:3d}/{total}] rep {rep + 1}/{repeats}  {target.name:12s} {_mode(stream):10s} c={c:<3d} "
                    f"{r['rps'] or 0:8.0f} req/s  p50 {r['p50_ms'] or 0:7.2f} ms  CPU {cpu} ms/req{err}")

    def med(name: str, stream: bool, c: int, key: str, index: int = 0) -> float | None:
        runs = results[(name, stream, c)]
        return median([r[key][index] if key == "cpu_ms" else r[key] for r in runs])

    def med_ratio(name: str, stream: bool, c: int, base: str = "bare proxy") -> float | None:
        pairs = zip(results[(name, stream, c)], results[(base, stream, c)])
        return median([ratio(a["rps"], b["rps"]) for a, b in pairs])

    def cpu_ratio(name: str, base: str, stream: bool, c: int) -> float | None:
        """CPU per request of ``name`` over ``base``'s, within each repeat, then the median."""
        pairs = zip(results[(name, stream, c)], results[(base, stream, c)])
        return median([ratio(a["cpu_ms"][0], b["cpu_ms"][0]) for a, b in pairs])

    def added_p50(name: str, stream: bool, key: str = "p50_ms") -> float | None:
        pairs = zip(results[(name, stream, 1)], results[("direct", stream, 1)])
        return median([a[key] - b[key] if a[key] is not None and b[key] is not None else None for a, b in pairs])

    rows = []
    for stream, c in CELLS:
        for t in targets:
            if t.streams_only and not stream:
                continue
            cpu = [med(t.name, stream, c, "cpu_ms", i) for i in range(len(t.measured))]
            failed = sum(r["failed"] for r in results[(t.name, stream, c)])
            rows.append([t.name, _mode(stream), c, med(t.name, stream, c, "rps"), med(t.name, stream, c, "p50_ms"),
                         med(t.name, stream, c, "p99_ms"), med(t.name, stream, c, "ttft_p50_ms") if stream else None,
                         cpu[0] if t.name != "direct" else None, cpu[1] if len(cpu) > 1 else None,
                         None if t.name == "direct" else med_ratio(t.name, stream, c),
                         med(t.name, stream, c, "upstream_conns_per_1k"), failed])
    cells = Table("gateway overhead (medians; CPU is per request of the process named, ratio is req/s vs the bare "
                  "proxy in the same repeat)",
                  ["target", "mode", "c", "req/s", "p50 ms", "p99 ms", "TTFT p50 ms", "gateway CPU ms/req",
                   "worker CPU ms/req", "x bare", "upstream conns/1k req", "failed"], rows)

    summary_rows = []
    for t in targets[1:]:
        if t.streams_only:
            continue
        summary_rows.append([t.name, med_ratio(t.name, False, 64), med_ratio(t.name, True, 16),
                             added_p50(t.name, False), added_p50(t.name, True, "ttft_p50_ms"),
                             med(t.name, False, 64, "cpu_ms"), med(t.name, True, 16, "cpu_ms"),
                             idle_cpu_pct[t.name]])
    summary = Table("gateway summary (ratios vs the bare proxy; added = minus the direct row at c=1)",
                    ["target", "x bare non-stream c=64", "x bare stream c=16", "added p50 ms c=1",
                     "added TTFT ms c=1", "CPU ms/request", "CPU ms/stream (32 chunks)", "idle CPU %"], summary_rows)

    start, cluster = "corral start", "cluster"

    protocols = Table(
        "protocol front-ends of corral start, streamed (CPU per 32-chunk stream; ratio to the OpenAI route in the "
        "same repeat)",
        ["route", "c", "req/s", "TTFT p50 ms", "CPU ms/stream", "x OpenAI CPU"],
        [[name, c, med(t, True, c, "rps"), med(t, True, c, "ttft_p50_ms"), med(t, True, c, "cpu_ms"),
          cpu_ratio(t, start, True, c) if t != start else 1.0]
         for c in (1, 16, 64)
         for name, t in (("/v1/chat/completions", start), ("/v1/messages (Anthropic)", ANTHROPIC), ("/api/chat (Ollama)", OLLAMA))],
    )
    checks = [
        Check("standalone non-stream req/s c=64, x bare", med_ratio(start, False, 64), ">=", 0.5),
        Check("standalone stream req/s c=16, x bare", med_ratio(start, True, 16), ">=", 0.5),
        Check("standalone added p50 at c=1", added_p50(start, False), "<=", 0.5, "ms"),
        Check("cluster non-stream req/s c=64, x bare", med_ratio(cluster, False, 64), ">=", 0.35),
        Check("standalone CPU per non-stream request", med(start, False, 64, "cpu_ms"), "<=", 0.3, "ms"),
        Check("standalone CPU per 32-chunk stream", med(start, True, 16, "cpu_ms"), "<=", 1.0, "ms"),
        Check("cluster gateway CPU per non-stream request", med(cluster, False, 64, "cpu_ms"), "<=", 0.3, "ms"),
        Check("Ollama route CPU per stream c=16, x the OpenAI route's", cpu_ratio(OLLAMA, start, True, 16), "<=", 1.1),
        Check("Anthropic route CPU per stream c=16, x the OpenAI route's", cpu_ratio(ANTHROPIC, start, True, 16), "<=", 1.1),
    ]
    direct = med("direct", False, 64, "rps") or 0
    bare = med("bare proxy", False, 64, "rps") or 0
    notes = [
        f"load generator ceiling (direct, non-stream c=64): {direct:,.0f} req/s, "
        f"{direct / bare if bare else 0:.1f}x the bare proxy; streams c=64: "
        f"{med('direct', True, 64, 'rps') or 0:,.0f}/s.",
        f"non-streamed requests ask for {NONSTREAM_TOKENS} tokens, as one JSON body from the upstream for Corral and "
        "the bare proxy alike (Corral asks its upstream not to stream when its client does not).",
        "the upstream yields to its event loop between stream events, as a server does between tokens.",
    ]
    for t in targets:  # failures make every number of a target suspect: say what they were
        failures: dict[str, int] = {}
        examples: dict[str, str] = {}
        for (name, _, _), runs in results.items():
            if name == t.name:
                for r in runs:
                    for kind, count in r["errors"].items():
                        failures[kind] = failures.get(kind, 0) + count
                    for kind, text in r["error_examples"].items():
                        examples.setdefault(kind, " ".join(text.split())[:200])
        if failures:
            listed = "; ".join(f"{kind} x{n}, first: {examples.get(kind, '')}" for kind, n in failures.items())
            notes.insert(0, f"{t.name}: FAILED REQUESTS ({listed}); its rows count only the successful ones.")
    raw = {f"{name}|{_mode(stream)}|c={c}": runs for (name, stream, c), runs in results.items()}
    return Section("1. gateway overhead", [cells, summary, protocols], checks, notes, {"cells": raw, "idle_cpu_pct": idle_cpu_pct},
                   time.perf_counter() - t0)
