"""The fake upstream's pacing: with a delay, a whole (non-streamed) answer takes as long as
its stream would, so a fault test's requests stay in flight long enough to be caught."""

from __future__ import annotations

import time

import httpx

from corral.bench.fake_openai import TOKEN, FakeOpenAI


async def test_a_whole_answer_waits_the_delay_per_token() -> None:
    server = FakeOpenAI(delay_s=0.02)
    srv = await server.serve("127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    body = {"model": "fake", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10}
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            started = time.monotonic()
            resp = await http.post("/v1/chat/completions", json=body)
            took = time.monotonic() - started
            assert resp.json()["choices"][0]["message"]["content"] == TOKEN * 10
            assert 0.2 <= took < 2.0, took
            fast = FakeOpenAI()  # no delay: at once
            srv2 = await fast.serve("127.0.0.1", 0)
            started = time.monotonic()
            resp = await http.post(f"http://127.0.0.1:{srv2.sockets[0].getsockname()[1]}/v1/chat/completions", json=body)
            assert resp.status_code == 200 and time.monotonic() - started < 0.2
            srv2.close()
    finally:
        srv.close()
