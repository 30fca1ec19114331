"""``GET /metrics`` on real servers: known traffic in, exact counters out.

The standalone server gets its own process (the shared demo server sees other tests'
traffic), so every counter starts at zero and must equal what these tests sent.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.cluster.harness import CLUSTER_TOKEN, Cluster, wait_for_instances, worker_config
from tests.integration.conftest import DEMO_CONFIG, write_config
from tests.integration.servers import Server, start_corral

CHAT = "demo-chat"
EMBED = "all-minilm-l6-v2"
MAX_TOKENS = 8

Samples = list[tuple[str, dict[str, str], float]]


@dataclass
class Sent:
    """What the traffic was and what the responses reported."""

    chat: int = 0
    chat_stream: int = 0
    embeddings: int = 0
    unknown: int = 0
    chat_prompt_tokens: int = 0
    chat_completion_tokens: int = 0
    embed_prompt_tokens: int = 0
    instances: dict[str, set[str]] = field(default_factory=dict)  # model -> x-corral-instance seen


def send_traffic(url: str, chat: int = 3, chat_stream: int = 2, embeddings: int = 2, unknown: int = 1) -> Sent:
    sent = Sent()
    messages = [{"role": "user", "content": "Say hello"}]
    with httpx.Client(base_url=f"{url}/v1", timeout=120) as client:
        for _ in range(chat):
            body = {"model": CHAT, "messages": messages, "max_tokens": MAX_TOKENS, "ignore_eos": True}
            resp = client.post("/chat/completions", json=body)
            assert resp.status_code == 200, resp.text
            usage = resp.json()["usage"]
            sent.chat += 1
            sent.chat_prompt_tokens += usage["prompt_tokens"]
            sent.chat_completion_tokens += usage["completion_tokens"]
            sent.instances.setdefault(CHAT, set()).add(resp.headers["x-corral-instance"])
        for _ in range(chat_stream):
            body = {"model": CHAT, "messages": messages, "max_tokens": MAX_TOKENS, "ignore_eos": True,
                    "stream": True, "stream_options": {"include_usage": True}}
            with client.stream("POST", "/chat/completions", json=body) as resp:
                assert resp.status_code == 200
                sent.instances.setdefault(CHAT, set()).add(resp.headers["x-corral-instance"])
                usage = None
                for line in resp.iter_lines():
                    if line.startswith("data: {"):
                        usage = json.loads(line[6:]).get("usage") or usage
            assert usage is not None
            sent.chat_stream += 1
            sent.chat_prompt_tokens += usage["prompt_tokens"]
            sent.chat_completion_tokens += usage["completion_tokens"]
        for i in range(embeddings):
            resp = client.post("/embeddings", json={"model": EMBED, "input": ["hello world", f"text number {i}"]})
            assert resp.status_code == 200, resp.text
            sent.embeddings += 1
            sent.embed_prompt_tokens += resp.json()["usage"]["prompt_tokens"]
            sent.instances.setdefault(EMBED, set()).add(resp.headers["x-corral-instance"])
        for _ in range(unknown):
            resp = client.post("/chat/completions", json={"model": "no-such-model", "messages": messages})
            assert resp.status_code == 404
            sent.unknown += 1
    return sent


def scrape(url: str, headers: dict[str, str] | None = None) -> Samples:
    resp = httpx.get(f"{url}/metrics", headers=headers, timeout=10)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/plain")
    families = [f.name for f in text_string_to_metric_families(resp.text)]
    assert len(families) == len(set(families)), f"metric names collide: {sorted(families)}"
    return [(s.name, s.labels, s.value) for f in text_string_to_metric_families(resp.text) for s in f.samples]


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of every sample of ``name`` whose labels include ``labels``."""
    found = [v for n, ls, v in samples if n == name and all(ls.get(k) == w for k, w in labels.items())]
    assert found, f"no sample {name}{labels}"
    return sum(found)


