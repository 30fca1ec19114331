"""The registry (etcd, PostgreSQL) stops and restarts under load: gateways keep serving
from their cached view, and workers' registrations come back afterwards."""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from tests.integration.cluster.harness import Cluster, wait_for_instances, worker_config
from tests.services.etcd import start_etcd
from tests.services.postgres import start_postgres


@pytest.mark.parametrize("store", ["etcd", "postgres"])
def test_serving_survives_a_registry_outage(store: str, corral_home: Path, tmp_path: Path) -> None:
    server = start_etcd() if store == "etcd" else start_postgres()
    cluster = Cluster(corral_home, tmp_path)
    statuses: list[int] = []
    stop = threading.Event()
    try:
        join = ["--registry", server.url]
        config = worker_config(tmp_path, "w", [{"name": "chat", "routing": "round_robin"}])
        cluster.worker(join, config, wait=False)
        cluster.worker(join, config, wait=False)
        gateway = cluster.gateway(join)
        wait_for_instances(gateway, "chat", 2, timeout=120)

        def load() -> None:
            with httpx.Client(timeout=30) as client:
                while not stop.is_set():
                    body = {"model": "chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
                    statuses.append(client.post(f"{gateway.url}/v1/chat/completions", json=body).status_code)
                    time.sleep(0.01)

        threads = [threading.Thread(target=load) for _ in range(2)]
        for t in threads:
            t.start()
        time.sleep(1)
        server.stop()
        down_from = len(statuses)
        time.sleep(5)  # longer than the workers' 3 s lease
        served_while_down = len(statuses) - down_from
        server.start()
        time.sleep(5)  # workers re-register, gateways re-sync
        stop.set()
        for t in threads:
            t.join(30)
        assert served_while_down >= 5  # served from the cached view (a loaded machine serves fewer)
        assert set(statuses) == {200}, Counter(statuses)
        assert len(wait_for_instances(gateway, "chat", 2)) == 2
        # a brand-new gateway sees the registrations that came back
        fresh = cluster.gateway(join)
        assert len(wait_for_instances(fresh, "chat", 2, timeout=15)) == 2
    finally:
        stop.set()
        cluster.stop()
        server.stop()
        getattr(server, "cleanup", getattr(server, "destroy", lambda: None))()
