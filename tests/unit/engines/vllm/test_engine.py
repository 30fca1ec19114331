"""The vllm engine through Corral's engine interface, driving the fake vLLM of
``tests/fakes`` (vLLM's documented API, no model): streaming deltas, sampling parameters,
finish reasons, usage, aborts, admission errors, engine arguments and vLLM versions."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import subprocess
import sys
from types import ModuleType
from typing import Any

import pytest
from pydantic import ValidationError

from corral.core.engine import Engine, TextGeneration
from corral.core.errors import ConfigError, EngineError, InvalidRequest, Unavailable
from corral.core.types import (
    ChatMessage,
    FinishReason,
    GenerationChunk,
    GenerationEnd,
    GenerationRequest,
    SamplingParams,
    Usage,
)
from corral.engines.catalog import get_entry
from corral.engines.vllm.options import VLLMOptions
from tests.unit.engines.vllm.conftest import SOURCE, Factory

CHAT = (ChatMessage("system", "Be brief."), ChatMessage("user", "hello there"))


def chat(rid: str = "c", messages: tuple[ChatMessage, ...] = CHAT, **sampling: Any) -> GenerationRequest:
    sampling.setdefault("temperature", 0.0)
    return GenerationRequest(request_id=rid, model="m", sampling=SamplingParams(**sampling), messages=messages)


def completion(prompt: str = "once upon a time", rid: str = "p", echo: bool = False, **sampling: Any) -> GenerationRequest:
    sampling.setdefault("temperature", 0.0)
    return GenerationRequest(request_id=rid, model="m", sampling=SamplingParams(**sampling), prompt=prompt, echo=echo)


@dataclasses.dataclass
class Result:
    texts: list[str]
    finish: list[FinishReason | None]
    usage: Usage
    chunks: list[GenerationChunk]


async def run(engine: Any, request: GenerationRequest) -> Result:
    n = request.sampling.n
    texts, finish, chunks = [""] * n, [None] * n, []
    ends = []
    async for item in await engine.generate(request):
        if isinstance(item, GenerationEnd):
            ends.append(item)
            continue
        assert not ends, "GenerationEnd must be last"
        assert finish[item.index] is None, "nothing may follow a choice's finish"
        chunks.append(item)
        texts[item.index] += item.text
        finish[item.index] = item.finish_reason
    assert len(ends) == 1
    return Result(texts, finish, ends[0].usage, chunks)  # type: ignore[arg-type]


async def settle(condition: Any, steps: int = 100) -> None:
    """Let scheduled tasks (aborts) run until ``condition()`` holds."""
    for _ in range(steps):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never held")


def only(values: Any) -> Any:
    (value,) = list(values)
    return value


# -- generation ------------------------------------------------------------------------


async def test_chat_streams_one_delta_per_token_with_usage(make: Factory, fake_vllm: ModuleType) -> None:
    engine, llm = await make()
    assert isinstance(engine, Engine) and isinstance(engine, TextGeneration)
    result = await run(engine, chat(max_tokens=5, ignore_eos=True))

    recorded = only(llm.requests.values())
    tok = llm.tokenizer
    rendered = tok.apply_chat_template(
        [{"role": m.role, "content": m.content} for m in CHAT], tokenize=False, add_generation_prompt=True
    )
    assert rendered.endswith("<|assistant|> ")  # the generation prompt was asked for
    assert recorded.prompt_token_ids == tok.encode(rendered, add_special_tokens=False)
    assert recorded.sampling_params.output_kind is fake_vllm.RequestOutputKind.DELTA
    assert len(result.chunks) == 5  # one word per step, streamed as it comes
    assert all(len(c.text.split()) == 1 for c in result.chunks)
    assert result.finish == [FinishReason.LENGTH]
    assert result.usage == Usage(len(recorded.prompt_token_ids), 5)
    load = engine.load()
    assert (load.in_flight, load.completed_total, load.cancelled_total) == (0, 1, 0)


async def test_sampling_parameters_are_forwarded(make: Factory, fake_vllm: ModuleType) -> None:
    engine, llm = await make(max_model_len=100)
    request = chat(
        "s", max_tokens=7, temperature=0.7, top_p=0.9, seed=11, n=2, stop=("zulu", "yankee"),
        ignore_eos=True, presence_penalty=0.5, frequency_penalty=0.25,
    )
    await run(engine, request)
    params = only(llm.requests.values()).sampling_params
    assert (params.max_tokens, params.temperature, params.top_p, params.seed, params.n) == (7, 0.7, 0.9, 11, 2)
    assert params.stop == ["zulu", "yankee"]
    assert (params.ignore_eos, params.presence_penalty, params.frequency_penalty) == (True, 0.5, 0.25)

    # no max_tokens: the room left in the context, never vLLM's default of 16
    await run(engine, completion(rid="room", ignore_eos=True))
    recorded = llm.requests[only(k for k in llm.requests if k.startswith("room"))]
    assert recorded.sampling_params.max_tokens == 100 - len(recorded.prompt_token_ids)


async def test_end_of_sequence_finishes_with_stop(make: Factory) -> None:
    engine, _ = await make()
    result = await run(engine, completion(max_tokens=50))
    assert result.finish == [FinishReason.STOP]
    words = len(result.texts[0].split())
    assert 0 < words < 50
    assert result.usage.completion_tokens == words + 1  # the end-of-sequence token counts


async def test_n_choices_are_indexed_seeded_and_summed(make: Factory) -> None:
    engine, _ = await make()
    request = completion(n=3, temperature=1.0, seed=5, max_tokens=6, ignore_eos=True)
    first = await run(engine, request)
    assert first.finish == [FinishReason.LENGTH] * 3
    assert len(set(first.texts)) > 1  # each choice sampled on its own
    assert first.usage.completion_tokens == 18
    assert (await run(engine, request)).texts == first.texts


async def test_stop_string_cuts_the_text(make: Factory) -> None:
    engine, _ = await make()
    whole = (await run(engine, completion(max_tokens=10, ignore_eos=True))).texts[0]
    stop = whole.split()[3]
    cut = await run(engine, completion(max_tokens=10, ignore_eos=True, stop=(stop,)))
    assert cut.texts == [whole[: whole.index(stop)]]
    assert cut.finish == [FinishReason.STOP]
    assert cut.usage.completion_tokens < 10


async def test_echo_sends_the_prompt_first(make: Factory) -> None:
    engine, _ = await make()
    result = await run(engine, completion("def main(", echo=True, max_tokens=3, ignore_eos=True))
    assert result.chunks[0] == GenerationChunk(0, "def main(")
    assert result.texts[0].startswith("def main( ") and len(result.texts[0].split()) == 5


async def test_cumulative_outputs_are_diffed_when_output_kind_is_unknown(
    make: Factory, fake_vllm: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A vLLM whose SamplingParams takes no output_kind streams whole texts; the adapter
    sends the same deltas as with RequestOutputKind.DELTA."""
    request = completion(n=2, temperature=1.0, seed=3, max_tokens=9, ignore_eos=True, stop=("kilo",))
    delta_engine, _ = await make()
    expected = await run(delta_engine, request)

    real = fake_vllm.SamplingParams

    def without_output_kind(**fields: Any) -> Any:
        if "output_kind" in fields:
            raise TypeError("SamplingParams() got an unexpected keyword argument 'output_kind'")
        return real(**fields)

    monkeypatch.setattr(fake_vllm, "SamplingParams", without_output_kind)
    engine, llm = await make()
    result = await run(engine, request)
    assert only(llm.requests.values()).sampling_params.output_kind is fake_vllm.RequestOutputKind.CUMULATIVE
    assert (result.texts, result.finish, result.usage) == (expected.texts, expected.finish, expected.usage)
    assert [c.text for c in result.chunks] == [c.text for c in expected.chunks]


