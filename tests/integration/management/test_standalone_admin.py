"""The admin API of a standalone server, over HTTP, with real engines."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.cluster.harness import ADMIN_TOKEN, Load, admin, wait_model
from tests.integration.servers import Server, start_corral

HI = [{"role": "user", "content": "hi"}]


def ready_ids(model: dict) -> set[str]:  # type: ignore[type-arg]
    return {i["id"] for i in model["instances"] if i["state"] == "ready"}


@pytest.fixture(scope="module")
def server(corral_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("admin")
    config = folder / "corral.toml"
    config.write_text('[[models]]\nname = "base"\nkind = "llm"\nengine = "transformers"\nsource = "demo:tiny-llama"\n')
    srv = start_corral(["--config", str(config), "--admin-token", ADMIN_TOKEN], corral_home, folder)
    yield srv
    srv.stop()


@pytest.fixture()
def api(server: Server) -> Iterator[httpx.Client]:
    with admin(server.url) as client:
        yield client


def chat(server: Server, model: str) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/chat/completions", json={"model": model, "messages": HI, "max_tokens": 3}, timeout=60)


def test_admin_api_needs_the_token(server: Server) -> None:
    with admin(server.url, token=None) as anonymous:
        assert anonymous.get("/models").status_code == 401
        assert anonymous.post("/models", json={}).status_code == 401
    with admin(server.url, token="wrong") as wrong:
        resp = wrong.get("/status")
        assert resp.status_code == 401 and resp.json()["error"]["code"] == "invalid_api_key"


def test_lists_config_models_with_instances(api: httpx.Client) -> None:
    status = api.get("/status").json()
    assert status["mode"] == "standalone"
    assert [w["id"] for w in status["workers"]] == ["standalone"]
    base = api.get("/models/base").json()["model"]
    assert base["replicas"] == 1 and base["ready"] == 1 and base["managed"] is True
    assert base["instances"][0]["state"] == "ready" and base["instances"][0]["uptime_s"] >= 0


def test_deploy_validates_and_serves(api: httpx.Client, server: Server) -> None:
    bad = api.post("/models", json={"name": "x", "engine": "nope", "source": "demo:tiny-llama"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "engine"
    bad = api.post("/models", json={"name": "x", "engine": "transformers", "source": "demo:tiny-llama", "replicas": -1})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "replicas"
    assert api.post("/models/ghost/scale", json={"replicas": 2}).status_code == 404
    resp = api.post("/models", json={"name": "extra", "engine": "transformers", "source": "demo:tiny-llama"})
    assert resp.status_code == 201
    wait_model(api, "extra", lambda m: m["ready"] == 1)
    assert chat(server, "extra").status_code == 200
    dup = api.post("/models", json={"name": "extra", "engine": "transformers", "source": "demo:tiny-llama"})
    assert dup.status_code == 409


def test_scale_up_and_down_under_load_loses_nothing(api: httpx.Client, server: Server) -> None:
    load = Load(server.url, "extra")
    try:
        assert api.post("/models/extra/scale", json={"replicas": 3}).status_code == 200
        wait_model(api, "extra", lambda m: m["ready"] == 3 and len(m["instances"]) == 3)
        assert api.post("/models/extra/scale", json={"replicas": 1}).status_code == 200
        wait_model(api, "extra", lambda m: len(m["instances"]) == 1 and m["ready"] == 1, timeout=60)
    finally:
        statuses = load.stop()
    assert len(statuses) > 20
    assert set(statuses) == {200}, (Counter(statuses), load.errors[:3])


def test_rolling_restart_under_load_loses_nothing(api: httpx.Client, server: Server) -> None:
    api.post("/models/extra/scale", json={"replicas": 2})
    before = ready_ids(wait_model(api, "extra", lambda m: m["ready"] == 2 and len(m["instances"]) == 2))
    load = Load(server.url, "extra")
    try:
        resp = api.post("/models/extra/restart")
        assert resp.status_code == 202 and resp.json()["model"]["operation"].startswith("restarting")
        after = wait_model(api, "extra", lambda m: m["operation"] is None and m["ready"] == 2 and len(m["instances"]) == 2)
    finally:
        statuses = load.stop()
    assert not (ready_ids(after) & before)  # every instance was replaced
    assert set(statuses) == {200}, (Counter(statuses), load.errors[:3])


def test_offline_and_online(api: httpx.Client, server: Server) -> None:
    model = wait_model(api, "extra", lambda m: m["ready"] == 2)
    one = model["instances"][0]["id"]
    assert api.post(f"/instances/{one}/offline").status_code == 200
    wait_model(api, "extra", lambda m: {i["id"]: i["state"] for i in m["instances"]}[one] == "offline")
    served = {chat(server, "extra").headers["x-corral-instance"] for _ in range(6)}
    assert one not in served and len(served) == 1
    assert api.post(f"/instances/{one}/online").status_code == 200
    wait_model(api, "extra", lambda m: m["ready"] == 2)

    assert api.post("/models/extra/offline").status_code == 200
    wait_model(api, "extra", lambda m: m["ready"] == 0 and all(i["state"] == "offline" for i in m["instances"]))
    down = chat(server, "extra")
    assert down.status_code == 503 and down.headers["retry-after"]
    assert api.post("/models/extra/online").status_code == 200
    wait_model(api, "extra", lambda m: m["ready"] == 2)
    assert chat(server, "extra").status_code == 200


def test_routing_update_stop_and_audit(api: httpx.Client, server: Server) -> None:
    resp = api.patch("/models/extra", json={"routing": "round_robin"})
    assert resp.status_code == 200 and resp.json()["model"]["routing"] == "round_robin"
    assert api.patch("/models/extra", json={"routing": "random-ish"}).status_code == 400
    assert api.delete("/models/extra").status_code == 200
    deadline = time.monotonic() + 20
    while api.get("/models/extra").status_code != 404 and time.monotonic() < deadline:
        time.sleep(0.1)  # its instances drain, then the model is gone
    assert api.get("/models/extra").status_code == 404
    assert chat(server, "extra").status_code in (404, 503)
    events = api.get("/audit", params={"limit": 50}).json()["events"]
    actions = [(e["action"], e["target"]) for e in events]
    assert ("deploy", "extra") in actions and ("scale", "extra") in actions and ("restart", "extra") in actions
    assert ("stop", "extra") == actions[0]
    assert all(e["actor"].startswith("tester@") for e in events)
    assert ADMIN_TOKEN not in str(events)
