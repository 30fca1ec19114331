"""Tool calls and response_format through the HTTP API with the official ``openai`` SDK:
passed through to an engine that honours them (openai-compatible, here attached to the
loopback fake upstream of the engine's unit tests, a fake written from OpenAI's public
streaming format), refused with a 400 for one that does not (the transformers demo).
Once through ``corral start``, once through a cluster gateway -> worker hop."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from openai import BadRequestError, OpenAI

from tests.integration.servers import Server
from tests.unit.engines.openai_compatible.fake_upstream import TOOL_CALLS, FakeUpstream

pytestmark = pytest.mark.integration

TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "weather of a city",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
ASK = [{"role": "user", "content": "weather in Paris?"}]


def _config(path: Path, upstream: FakeUpstream) -> Path:
    entries = [("agent", "tools"), ("agent-whole", "tools-json"), ("plain", "ok")]
    path.write_text("".join(
        f'[[models]]\nname = "{name}"\nkind = "llm"\nengine = "openai-compatible"\nsource = "{upstream.url}"\n'
        f'[models.options]\nupstream_model = "{behaviour}"\nverify_on_start = false\n\n'
        for name, behaviour in entries
    ))
    return path


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream() as fake:
        yield fake


@pytest.fixture(scope="module")
def gateways(upstream: FakeUpstream, corral_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Server]]:
    """A standalone server, and a cluster (controller, worker, gateway) with the same models."""
    from tests.integration.cluster.harness import standalone_and_cluster

    logs = tmp_path_factory.mktemp("tool-calls")
    config = _config(logs / "models.toml", upstream)
    with standalone_and_cluster(corral_home, logs, config, config, ["agent", "agent-whole", "plain"]) as (standalone, gateway, _):
        yield {"standalone": standalone, "cluster": gateway}


@pytest.fixture(params=["standalone", "cluster"])
def api(request: pytest.FixtureRequest, gateways: dict[str, Server]) -> Iterator[OpenAI]:
    with OpenAI(base_url=f"{gateways[request.param].url}/v1", api_key="unused", max_retries=0, timeout=30) as client:
        yield client


def test_streamed_tool_calls(api: OpenAI, upstream: FakeUpstream) -> None:
    upstream.reset()
    calls: dict[int, dict[str, str]] = {}
    finish = None
    for chunk in api.chat.completions.create(model="agent", messages=ASK, tools=TOOLS, stream=True):  # type: ignore[arg-type]
        for choice in chunk.choices:
            for delta in choice.delta.tool_calls or ():
                call = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
                call["id"] += delta.id or ""
                call["name"] += (delta.function.name or "") if delta.function else ""
                call["arguments"] += (delta.function.arguments or "") if delta.function else ""
            finish = choice.finish_reason or finish
    assert finish == "tool_calls"
    assert [(c["id"], c["name"], json.loads(c["arguments"])) for _, c in sorted(calls.items())] == [
        (f"call_{i}", name, json.loads(args)) for i, (name, args) in enumerate(TOOL_CALLS)
    ]
    assert upstream.seen.bodies[-1]["tools"] == TOOLS


@pytest.mark.parametrize("model", ["agent", "agent-whole"])
def test_whole_answer_with_tool_calls_and_the_next_turn(api: OpenAI, upstream: FakeUpstream, model: str) -> None:
    out = api.chat.completions.create(model=model, messages=ASK, tools=TOOLS, tool_choice="auto")  # type: ignore[arg-type]
    choice = out.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    calls = choice.message.tool_calls or []
    assert [(c.id, c.function.name, c.function.arguments) for c in calls] == [  # type: ignore[union-attr]
        (f"call_{i}", name, args) for i, (name, args) in enumerate(TOOL_CALLS)
    ]
    # the client answers the call: the whole history goes upstream
    history = [*ASK, choice.message.model_dump(exclude_none=True),
               {"role": "tool", "tool_call_id": "call_0", "content": "18C"}]
    upstream.reset()
    api.chat.completions.create(model="plain", messages=history, tools=TOOLS)  # type: ignore[arg-type]
    sent = upstream.seen.bodies[-1]["messages"]
    assert sent[1]["tool_calls"][0]["function"] == {"name": TOOL_CALLS[0][0], "arguments": TOOL_CALLS[0][1]}
    assert sent[2] == {"role": "tool", "content": "18C", "tool_call_id": "call_0"}


def test_response_format_passes_through(api: OpenAI, upstream: FakeUpstream) -> None:
    upstream.reset()
    fmt = {"type": "json_schema", "json_schema": {"name": "w", "schema": {"type": "object"}, "strict": True}}
    api.chat.completions.create(model="plain", messages=ASK, response_format=fmt)  # type: ignore[arg-type]
    assert upstream.seen.bodies[-1]["response_format"] == fmt


def test_malformed_tools_are_a_400_naming_the_field(api: OpenAI) -> None:
    with pytest.raises(BadRequestError) as err:
        api.chat.completions.create(model="agent", messages=ASK, tools=[{"type": "function"}])  # type: ignore[list-item]
    assert err.value.body["param"] == "tools[0].function"  # type: ignore[index]
    with pytest.raises(BadRequestError) as err:
        api.chat.completions.create(model="agent", messages=ASK, tools=TOOLS,  # type: ignore[arg-type]
                                    tool_choice={"type": "function", "function": {"name": "nope"}})
    assert "nope" in err.value.message
    with pytest.raises(BadRequestError) as err:
        api.chat.completions.create(model="agent", messages=[{"role": "tool", "content": "x"}])  # type: ignore[list-item]
    assert "tool_call_id" in err.value.message


def test_engine_without_tool_calling_refuses_with_a_400(client: OpenAI) -> None:
    """The demo's transformers engine does not honour tools nor response_format."""
    with pytest.raises(BadRequestError) as err:
        client.chat.completions.create(model="demo-chat", messages=ASK, tools=TOOLS)  # type: ignore[arg-type]
    assert err.value.code == "unsupported_parameter" and err.value.body["param"] == "tools"  # type: ignore[index]
    assert "transformers" in err.value.message
    with pytest.raises(BadRequestError) as err:
        client.chat.completions.create(model="demo-chat", messages=ASK, response_format={"type": "json_object"})
    assert err.value.body["param"] == "response_format"  # type: ignore[index]
    plain = client.chat.completions.create(model="demo-chat", messages=ASK, max_tokens=2, response_format={"type": "text"})
    assert plain.choices[0].finish_reason in ("stop", "length")