# -- aborts ------------------------------------------------------------------------------


async def test_closing_a_started_stream_aborts_the_vllm_request(make: Factory) -> None:
    engine, llm = await make()
    stream = await engine.generate(chat("gone", max_tokens=1000, ignore_eos=True))
    first = await anext(stream)
    assert isinstance(first, GenerationChunk) and first.finish_reason is None
    await stream.aclose()
    vllm_id = only(llm.requests)
    await settle(lambda: llm.aborted)
    assert llm.aborted == [vllm_id]
    load = engine.load()
    assert (load.in_flight, load.completed_total, load.cancelled_total) == (0, 0, 1)


async def test_closing_an_unread_stream_still_aborts(make: Factory) -> None:
    engine, llm = await make()
    stream = await engine.generate(chat("never-read", max_tokens=1000, ignore_eos=True))
    assert engine.load().in_flight == 1
    await stream.aclose()
    await settle(lambda: llm.aborted)
    (aborted,) = llm.aborted
    assert aborted.startswith("never-read")
    assert llm.requests == {}  # vLLM never saw it start; the abort is the adapter's
    assert (engine.load().in_flight, engine.load().cancelled_total) == (0, 1)


async def test_a_completed_stream_is_not_aborted(make: Factory) -> None:
    engine, llm = await make()
    stream = await engine.generate(chat(max_tokens=3, ignore_eos=True))
    async for item in stream:
        if isinstance(item, GenerationEnd):
            break  # the consumer stops at the end item without exhausting the iterator
    await stream.aclose()
    await asyncio.sleep(0)
    assert llm.aborted == []
    assert (engine.load().completed_total, engine.load().cancelled_total) == (1, 0)


