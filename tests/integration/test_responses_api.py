"""The OpenAI Responses API (``/v1/responses``) through the official ``openai`` SDK on the
shared ``corral start``, with the real model ``smollm2`` (llama.cpp): create (string and
message-list input, instructions, max_output_tokens), ``output_text``, streaming (the
event sequence; the streamed text is the whole answer's, greedy), stored responses
(``GET``, ``DELETE``, ``previous_response_id`` continuing the conversation) and errors
in OpenAI's format. Tool calls round-trip in ``engines/test_responses_tools.py``.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import BadRequestError, NotFoundError, OpenAI

from tests.integration.conftest import API_KEY, REAL_CHAT
from tests.integration.servers import Server

pytestmark = pytest.mark.integration

ASK = "What is the capital of France? Answer in one word."
GREEDY: dict[str, Any] = {"temperature": 0, "max_output_tokens": 24}


def _record(home: Path, request_id: str, timeout: float = 10.0) -> dict[str, Any]:
    """The request's row in the shared server's records file (written in batches)."""
    deadline = time.monotonic() + timeout
    while True:
        conn = sqlite3.connect(home / "records.db", timeout=5)
        conn.row_factory = sqlite3.Row
        try:
            row = conn.execute("SELECT * FROM corral_requests WHERE request_id = ?", (request_id,)).fetchone()
        finally:
            conn.close()
        if row is not None:
            return dict(row)
        assert time.monotonic() < deadline, f"request {request_id} was not recorded"
        time.sleep(0.1)


def test_string_input_answers_with_output_text(client: OpenAI, corral_home: Path) -> None:
    raw = client.responses.with_raw_response.create(model=REAL_CHAT, input=ASK, **GREEDY)
    resp = raw.parse()
    assert resp.object == "response" and resp.status == "completed" and resp.id.startswith("resp_")
    assert "Paris" in resp.output_text
    [message] = resp.output
    assert message.type == "message" and message.role == "assistant" and message.status == "completed"
    assert message.content[0].type == "output_text" and message.content[0].text == resp.output_text
    u = resp.usage
    assert u is not None and u.input_tokens > 5 and 0 < u.output_tokens <= 24
    assert u.total_tokens == u.input_tokens + u.output_tokens
    assert u.input_tokens_details.cached_tokens == 0 and u.output_tokens_details.reasoning_tokens == 0
    assert resp.temperature == 0 and resp.max_output_tokens == 24 and resp.store is True
    row = _record(corral_home, raw.headers["x-request-id"])
    assert (row["route"], row["protocol"], row["model"], row["outcome"]) == ("responses", "openai", REAL_CHAT, "ok")
    assert (row["prompt_tokens"], row["completion_tokens"]) == (u.input_tokens, u.output_tokens)
    params = json.loads(row["params"])
    assert params["max_tokens"] == 24 and params["store"] is True


def _chat(client: OpenAI, messages: Any) -> tuple[str, int]:
    """The same turns through chat completions: (text, prompt tokens)."""
    out = client.chat.completions.create(model=REAL_CHAT, messages=messages, temperature=0, max_tokens=24)
    assert out.usage is not None
    return out.choices[0].message.content or "", out.usage.prompt_tokens


def test_message_list_instructions_and_the_output_limit(client: OpenAI) -> None:
    system = "You answer questions about geography."
    items: Any = [
        {"role": "developer", "content": system},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": ASK}]},
    ]
    resp = client.responses.create(model=REAL_CHAT, input=items, **GREEDY)
    assert "Paris" in resp.output_text
    # the model saw the same turns as through chat completions: the same prompt, the same answer
    same = _chat(client, [{"role": "system", "content": system}, {"role": "user", "content": ASK}])
    assert resp.usage is not None and (resp.output_text, resp.usage.input_tokens) == same
    told = client.responses.create(model=REAL_CHAT, input=ASK, instructions="Always answer in French.", **GREEDY)
    assert told.instructions == "Always answer in French." and told.usage is not None
    same = _chat(client, [{"role": "system", "content": "Always answer in French."}, {"role": "user", "content": ASK}])
    assert (told.output_text, told.usage.input_tokens) == same
    cut = client.responses.create(model=REAL_CHAT, input="Write a long story about a dragon.", max_output_tokens=4,
                                  temperature=0)
    assert cut.status == "incomplete" and cut.incomplete_details is not None
    assert cut.incomplete_details.reason == "max_output_tokens"
    assert cut.usage is not None and cut.usage.output_tokens == 4 and cut.output_text


def test_streamed_text_equals_the_whole_answer_and_events_come_in_order(client: OpenAI, demo_server: Server) -> None:
    whole = client.responses.create(model=REAL_CHAT, input=ASK, **GREEDY)
    with client.responses.stream(model=REAL_CHAT, input=ASK, **GREEDY) as stream:
        events = list(stream)
        final = stream.get_final_response()
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == whole.output_text == final.output_text and "Paris" in deltas
    kinds = [e.type for e in events]
    n = kinds.count("response.output_text.delta")
    assert n >= 1
    assert kinds == ["response.created", "response.in_progress", "response.output_item.added",
                     "response.content_part.added", *["response.output_text.delta"] * n, "response.output_text.done",
                     "response.content_part.done", "response.output_item.done", "response.completed"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert final.status == "completed" and final.usage is not None
    assert final.usage.output_tokens == whole.usage.output_tokens  # type: ignore[union-attr]
    # the wire: each event named by an ``event:`` line, and no [DONE]
    body = {"model": REAL_CHAT, "input": ASK, "stream": True, **GREEDY}
    with httpx.Client(timeout=60) as http:
        text = http.post(f"{demo_server.url}/v1/responses", json=body, headers={"authorization": f"Bearer {API_KEY}"}).text
    frames = [f for f in text.split("\n\n") if f.strip()]
    for frame in frames:
        name, data = frame.split("\n", 1)
        assert name.startswith("event: ") and json.loads(data.removeprefix("data: "))["type"] == name[7:]
    assert "[DONE]" not in text and frames[-1].startswith("event: response.completed")


def test_stored_responses_continue_and_read_back(client: OpenAI) -> None:
    first = client.responses.create(model=REAL_CHAT, input=ASK, **GREEDY)
    follow = "And the capital of Germany? Answer in one word."
    second = client.responses.create(model=REAL_CHAT, input=follow, previous_response_id=first.id, **GREEDY)
    assert second.previous_response_id == first.id
    # the model saw the history: the same answer, token for token, as sending it whole
    history: Any = [{"role": "user", "content": ASK}, {"role": "assistant", "content": first.output_text},
                    {"role": "user", "content": follow}]
    whole = client.responses.create(model=REAL_CHAT, input=history, store=False, **GREEDY)
    assert second.usage is not None and first.usage is not None and whole.usage is not None
    assert second.usage.input_tokens == whole.usage.input_tokens
    assert second.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens
    assert second.output_text == whole.output_text and "Berlin" in second.output_text
    # a third turn carries both earlier turns
    third = client.responses.create(model=REAL_CHAT, input="Thanks.", previous_response_id=second.id, **GREEDY)
    assert third.usage is not None and third.usage.input_tokens > second.usage.input_tokens + second.usage.output_tokens
    # read back as created
    got = client.responses.retrieve(second.id)
    assert got.id == second.id and got.output_text == second.output_text and got.usage == second.usage
    assert got.previous_response_id == first.id
    # not stored: not found
    with pytest.raises(NotFoundError):
        client.responses.retrieve(whole.id)
    with pytest.raises(NotFoundError) as unknown:
        client.responses.create(model=REAL_CHAT, input="hi", previous_response_id=whole.id)
    assert unknown.value.body["param"] == "previous_response_id"  # type: ignore[index]
    # deleted: gone, and a continuation of it is a 404
    client.responses.delete(first.id)
    with pytest.raises(NotFoundError):
        client.responses.retrieve(first.id)
    with pytest.raises(NotFoundError):
        client.responses.delete(first.id)
    assert client.responses.retrieve(second.id).output_text == second.output_text  # its copy of the history stays


def test_a_stored_streamed_response_reads_back(client: OpenAI) -> None:
    with client.responses.stream(model=REAL_CHAT, input=ASK, **GREEDY) as stream:
        final = stream.get_final_response()
    got = client.responses.retrieve(final.id)
    assert got.output_text == final.output_text and got.status == "completed"


def _bad(client: OpenAI, **fields: Any) -> dict[str, Any]:
    with pytest.raises(BadRequestError) as exc:
        client.responses.create(**{"model": REAL_CHAT, "input": "hi", **fields})
    body = exc.value.body
    assert isinstance(body, dict) and body["type"] == "invalid_request_error", body
    return body


def test_errors_in_openai_format(client: OpenAI) -> None:
    with pytest.raises(NotFoundError) as missing:
        client.responses.create(model="no-such-model", input="hi")
    assert missing.value.body["param"] == "model"  # type: ignore[index]
    with pytest.raises(NotFoundError):
        client.responses.retrieve("resp_does_not_exist")
    assert _bad(client, temperature=3)["param"] == "temperature"
    assert _bad(client, max_output_tokens=0)["param"] == "max_output_tokens"
    assert _bad(client, input=[])["param"] == "input"
    assert _bad(client, input=[{"role": "robot", "content": "x"}])["param"] == "input[0].role"
    assert _bad(client, input=[{"type": "function_call", "name": "f"}])["param"] == "input[0].call_id"
    image = [{"role": "user", "content": [{"type": "input_image", "image_url": "https://example.invalid/x.png"}]}]
    assert _bad(client, input=image)["param"] == "input[0].content[0]"
    assert _bad(client, input=[{"type": "item_reference", "id": "x"}])["param"] == "input[0].type"
    assert _bad(client, tools=[{"type": "web_search"}])["param"] == "tools[0].type"
    assert _bad(client, background=True)["param"] == "background"
    assert _bad(client, reasoning={"effort": "high"})["param"] == "reasoning"
    assert _bad(client, include=["reasoning.encrypted_content"])["param"] == "include"
    assert _bad(client, truncation="auto")["param"] == "truncation"
    assert _bad(client, text={"format": {"type": "json_schema"}})["param"] == "text.format"
    # tools and structured output on an engine that does not honour them: the router's refusal
    tool = [{"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {}}}]
    refused = _bad(client, tools=tool)
    assert refused["param"] == "tools" and refused["code"] == "unsupported_parameter" and "llamacpp" in refused["message"]
    assert _bad(client, text={"format": {"type": "json_object"}})["param"] == "text.format"
    assert _bad(client, tools=tool, tool_choice={"type": "function", "name": "other"})["param"] == "tool_choice"
    # an embedding model does not chat
    assert _bad(client, model="all-minilm-l6-v2")["param"] == "model"
