"""Cloud providers through the HTTP API, with the official ``openai`` SDK, once through
``corral start`` and once through a cluster gateway -> worker hop.

No cloud can be reached from the tests: every upstream here is a loopback fake written
from the vendor's public API docs, not the real service (``tests/unit/engines/providers/
fakes.py``): Anthropic's Messages API (engine ``anthropic``), Azure OpenAI (``api-key``
header, deployment URL, api-version) and DeepSeek (a bearer-key vendor). Keys come from
the providers' usual environment variables and from a secrets file, as configured in
production; none may appear in a response or a log.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from openai import APIStatusError, BadRequestError, OpenAI, RateLimitError

from tests.integration.servers import Server, run_corral
from tests.unit.engines.providers.fakes import TOOL_CALLS, VENDOR_WIRES, WORDS, FakeAnthropic, FakeVendor

pytestmark = pytest.mark.integration

ANTHROPIC_KEY = "sk-ant-INTEGRATION-1"
AZURE_KEY = "azure-INTEGRATION-2"
DEEPSEEK_KEY = "sk-ds-INTEGRATION-3"
KEYS = (ANTHROPIC_KEY, AZURE_KEY, DEEPSEEK_KEY)
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "weather of a city",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
ASK = [{"role": "user", "content": "weather in Paris?"}]
# name -> (engine, source, options)
MODELS: dict[str, tuple[str, str, dict[str, str]]] = {}


@dataclass
class Upstreams:
    anthropic: FakeAnthropic
    azure: FakeVendor
    deepseek: FakeVendor

    def reset(self) -> None:
        for fake in (self.anthropic, self.azure, self.deepseek):
            fake.reset()


@dataclass
class Deployment:
    standalone: Server
    gateway: Server
    cluster: Any  # tests.integration.cluster.harness.Cluster


def _model(name: str, engine: str, source: str, options: dict[str, str]) -> str:
    lines = [f'[[models]]\nname = "{name}"\nkind = "llm"\nengine = "{engine}"\nsource = "{source}"\n[models.options]']
    lines += [f'{key} = "{value}"' for key, value in options.items()]
    return "\n".join(lines) + "\n\n"


def _config(path: Path, fakes: Upstreams, key_file: Path) -> Path:
    claude = {"base_url": fakes.anthropic.base_url}
    azure = {"base_url": fakes.azure.origin, "api_key_file": str(key_file)}
    deepseek = {"base_url": fakes.deepseek.base_url}
    MODELS.update({
        "claude": ("anthropic", "claude-ok", claude),
        "claude-tools": ("anthropic", "claude-tools", claude),
        "claude-busy": ("anthropic", "err529", claude),
        "azure-gpt": ("azure-openai", "ok", azure),
        "deepseek": ("deepseek", "ok", deepseek),
        "deepseek-tools": ("deepseek", "tools", deepseek),
        "deepseek-badkey": ("deepseek", "err401", deepseek),
    })
    path.write_text("".join(_model(name, *entry) for name, entry in MODELS.items()))
    return path


@pytest.fixture(scope="module")
def fakes() -> Iterator[Upstreams]:
    with FakeAnthropic(ANTHROPIC_KEY) as anthropic, FakeVendor(VENDOR_WIRES["azure-openai"], AZURE_KEY) as azure, \
            FakeVendor(VENDOR_WIRES["deepseek"], DEEPSEEK_KEY) as deepseek:
        yield Upstreams(anthropic, azure, deepseek)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def deployment(fakes: Upstreams, corral_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """A standalone server, and a cluster (controller, worker, gateway) with the same models."""
    from tests.integration.cluster.harness import standalone_and_cluster

    logs = tmp_path_factory.mktemp("providers")
    key_file = logs / "azure.key"
    key_file.write_text(AZURE_KEY + "\n")
    key_file.chmod(0o600)
    config = _config(logs / "models.toml", fakes, key_file)
    with pytest.MonkeyPatch.context() as env:  # the processes read the keys from their environment at start
        env.setenv("ANTHROPIC_API_KEY", ANTHROPIC_KEY)
        env.setenv("DEEPSEEK_API_KEY", DEEPSEEK_KEY)
        with standalone_and_cluster(corral_home, logs, config, config, list(MODELS)) as (standalone, gateway, cluster):
            yield Deployment(standalone, gateway, cluster)
    for server in cluster.processes + [standalone]:
        assert not any(key in server.log() for key in KEYS), f"a key leaked into {server.log_path}"


@pytest.fixture(params=["standalone", "cluster"])
def api(request: pytest.FixtureRequest, deployment: Deployment, fakes: Upstreams) -> Iterator[OpenAI]:
    fakes.reset()
    server = deployment.standalone if request.param == "standalone" else deployment.gateway
    with OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=30) as client:
        yield client


def _stream(api: OpenAI, model: str, **fields: Any) -> tuple[str, dict[int, dict[str, str]], str | None, Any]:
    """(text, tool calls by index, finish reason, usage) of a streamed chat."""
    text, calls, finish, usage = "", {}, None, None
    for chunk in api.chat.completions.create(model=model, messages=fields.pop("messages", ASK), stream=True,
                                             stream_options={"include_usage": True}, **fields):
        usage = chunk.usage or usage
        for choice in chunk.choices:
            text += choice.delta.content or ""
            for delta in choice.delta.tool_calls or ():
                call = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
                call["id"] += delta.id or ""
                call["name"] += (delta.function.name or "") if delta.function else ""
                call["arguments"] += (delta.function.arguments or "") if delta.function else ""
            finish = choice.finish_reason or finish
    return text, calls, finish, usage


# -- Anthropic ------------------------------------------------------------------------------


def test_anthropic_stream_and_whole_answer(api: OpenAI, fakes: Upstreams) -> None:
    text, _, finish, usage = _stream(api, "claude", max_tokens=20)
    assert (text, finish) == ("".join(WORDS), "stop")
    assert (usage.prompt_tokens, usage.completion_tokens) == (14, 3)
    whole = api.chat.completions.create(model="claude", messages=[{"role": "system", "content": "be brief"}, *ASK])  # type: ignore[list-item]
    assert whole.choices[0].message.content == "Hello world" and whole.choices[0].finish_reason == "stop"
    assert whole.usage is not None and whole.usage.total_tokens == 17
    sent = fakes.anthropic.last
    assert sent.path == "/v1/messages" and sent.headers["x-api-key"] == ANTHROPIC_KEY
    assert sent.body["system"] == "be brief" and sent.body["max_tokens"] == 4096  # the default limit


def test_anthropic_tool_calls_and_the_next_turn(api: OpenAI, fakes: Upstreams) -> None:
    text, calls, finish, _ = _stream(api, "claude-tools", tools=TOOLS, tool_choice="required")
    assert text == "Let me check." and finish == "tool_calls"
    expected = [(f"toolu_{i}", name, json.loads(args)) for i, (name, args) in enumerate(TOOL_CALLS, start=1)]
    assert [(c["id"], c["name"], json.loads(c["arguments"])) for _, c in sorted(calls.items())] == expected
    assert fakes.anthropic.last.body["tools"][0]["input_schema"] == TOOLS[0]["function"]["parameters"]
    assert fakes.anthropic.last.body["tool_choice"] == {"type": "any"}
    whole = api.chat.completions.create(model="claude-tools", messages=ASK, tools=TOOLS)  # type: ignore[arg-type]
    message = whole.choices[0].message
    assert whole.choices[0].finish_reason == "tool_calls" and message.tool_calls
    assert [(c.id, c.function.name) for c in message.tool_calls] == [(i, n) for i, n, _ in expected]  # type: ignore[union-attr]
    history = [*ASK, message.model_dump(exclude_none=True),
               *({"role": "tool", "tool_call_id": c.id, "content": "18C"} for c in message.tool_calls)]
    after = api.chat.completions.create(model="claude", messages=history, tools=TOOLS)  # type: ignore[arg-type]
    assert after.choices[0].message.content == "Hello world"  # the fake checked each tool_result's tool_use
    results = fakes.anthropic.last.body["messages"][2]["content"]
    assert [b["tool_use_id"] for b in results] == ["toolu_1", "toolu_2"]


def test_anthropic_refuses_what_it_cannot_honour(api: OpenAI) -> None:
    with pytest.raises(BadRequestError) as err:
        api.chat.completions.create(model="claude", messages=ASK, response_format={"type": "json_object"})  # type: ignore[arg-type]
    assert err.value.code == "unsupported_parameter" and err.value.body["param"] == "response_format"  # type: ignore[index]
    assert "anthropic" in err.value.message
    with pytest.raises(BadRequestError) as err:
        api.chat.completions.create(model="claude", messages=ASK, n=2)  # type: ignore[arg-type]
    assert err.value.body["param"] == "n"  # type: ignore[index]


def test_anthropic_overloaded_is_a_429(api: OpenAI) -> None:
    with pytest.raises(RateLimitError) as err:
        api.chat.completions.create(model="claude-busy", messages=ASK)  # type: ignore[arg-type]
    assert "HTTP 529" in err.value.message and err.value.response.headers.get("retry-after")


# -- OpenAI-dialect providers -----------------------------------------------------------------


def test_azure_deployment_url_and_api_key_header(api: OpenAI, fakes: Upstreams) -> None:
    text, _, finish, usage = _stream(api, "azure-gpt", max_tokens=3)
    assert (text, finish, usage.completion_tokens) == ("Hello world", "length", 3)
    sent = fakes.azure.last
    assert sent.path == "/openai/deployments/ok/chat/completions" and sent.query == {"api-version": "2024-10-21"}
    assert sent.headers["api-key"] == AZURE_KEY  # from the secrets file
    assert sent.body["max_completion_tokens"] == 3 and "model" not in sent.body


def test_bearer_provider_with_tools_and_response_format(api: OpenAI, fakes: Upstreams) -> None:
    text, _, finish, _ = _stream(api, "deepseek")
    assert (text, finish) == ("Hello world", "stop")
    assert fakes.deepseek.last.path == "/chat/completions"
    assert fakes.deepseek.last.headers["authorization"] == f"Bearer {DEEPSEEK_KEY}"
    out = api.chat.completions.create(model="deepseek-tools", messages=ASK, tools=TOOLS,  # type: ignore[arg-type]
                                      response_format={"type": "json_object"})
    calls = out.choices[0].message.tool_calls or []
    assert [(c.id, c.function.name, c.function.arguments) for c in calls] == [  # type: ignore[union-attr]
        (f"call_{i}", name, args) for i, (name, args) in enumerate(TOOL_CALLS)
    ]
    assert fakes.deepseek.last.body["response_format"] == {"type": "json_object"}
    schema = {"type": "json_schema", "json_schema": {"name": "w", "schema": {"type": "object"}}}
    with pytest.raises(BadRequestError) as err:
        api.chat.completions.create(model="deepseek", messages=ASK, response_format=schema)  # type: ignore[arg-type]
    assert err.value.body["param"] == "response_format" and "DeepSeek" in err.value.message  # type: ignore[index]


def test_a_refused_key_is_a_502_without_the_key(api: OpenAI, request: pytest.FixtureRequest) -> None:
    with pytest.raises(APIStatusError) as err:
        api.chat.completions.create(model="deepseek-badkey", messages=ASK)  # type: ignore[arg-type]
    assert err.value.code == "upstream_auth"
    assert "HTTP 401" in err.value.message and "DEEPSEEK_API_KEY" in err.value.message
    assert DEEPSEEK_KEY not in err.value.response.text
    assert err.value.status_code == 502


# -- a missing key -----------------------------------------------------------------------------


def test_missing_key_fails_the_start(deployment: Deployment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MOONSHOT_API_KEY", raising=False)
    config = tmp_path / "moonshot.toml"
    config.write_text(_model("kimi", "moonshot", "kimi-k2", {"base_url": "http://127.0.0.1:9/v1"}))
    result = run_corral(["start", "--config", str(config), "--port", "0"], tmp_path, timeout=60)
    assert result.returncode == 1, result.stderr
    assert "set the environment variable MOONSHOT_API_KEY" in result.stderr and "Traceback" not in result.stderr
    # a cluster worker: the instance is registered as failed with the same message, and the worker exits
    worker = deployment.cluster.worker(["--controller", deployment.cluster.processes[0].url], config, wait=False)
    deadline = time.monotonic() + 60
    while worker.process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert worker.process.poll() is not None, "the worker kept running without its model's key"
    assert "set the environment variable MOONSHOT_API_KEY" in worker.log()
    from tests.integration.cluster.harness import ready_instances

    assert ready_instances(deployment.gateway, "kimi") == []
