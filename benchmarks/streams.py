"""Section 7: the gateway holding 5,000 open slow streams, and 10,000 queued requests.

**Streams.** A slow OpenAI-compatible upstream (aiohttp, in a process of its own: ``python
-m benchmarks.streams --upstream --port P``) answers a streamed chat with one SSE chunk
per second, ``max_tokens`` of them (``CHUNKS``), the first at once. ``corral start`` serves it as
an ``openai-compatible`` model (with an API key and request records, as users run it).
5,000 streaming clients (one aiohttp session, ``limit=0``, in this process) open over
``RAMP_S`` and read their streams to the end; the same clients are first run against
the upstream directly, which gives the harness's own time to first chunk. Reported: the
gateway's RSS with every stream open minus its RSS idle (after a warm-up) per stream,
errors, and time to first chunk (p50, p99) directly and through the gateway.

**Queue.** A cluster gateway (``--queue-limit 10000``) in front of a worker whose model
has ``max_concurrency = 1``; the upstream holds the first request until told to go, so
the next 10,000 wait in the gateway's queue. They are sent in order, in batches that each
wait until the gateway's ``corral_requests_queued`` has them all (so arrival order is
send order, mostly), then the upstream is released and records the order it is asked in:
the order of admission. That order is compared with the order of sending and with the
order of arrival at the gateway (the ``time`` of each request's record, taken when the
request came in, before it queued). Five more requests, beyond the limit, show what a
full queue answers.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import uvloop
from aiohttp import web

from benchmarks.procs import Proc, Processes, free_port, wait_ready
from benchmarks.report import Check, Section, Table
from corral.cli.serve import tune_gc

STREAMS = 5000
SOME = 1000  # a load the machine carries with room to spare
# one chunk a second; the streams outlast the ramp so that all 5,000 are open at once
CHUNKS = 25
# opening a stream costs the client, the upstream and the gateway about 1-2 ms of CPU each
# (two new connections, the request, the first chunk): 2 cores open about 400 a second
RAMP_S = 15.0
QUEUED = 10_000
API_KEY = "bench-key-0123456789"
TOKEN = "bench-cluster-token"
KiB = 1024


# -- the slow upstream (its own process) ------------------------------------------------

def _chunk(text: str, finish: str | None = None) -> bytes:
    delta = {"role": "assistant", "content": text} if not finish else {}
    body = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "slow",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return b"data: " + orjson.dumps(body) + b"\n\n"


def upstream_app() -> web.Application:
    order: list[str] = []  # what the held model was asked, in order
    release = asyncio.Event()

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        text = body["messages"][-1]["content"]
        if text.startswith("seq-"):
            order.append(text)
            await release.wait()
        n = int(body.get("max_tokens") or CHUNKS)
        if not body.get("stream"):
            return web.json_response({
                "id": "c", "object": "chat.completion", "created": 0, "model": "slow",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        for i in range(n):
            if i:
                await asyncio.sleep(1.0)
            await resp.write(_chunk("tok "))
        await resp.write(_chunk("", "stop") + b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "slow", "object": "model"}]})

    async def go(request: web.Request) -> web.Response:
        release.set()
        return web.json_response({"released": len(order)})

    async def seen(request: web.Request) -> web.Response:
        return web.json_response(order)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/health", models)
    app.router.add_post("/release", go)
    app.router.add_get("/order", seen)
    return app


# -- the clients ------------------------------------------------------------------------

def raise_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


@dataclass
class Gauge:
    """Streams open now (first chunk in, last not yet) and the most seen, with the
    measured server's RSS at that moment."""

    open: int = 0
    most: int = 0
    rss_at_most: float | None = None


