"""What the transformers engine cannot take is refused before its batcher (400 naming the
field), and the batcher survives any sequence it is handed: the engine keeps serving."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from corral.core.errors import CorralError, InvalidRequest
from corral.core.spec import ModelKind, ModelSpec
from corral.core.types import ChatMessage, FinishReason, GenerationEnd, GenerationRequest, SamplingParams
from corral.engines.catalog import get_entry
from corral.engines.transformers.demo import ensure_demo_llm

MAX_BATCH = 4


@pytest.fixture(scope="module")
async def engine(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Any]:
    folder = ensure_demo_llm(tmp_path_factory.mktemp("demo"))
    spec = ModelSpec("m", ModelKind.LLM, "transformers", str(folder), options={"max_batch_size": MAX_BATCH})
    engine = get_entry("transformers").create(spec)
    await engine.start()
    yield engine
    await engine.stop()


async def run(engine: Any, request: GenerationRequest) -> tuple[str, GenerationEnd]:
    stream = await engine.generate(request)
    text, end = "", None
    async for item in stream:
        if isinstance(item, GenerationEnd):
            end = item
        else:
            text += item.text
    assert end is not None
    return text, end


def completion(prompt: str, **sampling: Any) -> GenerationRequest:
    return GenerationRequest("r", "m", SamplingParams(**{"max_tokens": 3, **sampling}), prompt=prompt)


async def assert_serves(engine: Any) -> None:
    _, end = await asyncio.wait_for(run(engine, completion("def f(", temperature=0)), 30)
    assert end.usage.completion_tokens >= 1
    assert engine.load().crashes_total == 0 and engine.load().failure is None


@pytest.mark.parametrize(
    ("request_", "param", "code"),
    [
        (completion(""), "prompt", "empty_prompt"),
        (completion("a\ud800b"), "prompt", "invalid_value"),
        (GenerationRequest("r", "m", SamplingParams(max_tokens=2), messages=(ChatMessage("user", "\udfff"),)),
         "messages[0].content", "invalid_value"),
        (completion("x", n=MAX_BATCH + 1), "n", "invalid_value"),
        (completion("x", max_tokens=10**9), "max_tokens", "context_length_exceeded"),
        (completion("word " * 5000), "prompt", "context_length_exceeded"),
    ],
)
async def test_refused_with_400_naming_the_field(engine: Any, request_: GenerationRequest, param: str, code: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        await engine.generate(request_)
    assert (caught.value.param, caught.value.code) == (param, code)
    await assert_serves(engine)


async def test_extreme_sampling_values_generate(engine: Any) -> None:
    for sampling in ({"temperature": 1e-300}, {"seed": 2**80}, {"seed": -(2**70)}, {"top_p": 1e-12},
                     {"presence_penalty": -2, "frequency_penalty": 2, "max_tokens": 8}):
        _, end = await asyncio.wait_for(run(engine, completion("x", **sampling)), 30)
        assert end.usage.completion_tokens >= 1, sampling
    await assert_serves(engine)


async def test_batcher_finishes_sequences_it_cannot_run_with_an_error(engine: Any) -> None:
    """Defence in depth: handed a zero-length or out-of-vocabulary sequence directly, the
    batcher fails that sequence and keeps serving the others in the same step."""
    import torch

    from corral.engines.textstream import IncrementalDetokenizer, StopMatcher
    from corral.engines.transformers.batcher import Sequence, StepOutput

    got: dict[str, list[StepOutput]] = {"empty": [], "vocab": [], "ok": []}
    loop = asyncio.get_running_loop()
    done = asyncio.Event()

    def emitter(name: str) -> Any:
        def emit(out: StepOutput) -> None:
            got[name].append(out)
            if all(o and o[-1].finish_reason is not None for o in got.values()):
                loop.call_soon_threadsafe(done.set)
        return emit

    def seq(name: str, ids: list[int]) -> Sequence:
        return Sequence(f"{name}/0", 0, ids, SamplingParams(max_tokens=2, temperature=0), 2, emitter(name),
                        IncrementalDetokenizer(engine._decode), StopMatcher(()), torch.Generator(), name, name)

    engine._batcher.submit([seq("empty", []), seq("vocab", [5, 10**6]), seq("ok", [5, 6])])
    engine._loop.wake()
    await asyncio.wait_for(done.wait(), 30)
    for name in ("empty", "vocab"):
        assert got[name][-1].finish_reason is FinishReason.ERROR
        assert isinstance(got[name][-1].error, InvalidRequest)
    assert got["ok"][-1].finish_reason is FinishReason.LENGTH
    await assert_serves(engine)


texts = st.text(alphabet=st.characters(codec="utf-8"), max_size=40) | st.sampled_from(["", " ", "\x00", "\n\n", "<|im_end|>"])
samplings = st.builds(
    SamplingParams,
    max_tokens=st.integers(1, 4) | st.just(10**6),  # short, or beyond the context
    temperature=st.sampled_from([0.0, 1e-30, 1e-6, 0.7, 2.0]),
    top_p=st.sampled_from([1e-9, 0.1, 1.0]),
    stop=st.lists(st.text(max_size=3), max_size=3).map(tuple),
    seed=st.none() | st.integers(-(2**70), 2**70),
    n=st.integers(1, MAX_BATCH + 2),
    ignore_eos=st.booleans(),
    presence_penalty=st.floats(-2, 2),
    frequency_penalty=st.floats(-2, 2),
)


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(prompt=texts, chat=st.booleans(), sampling=samplings)
async def test_any_valid_request_is_answered_or_refused_and_the_loop_lives(
    engine: Any, prompt: str, chat: bool, sampling: SamplingParams
) -> None:
    request = (
        GenerationRequest("r", "m", sampling, messages=(ChatMessage("user", prompt),))
        if chat else GenerationRequest("r", "m", sampling, prompt=prompt)
    )
    try:
        await asyncio.wait_for(run(engine, request), 60)
    except CorralError as exc:
        assert exc.status == 400, exc.message
    assert engine.load().crashes_total == 0 and engine.load().failure is None
