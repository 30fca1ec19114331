"""The Ollama front-end through the official ``ollama`` Python client and LangChain's
``ChatOllama``, unchanged, against the shared ``corral start`` (real SmolLM2 on
llama.cpp, the tiny transformers demo, the real MiniLM embedder): listing, chat and
generate streamed and not (equal when greedy), embeddings, show, ps, the final object's
counts and durations, Ollama-style errors with their statuses, and the request record."""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import ollama
import pytest

from tests.integration.conftest import API_KEY, DEMO_CHAT, EMBED, REAL_CHAT
from tests.integration.servers import Server

QUESTION = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
GREEDY = {"temperature": 0, "num_predict": 24}


@pytest.fixture(scope="module")
def client(demo_server: Server) -> Iterator[ollama.Client]:
    c = ollama.Client(host=demo_server.url, headers={"authorization": f"Bearer {API_KEY}"}, timeout=120)
    yield c
    c.close()


def record(home: Path, request_id: str, timeout: float = 10.0) -> dict[str, Any]:
    """The request's row in the shared server's records file (written in batches)."""
    deadline = time.monotonic() + timeout
    while True:
        with sqlite3.connect(home / "records.db", timeout=5) as db:
            db.row_factory = sqlite3.Row
            row = db.execute("SELECT * FROM corral_requests WHERE request_id = ?", (request_id,)).fetchone()
        if row is not None:
            return dict(row)
        assert time.monotonic() < deadline, f"no record of {request_id}"
        time.sleep(0.1)


def test_list_names_every_model_with_its_tag(client: ollama.Client) -> None:
    listed = {m.model: m for m in client.list().models}
    assert {f"{REAL_CHAT}:latest", f"{DEMO_CHAT}:latest", f"{EMBED}:latest"} <= set(listed)
    assert listed[f"{REAL_CHAT}:latest"].details.format == "llamacpp"  # type: ignore[union-attr]
    assert listed[f"{EMBED}:latest"].details.family == "embedding"  # type: ignore[union-attr]


def test_chat_streamed_equals_whole_and_counts_honestly(client: ollama.Client) -> None:
    whole = client.chat(model=REAL_CHAT, messages=QUESTION, options=GREEDY)
    assert "Paris" in (whole.message.content or "")
    assert whole.done and whole.done_reason == "stop" and whole.message.role == "assistant"
    parts = list(client.chat(model=f"{REAL_CHAT}:latest", messages=QUESTION, options=GREEDY, stream=True))
    assert "".join(p.message.content or "" for p in parts) == whole.message.content
    last = parts[-1]
    assert last.done and not any(p.done for p in parts[:-1]) and last.done_reason == "stop"
    assert last.model == f"{REAL_CHAT}:latest"  # the name as the client sent it
    for answer in (whole, last):
        assert answer.eval_count and answer.eval_count <= 24 and answer.prompt_eval_count and answer.prompt_eval_count > 10
        assert answer.load_duration == 0
        total, prompt, gen = answer.total_duration or 0, answer.prompt_eval_duration or 0, answer.eval_duration or 0
        # nanoseconds: a real generation takes between a millisecond and a minute
        assert 1e6 < total < 60e9 and 0 < prompt < total and 0 < gen < total
        assert abs(prompt + gen - total) < 5e6  # the two phases make up the whole
    # the stream carried one line per delta: no more deltas than generated tokens
    assert len(parts) - 1 <= (last.eval_count or 0)


def test_num_predict_is_max_tokens_and_length_is_the_reason(client: ollama.Client) -> None:
    out = client.chat(model=DEMO_CHAT, messages=QUESTION, options={"num_predict": 3, "seed": 5, "top_k": 5})
    assert out.done_reason == "length" and out.eval_count == 3


def test_seeded_sampling_with_top_k_and_repeat_penalty_is_reproducible(client: ollama.Client) -> None:
    options = {"temperature": 0.9, "top_k": 20, "top_p": 0.95, "repeat_penalty": 1.3, "seed": 42, "num_predict": 12}
    a = client.generate(model=REAL_CHAT, prompt="Write a line about the sea.", options=options)
    b = client.generate(model=REAL_CHAT, prompt="Write a line about the sea.", options=options)
    assert a.response and a.response == b.response