@pytest.fixture(scope="module")
def server(corral_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    config = write_config(tmp_path_factory.mktemp("metrics-config"), DEMO_CONFIG)
    server = start_corral(["--config", str(config)], corral_home, tmp_path_factory.mktemp("metrics-logs"))
    yield server
    server.stop()


def test_standalone_metrics_count_the_traffic_exactly(server: Server) -> None:
    sent = send_traffic(server.url)
    s = scrape(server.url)
    chats = sent.chat + sent.chat_stream

    assert value(s, "corral_requests_total", model=CHAT, route="chat", outcome="ok") == chats
    assert value(s, "corral_requests_total", model=EMBED, route="embedding", outcome="ok") == sent.embeddings
    assert value(s, "corral_requests_total", model="", route="chat", outcome="error") == sent.unknown
    assert value(s, "corral_requests_total") == chats + sent.embeddings + sent.unknown
    served = {ls["instance_id"] for n, ls, _ in s if n == "corral_requests_total" and ls["model"] == CHAT}
    assert served == sent.instances[CHAT]
    assert not [ls for _, ls, _ in s if ls.get("model") == "no-such-model"]

    assert value(s, "corral_request_duration_seconds_count", model=CHAT, route="chat") == chats
    assert value(s, "corral_request_duration_seconds_sum", model=CHAT, route="chat") > 0
    assert value(s, "corral_request_duration_seconds_bucket", model=CHAT, route="chat", le="+Inf") == chats
    assert value(s, "corral_request_duration_seconds_count", model=EMBED, route="embedding") == sent.embeddings
    assert value(s, "corral_request_duration_seconds_sum", model=EMBED, route="embedding") > 0
    assert value(s, "corral_request_duration_seconds_count", model="", route="chat") == sent.unknown

    assert value(s, "corral_time_to_first_token_seconds_count", model=CHAT) == chats
    ttft_sum = value(s, "corral_time_to_first_token_seconds_sum", model=CHAT)
    assert 0 < ttft_sum < value(s, "corral_request_duration_seconds_sum", model=CHAT, route="chat")
    gaps = value(s, "corral_inter_token_latency_seconds_count", model=CHAT)
    assert 1 <= gaps <= chats * (MAX_TOKENS - 1)
    assert value(s, "corral_inter_token_latency_seconds_sum", model=CHAT) > 0

    assert value(s, "corral_prompt_tokens_total", model=CHAT) == sent.chat_prompt_tokens
    assert value(s, "corral_completion_tokens_total", model=CHAT) == sent.chat_completion_tokens
    assert sent.chat_completion_tokens == chats * MAX_TOKENS
    assert value(s, "corral_prompt_tokens_total", model=EMBED) == sent.embed_prompt_tokens > 0
    assert value(s, "corral_retries_total", model=CHAT) == 0

    # the router's view, read at scrape time: everything finished, every instance routable
    assert value(s, "corral_requests_in_flight") == 0
    for model in (CHAT, EMBED):
        assert value(s, "corral_instance_up", model=model) == len(sent.instances[model]) == 1

    # the worker's engines, in the same scrape
    assert value(s, "corral_engine_requests_completed_total", model=CHAT) >= chats
    assert value(s, "corral_engine_in_flight") == 0 and value(s, "corral_engine_queued") == 0
    for model in (CHAT, EMBED):
        assert value(s, "corral_instance_state", model=model, state="ready") == 1
        assert value(s, "corral_instance_state", model=model, state="starting") == 0
        assert value(s, "corral_model_load_seconds", model=model) > 0


def test_metrics_need_no_api_key(demo_server: Server) -> None:
    """The shared demo server requires an API key on /v1; Prometheus scrapes without one."""
    assert httpx.post(f"{demo_server.url}/v1/embeddings", json={"model": EMBED, "input": "x"}).status_code == 401
    assert value(scrape(demo_server.url), "corral_instance_up", model=EMBED) == 1


def test_cluster_gateway_and_worker_serve_their_own_metrics(corral_home: Path, tmp_path: Path) -> None:
    cluster = Cluster(corral_home, tmp_path)
    try:
        controller = cluster.controller()
        join = ["--controller", controller.url]
        worker = cluster.worker(join, worker_config(tmp_path, "w", [{"name": "chat"}]))
        gateway = cluster.gateway(join)
        (instance,) = wait_for_instances(gateway, "chat", 1, timeout=120)
        messages = [{"role": "user", "content": "hi"}]
        for _ in range(3):
            body = {"model": "chat", "messages": messages, "max_tokens": 4, "ignore_eos": True}
            assert httpx.post(f"{gateway.url}/v1/chat/completions", json=body, timeout=60).status_code == 200

        g = scrape(gateway.url)
        assert value(g, "corral_requests_total", model="chat", instance_id=instance["id"], outcome="ok") == 3
        assert value(g, "corral_completion_tokens_total", model="chat") == 12
        assert value(g, "corral_time_to_first_token_seconds_count", model="chat") == 3
        assert value(g, "corral_instance_up", model="chat", instance_id=instance["id"]) == 1

        w = scrape(worker.url, {"authorization": f"Bearer {CLUSTER_TOKEN}"})
        assert value(w, "corral_engine_requests_completed_total", model="chat", instance_id=instance["id"]) >= 3
        assert value(w, "corral_instance_state", model="chat", instance_id=instance["id"], state="ready") == 1
        assert value(w, "corral_model_load_seconds", model="chat") > 0
    finally:
        cluster.stop()
