"""Section 2: the built-in engines under concurrent load.

``corral start`` with its offline demo deployment: the tiny random-weight Llama
(``demo-chat``, transformers engine, continuous batching) and ``all-minilm-l6-v2``
(sentence-transformers). Generation: tokens per second with one request at a time vs
16 concurrent (``ignore_eos``, so every request makes exactly ``max_tokens`` tokens).
Embeddings: texts per second one by one, 16 concurrent single-text requests (batched by
the engine), and one client-batched request of 32 texts at a time.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from benchmarks.procs import Processes, free_port, wait_ready
from benchmarks.report import Check, Section, Table, median, ratio
from corral.bench import loadgen
from corral.bench.stats import summarize

API_KEY = "bench-key-0123456789"
CHAT_MODEL = "demo-chat"
EMBED_MODEL = "all-minilm-l6-v2"
GEN_TOKENS = 32


def _run(url: str, duration_s: float, **kw: Any) -> dict[str, Any]:
    config = loadgen.LoadConfig(url=url, api_key=API_KEY, duration_s=duration_s, timeout_s=120.0, **kw)
    warm = replace(config, duration_s=min(1.0, duration_s))
    loadgen.run(warm)
    return summarize(loadgen.run(config))


def run(duration_s: float, repeats: int, work: Path, procs: Processes, say: Callable[[str], None]) -> Section:
    t0 = time.perf_counter()
    say("engines: starting corral start with the demo models (torch import and model load)...")
    port = free_port()
    server = procs.corral("corral-start-demo", ["start", "--port", str(port), "--api-key", API_KEY,
                                                "--log-level", "warning"], port)
    load_s = wait_ready(server, "/health/ready", 600)
    say(f"  ready in {load_s:.1f} s")
    url = f"{server.url}/v1"
    # The first batches of each shape are slow (lazy initialisation in torch): warm both
    # engines at the concurrency levels measured before any number is kept.
    for c in (16, 1):
        _run(url, 1.5, model=CHAT_MODEL, concurrency=c, max_tokens=GEN_TOKENS, extra_body={"ignore_eos": True})
        _run(url, 0.5, model=EMBED_MODEL, endpoint="embeddings", concurrency=c)
    gen_cells = [("sequential", 1), ("16 concurrent", 16)]
    emb_cells = [("one by one", 1, 1), ("16 concurrent", 16, 1), ("batches of 32", 1, 32)]
    gen: dict[str, list[dict[str, Any]]] = {}
    emb: dict[str, list[dict[str, Any]]] = {}
    for rep in range(repeats):
        for name, c in gen_cells:
            s = _run(url, duration_s, model=CHAT_MODEL, concurrency=c, max_tokens=GEN_TOKENS, prompt_tokens=16,
                     extra_body={"ignore_eos": True})
            gen.setdefault(name, []).append(s)
            say(f"  rep {rep + 1}/{repeats}  generation {name:14s} {s['output_tokens_per_s']:8.0f} tokens/s  "
                f"p50 {s['latency_ms']['p50'] or 0:7.1f} ms  failed {s['failed']}")
        for name, c, inputs in emb_cells:
            s = _run(url, duration_s, model=EMBED_MODEL, endpoint="embeddings", concurrency=c, inputs=inputs,
                     prompt_tokens=12)
            s["texts_per_s"] = s["requests_per_s"] * inputs
            emb.setdefault(name, []).append(s)
            say(f"  rep {rep + 1}/{repeats}  embeddings {name:14s} {s['texts_per_s']:8.0f} texts/s  "
                f"p50 {s['latency_ms']['p50'] or 0:7.1f} ms  failed {s['failed']}")

    def med(runs: list[dict[str, Any]], key: str, sub: str | None = None) -> float | None:
        return median([r[key][sub] if sub else r[key] for r in runs])

    def med_ratio(runs: list[dict[str, Any]], base: list[dict[str, Any]], key: str) -> float | None:
        return median([ratio(a[key], b[key]) for a, b in zip(runs, base)])

    seq = gen["sequential"]
    gen_rows = [[name, c, med(gen[name], "output_tokens_per_s"), med(gen[name], "requests_per_s"),
                 med(gen[name], "latency_ms", "p50"), med(gen[name], "latency_ms", "p99"),
                 med_ratio(gen[name], seq, "output_tokens_per_s"), sum(r["failed"] for r in gen[name])]
                for name, c in gen_cells]
    one = emb["one by one"]
    emb_rows = [[name, c, inputs, med(emb[name], "texts_per_s"), med(emb[name], "latency_ms", "p50"),
                 med_ratio(emb[name], one, "texts_per_s"), sum(r["failed"] for r in emb[name])]
                for name, c, inputs in emb_cells]
    tables = [
        Table(f"transformers engine, {CHAT_MODEL}, {GEN_TOKENS} tokens per request",
              ["load", "c", "tokens/s", "req/s", "p50 ms", "p99 ms", "x sequential", "failed"], gen_rows),
        Table(f"sentence-transformers engine, {EMBED_MODEL}",
              ["load", "c", "texts/request", "texts/s", "p50 ms", "x one by one", "failed"], emb_rows),
    ]
    checks = [Check("transformers tokens/s, 16 concurrent vs sequential",
                    med_ratio(gen["16 concurrent"], seq, "output_tokens_per_s"), ">=", 4.0)]
    notes = [f"demo deployment ready {load_s:.1f} s after `corral start` (torch import, demo model build, load)."]
    return Section("2. engines", tables, checks, notes, {"generation": gen, "embeddings": emb, "load_s": load_s},
                   time.perf_counter() - t0)
