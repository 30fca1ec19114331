"""Section 5: autoscaling, 0 -> up -> down -> 0, on a real ``corral start``.

One ``corral start`` serves the tiny random-weight Llama (transformers engine) under an
autoscale policy (``POLICY``: min 0, max 3, two requests in flight per instance, up after
2 s, down after 3 s, to zero after 5 s idle). Each cycle of the scenario:

1. **cold start**: one request while the model is at zero, timed from sending it to its
   answer (the gateway holds it while the autoscaler wakes the model);
2. **overload**: ``OVERLOAD_USERS`` closed-loop clients (four instances' worth, capped at
   three); timed from their first request to the first request a new instance serves
   (each answer names its instance in ``x-corral-instance``; a request is routed when it
   arrives, so the send time of the first one a new instance answers is when it started
   taking traffic). Target: at most ``upscale_delay_s`` + the new instance's load time
   (``corral_model_load_seconds``) + 1 s;
3. **light load**: one client until the model is down to one instance (drains with
   traffic on), then nothing until it is back at zero.

Every request of every phase is counted: target 0 lost. For scale, the model's plain
load time is measured first: a ``corral start`` of the same model without a policy,
launch to ``/health/ready``, and its instance's own load time (twice: the first builds
the demo model in the suite's fresh cache). The decisions come from
the audit log. The first cycle's cold start includes the engine's imports (torch), since
a process with every model at zero has loaded no engine yet; later cycles' do not.
"""

from __future__ import annotations

import asyncio
import math
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from benchmarks.procs import Proc, Processes, free_port, wait_ready
from benchmarks.report import Check, Section, Table

MODEL = "chat"
POLICY = {"min_replicas": 0, "max_replicas": 3, "target_in_flight": 2, "upscale_delay_s": 2,
          "downscale_delay_s": 3, "downscale_to_zero_delay_s": 5, "cold_start_timeout_s": 120}
OVERLOAD_USERS = 8
MAX_TOKENS = 16
MODEL_TOML = f"""
[[models]]
name = "{MODEL}"
kind = "llm"
engine = "transformers"
source = "demo:tiny-llama"
"""
_LOAD_SECONDS = re.compile(r'^corral_model_load_seconds\{(?P<labels>[^}]*)\} (?P<value>\S+)$', re.M)


@dataclass(frozen=True)
class Sample:
    sent: float  # unix seconds, as the audit log's
    done: float
    status: int  # 0: no HTTP answer (a connection or read error)
    instance: str | None
    error: str = ""


@dataclass
class Clients:
    """Closed-loop clients on one ``httpx.AsyncClient``; ``set_users`` changes how many
    run; every request is kept as a ``Sample``."""

    url: str
    samples: list[Sample] = field(default_factory=list)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _users: int = 0
    _http: httpx.AsyncClient | None = None

    async def __aenter__(self) -> Clients:
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
        self._http = httpx.AsyncClient(base_url=self.url, timeout=180, limits=limits)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.set_users(0)
        assert self._http is not None
        await self._http.aclose()

    async def one(self, user: int = 0) -> Sample:
        assert self._http is not None
        body = {"model": MODEL, "prompt": f"user {user} says hello", "max_tokens": MAX_TOKENS, "ignore_eos": True}
        sent = time.time()
        try:
            resp = await self._http.post("/v1/completions", json=body)
            sample = Sample(sent, time.time(), resp.status_code, resp.headers.get("x-corral-instance"),
                            "" if resp.status_code == 200 else resp.text[:200])
        except httpx.HTTPError as exc:
            sample = Sample(sent, time.time(), 0, None, f"{type(exc).__name__}: {exc}"[:200])
        self.samples.append(sample)
        return sample

    async def _loop(self, user: int) -> None:
        while user < self._users:
            await self.one(user)

    async def set_users(self, users: int) -> None:
        """Start missing clients; those beyond ``users`` stop after their request in
        flight (none is cut: a cut request would be the client's loss, not the server's)."""
        self._users = users
        while len(self._tasks) < users:
            self._tasks.append(asyncio.create_task(self._loop(len(self._tasks))))
        leaving, self._tasks = self._tasks[users:], self._tasks[:users]
        await asyncio.gather(*leaving)


