"""Virtual keys in a cluster: a key created through the controller's admin API works on
a gateway that reads the store directly (SQLite registry) and on one that follows the
controller; a revoke is refused by both within a second; the keys survive a controller
restart (they live in the SQL store). Workers are light (the fake upstream)."""

from __future__ import annotations

import time
from pathlib import Path

import openai

from tests.integration.cluster.harness import Cluster, admin, wait_for_instances
from tests.integration.cluster.traffic import fake_upstream, light_config


def ask(url: str, key: str) -> None:
    with openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=30) as c:
        c.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hi"}], max_tokens=2)


def until(check, timeout: float) -> float:  # type: ignore[no-untyped-def]
    """Seconds until ``check()`` holds (polled every 20 ms); fails after ``timeout``."""
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < timeout, f"not within {timeout}s"
        time.sleep(0.02)
    return time.monotonic() - start


def accepted(url: str, key: str) -> bool:
    try:
        ask(url, key)
        return True
    except openai.AuthenticationError:
        return False


def test_keys_across_gateways_revoke_and_controller_restart(corral_home: Path, tmp_path: Path) -> None:
    registry = f"sqlite:///{tmp_path / 'cluster.db'}"
    cluster = Cluster(corral_home, tmp_path)
    try:
        with fake_upstream(corral_home, tmp_path / "fake.log", delay_ms=1) as upstream:
            controller = cluster.controller(registry=registry)
            cluster.worker(["--registry", registry], light_config(tmp_path / "w.toml", upstream, "chat"))
            direct = cluster.gateway(["--registry", registry])
            relayed = cluster.gateway(["--controller", controller.url])
            for gw in (direct, relayed):
                wait_for_instances(gw, "chat", 1, timeout=60)
            api = admin(controller.url)
            made = api.post("/keys", json={"name": "cluster-key", "models": ["chat"]})
            assert made.status_code == 201, made.text
            key, key_id = made.json()["key"], made.json()["id"]
            for gw in (direct, relayed):
                # open until the gateway knows a key exists (no static keys here), within a second
                until(lambda: not accepted(gw.url, "sk-corral-unknown"), 1.0)
                ask(gw.url, key)

            controller.stop()
            controller = cluster.controller(registry=registry, port=controller.port)
            api = admin(controller.url)
            assert [k["id"] for k in api.get("/keys").json()["keys"]] == [key_id]
            ask(direct.url, key)
            until(lambda: accepted(relayed.url, key), 5.0)  # the relayed gateway kept its list meanwhile

            assert api.delete(f"/keys/{key_id}").status_code == 200
            revoked_at = time.monotonic()
            took = {}
            for name, gw in (("direct", direct), ("relayed", relayed)):
                until(lambda: not accepted(gw.url, key), 3.0)
                took[name] = time.monotonic() - revoked_at
            assert max(took.values()) < 1.0, took
    finally:
        cluster.stop()
