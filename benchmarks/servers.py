"""Section 7: the HTTP floor, measured: the same ``corral start`` app, with the same hot
path (API key, routing, metrics, request records on), served by uvicorn with httptools
on uvloop (what Corral ships) and by granian (a Rust ASGI server), one after the other
within each repeat. Corral would switch only for a margin beyond this machine's noise:
the checks pass while granian's CPU per request stays above 0.9x uvicorn's (keeping
uvicorn is right); a MISS says granian now wins by more than 10%. (A third candidate of the issue, aiohttp's
own server for the hot routes, would mean a second copy of every front-end outside
Starlette; docs/performance.md gives the profile that bounds what it could save.)

The section also measures the streams' byte pass-through, in the same uvicorn process: a
second model on the same upstream with ``options.passthrough = false`` (every event
decoded into deltas and encoded again), on the streamed cell, against the first (events
forwarded as they came). One process serves both, so their CPU per stream is read off
the same heap, records file and metrics.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.gateway import API_KEY, MODEL, Target, measure
from benchmarks.procs import Processes, free_port, wait_ready
from benchmarks.report import Check, Section, Table, median, ratio

CELLS = [(False, 64), (True, 16)]
UVICORN, GRANIAN, TRANSLATED = "uvicorn (kept)", "granian", "uvicorn, no pass-through"
TRANSLATED_MODEL = f"{MODEL}-translated"


def _config(work: Path, upstream_url: str, name: str) -> Path:
    path = work / f"servers-{name}.toml"
    models = "".join(
        f'\n[[models]]\nname = "{model}"\nkind = "llm"\nengine = "openai-compatible"\nsource = "{upstream_url}/v1"\n'
        f'[models.options]\nupstream_model = "{MODEL}"\npassthrough = {flag}\n'
        for model, flag in ((MODEL, "true"), (TRANSLATED_MODEL, "false"))
    )
    path.write_text(
        f'[server]\nlog_level = "warning"\napi_keys = ["{API_KEY}"]\nrecords = "sqlite:///{work / f"records-{name}.db"}"\n'
        + models
    )
    return path


def run(duration_s: float, repeats: int, work: Path, procs: Processes, say: Callable[[str], None]) -> Section:
    t0 = time.perf_counter()
    if importlib.util.find_spec("granian") is None:
        return Section("7. HTTP floor", notes=["granian is not installed (it is in requirements.lock): skipped"])
    upstream = procs.fake_upstream()
    port = free_port()
    start = procs.corral("uvicorn", ["start", "--config", str(_config(work, upstream.url, "uvicorn")),
                                     "--port", str(port)], port)
    gport = free_port()
    procs.env["CORRAL_BENCH_CONFIG"] = str(_config(work, upstream.url, "granian"))
    procs.env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
    granian = procs.spawn("granian", [
        sys.executable, "-m", "granian", "--interface", "asgi", "--factory", "--host", "127.0.0.1", "--port", str(gport),
        "--workers", "1", "--runtime-mode", "st", "--runtime-threads", "1", "--loop", "uvloop", "--no-ws",
        "--log-level", "warning", "benchmarks.asgi_app:standalone",
    ], gport)
    for proc in (start, granian):
        wait_ready(proc, "/health/ready", 60)
    targets = [Target(UVICORN, f"{start.url}/v1", API_KEY, [start]),
               Target(TRANSLATED, f"{start.url}/v1", API_KEY, [start], streams_only=True, model=TRANSLATED_MODEL),
               Target(GRANIAN, f"{granian.url}/v1", API_KEY, [granian])]
    results: dict[tuple[str, bool, int], list[dict[str, Any]]] = {}
    for rep in range(repeats):
        for stream, c in CELLS:
            for target in targets:
                if target.streams_only and not stream:
                    continue
                r = measure(target, upstream.url, stream, c, duration_s)
                results.setdefault((target.name, stream, c), []).append(r)
                mode = "stream" if stream else "non-stream"
                say(f"  rep {rep + 1}/{repeats}  {target.name:15s} {mode:10s} c={c:<3d} {r['rps'] or 0:7.0f} req/s  "
                    f"CPU {r['cpu_ms'][0] or 0:.3f} ms/req  failed {r['failed']}")

    def med(name: str, stream: bool, c: int, key: str) -> float | None:
        return median([r[key][0] if key == "cpu_ms" else r[key] for r in results[(name, stream, c)]])

    def x_uvicorn(stream: bool, c: int, key: str, name: str = GRANIAN) -> float | None:
        """``name``'s figure over uvicorn's, within each repeat, then the median."""
        pairs = zip(results[(name, stream, c)], results[(UVICORN, stream, c)])
        return median([ratio(a[key][0], b[key][0]) if key == "cpu_ms" else ratio(a[key], b[key]) for a, b in pairs])

    rows = [[t.name, "stream" if s else "non-stream", c, med(t.name, s, c, "rps"), med(t.name, s, c, "p50_ms"),
             med(t.name, s, c, "cpu_ms"), sum(r["failed"] for r in results[(t.name, s, c)])]
            for s, c in CELLS for t in targets if s or not t.streams_only]
    table = Table("the same corral start app under two ASGI servers (medians; CPU of the server process and its "
                  "children per request)", ["server", "mode", "c", "req/s", "p50 ms", "CPU ms/req", "failed"], rows)
    checks = [
        Check("granian CPU per non-stream request c=64, x uvicorn's (keep uvicorn above 0.9)",
              x_uvicorn(False, 64, "cpu_ms"), ">=", 0.9),
        Check("granian CPU per stream c=16, x uvicorn's (keep uvicorn above 0.9)", x_uvicorn(True, 16, "cpu_ms"), ">=", 0.9),
        Check("CPU per stream c=16 without pass-through, x with it", x_uvicorn(True, 16, "cpu_ms", TRANSLATED), ">=", 1.0),
    ]
    notes = [f"req/s granian x uvicorn: non-stream c=64 {x_uvicorn(False, 64, 'rps') or 0:.2f}, "
             f"stream c=16 {x_uvicorn(True, 16, 'rps') or 0:.2f}.",
             "granian runs one worker, single-threaded runtime (its leanest mode here); the multi-threaded runtime "
             "measured worse on 2 cores."]
    return Section("7. HTTP floor", [table], checks, notes, {"cells": {f"{k[0]}|{k[1]}|{k[2]}": v for k, v in results.items()}},
                   time.perf_counter() - t0)