async def _stream(session: aiohttp.ClientSession, url: str, headers: dict[str, str], chunks: int,
                  gauge: Gauge) -> dict[str, Any]:
    body = orjson.dumps({"model": "slow", "messages": [{"role": "user", "content": "hi"}], "stream": True,
                         "max_tokens": chunks})
    t0 = time.perf_counter()
    ttfc, got = None, 0
    try:
        async with session.post(url, data=body, headers=headers) as resp:
            if resp.status != 200:
                return {"error": f"HTTP {resp.status}"}
            try:
                async for line in resp.content:
                    if line.startswith(b"data: {") and b'"content":"tok' in line:
                        got += 1
                        if ttfc is None:
                            ttfc = time.perf_counter() - t0
                            gauge.open += 1
            finally:
                if ttfc is not None:
                    gauge.open -= 1
    except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
        return {"error": type(exc).__name__}
    if got != chunks:
        return {"error": f"{got} of {chunks} chunks"}
    return {"ttfc": ttfc}


async def _many(url: str, headers: dict[str, str], n: int, chunks: int, ramp_s: float,
                server: Proc | None = None) -> tuple[list[dict[str, Any]], Gauge]:
    """``n`` streams opened over ``ramp_s``, read to their end; while they run, the RSS
    of ``server`` is read whenever more streams are open than ever before."""
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=chunks + 120)
    gauge = Gauge()
    loop = asyncio.get_running_loop()

    async def watch() -> None:
        while True:
            await asyncio.sleep(0.25)
            if gauge.open > gauge.most:
                gauge.most = gauge.open
                if server is not None:
                    gauge.rss_at_most = await loop.run_in_executor(None, server.rss_mib)

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        watching = asyncio.create_task(watch())
        tasks = []
        start = time.perf_counter()
        for i in range(n):
            delay = start + ramp_s * i / n - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(_stream(session, url, headers, chunks, gauge)))
        results = await asyncio.gather(*tasks)
        watching.cancel()
        return results, gauge


def _pct(values: list[float], q: float) -> float | None:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] * 1000 if values else None


def _summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    ttfc = [r["ttfc"] for r in results if "ttfc" in r]
    errors: dict[str, int] = {}
    for r in results:
        if "error" in r:
            errors[r["error"]] = errors.get(r["error"], 0) + 1
    return {"ok": len(ttfc), "errors": errors, "ttfc_p50_ms": _pct(ttfc, 0.5), "ttfc_p99_ms": _pct(ttfc, 0.99)}


# -- the queue --------------------------------------------------------------------------

def _queued(gateway: str) -> float:
    import urllib.request

    with urllib.request.urlopen(f"{gateway}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("corral_requests_queued{"))


def _arrivals(db: Path, n: int) -> list[int]:
    """The requests in the order the gateway received them (their records' ``time``)."""
    import sqlite3

    deadline = time.monotonic() + 30
    while True:
        conn = sqlite3.connect(db, timeout=10)
        try:
            rows = conn.execute("SELECT request_id FROM corral_requests WHERE request_id LIKE 'seq-%' "
                                "AND request_id NOT LIKE 'seq--%' ORDER BY time").fetchall()
        except sqlite3.OperationalError:
            rows = []
        finally:
            conn.close()
        if len(rows) >= n or time.monotonic() > deadline:
            return [int(r[0][4:]) for r in rows]
        time.sleep(0.5)


def _inversions(order: list[int], reference: list[int]) -> tuple[int, int]:
    """Adjacent pairs of ``order`` that ``reference`` has the other way round, and the
    largest distance of one request from its place in ``reference``."""
    place = {seq: i for i, seq in enumerate(reference)}
    ranks = [place[s] for s in order if s in place]
    return (sum(1 for a, b in zip(ranks, ranks[1:]) if b < a),
            max((abs(i - r) for i, r in enumerate(ranks)), default=0))


async def _queue_order(gateway: str, upstream: str, n: int, proc: Proc) -> dict[str, Any]:
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=900)) as session:
        async def one(i: int) -> int:
            body = {"model": "held", "messages": [{"role": "user", "content": f"seq-{i}"}], "max_tokens": 1}
            headers = {"x-request-id": f"seq-{i}"}
            async with session.post(f"{gateway}/v1/chat/completions", json=body, headers=headers) as resp:
                await resp.read()
                return resp.status

        loop = asyncio.get_running_loop()
        tasks = [asyncio.create_task(one(0))]
        await asyncio.sleep(0.5)  # the held one is in flight
        batch = 200
        for start in range(1, n + 1, batch):
            for i in range(start, min(start + batch, n + 1)):
                tasks.append(asyncio.create_task(one(i)))
                await asyncio.sleep(0.0005)
            deadline = time.perf_counter() + 10
            while await loop.run_in_executor(None, _queued, gateway) < len(tasks) - 1 and time.perf_counter() < deadline:
                await asyncio.sleep(0.05)
        waiting = await loop.run_in_executor(None, _queued, gateway)
        queued_mib = proc.rss_mib()
        t0 = time.perf_counter()
        beyond = [await one(-1 - k) for k in range(5)]  # a full queue: refused at once
        refused_s = (time.perf_counter() - t0) / 5
        async with session.post(f"{upstream}/release") as resp:
            await resp.read()
        statuses = await asyncio.gather(*tasks)
        async with session.get(f"{upstream}/order") as resp:
            order = [int(s[4:]) for s in await resp.json() if not s.startswith("seq--")]
    inversions, displacement = _inversions(order, sorted(order))
    return {"waiting": waiting, "ok": sum(1 for s in statuses if s == 200), "admitted": order,
            "inversions": inversions, "max_displacement": displacement,
            "beyond_limit": beyond, "refusal_ms": refused_s * 1000, "queued_mib": queued_mib}


