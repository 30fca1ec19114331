"""Managing a real cluster: the controller places models on managed workers, scales and
restarts them under load, and keeps runtime deployments across its own restart."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

from tests.integration.cluster.harness import Cluster, Load, admin, wait_for_instances, wait_model
from tests.integration.servers import free_port


def test_managed_cluster_lifecycle(corral_home: Path, tmp_path: Path) -> None:
    cluster = Cluster(corral_home, tmp_path)
    registry = f"sqlite:///{tmp_path / 'state.db'}"
    port = free_port()
    try:
        controller = cluster.controller(registry, port=port)
        join = ["--controller", controller.url]
        # managed workers: no config of their own
        workers = [cluster.worker(join, config=None, wait=False) for _ in range(2)]
        gateway = cluster.gateway(join)
        api = admin(controller.url)
        deadline = time.monotonic() + 120
        while len(api.get("/workers").json()["workers"]) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert all("transformers" in w["engines"] for w in api.get("/workers").json()["workers"])

        spec = {"name": "chat", "engine": "transformers", "source": "demo:tiny-llama", "replicas": 2}
        assert api.post("/models", json=spec).status_code == 201
        model = wait_model(api, "chat", lambda m: m["ready"] == 2)
        assert len({i["worker_id"] for i in model["instances"]}) == 2  # spread over both workers
        wait_for_instances(gateway, "chat", 2)

        load = Load(gateway.url, "chat")
        try:
            api.post("/models/chat/scale", json={"replicas": 3})
            wait_model(api, "chat", lambda m: m["ready"] == 3)
            api.post("/models/chat/scale", json={"replicas": 1})
            wait_model(api, "chat", lambda m: len(m["instances"]) == 1 and m["ready"] == 1, timeout=60)
            api.post("/models/chat/scale", json={"replicas": 2})
            before = {i["id"] for i in wait_model(api, "chat", lambda m: m["ready"] == 2 and len(m["instances"]) == 2)["instances"]}
            assert api.post("/models/chat/restart").status_code == 202
            after = wait_model(api, "chat", lambda m: m["operation"] is None and m["ready"] == 2 and len(m["instances"]) == 2)
            assert not ({i["id"] for i in after["instances"]} & before)
        finally:
            statuses = load.stop()
        assert len(statuses) > 20
        assert set(statuses) == {200}, (Counter(statuses), load.errors[:3])

        # the controller restarts: the runtime deployment comes back from the store
        controller.stop()
        controller = cluster.controller(registry, port=port)
        api = admin(controller.url)
        model = wait_model(api, "chat", lambda m: m["ready"] == 2, timeout=30)
        assert model["replicas"] == 2 and model["managed"] is True
        events = api.get("/audit").json()["events"]
        assert [e["action"] for e in events][:2] == ["restart", "scale"]
        assert all(w > 0 for w in Counter(i["worker_id"] for i in model["instances"]).values())
    finally:
        cluster.stop()
