"""Cluster behaviour with real processes: balancing policies, cancellation, backpressure,
tokens and graceful drain (a worker killed or frozen under load: ``test_faults.py``)."""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.integration.cluster.harness import (
    ADMIN_TOKEN,
    CLUSTER_TOKEN,
    Cluster,
    ready_instances,
    wait_for_instances,
    worker_config,
    worker_status,
)
from tests.integration.servers import Server, run_corral

MODELS = [
    {"name": "rr", "routing": "round_robin"},
    {"name": "sess", "routing": "session"},
    {"name": "lr", "routing": "least_requests"},
    {"name": "one", "max_concurrency": 1},
]
HI = [{"role": "user", "content": "hi"}]


class Env:
    def __init__(self, cluster: Cluster, controller: Server, workers: list[Server], gateway: Server, config: Path):
        self.cluster, self.controller, self.workers, self.gateway, self.config = (
            cluster, controller, workers, gateway, config,
        )
        self.join = ["--controller", controller.url]


@pytest.fixture(scope="module")
def env(corral_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    logs = tmp_path_factory.mktemp("cluster-logs")
    cluster = Cluster(corral_home, logs)
    try:
        controller = cluster.controller()
        config = worker_config(logs, "worker", MODELS)
        join = ["--controller", controller.url]
        workers = [cluster.worker(join, config, wait=False) for _ in range(2)]
        gateway = cluster.gateway(join)
        for m in MODELS:
            wait_for_instances(gateway, m["name"], 2, timeout=120)
        yield Env(cluster, controller, workers, gateway, config)
    finally:
        cluster.stop()


def chat(gateway: Server, model: str, **extra: Any) -> httpx.Response:
    body = {"model": model, "messages": HI, "max_tokens": 4, **extra}
    headers = extra.pop("headers", None) if "headers" in extra else None
    return httpx.post(f"{gateway.url}/v1/chat/completions", json=body, headers=headers, timeout=60)


def test_round_robin_alternates_between_workers(env: Env) -> None:
    served = [chat(env.gateway, "rr").headers["x-corral-instance"] for _ in range(8)]
    counts = Counter(served)
    assert len(counts) == 2 and set(counts.values()) == {4}
    assert all(a != b for a, b in zip(served, served[1:]))


def test_session_affinity_keeps_a_session_on_one_instance(env: Env) -> None:
    def served(session: str) -> set[str]:
        return {
            httpx.post(
                f"{env.gateway.url}/v1/chat/completions",
                json={"model": "sess", "messages": HI, "max_tokens": 2},
                headers={"x-session-id": session},
                timeout=60,
            ).headers["x-corral-instance"]
            for _ in range(5)
        }

    sessions = {f"user-{i}": served(f"user-{i}") for i in range(8)}
    assert all(len(s) == 1 for s in sessions.values())  # sticky
    assert len(set().union(*sessions.values())) == 2  # and different sessions use both instances
    by_user = {chat(env.gateway, "sess", user="alice").headers["x-corral-instance"] for _ in range(4)}
    assert len(by_user) == 1  # the request's `user` field works as the key too


def _open_stream(gateway: Server, model: str, max_tokens: int = 3000) -> tuple[httpx.Client, Any, Iterator[str]]:
    client = httpx.Client(timeout=60)
    body = {"model": model, "messages": HI, "max_tokens": max_tokens, "stream": True, "ignore_eos": True}
    ctx = client.stream("POST", f"{gateway.url}/v1/chat/completions", json=body)
    resp = ctx.__enter__()
    lines = resp.iter_lines()
    next(lines)  # the first chunk: the instance is generating
    return client, (ctx, resp), lines


def _close_stream(stream: tuple[httpx.Client, Any, Iterator[str]]) -> None:
    client, (ctx, _), _ = stream
    ctx.__exit__(None, None, None)
    client.close()


def test_least_requests_evens_in_flight(env: Env) -> None:
    streams = [_open_stream(env.gateway, "lr") for _ in range(4)]
    try:
        served = Counter(s[1][1].headers["x-corral-instance"] for s in streams)
        assert sorted(served.values()) == [2, 2]
        assert sorted(i["in_flight"] for i in ready_instances(env.gateway, "lr")) == [2, 2]
    finally:
        for s in streams:
            _close_stream(s)


def _rr_counts(env: Env, key: str) -> int:
    return sum(i[key] for w in env.workers for i in worker_status(w)["instances"] if i["model"] == "rr")


def test_client_disconnect_at_gateway_cancels_on_worker(env: Env) -> None:
    before = _rr_counts(env, "cancelled_total")
    stream = _open_stream(env.gateway, "rr")
    assert _rr_counts(env, "in_flight") == 1
    _close_stream(stream)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _rr_counts(env, "cancelled_total") == before:
        time.sleep(0.05)
    assert _rr_counts(env, "cancelled_total") == before + 1
    assert _rr_counts(env, "in_flight") == 0


def test_full_queue_gets_429_with_retry_after(env: Env) -> None:
    gateway = env.cluster.gateway(env.join, ["--queue-limit", "1", "--queue-timeout", "1.5"])
    wait_for_instances(gateway, "one", 2)
    busy = [_open_stream(gateway, "one") for _ in range(2)]  # both instances at max_concurrency=1
    try:
        results: list[httpx.Response] = []
        waiter = threading.Thread(target=lambda: results.append(chat(gateway, "one")))
        waiter.start()
        time.sleep(0.3)  # the waiter holds the only queue place
        rejected = chat(gateway, "one")
        assert rejected.status_code == 429
        assert int(rejected.headers["retry-after"]) >= 1
        assert rejected.json()["error"]["type"] == "rate_limit_error"
        waiter.join(10)
        assert results[0].status_code == 429  # waited 1.5 s for a free instance, then gave up
    finally:
        for s in busy:
            _close_stream(s)
    assert chat(gateway, "one").status_code == 200  # capacity is back


def test_tokens_are_required_and_never_leak(env: Env, tmp_path: Path, corral_home: Path) -> None:
    worker = env.workers[0]
    instance = worker_status(worker)["instances"][0]["id"]
    url = f"{worker.url}/internal/v1/instances/{instance}/generate"
    assert httpx.post(url, content=b"{}").status_code == 401
    assert httpx.post(url, content=b"{}", headers={"authorization": "Bearer nope"}).status_code == 401
    assert httpx.get(f"{env.controller.url}/admin/v1/models").status_code == 401
    assert httpx.get(f"{env.controller.url}/admin/v1/models", headers={"authorization": f"Bearer {ADMIN_TOKEN}"}).status_code == 200
    assert httpx.get(f"{env.controller.url}/cluster/v1/instances").status_code == 401
    intruder = run_corral(
        ["worker", *env.join, "--config", str(env.config), "--port", "0", "--cluster-token", "wrong-token-77"],
        corral_home,
        timeout=120,
    )
    assert intruder.returncode == 1
    assert "cluster token" in intruder.stderr and "wrong-token-77" not in intruder.stderr
    assert len(ready_instances(env.gateway, "rr")) == 2  # it never became routable
    assert CLUSTER_TOKEN not in "".join(p.log() for p in env.cluster.processes)


def _stream_to(env: Env, worker: Server, model: str, max_tokens: int) -> tuple[Any, str]:
    """Open streams until one lands on ``worker`` (round robin, shared with whatever load
    the test runs: 30 tries leave a chance of about 1e-5 of never landing); close the others."""
    ids = {i["id"] for i in worker_status(worker)["instances"] if i["model"] == model}
    for _ in range(30):
        stream = _open_stream(env.gateway, model, max_tokens)
        instance = stream[1][1].headers["x-corral-instance"]
        if instance in ids:
            return stream, instance
        _close_stream(stream)
    raise AssertionError("no stream landed on the worker")


def _read_to_end(lines: Iterator[str]) -> list[dict[str, Any]]:
    out = []
    for line in lines:
        if line.startswith("data: ") and line != "data: [DONE]":
            out.append(orjson.loads(line[6:]))
        if line == "data: [DONE]":
            out.append({"done": True})
    return out


def test_graceful_shutdown_finishes_streams_then_deregisters(env: Env) -> None:
    extra = env.cluster.worker(env.join, env.config, extra=["--drain-timeout", "60"])
    wait_for_instances(env.gateway, "rr", 3)
    stream, _ = _stream_to(env, extra, "rr", max_tokens=1200)
    extra.process.send_signal(signal.SIGTERM)
    events = _read_to_end(stream[2])
    _close_stream(stream)
    assert events[-1] == {"done": True}
    assert not any("error" in e for e in events)
    assert events[-2]["choices"][0]["finish_reason"] == "length"
    assert extra.process.wait(30) == 0
    wait_for_instances(env.gateway, "rr", 2)
    assert all(chat(env.gateway, "rr").status_code == 200 for _ in range(4))
