"""Section 6: what virtual keys with limits cost on the request path.

One ``corral start`` in front of the fake upstream, holding 10,000 virtual keys created
through the admin API, each with rpm, tpm, concurrency and a budget (set far above what
the run spends, so nothing is refused and only the accounting is measured). The same
server is measured, interleaved within each repeat, with its static key and with one of
the virtual keys; the target is the issue's: the virtual key within 5% of the static
key's throughput, non-streamed at concurrency 64. A third cell sends each request with
a different virtual key (the lookup and the per-key state spread over 1,000 keys).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx

from benchmarks.gateway import API_KEY, MODEL, NONSTREAM_TOKENS, WARMUP_S
from benchmarks.procs import Proc, Processes, free_port, wait_ready
from benchmarks.report import Check, Section, Table, median, ratio
from corral.bench import loadgen
from corral.bench.stats import summarize

KEYS = 10_000
SPREAD = 1_000  # keys the "many keys" cell rotates through
CONCURRENCY = 64
ADMIN_TOKEN = "bench-admin-token"
LIMITS = {"rpm": 10_000_000, "tpm": 1_000_000_000, "max_concurrency": 100_000, "budget_requests": 10**11,
          "budget_period": "day"}


async def _create_keys(url: str, n: int, say: Callable[[str], None]) -> list[str]:
    headers = {"authorization": f"Bearer {ADMIN_TOKEN}"}
    secrets: list[str] = []
    async with httpx.AsyncClient(base_url=f"{url}/admin/v1", headers=headers, timeout=30) as client:
        slots = asyncio.Semaphore(16)

        async def one(i: int) -> None:
            async with slots:
                resp = await client.post("/keys", json={"name": f"bench-{i}", "owner": "bench", **LIMITS})
            resp.raise_for_status()
            secrets.append(resp.json()["key"])
            if len(secrets) % 2_500 == 0:
                say(f"  keys: {len(secrets):,}/{n:,} created")

        await asyncio.gather(*(one(i) for i in range(n)))
    return secrets


def _measure(url: str, keys: list[str], duration_s: float, server: Proc) -> dict[str, Any]:
    config = loadgen.LoadConfig(
        url=f"{url}/v1", model=MODEL, api_key=keys[0], api_keys=tuple(keys) if len(keys) > 1 else (),
        endpoint="chat", stream=False, concurrency=CONCURRENCY, duration_s=WARMUP_S,
        max_tokens=NONSTREAM_TOKENS, timeout_s=30.0,
    )
    loadgen.run(config)
    before = server.cpu_s()
    s = summarize(loadgen.run(replace(config, duration_s=duration_s)))
    cpu_ms = (server.cpu_s() - before) * 1000 / s["ok"] if s["ok"] else None
    return {"rps": s["requests_per_s"] if s["ok"] else None, "p50_ms": s["latency_ms"]["p50"], "cpu_ms": cpu_ms,
            "ok": s["ok"], "failed": s["failed"], "errors": s["errors"]}


def run(duration_s: float, repeats: int, work: Path, procs: Processes, say: Callable[[str], None]) -> Section:
    t0 = time.perf_counter()
    upstream = procs.fake_upstream()
    config = work / "keys.toml"
    config.write_text(
        f'[server]\nlog_level = "warning"\napi_keys = ["{API_KEY}"]\nrecords = "sqlite:///{work / "records-keys.db"}"\n\n'
        f'[[models]]\nname = "{MODEL}"\nkind = "llm"\nengine = "openai-compatible"\nsource = "{upstream.url}/v1"\n'
    )
    port = free_port()
    start = procs.corral("corral-start-keys", ["start", "--config", str(config), "--port", str(port),
                                               "--admin-token", ADMIN_TOKEN], port)
    wait_ready(start, "/health/ready", 60)
    say(f"keys: creating {KEYS:,} virtual keys with limits through the admin API...")
    made = time.perf_counter()
    secrets = asyncio.run(_create_keys(start.url, KEYS, say))
    create_s = time.perf_counter() - made
    time.sleep(1.0)  # every key in force (the gateway applies them at once in standalone; be sure)

    cells = {"static key": [API_KEY], "one virtual key": [secrets[KEYS // 2]], f"{SPREAD:,} virtual keys": secrets[:SPREAD]}
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in cells}
    names = list(cells)
    for rep in range(repeats):
        for name in names[rep % len(names):] + names[:rep % len(names)]:  # each cell first once: no place bias
            keys = cells[name]
            r = _measure(start.url, keys, duration_s, start)
            results[name].append(r)
            failed = f"  {r['failed']} FAILED {r['errors']}" if r["failed"] else ""
            say(f"  rep {rep + 1}/{repeats}  {name:18s} non-stream c={CONCURRENCY}  {r['rps'] or 0:8.0f} req/s  "
                f"p50 {r['p50_ms'] or 0:6.2f} ms  CPU {r['cpu_ms'] or 0:.3f} ms/req{failed}")

    def x_static(name: str, key: str = "rps") -> float | None:
        return median([ratio(a[key], b[key]) for a, b in zip(results[name], results["static key"])])

    rows = [[name, median([r["rps"] for r in runs]), median([r["p50_ms"] for r in runs]),
             median([r["cpu_ms"] for r in runs]), x_static(name) if name != "static key" else 1.0,
             x_static(name, "cpu_ms") if name != "static key" else 1.0, sum(r["failed"] for r in runs)]
            for name, runs in results.items()]
    table = Table(f"virtual keys: corral start holding {KEYS:,} keys with limits, non-streamed c={CONCURRENCY} "
                  "(ratios to the static key in the same repeat)",
                  ["key", "req/s", "p50 ms", "CPU ms/req", "req/s x static", "CPU x static", "failed"], rows)
    checks = [
        Check(f"one virtual key among {KEYS:,} with limits, x static key", x_static("one virtual key"), ">=", 0.95),
        Check(f"{SPREAD:,} virtual keys in rotation, x static key", x_static(f"{SPREAD:,} virtual keys"), ">=", 0.95),
        Check("CPU per request, one virtual key x static key", x_static("one virtual key", "cpu_ms"), "<=", 1.05,
              note="steadier than req/s on a shared machine"),
    ]
    notes = [f"{KEYS:,} keys created through POST /admin/v1/keys in {create_s:.1f} s "
             f"({KEYS / create_s:,.0f} keys/s, 16 at a time).",
             "limits are set far above what the run spends: the cells measure the accounting, not refusals."]
    return Section("6. virtual keys", [table], checks, notes, {"cells": results, "create_s": create_s},
                   time.perf_counter() - t0)
