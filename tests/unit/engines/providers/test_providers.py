"""Every OpenAI-dialect cloud provider of the table, against a loopback fake written
from that vendor's public API docs, not the real service (``fakes.py``): the URL and the
key's header, the body quirks, streamed deltas and usage, tool calls, refusals, and the
mapping of its errors. One parametrised file over the table; Anthropic has its own."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from corral.core.engine import Embedding, StructuredOutput, TextGeneration, ToolCalling
from corral.core.errors import ConfigError, EngineError, InstanceLost, InvalidRequest, Overloaded, Unreachable
from corral.core.spec import ModelKind, ModelSpec
from corral.core.types import ChatMessage, EmbeddingRequest, GenerationRequest, SamplingParams, Tool, ToolChoice, ToolMode
from corral.engines.catalog import all_entries, get_entry
from corral.engines.openai_compatible.engine import OpenAICompatibleEngine
from corral.engines.openai_compatible.providers import PROVIDERS
from corral.gateway.pipeline import collect
from tests.unit.engines.providers.fakes import TOOL_CALLS, VENDOR_WIRES, WORDS, FakeVendor

KEY = "sk-cloud-SECRET-4242"
VENDORS = sorted(PROVIDERS)

# Read from each vendor's docs, independently of providers.py: the full chat endpoint
# at the default base URL (Azure's resource is per customer), and the key's variable.
DOCUMENTED = {
    "openai": ("https://api.openai.com/v1/chat/completions", "OPENAI_API_KEY"),
    "azure-openai": (None, "AZURE_OPENAI_API_KEY"),
    "gemini": ("https://generativelanguage.googleapis.com/v1beta/openai/chat/completions", "GEMINI_API_KEY"),
    "deepseek": ("https://api.deepseek.com/chat/completions", "DEEPSEEK_API_KEY"),
    "dashscope": ("https://dashscope.aliyuncs.com/compatible-mode/v1/chat/completions", "DASHSCOPE_API_KEY"),
    "zhipu": ("https://open.bigmodel.cn/api/paas/v4/chat/completions", "ZHIPUAI_API_KEY"),
    "qianfan": ("https://qianfan.baidubce.com/v2/chat/completions", "QIANFAN_API_KEY"),
    "moonshot": ("https://api.moonshot.cn/v1/chat/completions", "MOONSHOT_API_KEY"),
}


def test_the_table_covers_the_documented_vendors() -> None:
    assert set(VENDORS) == set(DOCUMENTED) == set(VENDOR_WIRES)
    for name, (endpoint, env) in DOCUMENTED.items():
        provider = PROVIDERS[name]
        assert provider.key_env == env
        if endpoint is not None:
            assert provider.url(provider.base_url or "", "chat/completions", "m", None) == endpoint


@pytest.fixture(scope="module")
def fakes() -> Iterator[dict[str, FakeVendor]]:
    servers = {name: FakeVendor(wire, KEY) for name, wire in VENDOR_WIRES.items()}
    for server in servers.values():
        server.__enter__()
    try:
        yield servers
    finally:
        for server in servers.values():
            server.__exit__()


@pytest.fixture(params=VENDORS)
def vendor(request: pytest.FixtureRequest, fakes: dict[str, FakeVendor], monkeypatch: pytest.MonkeyPatch) -> FakeVendor:
    fake = fakes[request.param]
    fake.reset()
    monkeypatch.setenv(DOCUMENTED[request.param][1], KEY)  # the provider's usual variable
    return fake


def spec(fake: FakeVendor, source: str = "ok", kind: ModelKind = ModelKind.LLM, **options: object) -> ModelSpec:
    return ModelSpec(name="cloud", kind=kind, engine=fake.wire.vendor, source=source,
                     options={"base_url": fake.base_url, **options})


async def started(fake: FakeVendor, source: str = "ok", **options: object) -> OpenAICompatibleEngine:
    engine = get_entry(fake.wire.vendor).create(spec(fake, source, **options))
    assert isinstance(engine, OpenAICompatibleEngine)
    await engine.start()
    return engine


@pytest.fixture
async def engine(vendor: FakeVendor) -> AsyncIterator[OpenAICompatibleEngine]:
    eng = await started(vendor)
    yield eng
    await eng.stop()


def chat(n: int = 1, **fields: object) -> GenerationRequest:
    sampling = {k: fields.pop(k) for k in list(fields) if k in SamplingParams.__dataclass_fields__}
    return GenerationRequest(request_id="r-1", model="cloud", sampling=SamplingParams(n=n, **sampling),  # type: ignore[arg-type]
                             messages=(ChatMessage("system", "be brief"), ChatMessage("user", "hi")), **fields)  # type: ignore[arg-type]


def expected_path(vendor: str, deployment: str = "ok", endpoint: str = "chat/completions") -> str:
    if vendor == "azure-openai":
        return f"/openai/deployments/{deployment}/{endpoint}"
    return VENDOR_WIRES[vendor].prefix + "/" + endpoint


# -- the wire ---------------------------------------------------------------------------


async def test_streams_deltas_and_usage_over_the_vendors_wire(engine: OpenAICompatibleEngine, vendor: FakeVendor) -> None:
    items = [item async for item in await engine.generate(chat())]
    assert [getattr(i, "text", None) for i in items[:3]] == list(WORDS)
    choices, usage = await collect(await engine.generate(chat(max_tokens=3)), 1)
    assert [(c.text, c.finish) for c in choices] == [("Hello world", "length")]
    assert (usage.prompt_tokens, usage.completion_tokens) == (5, 3)  # wherever this vendor puts usage
    seen = vendor.last
    assert seen.method == "POST" and seen.path == expected_path(vendor.wire.vendor)
    if vendor.wire.vendor == "azure-openai":
        assert seen.headers["api-key"] == KEY and "authorization" not in seen.headers
        assert seen.query == {"api-version": "2024-10-21"}
    else:
        assert seen.headers["authorization"] == f"Bearer {KEY}" and "api-key" not in seen.headers
    assert [r.path for r in vendor.received[:1]] == [expected_path(vendor.wire.vendor, endpoint="models")
                                                      if vendor.wire.vendor != "azure-openai" else "/openai/models"]


async def test_body_quirks(engine: OpenAICompatibleEngine, vendor: FakeVendor) -> None:
    name = vendor.wire.vendor
    await collect(await engine.generate(chat(max_tokens=3, temperature=1.5)), 1)
    body = vendor.last.body
    limit = "max_completion_tokens" if name in ("openai", "azure-openai") else "max_tokens"
    assert body[limit] == 3 and ({"max_tokens", "max_completion_tokens"} - {limit}).isdisjoint(body)
    assert ("stream_options" in body) == (name not in ("zhipu", "moonshot"))  # these send usage unasked
    assert ("model" in body) == (name != "azure-openai")  # Azure: the deployment in the URL is the model
    assert body["temperature"] == (1.0 if name in ("zhipu", "qianfan", "moonshot") else 1.5)  # clamped to their range
    assert body["messages"] == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    await collect(await engine.generate(chat(temperature=0.0)), 1)
    assert vendor.last.body["temperature"] == (0.01 if name == "qianfan" else 0.0)  # Qianfan: (0, 1]


async def test_tool_calls_and_response_format_pass_through(vendor: FakeVendor) -> None:
    eng = await started(vendor, "tools")
    try:
        assert isinstance(eng, ToolCalling) and isinstance(eng, StructuredOutput)
        tools = (Tool("get_weather", parameters={"type": "object"}),)
        choices, usage = await collect(await eng.generate(chat(tools=tools, tool_choice=ToolChoice(ToolMode.AUTO),
                                                               response_format={"type": "json_object"})), 1)
        assert choices[0].finish == "tool_calls" and usage.completion_tokens == 3
        assert [(c.id, c.name, c.arguments) for c in choices[0].tool_calls] == [
            (f"call_{i}", name, args) for i, (name, args) in enumerate(TOOL_CALLS)
        ]
        wire = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
        assert vendor.last.body["tools"] == wire and vendor.last.body["tool_choice"] == "auto" and vendor.last.body["response_format"] == {"type": "json_object"}
    finally:
        await eng.stop()


async def test_what_the_vendor_cannot_honour_is_a_400_before_sending(engine: OpenAICompatibleEngine, vendor: FakeVendor) -> None:
    provider = PROVIDERS[vendor.wire.vendor]
    refusals: list[tuple[GenerationRequest, str]] = [(chat(ignore_eos=True), "ignore_eos")]
    if provider.max_n is not None:
        refusals.append((chat(n=provider.max_n + 1), "n"))
    if "seed" in provider.unsupported:
        refusals.append((chat(seed=7), "seed"))
    if "top_k" in provider.unsupported:
        refusals.append((chat(top_k=40), "top_k"))
    if "repetition_penalty" in provider.unsupported:
        refusals.append((chat(repetition_penalty=1.1), "repetition_penalty"))
    if "json_schema" not in provider.response_formats:
        schema = {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "object"}}}
        refusals.append((chat(response_format=schema), "response_format"))
    if not provider.tool_choice_required:
        refusals.append((chat(tools=(Tool("f"),), tool_choice=ToolChoice(ToolMode.REQUIRED)), "tool_choice"))
    if not provider.completions:
        refusals.append((GenerationRequest("r-2", "cloud", SamplingParams(), prompt="Once"), "prompt"))
    before = len(vendor.received)
    for request, param in refusals:
        with pytest.raises(InvalidRequest) as info:
            await engine.generate(request)
        assert info.value.param == param and info.value.code == "unsupported_parameter"
        assert provider.title in info.value.message
    assert len(vendor.received) == before  # nothing went upstream
    assert engine.load().in_flight == 0
    expected = {
        "deepseek": {"ignore_eos", "top_k", "repetition_penalty", "n", "seed", "response_format", "prompt"},
        "moonshot": {"ignore_eos", "top_k", "repetition_penalty", "n", "seed", "response_format", "tool_choice", "prompt"},
        "openai": {"ignore_eos", "top_k", "repetition_penalty"},
        "dashscope": {"ignore_eos", "n", "response_format", "prompt"},  # takes top_k and repetition_penalty
    }
    if vendor.wire.vendor in expected:
        assert {param for _, param in refusals} == expected[vendor.wire.vendor]


# -- errors -------------------------------------------------------------------------------


async def test_401_maps_to_upstream_auth_without_the_key(
    engine: OpenAICompatibleEngine, vendor: FakeVendor, caplog: pytest.LogCaptureFixture
) -> None:
    engine.upstream_model = "err401"  # the fake echoes the key in its refusal
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(EngineError) as info:
            await engine.generate(chat())
    err = info.value
    assert err.code == "upstream_auth" and err.status == 502 and "HTTP 401" in err.message
    assert DOCUMENTED[vendor.wire.vendor][1] in err.message  # says where the key came from
    assert KEY not in str(err) and KEY not in repr(err.__dict__) and KEY not in caplog.text


async def test_429_is_overloaded_with_retry_after(engine: OpenAICompatibleEngine) -> None:
    engine.upstream_model = "err429"
    with pytest.raises(Overloaded) as info:
        await engine.generate(chat())
    assert info.value.retry_after == 7.0 and "HTTP 429" in info.value.message
    assert "Rate limit reached" in info.value.message  # the vendor's own words (Gemini wraps them in a list)


async def test_500_is_unreachable_and_400_keeps_the_vendors_message(engine: OpenAICompatibleEngine) -> None:
    engine.upstream_model = "err500"
    with pytest.raises(Unreachable, match="HTTP 500"):
        await engine.generate(chat())
    engine.upstream_model = "err400"
    with pytest.raises(InvalidRequest) as info:
        await engine.generate(chat())
    assert info.value.message == "messages must not be empty" and info.value.param == "messages"
    assert engine.load().in_flight == 0


async def test_read_timeout_is_unreachable_and_a_dropped_stream_instance_lost(vendor: FakeVendor) -> None:
    eng = await started(vendor, "hang", timeout_s=0.3)
    try:
        with pytest.raises(Unreachable, match="Timeout"):
            await eng.generate(chat())
        eng.upstream_model = "drop"
        with pytest.raises(InstanceLost, match="mid-stream"):
            await collect(await eng.generate(chat()), 1)
        assert eng.load().in_flight == 0
    finally:
        await eng.stop()


# -- keys, URLs, start ---------------------------------------------------------------------


async def test_missing_key_names_the_variable_to_set(vendor: FakeVendor, monkeypatch: pytest.MonkeyPatch) -> None:
    env = DOCUMENTED[vendor.wire.vendor][1]
    monkeypatch.delenv(env)
    eng = get_entry(vendor.wire.vendor).create(spec(vendor))
    with pytest.raises(ConfigError, match=f"set the environment variable {env}"):
        await eng.start()
    assert vendor.received == []


async def test_a_refused_key_fails_the_start(vendor: FakeVendor, caplog: pytest.LogCaptureFixture) -> None:
    eng = get_entry(vendor.wire.vendor).create(spec(vendor, api_key="sk-wrong-WRONG"))
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(EngineError) as info:
            await eng.start()
    assert info.value.code == "upstream_auth" and "options.api_key" in info.value.message
    assert "sk-wrong-WRONG" not in info.value.message and "sk-wrong-WRONG" not in caplog.text


async def test_key_file(fakes: dict[str, FakeVendor], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    fake = fakes["deepseek"]
    secret = tmp_path / "deepseek.key"
    secret.write_text(KEY + "\n")
    os.chmod(secret, 0o644)
    with caplog.at_level(logging.WARNING):
        eng = await started(fake, api_key_file=str(secret))
        await eng.stop()
    assert "readable by other users" in caplog.text and str(secret) in caplog.text and KEY not in caplog.text
    assert fake.last.headers["authorization"] == f"Bearer {KEY}"
    caplog.clear()
    os.chmod(secret, 0o600)
    with caplog.at_level(logging.WARNING):
        eng = await started(fake, api_key_file=str(secret))
        await eng.stop()
    assert "readable" not in caplog.text
    with pytest.raises(ConfigError, match="cannot read options.api_key_file"):
        await get_entry("deepseek").create(spec(fake, api_key_file=str(tmp_path / "nope"))).start()


async def test_azure_endpoint_from_env_and_embeddings(fakes: dict[str, FakeVendor], monkeypatch: pytest.MonkeyPatch) -> None:
    fake = fakes["azure-openai"]
    fake.reset()
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", KEY)
    monkeypatch.delenv("AZURE_OPENAI_ENDPOINT", raising=False)
    no_endpoint = ModelSpec(name="emb", kind=ModelKind.EMBEDDING, engine="azure-openai", source="emb-deploy", options={})
    with pytest.raises(ConfigError, match="AZURE_OPENAI_ENDPOINT"):
        get_entry("azure-openai").create(no_endpoint)
    monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", fake.origin + "/")
    eng = get_entry("azure-openai").create(
        ModelSpec(name="emb", kind=ModelKind.EMBEDDING, engine="azure-openai", source="emb-deploy",
                  options={"api_version": "2024-06-01"})
    )
    assert isinstance(eng, Embedding) and not isinstance(eng, TextGeneration)
    await eng.start()
    try:
        result = await eng.embed(EmbeddingRequest("e-1", "emb", ("ab", "abcd")))
    finally:
        await eng.stop()
    assert result.vectors == [[2.0, 1.0], [4.0, 1.0]] and result.usage.prompt_tokens == 4
    assert fake.last.path == "/openai/deployments/emb-deploy/embeddings" and fake.last.query == {"api-version": "2024-06-01"}
    assert "model" not in fake.last.body


def test_config_errors() -> None:
    with pytest.raises(ConfigError, match="serves no embeddings"):
        get_entry("deepseek").create(ModelSpec(name="e", kind=ModelKind.EMBEDDING, engine="deepseek", source="x", options={}))
    with pytest.raises(ConfigError, match="carries Azure OpenAI's key"):
        get_entry("azure-openai").create(ModelSpec(name="c", kind=ModelKind.LLM, engine="azure-openai", source="d",
                                                   options={"base_url": "https://x.openai.azure.com",
                                                            "extra_headers": {"API-Key": "k"}}))
    with pytest.raises(ConfigError, match="http"):
        get_entry("openai").create(ModelSpec(name="c", kind=ModelKind.LLM, engine="openai", source="gpt-4o",
                                             options={"base_url": "api.openai.com/v1"}))
    with pytest.raises(ValueError, match="not both"):
        get_entry("openai").options_model().model_validate({"api_key": "a", "api_key_file": "/k"})
    with pytest.raises(ValueError, match="api_version"):
        get_entry("openai").options_model().model_validate({"api_version": "2024-10-21"})  # Azure's only


def test_catalog_entries_match_the_table() -> None:
    entries = all_entries()
    for name, provider in PROVIDERS.items():
        entry = entries[name]
        assert entry.installed() and entry.install_hint().startswith("built in")
        assert ("completion" in entry.serves) == provider.completions
        assert ("embedding" in entry.serves) == provider.embeddings == (ModelKind.EMBEDDING in entry.kinds)
        engine = entry.create(ModelSpec(name="m", kind=ModelKind.LLM, engine=name, source="x",
                                        options={"base_url": "https://example.invalid/v1"}))
        assert isinstance(engine, ToolCalling) and isinstance(engine, StructuredOutput)