async def test_an_abort_inside_vllm_finishes_as_cancelled(make: Factory) -> None:
    engine, llm = await make()
    stream = await engine.generate(chat(n=2, temperature=1.0, max_tokens=1000, ignore_eos=True))
    await anext(stream)
    await llm.abort(only(llm.requests))
    rest = [item async for item in stream]
    finishes = [c.finish_reason for c in rest if isinstance(c, GenerationChunk) and c.finish_reason]
    assert finishes == [FinishReason.CANCELLED, FinishReason.CANCELLED]
    assert isinstance(rest[-1], GenerationEnd)


async def test_engine_failure_mid_stream_is_an_engine_error(make: Factory) -> None:
    engine, llm = await make()
    stream = await engine.generate(chat(max_tokens=1000, ignore_eos=True))
    await anext(stream)
    llm.shutdown()  # the engine dies under the request
    with pytest.raises(EngineError, match="EngineDeadError"):
        async for _ in stream:
            pass
    assert engine.load().in_flight == 0
    await settle(lambda: llm.aborted)


# -- admission errors ----------------------------------------------------------------------


async def test_max_tokens_beyond_max_model_len_is_a_400(make: Factory) -> None:
    engine, llm = await make(max_model_len=32)
    with pytest.raises(InvalidRequest) as info:
        await engine.generate(chat(max_tokens=32))
    assert (info.value.status, info.value.param, info.value.code) == (400, "max_tokens", "context_length_exceeded")
    assert "32" in info.value.message
    with pytest.raises(InvalidRequest) as info:
        await engine.generate(completion("word " * 40))
    assert info.value.param == "prompt"
    assert llm.requests == {} and engine.load().in_flight == 0


async def test_sampling_values_vllm_refuses_are_a_400(make: Factory) -> None:
    engine, llm = await make()
    with pytest.raises(InvalidRequest, match="temperature") as info:
        await engine.generate(chat(temperature=-1.0))
    assert info.value.status == 400
    assert engine.load().in_flight == 0


async def test_chat_needs_a_chat_template(make: Factory) -> None:
    engine, _ = await make(source="fake-org/tiny-base")
    with pytest.raises(InvalidRequest, match="no chat template") as info:
        await engine.generate(chat())
    assert info.value.param == "messages"
    assert (await run(engine, completion(max_tokens=2, ignore_eos=True))).usage.completion_tokens == 2


async def test_a_template_refusal_is_a_400(make: Factory) -> None:
    engine, _ = await make()
    with pytest.raises(InvalidRequest, match="wizard") as info:
        await engine.generate(chat(messages=(ChatMessage("wizard", "hi"),)))
    assert info.value.param == "messages"


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tools": ({"type": "function", "function": {"name": "f", "parameters": {}}},)}, "tools"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
    ],
)
async def test_tools_and_response_format_are_refused(make: Factory, extra: dict[str, Any], param: str) -> None:
    engine, llm = await make()
    request = dataclasses.replace(chat(), **extra)
    with pytest.raises(InvalidRequest) as info:
        await engine.generate(request)
    assert (info.value.status, info.value.param, info.value.code) == (400, param, "unsupported_parameter")
    assert llm.requests == {}


# -- engine arguments and lifecycle ------------------------------------------------------


