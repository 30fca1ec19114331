"""Quality of the real model's answers through HTTP with the official SDK, on both
engines (``smollm2`` on llama.cpp, ``smollm2-hf`` on transformers, same GGUF weights).

Everything is greedy (temperature 0), so every expected answer below was checked to be
what SmolLM2-135M-Instruct says on both engines; a broken chat template, tokenizer
round-trip, streaming path or batched decode changes the text and fails them.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.integration.conftest import API_KEY
from tests.integration.quality.conftest import Tokenizer
from tests.integration.servers import Server

pytestmark = pytest.mark.integration

FACTS = [
    ("What is the capital of France? Answer in one word.", "Paris"),
    ("What is the capital of Japan?", "Tokyo"),
    ("What is the capital of Germany?", "Berlin"),
    ("What is the chemical symbol for water?", "H2O"),
]
# (system prompt, user message, a word the answer has with that system prompt and not
# without it: the model's default system prompt is "You are a helpful AI assistant
# named SmolLM")
SYSTEM_PROMPTS = [
    ("You are a pirate.", "Hello!", "Blackbeard"),
    ("You are Bob.", "Hello!", "Bob"),
]
# different prompts, so a decode that mixes sequences' KV cells changes the answers
CONCURRENT_PROMPTS = [
    "What is the capital of France? Answer in one word.",
    "What is the capital of Japan?",
    "What is the capital of Germany?",
    "How many days are in a week?",
    "What is 2 + 2?",
    "What is the chemical symbol for water?",
    "Write a haiku about the sea.",
    "Name three colours of the rainbow.",
]
GREEDY = {"temperature": 0}


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


@pytest.mark.parametrize(("question", "word"), FACTS)
def test_factual_answers(client, model: str, question: str, word: str) -> None:  # type: ignore[no-untyped-def]
    r = client.chat.completions.create(model=model, messages=user(question), max_tokens=16, **GREEDY)
    assert word in r.choices[0].message.content, r.choices[0].message.content
    assert r.choices[0].finish_reason == "stop"


@pytest.mark.parametrize(("system", "message", "word"), SYSTEM_PROMPTS)
def test_system_prompt_is_honoured(client, model: str, system: str, message: str, word: str) -> None:  # type: ignore[no-untyped-def]
    told = client.chat.completions.create(
        model=model, messages=[{"role": "system", "content": system}, *user(message)], max_tokens=12, **GREEDY
    ).choices[0].message.content
    plain = client.chat.completions.create(model=model, messages=user(message), max_tokens=12, **GREEDY)
    assert word in told, told
    assert word not in plain.choices[0].message.content, plain.choices[0].message.content


def test_streamed_text_equals_unstreamed(client, model: str) -> None:  # type: ignore[no-untyped-def]
    messages = user("Write a haiku about the sea.")
    whole = client.chat.completions.create(model=model, messages=messages, max_tokens=20, **GREEDY)
    parts, usage, finish = [], None, None
    stream = client.chat.completions.create(
        model=model, messages=messages, max_tokens=20, stream=True, stream_options={"include_usage": True}, **GREEDY
    )
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            parts.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    assert len([p for p in parts if p]) > 1  # really streamed, not one chunk at the end
    assert "".join(parts) == whole.choices[0].message.content
    assert finish == whole.choices[0].finish_reason
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (whole.usage.prompt_tokens, whole.usage.completion_tokens)


def test_concurrent_greedy_requests_equal_sequential(client, demo_server: Server, model: str) -> None:  # type: ignore[no-untyped-def]
    def texts(responses) -> list[str]:  # type: ignore[no-untyped-def]
        return [r.choices[0].message.content for r in responses]

    sequential = texts(
        client.chat.completions.create(model=model, messages=user(p), max_tokens=24, **GREEDY) for p in CONCURRENT_PROMPTS
    )

    async def together() -> list[str]:
        from openai import AsyncOpenAI

        # a client per event loop (asyncio.run makes a new one per test)
        async with AsyncOpenAI(base_url=f"{demo_server.url}/v1", api_key=API_KEY, max_retries=0, timeout=300) as c:
            return texts(await asyncio.gather(*(
                c.chat.completions.create(model=model, messages=user(p), max_tokens=24, **GREEDY)
                for p in CONCURRENT_PROMPTS
            )))

    assert len(set(sequential)) == len(sequential)  # eight different answers to mix up
    assert asyncio.run(together()) == sequential


def test_completion_continues_a_raw_prompt(client, model: str, tokenizer: Tokenizer) -> None:  # type: ignore[no-untyped-def]
    prompt = "The capital of France is"
    r = client.completions.create(model=model, prompt=prompt, max_tokens=12, **GREEDY)
    text = r.choices[0].text
    assert "Paris" in text.split(".")[0], text  # the first sentence, not somewhere later
    assert not text.startswith(prompt)  # a continuation, not an echo
    assert r.usage.prompt_tokens == tokenizer.count(prompt, bos=True)


def test_chat_usage_counts_the_tokenizers_tokens(client, model: str, tokenizer: Tokenizer) -> None:  # type: ignore[no-untyped-def]
    messages = [{"role": "system", "content": "You are a pirate."}, *user("What is the capital of Japan?")]
    r = client.chat.completions.create(model=model, messages=messages, max_tokens=40, **GREEDY)
    text = r.choices[0].message.content
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.prompt_tokens == tokenizer.count_chat(messages)
    # the end-of-turn token that ended the answer counts as generated (as vLLM and TGI
    # count it) but is not part of the text
    assert r.usage.completion_tokens == tokenizer.count(text) + 1
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_length_limited_answer_counts_max_tokens(client, model: str, tokenizer: Tokenizer) -> None:  # type: ignore[no-untyped-def]
    messages = user("Write a haiku about the sea.")
    r = client.chat.completions.create(model=model, messages=messages, max_tokens=9, **GREEDY)
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 9
    assert tokenizer.count(r.choices[0].message.content) == 9
    assert r.usage.prompt_tokens == tokenizer.count_chat(messages)
