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
from corral.core.errors import ConfigError, EngineError, InvalidRequest, Overloaded, Unavailable
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
from corral.engines.vllm import engine as engine_module
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
        ignore_eos=True, presence_penalty=0.5, frequency_penalty=0.25, top_k=40, repetition_penalty=1.3,
    )
    await run(engine, request)
    params = only(llm.requests.values()).sampling_params
    assert (params.max_tokens, params.temperature, params.top_p, params.seed, params.n) == (7, 0.7, 0.9, 11, 2)
    assert params.stop == ["zulu", "yankee"]
    assert (params.ignore_eos, params.presence_penalty, params.frequency_penalty) == (True, 0.5, 0.25)
    assert (params.top_k, params.repetition_penalty) == (40, 1.3)

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
    assert llm.self_aborted == [vllm_id]  # vLLM 0.33 aborts a closed generate by itself too
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
    llm.die()  # the engine core dies under the request
    with pytest.raises(EngineError, match="EngineDeadError") as info:
        async for _ in stream:
            pass
    assert info.value.status == 500
    load = engine.load()
    assert load.in_flight == 0
    assert load.failure is not None and "EngineDeadError" in load.failure  # the worker marks the instance failed
    await settle(lambda: llm.aborted)


async def test_an_unexpected_vllm_failure_is_a_500_naming_its_cause(
    make: Factory, fake_vllm: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    """vLLM wraps what it did not expect in EngineGenerateError (async_llm.py:838-851)."""
    engine, llm = await make()

    def broken(prompt: Any) -> list[int]:
        raise RuntimeError("tokenizer exploded")

    monkeypatch.setattr(llm, "_prompt_ids", broken)
    with pytest.raises(EngineError, match="RuntimeError: tokenizer exploded") as info:
        await run(engine, chat(max_tokens=3))
    assert (info.value.status, info.value.code) == (500, "engine_error")
    assert engine.load().failure is None  # recoverable: the next request is served
    monkeypatch.undo()
    assert (await run(engine, chat(max_tokens=2, ignore_eos=True))).usage.completion_tokens == 2


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


@pytest.mark.parametrize(
    ("sampling", "param"),
    [
        ({"temperature": -1.0}, "temperature"),
        ({"temperature": 2.5}, "temperature"),  # the old fake accepted it
        ({"top_p": 0.0, "temperature": 1.0}, "top_p"),
        ({"stop": ("",)}, "stop"),  # the old fake accepted it; vLLM names no parameter
        ({"presence_penalty": 3.0}, "presence_penalty"),
        ({"repetition_penalty": 0.0}, "repetition_penalty"),  # vLLM names no parameter
        ({"repetition_penalty": float("inf")}, "repetition_penalty"),
        ({"top_k": -2, "temperature": 1.0}, "top_k"),
    ],
)
async def test_sampling_values_vllm_refuses_are_a_400(make: Factory, sampling: dict[str, Any], param: str) -> None:
    """vLLM raises VLLMValidationError, which is no ValueError (vllm/exceptions.py:28);
    Corral's HTTP validation refuses these first, but an engine must not 500 on them."""
    engine, llm = await make()
    with pytest.raises(InvalidRequest) as info:
        await engine.generate(chat(**sampling))
    assert (info.value.status, info.value.param, info.value.code) == (400, param, "invalid_value")
    assert "(parameter=" not in info.value.message
    assert engine.load().in_flight == 0 and llm.requests == {}


async def test_a_refusal_inside_vllms_stream_is_a_400(make: Factory) -> None:
    """vLLM validates the prompt when generate starts (input_processor.py:557-603); a
    refusal the adapter did not foresee (here, a context smaller than at start) is a 400."""
    engine, llm = await make(max_model_len=64)
    llm.model_config.max_model_len = 3
    with pytest.raises(InvalidRequest, match="maximum model length") as info:
        await run(engine, completion("one two three four", max_tokens=2))
    assert (info.value.status, info.value.param) == (400, "prompt")
    assert engine.load().in_flight == 0


async def test_a_full_vllm_queue_is_429(make: Factory) -> None:
    """``max_num_queued_reqs`` (async_llm.py:325-383) raises QueueOverflowError, a
    GracefulHTTPError: Corral's Overloaded, retried by clients."""
    engine, llm = await make(engine_args={"max_num_queued_reqs": 2})
    busy = await engine.generate(completion(rid="busy", n=2, temperature=1.0, max_tokens=1000, ignore_eos=True))
    await anext(busy)
    with pytest.raises(Overloaded) as info:
        await run(engine, chat(rid="late", max_tokens=2))
    assert (info.value.status, info.value.code) == (429, "overloaded")
    assert [k for k in llm.requests if k.startswith("late")] == []
    await busy.aclose()
    await settle(lambda: not llm._running)
    assert (await run(engine, chat(rid="later", max_tokens=2, ignore_eos=True))).usage.completion_tokens == 2


async def test_greedy_choices_are_fanned_out_as_openai_answers_them(make: Factory, fake_vllm: ModuleType) -> None:
    """vLLM refuses temperature 0 with n > 1 (sampling_params.py:769-773); OpenAI answers
    n greedy choices: n requests of one choice each, read together."""
    engine, llm = await make()
    with pytest.raises(fake_vllm.exceptions.VLLMValidationError):
        fake_vllm.SamplingParams(n=3, temperature=0.0)  # the rule the fan-out works around
    result = await run(engine, completion(n=3, temperature=0.0, max_tokens=5, ignore_eos=True))
    assert len(set(result.texts)) == 1 and len(result.texts[0].split()) == 5
    assert result.finish == [FinishReason.LENGTH] * 3
    assert result.usage.completion_tokens == 15
    recorded = list(llm.requests.values())
    assert len(recorded) == 3 and len(set(llm.requests)) == 3
    assert all((r.sampling_params.n, r.sampling_params.temperature) == (1, 0.0) for r in recorded)
    assert (engine.load().completed_total, engine.load().in_flight) == (1, 0)

    stream = await engine.generate(chat("fan", n=2, temperature=0.0, max_tokens=1000, ignore_eos=True))
    await anext(stream)
    await stream.aclose()  # every request of the fan-out is aborted
    fanned = [k for k in llm.requests if k.startswith("fan")]
    assert len(fanned) == 2
    await settle(lambda: sorted(llm.aborted) == sorted(fanned))
    await settle(lambda: not llm._running)


async def test_chat_needs_a_chat_template(make: Factory) -> None:
    engine, _ = await make(source="fake-org/tiny-base")
    with pytest.raises(InvalidRequest, match="no chat template") as info:
        await engine.generate(chat())
    assert info.value.param == "messages"
    assert (await run(engine, completion(max_tokens=2, ignore_eos=True))).usage.completion_tokens == 2


async def test_chat_on_a_mistral_tokenizer(make: Factory) -> None:
    """vLLM's MistralTokenizer has apply_chat_template but no chat_template attribute."""
    engine, llm = await make(source="mistralai/fake-mistral-7b")
    assert not hasattr(llm.tokenizer, "chat_template")
    result = await run(engine, chat(max_tokens=3, ignore_eos=True))
    expected = llm.tokenizer.apply_chat_template(
        [{"role": m.role, "content": m.content} for m in CHAT], add_generation_prompt=True
    )
    assert only(llm.requests.values()).prompt_token_ids == expected
    assert result.usage == Usage(len(expected), 3)
    with pytest.raises(InvalidRequest, match="last message is from the assistant") as info:
        await engine.generate(chat(messages=(*CHAT, ChatMessage("assistant", "Hi"))))
    assert (info.value.status, info.value.param) == (400, "messages")


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
        engine_args={"enable_prefix_caching": True, "max_num_queued_reqs": 64},
    )
    expected = fake_vllm.AsyncEngineArgs(
        model=SOURCE, tensor_parallel_size=2, gpu_memory_utilization=0.5, max_model_len=512, quantization="awq",
        dtype="float16", enforce_eager=True, max_num_seqs=8, trust_remote_code=True, seed=0,
        enable_prefix_caching=True, max_num_queued_reqs=64,
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
    with pytest.raises(ConfigError, match="swap_space"):  # gone from vLLM 0.33's EngineArgs
        await make(engine_args={"swap_space": 4})
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


async def test_stop_ends_the_streams_in_flight_with_an_error(make: Factory) -> None:
    """vLLM's shutdown ends no stream (async_llm.py:305-317): stop aborts them first."""
    engine, llm = await make()
    one = await engine.generate(chat("one", max_tokens=1000, ignore_eos=True))
    fan = await engine.generate(completion(rid="fan", n=2, temperature=0.0, max_tokens=1000, ignore_eos=True))
    unread = await engine.generate(chat("unread", max_tokens=1000, ignore_eos=True))
    await anext(one)
    await anext(fan)
    readers = [asyncio.create_task(_drain(s)) for s in (one, fan)]  # as the HTTP responses read them
    await asyncio.wait_for(engine.stop(), 4)  # well within STOP_WAIT: the aborted streams end at once
    assert llm.is_shut_down
    assert set(llm.requests) == {"one-0", "fan-1", "fan-1.1"}  # the fan-out: one request per greedy choice
    assert set(llm.requests) <= set(llm.aborted)
    for reader in readers:
        with pytest.raises(Unavailable, match="stopped while generating"):
            await asyncio.wait_for(reader, 30)
    with pytest.raises(Unavailable, match="stopping"):  # never started: vLLM is not asked any more
        await asyncio.wait_for(_drain(unread), 30)
    assert [k for k in llm.requests if k.startswith("unread")] == []
    load = engine.load()
    assert (load.in_flight, load.completed_total) == (0, 0)


async def test_stop_is_bounded_when_vllm_never_answers_an_abort(
    make: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine, llm = await make()
    stream = await engine.generate(chat(max_tokens=1000, ignore_eos=True))
    await anext(stream)

    async def deaf(request_id: Any, internal: bool = False) -> None:
        pass

    monkeypatch.setattr(llm, "abort", deaf)
    monkeypatch.setattr(engine_module, "STOP_WAIT", 0.2)
    await asyncio.wait_for(engine.stop(), 10)
    assert llm.is_shut_down
    await stream.aclose()


async def _drain(stream: Any) -> None:
    async for _ in stream:
        pass


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


async def test_an_awaitable_get_tokenizer_is_accepted(
    make: Factory, fake_vllm: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``get_tokenizer`` was a coroutine in vLLM 0.10; a plain method in 0.33 (async_llm.py:1119)."""

    async def get_tokenizer(self: Any) -> Any:
        return self.tokenizer

    monkeypatch.setattr(fake_vllm.v1.engine.async_llm.AsyncLLM, "get_tokenizer", get_tokenizer)
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
