"""A gateway restart during a scale-up loses nothing, with real processes on loopback.

A controller with ``--launcher local`` serves a model autoscaled between 1 and 2 with
``max_concurrency = 1``, so that most of the demand waits in the gateway's admission
queue and only the gateway's reports show it to the autoscaler. Clients overload it;
while the second instance is loading (its worker is still starting) the gateway is
killed with SIGKILL and a new gateway process takes the same port. The clients retry
connection errors, as a client of a restarting gateway does; every request sent once
the new gateway is up must succeed, the scale-up must complete (the second instance
ready and serving, as the admin API, the clients and the records show), and the new
gateway's demand reports must keep the autoscaler from scaling down while the load
lasts. Once the load stops, the dead gateway's last report must not hold the model up.
"""

from __future__ import annotations

import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.integration.cluster.harness import CLUSTER_TOKEN, Cluster, admin, wait_model
from tests.integration.cluster.recorded import rows
from tests.integration.servers import Server, free_port, launch, wait_until

MODEL = "chat"
POLICY = {"min_replicas": 1, "max_replicas": 2, "target_in_flight": 2, "upscale_delay_s": 1,
          "downscale_delay_s": 3, "downscale_to_zero_delay_s": 60, "cold_start_timeout_s": 120}
USERS = 6  # with max_concurrency 1: 1-2 run at the engines, the rest wait in the gateway


@dataclass(frozen=True)
class Attempt:
    sent: float  # monotonic
    status: int | None  # None: a connection error (the gateway was down)
    instance: str | None
    request_id: str | None
    error: str = ""


class RetryingClients:
    """``USERS`` threads sending completions back to back; a connection error is retried
    (after a short pause), as a client of a restarting gateway does."""

    def __init__(self, url: str) -> None:
        self.attempts: list[Attempt] = []
        self._url = url
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(USERS)]
        for t in self._threads:
            t.start()

    def _run(self, user: int) -> None:
        body = {"model": MODEL, "prompt": f"user {user}", "max_tokens": 12, "ignore_eos": True}
        with httpx.Client(timeout=httpx.Timeout(150, connect=2)) as client:
            while not self._stop.is_set():
                sent = time.monotonic()
                try:
                    resp = client.post(f"{self._url}/v1/completions", json=body)
                except httpx.TransportError as exc:
                    self._add(Attempt(sent, None, None, None, type(exc).__name__))
                    time.sleep(0.01)  # retried at once: the first requests meet a gateway just started
                    continue
                error = "" if resp.status_code == 200 else resp.text[:300]
                self._add(Attempt(sent, resp.status_code, resp.headers.get("x-corral-instance"),
                                  resp.headers.get("x-request-id"), error))

    def _add(self, attempt: Attempt) -> None:
        with self._lock:
            self.attempts.append(attempt)

    def stop(self) -> list[Attempt]:
        self._stop.set()
        for t in self._threads:
            t.join(180)
        return self.attempts


def gateway_at(cluster: Cluster, port: int, join: list[str], records: str) -> Server:
    args = ["gateway", *join, "--port", str(port), "--cluster-token", CLUSTER_TOKEN, "--records", records]
    server = launch(args, cluster.home, cluster.logs, port)
    cluster.processes.append(server)
    return wait_until(server, lambda: httpx.get(f"{server.url}/health", timeout=2).status_code == 200)


def scale_events(api: httpx.Client) -> list[dict[str, Any]]:
    events = api.get("/audit", params={"limit": 500}).json()["events"]
    return [e for e in reversed(events) if e["action"] == "scale" and e["target"] == MODEL]


def until(check, timeout: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return value


def test_a_gateway_killed_during_a_scale_up_loses_nothing(corral_home: Path, tmp_path: Path) -> None:
    cluster = Cluster(corral_home, tmp_path)
    records_db = tmp_path / "records.db"
    records = f"sqlite:///{records_db}"
    clients: RetryingClients | None = None
    try:
        controller = cluster.controller(extra=["--launcher", "local", "--launcher-idle", "60"])
        join = ["--controller", controller.url]
        port = free_port()
        old = gateway_at(cluster, port, join, records)
        api = admin(controller.url)
        spec = {"name": MODEL, "engine": "transformers", "source": "demo:tiny-llama", "replicas": 1,
                "max_concurrency": 1, "autoscale": POLICY}
        created = api.post("/models", json=spec)
        assert created.status_code == 201, created.text
        wait_model(api, MODEL, lambda m: m["ready"] == 1, 180)
        until(lambda: httpx.get(f"{old.url}/health/ready", timeout=5).status_code == 200, 30, "the gateway to see it")

        clients = RetryingClients(old.url)
        # the gateway's queue drives the scale-up: 1 -> 2 as soon as upscale_delay_s has passed
        up = until(lambda: [e for e in scale_events(api) if e["detail"]["reason"] == "up"], 60, "the scale-up")
        assert (up[0]["detail"]["from"], up[0]["detail"]["to"]) == (1, 2), up
        model = api.get(f"/models/{MODEL}").json()["model"]
        assert model["replicas"] == 2 and model["ready"] == 1, model  # the new instance is still on its way
        old.process.send_signal(signal.SIGKILL)
        old.process.wait(10)

        new = gateway_at(cluster, port, join, records)
        up_at = time.monotonic()  # from here on, nothing may fail
        model = wait_model(api, MODEL, lambda m: m["ready"] == 2, 120)
        first, second = (i["id"] for i in model["instances"])  # oldest first
        # the new instance takes traffic through the new gateway ...
        until(lambda: any(a.instance == second and a.sent > up_at for a in clients.attempts), 60,
              "the new instance to serve a request")
        # ... and the load goes on for longer than downscale_delay_s: the new gateway's
        # queue is most of the demand (the engines hold one request each), so only its
        # reports keep the model at 2
        time.sleep(POLICY["downscale_delay_s"] + 2)
        assert api.get(f"/models/{MODEL}").json()["model"]["replicas"] == 2
        attempts = clients.stop()
        clients = None

        after = [a for a in attempts if a.sent >= up_at]
        failed = [a for a in after if a.status != 200]
        assert not failed, failed[:5]
        assert len(after) >= 2 * USERS, len(after)
        # the clients did see the restart (connection errors between the kill and the new gateway)
        refused = [a for a in attempts if a.status is None]
        assert refused and all(a.sent < up_at for a in refused), refused[:5]
        assert all(a.status == 200 for a in attempts if a.status is not None), [a for a in attempts if a.status][:5]
        served = {a.instance for a in after}
        assert served == {first, second}, served

        # the records of the new gateway agree with what the clients got
        ids = {a.request_id for a in after}
        until(lambda: ids <= {r["request_id"] for r in rows(records_db)}, 15, "the records to be written")
        recorded = [r for r in rows(records_db) if r["request_id"] in ids]
        assert {r["http_status"] for r in recorded} == {200}, {r["http_status"] for r in recorded}
        assert {r["instance_id"] for r in recorded} == {first, second}

        # idle now: the dead gateway's last report (it held a queue) does not count for ever
        wait_model(api, MODEL, lambda m: m["replicas"] == 1, 60)
        steps = [(e["actor"], e["detail"]["reason"], e["detail"]["from"], e["detail"]["to"]) for e in scale_events(api)]
        assert steps == [("autoscaler", "up", 1, 2), ("autoscaler", "down", 2, 1)], steps
        assert new.process.poll() is None
    finally:
        if clients is not None:
            clients.stop()
        cluster.stop()
