"""Section 6: ``corral gateway --processes 2`` against one process, in the same run.

One cluster (controller, one worker in front of the fake upstream) and two gateways
following it, ``--processes 1`` and ``--processes 2``, with an API key and request
records as in section 1. Non-streamed requests at concurrency 64, the two gateways
alternated within each repeat; the ratio is taken within a repeat, then the median.

On 2 cores the load generator, the upstream and the worker share the cores with the
gateway processes, so req/s cannot double here: the section also reports the gateway's
CPU cores in use (all its processes, the supervisor's tree) and req/s per gateway core,
which shows whether a second process costs anything per request. On a machine with a
core per gateway process to spare, req/s follows the cores.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.gateway import API_KEY, Target, _toml, measure
from benchmarks.procs import Processes, free_port, wait_ready
from benchmarks.report import Check, Section, Table, median, ratio

CONCURRENCY = 64
TOKEN = "bench-cluster-token"


def _gateways(procs: Processes, work: Path) -> tuple[str, list[Target]]:
    upstream = procs.fake_upstream()
    cport, wport = free_port(), free_port()
    controller = procs.corral("controller", ["controller", "--port", str(cport), "--cluster-token", TOKEN,
                                             "--log-level", "warning"], cport)
    wait_ready(controller, "/health", 60)
    config = work / "worker-processes.toml"
    config.write_text(_toml(upstream, None, api_key=False).split("\n\n", 1)[1])
    worker = procs.corral("worker", ["worker", "--controller", controller.url, "--port", str(wport),
                                     "--cluster-token", TOKEN, "--config", str(config), "--log-level", "warning"], wport)
    wait_ready(worker, "/health", 60)
    targets = []
    for n in (1, 2):
        port = free_port()
        gateway = procs.corral(f"gateway-{n}p", [
            "gateway", "--controller", controller.url, "--port", str(port), "--cluster-token", TOKEN,
            "--api-key", API_KEY, "--records", f"sqlite:///{work / f'records-{n}p.db'}", "--log-level", "warning",
            "--processes", str(n)], port)
        wait_ready(gateway, "/health/ready", 60)
        targets.append(Target(f"{n} process{'es' if n > 1 else ''}", f"{gateway.url}/v1", API_KEY, [gateway, worker]))
    time.sleep(1.0)  # both children of the 2-process gateway have their view of the registry
    return upstream.url, targets


def run(duration_s: float, repeats: int, work: Path, procs: Processes, say: Callable[[str], None]) -> Section:
    t0 = time.perf_counter()
    say("processes: a cluster and two gateways, --processes 1 and --processes 2...")
    upstream_url, targets = _gateways(procs, work)
    results: dict[str, list[dict[str, Any]]] = {t.name: [] for t in targets}
    for rep in range(repeats):
        for target in targets:
            r = measure(target, upstream_url, False, CONCURRENCY, duration_s)
            # gateway CPU seconds per wall second: the cores its processes used
            r["cores"] = (r["cpu_ms"][0] or 0) * (r["rps"] or 0) / 1000
            results[target.name].append(r)
            err = f"  {r['failed']} FAILED {r['errors']}" if r["failed"] else ""
            say(f"  rep {rep + 1}/{repeats}  {target.name:11s} c={CONCURRENCY} {r['rps'] or 0:8.0f} req/s  "
                f"gateway {r['cores']:.2f} cores, {r['cpu_ms'][0] or 0:.3f} ms/req{err}")
    one, two = (t.name for t in targets)

    def per_core(r: dict[str, Any]) -> float | None:
        return r["rps"] / r["cores"] if r["rps"] and r["cores"] else None

    def med(name: str, key: str | Callable[[dict[str, Any]], float | None]) -> float | None:
        return median([key(r) if callable(key) else r[key] for r in results[name]])

    speedup = median([ratio(a["rps"], b["rps"]) for a, b in zip(results[two], results[one])])
    per_core_ratio = median([ratio(per_core(a), per_core(b)) for a, b in zip(results[two], results[one])])
    rows = [[name, med(name, "rps"), med(name, "p50_ms"), med(name, "p99_ms"), med(name, "cores"),
             med(name, lambda r: r["cpu_ms"][0]), med(name, lambda r: r["cpu_ms"][1]), med(name, per_core),
             speedup if name == two else 1.0, sum(r["failed"] for r in results[name])]
            for name in (one, two)]
    table = Table(f"gateway processes, non-streamed c={CONCURRENCY} through a cluster (medians; x = within a repeat)",
                  ["gateway", "req/s", "p50 ms", "p99 ms", "gateway cores used", "gateway CPU ms/req",
                   "worker CPU ms/req", "req/s per gateway core", "x 1 process", "failed"], rows)
    checks = [
        Check("2 processes req/s, x one process", speedup, ">=", 1.7,
              note="2 cores shared with the load generator, the upstream and the worker"),
        Check("2 processes req/s per gateway core, x one process's", per_core_ratio, ">=", 0.9,
              note="what a core per process would give"),
    ]
    notes = [f"the load generator, the fake upstream, the worker and the gateway share {os.cpu_count() or 1} cores: the "
             "gateway's req/s is bounded by what the others leave it; req/s per gateway core is the scaling figure."]
    return Section("8. gateway processes", [table], checks, notes, {"cells": results}, time.perf_counter() - t0)

