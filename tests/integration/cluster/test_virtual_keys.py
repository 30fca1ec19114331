"""Virtual keys in a cluster: a key created through the controller's admin API works on
a gateway that reads the store directly (SQLite registry) and on one that follows the
controller; a revoke is refused by both within a second; the keys survive a controller
restart (they live in the SQL store); rpm, concurrency and budget limits hold across
both gateways (their counters are shared through the store and the controller) and a
budget outlives a gateway. Workers are light (the fake upstream)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import openai

from tests.integration.cluster.harness import Cluster, admin, wait_for_instances
from tests.integration.servers import Server
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


@contextmanager
def two_gateways(home: Path, tmp_path: Path) -> Iterator[tuple[Cluster, str, Server, Server, Server]]:
    """A controller and a light worker on one SQLite store, a gateway reading the store
    (``direct``) and one following the controller (``relayed``)."""
    registry = f"sqlite:///{tmp_path / 'cluster.db'}"
    cluster = Cluster(home, tmp_path)
    try:
        with fake_upstream(home, tmp_path / "fake.log", delay_ms=1) as upstream:
            controller = cluster.controller(registry=registry)
            cluster.worker(["--registry", registry], light_config(tmp_path / "w.toml", upstream, "chat"))
            direct = cluster.gateway(["--registry", registry])  # shares counters through the store
            relayed = cluster.gateway(["--controller", controller.url])  # through the controller
            for gw in (direct, relayed):
                wait_for_instances(gw, "chat", 1, timeout=60)
            yield cluster, registry, controller, direct, relayed
    finally:
        cluster.stop()


def test_keys_across_gateways_revoke_and_controller_restart(corral_home: Path, tmp_path: Path) -> None:
    with two_gateways(corral_home, tmp_path) as (cluster, registry, controller, direct, relayed):
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


def raw(url: str, key: str, max_tokens: int = 2):  # type: ignore[no-untyped-def]
    with openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=30) as c:
        return c.chat.completions.with_raw_response.create(
            model="chat", messages=[{"role": "user", "content": "hi"}], max_tokens=max_tokens
        )


EXCHANGE = 1.2  # more than one usage exchange (0.5 s) on each gateway, and its store round trips


def test_limits_hold_across_gateways_and_budgets_outlive_a_gateway(corral_home: Path, tmp_path: Path) -> None:
    with two_gateways(corral_home, tmp_path) as (cluster, registry, controller, direct, relayed):
        api = admin(controller.url)

        # rpm 4: each answer's x-ratelimit-remaining-requests counts both gateways' requests
        key = api.post("/keys", json={"name": "rpm", "rpm": 4}).json()["key"]
        for gw in (direct, relayed):
            until(lambda: not accepted(gw.url, "sk-corral-unknown"), 2.0)
        remaining = []
        for gw in (direct, relayed, direct, relayed):
            answer = raw(gw.url, key)
            assert answer.headers["x-ratelimit-limit-requests"] == "4"
            remaining.append(answer.headers["x-ratelimit-remaining-requests"])
            time.sleep(EXCHANGE)
        assert remaining == ["3", "2", "1", "0"]
        for gw in (direct, relayed):
            try:
                ask(gw.url, key)
                raise AssertionError("a fifth request within the minute was admitted")
            except openai.RateLimitError as refused:
                assert refused.response.headers["x-ratelimit-remaining-requests"] == "0"
                assert int(refused.response.headers["retry-after"]) >= 1

        # max_concurrency 2: two long requests on one gateway fill the key on the other
        key = api.post("/keys", json={"name": "conc", "max_concurrency": 2}).json()["key"]
        until(lambda: accepted(direct.url, key) and accepted(relayed.url, key), 3.0)
        with ThreadPoolExecutor(2) as pool:
            long = [pool.submit(raw, direct.url, key, 3000) for _ in range(2)]  # ~3 s each
            time.sleep(EXCHANGE)
            try:
                ask(relayed.url, key)
                raise AssertionError("a third concurrent request was admitted on the other gateway")
            except openai.RateLimitError as refused:
                assert refused.response.headers["x-ratelimit-limit-concurrency"] == "2"
            assert all(f.result().http_response.status_code == 200 for f in long)
        time.sleep(EXCHANGE)
        ask(relayed.url, key)

        # a budget of 3 requests a day: spent across gateways, and still spent on a
        # gateway started after the one that spent most of it stopped
        key = api.post("/keys", json={"name": "budget", "budget_requests": 3}).json()["key"]
        until(lambda: accepted(direct.url, key), 3.0)  # 1
        ask(direct.url, key)  # 2
        time.sleep(EXCHANGE)
        direct.stop()  # its last report stays in the store
        ask(relayed.url, key)  # 3
        time.sleep(EXCHANGE)
        restarted = cluster.gateway(["--registry", registry])
        wait_for_instances(restarted, "chat", 1, timeout=60)
        time.sleep(EXCHANGE)
        for gw in (relayed, restarted):
            try:
                ask(gw.url, key)
                raise AssertionError("a spent budget admitted a request")
            except openai.RateLimitError as refused:
                assert "budget" in refused.message
