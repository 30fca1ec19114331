"""Engine supervision with real processes: the real transformers batcher made to raise
inside its loop (fault injection from ``tests/integration/faults/sitecustomize.py``, in
this server only), under concurrent load, through HTTP with the official SDK.

- a crash fails only the requests of the crashed batch, each at once; queued requests
  are served after the in-place restart; ``/metrics`` and ``corral audit`` show it;
- an input in flight at two crashes is refused with a 400;
- past the restart budget the instance is marked failed and the manager replaces it,
  while ``/health/ready`` never reports the failed instance ready.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import AsyncOpenAI, BadRequestError, InternalServerError, OpenAI

from tests.integration.servers import Server, free_port, launch, run_corral, wait_until

FAULTS = Path(__file__).parent / "faults"
MODEL = "demo-chat"


@dataclass
class Faulty:
    server: Server
    trigger: Path
    home: Path
    health: list[tuple[float, int, dict[str, Any]]] = field(default_factory=list)  # (time, status, body)


@pytest.fixture(scope="module")
def faulty(corral_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Faulty]:
    folder = tmp_path_factory.mktemp("faulty")
    config = folder / "corral.toml"
    config.write_text(
        f'[[models]]\nname = "{MODEL}"\nkind = "llm"\nengine = "transformers"\nsource = "demo:tiny-llama"\n'
        "[models.options]\nmax_batch_size = 4\n"
    )
    trigger = folder / "trigger"
    env = {
        "PYTHONPATH": os.pathsep.join([str(FAULTS), os.environ.get("PYTHONPATH", "")]),
        "CORRAL_TEST_FAULTS": str(trigger),
    }
    port = free_port()
    server = launch(["start", "--config", str(config), "--port", str(port)], corral_home, folder, port, env)
    wait_until(server, lambda: httpx.get(f"{server.url}/health/ready", timeout=2).status_code == 200)
    faulty = Faulty(server, trigger, corral_home)
    stop = threading.Event()

    def poll() -> None:  # what /health/ready said, every 50 ms, for the whole module
        with httpx.Client(base_url=server.url, timeout=5) as http:
            while not stop.is_set():
                try:
                    resp = http.get("/health/ready")
                    faulty.health.append((time.monotonic(), resp.status_code, resp.json()))
                except httpx.HTTPError:
                    pass
                stop.wait(0.05)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    yield faulty
    stop.set()
    poller.join(5)
    server.stop()


def engine_counter(server: Server, name: str) -> float:
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
        if line.startswith(name + "{") and f'model="{MODEL}"' in line
    )


def audit(faulty: Faulty) -> list[dict[str, Any]]:
    result = run_corral(["audit", "--address", faulty.server.url, "--limit", "100", "--json"], faulty.home)
    assert result.returncode == 0, result.stderr
    return list(json.loads(result.stdout)["events"])


def until(condition: Any, timeout: float = 60, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


async def stream_until_error(http: httpx.AsyncClient, prompt: str, started: asyncio.Event) -> tuple[int, float]:
    """Streams a long completion, read as raw SSE: (chunks received, when it failed). The
    failure must be an ``error`` event (``engine_error``) and then ``[DONE]``, not a cut stream."""
    chunks, events = 0, []
    body = {"model": MODEL, "prompt": prompt, "max_tokens": 1500, "stream": True, "ignore_eos": True}
    async with http.stream("POST", "/v1/completions", json=body) as resp:
        assert resp.status_code == 200
        async for line in resp.aiter_lines():
            if not line.startswith("data: "):
                continue
            events.append(line[6:])
            if line != "data: [DONE]" and "error" not in json.loads(line[6:]):
                chunks += 1
                started.set()
            elif "error" in line:
                failed_at = time.monotonic()
    assert events[-1] == "[DONE]", f"{prompt!r}: the stream did not end with [DONE]: {events[-2:]}"
    error = json.loads(events[-2]).get("error")
    assert error is not None, f"{prompt!r} finished instead of failing"
    assert error["code"] == "engine_error", error
    return chunks, failed_at


def test_a_crash_fails_only_its_batch_at_once_and_the_queue_is_served(faulty: Faulty) -> None:
    server = faulty.server

    async def scenario() -> None:
        client = AsyncOpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0, timeout=60)
        raw = httpx.AsyncClient(base_url=server.url, timeout=60)
        batch = [f"innocent {i}" for i in range(3)] + ["FAULT-ON-TRIGGER a"]
        flags = [asyncio.Event() for _ in batch]
        streams = []
        for prompt, flag in zip(batch, flags):  # fill the batch (4), one after another
            streams.append(asyncio.create_task(stream_until_error(raw, prompt, flag)))
            await asyncio.wait_for(flag.wait(), 60)
        queued = [
            asyncio.create_task(client.completions.create(model=MODEL, prompt=f"queued {i}", max_tokens=5, extra_body={"ignore_eos": True}))
            for i in range(2)
        ]
        async with httpx.AsyncClient(base_url=server.url) as http:
            while True:  # both queued inside the engine, behind the full batch
                models = (await http.get("/admin/v1/models")).json()["models"]
                if sum(i["queued"] or 0 for m in models for i in m["instances"]) >= 2:
                    break
                await asyncio.sleep(0.1)
        armed = time.monotonic()
        faulty.trigger.touch()
        try:
            results = await asyncio.wait_for(asyncio.gather(*streams), 30)
            for chunks, failed_at in results:
                assert chunks >= 1
                assert failed_at - armed < 5, "a request of the crashed batch was not failed at once"
            answers = await asyncio.wait_for(asyncio.gather(*queued), 60)
            assert [a.usage.completion_tokens for a in answers] == [5, 5]  # type: ignore[union-attr]
        finally:
            faulty.trigger.unlink()
        await client.close()
        await raw.aclose()

    asyncio.run(scenario())
    with OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0, timeout=60) as client:
        out = client.completions.create(model=MODEL, prompt="after", max_tokens=3)
        assert out.usage is not None and out.usage.completion_tokens >= 1
    until(lambda: engine_counter(server, "corral_engine_restarts_total") == 1, what="the restart in /metrics")
    assert engine_counter(server, "corral_engine_crashes_total") == 1
    until(lambda: {"engine-crash", "engine-restart"} <= {e["action"] for e in audit(faulty)}, what="the audit events")


def test_an_input_that_crashed_the_engine_twice_is_refused(faulty: Faulty) -> None:
    server = faulty.server
    with OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0, timeout=60) as client:
        for attempt in (1, 2):
            with pytest.raises(InternalServerError) as crashed:
                client.completions.create(model=MODEL, prompt="FAULT-NOW twice", max_tokens=50,
                                          extra_headers={"x-request-id": f"crash-loop-{attempt}"})
            assert crashed.value.body["code"] == "engine_error"  # type: ignore[index]
            until(lambda: httpx.get(f"{server.url}/health/ready").status_code == 200, what="the restart")
        with pytest.raises(BadRequestError) as refused:
            client.completions.create(model=MODEL, prompt="FAULT-NOW twice", max_tokens=50,
                                      extra_headers={"x-request-id": "crash-loop-3"})
        assert refused.value.body["code"] == "input_crashed_engine"  # type: ignore[index]
        assert "crash-loop-3" in server.log()  # logged with its request id
        out = client.completions.create(model=MODEL, prompt="fine", max_tokens=3)
        assert out.usage is not None and out.usage.completion_tokens >= 1


def test_past_its_budget_the_instance_is_failed_and_replaced(faulty: Faulty) -> None:
    server = faulty.server
    http = httpx.Client(base_url=server.url, timeout=60)
    old = http.post("/v1/completions", json={"model": MODEL, "prompt": "which", "max_tokens": 1}).headers["x-corral-instance"]
    failed_at = None
    crashed_at = time.monotonic()

    def state_of_old() -> str:
        models = http.get("/admin/v1/models").json()["models"]
        return next((i["state"] for m in models for i in m["instances"] if i["id"] == old), "gone")

    for i in range(12):  # distinct inputs (none refused) until the supervisor gives up
        resp = http.post("/v1/completions", json={"model": MODEL, "prompt": f"FAULT-NOW budget {i}", "max_tokens": 20})
        if resp.status_code == 503 and "crashed" in resp.json()["error"]["message"]:
            failed_at = crashed_at  # it gave up at the last crash; the worker had not published it yet
            break
        assert resp.status_code == 500 and resp.json()["error"]["code"] == "engine_error", resp.text
        crashed_at = time.monotonic()
        until(lambda: state_of_old() != "starting", what="the restart or the failure")  # restarting: not ready
        if state_of_old() != "ready":
            failed_at = crashed_at
            break
    assert failed_at is not None, "the engine never gave up"
    until(lambda: http.get("/health/ready").status_code == 503, timeout=1.0, what="health to turn false")
    until(lambda: http.get("/health/ready").status_code == 200, timeout=120, what="the replacement")
    resp = http.post("/v1/completions", json={"model": MODEL, "prompt": "again", "max_tokens": 3})
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-corral-instance"] != old
    # health never said ready for the failed instance once it had failed (1 s to notice)
    for when, status, body in list(faulty.health):
        if when > failed_at + 1.0 and status == 200:
            ready = [i["id"] for i in body["models"].get(MODEL, {}).get("instances", ()) if i["state"] == "ready"]
            assert old not in ready
    events = audit(faulty)
    assert any(e["action"] == "instance-failed" and e["target"] == old for e in events), events
    http.close()


def test_readiness_follows_the_deployed_models_not_the_start_up_config(faulty: Faulty) -> None:
    with httpx.Client(base_url=faulty.server.url, timeout=60) as http:
        until(lambda: http.get("/health/ready").status_code == 200, what="ready")
        resp = http.post("/admin/v1/models", json={"name": "extra", "engine": "transformers", "source": "demo:tiny-llama"})
        assert resp.status_code in (200, 201), resp.text
        assert http.get("/health/ready").status_code == 503  # deployed, not serving yet
        until(lambda: http.get("/health/ready").status_code == 200, what="extra to load")
        assert http.post("/admin/v1/models/extra/scale", json={"replicas": 0}).status_code == 200
        assert http.post(f"/admin/v1/models/{MODEL}/scale", json={"replicas": 0}).status_code == 200
        ready = http.get("/health/ready")
        assert ready.status_code == 200, ready.text  # nothing is meant to serve: nothing is missing
        assert http.post(f"/admin/v1/models/{MODEL}/scale", json={"replicas": 1}).status_code == 200
        assert http.delete("/admin/v1/models/extra").status_code in (200, 202, 204)
        until(lambda: http.get("/health/ready").status_code == 200, what=f"{MODEL} back")
        resp = http.post("/v1/completions", json={"model": MODEL, "prompt": "back", "max_tokens": 2})
        assert resp.status_code == 200, resp.text
