"""Autoscaling in standalone mode, with a real ``corral start`` and real engines, through
HTTP with the official SDK: a model at zero wakes on its first request (which succeeds),
a load ramp scales it 0 -> 1 -> 3 -> 1 -> 0 with no failed request, every decision is an
audit event and a metric; a model whose engine cannot load answers a request at zero with
503 and the load error, not a hang; the policy is set and turned off through the CLI."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import APIStatusError, AsyncOpenAI, OpenAI

from tests.integration.servers import Server, free_port, launch, run_corral, wait_until

CONFIG = """
[[models]]
name = "chat"
kind = "llm"
engine = "transformers"
source = "demo:tiny-llama"

[models.autoscale]
min_replicas = 0
max_replicas = 3
target_in_flight = 1
upscale_delay_s = 1
downscale_delay_s = 2
downscale_to_zero_delay_s = 4
cold_start_timeout_s = 120

[[models]]
name = "broken"
kind = "llm"
engine = "transformers"
source = "/nonexistent/model/folder"

[models.autoscale]
min_replicas = 0
max_replicas = 1
cold_start_timeout_s = 120
"""


@pytest.fixture(scope="module")
def scaled(corral_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("autoscaling")
    config = folder / "corral.toml"
    config.write_text(CONFIG)
    port = free_port()
    server = launch(["start", "--config", str(config), "--port", str(port)], corral_home, folder, port)
    wait_until(server, lambda: httpx.get(f"{server.url}/health/ready", timeout=2).status_code == 200)
    yield server
    server.stop()


def model(server: Server, name: str = "chat") -> dict[str, Any]:
    return httpx.get(f"{server.url}/admin/v1/models/{name}", timeout=10).json()["model"]  # type: ignore[no-any-return]


def until(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def scale_events(server: Server, name: str = "chat") -> list[dict[str, Any]]:
    events = httpx.get(f"{server.url}/admin/v1/audit", params={"limit": 1000}, timeout=10).json()["events"]
    return [e for e in reversed(events) if e["action"] == "scale" and e["target"] == name]


def metric(server: Server, line_start: str) -> float:
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(line_start))


def test_a_ramp_scales_from_zero_to_three_and_back_to_zero_losing_nothing(scaled: Server) -> None:
    assert model(scaled)["replicas"] == 0 and model(scaled)["ready"] == 0
    client = OpenAI(base_url=f"{scaled.url}/v1", api_key="none", max_retries=0, timeout=180)
    assert "chat" in [m.id for m in client.models.list().data]  # listed while at zero

    started = time.monotonic()
    first = client.completions.create(model="chat", prompt="wake up", max_tokens=4)  # waits for the cold start
    assert first.choices[0].text is not None and time.monotonic() - started < 120
    assert model(scaled)["ready"] >= 1

    statuses: Counter[int] = Counter()
    peak = 0

    async def load(seconds: float, users: int) -> None:
        nonlocal peak
        async with AsyncOpenAI(base_url=f"{scaled.url}/v1", api_key="none", max_retries=0, timeout=180) as aclient:
            deadline = time.monotonic() + seconds

            async def user(i: int) -> None:
                while time.monotonic() < deadline:
                    try:
                        await aclient.completions.create(model="chat", prompt=f"user {i}", max_tokens=48,
                                                         extra_body={"ignore_eos": True})
                        statuses[200] += 1
                    except APIStatusError as exc:
                        statuses[exc.status_code] += 1

            async def watch() -> None:
                nonlocal peak
                async with httpx.AsyncClient(base_url=scaled.url, timeout=10) as http:
                    while time.monotonic() < deadline:
                        peak = max(peak, (await http.get("/admin/v1/models/chat")).json()["model"]["ready"])
                        await asyncio.sleep(0.2)

            await asyncio.gather(watch(), *(user(i) for i in range(8)))

    asyncio.run(load(40, 8))
    assert peak == 3, f"never reached three ready instances (peak {peak})"
    assert statuses and set(statuses) == {200}, statuses
    # idle: one at a time down to one, then to zero
    until(lambda: model(scaled)["replicas"] == 0, 90, "scale to zero")
    until(lambda: not model(scaled)["instances"], 60, "the last instance to stop")
    assert "chat" in [m.id for m in client.models.list().data]

    events = scale_events(scaled)
    assert all(e["actor"] == "autoscaler" for e in events)
    steps = [(e["detail"]["reason"], e["detail"]["from"], e["detail"]["to"]) for e in events]
    assert steps[0][0] == "wake" and steps[0][1] == 0
    assert ("up", 1, 3) in steps or any(r == "up" and t == 3 for r, _, t in steps), steps
    downs = [s for s in steps if s[0] == "down"]
    assert downs and all(t == f - 1 for _, f, t in downs), steps  # one at a time
    assert steps[-1] == ("idle", 1, 0), steps
    assert metric(scaled, 'corral_autoscaler_decisions_total{direction="up",model="chat"}') >= 2
    assert metric(scaled, 'corral_autoscaler_decisions_total{direction="down",model="chat"}') >= 2
    assert metric(scaled, 'corral_model_desired_replicas{model="chat"}') == 0

    # and it wakes again
    again = client.completions.create(model="chat", prompt="again", max_tokens=2)
    assert again.choices[0].finish_reason in ("length", "stop")


def test_a_model_that_cannot_load_answers_503_with_the_error_not_a_hang(scaled: Server) -> None:
    client = OpenAI(base_url=f"{scaled.url}/v1", api_key="none", max_retries=0, timeout=150)
    started = time.monotonic()
    with pytest.raises(APIStatusError) as caught:
        client.completions.create(model="broken", prompt="hello", max_tokens=2)
    assert caught.value.status_code == 503
    assert "nonexistent" in caught.value.message or "could not be woken" in caught.value.message
    assert time.monotonic() - started < 60  # the load error, well before the cold-start timeout


def test_the_cli_sets_shows_and_turns_off_a_policy(scaled: Server, corral_home: Path) -> None:
    address = ["--address", scaled.url]
    out = run_corral(["model", "autoscale", "broken", "--min", "0", "--max", "2", "--target-in-flight", "3", *address], corral_home)
    assert out.returncode == 0, out.stderr
    assert "0..2 @3" in out.stdout
    assert model(scaled, "broken")["autoscale"]["target_in_flight"] == 3
    listing = run_corral(["model", "list", *address], corral_home)
    assert "AUTOSCALE" in listing.stdout and "0..2 @3" in listing.stdout
    refused = run_corral(["model", "scale", "broken", "1", *address], corral_home)
    assert refused.returncode != 0 and "autoscaled" in refused.stderr
    bad = httpx.put(f"{scaled.url}/admin/v1/models/broken/autoscale", json={"min_replicas": 3, "max_replicas": 1}, timeout=10)
    assert bad.status_code == 400 and "max_replicas" in bad.json()["error"]["message"]
    off = run_corral(["model", "autoscale", "broken", "--off", *address], corral_home)
    assert off.returncode == 0 and "autoscaling off" in off.stdout
    assert model(scaled, "broken")["autoscale"] is None
    actions = [e["action"] for e in httpx.get(f"{scaled.url}/admin/v1/audit", timeout=10).json()["events"]]
    assert actions.count("autoscale") >= 2
