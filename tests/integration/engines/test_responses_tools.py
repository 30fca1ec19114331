"""Function calls round-tripping through the Responses API (``/v1/responses``) with the
official ``openai`` SDK, against an engine that honours tools: the ``deepseek`` provider
(openai-compatible) attached to the loopback fake of its public API
(``tests/unit/engines/providers/fakes.py``, as ``test_providers.py`` serves it). Once
through ``corral start``, once through a cluster gateway -> worker hop, whose gateway
keeps the stored responses in its own records database.

The fake's ``tools`` model always calls ``get_weather`` and ``get_time``
(``TOOL_CALLS``); its ``ok`` model answers ``Hello world``; its ``drop`` model drops the
connection after ``Hello``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from openai import BadRequestError, NotFoundError, OpenAI

from tests.integration.servers import Server
from tests.unit.engines.providers.fakes import TOOL_CALLS, VENDOR_WIRES, WORDS, FakeVendor

pytestmark = pytest.mark.integration

KEY = "sk-ds-RESPONSES-7"
TOOLS: Any = [
    {"type": "function", "name": "get_weather", "description": "weather of a city",
     "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}},
    {"type": "function", "name": "get_time", "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}}},
]
ASK = "weather and time in Paris?"
MODELS = {"agent": "tools", "plain": "ok", "broken": "drop"}


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeVendor]:
    with FakeVendor(VENDOR_WIRES["deepseek"], KEY) as vendor:
        yield vendor


@pytest.fixture(scope="module")
def servers(fake: FakeVendor, corral_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Server]]:
    """A standalone server, and a cluster (controller, worker, gateway) with the same models."""
    from tests.integration.cluster.harness import standalone_and_cluster

    logs = tmp_path_factory.mktemp("responses-tools")
    config = logs / "models.toml"
    config.write_text("".join(
        f'[[models]]\nname = "{name}"\nkind = "llm"\nengine = "deepseek"\nsource = "{behaviour}"\n'
        f'[models.options]\nbase_url = "{fake.base_url}"\n\n'
        for name, behaviour in MODELS.items()
    ))
    with pytest.MonkeyPatch.context() as env:  # the processes read the key from their environment at start
        env.setenv("DEEPSEEK_API_KEY", KEY)
        with standalone_and_cluster(corral_home, logs, config, config, list(MODELS)) as (standalone, gateway, _):
            yield {"standalone": standalone, "cluster": gateway}


@pytest.fixture(params=["standalone", "cluster"])
def api(request: pytest.FixtureRequest, servers: dict[str, Server], fake: FakeVendor) -> Iterator[OpenAI]:
    fake.reset()
    with OpenAI(base_url=f"{servers[request.param].url}/v1", api_key="unused", max_retries=0, timeout=30) as client:
        yield client


def _results(calls: list[Any]) -> Any:
    return [{"type": "function_call_output", "call_id": c.call_id, "output": f"result of {c.name}"} for c in calls]


def test_function_calls_round_trip_with_previous_response_id(api: OpenAI, fake: FakeVendor) -> None:
    first = api.responses.create(model="agent", input=ASK, tools=TOOLS, tool_choice="required")
    calls = [item for item in first.output if item.type == "function_call"]
    assert [(c.name, c.arguments) for c in calls] == list(TOOL_CALLS)
    assert all(c.call_id and c.id and c.id.startswith("fc_") and c.status == "completed" for c in calls)
    assert first.output_text == "" and first.status == "completed"
    sent = fake.last.body  # the engine got the tools in the chat shape, the choice as given
    assert [t["function"]["name"] for t in sent["tools"]] == ["get_weather", "get_time"]
    assert sent["tools"][0]["function"]["parameters"] == TOOLS[0]["parameters"]
    assert sent["tool_choice"] == "required"
    # the results go back as the next turn's input; the history comes from the stored response
    second = api.responses.create(model="plain", input=_results(calls), previous_response_id=first.id, tools=TOOLS)
    assert second.output_text == "".join(WORDS)
    messages = fake.last.body["messages"]
    assert messages[0] == {"role": "user", "content": ASK}
    assert messages[1]["role"] == "assistant"
    assert [(c["id"], c["function"]["name"]) for c in messages[1]["tool_calls"]] == [(c.call_id, c.name) for c in calls]
    assert [(m["role"], m["tool_call_id"], m["content"]) for m in messages[2:]] == [
        ("tool", c.call_id, f"result of {c.name}") for c in calls
    ]
    got = api.responses.retrieve(first.id)
    assert [(i.type, getattr(i, "call_id", None)) for i in got.output] == [("function_call", c.call_id) for c in calls]


def test_streamed_function_calls(api: OpenAI) -> None:
    with api.responses.stream(model="agent", input=ASK, tools=TOOLS) as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    per_call = ["response.output_item.added", "response.function_call_arguments.delta",
                "response.function_call_arguments.delta", "response.function_call_arguments.done",
                "response.output_item.done"]
    assert kinds[2:-1] == per_call * len(TOOL_CALLS)
    done = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert [(e.name, e.arguments) for e in done] == list(TOOL_CALLS)  # type: ignore[attr-defined]
    calls = [item for item in final.output if item.type == "function_call"]
    assert [(c.name, c.arguments) for c in calls] == list(TOOL_CALLS)
    assert [e.output_index for e in events if e.type == "response.output_item.added"] == [0, 1]  # type: ignore[attr-defined]


def test_the_whole_history_as_input_and_structured_output(api: OpenAI, fake: FakeVendor) -> None:
    first = api.responses.create(model="agent", input=ASK, tools=TOOLS, store=False)
    calls = [item for item in first.output if item.type == "function_call"]
    history: Any = [{"role": "user", "content": ASK}, *[c.model_dump(exclude_none=True) for c in calls], *_results(calls)]
    text = {"format": {"type": "json_object"}}
    out = api.responses.create(model="plain", input=history, tools=TOOLS, text=text, store=False)  # type: ignore[arg-type]
    assert out.output_text == "".join(WORDS) and out.text.format.type == "json_object"  # type: ignore[union-attr]
    sent = fake.last.body
    assert sent["response_format"] == {"type": "json_object"}
    assert [m["role"] for m in sent["messages"]] == ["user", "assistant", "tool", "tool"]
    assert json.loads(sent["messages"][1]["tool_calls"][0]["function"]["arguments"]) == {"city": "Paris"}
    # a schema this provider refuses: the engine's 400, naming the field in this API's words
    schema = {"type": "object", "properties": {"summary": {"type": "string"}}}
    with pytest.raises(BadRequestError) as refused:
        api.responses.create(model="plain", input=ASK, text={"format": {"type": "json_schema", "name": "f", "schema": schema}})
    assert refused.value.body["param"] == "text.format", refused.value.body  # type: ignore[index]


def test_a_stream_that_fails_midway_ends_with_response_failed(api: OpenAI) -> None:
    events = list(api.responses.create(model="broken", input=ASK, stream=True))
    kinds = [e.type for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert kinds[-1] == "response.failed" and "response.completed" not in kinds
    assert [e.sequence_number for e in events] == list(range(len(events)))
    failed = events[-1].response  # type: ignore[union-attr]
    assert failed.status == "failed" and failed.error is not None and failed.error.code == "server_error"
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")  # type: ignore[union-attr]
    assert text == "".join(WORDS[:2])
    with pytest.raises(NotFoundError):  # a failed response is not stored
        api.responses.retrieve(failed.id)