def test_generate_templated_and_raw(client: ollama.Client) -> None:
    out = client.generate(model=REAL_CHAT, prompt="What is the capital of France? Answer in one word.", options=GREEDY)
    assert "Paris" in (out.response or "") and out.done_reason == "stop"
    streamed = "".join(p.response or "" for p in client.generate(
        model=REAL_CHAT, prompt="What is the capital of France? Answer in one word.", options=GREEDY, stream=True))
    assert streamed == out.response
    with_system = client.generate(model=REAL_CHAT, prompt="Name a colour.", system="Answer in one word.", options=GREEDY)
    assert with_system.response
    raw = client.generate(model=REAL_CHAT, prompt="The capital of France is", raw=True, options={"temperature": 0, "num_predict": 4})
    assert "Paris" in (raw.response or "")


def test_an_empty_prompt_loads_the_model(client: ollama.Client) -> None:
    assert client.generate(model=REAL_CHAT, prompt="").done_reason == "load"
    assert client.chat(model=REAL_CHAT, messages=[]).done_reason == "load"
    with pytest.raises(ollama.ResponseError) as err:
        client.generate(model="no-such-model", prompt="")
    assert err.value.status_code == 404


def test_embed_matches_the_openai_route(client: ollama.Client, demo_server: Server) -> None:
    out = client.embed(model=EMBED, input=["a cat", "a kitten"])
    assert len(out.embeddings) == 2 and len(out.embeddings[0]) == 384 and out.prompt_eval_count
    v1 = httpx.post(f"{demo_server.url}/v1/embeddings", json={"model": EMBED, "input": ["a cat", "a kitten"]},
                    headers={"authorization": f"Bearer {API_KEY}"}, timeout=60).json()
    assert all(abs(a - b) < 1e-5 for a, b in zip(out.embeddings[1], v1["data"][1]["embedding"]))
    legacy = client.embeddings(model=f"{EMBED}:latest", prompt="a cat")
    assert all(abs(a - b) < 1e-5 for a, b in zip(legacy.embedding, out.embeddings[0]))


def test_show_and_ps(client: ollama.Client) -> None:
    shown = client.show(REAL_CHAT)
    assert shown.capabilities == ["completion"] and shown.details.format == "llamacpp"  # type: ignore[union-attr]
    assert client.show(f"{EMBED}:latest").capabilities == ["embedding"]
    running = {m.model for m in client.ps().models}
    assert f"{REAL_CHAT}:latest" in running and f"{EMBED}:latest" in running
    with pytest.raises(ollama.ResponseError) as err:
        client.show("no-such-model")
    assert err.value.status_code == 404


