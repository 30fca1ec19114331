"""Faults with real processes under load: a worker frozen (SIGSTOP, then SIGCONT) and a
worker killed (SIGKILL), in one cluster on loopback shared by the module (controller, two
workers, a gateway recording every request to SQLite).

The workers are light: openai-compatible engines in front of the benchmark's fake
upstream (``corral.bench.fake_openai``, 10 ms between tokens), so a request of 30 tokens
is in flight for about a third of a second and a kill always catches some.

What each test holds the cluster to: every non-streamed request gets its 200 (one in
flight on the faulty worker is retried on the survivor: its record says ``retries`` 1
and its trace has the lost attempt); a stream in flight there gets an ``error`` event
then ``[DONE]`` within the documented bound; the faulty worker's instance leaves the
routing table within its lease; and the records hold every request exactly once, each
200 as ``ok`` on the instance that answered, matching the gateway's metrics.

The tests run in file order and leave the cluster whole: SIGCONT resumes the frozen
worker, and the killed one is started again on its port."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.cluster.harness import Cluster, wait_for_instances, worker_status
from tests.integration.cluster.recorded import metric, record, trace_spans
from tests.integration.cluster.traffic import FAKE_TOKEN, Load, check_recorded, fake_upstream, light_config, ok_total
from tests.integration.servers import Server

pytestmark = pytest.mark.integration

WORKER_TIMEOUT_S = 6.0  # the gateway's --worker-timeout (longest silence of a worker's answer)
LEASE_TTL_S = 3.0  # the harness's --lease-ttl
TOKENS = 30  # per load request: ~0.3 s at the fake's 10 ms a token
MODEL = "chat"


@pytest.fixture(scope="module")
def upstream(corral_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with fake_upstream(corral_home, tmp_path_factory.mktemp("fake-upstream") / "fake.log", delay_ms=10) as url:
        yield url


@dataclass
class Env:
    cluster: Cluster
    join: list[str]
    config: Path
    gateway: Server
    survivor: Server
    victim: Server
    db: Path
    records: str
    home: Path

    def instance(self, worker: Server) -> str:
        (found,) = [i["id"] for i in worker_status(worker)["instances"] if i["model"] == MODEL]
        return found


@pytest.fixture(scope="module")
def env(upstream: str, corral_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    logs = tmp_path_factory.mktemp("faults")
    config = light_config(logs / "worker.toml", upstream, MODEL)
    db = logs / "records.db"
    cluster = Cluster(corral_home, logs)
    try:
        join = ["--controller", cluster.controller().url]
        survivor, victim = cluster.worker(join, config), cluster.worker(join, config)
        gateway = cluster.gateway(
            join, ["--records", f"sqlite:///{db}", "--capture-text", "--worker-timeout", str(WORKER_TIMEOUT_S)]
        )
        wait_for_instances(gateway, MODEL, 2)
        yield Env(cluster, join, config, gateway, survivor, victim, db, f"sqlite:///{db}", corral_home)
    finally:
        cluster.stop()


class Stream:
    """A streamed chat kept open; ``events`` reads it to its end."""

    def __init__(self, url: str, request_id: str) -> None:
        self.request_id = request_id
        body = {"model": MODEL, "messages": [{"role": "user", "content": "a long story"}], "max_tokens": 3000,
                "stream": True}
        self._client = httpx.Client(timeout=60)
        self._cm = self._client.stream("POST", f"{url}/v1/chat/completions", json=body, headers={"x-request-id": request_id})
        self.response = self._cm.__enter__()
        self.instance = self.response.headers["x-corral-instance"]

    def events(self) -> list[Any]:
        out: list[Any] = []
        for line in self.response.iter_lines():
            if line.startswith("data: "):
                out.append("[DONE]" if line == "data: [DONE]" else json.loads(line[6:]))
        return out

    def close(self) -> None:
        self._cm.__exit__(None, None, None)
        self._client.close()


def stream_to(env: Env, instance: str, prefix: str) -> Stream:
    """Open streams until one lands on ``instance`` (round robin); close the others."""
    for n in range(30):
        stream = Stream(env.gateway.url, f"{prefix}-{n}")
        if stream.instance == instance:
            return stream
        stream.close()
    raise AssertionError(f"no stream landed on {instance}")


def wait_in_flight(worker: Server, count: int, timeout: float = 20) -> None:
    """Until the worker serves at least ``count`` requests at once."""
    deadline = time.monotonic() + timeout
    while sum(i["requests_active"] for i in worker_status(worker)["instances"]) < count:
        assert time.monotonic() < deadline, "the load never reached the worker"
        time.sleep(0.02)


def gone_from_routing(env: Env, instance: str, timeout: float) -> float:
    """Seconds until the gateway's routing table no longer lists ``instance``."""
    started = time.monotonic()
    while any(i["id"] == instance for i in httpx.get(f"{env.gateway.url}/health/ready", timeout=5).json()
              .get("models", {}).get(MODEL, {"instances": []})["instances"]):
        assert time.monotonic() - started < timeout, f"{instance} still routed after {timeout} s"
        time.sleep(0.05)
    return time.monotonic() - started


