"""``corral controller --launcher ray://HOST:PORT`` on a real two-node Ray cluster
(``conftest.py``): workers placed by each model's ``resources``, replaced when they die,
scaled, restarted, adopted by a restarted controller, and released when it stops.

One controller (SQLite registry, so a restart keeps the desired state) and one gateway
serve the whole module; each test deploys its own model and removes it, giving its Ray
resources back before the next test. The last test stops the controller.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.integration.cluster.harness import Cluster, Load, admin, wait_model
from tests.integration.cluster.test_launcher import pids_of, until
from tests.integration.ray.conftest import HEAD_IP, NODE_B_IP, RayCluster
from tests.integration.servers import Server, free_port


@dataclass
class Deployment:
    cluster: Cluster
    controller: Server
    gateway: Server
    api: httpx.Client
    args: list[str]
    ray: RayCluster


@pytest.fixture(scope="module")
def ray_corral(ray_cluster: RayCluster, corral_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    logs = tmp_path_factory.mktemp("ray-corral")
    cluster = Cluster(corral_home, logs)
    args = ["--launcher", f"ray://{ray_cluster.address}", "--launcher-idle", "2"]
    controller = cluster.controller(registry=f"sqlite:///{logs}/registry.db", port=free_port(), extra=args)
    gateway = cluster.gateway(["--controller", controller.url])
    try:
        yield Deployment(cluster, controller, gateway, admin(controller.url), args, ray_cluster)
    finally:
        cluster.stop()


def deploy(api: httpx.Client, name: str, replicas: int, resources: dict[str, Any]) -> None:
    spec = {"name": name, "engine": "transformers", "source": "demo:tiny-llama", "replicas": replicas, "resources": resources}
    resp = api.post("/models", json=spec)
    assert resp.status_code == 201, resp.text
    assert resp.json()["model"]["resources"] == resources


def remove(api: httpx.Client, name: str) -> None:
    """Remove a model and wait until its launched workers are stopped (their resources free)."""
    hosts = {i["worker_id"] for i in api.get(f"/models/{name}").json()["model"]["instances"]}
    assert api.delete(f"/models/{name}").status_code == 200
    until(lambda: not hosts & {w["id"] for w in ray_workers(api)}, 60, f"the workers of {name} to stop")


def ray_workers(api: httpx.Client) -> list[dict[str, Any]]:
    return [w for w in api.get("/workers").json()["workers"] if w["launcher"] == "ray" and w["alive"]]


def chat(gateway: Server, model: str) -> str:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    resp = httpx.post(f"{gateway.url}/v1/chat/completions", json=body, timeout=60)
    assert resp.status_code == 200, resp.text
    return resp.headers["x-corral-instance"]


def test_replicas_too_big_to_share_a_node_land_on_both_and_survive_a_kill(ray_corral: Deployment) -> None:
    api, gateway = ray_corral.api, ray_corral.gateway
    deploy(api, "wide", 2, {"num_cpus": 1.5})  # 2 CPUs per node: a node holds one
    model = wait_model(api, "wide", lambda m: m["ready"] == 2, 180)
    hosting = {w["id"]: w for w in ray_workers(api)}
    workers = [hosting[i["worker_id"]] for i in model["instances"]]
    assert len({w["node"] for w in workers}) == 2, workers  # two Ray nodes, by node id
    assert {httpx.URL(w["address"]).host for w in workers} == {HEAD_IP, NODE_B_IP}  # each bound its node's address
    assert all(w["resources"] == {"num_cpus": 1.5} and w["max_instances"] == 1 for w in workers)
    (pid,) = pids_of(workers[0]["id"])
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    assert b"OMP_NUM_THREADS=1" in environ  # Ray's thread count for 1.5 CPUs, inherited by the worker
    seen = {chat(gateway, "wide") for _ in range(30)}
    assert seen == {i["id"] for i in model["instances"]}  # the gateway reaches both

    # kill -9 one worker under load: noticed, replaced (Ray puts it where 1.5 CPUs are free)
    victim = next(w for w in workers if NODE_B_IP in w["address"])
    load = Load(gateway.url, "wide", threads=2)
    time.sleep(1.0)
    (pid,) = pids_of(victim["id"])
    os.kill(pid, signal.SIGKILL)
    killed_at = time.monotonic()
    model = wait_model(api, "wide", lambda m: m["ready"] == 2 and victim["id"] not in
                       {i["worker_id"] for i in m["instances"]}, 120)
    replaced_in = time.monotonic() - killed_at
    time.sleep(1.0)
    statuses = load.stop()
    failed = [s for s in statuses if s != 200]
    assert len(failed) <= 2, (failed, load.errors[:3])  # at most the killed worker's in-flight requests
    assert statuses.count(200) > 20
    assert victim["id"] not in {w["id"] for w in api.get("/workers").json()["workers"]}  # forgotten, not listed dead
    print(f"replaced in {replaced_in:.1f}s; {len(statuses)} requests, {len(failed)} failed")
    assert len({chat(gateway, "wide") for _ in range(30)}) == 2

    # the other worker's actor killed through Ray: its worker process goes with it, and is replaced
    other = next(w for w in workers if w is not victim)
    (pid,) = pids_of(other["id"])
    ray_corral.ray.driver(f"ray.kill(ray.get_actor('corral-worker-{other['id']}'), no_restart=True)")
    until(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, 15,
          "the worker of a killed actor to die with it")
    wait_model(api, "wide", lambda m: m["ready"] == 2 and other["id"] not in {i["worker_id"] for i in m["instances"]}, 120)
    remove(api, "wide")


def test_scale_and_rolling_restart_on_ray(ray_corral: Deployment) -> None:
    api, gateway = ray_corral.api, ray_corral.gateway
    deploy(api, "narrow", 2, {"num_cpus": 0.5, "custom": {"nodeb": 0.1}})  # only the second node has nodeb
    wait_model(api, "narrow", lambda m: m["ready"] == 2, 180)
    assert api.post("/models/narrow/scale", json={"replicas": 3}).status_code == 200
    model = wait_model(api, "narrow", lambda m: m["ready"] == 3, 180)
    nodes = {w["id"]: w["node"] for w in ray_workers(api)}
    assert len({nodes[i["worker_id"]] for i in model["instances"]}) == 1  # all on the node with nodeb
    assert api.post("/models/narrow/scale", json={"replicas": 1}).status_code == 200
    model = wait_model(api, "narrow", lambda m: m["ready"] == 1 and len(m["instances"]) == 1, 120)
    until(lambda: len(ray_workers(api)) == 1, 60, "the workers left empty to stop")
    before = model["instances"][0]["id"]
    assert api.post("/models/narrow/restart").status_code == 202
    model = wait_model(api, "narrow", lambda m: m["operation"] is None and m["ready"] == 1 and
                       [i["id"] for i in m["instances"]] != [before], 180)
    assert chat(gateway, "narrow") == model["instances"][0]["id"]
    until(lambda: len(ray_workers(api)) == 1, 60, "the replaced instance's worker to stop")
    remove(api, "narrow")


def test_the_autoscaler_adds_ray_workers_under_load_and_lets_them_go(ray_corral: Deployment) -> None:
    api, gateway = ray_corral.api, ray_corral.gateway
    policy = {"min_replicas": 1, "max_replicas": 2, "target_in_flight": 1, "upscale_delay_s": 1, "downscale_delay_s": 2}
    spec = {"name": "auto", "engine": "transformers", "source": "demo:tiny-llama", "autoscale": policy,
            "resources": {"num_cpus": 0.5}}
    assert api.post("/models", json=spec).status_code == 201
    wait_model(api, "auto", lambda m: m["ready"] == 1, 180)
    load = Load(gateway.url, "auto", threads=4, max_tokens=32)
    try:
        model = wait_model(api, "auto", lambda m: m["ready"] == 2, 120)
        assert len({i["worker_id"] for i in model["instances"]}) == 2  # a second Ray worker, launched for it
    finally:
        statuses = load.stop()
    assert set(statuses) == {200}, load.errors[:3]
    wait_model(api, "auto", lambda m: m["replicas"] == 1 and len(m["instances"]) == 1, 120)
    until(lambda: len(ray_workers(api)) == 1, 60, "the worker left empty to stop")
    steps = [(e["detail"]["reason"], e["detail"]["from"], e["detail"]["to"])
             for e in api.get("/audit", params={"limit": 200}).json()["events"]
             if e["action"] == "scale" and e["target"] == "auto"]
    assert ("up", 1, 2) in steps and any(r == "down" and t == 1 for r, _, t in steps), steps
    remove(api, "auto")


def test_a_request_no_node_can_hold_says_so(ray_corral: Deployment, ray_cluster: RayCluster) -> None:
    api = ray_corral.api
    deploy(api, "nowhere", 1, {"custom": {"gpu_box": 1}})
    deploy(api, "huge", 1, {"num_cpus": 3})
    for name, what in (("nowhere", "custom.gpu_box=1"), ("huge", "num_cpus=3")):
        model = wait_model(api, name, lambda m: (m["operation"] or "").startswith("waiting for Ray resources"), 30)
        assert what in model["operation"] and "no node of the Ray cluster has that much" in model["operation"], model
        assert model["ready"] == 0
    for name in ("nowhere", "huge"):
        assert api.delete(f"/models/{name}").status_code == 200
    # the launches nobody wants any more are cancelled (after --launcher-idle + 5 s)
    until(lambda: "corral-worker" not in ray_cluster.driver("print(ray.util.list_named_actors())"), 60,
          "the unplaceable actors to be released")


def test_bad_resources_are_refused_at_deploy(ray_corral: Deployment) -> None:
    api = ray_corral.api
    base = {"name": "bad", "engine": "transformers", "source": "demo:tiny-llama"}
    for resources, param in (
        ({"num_cpus": -1}, "resources.num_cpus"),
        ({"num_gpus": "1"}, "resources.num_gpus"),
        ({"memory_gb": 0}, "resources.memory_gb"),
        ({"custom": {"CPU": 1}}, "resources.custom"),
        ({"custom": {"nodeb": 0}}, "resources.custom.nodeb"),
        ({"cpus": 1}, "resources.cpus"),
        ([1], "resources"),
    ):
        resp = api.post("/models", json={**base, "resources": resources})
        assert resp.status_code == 400, (resources, resp.text)
        error = resp.json()["error"]
        assert error["param"] == param and param in error["message"], (resources, error)
    assert api.get("/models/bad").status_code == 404


def test_a_restarted_controller_adopts_the_workers_still_alive(ray_corral: Deployment) -> None:
    api = ray_corral.api
    deploy(api, "kept", 2, {"num_cpus": 1.5})  # one worker on each node; the next test stops them
    model = wait_model(api, "kept", lambda m: m["ready"] == 2, 180)
    hosts = sorted(i["worker_id"] for i in model["instances"])
    old = ray_corral.controller
    old.process.kill()  # a crash: nothing is drained or released
    old.process.wait(10)
    assert all(pids_of(w) for w in hosts), "the workers outlive their controller"
    controller = ray_corral.cluster.controller(registry=f"sqlite:///{ray_corral.cluster.logs}/registry.db",
                                               port=old.port, extra=ray_corral.args)
    ray_corral.controller = controller
    wait_model(api, "kept", lambda m: m["ready"] == 2, 60)
    time.sleep(4.0)  # several reconcile passes: a doubling would show now
    model = wait_model(api, "kept", lambda m: m["ready"] == 2, 10)
    assert sorted(i["worker_id"] for i in model["instances"]) == hosts
    workers = ray_workers(api)
    assert sorted(w["id"] for w in workers) == hosts and all("adopted" in w["launched"] for w in workers), workers


def test_stopping_the_controller_releases_every_worker(ray_corral: Deployment, ray_cluster: RayCluster) -> None:
    api = ray_corral.api
    if len(ray_workers(api)) < 2:  # run alone, without the test above and its two workers
        deploy(api, "last", 2, {"num_cpus": 1.5})
        wait_model(api, "last", lambda m: m["ready"] == 2, 180)
    ids = [w["id"] for w in ray_workers(api)]  # one on each node
    assert len({w["node"] for w in ray_workers(api)}) == 2 and all(pids_of(i) for i in ids)
    assert ray_corral.controller.stop() == 0  # SIGTERM: drains, then releases
    until(lambda: not any(pids_of(i) for i in ids), 30, "the launched workers to exit")
    named = ray_cluster.driver("print(ray.util.list_named_actors())")
    assert "corral-worker" not in named, named