@pytest.mark.parametrize(
    ("call", "status", "words"),
    [
        (lambda c: c.chat(model="no-such-model", messages=QUESTION), 404, "no-such-model"),
        (lambda c: list(c.chat(model="no-such-model", messages=QUESTION, stream=True)), 404, "no-such-model"),
        (lambda c: c.embed(model="no-such-model", input="x"), 404, "no-such-model"),
        (lambda c: c.chat(model=REAL_CHAT, messages=QUESTION, options={"mirostat": 2}), 400, "options.mirostat"),
        (lambda c: c.chat(model=REAL_CHAT, messages=QUESTION, options={"nonsense": 1}), 400, "unknown option"),
        (lambda c: c.chat(model=REAL_CHAT, messages=QUESTION, options={"temperature": "hot"}), 400, "options.temperature"),
        (lambda c: c.chat(model=REAL_CHAT, messages=QUESTION, options={"repeat_last_n": 64}), 400, "repeat_last_n"),
        (lambda c: c.chat(model=REAL_CHAT, messages=QUESTION, format="json"), 400, "format"),
        (lambda c: c.chat(model=REAL_CHAT, messages=QUESTION, think=True), 400, "think"),
        (lambda c: c.chat(model=EMBED, messages=QUESTION), 400, "embedding"),
        (lambda c: c.embed(model=REAL_CHAT, input="x"), 400, "chat"),
        (lambda c: c.generate(model=REAL_CHAT, prompt="x", context=[1, 2, 3]), 400, "context"),
        (lambda c: c.generate(model=REAL_CHAT, prompt="x", template="{{ .Prompt }}"), 400, "template"),
        (lambda c: c.generate(model=REAL_CHAT, prompt="x", suffix="y"), 400, "suffix"),
        (lambda c: c.pull("llama3"), 403, "admin API"),
        (lambda c: c.delete(REAL_CHAT), 403, "admin API"),
        (lambda c: c.copy(REAL_CHAT, "other"), 403, "admin API"),
        (lambda c: c.create("mine", from_=REAL_CHAT), 403, "admin API"),
    ],
)
def test_errors_are_response_errors_with_the_right_status(
    client: ollama.Client, call: Any, status: int, words: str
) -> None:
    with pytest.raises(ollama.ResponseError) as err:
        call(client)
    assert err.value.status_code == status and words in err.value.error, err.value


def test_a_key_is_required_and_answered_ollama_style(demo_server: Server) -> None:
    for headers in ({}, {"authorization": "Bearer wrong"}):
        with ollama.Client(host=demo_server.url, headers=headers) as anonymous:
            with pytest.raises(ollama.ResponseError) as err:
                anonymous.list()
        assert err.value.status_code == 401 and "API key" in err.value.error
    raw = httpx.post(f"{demo_server.url}/api/chat", content=b"{not json", headers={"authorization": f"Bearer {API_KEY}"})
    assert raw.status_code == 400 and set(raw.json()) == {"error"}
    missing = httpx.get(f"{demo_server.url}/api/nothing", headers={"authorization": f"Bearer {API_KEY}"})
    assert missing.status_code == 404 and set(missing.json()) == {"error"}
    version = httpx.get(f"{demo_server.url}/api/version", headers={"authorization": f"Bearer {API_KEY}"}).json()
    assert version["version"].count(".") == 2
    root = httpx.get(f"{demo_server.url}/")  # what apps probe to find an Ollama server: no key needed
    assert root.status_code == 200 and root.text == "Ollama is running"


def test_the_request_record_says_ollama(demo_server: Server, corral_home: Path) -> None:
    rid = f"ollama-{uuid.uuid4().hex[:12]}"
    with ollama.Client(host=demo_server.url, headers={"authorization": f"Bearer {API_KEY}", "x-request-id": rid}) as c:
        out = c.chat(model=REAL_CHAT, messages=QUESTION, options={**GREEDY, "top_k": 7, "repeat_penalty": 1.2})
    row = record(corral_home, rid)
    assert (row["protocol"], row["route"], row["model"], row["outcome"], row["http_status"]) == (
        "ollama", "chat", REAL_CHAT, "ok", 200)
    assert row["completion_tokens"] == out.eval_count and row["prompt_tokens"] == out.prompt_eval_count
    params = json.loads(row["params"])
    assert (params["top_k"], params["repetition_penalty"], params["temperature"]) == (7, 1.2, 0)


def test_langchain_chat_ollama_invoke_and_stream(demo_server: Server) -> None:
    from langchain_ollama import ChatOllama

    llm = ChatOllama(model=REAL_CHAT, base_url=demo_server.url, temperature=0, num_predict=24,
                     client_kwargs={"headers": {"authorization": f"Bearer {API_KEY}"}})
    answer = llm.invoke("What is the capital of France? Answer in one word.")
    assert "Paris" in str(answer.content)
    assert answer.usage_metadata and answer.usage_metadata["output_tokens"] > 0  # type: ignore[index]
    streamed = "".join(str(chunk.content) for chunk in llm.stream("What is the capital of France? Answer in one word."))
    assert streamed == answer.content