async def test_options_are_forwarded_into_engine_args(make: Factory, fake_vllm: ModuleType) -> None:
    _, llm = await make(
        tensor_parallel_size=2, gpu_memory_utilization=0.5, max_model_len=512, quantization="awq", dtype="float16",
        enforce_eager=True, max_num_seqs=8, trust_remote_code=True, seed=0,
        engine_args={"enable_prefix_caching": True, "swap_space": 2},
    )
    expected = fake_vllm.AsyncEngineArgs(
        model=SOURCE, tensor_parallel_size=2, gpu_memory_utilization=0.5, max_model_len=512, quantization="awq",
        dtype="float16", enforce_eager=True, max_num_seqs=8, trust_remote_code=True, seed=0,
        enable_prefix_caching=True, swap_space=2,
    )
    assert llm.engine_args == expected
    _, bare = await make()
    assert bare.engine_args == fake_vllm.AsyncEngineArgs(model=SOURCE)  # unset options keep vLLM's defaults


async def test_unknown_engine_args_key_fails_the_start_naming_it(make: Factory, fake_vllm: ModuleType) -> None:
    with pytest.raises(ConfigError) as info:
        await make(engine_args={"enable_prefix_cachin": True})
    assert "options.engine_args.enable_prefix_cachin" in info.value.message
    assert "did you mean 'enable_prefix_caching'" in info.value.message
    assert info.value.param == "options.engine_args.enable_prefix_cachin"
    assert fake_vllm.v1.engine.async_llm.AsyncLLM.instances == []  # refused before loading anything


def test_options_schema_refuses_bad_values_at_config_load() -> None:
    assert VLLMOptions.model_validate({}).engine_args == {}
    for bad in (
        {"max_num_batched_tokens": 4},  # not a named option: goes in engine_args
        {"max_model_len": "4096"},  # strict
        {"gpu_memory_utilization": 1.5},
        {"engine_args": {"max_model_len": 4096}},  # shadows a named option
        {"engine_args": {"model": "other"}},  # the source is the model
    ):
        with pytest.raises(ValidationError):
            VLLMOptions.model_validate(bad)
    with pytest.raises(ValidationError, match="set it as the option max_model_len"):
        VLLMOptions.model_validate({"engine_args": {"max_model_len": 4096}})


async def test_stop_shuts_vllm_down(make: Factory) -> None:
    engine, llm = await make()
    await engine.stop()
    assert llm.is_shut_down
    with pytest.raises(Unavailable):
        await engine.generate(chat())


async def test_prefers_async_llm_and_falls_back_to_async_llm_engine(
    make: Factory, fake_vllm: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, llm = await make()
    assert type(llm) is fake_vllm.v1.engine.async_llm.AsyncLLM
    with monkeypatch.context() as patch:
        patch.setitem(sys.modules, "vllm.v1.engine.async_llm", None)  # a vLLM without the V1 module
        engine, old = await make()
    assert type(old) is fake_vllm.AsyncLLMEngine
    assert (await run(engine, chat(max_tokens=2, ignore_eos=True))).finish == [FinishReason.LENGTH]


async def test_a_synchronous_get_tokenizer_is_accepted(
    make: Factory, fake_vllm: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    """vLLM after 0.10 made ``get_tokenizer`` a plain method."""
    monkeypatch.setattr(fake_vllm.v1.engine.async_llm.AsyncLLM, "get_tokenizer", lambda self: self.tokenizer)
    engine, _ = await make()
    assert (await run(engine, chat(max_tokens=2, ignore_eos=True))).usage.completion_tokens == 2


# -- catalog -------------------------------------------------------------------------------


def test_listed_as_not_installed_without_vllm() -> None:
    """``tests/fakes`` is not importable by default: ``corral engines`` shows vllm missing."""
    out = subprocess.run(
        [sys.executable, "-m", "corral.cli.main", "engines", "--json"], capture_output=True, text=True, check=True
    )
    (entry,) = [e for e in json.loads(out.stdout)["engines"] if e["engine"] == "vllm"]
    assert entry["serves"] == ["chat", "completion"]
    assert entry["installed"] is False
    assert entry["install"] == "pip install 'corral[vllm]'"


def test_installed_once_vllm_is_importable(fake_vllm: ModuleType) -> None:
    assert get_entry("vllm").installed()