def _load_seconds(url: str) -> dict[str, float]:
    """Instance id -> ``corral_model_load_seconds`` of the model's instances."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    out = {}
    for m in _LOAD_SECONDS.finditer(text):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m["labels"]))
        if labels.get("model") == MODEL:
            out[labels["instance_id"]] = float(m["value"])
    return out


def _plain_load(work: Path, procs: Processes) -> tuple[float, float | None]:
    """A ``corral start`` of the same model without a policy: launch to ready, and the
    instance's own load time."""
    config = work / "scaling-plain.toml"
    config.write_text('[server]\nlog_level = "warning"\n' + MODEL_TOML)
    port = free_port()
    proc = procs.corral("corral-start-plain", ["start", "--config", str(config), "--port", str(port)], port)
    ready_s = wait_ready(proc, "/health/ready", 600)
    loads = _load_seconds(proc.url)
    proc.stop()
    procs.started.remove(proc)
    return ready_s, max(loads.values()) if loads else None


PLAIN_RUNS = ("first, in a fresh cache (builds the demo model)", "again (cached)")


async def _model(http: httpx.AsyncClient) -> dict[str, Any]:
    resp = await http.get(f"/admin/v1/models/{MODEL}")
    resp.raise_for_status()
    return resp.json()["model"]  # type: ignore[no-any-return]