def check_records(env: Env, load: Load, faulty: str, ok_before: float, retries_before: float) -> list[dict[str, Any]]:
    """The load exactly accounted for (``check_recorded``); a retried request's lost
    attempt is on ``faulty``; the retries metric agrees with the records. The retried rows."""
    recorded = check_recorded(env.db, env.gateway.url, load, ok_before, text=FAKE_TOKEN * TOKENS)  # the winner's only
    retried = [r for r in recorded if r["retries"]]
    slowest = max(s.seconds for s in load.sent)
    print(f"\n{load.prefix}: {len(load.sent)} requests, all 200; {len(retried)} retried; slowest {slowest:.2f} s")
    for row in retried[:3]:
        lost = [s for s in trace_spans(env.records, env.home, row["trace_id"]) if s["name"] == "corral.attempt"]
        assert lost and all(s["attributes"]["corral.instance_id"] == faulty for s in lost), lost
    assert metric(env.gateway.url, "corral_retries_total", model=MODEL) - retries_before == sum(r["retries"] for r in recorded)
    return retried


def check_failed_stream(env: Env, stream: Stream, faulty: str) -> None:
    """The stream cut on the faulty worker is recorded once, as the error it got."""
    row = record(env.db, stream.request_id)
    assert (row["outcome"], row["instance_id"], row["retries"]) == ("error", faulty, 0), row
    assert "lost the instance" in row["error"], row


def counters(env: Env) -> tuple[float, float]:
    return ok_total(env.gateway.url, MODEL), metric(env.gateway.url, "corral_retries_total", model=MODEL)


def test_a_frozen_worker_under_load(env: Env) -> None:
    victim = env.instance(env.victim)
    ok_before, retries_before = counters(env)
    load = Load(env.gateway.url, MODEL, "stop", TOKENS)
    try:
        stream = stream_to(env, victim, "stopstream")
        wait_in_flight(env.victim, 3)  # the stream and non-streamed requests of the load
        os.kill(env.victim.process.pid, signal.SIGSTOP)
        frozen_at = time.monotonic()
        try:
            # a frozen worker renews nothing: its lease runs out (the ttl after its last
            # renewal, then the registry's sweep and the gateway's watch)
            gone = gone_from_routing(env, victim, LEASE_TTL_S + 5)
            assert gone <= LEASE_TTL_S + 2, gone
            print(f"\nfrozen worker left the routing table after {gone:.2f} s")
            events = stream.events()  # must end: the gateway bounds a worker's silence
            waited = time.monotonic() - frozen_at
            stream.close()
            assert events[-1] == "[DONE]" and "error" in events[-2], events[-3:]
            assert events[-2]["error"]["code"] == "instance_lost"
            assert WORKER_TIMEOUT_S - 1 <= waited <= WORKER_TIMEOUT_S + 5, waited
            print(f"stream on the frozen worker ended after {waited:.2f} s")
            check_failed_stream(env, stream, victim)
            time.sleep(1)  # the survivor serves alone
        finally:
            os.kill(env.victim.process.pid, signal.SIGCONT)
        wait_for_instances(env.gateway, MODEL, 2, timeout=30)  # it renews its lease again
        resumed, seen = time.monotonic(), len(load.sent)
        while not any(s.instance == victim for s in load.sent[seen:]) and time.monotonic() - resumed < 15:
            time.sleep(0.1)
    finally:
        sent = load.stop()
    retried = check_records(env, load, victim, ok_before, retries_before)
    # a request caught on the frozen worker waits out the silence bound, then is retried
    assert max(s.seconds for s in sent) <= WORKER_TIMEOUT_S + 5
    assert retried, "no request was caught in flight on the frozen worker"
    assert any(s.instance == victim for s in sent[seen:]), "traffic never came back to the resumed worker"


def test_a_killed_worker_under_load(env: Env) -> None:
    victim = env.instance(env.victim)
    ok_before, retries_before = counters(env)
    load = Load(env.gateway.url, MODEL, "kill", TOKENS)
    try:
        stream = stream_to(env, victim, "killstream")
        wait_in_flight(env.victim, 3)
        env.victim.process.kill()
        killed_at = time.monotonic()
        events = stream.events()  # the connection is reset: the stream ends at once
        ended = time.monotonic() - killed_at
        stream.close()
        assert events[-1] == "[DONE]" and "error" in events[-2], events[-3:]
        assert ended < 5, ended
        check_failed_stream(env, stream, victim)
        gone_from_routing(env, victim, LEASE_TTL_S + 5)
        assert time.monotonic() - killed_at <= LEASE_TTL_S + 3  # its lease ran out
        print(f"\nkilled worker: stream ended after {ended:.2f} s, left the routing table after {time.monotonic() - killed_at:.2f} s")
        time.sleep(1)  # the survivor serves alone
    finally:
        sent = load.stop()
    retried = check_records(env, load, victim, ok_before, retries_before)
    assert max(s.seconds for s in sent) < 5  # refused connections are retried at once
    assert retried, "no request was caught in flight on the killed worker"
    assert {s.instance for s in sent if s.request_id in {r["request_id"] for r in retried}} == {env.instance(env.survivor)}

    # the cluster is whole again for whatever runs next: the worker restarts on its port
    env.victim = env.cluster.worker(env.join, env.config, port=env.victim.port)
    wait_for_instances(env.gateway, MODEL, 2)
    revived = env.instance(env.victim)
    served = {httpx.post(f"{env.gateway.url}/v1/chat/completions", timeout=30,
                         json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
                         ).headers["x-corral-instance"] for _ in range(4)}
    assert revived in served  # traffic returns to the restarted worker
