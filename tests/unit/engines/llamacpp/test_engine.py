"""The llama.cpp engine on the demo model exported to GGUF: streaming, sampling
parameters, usage, cancellation, batched serving and admission errors."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from pydantic import ValidationError

from corral.core.engine import Engine, TextGeneration
from corral.core.errors import InvalidRequest, Overloaded, Unavailable
from corral.core.spec import ModelKind, ModelSpec
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
from corral.engines.llamacpp.engine import LlamaCppEngine
from corral.engines.llamacpp.options import LlamaCppOptions

N_CTX = 512
# One thread: llama.cpp's worker threads spin while waiting, which on a small shared CI
# machine costs far more than a second thread gains on a 100k-parameter model.
OPTIONS = {"n_ctx": N_CTX, "n_threads": 1}
CODE_PROMPT = "def main(argv):\n"
CHAT = (ChatMessage("system", "You are terse."), ChatMessage("user", "hello there"))


def spec(source: Path, **options: Any) -> ModelSpec:
    return ModelSpec(name="gguf", kind=ModelKind.LLM, engine="llamacpp", source=str(source), options={**OPTIONS, **options})


def completion(prompt: str = CODE_PROMPT, rid: str = "r", **sampling: Any) -> GenerationRequest:
    sampling.setdefault("temperature", 0.0)
    return GenerationRequest(request_id=rid, model="gguf", sampling=SamplingParams(**sampling), prompt=prompt)


def chat(messages: tuple[ChatMessage, ...] = CHAT, rid: str = "c", **sampling: Any) -> GenerationRequest:
    sampling.setdefault("temperature", 0.0)
    return GenerationRequest(request_id=rid, model="gguf", sampling=SamplingParams(**sampling), messages=messages)


@dataclasses.dataclass
class Result:
    texts: list[str]
    finish: list[FinishReason | None]
    usage: Usage
    deltas: list[GenerationChunk]


async def run(engine: LlamaCppEngine, request: GenerationRequest) -> Result:
    n = request.sampling.n
    texts, finish, deltas = [""] * n, [None] * n, []
    usage = None
    async for item in await engine.generate(request):
        if isinstance(item, GenerationEnd):
            usage = item.usage
            continue
        deltas.append(item)
        assert finish[item.index] is None, "nothing may follow a choice's finish"
        texts[item.index] += item.text
        finish[item.index] = item.finish_reason
    assert usage is not None
    return Result(texts, finish, usage, deltas)  # type: ignore[arg-type]


async def wait_idle(engine: LlamaCppEngine, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        load = engine.load()
        if load.in_flight == 0 and load.queued == 0:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"engine still busy: {engine.load()}")


@pytest_asyncio.fixture(scope="module")
async def engine(demo_gguf: Path) -> AsyncIterator[LlamaCppEngine]:
    eng = get_entry("llamacpp").create(spec(demo_gguf))
    assert isinstance(eng, LlamaCppEngine)
    started = time.perf_counter()
    await eng.start()
    print(f"llamacpp engine started in {time.perf_counter() - started:.3f}s")
    yield eng
    await eng.stop()


@pytest.fixture(scope="module")
def reference(demo_gguf: Path):  # type: ignore[no-untyped-def]
    """A plain llama_cpp.Llama on the same file, called the documented way (not streamed)."""
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(demo_gguf), n_ctx=N_CTX, n_threads=1, verbose=False)
    yield llm
    llm.close()


def long_request(rid: str = "long") -> GenerationRequest:
    """Keeps the engine busy for a while (8 x 480 tokens: about a second here)."""
    return completion(rid=rid, max_tokens=480, n=8, ignore_eos=True)


GREEDY = {"temperature": 0.0, "top_k": 0, "min_p": 0.0, "repeat_penalty": 1.0}


def same_text(ours: str, theirs: str) -> None:
    """llama-cpp-python decodes its (unstreamed) text with errors="ignore"; the engine, like
    the HF tokenizer, with errors="replace": the random-weight demo model does emit byte runs
    that are not UTF-8."""
    assert ours.replace("\ufffd", "") == theirs


def test_catalog_entry_and_options() -> None:
    entry = get_entry("llamacpp")
    assert entry.serves == ("chat", "completion") and entry.kinds == {ModelKind.LLM}
    assert entry.installed() and entry.install_hint() == "pip install 'corral[llamacpp]'"
    assert LlamaCppOptions().n_ctx == 2048 and LlamaCppOptions().max_batch_size == 8 and LlamaCppOptions().verbose is False
    with pytest.raises(ValidationError, match="n_ctxx"):
        LlamaCppOptions.model_validate({"n_ctxx": 1})


async def test_is_a_text_generation_engine(engine: LlamaCppEngine) -> None:
    assert isinstance(engine, Engine) and isinstance(engine, TextGeneration)
    assert engine.load().in_flight == 0


async def test_completion_streams_and_matches_llama_cpp(engine: LlamaCppEngine, reference: Any) -> None:
    ours = await run(engine, completion(max_tokens=60))
    theirs = reference.create_completion(prompt=CODE_PROMPT, max_tokens=60, **GREEDY)
    same_text(ours.texts[0], theirs["choices"][0]["text"])
    assert ours.finish[0].value == theirs["choices"][0]["finish_reason"]
    assert ours.usage == Usage(theirs["usage"]["prompt_tokens"], theirs["usage"]["completion_tokens"])
    assert sum(1 for d in ours.deltas if d.text) > 5  # streamed token by token, not in one piece


async def test_chat_uses_the_gguf_template_and_matches_llama_cpp(engine: LlamaCppEngine, reference: Any) -> None:
    ours = await run(engine, chat(max_tokens=40))
    messages = [{"role": m.role, "content": m.content} for m in CHAT]
    theirs = reference.create_chat_completion(messages=messages, max_tokens=40, **GREEDY)
    same_text(ours.texts[0], theirs["choices"][0]["message"]["content"])
    assert ours.finish[0].value == theirs["choices"][0]["finish_reason"]
    assert ours.usage == Usage(theirs["usage"]["prompt_tokens"], theirs["usage"]["completion_tokens"])
    # the prompt is the ChatML rendering of the messages, as the HF tokenizer renders it
    assert ours.usage.prompt_tokens == len(
        reference.tokenize(
            b"<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nhello there<|im_end|>\n<|im_start|>assistant\n",
            add_bos=False,
            special=True,
        )
    )


async def test_greedy_text_equals_transformers(engine: LlamaCppEngine, demo_gguf: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from corral.engines.transformers.demo import DEMO_LLM_NAME

    folder = demo_gguf.parent / DEMO_LLM_NAME
    tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True).eval()
    messages = [{"role": m.role, "content": m.content} for m in CHAT]
    for request, ids in (
        (completion(max_tokens=30), tok(CODE_PROMPT)["input_ids"]),
        (chat(max_tokens=30), tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]),
    ):
        with torch.no_grad():
            out = model.generate(torch.tensor([ids]), max_new_tokens=30, do_sample=False)[0, len(ids) :].tolist()
        ours = await run(engine, request)
        assert ours.usage.prompt_tokens == len(ids)
        assert ours.texts[0] == tok.decode(out, skip_special_tokens=True)


async def test_end_of_generation_token_counts_but_is_not_text(engine: LlamaCppEngine, reference: Any) -> None:
    # find a prompt whose greedy completion ends on its own (an eos token) before 200 tokens
    for prompt in ("import os\n", "class A:\n", "x = 1\n", "def f():\n", "# comment\n", "return None\n"):
        theirs = reference.create_completion(prompt=prompt, max_tokens=200, **GREEDY)
        if theirs["choices"][0]["finish_reason"] == "stop":
            break
    else:
        pytest.fail("no test prompt ends with an eos token: the demo model changed; pick other prompts")
    ours = await run(engine, completion(prompt, max_tokens=200))
    assert ours.finish == [FinishReason.STOP]
    same_text(ours.texts[0], theirs["choices"][0]["text"])
    # and ignore_eos generates past that end-of-generation token
    forced = await run(engine, completion(prompt, max_tokens=200, ignore_eos=True))
    assert forced.finish == [FinishReason.LENGTH] and forced.usage.completion_tokens == 200
    assert forced.texts[0].startswith(ours.texts[0])
    # llama-cpp-python leaves the end-of-generation token out of its count; Corral counts it
    # on every engine, as vLLM and TGI do (it was generated)
    assert ours.usage.completion_tokens == theirs["usage"]["completion_tokens"] + 1


async def test_max_tokens_and_ignore_eos(engine: LlamaCppEngine) -> None:
    for n in (1, 7, 50):
        out = await run(engine, completion(max_tokens=n, ignore_eos=True))
        assert out.finish == [FinishReason.LENGTH]
        assert out.usage.completion_tokens == n


async def test_stop_strings(engine: LlamaCppEngine) -> None:
    full = (await run(engine, completion(max_tokens=80, ignore_eos=True))).texts[0]
    stop = full[20:23]
    cut = full[: full.index(stop)]
    out = await run(engine, completion(max_tokens=80, ignore_eos=True, stop=(stop, "\x00never")))
    assert out.texts[0] == cut
    assert out.finish == [FinishReason.STOP]
    assert all(stop not in d.text for d in out.deltas)
    # tokens generated before the stop string showed up; llama-cpp-python holds a stream back
    # after an invalid UTF-8 run (this random model emits some), so it may be all of them
    assert 1 <= out.usage.completion_tokens <= 80


async def test_seed_makes_sampling_reproducible(engine: LlamaCppEngine) -> None:
    def sampled(seed: int, n: int = 1) -> GenerationRequest:
        return completion(max_tokens=40, temperature=1.0, top_p=0.95, seed=seed, n=n, ignore_eos=True)

    a, b, c = [(await run(engine, sampled(s))).texts[0] for s in (123, 123, 124)]
    assert a == b
    assert a != c
    many = await run(engine, sampled(123, n=3))
    assert many.texts[0] == a  # choice i uses seed + i
    assert len(set(many.texts)) == 3
    assert many.texts == (await run(engine, sampled(123, n=3))).texts


async def test_n_choices_decode_together_from_one_prompt(engine: LlamaCppEngine) -> None:
    single = await run(engine, completion(max_tokens=20, ignore_eos=True))
    out = await run(engine, completion(max_tokens=20, ignore_eos=True, n=3))
    assert out.texts == single.texts * 3  # greedy: identical choices (the prompt's KV cells copied)
    assert out.finish == [FinishReason.LENGTH] * 3
    assert out.usage == Usage(single.usage.prompt_tokens, 60)  # the prompt is counted once
    # the choices are decoded in the same steps: their deltas interleave
    order = [d.index for d in out.deltas]
    assert order != sorted(order)


async def test_penalties_change_greedy_output(engine: LlamaCppEngine) -> None:
    plain = (await run(engine, chat(max_tokens=30, ignore_eos=True))).texts[0]
    penalised = (await run(engine, chat(max_tokens=30, ignore_eos=True, frequency_penalty=2.0))).texts[0]
    assert plain != penalised
    present = (await run(engine, chat(max_tokens=30, ignore_eos=True, presence_penalty=2.0))).texts[0]
    assert plain != present


async def test_echo(engine: LlamaCppEngine) -> None:
    plain = await run(engine, completion(max_tokens=5, ignore_eos=True))
    echoed = await run(engine, dataclasses.replace(completion(max_tokens=5, ignore_eos=True), echo=True))
    assert echoed.texts[0] == CODE_PROMPT + plain.texts[0]
    assert echoed.usage == plain.usage


async def test_closing_the_stream_cancels_generation(engine: LlamaCppEngine) -> None:
    await wait_idle(engine)
    before = engine.load()
    stream = await engine.generate(long_request())
    seen = 0
    async for item in stream:
        assert isinstance(item, GenerationChunk)
        seen += 1
        if seen == 3:
            break
    await stream.aclose()  # type: ignore[attr-defined]
    await wait_idle(engine)
    after = engine.load()
    assert after.cancelled_total == before.cancelled_total + 1
    assert after.completed_total == before.completed_total
    generated = after.extra["generated_tokens_total"] - before.extra["generated_tokens_total"]
    assert 3 <= generated < 480  # stopped between tokens, within the first choice
    out = await run(engine, completion(max_tokens=10, ignore_eos=True))  # served as usual afterwards
    assert out.usage.completion_tokens == 10


async def test_closing_a_queued_request_before_reading_drops_it(engine: LlamaCppEngine) -> None:
    await wait_idle(engine)
    before = engine.load()
    first = await engine.generate(long_request("first"))
    await first.__anext__()  # running
    second = await engine.generate(long_request("second"))
    assert (engine.load().in_flight, engine.load().queued) == (1, 1)
    await second.aclose()  # type: ignore[attr-defined]  # never iterated
    assert engine.load().queued == 0
    await first.aclose()  # type: ignore[attr-defined]
    await wait_idle(engine)
    after = engine.load()
    assert after.cancelled_total == before.cancelled_total + 2
    assert after.completed_total == before.completed_total


async def test_concurrent_requests_decode_together_without_mixing(engine: LlamaCppEngine) -> None:
    requests = [
        completion("import sys\n", rid="a", max_tokens=30, ignore_eos=True),
        chat(rid="b", max_tokens=25, ignore_eos=True),
        completion("class Foo(Bar):\n", rid="c", max_tokens=35, n=2, ignore_eos=True),
        chat((ChatMessage("user", "what is 2+2?"),), rid="d", max_tokens=40),
        completion("x = [1, 2, 3]\n", rid="e", max_tokens=20, stop=("\n",)),
        completion("for i in range(10):\n", rid="f", max_tokens=30, ignore_eos=True),
    ]
    alone = [await run(engine, r) for r in requests]
    together = await asyncio.gather(*(run(engine, r) for r in requests))
    for a, t in zip(alone, together):
        assert (t.texts, t.finish, t.usage) == (a.texts, a.finish, a.usage)
    await wait_idle(engine)


async def test_queue_bound_refuses_with_overloaded(demo_gguf: Path) -> None:
    eng = LlamaCppEngine(spec(demo_gguf), LlamaCppOptions(n_ctx=N_CTX, n_threads=1, max_queue=1))
    await eng.start()
    try:
        running = await eng.generate(long_request())
        await running.__anext__()  # the first is running ...
        waiting = await eng.generate(completion(max_tokens=5))  # ... one may wait ...
        with pytest.raises(Overloaded):  # ... a third is refused
            await eng.generate(completion(max_tokens=5))
        await running.aclose()  # type: ignore[attr-defined]
        out = [item async for item in waiting]
        assert isinstance(out[-1], GenerationEnd) and out[-1].usage.completion_tokens >= 1
    finally:
        await eng.stop()
    with pytest.raises(Unavailable):
        await eng.generate(completion(max_tokens=5))


async def test_stop_fails_waiting_and_running_requests(demo_gguf: Path) -> None:
    eng = LlamaCppEngine(spec(demo_gguf), LlamaCppOptions(n_ctx=N_CTX, n_threads=1))
    await eng.start()
    running = await eng.generate(long_request())
    await running.__anext__()
    waiting = await eng.generate(completion(max_tokens=5))
    await eng.stop()
    for stream in (running, waiting):
        with pytest.raises(Unavailable):
            async for _ in stream:
                pass


async def test_context_overflow_is_refused_before_queueing(engine: LlamaCppEngine) -> None:
    long_prompt = "x = 1\n" * 400  # well over 512 tokens
    with pytest.raises(InvalidRequest) as err:
        await engine.generate(completion(long_prompt, max_tokens=5))
    assert err.value.code == "context_length_exceeded" and err.value.param == "prompt"
    with pytest.raises(InvalidRequest) as err:
        await engine.generate(chat((ChatMessage("user", long_prompt),)))
    assert err.value.code == "context_length_exceeded" and err.value.param == "messages"
    with pytest.raises(InvalidRequest) as err:
        await engine.generate(completion(max_tokens=N_CTX))
    assert err.value.code == "context_length_exceeded" and err.value.param == "max_tokens"
    # an empty prompt starts from the model's BOS token
    empty = await run(engine, completion("", max_tokens=3, ignore_eos=True))
    assert empty.usage == Usage(1, 3)
    # max_tokens unset: up to the end of the context
    out = await run(engine, completion(max_tokens=None, ignore_eos=True))
    assert out.finish == [FinishReason.LENGTH]
    assert out.usage.total_tokens == N_CTX
    assert engine.load().queued == 0


async def test_template_errors_and_missing_template(engine: LlamaCppEngine, demo_gguf: Path, tmp_path: Path) -> None:
    import shutil

    from corral.engines.llamacpp.gguf_export import export_gguf
    from corral.engines.transformers.demo import DEMO_LLM_NAME

    folder = tmp_path / "no-template"
    shutil.copytree(demo_gguf.parent / DEMO_LLM_NAME, folder)
    (folder / "chat_template.jinja").unlink()
    bare = export_gguf(folder, tmp_path / "bare.gguf")
    eng = LlamaCppEngine(spec(bare), LlamaCppOptions(n_ctx=N_CTX, n_threads=1))
    await eng.start()
    try:
        with pytest.raises(InvalidRequest, match="no chat template") as err:
            await eng.generate(chat())
        assert err.value.param == "messages"
        out = await run(eng, completion(max_tokens=3, ignore_eos=True))
        assert out.usage.completion_tokens == 3
    finally:
        await eng.stop()


async def test_source_must_be_a_gguf_file(tmp_path: Path) -> None:
    from corral.core.errors import ConfigError

    eng = LlamaCppEngine(spec(tmp_path / "missing.gguf"), LlamaCppOptions())
    with pytest.raises(ConfigError, match="gguf"):
        await eng.start()
    await eng.stop()


async def test_throughput_is_reported(engine: LlamaCppEngine) -> None:
    started = time.perf_counter()
    out = await run(engine, completion(max_tokens=200, ignore_eos=True))
    elapsed = time.perf_counter() - started
    assert out.usage.completion_tokens == 200
    print(f"200 tokens in {elapsed:.3f}s: {200 / elapsed:.0f} tokens/s end to end")
    assert engine.load().extra["tokens_per_second"] > 0