# -- the section ------------------------------------------------------------------------

def _start_upstream(procs: Processes) -> Proc:
    port = free_port()
    proc = procs.spawn("slow-upstream", [sys.executable, "-m", "benchmarks.streams", "--upstream", "--port", str(port)],
                       port)
    wait_ready(proc, "/health", 30)
    return proc


def _model(upstream: Proc, name: str, extra: str = "") -> str:
    return (f'[[models]]\nname = "{name}"\nkind = "llm"\nengine = "openai-compatible"\nsource = "{upstream.url}/v1"\n'
            f"{extra}[models.options]\nupstream_model = \"slow\"\nverify_on_start = false\n"
            "max_connections = 8192\nmax_queued = 16384\n")


def _client_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _path(name: str, url: str, headers: dict[str, str], n: int, proxy: Proc | None, upstream: Proc,
          loop: asyncio.Runner, say: Callable[[str], None]) -> dict[str, Any]:
    """One run of ``n`` streams; the CPU each process spent, in cores over the run."""
    say(f"  {name}: {n:,} streams...")
    cpu = [p.cpu_s() for p in (proxy, upstream) if p is not None] + [_client_cpu_s()]
    t0 = time.perf_counter()
    results, gauge = loop.run(_many(url, headers, n, CHUNKS, RAMP_S * n / STREAMS, proxy))
    wall = time.perf_counter() - t0
    after = [p.cpu_s() for p in (proxy, upstream) if p is not None] + [_client_cpu_s()]
    cores = [(b - a) / wall for a, b in zip(cpu, after)]
    out = {"name": name, "n": n, **_summary(results), "most_open": gauge.most, "rss_at_most": gauge.rss_at_most,
           "cores": cores, "proxy_ms_per_stream": (after[0] - cpu[0]) * 1000 / n if proxy is not None else None}
    say(f"    ok {out['ok']:,}, errors {out['errors'] or 0}, TTFC p50 {out['ttfc_p50_ms'] or 0:.1f} ms, p99 "
        f"{out['ttfc_p99_ms'] or 0:.1f} ms, most open {gauge.most:,}, cores "
        + " + ".join(f"{c:.2f}" for c in cores))
    return out


def run(duration_s: float, repeats: int, work: Path, procs: Processes, say: Callable[[str], None]) -> Section:
    del duration_s, repeats  # one run of each: the streams last their CHUNKS seconds
    threshold = gc.get_threshold()
    tune_gc()  # the clients' own collector pauses would count as the servers' (as the upstream's: it tunes too)
    try:
        return _run(work, procs, say)
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)