async def _until(http: httpx.AsyncClient, check: Callable[[dict[str, Any]], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check(await _model(http)):
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(0.1)


@dataclass
class Cycle:
    cold_s: float
    cold_ok: bool
    overload_at: float
    new_traffic_at: float | None
    new_instances: list[str]
    new_load_s: float | None  # the slowest new instance's corral_model_load_seconds

    @property
    def to_traffic_s(self) -> float | None:
        return None if self.new_traffic_at is None else self.new_traffic_at - self.overload_at


async def _cycle(server: Proc, clients: Clients, hold_s: float, say: Callable[[str], None]) -> Cycle:
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        await _until(http, lambda m: m["replicas"] == 0 and not m["instances"], 120, "the model at zero")
        cold = await clients.one()
        cold_s = cold.done - cold.sent
        say(f"  cold start from zero: {cold_s:.2f} s (HTTP {cold.status})")
        before = {s.instance for s in clients.samples if s.instance}

        overload_at = time.time()
        await clients.set_users(OVERLOAD_USERS)
        deadline = time.monotonic() + 120
        first_new: Sample | None = None
        while first_new is None and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            fresh = [s for s in clients.samples if s.sent >= overload_at and s.instance and s.instance not in before]
            first_new = min(fresh, key=lambda s: s.sent) if fresh else None
        await asyncio.sleep(hold_s)  # sustained: every new instance gets its share
        loads = _load_seconds(server.url)
        new = sorted({s.instance for s in clients.samples if s.sent >= overload_at and s.instance} - before)  # type: ignore[type-var]
        new_load = max((loads[i] for i in new if i in loads), default=None)
        if first_new is not None:
            say(f"  overload to a new instance taking traffic: {first_new.sent - overload_at:.2f} s "
                f"({len(new)} new instance(s), load {new_load or 0:.2f} s)")

        await clients.set_users(1)  # light load while it drains back to one
        await _until(http, lambda m: m["replicas"] == 1 and len(m["instances"]) == 1, 120, "the model back at one")
        await clients.set_users(0)
        await _until(http, lambda m: m["replicas"] == 0 and not m["instances"], 120, "the model back at zero")
    return Cycle(cold_s, cold.status == 200, overload_at, first_new.sent if first_new else None, new, new_load)


def _timeline(url: str, since: float) -> list[list[Any]]:
    events = httpx.get(f"{url}/admin/v1/audit", params={"limit": 1000}, timeout=10).json()["events"]
    rows = []
    for e in reversed(events):  # oldest first
        if e["action"] != "scale" or e["target"] != MODEL:
            continue
        d = e["detail"]
        facts = ", ".join(f"{k}={d[k]}" for k in ("demand", "waiting", "demand_mean", "demand_max", "idle_s") if k in d)
        rows.append([round(e["time"] - since, 1), f"{d.get('from')} -> {d.get('to')}", d.get("reason"), facts, e["actor"]])
    return rows


def run(duration_s: float, repeats: int, work: Path, procs: Processes, say: Callable[[str], None]) -> Section:
    t0 = time.perf_counter()
    say("scaling: the model's plain load time (corral start without a policy, twice)...")
    plain = [_plain_load(work, procs) for _ in PLAIN_RUNS]
    for what, (ready_s, load_s) in zip(PLAIN_RUNS, plain):
        say(f"  plain corral start, {what}: ready in {ready_s:.1f} s (its instance's load {load_s or 0:.2f} s)")

    config = work / "scaling.toml"
    policy = "\n".join(f"{k} = {v}" for k, v in POLICY.items())
    config.write_text(f'[server]\nlog_level = "warning"\n{MODEL_TOML}\n[models.autoscale]\n{policy}\n')
    port = free_port()
    server = procs.corral("corral-start-scaling", ["start", "--config", str(config), "--port", str(port)], port)
    wait_ready(server, "/health/ready", 120)
    since = time.time()
    hold_s = max(3.0, 2 * duration_s)
    cycles = []

    async def scenario() -> list[Sample]:
        async with Clients(server.url) as clients:
            for i in range(repeats):
                say(f"scaling: cycle {i + 1}/{repeats}: 0 -> up -> down -> 0")
                cycles.append(await _cycle(server, clients, hold_s, say))
            return clients.samples

    samples = asyncio.run(scenario())
    lost = [s for s in samples if s.status != 200]
    timeline = _timeline(server.url, since)

    cycle_rows: list[list[Any]] = [
        [i + 1, c.cold_s, c.to_traffic_s, c.new_load_s, len(c.new_instances),
         None if c.to_traffic_s is None or c.new_load_s is None
         else c.to_traffic_s - POLICY["upscale_delay_s"] - c.new_load_s]
        for i, c in enumerate(cycles)
    ]
    tables = [
        Table("the model's plain load time, for scale (corral start of the same model, no policy)",
              ["run", "launch to /health/ready s", "its instance's load s (corral_model_load_seconds)"],
              [[what, ready_s, load_s] for what, (ready_s, load_s) in zip(PLAIN_RUNS, plain)]),
        Table(f"per cycle (policy: target_in_flight {POLICY['target_in_flight']}, upscale_delay_s "
              f"{POLICY['upscale_delay_s']}, {OVERLOAD_USERS} clients of {MAX_TOKENS} tokens)",
              ["cycle", "cold start s", "overload -> new instance serving s", "new instance load s", "added",
               "beyond delay + load s"], cycle_rows),
        Table("decisions (audit log; time from the server's start)", ["t s", "replicas", "reason", "signal", "actor"],
              timeline),
        Table("requests", ["phase", "sent", "failed"],
              [["cold starts", len(cycles), sum(1 for c in cycles if not c.cold_ok)],
               ["all (cold, overload, light load)", len(samples), len(lost)]]),
    ]
    worst = max(cycles, key=lambda c: (c.to_traffic_s or 1e9) - (c.new_load_s or 0)) if cycles else None
    limit = POLICY["upscale_delay_s"] + (worst.new_load_s or 0) + 1 if worst else 0
    never = worst is not None and worst.to_traffic_s is None  # no new instance took traffic: the worst case, a MISS
    checks = [
        Check("overload to a new instance taking traffic (worst cycle)",
              (math.inf if never else worst.to_traffic_s) if worst else None, "<=", limit, "s",
              "no new instance took traffic in a cycle" if never else
              f"upscale_delay_s {POLICY['upscale_delay_s']} + its load {worst.new_load_s or 0:.2f} s + 1 s"
              if worst else ""),
        Check("requests lost, 0 -> up -> down -> 0", len(lost), "<=", 0),
    ]
    notes = [
        f"cold start of cycle 1 includes the transformers engine's imports (torch): {cycles[0].cold_s:.1f} s"
        + (f"; later cycles (imports done): median {statistics.median(c.cold_s for c in cycles[1:]):.2f} s"
           if len(cycles) > 1 else "") if cycles else "no cycle ran",
        *(f"lost: HTTP {s.status} {s.error}" for s in lost[:5]),
    ]
    raw = {"policy": POLICY, "plain": [{"run": w, "ready_s": r, "load_s": ld} for w, (r, ld) in zip(PLAIN_RUNS, plain)],
           "cycles": [{**c.__dict__, "to_traffic_s": c.to_traffic_s} for c in cycles], "timeline": timeline,
           "requests": len(samples), "lost": [s.__dict__ for s in lost]}
    return Section("5. scaling", tables, checks, notes, raw, time.perf_counter() - t0)
