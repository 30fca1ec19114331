"""Engine supervision in a cluster: a managed worker's transformers loop made to raise
(``tests/integration/faults/sitecustomize.py``, in that worker only) restarts in place;
past its budget the worker marks the instance failed and the controller replaces it;
the gateway's health never shows the failed instance ready once the worker saw it."""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx

from tests.integration.cluster.harness import (
    Cluster,
    admin,
    wait_for_instances,
    wait_model,
    worker_config,
    worker_status,
)
from tests.integration.servers import Server

FAULTS = Path(__file__).parent.parent / "faults"


def crash_counter(worker_url: str) -> float:
    text = httpx.get(f"{worker_url}/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("corral_engine_crashes_total{"))


def fault_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a worker whose engine loop raises on a FAULT-NOW prompt."""
    return {
        "PYTHONPATH": os.pathsep.join([str(FAULTS), os.environ.get("PYTHONPATH", "")]),
        "CORRAL_TEST_FAULTS": str(tmp_path / "no-trigger"),
    }


def crash_until_failed(http: httpx.Client, worker: Server, old: str) -> None:
    """Send distinct poisoned inputs, each crashing the loop, until the engine gives up.
    What happened is read from the worker itself (a 503 may only mean "restarting")."""
    for i in range(12):
        resp = http.post("/v1/completions", json={"model": "chat", "prompt": f"FAULT-NOW {i}", "max_tokens": 20})
        assert resp.status_code in (500, 503), resp.text
        if resp.status_code == 500:
            assert resp.json()["error"]["code"] == "engine_error"
        if i == 0:
            assert crash_counter(worker.url) == 1
        deadline = time.monotonic() + 60
        while True:  # settled: restarted and ready again, or given up (failed, or already replaced)
            mine = [x for x in worker_status(worker)["instances"] if x["id"] == old]
            if not mine or mine[0]["failure"] is not None or mine[0]["state"] == "failed":
                return
            if mine[0]["state"] == "ready" and mine[0]["restarts_total"] == mine[0]["crashes_total"]:
                break
            assert time.monotonic() < deadline, mine
            time.sleep(0.05)
    raise AssertionError("the engine never gave up")


def replaced_after_crashes(http: httpx.Client, api: httpx.Client, gateway: Server, worker: Server, old: str) -> str:
    """Crash ``old`` until it is failed, then wait for its replacement to be ready and to
    serve through the gateway; the replacement's id."""
    crash_until_failed(http, worker, old)
    new = wait_model(api, "chat", lambda m: m["ready"] == 1 and m["instances"][0]["id"] != old, 120)["instances"][0]["id"]
    wait_for_instances(gateway, "chat", 1)
    resp = http.post("/v1/completions", json={"model": "chat", "prompt": "again", "max_tokens": 3})
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-corral-instance"] == new
    return str(new)


def test_a_failed_engine_is_replaced_by_the_controller(corral_home: Path, tmp_path: Path) -> None:
    cluster = Cluster(corral_home, tmp_path)
    env = fault_env(tmp_path)
    try:
        controller = cluster.controller()
        join = ["--controller", controller.url]
        worker = cluster.worker(join, config=None, wait=False, env=env)
        gateway = cluster.gateway(join)
        api = admin(controller.url)
        deadline = time.monotonic() + 120
        while not api.get("/workers").json()["workers"] and time.monotonic() < deadline:
            time.sleep(0.2)
        spec = {"name": "chat", "engine": "transformers", "source": "demo:tiny-llama"}
        assert api.post("/models", json=spec).status_code == 201
        old = wait_model(api, "chat", lambda m: m["ready"] == 1)["instances"][0]["id"]
        wait_for_instances(gateway, "chat", 1)
        http = httpx.Client(base_url=gateway.url, timeout=60)

        new = replaced_after_crashes(http, api, gateway, worker, old)
        events = api.get("/audit").json()["events"]
        assert any(e["action"] == "instance-failed" and e["target"] == old for e in events), events
        assert [i["id"] for i in worker_status(worker)["instances"]] == [new]
        http.close()
    finally:
        cluster.stop()


def test_a_worker_replaces_a_failed_instance_of_its_own_config(corral_home: Path, tmp_path: Path) -> None:
    """No manager replaces what a worker's config file hosts: the worker does, itself."""
    cluster = Cluster(corral_home, tmp_path)
    env = fault_env(tmp_path)
    try:
        controller = cluster.controller()
        join = ["--controller", controller.url]
        config = worker_config(tmp_path, "own", [{"name": "chat"}])
        worker = cluster.worker(join, config=config, env=env)
        gateway = cluster.gateway(join)
        api = admin(controller.url)
        old = wait_model(api, "chat", lambda m: m["ready"] == 1)["instances"][0]["id"]
        wait_for_instances(gateway, "chat", 1)
        http = httpx.Client(base_url=gateway.url, timeout=60)
        new = replaced_after_crashes(http, api, gateway, worker, old)
        instances = worker_status(worker)["instances"]
        assert [(i["id"], i["managed"]) for i in instances] == [(new, False)]
        http.close()
    finally:
        cluster.stop()
