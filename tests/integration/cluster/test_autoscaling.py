"""Autoscaling in a cluster, with real processes on loopback: a model deployed at zero
through the admin API wakes when a request reaches a gateway (which holds it, reports it
to the controller at once, and serves it once the new instance is ready), scales up on
the demand the gateway and the worker report, and goes back to zero when idle; the
controller's audit log and /metrics show each decision."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import httpx
from openai import APIStatusError, AsyncOpenAI, OpenAI

from tests.integration.cluster.harness import Cluster, admin, wait_model

POLICY = {"min_replicas": 0, "max_replicas": 2, "target_in_flight": 1, "upscale_delay_s": 1,
          "downscale_delay_s": 2, "downscale_to_zero_delay_s": 4, "cold_start_timeout_s": 120}


def test_a_cluster_wakes_a_model_at_zero_scales_it_and_returns_it_to_zero(corral_home: Path, tmp_path: Path) -> None:
    cluster = Cluster(corral_home, tmp_path)
    try:
        controller = cluster.controller()
        join = ["--controller", controller.url]
        cluster.worker(join, config=None, wait=False)
        gateway = cluster.gateway(join)
        api = admin(controller.url)
        deadline = time.monotonic() + 120
        while not api.get("/workers").json()["workers"] and time.monotonic() < deadline:
            time.sleep(0.2)
        spec = {"name": "chat", "engine": "transformers", "source": "demo:tiny-llama", "autoscale": POLICY}
        created = api.post("/models", json=spec)
        assert created.status_code == 201, created.text
        assert created.json()["model"]["replicas"] == 0

        # the gateway lists the model at zero (its standby record) and holds the first request
        deadline = time.monotonic() + 30
        client = OpenAI(base_url=f"{gateway.url}/v1", api_key="none", max_retries=0, timeout=180)
        while "chat" not in [m.id for m in client.models.list().data]:
            assert time.monotonic() < deadline, "the gateway never listed the model at zero"
            time.sleep(0.2)
        first = client.completions.create(model="chat", prompt="wake up", max_tokens=3)
        assert first.choices[0].finish_reason in ("length", "stop")

        statuses: Counter[int] = Counter()

        async def load(seconds: float, users: int) -> None:
            async with AsyncOpenAI(base_url=f"{gateway.url}/v1", api_key="none", max_retries=0, timeout=180) as aclient:
                end = time.monotonic() + seconds

                async def user(i: int) -> None:
                    while time.monotonic() < end:
                        try:
                            await aclient.completions.create(model="chat", prompt=f"u{i}", max_tokens=48,
                                                             extra_body={"ignore_eos": True})
                            statuses[200] += 1
                        except APIStatusError as exc:
                            statuses[exc.status_code] += 1

                await asyncio.gather(*(user(i) for i in range(6)))

        asyncio.run(load(25, 6))
        assert statuses and set(statuses) == {200}, statuses
        wait_model(api, "chat", lambda m: m["replicas"] == 0 and not m["instances"], 120)

        events = [e for e in reversed(api.get("/audit", params={"limit": 500}).json()["events"])
                  if e["action"] == "scale" and e["target"] == "chat"]
        steps = [(e["detail"]["reason"], e["detail"]["from"], e["detail"]["to"]) for e in events]
        assert all(e["actor"] == "autoscaler" for e in events)
        assert steps[0][:2] == ("wake", 0), steps
        assert any(r == "up" and t == 2 for r, _, t in steps), steps
        assert steps[-1] == ("idle", 1, 0), steps
        text = httpx.get(f"{controller.url}/metrics", timeout=10).text
        assert 'corral_model_desired_replicas{model="chat"} 0.0' in text
        assert 'corral_autoscaler_decisions_total{direction="up",model="chat"}' in text
    finally:
        cluster.stop()
