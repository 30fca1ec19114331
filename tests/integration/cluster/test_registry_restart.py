"""The registry stops and restarts under load: etcd and PostgreSQL (real servers started
by the tests), and a controller that is the registry itself (restarted, or frozen by
SIGSTOP). Gateways keep serving from their cached routing table throughout; workers'
registrations come back afterwards; the controller's admin reads and writes of the
desired state (kept in the same store) work again; and every request of the load is
answered and recorded exactly once.

Workers are light (openai-compatible engines in front of the benchmark's fake upstream),
joined to the registry directly, as is one gateway; the controller uses the same URL for
its registry view and its desired-state store, and a second gateway follows the registry
through the controller."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.integration.cluster.harness import Cluster, admin, wait_for_instances
from tests.integration.cluster.traffic import Load, check_recorded, fake_upstream, light_config, ok_total
from tests.services.etcd import start_etcd
from tests.services.postgres import start_postgres

LEASE_TTL_S = 3.0  # the harness's --lease-ttl
CONTROLLER_LEASE_S = 9.0
PENDING = {"name": "pending", "engine": "openai-compatible", "source": "http://127.0.0.1:9/v1",
           "options": {"verify_on_start": False}}  # desired state only: no managed worker hosts it


@pytest.mark.parametrize("store", ["etcd", "postgres"])
def test_serving_survives_a_registry_restart(store: str, corral_home: Path, tmp_path: Path) -> None:
    server = start_etcd() if store == "etcd" else start_postgres()
    cluster = Cluster(corral_home, tmp_path)
    db = tmp_path / "records.db"
    load: Load | None = None
    relayed_load: Load | None = None
    try:
        with fake_upstream(corral_home, tmp_path / "fake.log", delay_ms=2) as upstream:
            join = ["--registry", server.url]
            controller = cluster.controller(registry=server.url)
            api = admin(controller.url)
            config = light_config(tmp_path / "w.toml", upstream, "chat")
            cluster.worker(join, config, wait=False)
            cluster.worker(join, config, wait=False)
            gateway = cluster.gateway(join, ["--records", f"sqlite:///{db}"])
            # a second gateway follows the registry through the controller's watch
            relayed = cluster.gateway(["--controller", controller.url], ["--records", f"sqlite:///{db}"])
            wait_for_instances(gateway, "chat", 2, timeout=120)
            wait_for_instances(relayed, "chat", 2, timeout=30)
            assert api.post("/models", json=PENDING).status_code == 201, "deploy"

            ok_before, relayed_before = ok_total(gateway.url, "chat"), ok_total(relayed.url, "chat")
            load = Load(gateway.url, "chat", "reg", tokens=4, threads=2, pause_s=0.01)
            relayed_load = Load(relayed.url, "chat", "relay", tokens=4, threads=1, pause_s=0.01)
            time.sleep(1)
            server.stop()
            down_from, relayed_down_from, down_at = len(load.sent), len(relayed_load.sent), time.monotonic()
            # admin reads while the store is down answer, never hang: the manager's view,
            # or a clean 503 for what only the store has
            status = api.get("/status", timeout=15)
            assert status.status_code == 200, status.text
            audit = api.get("/audit", timeout=15)
            assert audit.status_code == 503 and audit.json()["error"]["code"] == "state_unavailable", audit.text
            time.sleep(max(0.0, LEASE_TTL_S + 2 - (time.monotonic() - down_at)))  # outlast the workers' lease
            served_while_down = len(load.sent) - down_from
            relayed_while_down = len(relayed_load.sent) - relayed_down_from
            server.start()
            # serving goes on; past one more lease the registrations still there are
            # the ones the workers renewed after the restart
            time.sleep(LEASE_TTL_S + 1)
            load.stop()
            relayed_load.stop()

            # from the cached table (a loaded machine serves fewer)
            assert served_while_down >= 5 and relayed_while_down >= 3, (served_while_down, relayed_while_down)
            check_recorded(db, gateway.url, load, ok_before)
            check_recorded(db, relayed.url, relayed_load, relayed_before)
            assert len(wait_for_instances(gateway, "chat", 2)) == 2
            assert len(wait_for_instances(relayed, "chat", 2)) == 2
            # the desired state reads and writes again: the deployed spec, the audit trail
            models = {m["name"]: m for m in api.get("/models").json()["models"]}
            assert set(models) == {"chat", "pending"} and models["chat"]["ready"] == 2, models
            assert api.post("/models/pending/scale", json={"replicas": 0}).status_code == 200
            actions = [(e["action"], e["target"]) for e in api.get("/audit").json()["events"]]
            assert ("deploy", "pending") in actions and ("scale", "pending") in actions, actions
            # the workers re-registered: a brand-new gateway's snapshot of the store has them
            fresh = cluster.gateway(join)
            assert len(wait_for_instances(fresh, "chat", 2, timeout=15)) == 2
    finally:
        for running in (load, relayed_load):
            if running is not None:
                running.stop()
        cluster.stop()
        server.stop()
        getattr(server, "cleanup", getattr(server, "destroy", lambda: None))()


def test_serving_survives_a_controller_restart(corral_home: Path, tmp_path: Path) -> None:
    """The controller is the registry (in memory, the default): restarted, it knows no
    instance until the workers renew, so the gateways that reconnect to it must not drop
    their instances meanwhile."""
    cluster = Cluster(corral_home, tmp_path)
    db = tmp_path / "records.db"
    load: Load | None = None
    try:
        with fake_upstream(corral_home, tmp_path / "fake.log", delay_ms=2) as upstream:
            controller = cluster.controller()
            join = ["--controller", controller.url]
            config = light_config(tmp_path / "w.toml", upstream, "chat")
            # renewals every 3 s: the gateway reconnects before the workers have renewed
            for _ in range(2):
                cluster.worker(join, config, wait=False, extra=["--lease-ttl", str(CONTROLLER_LEASE_S)])
            gateway = cluster.gateway(join, ["--records", f"sqlite:///{db}"])
            wait_for_instances(gateway, "chat", 2, timeout=120)
            ok_before = ok_total(gateway.url, "chat")
            load = Load(gateway.url, "chat", "ctl", tokens=4, threads=2, pause_s=0.01)
            time.sleep(1)
            assert controller.stop() == 0
            assert "Traceback" not in controller.log(), controller.log()[-3000:]  # its watch streams ended cleanly
            restarted = cluster.controller(port=controller.port)
            time.sleep(CONTROLLER_LEASE_S / 3 + 3)  # the gateway reconnects, the workers renew
            load.stop()
            check_recorded(db, gateway.url, load, ok_before)
            assert len(wait_for_instances(gateway, "chat", 2)) == 2
            models = {m["name"]: m for m in admin(restarted.url).get("/models").json()["models"]}
            assert models["chat"]["ready"] == 2, models
    finally:
        if load is not None:
            load.stop()
        cluster.stop()


def test_serving_survives_a_frozen_controller(corral_home: Path, tmp_path: Path) -> None:
    """The controller (the registry, in memory) frozen by SIGSTOP for longer than the
    workers' leases, then resumed: the time it could not listen to their renewals must
    not count against them, or every instance expires at once when it resumes."""
    cluster = Cluster(corral_home, tmp_path)
    db = tmp_path / "records.db"
    load: Load | None = None
    try:
        with fake_upstream(corral_home, tmp_path / "fake.log", delay_ms=2) as upstream:
            controller = cluster.controller()
            join = ["--controller", controller.url]
            config = light_config(tmp_path / "w.toml", upstream, "chat")
            cluster.worker(join, config, wait=False)
            cluster.worker(join, config, wait=False)
            gateway = cluster.gateway(join, ["--records", f"sqlite:///{db}"])
            wait_for_instances(gateway, "chat", 2, timeout=120)
            ok_before = ok_total(gateway.url, "chat")
            load = Load(gateway.url, "chat", "frz", tokens=4, threads=2, pause_s=0.01)
            time.sleep(1)
            os.kill(controller.process.pid, signal.SIGSTOP)
            try:
                time.sleep(LEASE_TTL_S + 2)
            finally:
                os.kill(controller.process.pid, signal.SIGCONT)
            time.sleep(3)  # the queued renewals are taken, the watch goes on
            load.stop()
            check_recorded(db, gateway.url, load, ok_before)
            assert len(wait_for_instances(gateway, "chat", 2)) == 2
    finally:
        if load is not None:
            load.stop()
        cluster.stop()
