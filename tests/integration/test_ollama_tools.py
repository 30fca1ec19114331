"""The Ollama front-end with tools and ``format``, through the official ``ollama`` client,
against an engine that honours them (openai-compatible, on the loopback fake upstream of
the engine's unit tests), once through ``corral start`` and once through a cluster
gateway -> worker hop. The cluster's worker also serves the tiny transformers demo, so a
real engine's streamed and whole answers are compared across the hop."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import ollama
import pytest

from tests.integration.servers import Server
from tests.unit.engines.openai_compatible.fake_upstream import TOOL_CALLS, FakeUpstream

pytestmark = pytest.mark.integration

TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "weather of a city",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
ASK = [{"role": "user", "content": "weather in Paris?"}]
EXPECTED = [(name, json.loads(args)) for name, args in TOOL_CALLS]
DEMO = '[[models]]\nname = "demo-chat"\nkind = "llm"\nengine = "transformers"\nsource = "demo:tiny-llama"\n'


def _config(path: Path, upstream: FakeUpstream, extra: str = "") -> Path:
    entries = [("agent", "tools"), ("agent-whole", "tools-json"), ("plain", "ok"), ("broken", "error-event")]
    path.write_text(extra + "".join(
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
    from tests.integration.cluster.harness import standalone_and_cluster

    logs = tmp_path_factory.mktemp("ollama-tools")
    models = ["agent", "agent-whole", "plain", "broken", "demo-chat"]
    standalone_config = _config(logs / "models.toml", upstream)
    worker_config = _config(logs / "worker.toml", upstream, DEMO)
    with standalone_and_cluster(corral_home, logs, standalone_config, worker_config, models) as (standalone, gateway, _):
        yield {"standalone": standalone, "cluster": gateway}


@pytest.fixture(params=["standalone", "cluster"])
def client(request: pytest.FixtureRequest, gateways: dict[str, Server]) -> Iterator[ollama.Client]:
    with ollama.Client(host=gateways[request.param].url, timeout=60) as c:
        yield c


def _calls(message: ollama.Message) -> list[tuple[str, object]]:
    return [(c.function.name, dict(c.function.arguments)) for c in message.tool_calls or ()]


def test_streamed_tool_calls_arrive_whole_with_object_arguments(client: ollama.Client, upstream: FakeUpstream) -> None:
    upstream.reset()
    parts = list(client.chat(model="agent", messages=ASK, tools=TOOLS, stream=True))
    calls = [call for p in parts for call in _calls(p.message)]
    assert calls == EXPECTED
    assert parts[-1].done and parts[-1].done_reason == "stop"
    sent = upstream.seen.bodies[-1]["tools"]
    assert sent == TOOLS


def test_whole_tool_calls_and_the_next_turn(client: ollama.Client, upstream: FakeUpstream) -> None:
    out = client.chat(model="agent-whole", messages=ASK, tools=TOOLS, stream=False)
    assert _calls(out.message) == EXPECTED and out.done_reason == "stop"
    # the client answers both calls, Ollama-style (tool_name, no ids): the history goes upstream with ids
    history = [*ASK, out.message.model_dump(exclude_none=True),
               {"role": "tool", "content": "12:00", "tool_name": TOOL_CALLS[1][0]},
               {"role": "tool", "content": "18C", "tool_name": TOOL_CALLS[0][0]}]
    upstream.reset()
    client.chat(model="plain", messages=history, tools=TOOLS, stream=False)
    sent = upstream.seen.bodies[-1]["messages"]
    ids = [c["id"] for c in sent[1]["tool_calls"]]
    assert [json.loads(c["function"]["arguments"]) for c in sent[1]["tool_calls"]] == [args for _, args in EXPECTED]
    assert len(set(ids)) == 2
    assert sent[2] == {"role": "tool", "content": "12:00", "tool_call_id": ids[1]}
    assert sent[3] == {"role": "tool", "content": "18C", "tool_call_id": ids[0]}


def test_format_json_and_schema_pass_through(client: ollama.Client, upstream: FakeUpstream) -> None:
    upstream.reset()
    client.chat(model="plain", messages=ASK, format="json", stream=False)
    assert upstream.seen.bodies[-1]["response_format"] == {"type": "json_object"}
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    client.generate(model="plain", prompt="where?", format=schema, stream=False)
    sent = upstream.seen.bodies[-1]["response_format"]
    assert sent["type"] == "json_schema" and sent["json_schema"]["schema"] == schema


def test_a_tool_message_must_answer_a_call(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as err:
        client.chat(model="agent", messages=[{"role": "tool", "content": "18C", "tool_name": "get_weather"}])
    assert err.value.status_code == 400 and "tool" in err.value.error


def test_a_failure_after_the_stream_started_is_its_last_line(client: ollama.Client) -> None:
    """The upstream sends two words, then an error event: the client gets the words,
    then raises the error line, as it does for Ollama's own."""
    got = []
    with pytest.raises(ollama.ResponseError) as err:
        for part in client.chat(model="broken", messages=ASK, stream=True):
            got.append(part.message.content)
    assert got and "CUDA out of memory" in err.value.error
    with pytest.raises(ollama.ResponseError) as whole:
        client.chat(model="broken", messages=ASK, stream=False)
    assert whole.value.status_code >= 500 and "CUDA out of memory" in whole.value.error


def test_streamed_equals_whole_across_the_cluster_hop(gateways: dict[str, Server]) -> None:
    with ollama.Client(host=gateways["cluster"].url, timeout=60) as c:
        options = {"temperature": 0, "num_predict": 12}
        whole = c.chat(model="demo-chat", messages=ASK, options=options)
        parts = list(c.chat(model="demo-chat:latest", messages=ASK, options=options, stream=True))
        assert whole.message.content and "".join(p.message.content or "" for p in parts) == whole.message.content
        assert parts[-1].eval_count == whole.eval_count == 12 and parts[-1].done_reason == "length"
        assert {m.model for m in c.list().models} >= {"demo-chat:latest", "agent:latest"}
        with pytest.raises(ollama.ResponseError) as err:
            c.chat(model="demo-chat", messages=ASK, tools=TOOLS)
        assert err.value.status_code == 400 and "tool calling" in err.value.error
