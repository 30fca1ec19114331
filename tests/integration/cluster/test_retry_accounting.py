"""What a gateway records for a request that failed on one instance and was answered by
another: only the winning attempt (its outcome, text, instance and tokens) is in the
request's record and metrics; the lost attempt is a ``corral.attempt`` span of its trace,
with its error, and counts in ``corral_retries_total``.

Two light workers (openai-compatible engines in front of the loopback fake upstream of
the engine's unit tests) serve the model ``chat``: worker A's upstream breaks every stream
after two deltas (``drop``: the engine raises ``InstanceLost`` mid-generation), worker
B's answers. ``solo`` is served by B only."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.cluster.harness import Cluster, wait_for_instances, worker_status
from tests.integration.cluster.recorded import metric, record, trace_show, trace_spans
from tests.integration.servers import Server
from tests.unit.engines.openai_compatible.fake_upstream import FakeUpstream

pytestmark = pytest.mark.integration

ANSWER = "Hello world"  # the fake upstream's whole text; usage 5 prompt + 3 completion tokens


def model_entry(name: str, url: str, upstream_model: str, routing: str = "round_robin") -> str:
    return (
        f'[[models]]\nname = "{name}"\nkind = "llm"\nengine = "openai-compatible"\nsource = "{url}"\n'
        f'routing = "{routing}"\n[models.options]\nupstream_model = "{upstream_model}"\nverify_on_start = false\n\n'
    )


@dataclass
class Env:
    gateway: Server
    home: Path
    records: str
    db: Path
    dropping: str  # worker A's instance of "chat"
    answering: str  # worker B's instance of "chat"
    solo: str  # worker B's instance of "solo"


@pytest.fixture(scope="module")
def env(corral_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    logs = tmp_path_factory.mktemp("retry-accounting")
    db = logs / "records.db"
    with FakeUpstream() as upstream:
        a, b = logs / "a.toml", logs / "b.toml"
        a.write_text(model_entry("chat", upstream.url, "drop"))
        b.write_text(model_entry("chat", upstream.url, "ok") + model_entry("solo", upstream.url, "ok"))
        cluster = Cluster(corral_home, logs)
        try:
            join = ["--controller", cluster.controller().url]
            worker_a, worker_b = cluster.worker(join, a), cluster.worker(join, b)
            gateway = cluster.gateway(join, ["--records", f"sqlite:///{db}", "--capture-text"])
            wait_for_instances(gateway, "chat", 2)
            wait_for_instances(gateway, "solo", 1)
            on_a, on_b = ({i["model"]: i["id"] for i in worker_status(w)["instances"]} for w in (worker_a, worker_b))
            yield Env(gateway, corral_home, f"sqlite:///{db}", db, on_a["chat"], on_b["chat"], on_b["solo"])
        finally:
            cluster.stop()


def post(env: Env, route: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{env.gateway.url}/v1/{route}", json=body, timeout=60)


def test_a_request_lost_mid_generation_records_only_the_attempt_that_answered(env: Env) -> None:
    retries_before = metric(env.gateway.url, "corral_retries_total", model="chat")
    responses = []
    for _ in range(2):  # round robin: one of two requests starts on the dropping worker
        resp = post(env, "chat/completions", {"model": "chat", "messages": [{"role": "user", "content": "hi"}]})
        assert resp.status_code == 200, resp.text
        assert resp.json()["choices"][0]["message"]["content"] == ANSWER
        assert resp.headers["x-corral-instance"] == env.answering
        responses.append(resp)
    recs = [record(env.db, r.headers["x-request-id"]) for r in responses]
    for rec in recs:
        assert rec["outcome"] == "ok" and rec["http_status"] == 200 and rec["error"] is None, rec
        assert rec["completion_text"] == ANSWER, rec  # not the lost attempt's "Hello" before it
        assert (rec["instance_id"], rec["prompt_tokens"], rec["completion_tokens"]) == (env.answering, 5, 3)
    assert {rec["retries"] for rec in recs} <= {0, 1}
    retried = next(rec for rec in recs if rec["retries"] == 1)  # round robin sends one at least to A first

    spans = {s["name"]: s for s in trace_spans(env.records, env.home, retried["trace_id"])}
    assert set(spans) == {"chat chat", "corral.attempt", "corral.worker", "corral.engine.generate"}
    lost = spans["corral.attempt"]
    assert lost["parent_span_id"] == spans["chat chat"]["span_id"]
    assert lost["attributes"]["corral.instance_id"] == env.dropping
    assert lost["attributes"]["corral.error_code"] == "instance_lost", lost
    assert spans["corral.worker"]["attributes"]["corral.instance_id"] == env.answering
    assert spans["chat chat"]["attributes"]["corral.outcome"] == "ok"
    tree = trace_show(env.records, env.home, retried["trace_id"]).splitlines()
    (attempt,) = [line for line in tree if line.strip().startswith("corral.attempt")]
    assert f"instance={env.dropping}" in attempt and "outcome=error" in attempt and "error=lost" in attempt, tree

    assert metric(env.gateway.url, "corral_requests_total", model="chat", instance_id=env.dropping) == 0
    assert metric(env.gateway.url, "corral_requests_total", model="chat", outcome="error") == 0
    assert metric(env.gateway.url, "corral_retries_total", model="chat") == retries_before + sum(r["retries"] for r in recs)


def test_whole_prompts_fail_over_one_by_one(env: Env) -> None:
    resp = post(env, "completions", {"model": "chat", "prompt": ["a", "b"], "max_tokens": 8})
    assert resp.status_code == 200, resp.text  # a prompt that started on the dropping worker was retried
    body = resp.json()
    assert [c["text"] for c in body["choices"]] == [ANSWER, ANSWER]
    assert body["usage"]["completion_tokens"] == 6
    rec = record(env.db, resp.headers["x-request-id"])
    assert (rec["outcome"], rec["instance_id"], rec["prompt_tokens"], rec["completion_tokens"]) == ("ok", env.answering, 10, 6)
    assert rec["retries"] >= 1 and resp.headers["x-corral-instance"] == env.answering


def test_a_streamed_completion_of_several_prompts_records_tokens_and_instance(env: Env) -> None:
    body = {"model": "solo", "prompt": ["a", "b"], "stream": True, "stream_options": {"include_usage": True}}
    with httpx.stream("POST", f"{env.gateway.url}/v1/completions", json=body, timeout=60) as resp:
        assert resp.status_code == 200
        events = [line[6:] for line in resp.iter_lines() if line.startswith("data: ")]
        rid, served = resp.headers["x-request-id"], resp.headers["x-corral-instance"]
    assert events[-1] == "[DONE]"
    usage = json.loads(events[-2])["usage"]
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (10, 6)
    assert served == env.solo  # was "multiple"
    rec = record(env.db, rid)
    assert (rec["outcome"], rec["instance_id"], rec["engine"]) == ("ok", env.solo, "openai-compatible")
    assert (rec["prompt_tokens"], rec["completion_tokens"]) == (10, 6)  # were 0 and 0
    assert sorted(rec["completion_text"].split("Hello world")) == ["", "", ""]  # both prompts' text
    assert rec["ttft_s"] is not None
