"""Closed- and open-loop load against the in-process fake OpenAI server: counts,
timings, tokens, errors by status, request bodies, and how a load is split."""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson
import pytest

from corral.bench import loadgen
from corral.bench.fake_openai import FakeOpenAI
from corral.bench.http import fetch, Target
from corral.bench.stats import summarize


@pytest.fixture
async def fake() -> AsyncIterator[tuple[FakeOpenAI, str]]:
    server = FakeOpenAI(("m1", "m2"), api_key="sekret")
    srv = await server.serve("127.0.0.1", 0)
    yield server, f"http://127.0.0.1:{srv.sockets[0].getsockname()[1]}/v1"
    srv.close()


def _config(url: str, **kw: object) -> loadgen.LoadConfig:
    base: dict[str, object] = {"url": url, "model": "m1", "api_key": "sekret", "duration_s": None, "requests": 40}
    return loadgen.LoadConfig(**{**base, **kw})  # type: ignore[arg-type]


async def test_closed_loop_counts_every_request_once(fake) -> None:  # type: ignore[no-untyped-def]
    server, url = fake
    samples = await loadgen.run_async(_config(url, concurrency=4, max_tokens=5))
    out = summarize(samples)
    assert out["ok"] == 40 and out["failed"] == 0 and server.served == 40
    assert out["output_tokens"] == 40 * 5 and out["prompt_tokens"] == 40 * 32
    assert out["latency_ms"]["count"] == 40 and out["ttft_ms"]["count"] == 0
    assert server.connections == 4  # one keep-alive connection per client


async def test_streaming_measures_ttft_and_gaps(fake) -> None:  # type: ignore[no-untyped-def]
    _, url = fake
    samples = await loadgen.run_async(_config(url, concurrency=2, stream=True, max_tokens=8, requests=10))
    out = summarize(samples)
    assert out["ok"] == 10 and out["output_tokens"] == 80
    assert out["ttft_ms"]["count"] == 10 and out["itl_ms"]["count"] == 10 * 7
    assert out["ttft_ms"]["p50"] <= out["latency_ms"]["p50"]


async def test_completions_and_embeddings_endpoints(fake) -> None:  # type: ignore[no-untyped-def]
    _, url = fake
    text = summarize(await loadgen.run_async(_config(url, endpoint="completions", stream=True, requests=5)))
    assert text["ok"] == 5 and text["ttft_ms"]["count"] == 5 and text["output_tokens"] == 5 * 16
    emb = summarize(await loadgen.run_async(_config(url, endpoint="embeddings", inputs=3, requests=5)))
    assert emb["ok"] == 5 and emb["failed"] == 0


async def test_errors_are_counted_by_status(fake) -> None:  # type: ignore[no-untyped-def]
    _, url = fake
    out = summarize(await loadgen.run_async(_config(url, model="error-503", requests=12, concurrency=3)))
    assert out["ok"] == 0 and out["errors"] == {"503": 12}
    assert "requested failure 503" in out["error_examples"]["503"]  # the first answer, kept once
    out = summarize(await loadgen.run_async(_config(url, api_key="wrong", requests=3)))
    assert out["errors"] == {"401": 3}


async def test_unreachable_server_counts_connection_errors_and_stops() -> None:
    out = summarize(await loadgen.run_async(_config("http://127.0.0.1:9/v1", requests=3, concurrency=1)))
    assert out["ok"] == 0 and out["errors"] == {"connection refused": 3}
    assert list(out["error_examples"]) == ["connection refused"]


async def test_open_loop_keeps_the_schedule(fake) -> None:  # type: ignore[no-untyped-def]
    server, url = fake
    samples = await loadgen.run_async(_config(url, rate=200.0, requests=None, duration_s=0.5))
    out = summarize(samples)
    assert 80 <= out["ok"] <= 101 and out["failed"] == 0  # 100 scheduled in 0.5 s
    assert server.connections < 20  # connections are reused, not one per request


async def test_duration_stops_the_run(fake) -> None:  # type: ignore[no-untyped-def]
    _, url = fake
    samples = await loadgen.run_async(_config(url, requests=None, duration_s=0.3, concurrency=2))
    assert samples.ok > 10 and 0.25 <= samples.elapsed_s < 1.0


async def test_preflight_picks_the_first_model_and_reports_unreachable(fake) -> None:  # type: ignore[no-untyped-def]
    _, url = fake
    assert await loadgen.preflight(_config(url, model="")) == "m1"
    assert await loadgen.preflight(_config(url, model="given")) == "given"
    with pytest.raises(loadgen.Unreachable, match="api-key"):
        await loadgen.preflight(_config(url, model="", api_key=None))
    with pytest.raises(loadgen.Unreachable, match="cannot reach http://127.0.0.1:9/v1: connection refused"):
        await loadgen.preflight(_config("http://127.0.0.1:9/v1"))


async def test_fake_server_routes(fake) -> None:  # type: ignore[no-untyped-def]
    _, url = fake
    target = Target.parse(url)
    auth = {"authorization": "Bearer sekret"}
    status, body = await fetch(target, "GET", "/models", headers=auth)
    assert status == 200 and [m["id"] for m in orjson.loads(body)["data"]] == ["m1", "m2"]
    status, body = await fetch(target, "POST", "/chat/completions", b'{"model":"m1","max_tokens":3}', auth)
    answer = orjson.loads(body)
    assert answer["choices"][0]["message"]["content"] == " tok" * 3 and answer["usage"]["completion_tokens"] == 3
    assert (await fetch(target, "POST", "/chat/completions", b"not json", auth))[0] == 400
    assert (await fetch(target, "GET", "/nope", headers=auth))[0] == 404


def test_request_body_shapes() -> None:
    chat = orjson.loads(loadgen.request_body(loadgen.LoadConfig(url="http://h/v1", model="m", stream=True,
                                                                prompt_tokens=4, max_tokens=7)))
    assert chat["messages"][0]["content"].split() == ["the", "quick", "brown", "fox"]
    assert chat["max_tokens"] == 7 and chat["stream"] is True and chat["stream_options"] == {"include_usage": True}
    emb = orjson.loads(loadgen.request_body(loadgen.LoadConfig(url="http://h/v1", model="m", endpoint="embeddings",
                                                               inputs=3, extra_body={"dimensions": 8})))
    assert len(emb["input"]) == 3 and emb["dimensions"] == 8 and "max_tokens" not in emb
    with pytest.raises(ValueError):
        loadgen.LoadConfig(url="http://h/v1", model="m", endpoint="embeddings", stream=True)
    with pytest.raises(ValueError):
        loadgen.LoadConfig(url="http://h/v1", model="m", duration_s=None, requests=None)


def test_split_divides_concurrency_rate_and_requests() -> None:
    config = loadgen.LoadConfig(url="http://h/v1", model="m", concurrency=5, requests=11)
    parts = loadgen.split(config, 2)
    assert [p.concurrency for p in parts] == [3, 2] and [p.requests for p in parts] == [6, 5]
    assert len(loadgen.split(loadgen.LoadConfig(url="http://h/v1", model="m", concurrency=1), 4)) == 1
    rated = loadgen.split(loadgen.LoadConfig(url="http://h/v1", model="m", rate=100.0), 4)
    assert [p.rate for p in rated] == [25.0] * 4