def _run(work: Path, procs: Processes, say: Callable[[str], None]) -> Section:
    t0 = time.perf_counter()
    fds = raise_fd_limit()
    say(f"streams: open-files limit {fds:,}; a slow upstream, the bare proxy, corral start; streams of {CHUNKS} "
        f"chunks, one a second...")
    upstream = _start_upstream(procs)
    bare = procs.bare_proxy(upstream)
    config = work / "streams.toml"
    config.write_text(f'[server]\nlog_level = "warning"\napi_keys = ["{API_KEY}"]\n'
                      f'records = "sqlite:///{work / "records-streams.db"}"\n\n' + _model(upstream, "slow"))
    port = free_port()
    start = procs.corral("corral-start", ["start", "--config", str(config), "--port", str(port)], port)
    wait_ready(start, "/health/ready", 60)
    headers = {"authorization": f"Bearer {API_KEY}"}
    chat = "/v1/chat/completions"
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as loop:
        loop.run(_many(start.url + chat, headers, 200, 1, 0.5))  # warm-up: what a stream imports and allocates
        time.sleep(1.0)
        idle = start.rss_mib()
        runs = [_path("direct to the upstream", upstream.url + chat, {}, STREAMS, None, upstream, loop, say),
                _path("bare aiohttp proxy", bare.url + chat, {}, STREAMS, bare, upstream, loop, say),
                _path("corral start", start.url + chat, headers, SOME, start, upstream, loop, say),
                _path("corral start", start.url + chat, headers, STREAMS, start, upstream, loop, say)]
        after = start.rss_mib()
    direct, _, some, full = runs
    per_stream_kib = (full["rss_at_most"] - idle) * 1024 / full["most_open"] if full["most_open"] else None
    say(f"  gateway RSS idle {idle:.1f} MiB, {full['most_open']:,} open {full['rss_at_most'] or 0:.1f} MiB "
        f"({per_stream_kib or 0:.1f} KiB/stream), after {after:.1f} MiB")

    say(f"streams: the queue, {QUEUED:,} requests waiting for a model at max_concurrency 1...")
    queue = _queue_run(procs, work, upstream)
    arrival = queue["vs_arrival"]
    say(f"  {queue['waiting']:.0f} waiting; vs send order {queue['inversions']} inversions; vs arrival order "
        f"{arrival[0] if arrival else '-'}; beyond the limit: {queue['beyond_limit']}")

    def added(r: dict[str, Any]) -> float | None:
        return r["ttfc_p99_ms"] - direct["ttfc_p99_ms"] if r["ttfc_p99_ms"] and direct["ttfc_p99_ms"] else None

    rows = []
    for r in runs:
        cores = r["cores"]
        rows.append([r["name"], r["n"], r["ok"], _errors(r), r["most_open"], r["ttfc_p50_ms"], r["ttfc_p99_ms"],
                     added(r) if r is not direct else None, r["proxy_ms_per_stream"],
                     cores[0] if len(cores) == 3 else None, cores[-2], cores[-1]])
    streams_table = Table(
        f"concurrent streams of {CHUNKS} chunks, one a second, opened at {STREAMS / RAMP_S:.0f} a second",
        ["path", "streams", "ok", "errors", "most open at once", "TTFC p50 ms", "TTFC p99 ms",
         "added TTFC p99 ms", "proxy CPU ms/stream", "proxy cores", "upstream cores", "clients cores"], rows)
    memory = Table("gateway memory (corral start, RSS)",
                   ["idle (after warm-up)", f"{full['most_open']:,} streams open", "KiB per open stream",
                    "after the streams"],
                   [[f"{idle:.1f} MiB", f"{full['rss_at_most'] or 0:.1f} MiB", per_stream_kib, f"{after:.1f} MiB"]])
    queue_table = Table(
        f"admission queue: {QUEUED:,} requests waiting (cluster gateway --queue-limit {QUEUED}, max_concurrency 1)",
        ["waiting (gauge)", "answered 200", "admitted", "inversions vs send order (max displacement)",
         "inversions vs arrival at the gateway (max displacement)", "beyond the limit", "refusal ms",
         "gateway RSS idle -> queued MiB"],
        [[queue["waiting"], queue["ok"], queue["admitted"], f"{queue['inversions']} ({queue['max_displacement']})",
          f"{arrival[0]} ({arrival[1]})" if arrival else "-", " ".join(map(str, queue["beyond_limit"])),
          queue["refusal_ms"], f"{queue['idle_mib']:.1f} -> {queue['queued_mib']:.1f}"]])
    errors = full["n"] - full["ok"]
    checks = [
        Check("gateway RSS per open stream", per_stream_kib, "<=", 32, "KiB",
              note=f"at {full['most_open']:,} open"),
        Check(f"stream errors at {STREAMS:,}", float(errors), "<=", 0),
        Check(f"added TTFC p99 at {STREAMS:,} streams (minus direct)", added(full), "<", 50, "ms"),
        Check(f"added TTFC p99 at {SOME:,} streams (minus direct)", added(some), "<", 50, "ms"),
        Check("queued requests admitted out of arrival order", float(arrival[0]) if arrival else None, "<=", 0,
              note="inversions"),
    ]
    notes = [f"open-files limit of the benchmark process: {fds:,}; the gateway holds two descriptors per open stream "
             "(the client's and the upstream's), raised to its hard limit at start.",
             "cores: CPU seconds per wall second of the proxy, the upstream and this process's clients over each run; "
             "on 2 cores their sum is the machine's load.",
             f"a full queue answers 429 (with Retry-After) in {queue['refusal_ms']:.1f} ms; a waiting request gives up "
             "after --queue-timeout (30 s by default; 300 s here)."]
    raw = {"runs": runs, "idle_mib": idle, "after_mib": after, "queue": queue}
    return Section("9. open streams and the queue", [streams_table, memory, queue_table], checks, notes, raw,
                   time.perf_counter() - t0)


