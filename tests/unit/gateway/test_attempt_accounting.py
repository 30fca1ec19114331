"""Accounting of a request tried on several instances: each attempt measures itself, only
the one whose answer the client gets is committed to the request's event; the others are
``corral.attempt`` spans with their error and count in ``retries``."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest

from corral.core.errors import EngineError, InstanceLost, Unreachable
from corral.core.observe import RequestEvent
from corral.core.types import GenerationChunk, GenerationEnd, GenerationRequest, SamplingParams
from corral.gateway.pipeline import Pipeline
from corral.gateway.tracking import MULTIPLE
from tests.unit.gateway.test_pipeline import Cluster, FakeEngine, cluster, drain, greq  # noqa: F401 (fixture)


class LostMidStream(FakeEngine):
    """Sends a first delta, then its worker is gone."""

    async def _stream(self) -> AsyncIterator[GenerationChunk | GenerationEnd]:
        self.started += 1
        yield GenerationChunk(0, "pa")
        yield GenerationChunk(0, "r")
        raise InstanceLost("lost the instance at http://w1 mid-stream (ServerDisconnectedError)")


class FailsMidStream(FakeEngine):
    async def _stream(self) -> AsyncIterator[GenerationChunk | GenerationEnd]:
        yield GenerationChunk(0, "x")
        raise EngineError("engine exploded")


def new_event() -> RequestEvent:
    return RequestEvent(
        "req-1", "completion", time.time(), model="llm", clock_start=time.perf_counter(),
        trace_id="ab" * 16, span_id="cd" * 8, completion_text="",
    )


def attempts(event: RequestEvent) -> list[dict]:
    return [s for s in event.spans if s["name"] == "corral.attempt"]


async def test_a_request_lost_mid_way_and_answered_elsewhere_records_only_the_winner(cluster: Cluster) -> None:
    await cluster.add("a", LostMidStream())  # round robin: "a" first
    await cluster.add("b", FakeEngine(words=("hel", "lo", "!")))
    event = new_event()
    served, choices, usage = await Pipeline(cluster.router).complete(greq(), "completion", event)
    assert served == "b" and choices[0].text == "hello!"
    assert event.outcome == "ok" and event.error is None  # was "error"
    assert event.completion_text == "hello!"  # was "parhello!"
    assert (event.instance_id, event.prompt_tokens, event.completion_tokens) == ("b", 2, 3)
    assert event.retries == 1
    assert len(event.token_gaps_s) == 3  # the winner's four deltas (with the finish), not the lost one's
    (lost,) = attempts(event)
    assert lost["attributes"]["corral.instance_id"] == "a"
    assert lost["attributes"]["corral.error_code"] == "instance_lost"
    assert "mid-stream" in lost["attributes"]["corral.error"]
    assert lost["parent_span_id"] == event.span_id and lost["trace_id"] == event.trace_id
    assert cluster.in_flight() == 0


async def test_the_last_lost_attempt_is_the_request_outcome(cluster: Cluster) -> None:
    await cluster.add("a", LostMidStream())
    event = new_event()
    with pytest.raises(InstanceLost):
        await Pipeline(cluster.router).complete(greq(), "completion", event)
    assert event.instance_id == "a" and event.outcome == "error" and event.retries == 0
    assert attempts(event) == []  # it is the request itself, not a lost attempt
    assert cluster.in_flight() == 0


async def test_a_refusal_before_the_answer_is_a_lost_attempt_span(cluster: Cluster) -> None:
    await cluster.add("bad", FakeEngine(Unreachable("connection refused")))
    await cluster.add("good", FakeEngine())
    event = new_event()
    call = await Pipeline(cluster.router).generate(greq(), "chat", event)
    await drain(call)
    assert (event.instance_id, event.outcome, event.retries) == ("good", "ok", 1)
    assert event.completion_tokens == 2 and event.completion_text == "hello"
    (lost,) = attempts(event)
    assert lost["attributes"]["corral.instance_id"] == "bad"
    assert lost["attributes"]["corral.error_code"] == "instance_unreachable"
    assert lost["attributes"]["corral.retried"] is True


async def test_a_stream_failing_after_its_start_records_its_error(cluster: Cluster) -> None:
    await cluster.add("a", FailsMidStream())
    event = new_event()
    call = await Pipeline(cluster.router).generate(greq(), "chat", event)
    with pytest.raises(EngineError):
        await drain(call)
    assert (event.instance_id, event.outcome, event.error) == ("a", "error", "engine exploded")


def prompts(*texts: str) -> list[GenerationRequest]:
    return [GenerationRequest(f"req-1-{i}", "llm", SamplingParams(), prompt=t) for i, t in enumerate(texts)]


async def test_streamed_prompts_on_one_instance_record_tokens_and_instance(cluster: Cluster) -> None:
    await cluster.add("a", FakeEngine(words=("x", "y")))
    event = new_event()
    merged = await Pipeline(cluster.router).generate_many(prompts("a", "b"), "completion", event)
    assert merged.served_by == "a"
    items = [item async for item in merged]
    await merged.close()
    assert items[-1] == GenerationEnd(usage=items[-1].usage) and items[-1].usage.completion_tokens == 4
    assert (event.instance_id, event.engine, event.worker_id) == ("a", "fake", "w1")
    assert (event.prompt_tokens, event.completion_tokens, event.outcome) == (4, 4, "ok")
    assert sorted(event.completion_text) == sorted("xyxy") and event.ttft_s is not None


async def test_streamed_prompts_on_two_instances_record_multiple(cluster: Cluster) -> None:
    await cluster.add("a", FakeEngine(words=("x",)))
    await cluster.add("b", FakeEngine(words=("y", "z")))
    event = new_event()
    merged = await Pipeline(cluster.router).generate_many(prompts("a", "b"), "completion", event)
    assert merged.served_by == MULTIPLE
    [item async for item in merged]
    assert (event.instance_id, event.engine, event.worker_id) == (MULTIPLE, "fake", "w1")
    assert (event.prompt_tokens, event.completion_tokens) == (4, 3)


async def test_whole_prompts_fail_over_each_on_its_own(cluster: Cluster) -> None:
    await cluster.add("a", LostMidStream())
    await cluster.add("b", FakeEngine(words=("ok",)))
    event = new_event()
    served, choices, usage = await Pipeline(cluster.router).complete_many(prompts("p", "q"), "completion", event)
    # a prompt that went to "a" is lost there and retried on "b": both end up on "b"
    assert served == "b" and [c.text for c in choices] == ["ok", "ok"]
    assert (usage.prompt_tokens, usage.completion_tokens) == (4, 2)
    assert (event.instance_id, event.outcome, event.completion_tokens) == ("b", "ok", 2)
    lost = attempts(event)
    assert event.retries == len(lost) >= 1 and {s["attributes"]["corral.instance_id"] for s in lost} == {"a"}
    assert cluster.in_flight() == 0


async def test_a_call_closed_after_its_last_item_is_ok(cluster: Cluster) -> None:
    await cluster.add("a", FakeEngine())
    event = new_event()
    call = await Pipeline(cluster.router).generate(greq(), "chat", event)
    items = call.__aiter__()
    while not isinstance(await items.__anext__(), GenerationEnd):
        pass
    await call.close()  # the consumer had everything: not a cancellation
    assert (event.outcome, event.completion_tokens) == ("ok", 2)