def _queue_run(procs: Processes, work: Path, upstream: Proc) -> dict[str, Any]:
    cport, wport, gport = free_port(), free_port(), free_port()
    controller = procs.corral("controller", ["controller", "--port", str(cport), "--cluster-token", TOKEN,
                                             "--log-level", "warning"], cport)
    wait_ready(controller, "/health", 60)
    config = work / "held.toml"
    config.write_text(_model(upstream, "held", "max_concurrency = 1\n"))
    procs.corral("worker", ["worker", "--controller", controller.url, "--port", str(wport), "--cluster-token", TOKEN,
                            "--config", str(config), "--log-level", "warning"], wport)
    gateway = procs.corral("gateway", ["gateway", "--controller", controller.url, "--port", str(gport),
                                       "--cluster-token", TOKEN, "--queue-limit", str(QUEUED), "--queue-timeout", "300",
                                       "--records", f"sqlite:///{work / 'records-queue.db'}",
                                       "--log-level", "warning"], gport)
    wait_ready(gateway, "/health/ready", 60)
    idle = gateway.rss_mib()
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as loop:
        result = loop.run(_queue_order(gateway.url, upstream.url, QUEUED, gateway))
    arrived = _arrivals(work / "records-queue.db", QUEUED + 1)
    result["arrived"] = len(arrived)
    result["vs_arrival"] = _inversions(result["admitted"], arrived) if len(arrived) == QUEUED + 1 else None
    result["idle_mib"] = idle
    result["admitted"] = len(result["admitted"])
    return result


def _errors(summary: dict[str, Any]) -> str:
    return ", ".join(f"{k} x{v}" for k, v in summary["errors"].items()) or "0"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="the slow upstream of the streams benchmark")
    parser.add_argument("--upstream", action="store_true", required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    raise_fd_limit()
    tune_gc()
    web.run_app(upstream_app(), host="127.0.0.1", port=args.port, access_log=None, print=None,
                loop=uvloop.new_event_loop(), backlog=4096)
